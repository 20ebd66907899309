"""Deepgram's ``/v1/listen`` connection, apart from the messages on it: the URL and its query
keys, the authentication header, what a refused handshake says, and what a close frame means.

Building the URL refuses a query that would contradict the audio format; parsing a rejection
or a close frame never raises on remote content. This module does no I/O. The messages sent
and received on an open stream are in ``dgd.core.messages``.
"""

from __future__ import annotations

import enum
import http
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dgd.core.logtext import one_line

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Query keys dgd derives from ``[audio]``; a duplicate from ``[deepgram.query]`` would conflict
#: with what is actually sent (Deepgram then fails to decode: close 1008 DATA-0000).
AUDIO_QUERY_KEYS: Final = frozenset({"encoding", "sample_rate", "channels"})
#: Query keys whose values are credentials: never printed or logged (config, fake server).
SECRET_QUERY_KEYS: Final = frozenset({"token", "access_token", "api_key", "apikey", "key"})
#: Deepgram's hosted endpoints by ``deepgram.region``. A regional endpoint keeps storage and
#: inference in its region and never falls back to another; with ``mip_opt_out=true`` in
#: ``[deepgram.query]`` all processing stays there (docs/DEEPGRAM.md, "Regions").
REGION_HOSTS: Final = {
    "global": "api.deepgram.com",
    "eu": "api.eu.deepgram.com",
    "us": "api.us.deepgram.com",
    "in": "api.in.deepgram.com",
    "au": "api.au.deepgram.com",
}
#: Hosts under this domain are Deepgram's own (they always ask for credentials).
DEEPGRAM_DOMAIN: Final = "deepgram.com"
#: Length of a handshake rejection's non-JSON body kept as ``err_msg`` (one log line).
REJECTION_TEXT_CHARS: Final = 200
#: Largest handshake rejection body that is JSON-parsed; Deepgram's are ~150 bytes, while a
#: proxy's HTML error page can be large and is only excerpted.
MAX_REJECTION_BODY_BYTES: Final = 1 << 16
#: A WebSocket close without a close frame (the TCP connection dropped; RFC 6455 §7.1.5).
ABNORMAL_CLOSURE: Final = 1006
#: The close code of a stream that ended as asked (after ``CloseStream``).
NORMAL_CLOSURE: Final = 1000


def region_url(region: str) -> str:
    """The live endpoint of ``region`` (a key of ``REGION_HOSTS``)."""
    return f"wss://{REGION_HOSTS[region]}/v1/listen"


def is_deepgram_host(url: str) -> bool:
    """True when ``url`` points at Deepgram's hosted API (which always wants credentials),
    false for a self-hosted server."""
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".").lower()
    return host == DEEPGRAM_DOMAIN or host.endswith("." + DEEPGRAM_DOMAIN)


def listen_url(base_url: str, query: Sequence[tuple[str, str]], rate_hz: int, channels: int) -> str:
    """Builds the ``/v1/listen`` URL for raw S16_LE PCM.

    The ``query`` pairs are appended in order (a repeated key such as ``keyterm`` stays
    repeated), then ``encoding=linear16``, ``sample_rate`` and ``channels``, which raw PCM
    requires. Values are percent-encoded (a space becomes ``%20``); a query string already in
    ``base_url`` is kept in front.

    Args:
        base_url: ``deepgram.url``, e.g. ``wss://api.deepgram.com/v1/listen``.
        query: ``[deepgram.query]`` as rendered strings (booleans already ``"true"``/``"false"``).
        rate_hz: ``audio.rate``.
        channels: ``audio.channels``.

    Returns:
        The full URL.

    Raises:
        ValueError: ``query`` sets one of ``encoding``, ``sample_rate``, ``channels``.
    """
    for key, _value in query:
        if key in AUDIO_QUERY_KEYS:
            raise ValueError(
                f"deepgram.query.{key}: remove it from the config; dgd sets encoding, "
                "sample_rate and channels from [audio]"
            )
    pairs = [
        *query,
        ("encoding", "linear16"),
        ("sample_rate", str(rate_hz)),
        ("channels", str(channels)),
    ]
    added = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    parts = urllib.parse.urlsplit(base_url)
    combined = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit(parts._replace(query=combined))


def auth_headers(api_key: str) -> list[tuple[str, str]]:
    """The handshake headers that authenticate with a Deepgram API key.

    Args:
        api_key: the key, without the ``Token`` scheme word.

    Returns:
        ``[("Authorization", "Token <api_key>")]``.
    """
    return [("Authorization", "Token " + api_key)]


def bearer_headers(token: str) -> list[tuple[str, str]]:
    """The handshake headers that authenticate with a temporary token:
    ``[("Authorization", "Bearer <token>")]``."""
    return [("Authorization", "Bearer " + token)]


class Credential(enum.Enum):
    """What a handshake's ``Authorization`` header carried (``deepgram.auth`` and whether a
    key was configured), so that a refusal can say what to fix."""

    API_KEY = "key"  # Token <key>
    GRANTED_TOKEN = "grant"  # Bearer <token from /v1/auth/grant>
    COMMAND_TOKEN = "command"  # Bearer <token printed by deepgram.token_command>
    NOTHING = "none"  # no header: deepgram.auth = "none", or "key" without a key (self-hosted)


@dataclass(frozen=True, slots=True)
class HandshakeRejection:
    """Why Deepgram refused the WebSocket upgrade (an HTTP response instead of 101).

    Attributes:
        status: the HTTP status, e.g. 401.
        err_code: Deepgram's error code (``INVALID_AUTH``, ``TOO_MANY_REQUESTS``, ...), or ``""``.
        err_msg: Deepgram's message, or an excerpt of a non-JSON body, or ``""``.
        request_id: the ``dg-request-id`` header (else the body's ``request_id``), or ``""``.
        dg_error: the ``dg-error`` header, or ``""``.
    """

    status: int
    err_code: str
    err_msg: str
    request_id: str
    dg_error: str

    def describe(self) -> str:
        """One line for operators, e.g.
        ``HTTP 401 INVALID_AUTH: Invalid credentials. (request id 3b0f...)``.

        The ``dg-error`` header is shown only when it adds to ``err_msg``; when the server gave
        neither code nor message the standard HTTP reason phrase is used.
        """
        line = f"HTTP {self.status}"
        if self.err_code:
            line += f" {self.err_code}"
        if self.err_msg:
            line += f": {self.err_msg}"
        elif not self.err_code:
            phrase = _HTTP_PHRASES.get(self.status)
            if phrase:
                line += f" {phrase}"
        extras: list[str] = []
        if self.dg_error and self.dg_error != self.err_msg:
            extras.append(f"dg-error: {self.dg_error}")
        if self.request_id:
            extras.append(f"request id {self.request_id}")
        if extras:
            line += f" ({', '.join(extras)})"
        return line


_HTTP_PHRASES: Final = {status.value: status.phrase for status in http.HTTPStatus}


def _body_field(body: dict[str, Any], keys: Sequence[str], *, numeric_ok: bool = False) -> str:
    for key in keys:
        value = body.get(key)
        # asyncapi.yml's errorResponse has a numeric error_code (e.g. 401).
        if numeric_ok and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value:
            return one_line(value, REJECTION_TEXT_CHARS)
    return ""


def parse_rejection(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | None
) -> HandshakeRejection:
    """Extracts what Deepgram said when it refused the upgrade.

    The body is normally ``{"err_code", "err_msg", "request_id"}`` (Deepgram docs "Errors");
    the variants ``{"category", "message"}`` and ``{"error_code", "error_message"}`` are
    accepted too. A non-JSON body (e.g. a proxy's HTML page) becomes ``err_msg``: its first
    ``REJECTION_TEXT_CHARS`` printable characters on one line.

    Args:
        status: the HTTP status code.
        headers: response headers as (name, value) byte pairs; names match case-insensitively.
        body: the response body, or None if there was none.

    Returns:
        The rejection; fields the server did not send are ``""``. Never raises.
    """
    request_id = ""
    dg_error = ""
    for name, value in headers:
        lowered = name.strip().lower()
        if lowered == b"dg-request-id":
            request_id = one_line(value.decode("utf-8", "replace"), REJECTION_TEXT_CHARS)
        elif lowered == b"dg-error":
            dg_error = one_line(value.decode("utf-8", "replace"), REJECTION_TEXT_CHARS)
    err_code = ""
    err_msg = ""
    if body:
        text = body[: MAX_REJECTION_BODY_BYTES * 4].decode("utf-8", "replace")
        document: object = None
        if len(body) <= MAX_REJECTION_BODY_BYTES:
            try:
                document = json.loads(text)
            except (ValueError, RecursionError):
                document = None
        if isinstance(document, dict):
            err_code = _body_field(
                document, ("err_code", "error_code", "category"), numeric_ok=True
            )
            err_msg = _body_field(document, ("err_msg", "error_message", "message"))
            if not request_id:
                request_id = _body_field(document, ("request_id",))
        if not err_msg and not err_code:
            err_msg = one_line(text, REJECTION_TEXT_CHARS)
    return HandshakeRejection(status, err_code, err_msg, request_id, dg_error)


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """A WebSocket close frame from the server.

    Attributes:
        code: the close code (1000, 1008, 1011, ...).
        reason: the reason text on one printable line, ``""`` if none.
        tag: the Deepgram error tag found in the reason: ``"NET-0001"`` (client sent nothing
            for 10 s), ``"NET-0000"`` (server-side trouble), ``"DATA-0000"`` (audio could not be
            decoded), or ``""``.
    """

    code: int
    reason: str
    tag: str


# Deepgram's reasons are sentences with a link such as https://dpgr.am/net0001, so both the
# hyphenated tag and the link's spelling are matched.
_CLOSE_TAGS: Final = (
    (re.compile(r"net-?0001", re.IGNORECASE), "NET-0001"),
    (re.compile(r"net-?0000", re.IGNORECASE), "NET-0000"),
    (re.compile(r"data-?0000", re.IGNORECASE), "DATA-0000"),
)
#: A close reason is at most 123 bytes by RFC 6455; this only bounds a misbehaving peer.
_CLOSE_REASON_CHARS: Final = 300


def parse_close(code: int, reason: str | None) -> CloseInfo:
    """Classifies a server close frame by the Deepgram tag in its reason (Deepgram docs
    "Troubleshooting WebSocket, DATA and NET errors").

    Args:
        code: the close code.
        reason: the close reason, or None when the frame had none.

    Returns:
        The close info; never raises.
    """
    text = one_line(reason or "", _CLOSE_REASON_CHARS)
    for pattern, tag in _CLOSE_TAGS:
        if pattern.search(text):
            return CloseInfo(code, text, tag)
    return CloseInfo(code, text, "")
