"""Secrets: neither the API key nor a secret query value ever appears in a log line, at any
level, from dgd or a library; the running daemon is not dumpable and its environment no
longer holds the key.

The real ``dgd run`` runs at ``--log-level debug`` (trio-websocket's debug logger then logs
every frame and the connection URL, query included), logging to stderr and, in a second run,
to journald, through one reconnect (a 1011 close) so that error paths log too. The config
has a ``[deepgram.query] token`` (one that percent-encoding changes, as the URL carries it)
and the key comes from ``$DEEPGRAM_API_KEY``. As under systemd (``DynamicUser=``), the daemon
runs as an unprivileged user (``nobody`` when the test is root; if that user cannot read the
checkout, as root, and the dumpability check below is left out). While it runs:

- ``/proc/<pid>/status`` is owned by root while its ``Uid:`` line names the daemon's user:
  the kernel does that only for a process that is not dumpable (``PR_SET_DUMPABLE`` 0);
- ``/proc/<pid>/environ`` (the block the kernel set up at exec, which ``unsetenv`` does not
  clear) holds neither ``DEEPGRAM_API_KEY`` nor the key.

Every check is shown to be able to fail: a control process started the same way shows its
own user as the owner and the key in its environ, and the logs hold markers the daemon does
log (the trio-websocket URL line, the injected close).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from dgd.core.config import DEFAULT_QUERY
from dgd.testing.fifomic import FifoMic, write_alsa_conf
from dgd.tools.demo import FakeServerProcess, package_env
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
    from collections.abc import Iterator

SAMPLE, UTTERANCES = load_sample()
SECRET: Final = "dgdsecretkey0123456789abcdef"
#: A secret query value; in the URL it is percent-encoded (``/``, ``+`` and ``:`` change).
TOKEN: Final = "dgd/token+secret:0123456789"
TOKEN_ENCODED: Final = urllib.parse.quote(TOKEN, safe="")
#: The unprivileged user the daemon runs as when the test runs as root.
NOBODY: Final = 65534
#: Runs the rest of the command line as NOBODY (when root), as systemd's DynamicUser= would.
AS_USER: Final = (
    "import os, sys\n"
    "if os.geteuid() == 0:\n"
    f"    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory the unprivileged daemon can read and write (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="dgd-secrets-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def unprivileged_user_can_run_dgd() -> bool:
    """Whether NOBODY can import dgd and its stack from this checkout and venv (a checkout
    under a 0700 home directory cannot be); always True when the test is not root."""
    if os.geteuid() != 0:
        return True
    probe = [sys.executable, "-c", AS_USER, "-c", "import alsaaudio, dgd.cli, trio_websocket"]
    result = subprocess.run(probe, env=package_env(), cwd="/", capture_output=True, check=False)
    return result.returncode == 0


def proc_facts(pid: int) -> tuple[int, int, bytes | None]:
    """(owner of /proc/<pid>/status, the real uid its Uid: line shows, /proc/<pid>/environ
    or None when this test may not read it)."""
    status = Path(f"/proc/{pid}/status")
    owner = status.stat().st_uid
    uid_line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
    try:
        environ: bytes | None = Path(f"/proc/{pid}/environ").read_bytes()
    except PermissionError:
        environ = None  # not root: a non-dumpable process's environ is closed to us
    return owner, int(uid_line.split()[1]), environ


def assert_not_dumpable_and_no_key(pid: int) -> None:
    owner, uid, environ = proc_facts(pid)
    if uid == 0:  # root's /proc files belong to root either way: ownership tells nothing
        print(  # not a warning: the suite turns warnings into errors
            f"the daemon ran as root (user {NOBODY} cannot read this checkout or venv): "
            "its dumpability was not checked",
            file=sys.stderr,
        )
    else:
        assert owner == 0, f"/proc/{pid}/status is owned by {owner}: the process is dumpable"
    if os.geteuid() == 0:
        assert environ is not None
        assert b"DEEPGRAM_API_KEY" not in environ
        assert SECRET.encode() not in environ
    else:
        assert environ is None


def test_the_proc_checks_can_fail(tmp_path: Path) -> None:
    """A dumpable process with the key in its environment, started as the daemon is."""
    if not unprivileged_user_can_run_dgd():
        pytest.skip(f"user {NOBODY} cannot read this checkout or venv")
    env = daemon_env(alsa_conf=tmp_path / "unused.conf", notify_socket=None, api_key=SECRET)
    argv = [sys.executable, "-c", AS_USER, "-c", "import time; time.sleep(30)"]
    with subprocess.Popen(argv, env=env, cwd="/") as control:
        try:
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:  # until the setuid and the exec happened
                cmdline = Path(f"/proc/{control.pid}/cmdline").read_bytes()
                if b"time.sleep" in cmdline and b"execv" not in cmdline:
                    break
                time.sleep(0.02)
            owner, uid, environ = proc_facts(control.pid)
            assert owner == uid != 0  # dumpable: its /proc files belong to its own user
            assert environ is not None
            assert f"DEEPGRAM_API_KEY={SECRET}".encode() in environ
        finally:
            control.kill()


@pytest.mark.e2e
@pytest.mark.parametrize("log_target", ["stderr", "journal"])
def test_no_secret_in_any_log_line_at_debug_level(
    tmp_path: Path, run_dir: Path, journald: None, log_target: str
) -> None:
    plan = tmp_path / "faults.json"
    plan.write_text(
        json.dumps(
            [{"attempts": [1], "close_after_s": 2.0, "code": 1011, "reason": "NET-0000 injected"}]
        ),
        "utf-8",
    )
    server = FakeServerProcess(tmp_path / "server", api_key=SECRET, faults=plan)
    conf, fifo = run_dir / "alsa.conf", run_dir / "mic.fifo"
    write_alsa_conf(conf, "dgdsecret", fifo)
    mic = FifoMic(fifo)
    config = run_dir / "dgd.toml"
    write_daemon_config(
        config,
        url=server.url,
        device="dgdsecret",
        jsonl=run_dir / "t.jsonl",
        query=(*DEFAULT_QUERY, ("token", TOKEN)),
    )
    env = daemon_env(alsa_conf=conf, notify_socket=None, api_key=SECRET)
    try:
        argv = (
            [sys.executable, "-c", AS_USER] if unprivileged_user_can_run_dgd() else [sys.executable]
        )
        argv += ["-m", "dgd", "run", "-c", str(config)]
        argv += ["--log-level", "debug", "--log-target", log_target]
        daemon = DaemonProcess(config, env=env, log_dir=tmp_path, argv=argv)
        with daemon:
            u = UTTERANCES[0]
            end = mic.play(SAMPLE[u.start_byte : u.end_byte]) + (u.end_byte - u.start_byte)
            mic.play(bytes(round(4 * BYTES_PER_S)))
            assert mic.wait_written(end + round(4 * BYTES_PER_S), 30.0), daemon.output()
            assert_not_dumpable_and_no_key(daemon.pid)
            time.sleep(0.5)
            assert daemon.terminate(20.0) == 0
    finally:
        mic.close()
        server.stop()
    logs = daemon.output() + journal_text(_PID=str(daemon.pid))
    assert "connected to Deepgram" in logs  # the logs are there (the checks can fail) ...
    assert "NET-0000" in logs  # ... including the error path ...
    assert "Connecting to ws://127.0.0.1" in logs  # ... and trio-websocket's URL line ...
    assert "token=<redacted>&" in logs  # ... with the token in it, scrubbed
    for secret in (SECRET, TOKEN, TOKEN_ENCODED):
        assert secret not in logs, secret
    for path in (tmp_path / "server").iterdir():
        text = path.read_text("utf-8", errors="replace")
        assert SECRET not in text, path
        assert TOKEN_ENCODED not in text, path
