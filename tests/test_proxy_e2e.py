"""Through a real HTTP proxy (tinyproxy) to the fake server: plain and TLS, the proxy's
refusals named and classified, ``HTTPS_PROXY``/``NO_PROXY`` honoured, and one `dgd run`.

tinyproxy runs in the foreground (``-d``) with a generated config allowing CONNECT only to
the fake server's port; a second instance asks for Basic credentials (407 without them). If
tinyproxy is missing the tests skip, unless ``$CI`` is set (then they fail: CI installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest
import trio

from dgd.core.backoff import Verdict, proxy_failure
from dgd.core.config import DeepgramConfig, dump
from dgd.daemon import transport, wsclient
from dgd.testing.fakeserver.faults import FaultPlan
from dgd.testing.fakeserver.server import serve, tls_server_context
from dgd.tools.demo import read_jsonl
from tests.harness import (  # the fixtures are imported by name for pytest
    DaemonProcess,
    alsa_mic_fixture,  # noqa: F401
    daemon_env,
    fake_server_fixture,  # noqa: F401
    journal_entries,
    journal_text,
    journald_fixture,  # noqa: F401
    notify_listener_fixture,  # noqa: F401
    sample_utterance,
    write_daemon_config,
)
from tests.tlsca import Certificates, make_certificates

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from tests.harness import AlsaMic, FakeServerProcess, NotifyListener

TINYPROXY = "/usr/bin/tinyproxy"
QUERY = "encoding=linear16&sample_rate=16000&channels=1"
AUTH = [("Authorization", "Token test-key")]
PROXY_USER = "dgduser"
PROXY_PASSWORD = "pr0xy-s3cret"


def _need_tinyproxy() -> None:
    if not os.access(TINYPROXY, os.X_OK):
        message = f"{TINYPROXY} is not installed (apt-get install tinyproxy)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tinyproxy:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connects(self) -> int:
        """CONNECT requests the proxy has served or refused so far."""
        return self.log.read_text("utf-8", "replace").count("CONNECT")


@contextmanager
def tinyproxy(tmp: Path, connect_port: int, *, basic_auth: bool = False) -> Iterator[Tinyproxy]:
    """tinyproxy on a free port allowing CONNECT to ``connect_port`` only."""
    _need_tinyproxy()
    port = free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "Allow 127.0.0.1",
        f"ConnectPort {connect_port}",
        "LogLevel Info",
        "MaxClients 20",
    ]
    if os.geteuid() == 0:
        lines += ["User nobody", "Group nogroup"]  # it refuses to keep running as root
    if basic_auth:
        lines.append(f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}")
    conf = tmp / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="ascii")
    log = tmp / f"tinyproxy-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "tinyproxy did not start:\n" + log.read_text("utf-8", "replace")
                    ) from None
                time.sleep(0.05)
        yield Tinyproxy(port, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tlsca"))


@asynccontextmanager
async def fake_server(certs: Certificates | None) -> AsyncIterator[int]:
    context = None if certs is None else tls_server_context(certs.valid.cert, certs.valid.key)
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


async def transcribe_once(url: str, network: transport.Network) -> list[str]:
    """Open, send 100 ms of silence and CloseStream, return the message types received."""
    async with wsclient.connect(
        url, AUTH, connect_timeout_s=10, disconnect_timeout_s=2, network=network
    ) as ws:
        await ws.send_bytes(bytes(3200))
        await ws.send_text(json.dumps({"type": "CloseStream"}))
        types: list[str] = []
        while not types or types[-1] != "Metadata":
            message = await ws.receive()
            assert isinstance(message, str)
            types.append(json.loads(message)["type"])
        return types


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_stream_through_the_proxy(tmp_path: Path, certs: Certificates, tls: bool) -> None:
    async with fake_server(certs if tls else None) as port:
        with tinyproxy(tmp_path, port) as proxy:
            cfg = DeepgramConfig(proxy=proxy.url, ca_file=str(certs.ca))
            network = transport.network_for(cfg, {})
            scheme = "wss" if tls else "ws"
            types = await transcribe_once(f"{scheme}://127.0.0.1:{port}/v1/listen?{QUERY}", network)
            assert types[-1] == "Metadata"
            assert proxy.connects() >= 1


async def test_proxy_credentials_file_answers_407(tmp_path: Path, certs: Certificates) -> None:
    credentials = tmp_path / "proxy-credentials"
    credentials.write_text(f"{PROXY_USER}:{PROXY_PASSWORD}\n", encoding="ascii")
    async with fake_server(certs) as port:
        with tinyproxy(tmp_path, port, basic_auth=True) as proxy:
            url = f"wss://127.0.0.1:{port}/v1/listen?{QUERY}"
            without = transport.network_for(
                DeepgramConfig(proxy=proxy.url, ca_file=str(certs.ca)), {}
            )
            with pytest.raises(transport.ProxyError) as caught:
                await transcribe_once(url, without)
            assert caught.value.status == 407
            assert str(caught.value).startswith(
                f"proxy 127.0.0.1:{proxy.port} refused CONNECT 127.0.0.1:{port}: HTTP 407"
            )
            failure = proxy_failure(caught.value.status, str(caught.value))
            assert failure.verdict is Verdict.REJECTED
            assert "deepgram.proxy_credentials_file" in failure.summary

            with_file = transport.network_for(
                DeepgramConfig(
                    proxy=proxy.url,
                    ca_file=str(certs.ca),
                    proxy_credentials_file=str(credentials),
                ),
                {},
            )
            assert (await transcribe_once(url, with_file))[-1] == "Metadata"


async def test_credentials_in_https_proxy_url_are_used(tmp_path: Path, certs: Certificates) -> None:
    async with fake_server(certs) as port:
        with tinyproxy(tmp_path, port, basic_auth=True) as proxy:
            environ = {
                "https_proxy": f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
            }
            network = transport.network_for(DeepgramConfig(ca_file=str(certs.ca)), environ)
            types = await transcribe_once(f"wss://127.0.0.1:{port}/v1/listen?{QUERY}", network)
            assert types[-1] == "Metadata"
            assert PROXY_PASSWORD not in repr(network)


async def test_connect_to_a_port_the_proxy_forbids_is_403(tmp_path: Path) -> None:
    async with fake_server(None) as port:
        with tinyproxy(tmp_path, port + 1 if port < 65535 else port - 1) as proxy:
            network = transport.network_for(DeepgramConfig(proxy=proxy.url), {})
            with pytest.raises(transport.ProxyError) as caught:
                await transcribe_once(f"ws://127.0.0.1:{port}/v1/listen?{QUERY}", network)
    assert caught.value.status == 403
    assert proxy_failure(403, str(caught.value)).verdict is Verdict.REJECTED


async def test_proxy_down_is_transient_and_named() -> None:
    port = free_port()  # nothing listens there
    network = transport.network_for(DeepgramConfig(proxy=f"http://127.0.0.1:{port}"), {})
    with pytest.raises(transport.ProxyError) as caught:
        await transcribe_once("wss://api.deepgram.com/v1/listen", network)
    assert caught.value.status is None
    assert str(caught.value) == (f"proxy 127.0.0.1:{port} (deepgram.proxy): Connection refused")
    failure = proxy_failure(None, str(caught.value))
    assert failure.verdict is Verdict.TRANSIENT
    assert failure.status == "proxy unreachable"


async def test_environment_proxy_and_no_proxy(tmp_path: Path, certs: Certificates) -> None:
    async with fake_server(certs) as port:
        # The proxy wants credentials we do not give: reaching it shows as a 407.
        with tinyproxy(tmp_path, port, basic_auth=True) as proxy:
            url = f"wss://127.0.0.1:{port}/v1/listen?{QUERY}"
            cfg = DeepgramConfig(ca_file=str(certs.ca))
            via = transport.network_for(cfg, {"HTTPS_PROXY": proxy.url})
            with pytest.raises(transport.ProxyError) as caught:
                await transcribe_once(url, via)
            assert caught.value.status == 407
            for no_proxy in ("127.0.0.1", "127.0.0.0/8", f"127.0.0.1:{port}", "*"):
                bypass = transport.network_for(
                    cfg, {"HTTPS_PROXY": proxy.url, "NO_PROXY": no_proxy}
                )
                assert (await transcribe_once(url, bypass))[-1] == "Metadata", no_proxy
            # ws:// takes http_proxy, not https_proxy.
            plain = transport.network_for(cfg, {"HTTPS_PROXY": proxy.url})
            async with fake_server(None) as plain_port:
                plain_url = f"ws://127.0.0.1:{plain_port}/v1/listen?{QUERY}"
                assert (await transcribe_once(plain_url, plain))[-1] == "Metadata"
            # "direct" ignores the environment.
            direct = transport.network_for(
                DeepgramConfig(ca_file=str(certs.ca), proxy="direct"),
                {"HTTPS_PROXY": proxy.url},
            )
            assert (await transcribe_once(url, direct))[-1] == "Metadata"


@pytest.mark.e2e
def test_dgd_run_streams_through_an_authenticating_proxy(
    tmp_path: Path,
    journald: None,
    notify_listener: NotifyListener,
    alsa_mic: AlsaMic,
    fake_server: FakeServerProcess,
) -> None:
    credentials = tmp_path / "proxy-credentials"
    credentials.write_text(f"{PROXY_USER}:{PROXY_PASSWORD}\n", encoding="ascii")
    jsonl = tmp_path / "transcripts.jsonl"
    config_path = tmp_path / "dgd.toml"
    with tinyproxy(tmp_path, fake_server.port, basic_auth=True) as proxy:
        config = write_daemon_config(
            config_path, url=fake_server.url, device=alsa_mic.pcm_name, jsonl=jsonl
        )
        deepgram = replace(
            config.deepgram, proxy=proxy.url, proxy_credentials_file=str(credentials)
        )
        config_path.write_text(dump(replace(config, deepgram=deepgram)), encoding="utf-8")
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=notify_listener.address)
        argv = [sys.executable, "-m", "dgd", "run", "-c", str(config_path)]
        argv += ["--log-target", "journal", "--log-level", "debug"]  # the most it may say
        with DaemonProcess(config_path, env=env, log_dir=tmp_path, argv=argv) as daemon:
            pid = str(daemon.pid)

            def diagnostics() -> str:
                return daemon.output() + "\n--- journal ---\n" + journal_text(_PID=pid)

            assert notify_listener.wait_for("READY=1", 30), diagnostics()
            assert journal_entries(30, 1, _PID=pid, DGD_EVENT="connected"), diagnostics()
            mic = alsa_mic.mic
            end = mic.play(bytes(32000) + sample_utterance(0) + bytes(64000))
            assert mic.wait_written(end, 60), diagnostics()
            finals = journal_entries(30, 1, _PID=pid, DGD_EVENT="transcript", DGD_IS_FINAL="true")
            assert daemon.terminate(20) == 0, diagnostics()
            assert finals, diagnostics()
            assert [e for e in read_jsonl(jsonl) if e.get("is_final") and e.get("text")]
            assert proxy.connects() >= 1, proxy.log.read_text()
            everything = diagnostics()
            assert PROXY_PASSWORD not in everything
            assert journal_entries(0, 1, _PID=pid, DGD_EVENT="disconnected") == [], everything


def test_tinyproxy_is_available_in_ci() -> None:
    if os.environ.get("CI"):
        assert shutil.which("tinyproxy") or os.access(TINYPROXY, os.X_OK)
