"""The handshake of ``/v1/listen``: credentials, the query, and the answer to give.

``_decide`` applies the checks in the order FAKE_SERVER.md documents (path, injected
rejection, credentials, query) and returns either the validated ``StreamOptions`` or the
``Rejection`` (HTTP status and Deepgram's JSON error body). This module does no I/O; the
server (``server.py``) sends the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from dgd.testing.fakeserver.faults import RejectFault

__all__ = [
    "DEFAULT_ENDPOINTING_MS",
    "LISTEN_PATH",
    "Rejection",
    "StreamOptions",
    "auth_ok",
    "auth_scheme",
    "parse_options",
]

LISTEN_PATH: Final = "/v1/listen"
#: Deepgram's default is 10 ms; 600 ms is what a client with a speech gate should plan for,
#: and a fake that ends utterances on every tiny pause would make tests noisy.
DEFAULT_ENDPOINTING_MS: Final = 600

#: Deepgram's handshake error bodies (errors.mdx), by HTTP status.
_REJECTIONS: Final[dict[int, tuple[str, str]]] = {
    400: ("INVALID_QUERY_PARAMETER", "Invalid query parameter (injected fault)."),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: ("ASR_PAYMENT_REQUIRED", "Project does not have enough credits for an ASR request."),
    403: ("INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."),
    404: ("NOT_FOUND", f"Unknown path: the live API is served at {LISTEN_PATH}."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later."),
    503: ("SERVICE_UNAVAILABLE", "The service is temporarily unavailable. Please retry later."),
}


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What the handshake query asked for (validated).

    Attributes:
        rate_hz: ``sample_rate``.
        channels: ``channels`` (default 1).
        endpointing_ms: silence that ends an utterance (``endpointing``, default 600).
        interim_results: ``interim_results=true``.
        vad_events: ``vad_events=true``.
        utterance_end_ms: ``utterance_end_ms`` if given as an integer.
    """

    rate_hz: int
    channels: int = 1
    endpointing_ms: int = DEFAULT_ENDPOINTING_MS
    interim_results: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused handshake: HTTP status and Deepgram's ``err_code``/``err_msg``."""

    status: int
    err_code: str
    err_msg: str

    @classmethod
    def of(cls, status: int, err_msg: str | None = None) -> Rejection:
        """The standard rejection for ``status``, optionally with a specific message."""
        err_code, default_msg = _REJECTIONS[status]
        return cls(status, err_code, err_msg or default_msg)


def auth_ok(
    headers: Sequence[tuple[bytes, bytes]],
    api_key: str | None,
    bearer_ok: Callable[[str], bool] | None = None,
) -> bool:
    """True when the headers carry ``Authorization: Token <non-empty>`` (matching ``api_key``
    when given), or ``Authorization: Bearer <token>`` with ``bearer_ok(token)`` true (a token
    the grant endpoint issued and that has not expired). The scheme word is case-insensitive.
    """
    scheme, token = auth_scheme(headers)
    if scheme == "token":
        return bool(token) and (api_key is None or token == api_key)
    if scheme == "bearer":
        return bool(token) and bearer_ok is not None and bearer_ok(token)
    return False


def auth_scheme(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The first ``Authorization`` header as (scheme in lower case, credentials); ``("", "")``
    when there is none."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").strip().partition(" ")
        return scheme.lower(), token.strip()
    return "", ""


def parse_options(query: dict[str, list[str]]) -> StreamOptions | Rejection:
    """Validate the handshake query; a Rejection (400) explains what to fix."""
    encoding = _last(query, "encoding")
    if encoding != "linear16":
        got = "missing" if encoding is None else f"got {encoding!r}"
        return Rejection.of(
            400,
            "The fake server decodes raw PCM only: query parameter encoding must be "
            f"linear16 ({got}).",
        )
    rate = _positive_int(_last(query, "sample_rate"))
    if rate is None:
        return Rejection.of(
            400, "Query parameter sample_rate must be a positive integer when encoding is set."
        )
    channels_text = _last(query, "channels")
    channels = 1 if channels_text is None else _positive_int(channels_text)
    if channels is None:
        return Rejection.of(400, "Query parameter channels must be a positive integer.")
    endpointing = _non_negative_int(_last(query, "endpointing"))
    return StreamOptions(
        rate_hz=rate,
        channels=channels,
        endpointing_ms=DEFAULT_ENDPOINTING_MS if endpointing is None else endpointing,
        interim_results=_last(query, "interim_results") == "true",
        vad_events=_last(query, "vad_events") == "true",
        utterance_end_ms=_non_negative_int(_last(query, "utterance_end_ms")),
    )


def _last(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _non_negative_int(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _positive_int(text: str | None) -> int | None:
    value = _non_negative_int(text)
    return value if value else None


def _decide(
    path: str, query: dict[str, list[str]], reject: RejectFault | None, authorized: bool
) -> StreamOptions | Rejection:
    # Order: unknown path, injected rejection (an overloaded server refuses before it looks
    # at credentials), credentials, then the query.
    if path != LISTEN_PATH:
        return Rejection.of(404)
    if reject is not None:
        return Rejection.of(reject.status)
    if not authorized:
        return Rejection.of(401)
    return parse_options(query)
