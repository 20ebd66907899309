"""``transport.open_stream`` and ``wsclient.connect`` over real TLS against the fake server.

A throwaway CA (tests/tlsca.py) signs the fake server's certificates; the client trusts it only
through ``deepgram.ca_file``. Each refusal must arrive at once (no handshake timeout) as a
``TlsError`` whose message names the problem and the host, and classify as the supervisor
will (``backoff.tls_failure``). Real sockets on 127.0.0.1, no mocks.
"""

from __future__ import annotations

import json
import shutil
import ssl
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
import trio

from dgd.core.backoff import Verdict, tls_failure
from dgd.core.config import ConfigError, DeepgramConfig
from dgd.daemon import transport, wsclient
from dgd.daemon.logsetup import SECRETS
from dgd.testing.fakeserver.faults import FaultPlan
from dgd.testing.fakeserver.server import serve, tls_server_context
from tests.tlsca import Certificates, ServerCertificate, make_certificates

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

QUERY = "encoding=linear16&sample_rate=16000&channels=1"
AUTH = [("Authorization", "Token test-key")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tlsca"))


@asynccontextmanager
async def tls_server(cert: ServerCertificate) -> AsyncIterator[int]:
    """The fake server over TLS with ``cert``; yields its port."""
    context = tls_server_context(cert.cert, cert.key)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve(
                "127.0.0.1",
                0,
                faults=FaultPlan.none(),
                record_dir=None,
                ssl_context=context,
                task_status=task_status,
            )
        )
        yield port
        nursery.cancel_scope.cancel()


def network(ca_file: str = "") -> transport.Network:
    return transport.network_for(DeepgramConfig(ca_file=ca_file, proxy="direct"), {})


async def test_ca_file_makes_the_fake_server_trusted_and_a_stream_transcribes(
    certs: Certificates,
) -> None:
    async with tls_server(certs.valid) as port:
        url = f"wss://127.0.0.1:{port}/v1/listen?{QUERY}"
        async with wsclient.connect(
            url,
            AUTH,
            connect_timeout_s=5,
            disconnect_timeout_s=2,
            network=network(str(certs.ca)),
        ) as ws:
            await ws.send_bytes(bytes(3200))  # 100 ms of silence
            await ws.send_text(json.dumps({"type": "CloseStream"}))
            types: list[str] = []
            while not types or types[-1] != "Metadata":
                message = await ws.receive()
                assert isinstance(message, str)
                types.append(json.loads(message)["type"])
            assert types[-1] == "Metadata"


async def test_localhost_name_is_checked_against_the_certificate(certs: Certificates) -> None:
    async with tls_server(certs.valid) as port:
        stream = await transport.open_stream(
            "localhost", port, tls=True, network=network(str(certs.ca)), timeout_s=5
        )
        assert isinstance(stream, trio.SSLStream)
        await stream.aclose()


@pytest.mark.parametrize(
    ("which", "ca", "verify_code", "words", "verdict"),
    [
        ("valid", False, 20, "unable to get local issuer certificate", Verdict.REJECTED),
        ("self_signed", True, 18, "self-signed certificate", Verdict.REJECTED),
        (
            "wrong_host",
            True,
            64,
            "IP address mismatch, certificate is not valid for '127.0.0.1'.",
            Verdict.REJECTED,
        ),
        ("not_yet_valid", True, 9, "certificate is not yet valid", Verdict.CLOCK),
        ("expired", True, 10, "certificate has expired", Verdict.CLOCK),
    ],
)
async def test_refused_certificates_are_named_at_once(
    certs: Certificates, which: str, ca: bool, verify_code: int, words: str, verdict: Verdict
) -> None:
    cert: ServerCertificate = getattr(certs, which)
    async with tls_server(cert) as port:
        url = f"wss://127.0.0.1:{port}/v1/listen?{QUERY}"
        # A generous timeout: a refusal that waited for it would show as "no answer".
        with pytest.raises(transport.TlsError) as caught:
            async with wsclient.connect(
                url,
                AUTH,
                connect_timeout_s=30,
                disconnect_timeout_s=2,
                network=network(str(certs.ca) if ca else ""),
            ):
                pass
    error = caught.value
    assert error.verify_code == verify_code
    assert str(error) == f"TLS: certificate verify failed: {words} (127.0.0.1:{port})"
    failure = tls_failure(error.verify_code, str(error), clock_synchronized=True)
    assert failure.verdict is verdict
    assert ("is the system clock right? (timedatectl)" in failure.summary) is (
        verdict is Verdict.CLOCK
    )


async def test_wrong_host_name_is_named(certs: Certificates) -> None:
    async with tls_server(certs.wrong_host) as port:
        with pytest.raises(transport.TlsError) as caught:
            await transport.open_stream(
                "localhost", port, tls=True, network=network(str(certs.ca)), timeout_s=30
            )
    assert caught.value.verify_code == 62
    assert str(caught.value) == (
        f"TLS: certificate verify failed: Hostname mismatch, certificate is not valid for "
        f"'localhost'. (localhost:{port})"
    )


async def test_plain_server_on_a_wss_url_fails_fast_and_named(certs: Certificates) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve(
                "127.0.0.1", 0, faults=FaultPlan.none(), record_dir=None, task_status=task_status
            )
        )
        with pytest.raises(transport.NetworkError) as caught:
            await transport.open_stream(
                "127.0.0.1", port, tls=True, network=network(str(certs.ca)), timeout_s=30
            )
        nursery.cancel_scope.cancel()
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_nothing_listening_is_a_named_network_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # bound and closed: nothing listens there now
    with pytest.raises(transport.NetworkError) as caught:
        await transport.open_stream("127.0.0.1", port, tls=True, network=network(), timeout_s=5)
    assert type(caught.value) is transport.NetworkError
    assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"


def test_ca_file_adds_to_the_system_trust(certs: Certificates) -> None:
    with_ca = network(str(certs.ca)).ssl_context
    without = network().ssl_context
    assert with_ca.verify_mode is ssl.CERT_REQUIRED
    assert with_ca.check_hostname
    assert with_ca.cert_store_stats()["x509_ca"] == without.cert_store_stats()["x509_ca"] + 1


def test_network_cache_builds_again_only_when_an_input_changed(
    tmp_path: Path, certs: Certificates
) -> None:
    ca_file = tmp_path / "ca.pem"
    shutil.copy(certs.ca, ca_file)
    cfg = DeepgramConfig(ca_file=str(ca_file), proxy="direct")
    cache = transport.NetworkCache()
    first = cache.get(cfg, {})
    assert cache.get(cfg, {}) is first  # nothing changed: the same context, no CA store load
    changed = [
        cache.get(replace(cfg, proxy=""), {}),  # the config
        cache.get(replace(cfg, proxy=""), {"https_proxy": "http://127.0.0.1:3128"}),  # env
    ]
    ca_file.write_text(ca_file.read_text() + "\n")  # the file on disk (size and mtime)
    changed.append(cache.get(cfg, {}))
    assert len({id(n) for n in [first, *changed]}) == 4
    ca_file.write_text("garbage\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        cache.get(cfg, {})
    with pytest.raises(ConfigError):  # a failure is not kept as if it were a network
        cache.get(cfg, {})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "deepgram.ca_file: cannot read {path}: No such file or directory"),
        (
            "not a certificate\n",
            "deepgram.ca_file: {path} holds no PEM certificate "
            "(expected -----BEGIN CERTIFICATE----- blocks)",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "deepgram.ca_file: {path} is not a valid PEM bundle",
        ),
    ],
)
def test_unusable_ca_file_is_a_config_error_naming_the_key(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content, encoding="ascii")
    with pytest.raises(ConfigError) as caught:
        transport.network_for(replace(DeepgramConfig(), ca_file=str(path)), {})
    assert str(caught.value).startswith(message.format(path=path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "deepgram.proxy_credentials_file: cannot read {path}: No such file or directory"),
        ("nocolon\n", "deepgram.proxy_credentials_file: {path}: expected one line user:password"),
    ],
)
def test_unusable_proxy_credentials_file_is_a_config_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "proxy-credentials"
    if content is not None:
        path.write_text(content, encoding="ascii")
    with pytest.raises(ConfigError) as caught:
        transport.network_for(DeepgramConfig(proxy_credentials_file=str(path)), {})
    assert str(caught.value) == message.format(path=path)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"https_proxy": "socks5://proxy.lan:1080"},
            "$https_proxy: only http:// proxies are supported (got a socks5:// proxy)",
        ),
        (
            {"HTTPS_PROXY": "http://proxy.lan:3128/path"},
            "$HTTPS_PROXY: a proxy URL has no path (use http://host:port)",
        ),
    ],
)
def test_unusable_environment_proxy_is_a_config_error(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        transport.network_for(DeepgramConfig(), environ)
    assert str(caught.value) == message


def test_proxy_passwords_are_registered_as_secrets(tmp_path: Path) -> None:
    path = tmp_path / "proxy-credentials"
    path.write_text("fileuser:file-pass-1234\n", encoding="ascii")
    transport.network_for(DeepgramConfig(proxy_credentials_file=str(path)), {})
    transport.network_for(
        DeepgramConfig(), {"https_proxy": "http://envuser:env-pass-5678@proxy.lan:3128"}
    )
    basic = transport.basic_authorization("fileuser:file-pass-1234").removeprefix("Basic ")
    line = f"file-pass-1234 env-pass-5678 {basic}"
    scrubbed = SECRETS.scrub(line)
    assert "file-pass-1234" not in scrubbed
    assert "env-pass-5678" not in scrubbed
    assert basic not in scrubbed


@asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says anything; yields the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hold, listeners)
        yield port
        nursery.cancel_scope.cancel()


async def test_a_silent_server_times_out_naming_the_handshake() -> None:
    async with silent_listener() as port:
        with pytest.raises(wsclient.NetworkError) as caught:
            async with wsclient.connect(
                f"ws://127.0.0.1:{port}/v1/listen",
                AUTH,
                connect_timeout_s=0.5,
                disconnect_timeout_s=1,
                network=network(),
            ):
                pass
    assert str(caught.value) == (
        f"no answer from 127.0.0.1:{port} within 0.5 s (WebSocket handshake)"
    )


async def test_a_silent_tls_server_times_out_naming_the_tls_handshake() -> None:
    async with silent_listener() as port:
        with pytest.raises(transport.NetworkError) as caught:
            await transport.open_stream(
                "127.0.0.1", port, tls=True, network=network(), timeout_s=0.5
            )
    assert str(caught.value) == (f"the TLS handshake with 127.0.0.1:{port}: no answer within 0.5 s")


async def test_a_silent_proxy_times_out_naming_the_proxy() -> None:
    async with silent_listener() as port:
        proxied = transport.network_for(DeepgramConfig(proxy=f"http://127.0.0.1:{port}"), {})
        with pytest.raises(transport.ProxyError) as caught:
            await transport.open_stream(
                "api.deepgram.com", 443, tls=True, network=proxied, timeout_s=0.5
            )
    assert caught.value.status is None
    assert str(caught.value) == f"proxy 127.0.0.1:{port}: no answer within 0.5 s"


async def test_a_refused_handshake_over_tls_is_rejected_with_its_status(
    certs: Certificates,
) -> None:
    async with tls_server(certs.valid) as port:
        with pytest.raises(wsclient.Rejected) as caught:
            async with wsclient.connect(
                f"wss://127.0.0.1:{port}/v1/listen?{QUERY}",
                [],  # no Authorization: the fake server answers 401
                connect_timeout_s=5,
                disconnect_timeout_s=2,
                network=network(str(certs.ca)),
            ):
                pass
    assert caught.value.status == 401


async def test_the_callers_own_exception_comes_out_unwrapped(certs: Certificates) -> None:
    async with tls_server(certs.valid) as port:
        with pytest.raises(wsclient.Closed) as caught:
            async with wsclient.connect(
                f"wss://127.0.0.1:{port}/v1/listen?{QUERY}",
                AUTH,
                connect_timeout_s=5,
                disconnect_timeout_s=2,
                network=network(str(certs.ca)),
            ):
                raise wsclient.Closed(1000, "done")
    assert caught.value.reason == "done"
