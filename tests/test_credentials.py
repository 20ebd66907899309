"""Per-connection credentials (dgd.daemon.credentials) with real parts: the real fake server's
``POST /v1/auth/grant`` and WebSocket on 127.0.0.1 (plain, and over TLS with a throwaway CA
trusted through ``deepgram.ca_file``), small real HTTP servers for the answers it does not
give (5xx, garbage, silence), and real programs as ``deepgram.token_command``.

Every failure is checked for its exact verdict and cause, for a message that says what to
fix, and for the absence of the key and the token in it; every token obtained must be in the
log scrubber (``logsetup.SECRETS``) before it is returned.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trio.testing
import trio_websocket

from dgd.core.backoff import Verdict
from dgd.core.config import AuthMode, DeepgramConfig
from dgd.core.connection import Credential
from dgd.core.tokens import GRANT_ROLE_HINT, MAX_COMMAND_OUTPUT_BYTES, grant_target
from dgd.daemon import logsetup, transport, wsclient
from dgd.daemon.credentials import (
    Authorization,
    CredentialError,
    authorization,
    request_grant,
    run_token_command,
)
from dgd.testing.fakeserver import FaultPlan, serve
from dgd.testing.fakeserver.grant import is_grant_request
from dgd.testing.fakeserver.server import tls_server_context
from tests.tlsca import Certificates, ServerCertificate, make_certificates

if TYPE_CHECKING:
    from pathlib import Path

KEY: Final = "credentials-test-key-0123"
QUERY: Final = "encoding=linear16&sample_rate=16000&channels=1"
TIMEOUT_S: Final = 5.0


#: Direct connections trusting the system's CAs (no proxy: the environment is empty).
DIRECT: Final = transport.network_for(DeepgramConfig(), {})


async def fake_server(
    nursery: trio.Nursery, tmp_path: Path | None = None, *, require_auth: bool = True
) -> str:
    """The real fake server accepting ``KEY``; returns its ``ws://`` listen URL."""
    port = await nursery.start(
        lambda task_status: serve(
            "127.0.0.1",
            0,
            faults=FaultPlan.none(),
            record_dir=tmp_path,
            api_key=KEY,
            require_auth=require_auth,
            task_status=task_status,
        )
    )
    return f"ws://127.0.0.1:{port}/v1/listen"


async def canned_server(nursery: trio.Nursery, response: bytes | None) -> str:
    """An HTTP server that reads the request and sends ``response`` (None: never answers)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        if response is None:
            await trio.sleep_forever()
        await stream.send_all(response)
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, answer, listeners)
    port = listeners[0].socket.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/listen"


def grant_config(url: str, ttl_s: int = 30) -> DeepgramConfig:
    return DeepgramConfig(url=url, auth=AuthMode.GRANT, grant_ttl_s=ttl_s)


async def handshake_status(url: str, auth: Authorization) -> int:
    """101 when the fake server accepts a WebSocket with ``auth``'s headers, else the status."""
    headers = [(k.encode(), v.encode()) for k, v in auth.headers]
    try:
        async with trio_websocket.open_websocket_url(
            f"{url}?{QUERY}", extra_headers=headers, connect_timeout=TIMEOUT_S
        ):
            return 101
    except trio_websocket.ConnectionRejected as exc:
        return int(exc.status_code)


def bearer_token(auth: Authorization) -> str:
    ((name, value),) = auth.headers
    assert name == "Authorization"
    scheme, _, token = value.partition(" ")
    assert scheme == "Bearer"
    return token


# --- key and none ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "api_key", "expected"),
    [
        (
            AuthMode.KEY,
            KEY,
            Authorization((("Authorization", f"Token {KEY}"),), Credential.API_KEY),
        ),
        (AuthMode.KEY, "", Authorization((), Credential.NOTHING)),
        (AuthMode.NONE, KEY, Authorization((), Credential.NOTHING)),
        (AuthMode.NONE, "", Authorization((), Credential.NOTHING)),
    ],
)
async def test_key_and_none(auth: AuthMode, api_key: str, expected: Authorization) -> None:
    cfg = DeepgramConfig(url="ws://127.0.0.1:1/v1/listen", auth=auth)
    got = await authorization(cfg, api_key, network=DIRECT, timeout_s=TIMEOUT_S)
    assert got == expected
    assert KEY not in repr(got)


async def test_no_key_is_accepted_by_a_server_without_auth_and_refused_by_one_with() -> None:
    async with trio.open_nursery() as nursery:
        open_url = await fake_server(nursery, require_auth=False)
        closed_url = await fake_server(nursery)
        nothing = Authorization((), Credential.NOTHING)
        assert await handshake_status(open_url, nothing) == 101
        assert await handshake_status(closed_url, nothing) == 401
        nursery.cancel_scope.cancel()


# --- grant -------------------------------------------------------------------------------


async def test_grant_gives_a_bearer_token_the_server_accepts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        url = await fake_server(nursery, tmp_path)
        auth = await authorization(grant_config(url), KEY, network=DIRECT, timeout_s=TIMEOUT_S)
        assert auth.credential is Credential.GRANTED_TOKEN
        token = bearer_token(auth)
        assert token in logsetup.SECRETS.secrets  # scrubbed from every log line from now on
        assert token not in repr(auth)
        assert await handshake_status(url, auth) == 101
        # A second connection gets a token of its own.
        again = await authorization(grant_config(url), KEY, network=DIRECT, timeout_s=TIMEOUT_S)
        assert bearer_token(again) != token
        nursery.cancel_scope.cancel()
    grants = [json.loads(line) for line in (tmp_path / "grants.jsonl").read_text().splitlines()]
    assert [(g["status"], g["expires_in"]) for g in grants] == [(200, 30), (200, 30)]
    assert grants[0]["access_token"] == token
    handshake = json.loads((tmp_path / "conn-0001.jsonl").read_text().splitlines()[0])
    assert (handshake["auth"], handshake["auth_ok"], handshake["status"]) == ("bearer", True, 101)


async def test_a_token_expires_on_the_fake_server(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        url = await fake_server(nursery)
        auth = await authorization(
            grant_config(url, ttl_s=2), KEY, network=DIRECT, timeout_s=TIMEOUT_S
        )
        assert await handshake_status(url, auth) == 101
        await trio.sleep(2.5)
        assert await handshake_status(url, auth) == 401
        forged = Authorization((("Authorization", "Bearer fake.forged"),), Credential.NOTHING)
        assert await handshake_status(url, forged) == 401
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("api_key", ["wrong-key-0123456", ""])
async def test_grant_with_a_refused_key_is_rejected_with_the_role_hint(api_key: str) -> None:
    async with trio.open_nursery() as nursery:
        url = await fake_server(nursery)
        with pytest.raises(CredentialError) as caught:
            await authorization(grant_config(url), api_key, network=DIRECT, timeout_s=TIMEOUT_S)
        nursery.cancel_scope.cancel()
    failure = caught.value.failure
    assert failure.verdict is Verdict.REJECTED
    if api_key:
        assert failure.cause == "grant-401"
        assert failure.status == "token grant refused (401)"
        assert GRANT_ROLE_HINT in failure.summary
        assert "HTTP 401 INVALID_AUTH: Invalid credentials." in failure.summary
        assert api_key not in failure.summary
    else:  # no key at all: nothing is sent, the operator is told to provide one
        assert failure.cause == "grant-no-key"
        assert "/etc/dgd/api-key" in failure.summary


GARBAGE_200: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!"
HUGE_200: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b'{"access_token":"' + b"a" * 199983
)
UNAVAILABLE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: 58\r\n\r\n"
    b'{"err_code":"SERVICE_UNAVAILABLE","err_msg":"Try later."}  '
)


@pytest.mark.parametrize(
    ("response", "verdict", "cause", "says"),
    [
        pytest.param(
            UNAVAILABLE,
            Verdict.TRANSIENT,
            "grant-503",
            "the token endpoint is unavailable (POST http://127.0.0.1:{port}/v1/auth/grant:"
            " HTTP 503 SERVICE_UNAVAILABLE: Try later.)",
            id="503",
        ),
        pytest.param(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            Verdict.REJECTED,
            "grant-404",
            "check deepgram.url (a self-hosted server may have no /v1/auth/grant",
            id="404-self-hosted-without-grant",
        ),
        pytest.param(
            GARBAGE_200,
            Verdict.TRANSIENT,
            "grant",
            "/v1/auth/grant: HTTP 200, but the answer is not JSON",
            id="garbage",
        ),
        pytest.param(
            HUGE_200,
            Verdict.TRANSIENT,
            "grant",
            "HTTP 200, but the answer is larger than 65536 bytes",
            id="huge",
        ),
        pytest.param(
            b"SSH-2.0-OpenSSH_9.2\r\n",
            Verdict.TRANSIENT,
            "grant",
            "/v1/auth/grant: the answer is not HTTP/1.1: 'SSH-2.0-OpenSSH_9.2'",
            id="not-http",
        ),
        pytest.param(
            b"",
            Verdict.TRANSIENT,
            "grant",
            "/v1/auth/grant: the server closed the connection without an answer",
            id="closed",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Verdict.TRANSIENT,
            "grant",
            "/v1/auth/grant: the answer is not valid HTTP/1.1 (conflicting Content-Length",
            id="invalid-http",
        ),
    ],
)
async def test_grant_answers_other_than_a_token(
    response: bytes, verdict: Verdict, cause: str, says: str
) -> None:
    async with trio.open_nursery() as nursery:
        url = await canned_server(nursery, response)
        port = url.split(":")[2].split("/")[0]
        with pytest.raises(CredentialError) as caught:
            await authorization(grant_config(url), KEY, network=DIRECT, timeout_s=5.0)
        nursery.cancel_scope.cancel()
    failure = caught.value.failure
    assert (failure.verdict, failure.cause) == (verdict, cause)
    assert says.format(port=port) in failure.summary
    assert KEY not in failure.summary


async def test_grant_without_an_answer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        url = await canned_server(nursery, None)
        with pytest.raises(CredentialError) as caught:
            await authorization(grant_config(url), KEY, network=DIRECT, timeout_s=7.0)
        nursery.cancel_scope.cancel()
    failure = caught.value.failure
    assert (failure.verdict, failure.cause) == (Verdict.TRANSIENT, "grant")
    assert failure.summary.endswith("/v1/auth/grant: no answer within 7 s")


async def test_grant_when_nothing_listens_is_transient() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # the port is free: connecting is refused
    target = grant_target(f"ws://127.0.0.1:{port}/v1/listen")
    with pytest.raises(CredentialError) as caught:
        await request_grant(target, KEY, 30, network=DIRECT, timeout_s=TIMEOUT_S)
    failure = caught.value.failure
    assert (failure.verdict, failure.cause) == (Verdict.TRANSIENT, "grant")
    assert f"from POST http://127.0.0.1:{port}/v1/auth/grant: " in failure.summary


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"POST /v1/auth/grant HTTP/1.1\r\n", True),
        (b"POST /v1/auth/grant?x=1 HTTP/1.1\r\n", True),
        (b"GET /v1/auth/grant HTTP/1.1\r\n", False),
        (b"GET /v1/listen?encoding=linear16 HTTP/1.1\r\n", False),
        (b"POST /v1/auth/grants HTTP/1.1\r\n", False),
        (b"", False),
    ],
)
def test_is_grant_request(prefix: bytes, expected: bool) -> None:
    assert is_grant_request(prefix) is expected


# --- token_command -----------------------------------------------------------------------


def script(tmp_path: Path, body: str, name: str = "get-token") -> str:
    """An executable Python program in tmp_path; returns its absolute path."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys, os, time\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_command_token_is_sent_as_bearer(tmp_path: Path) -> None:
    program = script(tmp_path, "print('cmd.' + sys.argv[1]); print('ignored second line')")
    cfg = DeepgramConfig(auth=AuthMode.COMMAND, token_command=(program, "tok-0123456789"))
    auth = await authorization(cfg, "", network=DIRECT, timeout_s=TIMEOUT_S)
    assert auth == Authorization(
        (("Authorization", "Bearer cmd.tok-0123456789"),), Credential.COMMAND_TOKEN
    )
    assert "cmd.tok-0123456789" in logsetup.SECRETS.secrets


async def test_command_with_huge_output_does_not_block(tmp_path: Path) -> None:
    lines = 4 * MAX_COMMAND_OUTPUT_BYTES // 10
    program = script(
        tmp_path,
        f"sys.stdout.write('big.token\\n' + '123456789\\n' * {lines})\n"
        f"sys.stderr.write('e' * {4 * MAX_COMMAND_OUTPUT_BYTES})",
    )
    assert await run_token_command([program], timeout_s=30.0) == "big.token"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(
            "sys.stderr.write('vault: permission denied\\n'); sys.exit(3)",
            "it exited with status 3; it said: vault: permission denied",
            id="exit-status",
        ),
        pytest.param(
            "os.kill(os.getpid(), 9)",
            "it was killed by SIGKILL",
            id="signal",
        ),
        pytest.param("pass", "it printed nothing", id="no-output"),
        pytest.param(
            "print(); print('late-token')",
            "its first line is blank",
            id="blank-first-line",
        ),
        pytest.param(
            "print('two words')",
            "its first line: character 4 of the token is U+0020",
            id="space",
        ),
    ],
)
async def test_command_failures_name_the_program_and_what_happened(
    tmp_path: Path, body: str, says: str
) -> None:
    program = script(tmp_path, body)
    with pytest.raises(CredentialError) as caught:
        await run_token_command([program], timeout_s=TIMEOUT_S)
    failure = caught.value.failure
    assert (failure.verdict, failure.cause, failure.status) == (
        Verdict.TRANSIENT,
        "token-command",
        "token command failed",
    )
    assert failure.summary.startswith(f"deepgram.token_command {program} gave no token: ")
    assert says in failure.summary


async def test_command_that_hangs_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = script(
        tmp_path,
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "sys.stdout.flush(); time.sleep(600)",
    )
    with pytest.raises(CredentialError) as caught:
        await run_token_command([program], timeout_s=1.0)
    assert caught.value.failure.summary.endswith(
        "gave no token: still running after 1 s; it was killed"
    )
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no process (not even a zombie) with that pid


async def test_command_that_cannot_run(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    with pytest.raises(CredentialError) as caught:
        await run_token_command([missing], timeout_s=TIMEOUT_S)
    assert caught.value.failure.summary == (
        f"deepgram.token_command {missing} gave no token: cannot run it: No such file or directory"
    )
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("token\n")
    with pytest.raises(CredentialError) as caught:
        await run_token_command([str(not_executable)], timeout_s=TIMEOUT_S)
    assert caught.value.failure.summary.endswith("cannot run it: Permission denied")


async def test_command_stderr_is_scrubbed_of_secrets(tmp_path: Path) -> None:
    logsetup.register_secrets("stderr-secret-0123456789")
    program = script(
        tmp_path, "sys.stderr.write('key stderr-secret-0123456789 refused'); sys.exit(1)"
    )
    with pytest.raises(CredentialError) as caught:
        await run_token_command([program], timeout_s=TIMEOUT_S)
    assert caught.value.failure.summary.endswith(
        "it exited with status 1; it said: key <redacted> refused"
    )


# --- grant over TLS: the WebSocket's trust (deepgram.ca_file) --------------------------------


async def tls_fake_server(nursery: trio.Nursery, cert: ServerCertificate) -> str:
    """The real fake server over TLS (grant and WebSocket on one port); its ``wss://`` URL."""
    port = await nursery.start(
        functools.partial(
            serve,
            "127.0.0.1",
            0,
            faults=FaultPlan.none(),
            record_dir=None,
            api_key=KEY,
            ssl_context=tls_server_context(cert.cert, cert.key),
        )
    )
    return f"wss://127.0.0.1:{port}/v1/listen"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tlsca"))


async def test_grant_over_tls_trusts_ca_file_and_names_a_refused_certificate(
    certs: Certificates,
) -> None:
    async with trio.open_nursery() as nursery:
        url = await tls_fake_server(nursery, certs.valid)
        trusting = transport.network_for(DeepgramConfig(ca_file=str(certs.ca)), {})
        auth = await authorization(grant_config(url), KEY, network=trusting, timeout_s=TIMEOUT_S)
        assert auth.credential is Credential.GRANTED_TOKEN
        # The token opens a wss:// stream on the same server, through the same network.
        headers = auth.headers
        async with wsclient.connect(
            f"{url}?{QUERY}",
            headers,
            connect_timeout_s=TIMEOUT_S,
            disconnect_timeout_s=1.0,
            network=trusting,
        ):
            pass
        # Without the CA the certificate is refused, and named as the WebSocket's would be.
        with pytest.raises(transport.TlsError) as caught:
            await authorization(grant_config(url), KEY, network=DIRECT, timeout_s=TIMEOUT_S)
        nursery.cancel_scope.cancel()
    assert "certificate verify failed" in str(caught.value)
    assert KEY not in str(caught.value)
