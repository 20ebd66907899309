#!/usr/bin/env python3
"""dgd's system test scenarios, run inside a Debian 13 VM (systemd as PID 1, snd-aloop).

``tests/system/run`` boots the VM twice from one disk image; ``dgd-systest.service`` runs
this file on each boot, as root, after ``multi-user.target``:

* phase 1 (first boot): scenarios 1, 11, 2, 3, 8, 9, 10, 7 and 4 in that order against the
  installed dgd unit, then ``systemctl enable dgd`` and a reboot;
* phase 2 (second boot): scenario 5 (the service came back by itself and waits for the
  network and the microphone) and scenario 6 (every record of the unit, across both boots,
  carries ``DGD_EVENT``).

Each scenario appends one line to ``/mnt/share/results.txt`` (``PASS N name: …`` or
``FAIL N name: reason``) and its duration to ``/mnt/share/times.txt``; the journal of every
boot and the fake server's recordings are copied to the share at the end of each phase.
The numbers are those of docs/SYSTEM_TESTS.md.

``scenarios.py play DEVICE FILE`` is the player the scenarios start: it plays raw S16_LE
16 kHz mono into an ALSA device and prints the wall-clock time of its first write (the
moment the stream starts), so that capture times can be checked against it.

Only the standard library, Debian's python3-alsaaudio (for the player) and the installed
dgd's own config writer (``dgd.core.config``) are used: this runs on the VM's own Python 3.13,
not on the project's venv.
"""

from __future__ import annotations

import array
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SHARE: Final = Path("/mnt/share")
STATE: Final = Path("/var/lib/dgd-systest")
WORK: Final = STATE / "work"
NEXT_ACTION: Final = Path("/run/dgd-systest-next")  # read by the unit's ExecStopPost
CONFIG: Final = Path("/etc/dgd.toml")

RATE: Final = 16000
BYTES_PER_S: Final = RATE * 2  # S16_LE mono
PERIOD_FRAMES: Final = 1600  # the player's ALSA period: 100 ms
# The player's buffer: 1 s, so that an emulated VM under load does not starve the stream
# (an underrun would insert silence into the speech and fail the byte comparison).
PLAYER_PERIODS: Final = 10
PLAY_DEVICE: Final = "hw:CARD=Loopback,DEV=0"
CAPTURE_DEVICE: Final = "hw:CARD=Loopback,DEV=1"
TIMER_SOURCE: Final = Path("/proc/asound/Loopback/timer_source")
ALOOP_DRIVER: Final = Path("/sys/bus/platform/drivers/snd_aloop")
# One substream per loopback device: capture is always substream 0, the one the player
# feeds, and a second open of it fails with EBUSY instead of silently taking substream 1.
# The stall scenario clocks the loopback by another card's stream and stops that stream:
# snd-dummy's on amd64; arm64's kernel has no snd-dummy, so there a second loopback card,
# "Clock", is the clock (snd_aloop.0 stays the card under test: unbind/bind hit only it).
ARM64: Final = platform.machine() == "aarch64"
ALOOP_MODPROBE: Final[tuple[str, ...]] = (
    ("modprobe", "snd-aloop", "enable=1,1", "index=0,1", "id=Loopback,Clock", "pcm_substreams=1,1")
    if ARM64
    else ("modprobe", "snd-aloop", "pcm_substreams=1")
)
CLOCK_MODPROBE: Final[tuple[str, ...]] = () if ARM64 else ("modprobe", "snd-dummy")
CLOCK_DEVICE: Final = "hw:CARD=Clock,DEV=0" if ARM64 else "hw:CARD=Dummy,DEV=0"
CLOCK_TIMER: Final = "Clock.0.0" if ARM64 else "Dummy.0.0"
FAKE_PORT: Final = 8765
TIME_TOLERANCE_S: Final = 0.25
HANGOVER_MS: Final = 1500
STARTUP_GATE_S: Final = 3.0  # dgd.gate's STARTUP_MS (1 s) + the hangover, and some slack
RELOADED_HANGOVER_MS: Final = 1200

#: Where systemd/install.sh (``tests/system/run --from-source``) installs dgd; the .deb
#: installs it on python3's own path.
VENV_SITE_PACKAGES: Final = "/opt/dgd/lib/python3*/site-packages"

UTTERANCES: Final = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the kitchen lights.",
    "What time is it in Tokyo?",
)

Entry = dict[str, Any]


class ScenarioFailed(Exception):
    """A scenario's expectation did not hold; the message is the reason printed."""


# --- small helpers -----------------------------------------------------------------------


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 120) -> str:
    """Run a command, return its stdout; a failure raises ScenarioFailed with its stderr."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise ScenarioFailed(
            f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()[:300]}"
        )
    return proc.stdout


T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, interval: float = 0.3) -> T | None:
    """Call ``probe`` until it returns something other than None, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def log(message: str) -> None:
    """Progress on the console (the serial log) and in the journal."""
    print(f"dgd-systest: {message}", flush=True)


def append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def dgd_binary() -> str:
    """The installed ``dgd``: /usr/bin/dgd from the .deb, /opt/dgd/bin/dgd from install.sh."""
    found = shutil.which("dgd") or shutil.which("dgd", path="/opt/dgd/bin")
    if found is None:
        raise ScenarioFailed("no dgd executable installed (neither /usr/bin nor /opt/dgd/bin)")
    return found


def write_config(hangover_ms: int = HANGOVER_MS) -> None:
    """``/etc/dgd.toml`` for the scenarios, written by the installed dgd's own writer."""
    if importlib.util.find_spec("dgd") is None:  # not the .deb's: install.sh's venv then
        sys.path[:0] = sorted(glob.glob(VENV_SITE_PACKAGES))
    from dgd.core.config import (
        AudioConfig,
        Config,
        DeepgramConfig,
        GateConfig,
        OutputConfig,
        StreamConfig,
        dump,
    )

    config = Config(
        deepgram=DeepgramConfig(url=f"ws://127.0.0.1:{FAKE_PORT}/v1/listen"),
        audio=AudioConfig(device=CAPTURE_DEVICE),
        gate=GateConfig(hangover_ms=hangover_ms),
        # The network is "down" at boot in scenario 5 (no fake server yet): keep retries frequent.
        stream=StreamConfig(backoff_max_s=4.0),
        # A stats record (DGD_INVALID_BUFFERS, DGD_CAPTURED_S, ...) every 5 s.
        output=OutputConfig(stats_interval_s=5.0),
    )
    header = "# /etc/dgd.toml for the system tests (written by tests/system/scenarios.py)\n"
    CONFIG.write_text(header + dump(config))


def parse_time(value: str) -> float:
    """``DGD_START``/``DGD_END`` (RFC 3339 UTC, e.g. ``2026-11-23T21:40:01.234Z``) → epoch s."""
    return datetime.fromisoformat(value).timestamp()


# --- systemd and the journal -------------------------------------------------------------


def unit_show(*props: str) -> dict[str, str]:
    out = run(["systemctl", "show", "dgd.service", *(f"--property={p}" for p in props)])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def nrestarts() -> int:
    return int(unit_show("NRestarts")["NRestarts"])


def journal_cursor() -> str | None:
    out = run(["journalctl", "--no-pager", "-n", "1", "-o", "json"])
    for line in out.splitlines():
        cursor = json.loads(line).get("__CURSOR")
        if isinstance(cursor, str):
            return cursor
    return None


def _text(value: object) -> object:
    # journalctl -o json gives non-UTF-8 values as a list of byte values.
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(value).decode("utf-8", "replace")
    return value


def unit_entries(cursor: str | None, *, this_boot: bool = True) -> list[Entry]:
    """The unit's journal entries after ``cursor``: dgd's own records (``_SYSTEMD_UNIT``)
    and PID 1's messages about the unit (``UNIT``)."""
    cmd = ["journalctl", "--no-pager", "-o", "json"]
    if cursor is not None:
        cmd.append(f"--after-cursor={cursor}")
    elif this_boot:
        cmd.append("-b")
    cmd += ["_SYSTEMD_UNIT=dgd.service", "+", "UNIT=dgd.service"]
    entries = []
    for line in run(cmd).splitlines():
        if line.strip():
            raw = json.loads(line)
            entries.append({key: _text(value) for key, value in raw.items()})
    return entries


def from_dgd(entry: Entry) -> bool:
    return entry.get("_SYSTEMD_UNIT") == "dgd.service" and entry.get("_PID") != "1"


def from_pid1(entry: Entry) -> bool:
    return entry.get("_PID") == "1"


def events(entries: list[Entry], name: str) -> list[Entry]:
    return [e for e in entries if from_dgd(e) and e.get("DGD_EVENT") == name]


def realtime(entry: Entry) -> float:
    return int(str(entry["__REALTIME_TIMESTAMP"])) / 1e6


def wait_event(cursor: str | None, name: str, timeout: float, after: float = 0.0) -> Entry | None:
    """The first ``name`` event after ``cursor`` (and logged after ``after``, epoch s)."""

    def probe() -> Entry | None:
        found = [e for e in events(unit_entries(cursor), name) if realtime(e) >= after]
        return found[0] if found else None

    return wait_for(probe, timeout)


def pid1_messages(entries: list[Entry], pattern: str) -> list[str]:
    return [
        str(e.get("MESSAGE", ""))
        for e in entries
        if from_pid1(e) and re.search(pattern, str(e.get("MESSAGE", "")))
    ]


def start_dgd() -> float:
    """``systemctl start dgd`` (returns once dgd sent READY=1); how long it took."""
    began = time.monotonic()
    run(["systemctl", "start", "dgd.service"], timeout=60)
    took = time.monotonic() - began
    state = unit_show("ActiveState", "SubState")
    if (state["ActiveState"], state["SubState"]) != ("active", "running"):
        raise ScenarioFailed(f"after systemctl start dgd is {state}")
    return took


def stop_dgd() -> None:
    run(["systemctl", "stop", "dgd.service"], check=False, timeout=60)
    run(["systemctl", "reset-failed", "dgd.service"], check=False)


# --- audio: fixtures and the player ------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """Where one utterance's voiced core (first to last non-zero sample) lies in a fixture."""

    start: int  # byte offset
    end: int

    def seconds(self) -> float:
        return (self.end - self.start) / BYTES_PER_S


@dataclass(frozen=True)
class Fixture:
    """Speech with exact digital silence around and between the utterances."""

    path: Path
    data: bytes
    utterances: tuple[Utterance, ...]

    def duration(self) -> float:
        return len(self.data) / BYTES_PER_S

    def core(self, index: int) -> bytes:
        u = self.utterances[index]
        return self.data[u.start : u.end]


def synthesize(text: str, stem: Path) -> bytes:
    """espeak-ng speech as S16_LE 16 kHz mono, trimmed to its first/last non-zero sample."""
    wav = stem.with_suffix(".wav")
    raw = stem.with_suffix(".raw")
    run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text])
    # -D: no dither, so silence stays exact zeros and the output is the same every run.
    run(["sox", "-D", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
         "-L", "-t", "raw", str(raw)])  # fmt: skip
    samples = array.array("h", raw.read_bytes())
    nonzero = [i for i, s in enumerate(samples) if s != 0]
    return samples[nonzero[0] : nonzero[-1] + 1].tobytes()


def build_fixture(name: str, cores: Sequence[bytes], lead_s: float, gap_s: float) -> Fixture:
    """``lead_s`` of zeros, then each core followed by ``gap_s`` of zeros."""
    silence = b"\0" * (int(gap_s * RATE) * 2)
    data = bytearray(b"\0" * (int(lead_s * RATE) * 2))
    spans = []
    for core in cores:
        spans.append(Utterance(len(data), len(data) + len(core)))
        data += core + silence
    path = WORK / f"{name}.raw"
    path.write_bytes(data)
    return Fixture(path, bytes(data), tuple(spans))


@dataclass
class Fixtures:
    speech: Fixture  # three utterances, for scenario 1
    single: list[Fixture] = field(default_factory=list)  # one utterance each


def make_fixtures() -> Fixtures:
    WORK.mkdir(parents=True, exist_ok=True)
    cores = [synthesize(text, WORK / f"utt{i}") for i, text in enumerate(UTTERANCES)]
    # 2.5 s between utterances: the gate's 1.5 s hangover closes it (Finalize) before the next.
    speech = build_fixture("speech", cores, lead_s=1.0, gap_s=2.5)
    single = [build_fixture(f"single{i}", [c], lead_s=0.5, gap_s=2.0) for i, c in enumerate(cores)]
    return Fixtures(speech, single)


@dataclass
class Playback:
    """A running player: ``t0`` is the wall-clock time its stream started."""

    proc: subprocess.Popen[str]
    t0: float
    fixture: Fixture

    def wall(self, offset_bytes: int) -> float:
        """When the sample at ``offset_bytes`` of the fixture was played."""
        return self.t0 + offset_bytes / BYTES_PER_S

    def wait(self) -> None:
        self.proc.wait(timeout=self.fixture.duration() + 30)


def play(fixture: Fixture, device: str = PLAY_DEVICE) -> Playback:
    proc = subprocess.Popen(
        [sys.executable, __file__, "play", device, str(fixture.path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("started "):
        proc.wait(timeout=10)
        raise ScenarioFailed(f"the player could not start on {device} (exit {proc.returncode})")
    return Playback(proc, float(line.split()[1]), fixture)


def play_main(device: str, path: str) -> int:
    """Play a raw file into ``device``; print ``started <t0>`` after the first write.

    The stream starts on the first write (alsa-lib's default start threshold is one frame,
    and pyalsaaudio does not change it), so ``t0``, read just before it, is when the first
    sample went out.
    """
    import alsaaudio  # only the player needs it (python3-alsaaudio)

    chunk = PERIOD_FRAMES * 2
    data = Path(path).read_bytes()
    data += b"\0" * (-len(data) % chunk + 4 * chunk)  # whole periods; the tail drains out
    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        mode=alsaaudio.PCM_NORMAL,
        device=device,
        rate=RATE,
        channels=1,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=PERIOD_FRAMES,
        periods=PLAYER_PERIODS,
    )
    t0 = time.time()
    pcm.write(data[:chunk])
    print(f"started {t0:.6f}", flush=True)
    for offset in range(chunk, len(data), chunk):
        pcm.write(data[offset : offset + chunk])
    drain = getattr(pcm, "drain", None)
    if drain is not None:
        drain()
    else:
        time.sleep(PLAYER_PERIODS * PERIOD_FRAMES / RATE)
    pcm.close()
    return 0


# --- the fake server and what it received ------------------------------------------------


@dataclass(frozen=True)
class ServerFinal:
    """A non-empty final result the fake server sent (times in connection seconds)."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Connection:
    attempt: int
    opened_at: float
    raw: bytes
    finals: tuple[ServerFinal, ...]


class FakeServer:
    """``dgd fake-server`` on 127.0.0.1:8765, recording every connection."""

    def __init__(self, record_dir: Path) -> None:
        self.record_dir = record_dir
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        stderr = (self.record_dir / "server.log").open("a")
        self.proc = subprocess.Popen(
            [dgd_binary(), "fake-server", "--host", "127.0.0.1", "--port", str(FAKE_PORT),
             "--record-dir", str(self.record_dir)],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise ScenarioFailed(f"dgd fake-server did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def connections(self, since: float) -> list[Connection]:
        """Accepted connections whose handshake came at or after ``since`` (epoch s)."""
        found = []
        for jsonl in sorted(self.record_dir.glob("conn-*.jsonl")):
            records = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
            hello = next((r for r in records if r.get("kind") == "handshake"), None)
            if hello is None or hello.get("status") != 101 or hello["t"] < since:
                continue
            finals = []
            for r in records:
                msg = r.get("message") if r.get("kind") == "sent" else None
                if not isinstance(msg, dict) or msg.get("type") != "Results":
                    continue
                text = msg["channel"]["alternatives"][0]["transcript"]
                if msg.get("is_final") and text:
                    start = float(msg["start"])
                    finals.append(ServerFinal(start, start + float(msg["duration"]), text))
            raw = jsonl.with_suffix(".raw").read_bytes()
            found.append(Connection(hello["attempt"], hello["t"], raw, tuple(finals)))
        return found


def find_aligned(haystack: bytes, needle: bytes, start: int = 0) -> int:
    """Offset of ``needle`` in ``haystack`` at a whole sample (even offset), or -1."""
    at = haystack.find(needle, start)
    while at >= 0 and at % 2:
        at = haystack.find(needle, at + 1)
    return at


def blocks_present(haystack: bytes, core: bytes, block: int = 640) -> tuple[int, int]:
    """How many of the core's 20 ms blocks occur in ``haystack`` at all (a loss measure)."""
    total = len(core) // block
    hits = sum(1 for i in range(total) if core[i * block : (i + 1) * block] in haystack)
    return hits, total


@dataclass(frozen=True)
class Located:
    """An utterance found byte-exact in a connection's received audio."""

    index: int
    connection: Connection
    received_at: int  # byte offset of its core in the connection's audio
    fixture_at: int  # byte offset of its core in the fixture


def locate_utterances(
    fixture: Fixture, conns: list[Connection], indices: Sequence[int] | None = None
) -> tuple[list[Located], list[str]]:
    """Find each utterance's voiced core, byte for byte, in the audio the server received."""
    located, problems = [], []
    for index in indices if indices is not None else range(len(fixture.utterances)):
        core = fixture.core(index)
        hit = None
        for conn in conns:
            at = find_aligned(conn.raw, core)
            if at >= 0:
                hit = Located(index, conn, at, fixture.utterances[index].start)
                break
        if hit is None:
            everything = b"".join(c.raw for c in conns)
            hits, total = blocks_present(everything, core)
            problems.append(
                f"utterance {index + 1} ({fixture.utterances[index].seconds():.2f} s) not "
                f"received byte-exact ({hits} of its {total} 20 ms blocks arrived intact)"
            )
        else:
            located.append(hit)
    return located, problems


def expected_wall(playback: Playback, hit: Located, conn_s: float) -> float:
    """When the audio at ``conn_s`` (connection seconds, within ``hit``'s gated segment)
    was played: the segment is a contiguous slice of the captured stream."""
    fixture_offset = hit.fixture_at + (round(conn_s * BYTES_PER_S) - hit.received_at)
    return playback.wall(fixture_offset)


def check_times(
    playback: Playback, located: list[Located], transcripts: list[Entry]
) -> tuple[list[float], list[str]]:
    """Compare each transcript's DGD_START/DGD_END with when its audio was played.

    The fake server's finals say which span of the connection's audio each transcript
    covers; the located utterance in that span maps connection bytes to fixture bytes, and
    the player's start time maps those to wall-clock time. Returns the errors (journal minus
    played, s: start and end of each transcript) and the problems.
    """
    finals = [(conn, f) for conn in sorted({h.connection.attempt: h.connection for h in located}
                                          .values(), key=lambda c: c.attempt)
              for f in conn.finals]  # fmt: skip
    problems: list[str] = []
    if len(finals) != len(transcripts):
        problems.append(
            f"{len(transcripts)} transcript records for the {len(finals)} non-empty finals "
            "the server sent"
        )
    errors: list[float] = []
    for (conn, final), entry in zip(finals, transcripts, strict=False):
        if entry.get("MESSAGE") != final.text:
            problems.append(f"transcript {entry.get('MESSAGE')!r} != server's {final.text!r}")
        hit = next(
            (
                h
                for h in located
                if h.connection is conn
                and final.start_s * BYTES_PER_S <= h.received_at < final.end_s * BYTES_PER_S
            ),
            None,
        )
        if hit is None:
            problems.append(f"no played utterance in the span of {final.text}")
            continue
        for name, conn_s in (("DGD_START", final.start_s), ("DGD_END", final.end_s)):
            error = parse_time(str(entry[name])) - expected_wall(playback, hit, conn_s)
            errors.append(error)
            if abs(error) > TIME_TOLERANCE_S:
                problems.append(
                    f"utterance {hit.index + 1}: {name} is {error:+.3f} s off the time it was "
                    f"played (tolerance {TIME_TOLERANCE_S} s)"
                )
    return errors, problems


# --- the scenarios -----------------------------------------------------------------------


@dataclass
class Context:
    fixtures: Fixtures
    server: FakeServer
    results: list[tuple[str, bool]] = field(default_factory=list)


def transcripts_since(cursor: str | None) -> list[Entry]:
    return events(unit_entries(cursor), "transcript")


def wait_transcripts(cursor: str | None, count: int, timeout: float) -> list[Entry]:
    def probe() -> list[Entry] | None:
        found = transcripts_since(cursor)
        return found if len(found) >= count else None

    return wait_for(probe, timeout) or transcripts_since(cursor)


def scenario_1(ctx: Context) -> str:
    """start → READY → speech on the jiffies clock → transcripts, every byte, on time."""
    stop_dgd()
    TIMER_SOURCE.write_text("\n")  # the default jiffies clock: partial periods happen
    write_config()
    cursor = journal_cursor()
    since = time.time()
    ready_s = start_dgd()
    if not events(unit_entries(cursor), "started"):
        raise ScenarioFailed("systemctl start returned but dgd logged no `started` event")
    if wait_event(cursor, "connected", 10) is None:
        raise ScenarioFailed("dgd did not connect to the fake server within 10 s")
    # As on a real device, speech comes after the gate's start-up (with the auto threshold it
    # sends the first second, plus its hangover, while it learns the noise floor), so the
    # first transcript starts where that start-up audio was finalized.
    time.sleep(STARTUP_GATE_S)
    fixture = ctx.fixtures.speech
    playback = play(fixture)
    playback.wait()
    played_until = time.time()
    n = len(fixture.utterances)
    transcripts = wait_transcripts(cursor, n, 10)
    stats = wait_event(cursor, "stats", 8, after=played_until)
    entries = unit_entries(cursor)
    problems = []
    invalid_events = events(entries, "invalid_buffer")
    counter = "?" if stats is None else str(stats.get("DGD_INVALID_BUFFERS"))
    if counter != "0" or invalid_events:
        detail = f"; first: {invalid_events[0].get('MESSAGE')}" if invalid_events else ""
        problems.append(
            f"DGD_INVALID_BUFFERS={counter} in the stats record, "
            f"{len(invalid_events)} invalid_buffer event(s){detail}"
        )
    if len(transcripts) != n:
        problems.append(f"{len(transcripts)} transcripts for {n} utterances")
    located, lost = locate_utterances(fixture, ctx.server.connections(since))
    problems += lost
    errors, late = check_times(playback, located, transcripts)
    if late:
        late.append(
            "all errors (DGD_START, DGD_END per transcript, s): "
            + " ".join(f"{e:+.3f}" for e in errors)
        )
    problems += late
    if problems:
        raise ScenarioFailed("; ".join(problems))
    voiced = sum(u.seconds() for u in fixture.utterances)
    captured = stats.get("DGD_CAPTURED_S") if stats else "?"
    texts = ", ".join(str(t["MESSAGE"]) for t in transcripts)
    return (
        f"READY in {ready_s:.1f} s; {n} transcripts ({texts}); "
        f"DGD_INVALID_BUFFERS=0; {n}/{n} utterances ({voiced:.2f} s voiced) received "
        f"byte-exact; DGD_START/DGD_END within {max(map(abs, errors)):.3f} s of playback "
        f"({' '.join(f'{e:+.3f}' for e in errors)}); captured {captured} s"
    )


def scenario_2(ctx: Context) -> str:
    """reload with a changed setting → `reloaded`; stop mid-utterance → transcript, exit 0."""
    cursor = journal_cursor()
    write_config(hangover_ms=RELOADED_HANGOVER_MS)
    began = time.monotonic()
    run(["systemctl", "reload", "dgd.service"], timeout=30)
    reloaded = wait_event(cursor, "reloaded", 10)
    if reloaded is None:
        raise ScenarioFailed("no `reloaded` event within 10 s of systemctl reload")
    if "gate" not in str(reloaded.get("DGD_CHANGED", "")):
        raise ScenarioFailed(f"reloaded, but DGD_CHANGED={reloaded.get('DGD_CHANGED')!r}")
    reload_s = time.monotonic() - began

    fixture = ctx.fixtures.single[0]
    utterance = fixture.utterances[0]
    run(["systemctl", "log-level", "debug"])
    try:
        cursor = journal_cursor()
        playback = play(fixture)
        # Stop 1 s into the utterance (the gate is open, audio is on its way).
        stop_at = playback.wall(utterance.start) + 1.0
        time.sleep(max(0.0, stop_at - time.time()))
        stopped_at = time.time()
        began = time.monotonic()
        run(["systemctl", "stop", "dgd.service"], timeout=60)
        stop_s = time.monotonic() - began
    finally:
        run(["systemctl", "log-level", "info"])
    playback.wait()
    entries = unit_entries(cursor)
    problems = []
    onset = playback.wall(utterance.start)
    covering = [
        t
        for t in events(entries, "transcript")
        if parse_time(str(t["DGD_START"])) <= onset + TIME_TOLERANCE_S
        and parse_time(str(t["DGD_END"])) >= onset + 0.5
    ]
    stopped = events(entries, "stopped")
    if not covering:
        problems.append(
            "no transcript covers the utterance in flight (onset "
            f"{stopped_at - onset:.2f} s before the stop)"
        )
    elif stopped and realtime(covering[0]) > realtime(stopped[0]):
        problems.append("the in-flight transcript was written after `stopped`")
    if not stopped:
        problems.append("no `stopped` event")
    if events(entries, "shutdown_incomplete"):
        problems.append(str(events(entries, "shutdown_incomplete")[0].get("MESSAGE")))
    exits = pid1_messages(entries, r"Main process exited, code=")
    if not exits:
        problems.append("PID 1 logged no `Main process exited` line (log-level debug)")
    elif not re.search(r"code=exited, status=0/SUCCESS", exits[-1]):
        problems.append(f"PID 1: {exits[-1]}")
    if problems:
        raise ScenarioFailed("; ".join(problems))
    return (
        f"reload → `reloaded` (changed {reloaded.get('DGD_CHANGED')}) in {reload_s:.1f} s; "
        f"stop {stopped_at - onset:.1f} s into an utterance → "
        f"{covering[0].get('MESSAGE')} written before `stopped`, stop took {stop_s:.1f} s; "
        f"PID 1: {exits[-1].split(': ', 1)[-1]}"
    )


def scenario_3(ctx: Context) -> str:
    """driver unbind/bind → device_lost … device_opened, speech after replug, no restart."""
    write_config()
    start_dgd()
    if wait_event(None, "device_opened", 5) is None:
        raise ScenarioFailed("dgd did not open the loopback after start")
    before = unit_show("NRestarts", "MainPID")
    cursor = journal_cursor()
    (ALOOP_DRIVER / "unbind").write_text("snd_aloop.0")
    lost = wait_event(cursor, "device_lost", 10)
    time.sleep(1.0)
    (ALOOP_DRIVER / "bind").write_text("snd_aloop.0")
    bound_at = time.monotonic()
    if lost is None:
        raise ScenarioFailed("no `device_lost` within 10 s of the unbind")
    opened = wait_event(cursor, "device_opened", 20, after=realtime(lost))
    if opened is None:
        raise ScenarioFailed("`device_lost`, but no `device_opened` within 20 s of the bind")
    reopen_s = time.monotonic() - bound_at
    since = time.time()
    fixture = ctx.fixtures.single[2]
    playback = play(fixture)
    playback.wait()
    transcripts = wait_transcripts(cursor, 1, 8)
    _, lost_audio = locate_utterances(fixture, ctx.server.connections(0.0))
    after = unit_show("NRestarts", "MainPID", "ActiveState")
    problems = list(lost_audio)
    if not [t for t in transcripts if realtime(t) >= since]:
        problems.append("no transcript for the speech played after the replug")
    if after["NRestarts"] != before["NRestarts"] or after["MainPID"] != before["MainPID"]:
        problems.append(f"dgd was restarted: {before} → {after}")
    if problems:
        raise ScenarioFailed("; ".join(problems))
    return (
        f"`device_lost` ({lost.get('DGD_PROBLEM')}) … `device_opened` {reopen_s:.1f} s after "
        f"the bind; utterance after the replug received byte-exact and transcribed "
        f"({transcripts[-1].get('MESSAGE')}); NRestarts={after['NRestarts']}, same PID"
    )


class ClockPlayer:
    """The stream that paces the loopback (``timer_source``: snd-dummy's, or the Clock card's)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["aplay", "-q", "-D", CLOCK_DEVICE, "-f", "S16_LE", "-r", str(RATE), "-c", "1",
             "-t", "raw", "--period-size=1600", "--buffer-size=6400", "/dev/zero"],
        )  # fmt: skip

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def status_text() -> str:
    return unit_show("StatusText").get("StatusText", "")


def scenario_4(ctx: Context) -> str:
    """capture stalls (dummy clock stopped): one that ends resumes; one that does not ends
    with capture flowing again or a watchdog restart within WatchdogSec."""
    stop_dgd()
    if CLOCK_MODPROBE:
        run(list(CLOCK_MODPROBE))
    TIMER_SOURCE.write_text(CLOCK_TIMER + "\n")  # set while nothing has the card open
    clock = ClockPlayer()
    try:
        return _stalls(clock)
    finally:
        clock.close()
        stop_dgd()
        TIMER_SOURCE.write_text("\n")


def _stalls(clock: ClockPlayer) -> str:
    write_config()
    start_dgd()
    watchdog_s = int(unit_show("WatchdogUSec")["WatchdogUSec"].rstrip("s") or 0)
    cursor = journal_cursor()
    if wait_event(None, "device_opened", 10) is None:
        raise ScenarioFailed(f"dgd did not open the loopback on the dummy clock: {status_text()!r}")
    time.sleep(3.0)
    if events(unit_entries(cursor), "device_stalled"):
        raise ScenarioFailed(f"capture on the dummy clock never flowed: {status_text()!r}")

    # A stall that ends: 4 s (more than the 1 s stall report, less than the 10 s reopen).
    cursor = journal_cursor()
    restarts = nrestarts()
    clock.pause()
    time.sleep(4.0)
    clock.resume()
    resumed = wait_event(cursor, "device_resumed", 10)
    entries = unit_entries(cursor)
    if not events(entries, "device_stalled"):
        raise ScenarioFailed("4 s without audio, but no `device_stalled` event")
    if resumed is None:
        raise ScenarioFailed(
            f"the clock resumed but no `device_resumed` within 10 s: {status_text()!r}"
        )
    if nrestarts() != restarts:
        raise ScenarioFailed("a stall that ended after 4 s restarted dgd")
    ended = "a 4 s stall → `device_stalled`, `device_resumed`, no restart"

    # A stall that does not end: within WatchdogSec capture must flow again (it cannot: the
    # clock stays stopped) or systemd must have restarted dgd; dgd must not sit "waiting for
    # the audio device" with the watchdog petted while its own stale thread holds it.
    time.sleep(2.0)
    cursor = journal_cursor()
    restarts = nrestarts()
    pid = unit_show("MainPID")["MainPID"]
    stalled_at = time.monotonic()
    clock.pause()
    # Worst case: the last pet just before the stall, so the timeout comes WatchdogSec after
    # it; the restart follows RestartSec (2 s) later; the rest is slack for the emulated VM.
    deadline = watchdog_s + 10
    restarted = wait_for(lambda: True if nrestarts() > restarts else None, deadline, 0.5)
    took = time.monotonic() - stalled_at
    entries = unit_entries(cursor)
    busy = [
        e
        for e in events(entries, "device_unavailable") + events(entries, "device_lost")
        if e.get("DGD_PROBLEM") == "busy" and e.get("_PID") == pid
    ]
    timeouts = pid1_messages(entries, r"[Ww]atchdog timeout")
    if restarted is None:
        reason = (
            f"no restart within {deadline} s of a stall that did not end "
            f"(NRestarts={nrestarts()}, WatchdogSec={watchdog_s}s)"
        )
        if busy:
            reason += (
                f"; dgd reported the device busy {len(busy)} time(s) "
                f"({busy[0].get('MESSAGE')}) and STATUS={status_text()!r}: its own stale "
                "capture thread holds the device while the watchdog is petted"
            )
        raise ScenarioFailed(reason)
    return (
        f"{ended}; a stall that did not end → {timeouts[0] if timeouts else 'restart'} and "
        f"restarted {took:.1f} s after the stall (WatchdogSec={watchdog_s}s, "
        f"{len(busy)} busy reports)"
    )


def scenario_7(ctx: Context) -> str:
    """systemd-analyze security dgd ≤ 2.0 inside the VM."""
    out = run(["systemd-analyze", "security", "--no-pager", "dgd.service"], check=False)
    match = re.search(r"Overall exposure level for dgd\.service: ([0-9.]+) (\S+)", out)
    if match is None:
        raise ScenarioFailed(f"no overall exposure level in: {out[-300:]!r}")
    level = float(match.group(1))
    if level > 2.0:
        raise ScenarioFailed(f"exposure {level} {match.group(2)} > 2.0")
    return f"exposure {level} {match.group(2)} (≤ 2.0)"


def alsa_major_registered() -> bool:
    """Whether the kernel's sound core has registered its device major ("alsa")."""
    return any(
        line.split()[1:] == ["alsa"] for line in Path("/proc/devices").read_text().splitlines()
    )


def diagnose_device_access(alsa_major_at_start: bool) -> str:
    """Why dgd may not open a card that exists: try the control device from inside dgd's
    cgroup (where DevicePolicy=/DeviceAllow= apply), and as plain root."""
    control = sorted(Path("/dev/snd").glob("controlC*")) if Path("/dev/snd").exists() else []
    if not control:
        return "no /dev/snd/controlC* at all"
    probe = f"open('{control[0]}', 'rb').close()"
    cgroup = "/sys/fs/cgroup/system.slice/dgd.service/cgroup.procs"
    inside = subprocess.run(
        ["sh", "-c", f'echo $$ > {cgroup} && exec python3 -c "{probe}"'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    outside = subprocess.run(["python3", "-c", probe], capture_output=True, text=True, check=False)
    verdict = "ok" if inside.returncode == 0 else inside.stderr.strip().splitlines()[-1][:120]
    return (
        f"the sound core's device major 'alsa' was {'' if alsa_major_at_start else 'NOT '}"
        f"registered when the scenario began; opening {control[0]} inside dgd.service's cgroup: "
        f"{verdict}; as root outside it: {'ok' if outside.returncode == 0 else 'failed'}"
    )


def scenario_5(ctx: Context) -> str:
    """after a reboot with dgd enabled: up by itself, waiting for network and microphone."""
    state = unit_show("ActiveState", "SubState", "NRestarts", "StatusText", "UnitFileState")
    problems = []
    if (state["ActiveState"], state["SubState"]) != ("active", "running"):
        problems.append(f"dgd is {state['ActiveState']}/{state['SubState']} after the boot")
    if state["NRestarts"] != "0":
        problems.append(f"NRestarts={state['NRestarts']} after the boot")
    if TIMER_SOURCE.parent.exists():
        problems.append("snd-aloop is already loaded: cannot show a late microphone")
    elif "waiting for audio device" not in state["StatusText"]:
        problems.append(f"no microphone, but STATUS={state['StatusText']!r}")
    boot = unit_entries(None)
    if not events(boot, "started"):
        problems.append("no `started` event this boot")
    failed = pid1_messages(boot, r"Failed with result|failed")
    if failed:
        problems.append(f"PID 1: {failed[0]}")
    if problems:
        raise ScenarioFailed("; ".join(problems))
    waiting_status = state["StatusText"]
    starting = pid1_messages(boot, r"^Starting dgd\.service")
    started = pid1_messages(boot, r"^Started dgd\.service")
    ready_s = "?"
    if starting and started:
        first = next(e for e in boot if from_pid1(e) and str(e.get("MESSAGE")) == starting[0])
        last = next(e for e in boot if from_pid1(e) and str(e.get("MESSAGE")) == started[0])
        ready_s = f"{realtime(last) - realtime(first):.1f}"

    cursor = journal_cursor()
    alsa_major_at_start = alsa_major_registered()
    run(list(ALOOP_MODPROBE))  # the microphone arrives late
    opened = wait_event(cursor, "device_opened", 15)
    if opened is None:
        raise ScenarioFailed(
            f"snd-aloop loaded, but no `device_opened` in 15 s: {status_text()!r}; "
            f"{diagnose_device_access(alsa_major_at_start)}"
        )
    refused = len(events(unit_entries(None), "disconnected"))
    ctx.server.start()  # the network arrives late too
    if wait_event(cursor, "connected", 15) is None:
        raise ScenarioFailed("the fake server started, but dgd did not connect within 15 s")
    since = time.time()
    fixture = ctx.fixtures.single[1]
    play(fixture).wait()
    transcripts = [t for t in wait_transcripts(cursor, 1, 8) if realtime(t) >= since]
    _, lost = locate_utterances(fixture, ctx.server.connections(since - 30))
    after = unit_show("ActiveState", "NRestarts")
    if not transcripts or lost or after["NRestarts"] != "0":
        raise ScenarioFailed(
            f"after the late microphone and network: {len(transcripts)} transcripts, "
            f"{lost}, {after}"
        )
    return (
        f"active/running by itself (READY {ready_s} s after Starting), "
        f"STATUS={waiting_status!r}; snd-aloop loaded late → "
        f"`device_opened`; {refused} `disconnected` while no server, then `connected`; "
        f"speech transcribed ({transcripts[0].get('MESSAGE')}); NRestarts=0"
    )


def scenario_6(ctx: Context) -> str:
    """every record dgd writes (both boots) carries DGD_EVENT."""
    entries = [e for e in unit_entries(None, this_boot=False) if from_dgd(e)]
    bare = [e for e in entries if "DGD_EVENT" not in e]
    if not entries:
        raise ScenarioFailed("no records from dgd in the journal at all")
    if bare:
        samples = "; ".join(
            f"[{e.get('_TRANSPORT')}] {str(e.get('MESSAGE', ''))[:90]!r}" for e in bare[:3]
        )
        raise ScenarioFailed(
            f"{len(bare)} of {len(entries)} records lack DGD_EVENT, e.g. {samples}"
        )
    kinds = sorted({str(e["DGD_EVENT"]) for e in entries})
    return (
        f"all {len(entries)} records from dgd over both boots carry DGD_EVENT ({len(kinds)} kinds)"
    )


def scenario_8(ctx: Context) -> str:
    """The wall clock steps back an hour between two utterances (what NTP does to a Pi that
    booted with a stale time): both are transcribed once, each labelled with the wall clock
    of the moment it was spoken, and the step is logged once with its size."""
    if unit_show("ActiveState").get("ActiveState") != "active":
        start_dgd()
    cursor = journal_cursor()
    first, second = ctx.fixtures.single[0], ctx.fixtures.single[1]
    step_s = -3600.0
    played = []
    playbacks = []
    # The same fixtures were played by earlier scenarios: look for them only after this point.
    received_before = {c.attempt: len(c.raw) for c in ctx.server.connections(0.0)}
    playback = play(first)
    playback.wait()
    played.append((playback.t0, playback.t0 + first.duration()))
    playbacks.append(playback)
    if len(wait_transcripts(cursor, 1, 10)) != 1:
        raise ScenarioFailed("no transcript for the utterance before the step")
    run(["date", "-s", f"@{time.time() + step_s:.3f}"])
    try:
        playback = play(second)
        playback.wait()
        played.append((playback.t0, playback.t0 + second.duration()))
        playbacks.append(playback)
        wait_transcripts(cursor, 2, 10)
        time.sleep(3.0)  # a duplicate would come within this
        entries = unit_entries(cursor)
    finally:
        run(["date", "-s", f"@{time.time() - step_s:.3f}"])
    transcripts = events(entries, "transcript")
    steps = [float(str(e.get("DGD_STEP_S", "nan"))) for e in events(entries, "clock_step")]
    problems = []
    if len(transcripts) != 2:
        problems.append(f"{len(transcripts)} transcripts for 2 utterances")
    for i, (entry, (begin, end)) in enumerate(zip(transcripts, played, strict=False)):
        start = parse_time(str(entry["DGD_START"]))
        if not begin - 0.5 <= start <= end:
            problems.append(
                f"utterance {i + 1}: DGD_START {start:.3f} is not within its playback "
                f"({begin:.3f} to {end:.3f})"
            )
    if len(steps) != 1 or abs(steps[0] - step_s) > 5.0:
        problems.append(f"clock_step events with DGD_STEP_S {steps}, expected one near {step_s}")
    errors, off = step_label_errors(ctx, playbacks, transcripts, received_before)
    problems += off
    if problems:
        raise ScenarioFailed("; ".join(problems))
    return (
        f"2 transcripts for 2 utterances across a {step_s:+.0f} s step, DGD_START/DGD_END "
        f"each within {max(map(abs, errors)):.3f} s of when its audio was played, on the wall "
        f"clock of that moment ({' '.join(f'{e:+.3f}' for e in errors)}); one clock_step "
        f"event ({steps[0]:+.1f} s)"
    )


def step_label_errors(
    ctx: Context,
    playbacks: list[Playback],
    transcripts: list[Entry],
    received_before: dict[int, int],
) -> tuple[list[float], list[str]]:
    """Scenario 8's times, as scenario 1 checks them (``check_times``), per utterance: each
    transcript's DGD_START/DGD_END against when the audio of its final was played, on the
    wall clock of that moment (the player reads it at its first write, after the step for
    the second one). The utterance is located in what the server received after
    ``received_before`` (bytes per connection), since earlier scenarios played it too."""
    errors: list[float] = []
    problems: list[str] = []
    conns = ctx.server.connections(0.0)
    for number, (playback, entry) in enumerate(zip(playbacks, transcripts, strict=False), 1):
        core = playback.fixture.core(0)
        hit = None
        for conn in conns:
            at = find_aligned(conn.raw, core, received_before.get(conn.attempt, 0))
            if at >= 0:
                hit = Located(0, conn, at, playback.fixture.utterances[0].start)
                break
        if hit is None:
            problems.append(f"utterance {number} not received byte-exact after the step")
            continue
        final = next(
            (
                f
                for f in hit.connection.finals
                if f.start_s * BYTES_PER_S <= hit.received_at < f.end_s * BYTES_PER_S
            ),
            None,
        )
        if final is None:
            problems.append(f"utterance {number}: no final of the server covers it")
            continue
        for name, conn_s in (("DGD_START", final.start_s), ("DGD_END", final.end_s)):
            error = parse_time(str(entry[name])) - expected_wall(playback, hit, conn_s)
            errors.append(error)
            if abs(error) > TIME_TOLERANCE_S:
                problems.append(
                    f"utterance {number}: {name} is {error:+.3f} s off the time it was played "
                    f"on the wall clock of that moment (tolerance {TIME_TOLERANCE_S} s)"
                )
    return errors, problems


def scenario_10(ctx: Context) -> str:
    """A microphone that delivers another format than the configuration declares. The
    loopback's capture side offers only what its playback side runs at: S32_LE, 48 kHz,
    stereo here (like an I2S MEMS microphone that only does S32_LE). check-config refuses it,
    naming what it delivers and the plughw: name that converts; `dgd devices` shows what it
    offers; the running dgd refuses it (device_format, STATUS) and never opens it for capture;
    once the device can deliver S16_LE 16 kHz mono again, `systemctl reload dgd` (same file)
    opens it at once instead of after the 60 s misconfigured retry."""
    import alsaaudio  # python3-alsaaudio, as the player

    stop_dgd()
    write_config()
    cursor = journal_cursor()
    delivered = "it delivers S32_LE, 48000 Hz, 2 channel(s)"
    problems: list[str] = []
    player = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        mode=alsaaudio.PCM_NORMAL,
        device=PLAY_DEVICE,
        rate=48000,
        channels=2,
        format=alsaaudio.PCM_FORMAT_S32_LE,
        periodsize=960,
        periods=4,
    )
    try:
        player.write(bytes(960 * 8))  # running: its parameters now bind the capture side
        checked = subprocess.run(
            [dgd_binary(), "check-config", "--require-device", "-c", str(CONFIG)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if checked.returncode != 78 or delivered not in checked.stderr:
            problems.append(
                f"check-config: exit {checked.returncode} (expected 78 naming "
                f"{delivered!r}); stderr: {checked.stderr.strip()[-400:]!r}"
            )
        if '"plughw:CARD=Loopback,DEV=1"' not in checked.stderr:
            problems.append("check-config does not suggest plughw:CARD=Loopback,DEV=1")
        offers = run([dgd_binary(), "devices", "--json"], check=False)
        if '"S32_LE"' not in offers:
            problems.append(f"`dgd devices --json` does not show S32_LE: {offers[-400:]!r}")
        start_dgd()
        refused = wait_event(cursor, "device_format", 10)
        if refused is None:
            problems.append("dgd logged no device_format event within 10 s")
        elif delivered not in str(refused.get("MESSAGE", "")):
            problems.append(f"device_format does not say {delivered!r}: {refused.get('MESSAGE')}")
        status = status_text()
        if "does not deliver the configured format" not in status:
            problems.append(f"STATUS= {status!r} does not say the format is wrong")
        if events(unit_entries(cursor), "device_opened"):
            problems.append("dgd opened the device for capture in the wrong format")
    finally:
        player.close()
    time.sleep(0.5)
    reloaded = journal_cursor()
    asked = time.time()
    run(["systemctl", "reload", "dgd.service"], timeout=150)
    opened = wait_event(reloaded, "device_opened", 10)
    if opened is None:
        problems.append(
            "no device_opened within 10 s of `systemctl reload dgd` once the device could "
            "deliver the configured format (the misconfigured retry alone waits 60 s)"
        )
    if problems or opened is None:
        raise ScenarioFailed("; ".join(problems))
    return (
        f"check-config exit 78 ({delivered}, suggests plughw:); `dgd devices` shows S32_LE; "
        f"dgd refused the device (device_format, STATUS says so) and never opened it; opened "
        f"{realtime(opened) - asked:.1f} s after the reload once it could deliver S16_LE "
        "16 kHz mono"
    )


#: Scenario 11 stops dgd (every thread) this long: with the up to 100 ms (one read) already
#: waiting, still inside the 500 ms ALSA buffer (dgd.daemon.alsadevice.ALSA_BUFFER_MS), so the
#: kernel keeps every sample meanwhile; well beyond the ~180 ms that used to move the times.
LATE_S: Final = 0.3


def scenario_11(ctx: Context) -> str:
    """The capture thread runs late: dgd is stopped (SIGSTOP: every thread) for 0.3 s in the
    middle of an utterance, inside the ALSA buffer, on the kernel's own sound driver. Nothing
    is lost (no overrun, every utterance byte-exact) and the capture times do not move:
    every transcript's DGD_START/DGD_END within scenario 1's tolerance of when its audio was
    played, those after the delay included."""
    stop_dgd()
    write_config()
    cursor = journal_cursor()
    since = time.time()
    start_dgd()
    if wait_event(cursor, "connected", 10) is None:
        raise ScenarioFailed("dgd did not connect to the fake server within 10 s")
    time.sleep(STARTUP_GATE_S)
    pid = int(unit_show("MainPID")["MainPID"])
    fixture = ctx.fixtures.speech
    playback = play(fixture)
    middle = fixture.utterances[1]
    stop_at = playback.wall(middle.start) + middle.seconds() / 2
    time.sleep(max(0.0, stop_at - time.time()))
    os.kill(pid, signal.SIGSTOP)
    time.sleep(LATE_S)
    os.kill(pid, signal.SIGCONT)
    playback.wait()
    n = len(fixture.utterances)
    transcripts = wait_transcripts(cursor, n, 10)
    entries = unit_entries(cursor)
    problems = []
    if events(entries, "overrun"):
        problems.append(f"an overrun after a {LATE_S} s delay (the ALSA buffer is 500 ms)")
    if len(transcripts) != n:
        problems.append(f"{len(transcripts)} transcripts for {n} utterances")
    located, lost = locate_utterances(fixture, ctx.server.connections(since))
    problems += lost
    errors, late = check_times(playback, located, transcripts)
    problems += late
    if problems:
        problems.append("errors (DGD_START, DGD_END per transcript, s): " + " ".join(
            f"{e:+.3f}" for e in errors))  # fmt: skip
        raise ScenarioFailed("; ".join(problems))
    return (
        f"dgd stopped {LATE_S} s in utterance 2; no overrun; {n}/{n} utterances byte-exact; "
        f"DGD_START/DGD_END within {max(map(abs, errors)):.3f} s of playback "
        f"({' '.join(f'{e:+.3f}' for e in errors)})"
    )


def sent_at(entry: Entry) -> float:
    """When dgd sent the record (journald's socket timestamp), else when journald stored it."""
    return int(str(entry.get("_SOURCE_REALTIME_TIMESTAMP", entry["__REALTIME_TIMESTAMP"]))) / 1e6


def timed_reload() -> tuple[int, str, float]:
    """``systemctl reload dgd`` with PID 1 at log-level debug (its ``Changed A -> B`` state
    lines show which reload protocol ran): exit code, stderr and when it returned (epoch s)."""
    run(["systemctl", "log-level", "debug"])
    try:
        done = subprocess.run(
            ["systemctl", "reload", "dgd.service"], capture_output=True, text=True, timeout=150
        )
        returned = time.time()
    finally:
        run(["systemctl", "log-level", "info"])
    return done.returncode, done.stderr.strip(), returned


def waited_for_ready(entries: list[Entry], logged: Entry | None) -> str | None:
    """None if PID 1 ran the notify-reload protocol for this reload: it sent the signal itself
    (``running -> reload-signal``) and ended the reload on dgd's READY=1 (``reload-notify ->
    running``) after dgd logged ``logged``; else what happened instead. (With ExecReload=kill,
    systemd 257 also waits in reload-notify when RELOADING=1 arrives before kill exits: only
    ``reload-signal`` is proof of the drop-in.)"""
    states = [
        (realtime(e), str(e.get("MESSAGE", "")).rsplit("Changed ", 1)[-1])
        for e in entries
        if from_pid1(e) and re.search(r"\bChanged \S+ -> \S+$", str(e.get("MESSAGE", "")))
    ]
    names = [change for _, change in states]
    done = [t for t, change in states if change == "reload-notify -> running"]
    if "running -> reload-signal" not in names or not done:
        return f"PID 1 did not run the notify-reload protocol: its state changes were {names}"
    if logged is not None and sent_at(logged) > done[0]:
        return f"dgd logged `{logged.get('DGD_EVENT')}` after PID 1 counted the reload done"
    return None


def scenario_9(ctx: Context) -> str:
    """Type=notify-reload (the package's drop-in, systemd 257): `systemctl reload` returns
    only after dgd reloaded; a refused reload keeps dgd running with the old config and says
    why in STATUS= (systemd 257 cannot fail a reload job: the exit code is 0)."""
    if unit_show("ActiveState").get("ActiveState") != "active":
        start_dgd()
    unit = unit_show("Type", "ExecReload", "MainPID", "DropInPaths")
    problems = []
    if unit.get("Type") != "notify-reload" or unit.get("ExecReload"):
        problems.append(
            f"Type={unit.get('Type')!r} ExecReload={unit.get('ExecReload')!r} "
            f"(drop-ins: {unit.get('DropInPaths')!r}), expected notify-reload and no ExecReload"
        )
    verify = subprocess.run(
        ["systemd-analyze", "verify", "dgd.service"], capture_output=True, text=True, timeout=60
    )
    if verify.returncode != 0 or verify.stderr.strip() or verify.stdout.strip():
        problems.append(f"systemd-analyze verify: rc={verify.returncode} {verify.stderr.strip()!r}")
    pid = unit.get("MainPID")

    # 1. A changed valid config: `reloaded` is in the journal before systemctl returns.
    cursor = journal_cursor()
    reloaded_hangover_ms = HANGOVER_MS + 100  # differs from every value the others write
    write_config(hangover_ms=reloaded_hangover_ms)
    rc, err, returned = timed_reload()
    state = unit_show("ActiveState", "SubState", "StatusText")
    entries = unit_entries(cursor)
    reloaded = events(entries, "reloaded")
    protocol = waited_for_ready(entries, reloaded[0] if reloaded else None)
    if protocol is not None:
        problems.append(f"valid config: {protocol}")
    if rc != 0:
        problems.append(f"systemctl reload (valid config) exited {rc}: {err}")
    if not reloaded:
        problems.append("no `reloaded` event by the time systemctl reload returned")
    elif sent_at(reloaded[0]) > returned:
        problems.append(
            f"`reloaded` was logged {sent_at(reloaded[0]) - returned:.3f} s after systemctl "
            "reload returned: it did not wait for dgd"
        )
    elif "gate" not in str(reloaded[0].get("DGD_CHANGED", "")):
        problems.append(f"reloaded, but DGD_CHANGED={reloaded[0].get('DGD_CHANGED')!r}")
    if (state.get("ActiveState"), state.get("SubState")) != ("active", "running"):
        problems.append(f"right after the reload returned the unit is {state}")
    lead_s = returned - sent_at(reloaded[0]) if reloaded else float("nan")

    # 2. An invalid config: refused, dgd runs on with the old one, STATUS= says why.
    cursor = journal_cursor()
    text = CONFIG.read_text()
    line = f"hangover_ms = {reloaded_hangover_ms}\n"
    if line not in text:
        raise ScenarioFailed(f"no {line.strip()!r} in {CONFIG}: {'; '.join(problems)}")
    CONFIG.write_text(text.replace(line, "hangover_ms = -5\n"))
    rc_bad, err_bad, returned = timed_reload()
    state = unit_show("ActiveState", "SubState", "StatusText", "MainPID")
    entries = unit_entries(cursor)
    refused = events(entries, "reload_failed")
    protocol = waited_for_ready(entries, refused[0] if refused else None)
    if protocol is not None:
        problems.append(f"invalid config: {protocol}")
    status = state.get("StatusText", "")
    if rc_bad != 0:
        problems.append(f"systemctl reload (invalid config) exited {rc_bad}, not 0: {err_bad}")
    if not refused or sent_at(refused[0]) > returned:
        problems.append("no `reload_failed` event before systemctl reload returned")
    if "; reload refused" not in status or "hangover_ms" not in status:
        problems.append(f"StatusText after the refused reload: {status!r}")
    if (state.get("ActiveState"), state.get("SubState"), state.get("MainPID")) != (
        "active",
        "running",
        pid,
    ):
        problems.append(f"after the refused reload: {state} (MainPID was {pid})")

    # 3. The same valid file again: nothing changed, so the refused file never took effect.
    cursor = journal_cursor()
    CONFIG.write_text(text)
    rc, err, _ = timed_reload()
    again = events(unit_entries(cursor), "reloaded")
    if rc != 0 or not again or again[0].get("DGD_CHANGED", "") != "":
        changed = again[0].get("DGD_CHANGED") if again else None
        problems.append(f"reload of the old file again: rc={rc} {err} DGD_CHANGED={changed!r}")
    write_config()  # the others' default
    timed_reload()
    if problems:
        raise ScenarioFailed("; ".join(problems))
    return (
        f"Type=notify-reload, verify silent; valid config → `reloaded` (changed "
        f"{reloaded[0].get('DGD_CHANGED')}) {lead_s:.3f} s before systemctl reload returned "
        f"(exit 0), PID 1 reload-notify → running on READY=1; invalid → exit {rc_bad}, "
        f"`reload_failed`, StatusText {status!r}, same "
        f"MainPID {pid}; the old file again → nothing changed"
    )


SCENARIOS: Final[dict[str, tuple[str, Callable[[Context], str]]]] = {
    "1": ("start-speech-transcripts", scenario_1),
    "2": ("reload-and-stop", scenario_2),
    "3": ("unplug-replug", scenario_3),
    "4": ("capture-stall-watchdog", scenario_4),
    "5": ("reboot-comes-back", scenario_5),
    "6": ("every-record-has-DGD_EVENT", scenario_6),
    "7": ("security-exposure", scenario_7),
    "8": ("wall-clock-steps", scenario_8),
    "9": ("notify-reload", scenario_9),
    "10": ("device-format", scenario_10),
    "11": ("capture-runs-late", scenario_11),
}
PHASES: Final = {"1": ("1", "11", "2", "3", "8", "9", "10", "7", "4"), "2": ("5", "6")}


def run_scenario(ctx: Context, number: str) -> None:
    name, body = SCENARIOS[number]
    log(f"scenario {number} {name} ...")
    began = time.monotonic()
    try:
        detail = body(ctx)
        line, ok = f"PASS {number} {name}: {detail}", True
    except ScenarioFailed as exc:
        line, ok = f"FAIL {number} {name}: {exc}", False
    except Exception as exc:  # a broken scenario is a FAIL line, not a crash
        traceback.print_exc()
        line, ok = f"FAIL {number} {name}: {type(exc).__name__}: {exc}", False
    took = time.monotonic() - began
    log(line)
    append(SHARE / "results.txt", line)
    append(SHARE / "times.txt", f"scenario {number} {name}: {took:.1f} s")
    ctx.results.append((number, ok))


def save_artifacts(phase: str, server: FakeServer) -> None:
    """The whole journal (every boot so far) and the recordings, to the share."""
    with (SHARE / "journal.txt").open("w") as out:
        subprocess.run(
            ["journalctl", "--no-pager", "-o", "short-iso-precise"], stdout=out, check=False
        )
    with (SHARE / "journal-dgd.json").open("w") as out:
        subprocess.run(
            ["journalctl", "--no-pager", "-o", "json", "-u", "dgd.service"], stdout=out, check=False
        )
    if server.record_dir.exists():
        shutil.copytree(server.record_dir, SHARE / f"recordings-phase{phase}", dirs_exist_ok=True)


def main_run() -> int:
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    phase_file = STATE / "phase"
    phase = phase_file.read_text().strip() if phase_file.exists() else "1"
    append(SHARE / "times.txt", f"boot {phase}: test unit started {uptime:.1f} s after the kernel")
    append(SHARE / "progress.txt", f"phase {phase} started")
    only = os.environ.get("DGD_SYSTEST_ONLY", "").split()
    began = time.monotonic()
    fixtures = make_fixtures()
    append(SHARE / "times.txt", f"boot {phase}: fixtures {time.monotonic() - began:.1f} s")
    server = FakeServer(WORK / f"recordings-{phase}")
    ctx = Context(fixtures, server)
    try:
        if phase == "1":
            run(list(ALOOP_MODPROBE))
            server.start()
        for number in PHASES[phase]:
            if not only or number in only:
                run_scenario(ctx, number)
        if phase == "1":
            # Scenario 5's set-up: enabled, no card, no server until the scenario adds them.
            stop_dgd()
            write_config()
            run(["systemctl", "enable", "dgd.service"])
            phase_file.write_text("2\n")
            NEXT_ACTION.write_text("reboot\n")
            append(SHARE / "progress.txt", "reboot requested")
    finally:
        server.stop()
        save_artifacts(phase, server)
        append(SHARE / "progress.txt", f"phase {phase} done")
    return 0 if all(ok for _, ok in ctx.results) else 1


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "play":
        return play_main(argv[2], argv[3])
    if len(argv) == 2 and argv[1] == "run":
        return main_run()
    print(f"usage: {argv[0]} run | play DEVICE FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
