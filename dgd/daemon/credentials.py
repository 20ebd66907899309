"""The ``Authorization`` header of each connection, for the config's ``deepgram.auth``.

``authorization`` is called once per connection attempt, just before the handshake:

- ``key``: ``Token <key>``; no header when no key is configured (a self-hosted server that
  asks for none);
- ``grant``: ``POST /v1/auth/grant`` beside ``deepgram.url`` (``wss`` → ``https``, same host
  and port) with ``Token <key>`` and ``{"ttl_seconds": deepgram.grant_ttl_s}``, over the same
  transport as the WebSocket (proxy, ``ca_file``), then ``Bearer <access_token>``;
- ``command``: runs ``deepgram.token_command`` (no shell); the first line of its output is
  the token, sent as ``Bearer <token>``;
- ``none``: no header.

Every token is registered with ``logsetup.register_token`` before anything else happens to
it, so no log line can show it. A failure raises ``CredentialError`` carrying the
``dgd.core.backoff.Failure`` the supervisor logs and backs off on (``dgd.core.tokens`` builds
it): a refused grant is REJECTED, a server or network trouble and a failed program TRANSIENT.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import h11
import trio

from dgd.core.backoff import Failure, Verdict
from dgd.core.config import AuthMode
from dgd.core.connection import Credential, auth_headers, bearer_headers, parse_rejection
from dgd.core.logtext import one_line
from dgd.core.tokens import (
    MAX_COMMAND_OUTPUT_BYTES,
    MAX_GRANT_RESPONSE_BYTES,
    GrantedToken,
    GrantTarget,
    TokenError,
    command_failure,
    command_token,
    grant_rejected_failure,
    grant_request_body,
    grant_request_headers,
    grant_target,
    grant_unavailable_failure,
    parse_grant_response,
    stderr_excerpt,
)
from dgd.daemon import logsetup, transport

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dgd.core.config import DeepgramConfig

log = logging.getLogger("dgd.credentials")

#: Bytes asked of the stream per read of the grant answer.
_READ_BYTES: Final = 16384
#: Bytes of an answer that is not HTTP quoted in the message (a TLS alert, an SSH banner).
_START_BYTES: Final = 60


class _BadAnswer(Exception):
    """The grant endpoint's answer is not an HTTP response (the message says what it is)."""


class CredentialError(Exception):
    """No credentials for this attempt; ``failure`` says why and how to react."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.summary)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class Authorization:
    """The handshake headers of one attempt and what they carry.

    Attributes:
        headers: ``[("Authorization", ...)]``, or empty.
        credential: what the header holds, for explaining a 401
            (``dgd.core.backoff.classify_rejection``).
    """

    headers: tuple[tuple[str, str], ...]
    credential: Credential

    def __repr__(self) -> str:
        return f"Authorization(<redacted>, {self.credential})"


async def authorization(
    cfg: DeepgramConfig, api_key: str, *, network: transport.Network, timeout_s: float
) -> Authorization:
    """The ``Authorization`` header for the next connection under ``cfg.auth``.

    Args:
        cfg: the ``[deepgram]`` config in force.
        api_key: the key in force, ``""`` when none is configured.
        network: how to reach the grant endpoint (``auth = "grant"`` only): the WebSocket's
            own proxy and trusted CAs (``transport.network_for``).
        timeout_s: bound on the whole grant exchange or the token command
            (``stream.connect_timeout_s``).

    Raises:
        CredentialError: no token could be had (``failure`` classifies it).
        transport.TlsError, transport.ProxyError: the grant's certificate or proxy failed, as
            the WebSocket's would (the caller classifies them as it does those).
    """
    if cfg.auth is AuthMode.NONE or (cfg.auth is AuthMode.KEY and not api_key):
        return Authorization((), Credential.NOTHING)
    if cfg.auth is AuthMode.KEY:
        return Authorization(tuple(auth_headers(api_key)), Credential.API_KEY)
    if cfg.auth is AuthMode.GRANT:
        if not api_key:
            raise CredentialError(
                Failure(
                    Verdict.REJECTED,
                    "grant-no-key",
                    'deepgram.auth = "grant" needs the API key to ask for temporary tokens: put'
                    " it in /etc/dgd/api-key (or set deepgram.api_key_file)",
                    "no API key for token grant",
                )
            )
        target = grant_target(cfg.url)
        granted = await request_grant(
            target, api_key, cfg.grant_ttl_s, network=network, timeout_s=timeout_s
        )
        log.debug(
            "got a temporary token from POST %s (expires in %g s)",
            target.url,
            granted.expires_in_s,
        )
        return Authorization(tuple(bearer_headers(granted.access_token)), Credential.GRANTED_TOKEN)
    token = await run_token_command(cfg.token_command, timeout_s=timeout_s)
    log.debug("got a temporary token from deepgram.token_command %s", cfg.token_command[0])
    return Authorization(tuple(bearer_headers(token)), Credential.COMMAND_TOKEN)


async def request_grant(
    target: GrantTarget,
    api_key: str,
    ttl_s: int,
    *,
    network: transport.Network,
    timeout_s: float,
) -> GrantedToken:
    """``POST /v1/auth/grant`` with ``Token <api_key>``: a temporary token, registered as a
    secret before this returns.

    Raises:
        CredentialError: an HTTP error status (401/403 REJECTED, 5xx TRANSIENT, see
            ``dgd.core.tokens.grant_rejected_failure``), no answer within ``timeout_s``, a
            network error, or an answer with no usable token (TRANSIENT).
        transport.TlsError, transport.ProxyError: as from ``transport.open_stream``.
    """
    body = grant_request_body(ttl_s)
    headers = grant_request_headers(target, api_key, len(body))
    try:
        with trio.fail_after(timeout_s):
            stream = await transport.open_stream(
                target.host, target.port, tls=target.tls, network=network, timeout_s=timeout_s
            )
            try:
                status, response_headers, answer = await _exchange(stream, target, headers, body)
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        raise CredentialError(
            grant_unavailable_failure(target, f"no answer within {timeout_s:g} s")
        ) from None
    except _BadAnswer as exc:
        raise CredentialError(grant_unavailable_failure(target, str(exc))) from None
    except (transport.TlsError, transport.ProxyError):
        raise  # same host, same proxy: the failure the WebSocket would have, named the same way
    except transport.NetworkError as exc:
        raise CredentialError(grant_unavailable_failure(target, str(exc))) from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        # The connection broke during the exchange (a reset: BrokenResourceError from an
        # OSError, named by the OSError's text).
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise CredentialError(
            grant_unavailable_failure(target, str(cause) or type(cause).__name__)
        ) from None
    if not 200 <= status < 300:
        rejection = parse_rejection(status, response_headers, answer)
        raise CredentialError(grant_rejected_failure(target, rejection))
    try:
        granted = parse_grant_response(answer)
    except TokenError as exc:
        raise CredentialError(
            grant_unavailable_failure(target, f"HTTP {status}, but {exc}")
        ) from None
    logsetup.register_token(granted.access_token)
    return granted


async def _exchange(
    stream: trio.abc.Stream,
    target: GrantTarget,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Send one HTTP/1.1 request and read its answer: (status, headers, body; a body longer
    than ``MAX_GRANT_RESPONSE_BYTES`` is cut one byte after it, for the parser to refuse).

    Raises:
        _BadAnswer: the connection closed before a response, or the answer is not HTTP/1.1.
    """
    try:
        return await _exchange_h11(stream, target, headers, body)
    except h11.RemoteProtocolError as exc:
        raise _BadAnswer(f"the answer is not valid HTTP/1.1 ({exc})") from None


async def _exchange_h11(
    stream: trio.abc.Stream,
    target: GrantTarget,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_GRANT_RESPONSE_BYTES)
    request = h11.Request(method="POST", target=target.path, headers=list(headers))
    await stream.send_all(
        conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    )
    response: h11.Response | None = None
    start = bytearray()  # the first bytes received, to show what a non-HTTP answer was
    answer = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = bytes(await stream.receive_some(_READ_BYTES))
            if response is None:
                start += chunk[: _START_BYTES - len(start)]
                if not chunk:
                    raise _BadAnswer(_no_response(bytes(start)))
            conn.receive_data(chunk)  # b"": the end of the answer when it has no length
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            answer += event.data
            if len(answer) > MAX_GRANT_RESPONSE_BYTES:
                break  # enough to say what went wrong; the rest is not read
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if response is None:  # h11 gives a Response before any Data or EndOfMessage
        raise _BadAnswer("the server closed the connection without an answer")
    response_headers = [(bytes(name), bytes(value)) for name, value in response.headers]
    return response.status_code, response_headers, bytes(answer[: MAX_GRANT_RESPONSE_BYTES + 1])


def _no_response(start: bytes) -> str:
    if not start:
        return "the server closed the connection without an answer"
    return f"the answer is not HTTP/1.1: {one_line(start.decode('latin-1'), _START_BYTES)!r}"


async def run_token_command(argv: Sequence[str], *, timeout_s: float) -> str:
    """Run ``argv`` (no shell, stdin from /dev/null) and return the first line of its output,
    registered as a secret. A program still running after ``timeout_s`` is killed.

    Raises:
        CredentialError: the program cannot be started, exits non-zero or by a signal, runs
            too long, or prints no usable token (TRANSIENT; the message names the program,
            the exit status and the start of its stderr, never its output).
    """
    program = argv[0]
    try:
        with trio.fail_after(timeout_s):
            returncode, stdout, stderr = await _run_bounded(argv)
    except trio.TooSlowError:
        raise CredentialError(
            command_failure(program, f"still running after {timeout_s:g} s; it was killed")
        ) from None
    except OSError as exc:
        raise CredentialError(
            command_failure(program, f"cannot run it: {exc.strerror or exc}")
        ) from None
    said = _stderr_note(stderr)
    if returncode != 0:
        raise CredentialError(command_failure(program, _exit_description(returncode) + said))
    try:
        token = command_token(stdout)
    except TokenError as exc:
        raise CredentialError(command_failure(program, f"{exc}{said}")) from None
    logsetup.register_token(token)
    return token


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"it was killed by {name}"
    return f"it exited with status {returncode}"


def _stderr_note(stderr: bytes) -> str:
    excerpt = logsetup.SECRETS.scrub(stderr_excerpt(stderr))
    return f"; it said: {excerpt}" if excerpt else ""


async def _run_bounded(argv: Sequence[str]) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to its end; keep at most ``MAX_COMMAND_OUTPUT_BYTES`` of stdout and of
    stderr (reading and dropping the rest, so the program never blocks on a full pipe). A
    cancelled run kills the program and waits for it."""
    process = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout = bytearray()
    stderr = bytearray()
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None  # stdout=PIPE
            assert process.stderr is not None  # stderr=PIPE
            nursery.start_soon(_drain, process.stdout, stdout)
            nursery.start_soon(_drain, process.stderr, stderr)
        returncode = await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
    return returncode, bytes(stdout), bytes(stderr)


async def _drain(stream: trio.abc.ReceiveStream, kept: bytearray) -> None:
    while chunk := await stream.receive_some(_READ_BYTES):
        room = MAX_COMMAND_OUTPUT_BYTES - len(kept)
        if room > 0:
            kept += chunk[:room]
