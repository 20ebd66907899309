"""End to end over TLS: `dgd run` against `dgd fake-server --tls-cert/--tls-key`, whose
certificate a throwaway CA (tests/tlsca.py) signed.

With ``deepgram.ca_file`` naming that CA the daemon streams and transcribes like
tests/test_e2e.py; without it the refusal reaches the journal's ``disconnected`` event at
once, named by OpenSSL's reason, with the verdict ``rejected`` (no handshake timeout: the
connect timeout is set far beyond the wait). The other certificate problems (self-signed,
wrong host, dates) are covered faster, without ALSA, in tests/test_transport.py. Run with:

    sudo tests/with-journald.sh .venv/bin/pytest tests/test_tls_e2e.py -m e2e -v
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from dgd.core.config import dump
from dgd.tools.demo import package_env, read_jsonl
from tests.harness import (  # the fixtures are imported by name for pytest
    E2E_API_KEY,
    DaemonProcess,
    alsa_mic_fixture,  # noqa: F401
    daemon_env,
    journal_entries,
    journal_text,
    journald_fixture,  # noqa: F401
    notify_listener_fixture,  # noqa: F401
    sample_utterance,
    write_daemon_config,
)
from tests.tlsca import ServerCertificate, make_certificates

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.harness import AlsaMic, NotifyListener

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
#: Far beyond any wait below: a refusal that showed up only as a connect timeout would fail.
CONNECT_TIMEOUT_S = 120.0
_LISTENING_RE = re.compile(r"listening on (wss://\S+)")


@contextmanager
def tls_fake_server(record_dir: Path, cert: ServerCertificate) -> Iterator[str]:
    """``dgd fake-server`` over TLS on a free port; yields its ``wss://`` listen URL."""
    argv = [sys.executable, "-m", "dgd", "fake-server", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--record-dir", str(record_dir), "--api-key", E2E_API_KEY]
    argv += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=package_env())
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = None
        while url is None:
            line = lines.get(timeout=30)
            if line is None:
                raise RuntimeError(f"dgd fake-server --tls-cert exited ({process.wait()})")
            if match := _LISTENING_RE.search(line):
                url = match.group(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_config(path: Path, *, url: str, alsa_mic: AlsaMic, jsonl: Path, ca_file: str) -> None:
    config = write_daemon_config(path, url=url, device=alsa_mic.pcm_name, jsonl=jsonl)
    config = replace(
        config,
        deepgram=replace(config.deepgram, ca_file=ca_file),
        stream=replace(config.stream, connect_timeout_s=CONNECT_TIMEOUT_S),
    )
    path.write_text(dump(config), encoding="utf-8")


def test_ca_file_lets_dgd_stream_to_a_tls_server(
    tmp_path: Path, journald: None, notify_listener: NotifyListener, alsa_mic: AlsaMic
) -> None:
    certs = make_certificates(tmp_path / "ca")
    jsonl = tmp_path / "transcripts.jsonl"
    config = tmp_path / "dgd.toml"
    with tls_fake_server(tmp_path / "server", certs.valid) as url:
        write_config(config, url=url, alsa_mic=alsa_mic, jsonl=jsonl, ca_file=str(certs.ca))
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=notify_listener.address)
        with DaemonProcess(config, env=env, log_dir=tmp_path) as daemon:

            def diagnostics() -> str:
                return daemon.output() + "\n--- journal ---\n" + journal_text(_PID=str(daemon.pid))

            assert notify_listener.wait_for("READY=1", READY_TIMEOUT_S), diagnostics()
            connected = journal_entries(30, 1, _PID=str(daemon.pid), DGD_EVENT="connected")
            assert connected, diagnostics()
            mic = alsa_mic.mic
            end = mic.play(bytes(32000) + sample_utterance(0) + bytes(64000))
            assert mic.wait_written(end, 60), diagnostics()
            finals = journal_entries(
                30, 1, _PID=str(daemon.pid), DGD_EVENT="transcript", DGD_IS_FINAL="true"
            )
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics()
            assert finals, diagnostics()
            assert [e for e in read_jsonl(jsonl) if e.get("is_final") and e.get("text")]
            disconnected = journal_entries(0, 1, _PID=str(daemon.pid), DGD_EVENT="disconnected")
            assert disconnected == [], diagnostics()


def test_untrusted_certificate_is_named_at_once_and_rejected(
    tmp_path: Path, journald: None, notify_listener: NotifyListener, alsa_mic: AlsaMic
) -> None:
    certs = make_certificates(tmp_path / "ca")
    jsonl = tmp_path / "transcripts.jsonl"
    config = tmp_path / "dgd.toml"
    with tls_fake_server(tmp_path / "server", certs.valid) as url:
        port = url.split(":")[2].split("/")[0]
        write_config(config, url=url, alsa_mic=alsa_mic, jsonl=jsonl, ca_file="")
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=notify_listener.address)
        with DaemonProcess(config, env=env, log_dir=tmp_path) as daemon:

            def diagnostics() -> str:
                return daemon.output() + "\n--- journal ---\n" + journal_text(_PID=str(daemon.pid))

            assert notify_listener.wait_for("READY=1", READY_TIMEOUT_S), diagnostics()
            # Well within CONNECT_TIMEOUT_S: the refusal itself must end the attempt.
            events = journal_entries(30, 1, _PID=str(daemon.pid), DGD_EVENT="disconnected")
            assert events, diagnostics()
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics()
    event = events[0]
    assert event["DGD_VERDICT"] == "rejected", event
    assert event["DGD_CAUSE"] == "tls", event
    assert event["MESSAGE"].startswith(
        "TLS: certificate verify failed: unable to get local issuer certificate "
        f"(127.0.0.1:{port}); "
    ), event["MESSAGE"]
    assert "deepgram.ca_file" in event["MESSAGE"], event["MESSAGE"]
    statuses = notify_listener.assignments()
    assert any(a.startswith("STATUS=TLS: certificate refused") for a in statuses), statuses
