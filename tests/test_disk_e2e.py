"""End-to-end: the JSON-lines file on a full disk, freed again, then rotated (issue "Never lose
a word", the sinks).

The real ``dgd run`` captures from a FIFO-fed ALSA ``file`` PCM, streams to ``dgd
fake-server`` and logs to the journald that tests/with-journald.sh starts. Its ``output.jsonl``
is on a 16 KiB tmpfs mounted in a mount namespace of the daemon's own (``unshare --mount``, so
nothing is mounted on the host; the mount dies with the daemon); the test reaches that file
system through ``/proc/PID/root``. Needs root. Run it with:

    tests/with-journald.sh .venv/bin/pytest tests/test_disk_e2e.py -v
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from dgd.testing.fifomic import write_alsa_conf
from tests.fault_harness import FaultRig, write_fault_config
from tests.harness import (
    DaemonProcess,
    FakeServerProcess,
    FifoMic,
    NotifyListener,
    assert_one_final_per_utterance,
    daemon_env,
    journal_bool,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    load_sample,
    parse_rfc3339,
    sample_utterance,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e

PCM_NAME: Final = "dgddisk"
#: tmpfs counts whole 4 KiB pages: the JSONL file's first page plus three for the filler.
DISK_SIZE: Final = "16k"
PAGE: Final = 4096
#: Bytes left free in the JSONL file's page when the disk is full: less than any line, so the
#: next line is written partly (a real short write) and then fails with ENOSPC.
PAGE_ROOM: Final = 48
#: Silence before each utterance: longer than the gate's hangover plus pre-roll (1.8 s).
GAP_S: Final = 2.2
#: Time for an utterance's final to reach the journal after it was played.
FINAL_TIMEOUT_S: Final = 15.0

SAMPLE, UTTERANCES = load_sample()


utterance = sample_utterance  # the bytes of sample utterance ``index``


@contextlib.contextmanager
def disk_rig(tmp_path: Path) -> Iterator[tuple[FaultRig, Path]]:
    """The daemon with ``output.jsonl`` on a tiny tmpfs of its own; yields the rig and the
    tmpfs directory as the test reaches it (``/proc/PID/root/...``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1): the JSONL file goes on a tmpfs of its own")
    disk = tmp_path / "disk"
    disk.mkdir()
    conf = tmp_path / "alsa.conf"
    fifo = tmp_path / "mic.fifo"
    write_alsa_conf(conf, PCM_NAME, fifo)
    plan = tmp_path / "faults.json"
    plan.write_text("[]", encoding="utf-8")
    config = tmp_path / "dgd.toml"
    with contextlib.ExitStack() as stack:
        server = FakeServerProcess(tmp_path / "server", api_key=None, faults=plan)
        stack.callback(server.stop)
        mic = FifoMic(fifo)
        stack.callback(mic.close)
        notify = stack.enter_context(NotifyListener(tmp_path / "notify.sock"))
        write_fault_config(config, url=server.url, device=PCM_NAME, jsonl=disk / "out.jsonl")
        env = daemon_env(alsa_conf=conf, notify_socket=notify.address)
        mount = f'mount -t tmpfs -o size={DISK_SIZE},mode=0755 dgd-test-disk "$0" && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount]
        argv += [str(disk), sys.executable, "-m", "dgd", "run", "-c", str(config)]
        argv += ["--log-target", "journal"]
        daemon = stack.enter_context(DaemonProcess(config, env=env, log_dir=tmp_path, argv=argv))
        view = Path(f"/proc/{daemon.pid}/root{disk}")
        rig = FaultRig(tmp_path, server, notify, daemon, view / "out.jsonl", fifo, mic)
        yield rig, view


def non_empty_finals(rig: FaultRig, n: int, timeout_s: float) -> list[dict[str, Any]]:
    """The daemon's non-empty final transcripts in the journal, waiting for ``n`` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = rig.events("transcript")
        finals = [e for e in entries if journal_bool(e["DGD_IS_FINAL"]) and e["MESSAGE"].strip()]
        if len(finals) >= n or time.monotonic() > deadline:
            return finals
        assert rig.daemon.poll() is None, "the daemon exited\n" + rig.diagnostics()
        time.sleep(0.1)


def say(rig: FaultRig, index: int, finals_before: int) -> dict[str, Any]:
    """Play utterance ``index`` after a gap; wait for its final in the journal; return it."""
    rig.play_utterance(utterance(index), GAP_S)
    finals = non_empty_finals(rig, finals_before + 1, GAP_S + 3.0 + FINAL_TIMEOUT_S)
    assert len(finals) == finals_before + 1, rig.diagnostics()
    return finals[-1]


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    chunk = b"\0" * PAGE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with pytest.raises(OSError) as full:  # noqa: PT012  (the loop ends by raising)
            while True:
                os.write(fd, chunk)
        assert full.value.errno == errno.ENOSPC, full.value
    finally:
        os.close(fd)


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The JSONL file's records; it must hold whole lines only."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path} ends in a broken line: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def open_files(pid: int) -> list[str]:
    """What the process's descriptors point at."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


@pytest.mark.slow
def test_full_disk_then_freed_then_rotated(tmp_path: Path, journald: None) -> None:
    """The disk fills mid-run: one warning, the journal gets every final exactly once, the link
    is untouched, the file keeps whole lines and writing resumes once there is room; then a
    rename + SIGHUP (logrotate's way) makes dgd let go of the old file and start a new one."""
    with disk_rig(tmp_path) as (rig, disk):
        rig.wait_ready()
        jsonl, rotated = disk / "out.jsonl", disk / "out.jsonl.1"
        first = say(rig, 0, 0)
        assert [t["text"] for t in lines_of(jsonl)] == [first["MESSAGE"]]

        # Another record fills the file's page but PAGE_ROOM bytes, the filler the disk.
        size = jsonl.stat().st_size
        pad = {"pad": ""}
        pad["pad"] = "x" * (PAGE - PAGE_ROOM - size - len(json.dumps(pad)) - 1)
        with jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(pad) + "\n")
        assert jsonl.stat().st_size == PAGE - PAGE_ROOM
        fill(disk / "filler")
        full_1 = say(rig, 2, 1)
        full_2 = say(rig, 0, 2)
        assert [t.get("text") for t in lines_of(jsonl)] == [first["MESSAGE"], None]
        assert jsonl.stat().st_size == PAGE - PAGE_ROOM  # the partial lines were taken back

        (disk / "filler").unlink()
        freed = say(rig, 2, 3)
        assert [t.get("text") for t in lines_of(jsonl)] == [
            first["MESSAGE"],
            None,
            freed["MESSAGE"],
        ]

        jsonl.rename(rotated)
        os.kill(rig.daemon.pid, signal.SIGHUP)
        assert rig.events("reloaded", 10.0, 1), rig.diagnostics()
        held = [p for p in open_files(rig.daemon.pid) if p.endswith("out.jsonl.1")]
        assert not held, f"dgd still holds the rotated file: {held}\n{rig.diagnostics()}"
        assert not jsonl.exists()
        after = say(rig, 4, 4)
        assert [t["text"] for t in lines_of(jsonl)] == [after["MESSAGE"]]
        assert lines_of(rotated)[-1]["text"] == freed["MESSAGE"]
        assert lines_of(jsonl)[0]["start"] == after["DGD_START"]

        rig.stop()
        diag = rig.diagnostics()
        finals = non_empty_finals(rig, 5, 0.0)
        spans = [(parse_rfc3339(e["DGD_START"]), parse_rfc3339(e["DGD_END"])) for e in finals]
        assert_one_final_per_utterance("journald", spans, rig.truth(), diag)
        assert [e["MESSAGE"] for e in finals] == [
            first["MESSAGE"],
            full_1["MESSAGE"],
            full_2["MESSAGE"],
            freed["MESSAGE"],
            after["MESSAGE"],
        ]

        errors = rig.events("sink_error")
        assert len(errors) == 1, diag  # the second failure is counted, not logged again
        assert errors[0]["PRIORITY"] == "4", errors[0]
        assert errors[0]["MESSAGE"].startswith(
            f"cannot write transcript to {tmp_path / 'disk' / 'out.jsonl'}: No space left on device"
        ), errors[0]["MESSAGE"]
        resumed = rig.events("sink_resumed")
        assert [e["DGD_LOST"] for e in resumed] == ["2"], diag
        # The link never noticed: one connection, never lost.
        assert not rig.events("disconnected"), diag
        assert len(rig.events("connected")) == 1, diag
