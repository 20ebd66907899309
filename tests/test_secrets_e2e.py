"""The API key never appears in any log line, at any level, from dgd or a library.

The daemon runs at ``--log-level debug`` (trio-websocket's debug logger then logs every
frame and the connection URL), logging both to stderr and, in a second run, to journald,
through one reconnect (a 1011 close) so that error paths log too. The key must be in no
line of either, nor in the server's records; the check is shown to be able to fail by
finding a marker the daemon does log.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import pytest

from dgd.testing.fifomic import FifoMic, write_alsa_conf
from dgd.tools.demo import FakeServerProcess
from tests.harness import (
    BYTES_PER_S,
    DaemonProcess,
    daemon_env,
    journal_text,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    load_sample,
    write_daemon_config,
)

if TYPE_CHECKING:
    from pathlib import Path

SAMPLE, UTTERANCES = load_sample()
SECRET = "dgdsecretkey0123456789abcdef"


@pytest.mark.e2e
@pytest.mark.parametrize("log_target", ["stderr", "journal"])
def test_the_key_is_in_no_log_line_at_debug_level(
    tmp_path: Path, journald: None, log_target: str
) -> None:
    plan = tmp_path / "faults.json"
    plan.write_text(
        json.dumps(
            [{"attempts": [1], "close_after_s": 2.0, "code": 1011, "reason": "NET-0000 injected"}]
        ),
        "utf-8",
    )
    server = FakeServerProcess(tmp_path / "server", api_key=SECRET, faults=plan)
    conf, fifo = tmp_path / "alsa.conf", tmp_path / "mic.fifo"
    write_alsa_conf(conf, "dgdsecret", fifo)
    mic = FifoMic(fifo)
    config = tmp_path / "dgd.toml"
    write_daemon_config(
        config,
        url=server.url,
        device="dgdsecret",
        jsonl=tmp_path / "t.jsonl",
    )
    env = daemon_env(alsa_conf=conf, notify_socket=None, api_key=SECRET)
    try:
        argv = [
            sys.executable,
            "-m",
            "dgd",
            "run",
            "-c",
            str(config),
            "--log-level",
            "debug",
            "--log-target",
            log_target,
        ]
        daemon = DaemonProcess(config, env=env, log_dir=tmp_path, argv=argv)
        with daemon:
            u = UTTERANCES[0]
            end = mic.play(SAMPLE[u.start_byte : u.end_byte]) + (u.end_byte - u.start_byte)
            mic.play(bytes(round(4 * BYTES_PER_S)))
            assert mic.wait_written(end + round(4 * BYTES_PER_S), 30.0)
            time.sleep(0.5)
            assert daemon.terminate(20.0) == 0
    finally:
        mic.close()
        server.stop()
    logs = daemon.output() + journal_text(_PID=str(daemon.pid))
    assert "connected to Deepgram" in logs  # the logs are there (the check can fail) ...
    assert "NET-0000" in logs  # ... including the error path
    assert SECRET not in logs  # ... and the key is not
    for path in (tmp_path / "server").iterdir():
        assert SECRET not in path.read_text("utf-8", errors="replace"), path
