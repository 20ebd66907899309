"""Temporary tokens: Deepgram's ``/v1/auth/grant`` request and answer, a token's characters,
and what a failed grant or token command means.

A temporary token is sent as ``Authorization: Bearer <token>``. dgd gets one per connection,
either by ``POST /v1/auth/grant`` authorised with the long-lived key (``deepgram.auth =
"grant"``) or from a program (``deepgram.auth = "command"``). This module builds the grant
request, parses its answer with bounds, checks that a token fits in a header, and turns a
failure into a ``dgd.core.backoff.Failure``. No message ever contains a token or the key.
This module does no I/O; ``dgd.daemon.credentials`` does the HTTP and runs the program.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dgd.core.backoff import Failure, Verdict
from dgd.core.config import describe_char
from dgd.core.logtext import one_line

if TYPE_CHECKING:
    from dgd.core.connection import HandshakeRejection

#: Deepgram's token endpoint (REST, on the same host as ``/v1/listen``).
GRANT_PATH: Final = "/v1/auth/grant"
LISTEN_SUFFIX: Final = "/v1/listen"
#: ``ttl_seconds`` bounds that ``/v1/auth/grant`` accepts.
MIN_GRANT_TTL_S: Final = 1
MAX_GRANT_TTL_S: Final = 3600
#: Largest grant answer read: Deepgram's is a ~300-byte JSON object; a proxy's or a
#: misconfigured server's page is cut off here instead of filling memory.
MAX_GRANT_RESPONSE_BYTES: Final = 1 << 16
#: Longest token accepted: Deepgram's are JWTs of a few hundred characters; a header line this
#: long is already more than most servers take.
MAX_TOKEN_CHARS: Final = 8192
#: Largest output of ``deepgram.token_command`` kept (stdout and stderr each); the rest is
#: read and dropped, so a chatty program can neither block nor fill memory.
MAX_COMMAND_OUTPUT_BYTES: Final = 1 << 16
#: Characters of a failed command's stderr quoted in the journal.
STDERR_EXCERPT_CHARS: Final = 200
#: The message every refused grant carries: the usual cause.
GRANT_ROLE_HINT: Final = (
    "the key cannot create temporary tokens: it needs the Member role or higher "
    "(Deepgram console, API keys)"
)


class TokenError(ValueError):
    """A grant answer or a program's output did not hold a usable token (the message says
    why and never contains the token)."""


@dataclass(frozen=True, slots=True)
class GrantTarget:
    """Where ``POST /v1/auth/grant`` goes for a given ``deepgram.url``.

    Attributes:
        host: the host name or address to connect to (an IPv6 literal without brackets).
        port: the TCP port (443 for ``wss``, 80 for ``ws`` when the URL names none).
        tls: True for ``wss://`` (the grant then goes over ``https``).
        host_header: the ``Host`` header: the URL's authority (brackets and port as written).
        path: the request target, ``/v1/auth/grant`` (after the URL's path prefix, if any).
    """

    host: str
    port: int
    tls: bool
    host_header: str
    path: str

    @property
    def url(self) -> str:
        """The grant URL as an operator would write it (for messages)."""
        return f"{'https' if self.tls else 'http'}://{self.host_header}{self.path}"


@dataclass(frozen=True, slots=True)
class GrantedToken:
    """A token ``/v1/auth/grant`` issued.

    Attributes:
        access_token: the token (a secret: register it, never log it).
        expires_in_s: its lifetime as the server stated it, in seconds.
    """

    access_token: str
    expires_in_s: float

    def __repr__(self) -> str:
        return f"GrantedToken(<redacted>, expires_in_s={self.expires_in_s:g})"


def grant_target(listen_url: str) -> GrantTarget:
    """The grant endpoint beside ``listen_url``: ``wss`` → ``https``, ``ws`` → ``http``, same
    host and port; the path is ``/v1/auth/grant``, after the prefix in front of
    ``/v1/listen`` when there is one (a self-hosted server behind ``/deepgram/v1/listen``).

    Args:
        listen_url: ``deepgram.url`` (validated by the config: ``ws``/``wss``, a host).

    Raises:
        ValueError: the URL is not ``ws://`` or ``wss://`` with a host and a valid port.
    """
    parts = urllib.parse.urlsplit(listen_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{listen_url}: not a ws:// or wss:// URL with a host")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)  # .port raises ValueError on a bad one
    path = parts.path.rstrip("/")
    prefix = path[: -len(LISTEN_SUFFIX)] if path.endswith(LISTEN_SUFFIX) else ""
    return GrantTarget(
        host=parts.hostname,
        port=port,
        tls=tls,
        host_header=parts.netloc,
        path=prefix + GRANT_PATH,
    )


def grant_request_body(ttl_s: int) -> bytes:
    """The JSON body of the grant request: ``{"ttl_seconds": ttl_s}``.

    Raises:
        ValueError: ``ttl_s`` is outside 1..3600 (Deepgram's bounds).
    """
    if not MIN_GRANT_TTL_S <= ttl_s <= MAX_GRANT_TTL_S:
        raise ValueError(f"ttl_seconds must be {MIN_GRANT_TTL_S}..{MAX_GRANT_TTL_S}, not {ttl_s}")
    return json.dumps({"ttl_seconds": ttl_s}, separators=(",", ":")).encode()


def grant_request_headers(
    target: GrantTarget, api_key: str, body_bytes: int
) -> list[tuple[str, str]]:
    """The grant request's headers: ``Host``, ``Authorization: Token <api_key>``, a JSON body
    of ``body_bytes`` bytes, and ``Connection: close`` (one request per connection)."""
    return [
        ("Host", target.host_header),
        ("Authorization", "Token " + api_key),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("Content-Length", str(body_bytes)),
        ("Connection", "close"),
        ("User-Agent", "dgd"),
    ]


def check_token(token: str, where: str) -> None:
    """Refuse a token that an ``Authorization`` header cannot carry.

    A token is 1..``MAX_TOKEN_CHARS`` visible ASCII characters (no space, no control
    character): what ``Bearer`` credentials are made of (RFC 6750's ``b64token``, JWTs), with
    room for any opaque token a fleet service hands out. The message names the character and
    its position, never the token.

    Raises:
        TokenError: ``"<where>: the token is empty"``, ``"... is N characters long ..."`` or
            ``"<where>: character N of the token is ..."``.
    """
    if not token:
        raise TokenError(f"{where}: the token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(
            f"{where}: the token is {len(token)} characters long; at most {MAX_TOKEN_CHARS} fit"
            " in a header"
        )
    for position, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            raise TokenError(
                f"{where}: character {position} of the token is {describe_char(char)}, which a"
                " Bearer token cannot contain (visible ASCII only)"
            )


def parse_grant_response(body: bytes) -> GrantedToken:
    """The token in a ``200`` answer of ``/v1/auth/grant``:
    ``{"access_token": "<token>", "expires_in": <seconds>}``.

    Args:
        body: the response body (already bounded by the reader).

    Returns:
        The token and its lifetime.

    Raises:
        TokenError: not JSON, not an object, no string ``access_token``, a token that cannot
            be sent (``check_token``), or ``expires_in`` present but not a positive number.
    """
    if len(body) > MAX_GRANT_RESPONSE_BYTES:
        raise TokenError(f"the answer is larger than {MAX_GRANT_RESPONSE_BYTES} bytes")
    try:
        document: object = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError("the answer is not JSON") from None
    if not isinstance(document, dict):
        raise TokenError("the answer is not a JSON object")
    token = document.get("access_token")
    if not isinstance(token, str):
        raise TokenError("the answer has no access_token string")
    check_token(token, "access_token")
    expires_in = document.get("expires_in")
    if expires_in is None:
        return GrantedToken(token, float("nan"))
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not 0 < expires_in < float("inf")
    ):
        raise TokenError(f"expires_in must be a positive number of seconds, not {expires_in!r}")
    return GrantedToken(token, float(expires_in))


def command_token(stdout: bytes) -> str:
    """The token a ``deepgram.token_command`` printed: its first line, without surrounding
    whitespace (a trailing newline or ``\\r\\n`` is usual).

    Raises:
        TokenError: no output, a blank first line, output that is not UTF-8, or a token that
            cannot be sent (``check_token``).
    """
    try:
        text = stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("its output is not UTF-8 text") from None
    first = text.split("\n", 1)[0].strip()
    if not first:
        raise TokenError("it printed nothing" if not text.strip() else "its first line is blank")
    check_token(first, "its first line")
    return first


def grant_rejected_failure(target: GrantTarget, rejection: HandshakeRejection) -> Failure:
    """``/v1/auth/grant`` answered with an HTTP error.

    401 and 403 are REJECTED with ``GRANT_ROLE_HINT`` (a wrong key, or one below the Member
    role); 429 is RATE_LIMITED; another 4xx is REJECTED (no grant endpoint at this address:
    check ``deepgram.url``); 408 and 5xx are TRANSIENT.
    """
    status = rejection.status
    detail = rejection.describe()
    where = f"POST {target.url}"
    if status in (401, 403):
        return Failure(
            Verdict.REJECTED,
            f"grant-{status}",
            f"{GRANT_ROLE_HINT}; check the key in /etc/dgd/api-key (or deepgram.api_key_file)"
            f" ({where}: {detail})",
            f"token grant refused ({status})",
        )
    if status == 429:
        return Failure(
            Verdict.RATE_LIMITED,
            "grant-429",
            f"Deepgram refused a temporary token: too many requests ({where}: {detail})",
            "token grant rate limited (429)",
        )
    if 400 <= status < 500 and status != 408:
        return Failure(
            Verdict.REJECTED,
            f"grant-{status}",
            f"the server refused the token request: check deepgram.url (a self-hosted server may"
            f' have no /v1/auth/grant: use deepgram.auth = "key" or "none") ({where}: {detail})',
            f"token grant refused ({status})",
        )
    return Failure(
        Verdict.TRANSIENT,
        f"grant-{status}",
        f"the token endpoint is unavailable ({where}: {detail})",
        f"token grant failed ({status})",
    )


def grant_unavailable_failure(target: GrantTarget, description: str) -> Failure:
    """The grant request failed before an HTTP status (network, TLS, proxy, timeout) or its
    answer held no usable token: TRANSIENT."""
    return Failure(
        Verdict.TRANSIENT,
        "grant",
        f"could not get a temporary token from POST {target.url}: {description}",
        "token grant failed",
    )


def command_failure(program: str, description: str) -> Failure:
    """``deepgram.token_command`` failed (``description``: exit status, timeout, no output,
    and a stderr excerpt): TRANSIENT, as the program's own source may be down for a while."""
    return Failure(
        Verdict.TRANSIENT,
        "token-command",
        f"deepgram.token_command {program} gave no token: {description}",
        "token command failed",
    )


def stderr_excerpt(stderr: bytes) -> str:
    """The start of a program's stderr on one printable line (``""`` when it wrote nothing)."""
    return one_line(stderr.decode("utf-8", "replace"), STDERR_EXCERPT_CHARS)
