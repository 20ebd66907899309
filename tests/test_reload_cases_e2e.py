"""Reload is a plan (issue 9 part 4), each required behaviour once end to end: SIGHUP and
SIGTERM to the real ``dgd run`` process capturing through real alsa-lib (FIFO-fed ``file``
PCMs), logging to a real private journald, notifying a real NOTIFY_SOCKET, streaming to the
fake Deepgram server, which records every connection.

1. ``audio.rate`` 16000 → 8000: the stream that carried the 16 kHz utterance declared
   ``sample_rate=16000`` and got no other audio; the next declared 8000 and got only the
   8 kHz utterance; the 16 kHz transcript is written; capture paused only for the reopen,
   far less than ``stream.close_timeout_s``.
2. Twice, three SIGHUPs within 50 ms, each after naming another device, while a reload is
   under way: the daemon ends up capturing from the device the file names, and only from it.
   Two more tests show bugs when a SIGHUP arrives while a reload reopens capture: a
   misnamed or abandoned capture thread, and then 16 kHz audio under an 8 kHz handshake.
3. ``output.journald`` false → true applies: transcripts reach the journal from then on.
4. A SIGHUP before READY=1 is not fatal: remembered, carried out once ready.
5. A second SIGTERM during shutdown is ignored: the result in flight is written, exit 0.

Each fails against the code before the reload plan (commit bffb5a8~1); 2 there only in
about three runs of four, as the old reloads raced each other.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from dgd.testing.fifomic import write_alsa_conf
from tests.fault_harness import (
    FAST_STREAM,
    PCM_NAME,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    FaultRig,
    conn_audio,
    conn_records,
    handshakes,
    read_finals,
    silence_s,
    write_fault_config,
)
from tests.harness import (
    BYTES_PER_S,
    E2E_API_KEY,
    DaemonProcess,
    FakeServerProcess,
    FifoMic,
    NotifyListener,
    assert_one_final_per_utterance,
    daemon_env,
    journal_entries,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    load_sample,
    overlapping,
    parse_rfc3339,
    sample_utterance,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from dgd.core.config import StreamConfig

SAMPLE, UTTERANCES = load_sample()
#: Per-step waits (a reload, a device opening, a journal record): generous for a loaded
#: two-core machine, never a performance claim.
STEP_TIMEOUT_S: Final = 10.0


utterance = sample_utterance  # the bytes of sample utterance ``index``


@functools.cache
def utterance_8k(index: int) -> bytes:
    """The same sentence resampled to 8 kHz by sox (no dither: silence stays zero)."""
    sox = shutil.which("sox")
    if sox is None:
        pytest.fail("sox is needed to make the 8 kHz fixture (apt-get install sox; .ci/setup)")
    raw = ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-L"]
    argv = [sox, "-D", *raw, "-r", "16000", "-", *raw, "-r", "8000", "-"]
    return subprocess.run(argv, input=utterance(index), capture_output=True, check=True).stdout


def journal_time(entry: Mapping[str, Any]) -> float:
    """When journald received an entry (seconds since the epoch)."""
    return int(entry["__REALTIME_TIMESTAMP"]) / 1e6


def rewrite(config: Path, old: str, new: str) -> None:
    """Replace ``old`` (which must be there) by ``new`` in the daemon's config file."""
    text = config.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in the config:\n{text}"
    config.write_text(text.replace(old, new), encoding="utf-8")


def count(assignments: Sequence[str], wanted: str) -> int:
    return sum(1 for a in assignments if a == wanted)


# ---- the rig ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Rig:
    """A `FaultRig` (its ``mic`` is the first device's) plus every device's microphone."""

    world: FaultRig
    config: Path
    mics: dict[str, FifoMic]
    started_at: float  # time.monotonic() once the daemon process existed

    def hup(self) -> float:
        """Send SIGHUP; returns time.time() just before."""
        sent_at = time.time()
        os.kill(self.world.daemon.pid, signal.SIGHUP)
        return sent_at

    def reload(self) -> float:
        """SIGHUP and wait for the READY=1 that ends this reload; returns time.time() at the
        RELOADING=1 it sent first."""
        before = len(self.world.notify.notifications)
        self.hup()
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            sent = self.world.notify.notifications[before:]
            names = [n.assignment for n in sent]
            if "RELOADING=1" in names and "READY=1" in names[names.index("RELOADING=1") :]:
                return sent[names.index("RELOADING=1")].t
            time.sleep(0.02)
        raise AssertionError(
            "no RELOADING=1 then READY=1 after SIGHUP\n" + self.world.diagnostics()
        )


@contextlib.contextmanager
def reload_rig(
    tmp_path: Path,
    *,
    devices: Sequence[str] = (PCM_NAME,),
    stream: StreamConfig = FAST_STREAM,
    edit: Callable[[str], str] | None = None,
    watchdog_usec: int | None = None,
) -> Iterator[Rig]:
    """The fake server, one FIFO microphone per ALSA device in ``devices`` (the daemon
    captures from the first), and the daemon with `write_fault_config`'s config, changed by
    ``edit``, under a watchdog of ``watchdog_usec`` if given. Torn down daemon first (a
    closed FIFO makes its PCM read garbage)."""
    alsa_conf = tmp_path / "alsa.conf"
    pieces = []
    for name in devices:
        piece = tmp_path / f"{name}.conf"
        write_alsa_conf(piece, name, tmp_path / f"{name}.fifo")
        pieces.append(piece.read_text(encoding="utf-8"))
    alsa_conf.write_text("".join(pieces), encoding="utf-8")
    jsonl = tmp_path / "transcripts.jsonl"
    config = tmp_path / "dgd.toml"
    with contextlib.ExitStack() as stack:
        server = FakeServerProcess(tmp_path / "server", api_key=E2E_API_KEY)
        stack.callback(server.stop)
        mics: dict[str, FifoMic] = {}
        for name in devices:
            mics[name] = FifoMic(tmp_path / f"{name}.fifo")
            stack.callback(mics[name].close)
        notify = stack.enter_context(NotifyListener(tmp_path / "notify.sock"))
        write_fault_config(config, url=server.url, device=devices[0], jsonl=jsonl, stream=stream)
        if edit is not None:
            config.write_text(edit(config.read_text(encoding="utf-8")), encoding="utf-8")
        env = daemon_env(alsa_conf=alsa_conf, notify_socket=notify.address)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        daemon = stack.enter_context(DaemonProcess(config, env=env, log_dir=tmp_path))
        started_at = time.monotonic()
        first = devices[0]
        world = FaultRig(
            tmp_path, server, notify, daemon, jsonl, tmp_path / f"{first}.fifo", mics[first]
        )
        yield Rig(world, config, mics, started_at)


# ---- 1. a new rate gets its own stream -------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_new_rate_gets_its_own_handshake_and_capture_pauses_only_for_the_reopen(
    tmp_path: Path, journald: None
) -> None:
    close_timeout_s = 15.0  # the old code held capture this long; the reopen takes well under 1 s
    audio_16k, audio_8k = utterance(0), utterance_8k(3)
    stream = replace(FAST_STREAM, close_timeout_s=close_timeout_s)
    with reload_rig(tmp_path, stream=stream) as rig:
        world, mic = rig.world, rig.world.the_mic()
        world.wait_ready()
        placed = world.play_utterance(audio_16k, 1.0)
        world.play(silence_s(0.5))
        # SIGHUP 0.3 s after the last 16 kHz sample: inside the gate's hangover, so the old
        # stream still has to finish the utterance after the reload began.
        world.wait_written(placed.end + round(0.3 * BYTES_PER_S))
        truth_16k = world.truth()
        rewrite(rig.config, "rate = 16000", "rate = 8000")
        reloading_at = rig.reload()
        opened = world.events("device_opened", STEP_TIMEOUT_S, 2)
        assert len(opened) == 2, "capture did not reopen\n" + world.diagnostics()
        reopened_at = journal_time(opened[1])

        # The FIFO passes raw bytes: from here on it carries 8 kHz audio (the mic still
        # writes 32000 B/s, up to twice real time at 8 kHz; the fake server does not mind).
        mic.play(bytes(8000 * 2))  # 1 s of 8 kHz silence
        mic.play(audio_8k)
        end = mic.play(bytes(8000 * 2 * 2))
        world.wait_written(end + 8000 * 2 * 2)
        world.stop()

        diag = world.diagnostics()
        reloaded = world.events("reloaded")
        assert [e["DGD_CHANGED"] for e in reloaded] == ["audio"], diag
        # Capture stopped only for the reopen: from RELOADING=1 (capture still running) to the
        # device open again, far from the close_timeout_s the old code waited.
        paused_s = reopened_at - reloading_at
        assert paused_s < close_timeout_s / 3, f"capture paused {paused_s:.2f} s\n{diag}"

        shakes = handshakes(world.record_dir)
        assert [h["status"] for h in shakes] == [101, 101], diag
        assert [h["query"]["sample_rate"] for h in shakes] == ["16000", "8000"], diag
        assert world.events("disconnected") == [], diag
        first, second = (int(h["attempt"]) for h in shakes)
        audio_1, audio_2 = conn_audio(world.record_dir, first), conn_audio(world.record_dir, second)
        # Each stream got its own utterance whole, and nothing but silence besides it.
        assert audio_16k in audio_1, diag
        assert audio_1.strip(b"\0") in audio_16k, "the 16 kHz stream got other audio\n" + diag
        assert audio_8k in audio_2, diag
        assert audio_2.strip(b"\0") in audio_8k, "the 8 kHz stream got other audio\n" + diag

        finals = read_finals(world.daemon.pid, world.jsonl)
        ids = [str(h["request_id"]) for h in shakes]
        spans_16k = [
            (parse_rfc3339(e["DGD_START"]), parse_rfc3339(e["DGD_END"]))
            for e in finals.journal
            if e["DGD_REQUEST_ID"] == ids[0]
        ]
        assert_one_final_per_utterance("16 kHz stream", spans_16k, truth_16k, diag)
        assert [e for e in finals.journal if e["DGD_REQUEST_ID"] == ids[1]], diag
        assert len(finals.jsonl) == len(finals.journal) == 2, diag


# ---- 2. fast SIGHUPs end with the config in the file ------------------------------------------


def burst(rig: Rig, devices: Sequence[str], *, stall_s: float = 0.0) -> None:
    """Point ``audio.device`` at each of ``devices`` in turn, with a SIGHUP after each
    rewrite, 20 ms apart; then wait until the daemon captures from the last, and from no
    other microphone of the rig.

    ``stall_s``: the microphone in use first stops for that long, so that the first reload
    (which waits for the capture thread to let go) is still under way at the last SIGHUP.
    """
    text = rig.config.read_text(encoding="utf-8")
    running = next(line for line in text.splitlines() if line.startswith("device = "))
    if stall_s > 0:
        rig.mics[json.loads(running.removeprefix("device = "))].stall(stall_s)
        time.sleep(0.15)  # the capture thread has drained the FIFO and waits for more
    sent = []
    for device in devices:
        text = rig.config.read_text(encoding="utf-8")
        running = next(line for line in text.splitlines() if line.startswith("device = "))
        rewrite(rig.config, running, f"device = {json.dumps(device)}")
        sent.append(rig.hup())
        time.sleep(0.02)
    assert sent[-1] - sent[0] < 0.1, f"the SIGHUPs were not fast: {sent}"
    world, wanted = rig.world, devices[-1]
    assert rig.mics[wanted].wait_reader(STEP_TIMEOUT_S), f"{wanted} never opened\n" + (
        world.diagnostics()
    )
    # Settled: every RELOADING=1 answered with a READY=1, and no new reload for 1 s.
    deadline = time.monotonic() + STEP_TIMEOUT_S
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        assert time.monotonic() < deadline, "reloads did not settle\n" + world.diagnostics()
        names = world.notify.assignments()
        reloads = count(names, "RELOADING=1")
        last = len(names) - 1 - names[::-1].index("RELOADING=1") if reloads else 0
        if reloads != seen or "READY=1" not in names[last:]:
            seen, quiet_since = reloads, time.monotonic()
        time.sleep(0.05)
    assert rig.mics[wanted].wait_reader(0.0), f"{wanted} was closed again\n" + world.diagnostics()
    for name, mic in rig.mics.items():
        if name != wanted:
            assert mic.wait_reader(2.0, present=False), (
                f"{name} is still open, though the file names {wanted}\n" + world.diagnostics()
            )
    opened = world.events("device_opened", STEP_TIMEOUT_S, 1)
    assert opened[-1]["DGD_DEVICE"] == wanted, world.diagnostics()
    reopened = world.events("reload_audio")
    assert f'device "{wanted}"' in reopened[-1]["MESSAGE"], world.diagnostics()


@pytest.mark.e2e
@pytest.mark.slow
def test_fast_sighups_end_capturing_from_the_device_in_the_file(
    tmp_path: Path, journald: None
) -> None:
    devices = [PCM_NAME, *(f"{PCM_NAME}{n}" for n in (2, 3, 4))]
    with reload_rig(tmp_path, devices=devices) as rig:
        world = rig.world
        world.wait_ready()
        burst(rig, devices[1:], stall_s=0.5)  # 2, 3, 4
        burst(rig, devices[-2::-1], stall_s=0.5)  # 3, 2, back to the first

        # Every microphone speaks at once; only the one the file names may be heard.
        mic = rig.mics[devices[0]]
        for i, name in enumerate(devices[1:], start=1):
            other = rig.mics[name]
            other.play(silence_s(1.0) + utterance(i))
        placed = world.play_utterance(utterance(0), 1.0)
        world.play(silence_s(2.0))
        world.wait_written(placed.end + 2 * BYTES_PER_S)
        world.stop()

        diag = world.diagnostics()
        received = world.server.received_audio()
        assert utterance(0) in received, diag
        for i in range(1, 4):
            assert utterance(i) not in received, f"audio from {devices[i]} was sent\n{diag}"
        world.check_transcripts()
        assert mic.readers_seen >= 2, diag


@pytest.mark.e2e
@pytest.mark.slow
def test_a_reload_pending_when_capture_reopens_neither_misnames_nor_abandons_it(
    tmp_path: Path, journald: None
) -> None:
    """A SIGHUP that arrives while a reload reopens capture makes one more reload, which
    begins as soon as the first has told the capture task to resume. It must stop the thread
    the first one started (not the finished one before it, and never abandon a thread as
    stuck that it did not ask to stop: the watchdog must go on being fed), and that thread's
    ``device_opened`` names the device it opened, not the one the second reload read."""
    devices = [PCM_NAME, *(f"{PCM_NAME}{n}" for n in (2, 3, 4))]
    with reload_rig(tmp_path, devices=devices, watchdog_usec=2_000_000) as rig:
        world = rig.world
        world.wait_ready()
        burst(rig, devices[1:], stall_s=0.5)
        settled_at = time.time()
        time.sleep(3.0)  # three watchdog intervals (WATCHDOG_USEC / 2)
        pets = [n.t for n in world.notify.notifications if n.assignment == "WATCHDOG=1"]
        world.stop()

        kinds = ("reload_audio", "device_opened", "capture_stuck", "capture_released")
        timeline = [
            e
            for e in journal_entries(0.0, 0, _PID=str(world.daemon.pid))
            if e.get("DGD_EVENT") in kinds
        ]
        readers = {name: mic.readers_seen for name, mic in rig.mics.items()}
        story = f"(readers each FIFO saw: {readers}):\n" + "\n".join(
            f"{e['DGD_EVENT']}: {e['MESSAGE']}" for e in timeline
        )
        reopened = [e for e in timeline if e["DGD_EVENT"] == "reload_audio"]
        assert len(reopened) >= 2, "the second SIGHUP did not make a second reload " + story
        assert [e for e in timeline if e["DGD_EVENT"] == "capture_stuck"] == [], (
            "a reload abandoned the capture thread " + story
        )
        assert [t for t in pets if t > settled_at], (
            f"no WATCHDOG=1 in the {time.time() - settled_at:.1f} s after the reloads " + story
        )
        reopening = devices[0]
        for entry in timeline:
            if entry["DGD_EVENT"] == "reload_audio":
                reopening = entry["MESSAGE"].split('"')[1]
            elif entry["DGD_EVENT"] == "device_opened":
                assert entry["DGD_DEVICE"] == reopening, (
                    f"device_opened names {entry['DGD_DEVICE']}, but {reopening} was being "
                    "opened " + story
                )


@pytest.mark.e2e
@pytest.mark.slow
def test_a_rate_change_pending_when_capture_reopens_gets_its_own_handshake(
    tmp_path: Path, journald: None
) -> None:
    """A new device, then 20 ms later a new rate, while the first reload is under way: the
    audio sent on the stream whose handshake declared 8000 Hz was captured at 8000 Hz (its
    100 ms frames are 1600 bytes; a 16 kHz capture makes 3200-byte frames)."""
    devices = [PCM_NAME, f"{PCM_NAME}2"]
    with reload_rig(tmp_path, devices=devices) as rig:
        world = rig.world
        world.wait_ready()
        rig.mics[PCM_NAME].stall(0.5)
        time.sleep(0.15)  # the capture thread has drained the FIFO and waits for more
        rewrite(rig.config, f'device = "{PCM_NAME}"', f'device = "{devices[1]}"')
        rig.hup()
        time.sleep(0.02)
        rewrite(rig.config, "rate = 16000", "rate = 8000")
        rig.hup()
        mic = rig.mics[devices[1]]
        assert mic.wait_reader(STEP_TIMEOUT_S), "the new device never opened\n" + (
            world.diagnostics()
        )
        time.sleep(1.0)  # the reloads are over
        mic.play(silence_s(0.5) + utterance_8k(0))
        end = mic.play(silence_s(2.0))
        assert mic.wait_written(end + 2 * BYTES_PER_S, 30.0), world.diagnostics()
        world.stop()

        diag = world.diagnostics()
        frame_s = FAST_STREAM.frame_ms / 1000
        sent = []
        for shake in handshakes(world.record_dir):
            rate = int(shake["query"]["sample_rate"])
            lengths = {
                int(r["len"])
                for r in conn_records(world.record_dir, int(shake["attempt"]))
                if r["kind"] == "binary"
            }
            sent.append((rate, sorted(lengths)))
        assert [rate for rate, _ in sent][-1:] == [8000], f"{sent}\n{diag}"
        assert all(max(lengths, default=0) <= rate * 2 * frame_s for rate, lengths in sent), (
            f"(declared rate, frame sizes) per stream: {sent}\n{diag}"
        )
        assert world.events("capture_stuck") == [], diag


# ---- 3. output.journald false → true -----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_output_journald_switched_on_by_reload(tmp_path: Path, journald: None) -> None:
    with reload_rig(
        tmp_path, edit=lambda text: text.replace("journald = true", "journald = false")
    ) as rig:
        world = rig.world
        world.wait_ready()
        before = world.play_utterance(utterance(0), 1.0)
        world.play(silence_s(2.5))
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not read_finals(world.daemon.pid, world.jsonl).jsonl:
            assert time.monotonic() < deadline, "no transcript in JSONL\n" + world.diagnostics()
            time.sleep(0.1)

        rewrite(rig.config, "journald = false", "journald = true")
        reloaded_at = rig.reload()
        after = world.play_utterance(utterance(3), 1.0)
        world.play(silence_s(2.0))
        world.wait_written(after.end + 2 * BYTES_PER_S)
        world.stop()

        diag = world.diagnostics()
        assert [e["DGD_CHANGED"] for e in world.events("reloaded")] == ["output"], diag
        truth = world.truth()
        finals = read_finals(world.daemon.pid, world.jsonl)
        jsonl_spans = [(parse_rfc3339(t["start"]), parse_rfc3339(t["end"])) for t in finals.jsonl]
        assert_one_final_per_utterance("JSONL", jsonl_spans, truth, diag)
        # Nothing before the reload reached the journal; the final after it did.
        assert all(journal_time(e) > reloaded_at for e in world.events("transcript")), diag
        spans = [
            (parse_rfc3339(e["DGD_START"]), parse_rfc3339(e["DGD_END"])) for e in finals.journal
        ]
        assert_one_final_per_utterance("journald", spans, truth[1:], diag)
        assert before.end < after.start


# ---- 4. SIGHUP before READY=1 -----------------------------------------------------------------


def catches_sighup(pid: int) -> bool:
    """The process has a handler for SIGHUP (``SigCgt`` in /proc/PID/status)."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGHUP - 1) & 1)
    return False


@pytest.mark.e2e
def test_sighup_before_ready_is_carried_out_once_ready(tmp_path: Path, journald: None) -> None:
    with reload_rig(tmp_path) as rig:
        world = rig.world
        pid = world.daemon.pid
        # 100 ms after the start; but a signal that arrives while the interpreter is still
        # starting (before dgd's first line runs) kills any Python program, so not before
        # dgd's SIGHUP handler is in place (45-150 ms after exec on a busy two-core machine).
        while not catches_sighup(pid):
            assert world.daemon.poll() is None, world.diagnostics()
            assert time.monotonic() - rig.started_at < READY_TIMEOUT_S, world.diagnostics()
            time.sleep(0.001)
        time.sleep(max(0.0, rig.started_at + 0.1 - time.monotonic()))
        assert "READY=1" not in world.notify.assignments(), "too late: dgd is ready already"
        rig.hup()
        world.wait_ready()
        reloaded = world.events("reloaded", STEP_TIMEOUT_S, 1)
        assert world.daemon.poll() is None, "SIGHUP killed dgd\n" + world.diagnostics()

        diag = world.diagnostics()
        pending, started = world.events("reload_pending"), world.events("started")
        assert len(pending) == len(started) == len(reloaded) == 1, diag
        order = [journal_time(e[0]) for e in (pending, started, reloaded)]
        assert order == sorted(order), f"reload_pending, started, reloaded at {order}\n{diag}"
        names = world.notify.assignments()
        ready = names.index("READY=1")
        assert "RELOADING=1" in names[ready:], f"reloaded before READY=1: {names}"
        assert "READY=1" in names[names.index("RELOADING=1") + 1 :], names
        world.stop()


# ---- 5. a second SIGTERM during shutdown --------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_second_sigterm_during_shutdown_is_ignored(tmp_path: Path, journald: None) -> None:
    with reload_rig(tmp_path) as rig:
        world = rig.world
        world.wait_ready()
        placed = world.play_utterance(utterance(3), 1.0)
        # Mid-sentence: its final cannot have been sent yet.
        world.wait_written(placed.start + len(placed.audio) * 7 // 10)
        first_at = time.time()
        os.kill(world.daemon.pid, signal.SIGTERM)
        time.sleep(0.1)
        os.kill(world.daemon.pid, signal.SIGTERM)
        exit_code = world.daemon.process.wait(STOP_TIMEOUT_S)

        diag = world.diagnostics()
        assert exit_code == 0, f"exit code {exit_code}\n{diag}"
        stopping = [e["MESSAGE"] for e in world.events("stopping")]
        assert any("already stopping; SIGTERM ignored" in m for m in stopping), diag
        assert world.events("stopped", STEP_TIMEOUT_S, 1), diag
        assert world.events("shutdown_incomplete") == [], diag
        spoken = (placed.start, placed.start + len(placed.audio) * 7 // 10)
        truth = (world.the_mic().capture_time(spoken[0]), world.the_mic().capture_time(spoken[1]))
        finals = read_finals(world.daemon.pid, world.jsonl)
        journal = [e for e in finals.journal if journal_time(e) > first_at]
        spans = [(parse_rfc3339(e["DGD_START"]), parse_rfc3339(e["DGD_END"])) for e in journal]
        assert len(overlapping(truth, spans, slack=0.0)) == 1, f"{spans} vs {truth}\n{diag}"
        assert [t["text"] for t in finals.jsonl] == [e["MESSAGE"] for e in finals.journal], diag
        assert len(finals.jsonl) == 1, diag
