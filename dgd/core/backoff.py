"""What went wrong with a connection, and how long to wait before the next attempt.

``classify_*`` turn what the shell observed (a rejected handshake, a close frame, a network
error, a liveness timeout) into a ``Failure`` with a verdict; ``RetryPolicy`` turns a failure
into a delay. The supervisor is the only caller. Randomness is injected (``random.Random``),
time is a parameter. This module does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dgd.core.connection import Credential

if TYPE_CHECKING:
    import random

    from dgd.core.connection import CloseInfo, HandshakeRejection

#: A connection that stayed up this long was healthy: the next failure starts the backoff
#: from the beginning again.
STABLE_CONNECTION_S: Final = 60.0
#: Ceiling for the rate-limited (429) backoff: a quota rarely frees up within minutes anyway.
RATE_LIMITED_MAX_S: Final = 600.0


class Verdict(enum.Enum):
    """How the supervisor should react."""

    TRANSIENT = "transient"  # network trouble or a server hiccup: retry soon, backing off
    RATE_LIMITED = "rate-limited"  # 429 too many streams: retry, but back off longer
    REJECTED = "rejected"  # key or parameters refused: will not fix itself; retry slowly
    CLOCK = "clock"  # certificate dates vs. an unsynchronised clock: retry once the clock is set


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed connection attempt or one lost connection, in words.

    Attributes:
        verdict: how to react.
        cause: short machine-friendly cause for counters and journal fields
            (``network``, ``timeout``, ``closed-1011``, ``http-503``, ``auth``, ...).
        summary: one line for the journal, saying what happened and, when it will not fix
            itself, what the operator should do.
        status: short text for systemd's ``STATUS=`` (e.g. ``auth rejected (401)``).
    """

    verdict: Verdict
    cause: str
    summary: str
    status: str


_REJECTED_HINTS: Final = {
    401: "the API key was rejected: put a valid key in the key file (/etc/dgd/api-key) and "
    "run `systemctl restart dgd` (or `reload` when the key comes from deepgram.api_key_file)",
    402: "the Deepgram project has no credit left: add credit, then `systemctl reload dgd`",
    403: "the key lacks permission for this model or feature: check [deepgram.query] and the key's "
    "role, then `systemctl reload dgd`",
    400: "Deepgram refused the query parameters: check [deepgram.query] in /etc/dgd.toml, "
    "then `systemctl reload dgd`",
    404: "no Deepgram listen endpoint at this address: check deepgram.url",
    405: "no Deepgram listen endpoint at this address: check deepgram.url",
}


#: A 401 explained by what the handshake carried (``Credential.API_KEY`` uses ``_REJECTED_HINTS``).
_UNAUTHORIZED_HINTS: Final = {
    Credential.NOTHING: (
        "the server asks for an API key: put one in /etc/dgd/api-key (or set "
        'deepgram.api_key_file), keep deepgram.auth = "key", then `systemctl restart dgd`',
        "API key needed (401)",
    ),
    Credential.GRANTED_TOKEN: (
        "the server refused the temporary token from /v1/auth/grant (expired, or issued by "
        "another server): check deepgram.url; when connecting takes long, raise "
        "deepgram.grant_ttl_s",
        "temporary token rejected (401)",
    ),
    Credential.COMMAND_TOKEN: (
        "the server refused the temporary token printed by deepgram.token_command (expired, or "
        "not a token for this server): check what the program prints",
        "temporary token rejected (401)",
    ),
}


def classify_rejection(
    rejection: HandshakeRejection, credential: Credential = Credential.API_KEY
) -> Failure:
    """Classify a handshake answered with an HTTP error instead of an upgrade.

    ``credential`` is what the handshake's ``Authorization`` header carried: a 401 then says
    what to fix (a missing key, a refused temporary token, a wrong key).
    """
    status = rejection.status
    detail = rejection.describe()
    if status == 401 and credential in _UNAUTHORIZED_HINTS:
        hint, label = _UNAUTHORIZED_HINTS[credential]
        return Failure(Verdict.REJECTED, "http-401", f"{hint} ({detail})", label)
    if status == 429:
        return Failure(
            Verdict.RATE_LIMITED,
            "http-429",
            f"Deepgram refused the stream: too many concurrent streams ({detail})",
            "rate limited (429)",
        )
    if status in _REJECTED_HINTS or (400 <= status < 500 and status != 408):
        hint = _REJECTED_HINTS.get(
            status, "the request was refused; check deepgram.url and the key"
        )
        label = "auth rejected" if status in (401, 403) else "request rejected"
        return Failure(
            Verdict.REJECTED, f"http-{status}", f"{hint} ({detail})", f"{label} ({status})"
        )
    return Failure(
        Verdict.TRANSIENT,
        f"http-{status}",
        f"Deepgram is unavailable ({detail})",
        f"server error ({status})",
    )


def classify_close(close: CloseInfo) -> Failure:
    """Classify a connection the server (or the network) closed while we were streaming."""
    reason = f" {close.reason!r}" if close.reason else ""
    tag = f" {close.tag}" if close.tag else ""
    if close.code == 1008 or close.tag == "DATA-0000":
        return Failure(
            Verdict.REJECTED,
            f"closed-{close.code}",
            f"Deepgram could not decode the audio (close {close.code}{tag}{reason}); "
            "check [audio] rate/channels and that [deepgram.query] sets no encoding",
            f"audio rejected ({close.code}{tag})",
        )
    if close.tag == "NET-0001":
        summary = (
            f"Deepgram closed the stream: it received no audio or message in time "
            f"(close {close.code}{tag}{reason})"
        )
    else:
        summary = f"the stream was closed (close {close.code}{tag}{reason})"
    return Failure(
        Verdict.TRANSIENT, f"closed-{close.code}", summary, f"closed ({close.code}{tag})"
    )


#: ``Error`` codes (``dgd.core.messages.ServerError``) that will not fix themselves, with what
#: the operator should do. Deepgram documents the message's fields, not a closed list of codes,
#: so an unknown code counts as transient (a server-side problem: retry, backing off).
_ERROR_CODE_HINTS: Final = (
    (("DATA-",), "check [audio] rate/channels and that [deepgram.query] sets no encoding"),
    (
        ("AUTH", "UNAUTHORIZED", "FORBIDDEN", "PERMISSION"),
        "check the key (or token) and its role, then `systemctl reload dgd`",
    ),
    (
        ("INVALID", "BAD_REQUEST", "UNSUPPORTED"),
        "check [deepgram.query] in /etc/dgd.toml, then `systemctl reload dgd`",
    ),
)


def classify_server_error(code: str, description: str, close: CloseInfo | None = None) -> Failure:
    """Classify a stream that ended after the server sent an ``Error`` message (``code`` and
    ``description`` as parsed, already printable), and then ``close`` (None: the link ended
    for another reason, or the connection dropped, after the Error).

    Like a close reason: an audio (``DATA-``), credential or parameter problem is REJECTED
    with what to fix; a rate limit is RATE_LIMITED; anything else (``NET-0001``, a server-side
    error, an unknown code) is TRANSIENT. The summary names the Error and the close.
    """
    upper = code.upper()
    shown = ": ".join(part for part in (code, description) if part) or "no code or description"
    closed = ""
    if close is not None:
        reason = f" {close.reason!r}" if close.reason else ""
        closed = f", then closed the stream (close {close.code}{reason})"
    summary = f"Deepgram reported an error on the stream: {shown}{closed}"
    cause = f"error-{code}" if code else "error"
    label = f"server error ({code})" if code else "server error"
    if "RATE" in upper or "TOO_MANY" in upper:
        return Failure(Verdict.RATE_LIMITED, cause, summary, f"rate limited ({code})")
    for prefixes, hint in _ERROR_CODE_HINTS:
        if any(prefix in upper for prefix in prefixes):
            return Failure(Verdict.REJECTED, cause, f"{summary}; {hint}", label)
    return Failure(Verdict.TRANSIENT, cause, summary, label)


def network_failure(description: str) -> Failure:
    """A DNS, TCP or TLS error, a reset, or a connection that dropped without a close frame."""
    return Failure(Verdict.TRANSIENT, "network", f"network error: {description}", "network error")


#: OpenSSL verify codes (``X509_V_ERR_*``) that depend on the current time.
CERT_NOT_YET_VALID: Final = 9
CERT_HAS_EXPIRED: Final = 10
#: Appended to a TLS failure when the clock may be the cause.
CLOCK_HINT: Final = "is the system clock right? (timedatectl)"

_UNTRUSTED: Final = (
    "the server's certificate is not signed by a trusted CA: behind a TLS-inspecting proxy "
    "or for a self-hosted server, put its CA in deepgram.ca_file"
)
_TLS_HINTS: Final = {
    # unable to get issuer certificate (locally), self-signed leaf or in chain, leaf unverifiable
    2: _UNTRUSTED,
    18: _UNTRUSTED,
    19: _UNTRUSTED,
    20: _UNTRUSTED,
    21: _UNTRUSTED,
    62: "the certificate is for another host name: check deepgram.url",
    64: "the certificate is for another IP address: check deepgram.url",
}


def tls_failure(
    verify_code: int | None, description: str, *, clock_synchronized: bool | None
) -> Failure:
    """A refused certificate (``verify_code``: OpenSSL's ``X509_V_ERR_*``; None: the TLS
    handshake failed otherwise) described by ``description`` (names the host).

    A certificate not yet valid or expired is CLOCK: on a device without a battery-backed
    clock the clock is the usual cause, and the supervisor retries once it is set. Other
    refusals (unknown CA, wrong host name) do not depend on the time and will not fix
    themselves: REJECTED, so that the server is not hammered; when the clock is known to be
    unsynchronised (``clock_synchronized`` False; None: unknown) they name it too. A handshake
    that failed without a verdict on the certificate (no common protocol, not TLS) is
    REJECTED as well.
    """
    if verify_code in (CERT_NOT_YET_VALID, CERT_HAS_EXPIRED):
        return Failure(
            Verdict.CLOCK, "tls-clock", f"{description}; {CLOCK_HINT}", "TLS: check the clock"
        )
    if clock_synchronized is False and verify_code is not None:
        description = f"{description}; the clock is not synchronised: {CLOCK_HINT}"
    if verify_code is None:
        return Failure(
            Verdict.REJECTED,
            "tls",
            f"{description}; check deepgram.url (wss:// and the port of a TLS server)",
            "TLS handshake failed",
        )
    hint = _TLS_HINTS.get(verify_code, "see docs/NETWORK.md")
    return Failure(Verdict.REJECTED, "tls", f"{description}; {hint}", "TLS: certificate refused")


def proxy_failure(status: int | None, description: str) -> Failure:
    """The HTTP proxy refused the tunnel (``status``) or could not be reached (None).

    407 and 403 will not fix themselves (REJECTED, with what to fix); a gateway error
    (502/503/504), a refused connection or a timeout is TRANSIENT.
    """
    if status == 407:
        return Failure(
            Verdict.REJECTED,
            "proxy-407",
            f"{description}; fix the proxy credentials (deepgram.proxy_credentials_file)",
            "proxy authentication failed (407)",
        )
    if status is not None and 400 <= status < 500:
        return Failure(
            Verdict.REJECTED,
            f"proxy-{status}",
            f"{description}; the proxy refuses the tunnel: ask its administrator to allow "
            "CONNECT to this host and port, or set deepgram.proxy",
            f"proxy refused ({status})",
        )
    cause = f"proxy-{status}" if status is not None else "proxy"
    label = f"proxy error ({status})" if status is not None else "proxy unreachable"
    return Failure(Verdict.TRANSIENT, cause, description, label)


def config_failure(description: str) -> Failure:
    """A setting that became unusable since startup (e.g. ``deepgram.ca_file`` deleted)."""
    return Failure(
        Verdict.REJECTED,
        "config",
        f"{description}; fix /etc/dgd.toml, then `systemctl reload dgd`",
        "configuration problem",
    )


def timeout_failure(description: str) -> Failure:
    """The server stopped answering (connect, ping or send timed out)."""
    return Failure(
        Verdict.TRANSIENT, "timeout", f"timed out: {description}", "server not answering"
    )


class RetryPolicy:
    """Capped exponential backoff with full jitter, per verdict.

    Args:
        initial_s: ceiling of the first transient retry (the delay is uniform in [0, ceiling]).
        max_s: the cap for transient retries.
        rate_limited_s: base delay after a 429, doubled per 429 in a row (any other failure
            or a connection ends the streak).
        rejected_s: delay after a rejected key or bad parameters (these do not fix themselves).
        rng: the random source, injected so tests are exact.
    """

    def __init__(
        self,
        *,
        initial_s: float,
        max_s: float,
        rate_limited_s: float,
        rejected_s: float,
        rng: random.Random,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rate_limited_s = rate_limited_s
        self.rejected_s = rejected_s
        self._rng = rng
        self.attempt = 0  # consecutive failures since the last stable connection
        self._rate_limited_streak = 0  # 429s in a row: only they double the 429 delay
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        """A connection was established at ``now``."""
        self._connected_at = now
        self._rate_limited_streak = 0

    def failed(self, failure: Failure, now: float) -> float:
        """Record a failure at ``now`` and return the delay before the next attempt."""
        if self._connected_at is not None and now - self._connected_at >= STABLE_CONNECTION_S:
            self.attempt = 0
        self._connected_at = None
        exponent = min(self.attempt, 30)
        self.attempt += 1
        if failure.verdict is Verdict.RATE_LIMITED:
            streak = min(self._rate_limited_streak, 30)
            self._rate_limited_streak += 1
            ceiling = min(RATE_LIMITED_MAX_S, self.rate_limited_s * 2.0**streak)
            return self._rng.uniform(ceiling / 2, ceiling)
        self._rate_limited_streak = 0
        if failure.verdict is Verdict.CLOCK:
            # An upper bound: the supervisor retries as soon as the clock is synchronised.
            return self.max_s
        if failure.verdict is Verdict.REJECTED:
            # Jitter of ±10 % keeps a fleet of devices with the same bad key from retrying in step.
            return self.rejected_s * self._rng.uniform(0.9, 1.1)
        ceiling = min(self.max_s, self.initial_s * 2.0**exponent)
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Start over (SIGHUP after fixing the key: retry at once, from the beginning)."""
        self.attempt = 0
        self._rate_limited_streak = 0
        self._connected_at = None


#: An absent or busy microphone is tried again after this long at first, ...
DEVICE_RETRY_INITIAL_S: Final = 0.5
#: ... doubling up to this: a replugged USB microphone is back within 10 s.
DEVICE_RETRY_MAX_S: Final = 10.0
#: A device that opens in the wrong format (a configuration problem) is tried again this
#: often: it will not fix itself, but a replaced microphone or a reload may.
DEVICE_MISCONFIGURED_RETRY_S: Final = 60.0


class DeviceRetry:
    """When to try opening an absent or busy audio device again: doubling delays, capped, no
    jitter (one device, one process: nothing to spread out). Reset when it opens."""

    def __init__(
        self, initial_s: float = DEVICE_RETRY_INITIAL_S, max_s: float = DEVICE_RETRY_MAX_S
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.next_s = initial_s

    def failed(self, *, misconfigured: bool = False) -> float:
        """An attempt failed: the delay before the next one (``DEVICE_MISCONFIGURED_RETRY_S``
        when the device is there but does not fit the configuration)."""
        if misconfigured:
            return DEVICE_MISCONFIGURED_RETRY_S
        delay_s = self.next_s
        self.next_s = min(self.max_s, self.next_s * 2)
        return delay_s

    def opened(self) -> None:
        """The device opened: the next failure starts from the first delay again."""
        self.next_s = self.initial_s
