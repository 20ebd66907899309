"""End to end: how `dgd run` authenticates, against the real `dgd fake-server` process.

Each test runs the daemon at ``--log-level debug`` with real ALSA capture (a FIFO-fed PCM)
and a real journald, and reads back what the server recorded (``conn-NNNN.jsonl``'s
handshake: which scheme was sent, whether it was accepted) and what the daemon logged:

- ``auth = "grant"``: dgd fetches a temporary token from the server's ``/v1/auth/grant`` with
  the key, connects with ``Bearer <token>``, and transcripts arrive; no token the server
  issued (``grants.jsonl``) and not the key appear in any log line;
- ``auth = "command"``: a program in tmp_path fails once (dgd logs the program, its exit
  status and its stderr, and retries), then fetches a token itself and prints it; dgd runs
  without any key and the token never reaches the journal;
- a self-hosted ``ws://`` server without authentication (``--no-auth``) works with no key
  at all (no ``Authorization`` header is sent), and one that wants a key gives the error
  that says where to put it, while dgd keeps running.

Run with: ``sudo tests/with-journald.sh .venv/bin/pytest tests/test_auth_e2e.py -m e2e -v``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import stat
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

import pytest

from dgd.core.config import AuthMode, DeepgramConfig, dump
from dgd.tools.demo import package_env
from tests.harness import (
    BYTES_PER_S,
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

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

    from tests.harness import AlsaMic, NotifyListener

pytestmark = pytest.mark.e2e

START_TIMEOUT_S: Final = 20.0
#: From the audio to its final transcript in the journal, on a slow machine.
TRANSCRIPT_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 20.0


class FakeServer:
    """``python -m dgd fake-server`` on a free port of 127.0.0.1, recording to
    ``record_dir``, with extra command-line options (``--no-auth``, ``--api-key K``)."""

    def __init__(self, record_dir: Path, *options: str) -> None:
        self.record_dir: Final = record_dir
        record_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dgd", "fake-server", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--record-dir", str(record_dir), *options]
        self.process: Final = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=package_env()
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "" if it exits first
        if "listening on ws://" not in line:
            self.stop()
            raise RuntimeError(f"`dgd fake-server {' '.join(options)}` did not start: {line!r}")
        self.url: Final = line.rsplit(" ", 1)[1].strip()

    def handshakes(self) -> list[dict[str, Any]]:
        """The handshake record of every attempt, in order."""
        found = []
        for path in sorted(self.record_dir.glob("conn-*.jsonl")):
            first = path.read_text("utf-8").splitlines()[:1]
            found += [json.loads(line) for line in first if '"kind": "handshake"' in line]
        return found

    def grants(self) -> list[dict[str, Any]]:
        path = self.record_dir / "grants.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def server(tmp_path: Path, *options: str) -> Iterator[FakeServer]:
    fake = FakeServer(tmp_path / "server", *options)
    try:
        yield fake
    finally:
        fake.stop()


def write_config(path: Path, url: str, device: str, jsonl: Path, deepgram: DeepgramConfig) -> None:
    """The e2e config of tests/harness.py with this test's ``[deepgram]`` (the URL set)."""
    base = write_daemon_config(path, url=url, device=device, jsonl=jsonl)
    config = dataclasses.replace(base, deepgram=deepgram)
    path.write_text(dump(config), encoding="utf-8")


def start_daemon(tmp_path: Path, config: Path, env: dict[str, str]) -> DaemonProcess:
    argv = [sys.executable, "-m", "dgd", "run", "-c", str(config)]
    argv += ["--log-target", "journal", "--log-level", "debug"]
    return DaemonProcess(config, env=env, log_dir=tmp_path, argv=argv)


def speak_and_wait_for_transcript(daemon: DaemonProcess, alsa_mic: AlsaMic) -> list[str]:
    """Play one utterance and 3 s of silence; return the final transcripts journald got."""
    speech = sample_utterance(0)
    mic = alsa_mic.mic
    end = mic.play(speech) + len(speech)
    mic.play(bytes(3 * BYTES_PER_S))
    assert mic.wait_written(end + 3 * BYTES_PER_S, TRANSCRIPT_TIMEOUT_S), diagnostics(daemon)
    entries = journal_entries(TRANSCRIPT_TIMEOUT_S, 1, _PID=str(daemon.pid), DGD_EVENT="transcript")
    return [e["MESSAGE"] for e in entries if e["MESSAGE"].strip()]


def diagnostics(daemon: DaemonProcess) -> str:
    return daemon.output() + "\n--- journal ---\n" + journal_text(_PID=str(daemon.pid))


def all_logs(daemon: DaemonProcess) -> str:
    """Everything the daemon wrote: stdout, stderr and its journal entries with every field."""
    verbose = subprocess.run(
        ["journalctl", "--no-pager", "-o", "verbose", f"_PID={daemon.pid}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return daemon.output() + verbose


def executable(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --- grant -------------------------------------------------------------------------------


def test_grant_connects_with_a_bearer_token_that_is_never_logged(
    tmp_path: Path, journald: None, alsa_mic: AlsaMic
) -> None:
    with server(tmp_path, "--api-key", E2E_API_KEY) as fake:
        config = tmp_path / "dgd.toml"
        deepgram = DeepgramConfig(url=fake.url, auth=AuthMode.GRANT, grant_ttl_s=60)
        write_config(config, fake.url, alsa_mic.pcm_name, tmp_path / "t.jsonl", deepgram)
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=None)
        with start_daemon(tmp_path, config, env) as daemon:
            transcripts = speak_and_wait_for_transcript(daemon, alsa_mic)
            assert transcripts, diagnostics(daemon)
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics(daemon)
        handshakes = fake.handshakes()
        grants = fake.grants()
    assert handshakes, diagnostics(daemon)
    assert {(h["auth"], h["auth_ok"], h["status"]) for h in handshakes} == {("bearer", True, 101)}
    tokens = [g["access_token"] for g in grants if g["status"] == 200]
    assert len(tokens) >= len(handshakes) >= 1  # a token per connection
    assert [g["expires_in"] for g in grants] == [60] * len(grants)  # grant_ttl_s was asked
    logs = all_logs(daemon)
    assert "got a temporary token from POST http://127.0.0.1:" in logs  # debug level is on
    assert "connected to Deepgram" in logs
    for secret in (*tokens, E2E_API_KEY):
        assert secret not in logs, "a secret reached the logs"


def test_grant_with_a_key_the_server_refuses(
    tmp_path: Path, journald: None, alsa_mic: AlsaMic
) -> None:
    with server(tmp_path, "--api-key", "the-only-valid-key") as fake:
        config = tmp_path / "dgd.toml"
        deepgram = DeepgramConfig(url=fake.url, auth=AuthMode.GRANT)
        write_config(config, fake.url, alsa_mic.pcm_name, tmp_path / "t.jsonl", deepgram)
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=None)
        with start_daemon(tmp_path, config, env) as daemon:
            entries = journal_entries(
                START_TIMEOUT_S, 1, _PID=str(daemon.pid), DGD_EVENT="disconnected"
            )
            assert daemon.poll() is None, diagnostics(daemon)  # dgd never exits over this
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics(daemon)
        assert fake.handshakes() == []  # no WebSocket was tried without a token
    assert entries, diagnostics(daemon)
    message = entries[0]["MESSAGE"]
    assert "the key cannot create temporary tokens: it needs the Member role" in message
    assert "HTTP 401 INVALID_AUTH" in message
    assert (entries[0]["DGD_VERDICT"], entries[0]["DGD_CAUSE"]) == ("rejected", "grant-401")
    assert E2E_API_KEY not in all_logs(daemon)


# --- command -----------------------------------------------------------------------------

#: Fails on its first run (the token service "is not up yet"), then asks the server's
#: /v1/auth/grant with the key in the file argv[2] and prints the token.
TOKEN_PROGRAM: Final = """\
import json, os, sys, urllib.request
url, key_file, marker = sys.argv[1:4]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.stderr.write("token service not ready yet\\n")
    sys.exit(3)
key = open(key_file).read().strip()
request = urllib.request.Request(
    url, data=b'{"ttl_seconds": 600}', headers={"Authorization": "Token " + key}
)
print(json.load(urllib.request.urlopen(request, timeout=10))["access_token"])
"""


def test_command_token_after_a_failed_first_run(
    tmp_path: Path, journald: None, alsa_mic: AlsaMic
) -> None:
    with server(tmp_path, "--api-key", E2E_API_KEY) as fake:
        key_file = tmp_path / "fleet-key"
        key_file.write_text(E2E_API_KEY)
        program = executable(tmp_path / "get-token", TOKEN_PROGRAM)
        grant_url = fake.url.replace("ws://", "http://").replace("/v1/listen", "/v1/auth/grant")
        argv = (program, grant_url, str(key_file), str(tmp_path / "ran-once"))
        config = tmp_path / "dgd.toml"
        deepgram = DeepgramConfig(url=fake.url, auth=AuthMode.COMMAND, token_command=argv)
        write_config(config, fake.url, alsa_mic.pcm_name, tmp_path / "t.jsonl", deepgram)
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=None)
        del env["DEEPGRAM_API_KEY"]  # the device holds no key: only the program knows one
        with start_daemon(tmp_path, config, env) as daemon:
            transcripts = speak_and_wait_for_transcript(daemon, alsa_mic)
            assert transcripts, diagnostics(daemon)
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics(daemon)
        handshakes = fake.handshakes()
        tokens = [g["access_token"] for g in fake.grants() if g["status"] == 200]
    assert handshakes, diagnostics(daemon)
    assert (handshakes[0]["auth"], handshakes[0]["auth_ok"]) == ("bearer", True)
    assert tokens
    failed = journal_entries(5.0, 1, _PID=str(daemon.pid), DGD_EVENT="disconnected")
    assert failed, diagnostics(daemon)
    assert failed[0]["MESSAGE"].startswith(
        f"deepgram.token_command {program} gave no token: it exited with status 3; it said:"
        " token service not ready yet [transient]"
    )
    assert failed[0]["DGD_CAUSE"] == "token-command"
    logs = all_logs(daemon)
    assert "got a temporary token from deepgram.token_command" in logs  # debug level is on
    for token in tokens:
        assert token not in logs, "a token reached the logs"


# --- self-hosted without a key -----------------------------------------------------------


def test_self_hosted_server_without_auth_needs_no_key(
    tmp_path: Path, journald: None, alsa_mic: AlsaMic
) -> None:
    with server(tmp_path, "--no-auth") as fake:
        config = tmp_path / "dgd.toml"
        write_daemon_config(
            config, url=fake.url, device=alsa_mic.pcm_name, jsonl=tmp_path / "t.jsonl"
        )
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=None)
        del env["DEEPGRAM_API_KEY"]
        with start_daemon(tmp_path, config, env) as daemon:
            transcripts = speak_and_wait_for_transcript(daemon, alsa_mic)
            assert transcripts, diagnostics(daemon)
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics(daemon)
        handshakes = fake.handshakes()
    assert handshakes, diagnostics(daemon)
    assert {(h["auth"], h["auth_ok"], h["status"]) for h in handshakes} == {("", True, 101)}


def test_self_hosted_server_that_wants_a_key_says_where_to_put_it(
    tmp_path: Path, journald: None, alsa_mic: AlsaMic, notify_listener: NotifyListener
) -> None:
    with server(tmp_path, "--api-key", E2E_API_KEY) as fake:
        config = tmp_path / "dgd.toml"
        write_daemon_config(
            config, url=fake.url, device=alsa_mic.pcm_name, jsonl=tmp_path / "t.jsonl"
        )
        env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=notify_listener.address)
        del env["DEEPGRAM_API_KEY"]
        with start_daemon(tmp_path, config, env) as daemon:
            entries = journal_entries(
                START_TIMEOUT_S, 1, _PID=str(daemon.pid), DGD_EVENT="disconnected"
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not any(
                a.startswith("STATUS=API key needed (401); retrying in")
                for a in notify_listener.assignments()
            ):
                assert time.monotonic() < deadline, notify_listener.assignments()
                time.sleep(0.05)
            assert daemon.poll() is None, diagnostics(daemon)  # it waits for the key, running
            assert daemon.terminate(STOP_TIMEOUT_S) == 0, diagnostics(daemon)
        handshakes = fake.handshakes()
    assert entries, diagnostics(daemon)
    assert entries[0]["MESSAGE"].startswith(
        "the server asks for an API key: put one in /etc/dgd/api-key (or set deepgram.api_key_file)"
    )
    assert (entries[0]["DGD_VERDICT"], entries[0]["DGD_CAUSE"]) == ("rejected", "http-401")
    assert {(h["auth"], h["status"]) for h in handshakes} == {("", 401)}
