"""Soak: an hour (or more) of known speech through the real daemon, with random faults.

The audio is built from the utterances of the bundled sample (``dgd/data/sample.raw``, ground
truth in ``sample.json``) separated by digital-silence gaps of seeded random length, so the
position of every utterance is known. A ``FifoMic`` plays it at ``--speed`` times real time
into an ALSA ``type file`` PCM that ``python -m dgd run`` captures from (real alsa-lib); the
daemon streams to ``dgd fake-server``, which injects a seeded random fault plan: every
accepted connection ends with a TCP abort, a 1011 close, a long stall or a byte-count drop
after 60–120 s of wall time (3–6 min of audio at speed 3; ``--fault-after-s``), some also
get malformed messages or a short survivable stall first, and 0–3 handshakes after a fault
are refused with 503 or 429.

Reported (printed as a Markdown table and written as JSON, see ``--out``):

- utterances played vs. final transcripts, matched by time: each final's first-word start
  and last-word end (JSONL, wall-clock capture time) against the utterance's capture interval
  from the FifoMic timeline. lost = utterances without a final; duplicated = utterances whose
  finals carry more speech than the utterance has (the fake server says how much voiced audio
  a final covers: ``[speech N s]``) or overlap in time; split = more than one final, neither
  of those; partial = the finals cover under 70 % of the utterance's voiced audio.
- seconds dropped: the daemon's own ``stats`` lines (``dropped X s``; the last one is logged
  after the audio has ended, and only captured audio can be dropped), its ``audio_dropped``
  and ``shutdown_incomplete`` warnings.
- reconnects: by the daemon's cause (``connected to Deepgram again after CAUSE`` lines, one
  per reconnect, never folded) and, from the server's recording, handshakes by status, faults
  fired by kind and closes by code; KeepAlives and Finalizes the server received; catch-up
  reports (``replay done`` lines).
- memory: the daemon's VmRSS every ``--rss-interval-s``, its VmHWM (peak) just before
  SIGTERM, the mean RSS of the first and last 10 % of the samples and a least-squares slope
  in kB per minute over the samples after warm-up (the first 10 % of the samples or the
first minute, whichever is longer).

The daemon logs to stderr (``--log-target stderr``): the readable lines carry every figure
used here, so no journald is needed. The run passes (exit 0) when no utterance is lost or
duplicated, nothing was dropped and memory is flat (see ``MAX_RSS_SLOPE_KB_PER_MIN``).

Replay after an outage is paced at 1.25× real time (dgd.core.session.REPLAY_SPEED), so the average
rate at which the daemon sends audio, speed × the fraction of audio the gate passes (speech
plus 0.3 s pre-roll plus 1.5 s hangover per utterance), must stay well below 1.25 or the
backlog never drains: the default gaps (mean ~14 s) and speed 3 give about 0.75.

Usage (from the repository root; not part of the test run)::

    .venv/bin/python bench/soak.py --quick              # 5 min of audio, ~2 min
    .venv/bin/python bench/soak.py --minutes-of-audio 60 --speed 3
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgd.core.config import (
    AudioConfig,
    Config,
    DeepgramConfig,
    GateConfig,
    LogConfig,
    LogLevel,
    OutputConfig,
    StreamConfig,
    dump,
)
from dgd.core.gate import GateMode
from dgd.testing.fifomic import FifoMic, alsa_config_path, write_alsa_conf
from dgd.tools.demo import (
    FakeServerProcess,
    SampleUtterance,
    load_sample,
    package_env,
    read_jsonl,
    server_records,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = REPO_ROOT / "bench" / "results"
RATE_HZ: Final = 16000
BYTES_PER_S: Final = RATE_HZ * 2
PERIOD_BYTES: Final = 640  # 20 ms periods, as the daemon config below opens them
#: The daemon reads a whole frame (frame_ms = 100 below, within capture.MAX_READ_MS) per ALSA
#: read, and every FifoMic write must be whole reads (docs/TESTING.md): 5 periods per write.
CHUNK_PERIODS: Final = 5
PCM_NAME: Final = "dgdsoak"
API_KEY: Final = "soak-key"

#: Gaps between utterances (digital silence, audio seconds): mostly 4–20 s, one in ten
#: 20–40 s (long enough for KeepAlives). 4 s keeps utterances at least 1 s of wall time apart
#: at speed 4, far more than the error of the daemon's capture-time map at that pace.
GAP_S: Final = (4.0, 20.0)
LONG_GAP_S: Final = (20.0, 40.0)
LONG_GAP_P: Final = 0.1
LEAD_IN_S: Final = 2.0
#: Digital silence after the last utterance before the drain wait starts.
TAIL_S: Final = 10.0
#: How far ahead of the writer the audio is queued (the FifoMic fills gaps in the queue
#: with silence, so it must never run dry; offsets stay exact either way).
QUEUE_AHEAD_S: Final = 30.0

#: Fault timing, in wall-clock seconds after the handshake (the fake server's clock).
#: The default stays above dgd.core.backoff.STABLE_CONNECTION_S (60 s), so connections count as
#: stable; ``--fault-after-s 15 60`` exercises the other case (the 429 backoff bug it found is
#: fixed, see docs/SOAK.md).
FAULT_AFTER_S: Final = (60.0, 120.0)
#: --quick plays 5 min of audio (under 2 min of wall time at speed 3): faults come sooner.
QUICK_FAULT_AFTER_S: Final = (15.0, 40.0)
#: Long stalls must outlast ping_interval_s + ping_timeout_s (2 + 4) to be noticed.
LONG_STALL_S: Final = (8.0, 20.0)
#: A short stall the connection survives (the pong comes back within ping_timeout_s).
SHORT_STALL_S: Final = 1.5
#: drop_after_bytes is drawn as this many bytes per second of the drawn fault time (about the
#: rate the daemon sends at speed 3), so byte drops come about as late as the timed faults.
DROP_BYTES_PER_S: Final = (12_000, 30_000)
#: Terminating faults per accepted connection, with weights.
FATAL_FAULTS: Final = (("drop", 3), ("close", 3), ("stall", 2), ("drop_bytes", 1))
#: Extra survivable faults before the terminating one: probability of each.
MALFORMED_P: Final = 0.3
SHORT_STALL_P: Final = 0.15
#: Handshakes refused after a terminating fault: how many (weights) and which status.
REJECTS_AFTER_FAULT: Final = ((0, 50), (1, 25), (2, 15), (3, 10))
REJECT_429_P: Final = 0.2

#: Daemon settings that differ from the defaults (small backoffs so outages stay short, and a
#: frequent stats line so the last one follows the end of the audio).
BACKOFF_INITIAL_S: Final = 0.5
BACKOFF_MAX_S: Final = 5.0
PING_INTERVAL_S: Final = 2.0
PING_TIMEOUT_S: Final = 4.0
RATE_LIMITED_BACKOFF_S: Final = 5.0
STATS_INTERVAL_S: Final = 5.0
REPLAY_BUFFER_S: Final = 120.0  # the default, written out so the report can name it

#: A final belongs to the utterance nearest in wall-clock time, if within this.
MATCH_SLACK_S: Final = 0.5
#: Finals carrying more than this times the utterance's voiced audio transcribed it twice.
DUPLICATE_COVERAGE: Final = 1.3
PARTIAL_COVERAGE: Final = 0.7
#: Memory counts as flat when RSS grows by less than this after warm-up: the first 10 % of
#: the samples or WARMUP_S of wall time, whichever is longer (allocator pools and the first
#: reconnect fill up early).
WARMUP_S: Final = 60.0
#: Runs shorter than this (wall time) are not judged on memory: warm-up dominates them.
MIN_WALL_FOR_MEMORY_S: Final = 600.0
MAX_RSS_SLOPE_KB_PER_MIN: Final = 50.0

DAEMON_OPEN_TIMEOUT_S: Final = 30.0
DRAIN_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 30.0

_SPEECH_RE: Final = re.compile(r"\[speech (\d+(?:\.\d+)?) s\]")
_LOG_RE: Final = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$"
)
_STATS_RE: Final = re.compile(
    r"stats: captured ([\d.]+) s, sent ([\d.]+) s, gated ([\d.]+) s, replayed ([\d.]+) s, "
    r"dropped ([\d.]+) s, (\d+) keep-alives, (\d+) transcripts"
)
_RECONNECT_RE: Final = re.compile(
    r"connected: connected to Deepgram again after (\S+); replaying ([\d.]+) s of audio"
)
_CAUGHT_UP_RE: Final = re.compile(
    r"caught_up: replay done: ([\d.]+) s of buffered audio sent in ([\d.]+) s"
)
_DROPPED_RE: Final = re.compile(r"audio_dropped: .*?([\d.]+) s of audio")
_INCOMPLETE_RE: Final = re.compile(r"shutdown_incomplete: stopped with ([\d.]+) s")
_EVENT_RE: Final = re.compile(r"^([a-z_]+): ")


# ---- the audio ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """One utterance of the soak audio: ``gap_s`` of silence, then sample utterance ``index``."""

    gap_s: float
    index: int


def plan_audio(
    utterances: Sequence[SampleUtterance], minutes: float, rng: random.Random
) -> list[Placement]:
    """Utterances with random gaps until ``minutes`` of audio (gaps included) are planned."""
    total_s = LEAD_IN_S
    placements: list[Placement] = []
    first = True
    while total_s < minutes * 60:
        if first:
            gap_s, first = LEAD_IN_S, False
        elif rng.random() < LONG_GAP_P:
            gap_s = rng.uniform(*LONG_GAP_S)
        else:
            gap_s = rng.uniform(*GAP_S)
        utt = rng.choice(utterances)
        # Whole periods: every utterance starts on a period boundary of the stream.
        gap_s = round(gap_s * 50) / 50
        placements.append(Placement(gap_s, utt.index))
        total_s += gap_s + (utt.end_byte - utt.start_byte) / BYTES_PER_S
    return placements


def voiced_s(data: bytes) -> float:
    """First-to-last voiced 20 ms block of ``data``: what the fake server calls speech.

    Same test as the fake server: a block is voiced when its RMS is above -50 dBFS, i.e.
    ``mean(x²) > 32768² / 10⁵``.
    """
    samples = array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    block = PERIOD_BYTES // 2
    voiced = []
    for i in range(0, len(samples) - block + 1, block):
        chunk = samples[i : i + block]
        if sum(x * x for x in chunk) * 100_000 > 32768 * 32768 * len(chunk):
            voiced.append(i)
    if not voiced:
        return 0.0
    return (voiced[-1] + block - voiced[0]) / RATE_HZ


# ---- the fault plan ---------------------------------------------------------------------------


def _weighted(rng: random.Random, table: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([value for value, _ in table], [weight for _, weight in table])[0]


def plan_faults(
    rng: random.Random, attempts: int, after_s_range: tuple[float, float] = FAULT_AFTER_S
) -> list[dict[str, Any]]:
    """A fake-server fault plan (docs/FAKE_SERVER.md) for the first ``attempts`` handshakes.

    Accepted attempts get one terminating fault (and maybe a survivable one before it);
    after each, 0–3 attempts are refused (503, sometimes 429). Never 401: a rejected key
    stops transcription by design, which is not what a soak measures.
    """
    rules: list[dict[str, Any]] = []
    attempt = 1
    while attempt <= attempts:
        after_s = round(rng.uniform(*after_s_range), 1)
        kind = _weighted(rng, FATAL_FAULTS)
        if kind == "drop":
            rules.append({"attempts": [attempt], "drop_after_s": after_s})
        elif kind == "close":
            rules.append({"attempts": [attempt], "close_after_s": after_s, "code": 1011})
        elif kind == "stall":
            stall_s = round(rng.uniform(*LONG_STALL_S), 1)
            rules.append({"attempts": [attempt], "stall_after_s": after_s, "stall_for_s": stall_s})
        else:
            per_s = rng.uniform(*DROP_BYTES_PER_S)
            after_bytes = round(after_s * per_s / PERIOD_BYTES) * PERIOD_BYTES
            rules.append({"attempts": [attempt], "drop_after_bytes": after_bytes})
            after_s = min(after_s, 20.0)  # the survivable faults below come early then
        if rng.random() < MALFORMED_P:
            rules.append(
                {"attempts": [attempt], "malformed_after_s": round(rng.uniform(2, after_s - 1), 1)}
            )
        elif rng.random() < SHORT_STALL_P:
            rules.append(
                {
                    "attempts": [attempt],
                    "stall_after_s": round(rng.uniform(2, after_s - 3), 1),
                    "stall_for_s": SHORT_STALL_S,
                }
            )
        attempt += 1
        for _ in range(_weighted(rng, REJECTS_AFTER_FAULT)):
            status = 429 if rng.random() < REJECT_429_P else 503
            rules.append({"attempts": [attempt], "reject": status})
            attempt += 1
    return rules


# ---- processes ------------------------------------------------------------------------------


def write_config(path: Path, *, url: str, jsonl: Path) -> None:
    """The daemon config of the soak (keys as in docs/CONFIG.md)."""
    config = Config(
        deepgram=DeepgramConfig(url=url),
        audio=AudioConfig(device=PCM_NAME, rate=RATE_HZ, channels=1, period_ms=20),
        gate=GateConfig(mode=GateMode.ENERGY, threshold_dbfs=-50.0),  # the gaps are digital silence
        stream=StreamConfig(
            frame_ms=100,
            replay_buffer_s=REPLAY_BUFFER_S,
            backoff_initial_s=BACKOFF_INITIAL_S,
            backoff_max_s=BACKOFF_MAX_S,
            ping_interval_s=PING_INTERVAL_S,
            ping_timeout_s=PING_TIMEOUT_S,
            rate_limited_backoff_s=RATE_LIMITED_BACKOFF_S,
        ),
        output=OutputConfig(journald=False, jsonl=str(jsonl), stats_interval_s=STATS_INTERVAL_S),
        log=LogConfig(level=LogLevel.INFO),
    )
    path.write_text("# Written by bench/soak.py.\n" + dump(config), encoding="utf-8")


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point fd 2 at ``path`` while children are started (they inherit it), then restore."""
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text("ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


class RssSampler:
    """A thread sampling a process's VmRSS every ``interval_s``: ``(seconds since start, kB)``."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="RssSampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append((time.monotonic() - self._t0, rss))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


# ---- the run --------------------------------------------------------------------------------


@dataclass(slots=True)
class RunRecord:
    """What the run produced, for the analysis."""

    work: Path
    truth: list[tuple[float, float]]  # capture interval (wall clock) of each utterance
    indices: list[int]  # sample utterance of each
    audio_s: float
    wall_s: float
    daemon_exit: int | None
    rss: list[tuple[float, int]]
    hwm_kb: int | None
    drained: bool
    notes: list[str] = field(default_factory=list)


def run_soak(
    placements: Sequence[Placement],
    faults: list[dict[str, Any]] | None,
    *,
    speed: float,
    work: Path,
    rss_interval_s: float,
    progress: bool = True,
) -> RunRecord:
    """Play the planned audio through the daemon against the fake server; collect the raw data."""
    sample, utterances = load_sample()
    by_index = {u.index: u for u in utterances}
    conf, fifo, jsonl = work / "alsa.conf", work / "mic.fifo", work / "transcripts.jsonl"
    for stale in (fifo, jsonl):
        stale.unlink(missing_ok=True)
    write_alsa_conf(conf, PCM_NAME, fifo)
    plan_path = None
    if faults is not None:
        plan_path = work / "faults.json"
        plan_path.write_text(json.dumps(faults, indent=1), encoding="utf-8")
    with stderr_to(work / "server.log"):
        server = FakeServerProcess(work / "server", api_key=API_KEY, faults=plan_path)
    notes: list[str] = []
    mic = FifoMic(fifo, speed=speed, chunk_periods=CHUNK_PERIODS)
    starts: list[int] = []
    ends: list[int] = []
    try:
        write_config(work / "dgd.toml", url=server.url, jsonl=jsonl)
        env = package_env(ALSA_CONFIG_PATH=alsa_config_path(conf), DEEPGRAM_API_KEY=API_KEY)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            env.pop(name, None)
        argv = [sys.executable, "-m", "dgd", "run", "-c", str(work / "dgd.toml")]
        with (work / "daemon.stdout").open("wb") as out, (work / "daemon.stderr").open("wb") as err:
            daemon = subprocess.Popen(
                [*argv, "--log-target", "stderr"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=REPO_ROOT,
            )
        t0 = time.monotonic()
        hwm_kb: int | None = None
        drained = False
        sampler: RssSampler | None = None
        try:
            if not mic.wait_reader(DAEMON_OPEN_TIMEOUT_S):
                raise RuntimeError(
                    f"the daemon did not open the audio device within {DAEMON_OPEN_TIMEOUT_S} s; "
                    f"see {work / 'daemon.stderr'}"
                )
            # From here on the daemon has imported everything and opened the device: the
            # samples show the steady state, not the interpreter starting up.
            sampler = RssSampler(daemon.pid, rss_interval_s)
            queue_ahead = int(QUEUE_AHEAD_S * BYTES_PER_S)
            last_report = time.monotonic()
            for n, placement in enumerate(placements):
                while mic.queued_bytes > queue_ahead:
                    _check_alive(daemon, work)
                    time.sleep(0.2)
                utt = by_index[placement.index]
                silence = bytes(round(placement.gap_s * RATE_HZ) * 2)
                data = sample[utt.start_byte : utt.end_byte]
                # Pad to whole writes: the queue never ends mid-write when it drains (after
                # the tail), which would hand the daemon a partial read and garble the stream.
                pad = bytes(-(len(silence) + len(data)) % mic.chunk_bytes)
                start = mic.play(silence + data + pad) + len(silence)
                starts.append(start)
                ends.append(start + len(data))
                if progress and time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    done_s = mic.bytes_written / BYTES_PER_S
                    rss = sampler.samples[-1][1] if sampler.samples else 0
                    print(
                        f"soak: {done_s / 60:.1f} min of audio played, utterance {n} queued, "
                        f"RSS {rss} kB",
                        flush=True,
                    )
            tail = bytes(-(-int(TAIL_S * BYTES_PER_S) // mic.chunk_bytes) * mic.chunk_bytes)
            tail_end = mic.play(tail) + len(tail)
            while not mic.wait_written(tail_end, 0.5):
                _check_alive(daemon, work)
            # Drain: the audio has ended; wait for the last utterance's final (a late outage
            # may still be replaying), then for one more stats line.
            last_on = mic.capture_time(starts[-1])
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                _check_alive(daemon, work)
                if any(
                    _parse_time(t["words"][-1]["end"]) >= last_on
                    for t in read_jsonl(jsonl)
                    if t.get("is_final") and t.get("words")
                ):
                    drained = True
                    break
                time.sleep(1.0)
            if not drained:
                notes.append(f"no final for the last utterance within {DRAIN_TIMEOUT_S} s")
            time.sleep(STATS_INTERVAL_S * 1.5)
            hwm_kb = proc_status_kb(daemon.pid, "VmHWM")
        finally:
            if sampler is not None:
                sampler.stop()
            wall_s = time.monotonic() - t0
            exit_code = _stop(daemon)
        audio_s = mic.bytes_written / BYTES_PER_S
        truth = [
            (mic.capture_time(s), mic.capture_time(e - 2))
            for s, e in zip(starts, ends, strict=True)
        ]
    finally:
        mic.close()
        server.stop()
    return RunRecord(
        work=work,
        truth=truth,
        indices=[p.index for p in placements[: len(truth)]],
        audio_s=audio_s,
        wall_s=wall_s,
        daemon_exit=exit_code,
        rss=sampler.samples if sampler is not None else [],
        hwm_kb=hwm_kb,
        drained=drained,
        notes=notes,
    )


def _check_alive(daemon: subprocess.Popen[bytes], work: Path) -> None:
    if daemon.poll() is not None:
        raise RuntimeError(
            f"the daemon exited early with code {daemon.returncode}; see {work / 'daemon.stderr'}"
        )


def _stop(daemon: subprocess.Popen[bytes]) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return daemon.returncode


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ---- the analysis ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    """One non-empty final transcript: first-word start, last-word end, speech seconds."""

    start_s: float
    end_s: float
    speech_s: float | None
    text: str


def match_finals(
    truth: Sequence[tuple[float, float]], finals: Sequence[FinalTranscript]
) -> tuple[list[list[int]], list[int]]:
    """Each final to the utterance nearest in time (within MATCH_SLACK_S).

    Returns:
        per utterance, the indices of its finals; and the finals that matched none.
    """
    onsets = [on for on, _ in truth]
    owners: list[list[int]] = [[] for _ in truth]
    unmatched: list[int] = []
    for i, final in enumerate(finals):
        k = bisect.bisect_right(onsets, final.end_s)
        best: tuple[float, int] | None = None
        for j in range(max(0, k - 3), min(len(truth), k + 2)):
            on, off = truth[j]
            distance = max(0.0, on - final.end_s, final.start_s - off)
            if best is None or distance < best[0]:
                best = (distance, j)
        if best is None or best[0] > MATCH_SLACK_S:
            unmatched.append(i)
        else:
            owners[best[1]].append(i)
    return owners, unmatched


def _load_finals(jsonl: Path) -> list[FinalTranscript]:
    finals = []
    for item in read_jsonl(jsonl):
        if not item.get("is_final") or not str(item.get("text", "")).strip():
            continue
        words = item.get("words") or []
        if not words:
            continue
        match = _SPEECH_RE.search(str(item["text"]))
        finals.append(
            FinalTranscript(
                _parse_time(words[0]["start"]),
                _parse_time(words[-1]["end"]),
                float(match.group(1)) if match else None,
                str(item["text"]),
            )
        )
    return finals


def analyse_utterances(record: RunRecord) -> dict[str, Any]:
    """Utterances played vs. finals: lost, duplicated, split, partial, unmatched."""
    sample, utterances = load_sample()
    voiced = {u.index: voiced_s(sample[u.start_byte : u.end_byte]) for u in utterances}
    finals = _load_finals(record.work / "transcripts.jsonl")
    owners, unmatched = match_finals(record.truth, finals)
    lost, duplicated, split, partial = [], [], [], []
    coverages = []
    for j, mine in enumerate(owners):
        if not mine:
            lost.append(j)
            continue
        speech = [finals[i].speech_s for i in mine]
        coverage = (
            sum(s for s in speech if s is not None) / voiced[record.indices[j]]
            if None not in speech and voiced[record.indices[j]] > 0
            else None
        )
        if coverage is not None:
            coverages.append(coverage)
        spans = sorted((finals[i].start_s, finals[i].end_s) for i in mine)
        overlap = any(b[0] < a[1] - 0.05 for a, b in itertools.pairwise(spans))
        if (coverage is not None and coverage > DUPLICATE_COVERAGE) or overlap:
            duplicated.append(j)
        elif len(mine) > 1:
            split.append(j)
        if coverage is not None and coverage < PARTIAL_COVERAGE:
            partial.append(j)

    def describe(js: list[int]) -> list[dict[str, Any]]:
        return [
            {
                "utterance": j,
                "sample_index": record.indices[j],
                "capture_start": datetime.fromtimestamp(record.truth[j][0], UTC).isoformat(),
                "finals": [finals[i].text for i in owners[j]],
            }
            for j in js[:20]
        ]

    return {
        "played": len(record.truth),
        "finals": len(finals),
        "matched_1to1": sum(1 for mine in owners if len(mine) == 1),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "split": len(split),
        "partial": len(partial),
        "unmatched_finals": len(unmatched),
        "coverage_min": round(min(coverages), 3) if coverages else None,
        "coverage_max": round(max(coverages), 3) if coverages else None,
        "lost_detail": describe(lost),
        "duplicated_detail": describe(duplicated),
        "split_detail": describe(split),
        "partial_detail": describe(partial),
        "unmatched_detail": [
            {
                "start": datetime.fromtimestamp(finals[i].start_s, UTC).isoformat(),
                "text": finals[i].text,
            }
            for i in unmatched[:20]
        ],
    }


def analyse_log(stderr: Path) -> dict[str, Any]:
    """The daemon's stderr lines: last stats, reconnects by cause, catch-ups, drops, warnings."""
    last_stats: tuple[str, ...] | None = None
    reconnects: dict[str, int] = {}
    backlogs: list[float] = []
    catchups: list[tuple[float, float]] = []
    dropped_warnings: list[float] = []
    incomplete_s = 0.0
    by_level: dict[str, dict[str, int]] = {}
    tracebacks = 0
    for line in stderr.read_text("utf-8", "replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        match = _LOG_RE.match(line)
        if match is None:
            continue
        level, rest = match.groups()
        if level != "INFO":
            name = _EVENT_RE.match(rest)
            key = name.group(1) if name else rest[:60]
            by_level.setdefault(level, {})
            by_level[level][key] = by_level[level].get(key, 0) + 1
        if m := _STATS_RE.match(rest):
            last_stats = m.groups()
        elif m := _RECONNECT_RE.match(rest):
            reconnects[m.group(1)] = reconnects.get(m.group(1), 0) + 1
            backlogs.append(float(m.group(2)))
        elif m := _CAUGHT_UP_RE.match(rest):
            catchups.append((float(m.group(1)), float(m.group(2))))
        elif m := _DROPPED_RE.match(rest):
            dropped_warnings.append(float(m.group(1)))
        elif m := _INCOMPLETE_RE.match(rest):
            incomplete_s += float(m.group(1))
    stats = None
    if last_stats is not None:
        names = ("captured_s", "sent_s", "gated_s", "replayed_s", "dropped_s")
        stats = {name: float(v) for name, v in zip(names, last_stats[:5], strict=True)}
        stats["keepalives"] = int(last_stats[5])
        stats["transcripts"] = int(last_stats[6])
    return {
        "last_stats": stats,
        "reconnects_by_cause": dict(sorted(reconnects.items())),
        "reconnects": sum(reconnects.values()),
        "replay_backlog_max_s": max(backlogs, default=0.0),
        "catchups": len(catchups),
        "catchup_backlog_max_s": max((b for b, _ in catchups), default=0.0),
        "catchup_took_max_s": max((t for _, t in catchups), default=0.0),
        "audio_dropped_warnings": len(dropped_warnings),
        "shutdown_untranscribed_s": incomplete_s,
        "warnings_and_errors": by_level,
        "tracebacks": tracebacks,
    }


def analyse_server(record_dir: Path) -> dict[str, Any]:
    """The fake server's recording: handshakes, faults fired, closes, KeepAlive, Finalize."""
    handshakes: dict[str, int] = {}
    faults: dict[str, int] = {}
    closes: dict[str, int] = {}
    keepalives = finalizes = close_streams = 0
    audio_bytes = 0
    for r in server_records(record_dir):
        kind = r.get("kind")
        if kind == "handshake":
            key = str(r.get("status"))
            handshakes[key] = handshakes.get(key, 0) + 1
        elif kind == "fault":
            fault = r.get("fault", {})
            name = next(iter(fault), "?")
            if name == "stall_after_s":
                name = f"stall_{'short' if fault.get('stall_for_s', 0) < 4 else 'long'}"
            elif name == "reject":
                name = f"reject_{fault['reject']}"
            faults[name] = faults.get(name, 0) + 1
        elif kind == "close":
            key = f"{r.get('code')} by {r.get('by')}"
            closes[key] = closes.get(key, 0) + 1
        elif kind == "binary":
            audio_bytes += int(r.get("len", 0))
        elif kind == "text":
            text = str(r.get("text", ""))
            keepalives += "KeepAlive" in text
            finalizes += "Finalize" in text
            close_streams += "CloseStream" in text
    survivable = ("malformed_after_s", "stall_short")
    return {
        "reconnects": max(0, sum(handshakes.values()) - 1),
        "connection_ending_faults": sum(n for k, n in faults.items() if k not in survivable),
        "handshakes_by_status": dict(sorted(handshakes.items())),
        "faults_fired": dict(sorted(faults.items())),
        "closes": dict(sorted(closes.items())),
        "keepalives": keepalives,
        "finalizes": finalizes,
        "close_streams": close_streams,
        "audio_received_s": round(audio_bytes / BYTES_PER_S, 1),
    }


def analyse_memory(record: RunRecord) -> dict[str, Any]:
    """Peak (VmHWM), first vs. last 10 % of the RSS samples, and the slope after warm-up."""
    rss = record.rss
    if len(rss) < 10:
        return {"samples": len(rss), "peak_kb": record.hwm_kb}
    tenth = max(1, len(rss) // 10)
    first = statistics.fmean(kb for _, kb in rss[:tenth])
    last = statistics.fmean(kb for _, kb in rss[-tenth:])
    warmup = max(tenth, bisect.bisect_left([t for t, _ in rss], WARMUP_S))
    after = rss[warmup:] if len(rss) - warmup >= 10 else rss[tenth:]
    slope = statistics.linear_regression([t / 60 for t, _ in after], [kb for _, kb in after]).slope
    slope_all = statistics.linear_regression([t / 60 for t, _ in rss], [kb for _, kb in rss]).slope
    half = rss[len(rss) // 2 :]
    slope_half = statistics.linear_regression(
        [t / 60 for t, _ in half], [kb for _, kb in half]
    ).slope
    step = max(1, len(rss) // 40)
    return {
        "samples": len(rss),
        "interval_s": round(rss[1][0] - rss[0][0], 2),
        "peak_kb": record.hwm_kb,
        "rss_max_kb": max(kb for _, kb in rss),
        "rss_first_10pct_kb": round(first),
        "rss_last_10pct_kb": round(last),
        "slope_after_warmup_kb_per_min": round(slope, 2),
        "slope_all_kb_per_min": round(slope_all, 2),
        "slope_second_half_kb_per_min": round(slope_half, 2),
        "trace_min_kb": [[round(t / 60, 2), kb] for t, kb in rss[::step]],
    }


def verdict(result: dict[str, Any]) -> list[str]:
    """Why the run failed (empty: it passed)."""
    problems = []
    utt, log, mem = result["utterances"], result["daemon_log"], result["memory"]
    if utt["lost"]:
        problems.append(f"{utt['lost']} utterance(s) lost")
    if utt["duplicated"]:
        problems.append(f"{utt['duplicated']} utterance(s) transcribed twice")
    stats = log["last_stats"]
    if stats is None:
        problems.append("no stats line in the daemon log")
    elif stats["dropped_s"] > 0:
        problems.append(f"{stats['dropped_s']} s of audio dropped")
    slope = mem.get("slope_after_warmup_kb_per_min")
    if result["wall_s"] < MIN_WALL_FOR_MEMORY_S:
        pass  # a --quick run is too short to tell warm-up from growth
    elif slope is None or slope > MAX_RSS_SLOPE_KB_PER_MIN:
        problems.append(f"RSS slope {slope} kB/min (limit {MAX_RSS_SLOPE_KB_PER_MIN})")
    if result["daemon_exit_code"] != 0:
        problems.append(f"daemon exit code {result['daemon_exit_code']}")
    return problems


def markdown_table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table (for docs/SOAK.md)."""
    utt, log, srv, mem = (
        result["utterances"],
        result["daemon_log"],
        result["server"],
        result["memory"],
    )
    stats = log["last_stats"] or {}

    def kv(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    rows = [
        (
            "audio played",
            f"{result['audio_s'] / 60:.1f} min at {result['speed']}× "
            f"({result['wall_s'] / 60:.1f} min wall)",
        ),
        ("utterances played", utt["played"]),
        ("final transcripts (non-empty)", utt["finals"]),
        ("utterances with exactly one final", utt["matched_1to1"]),
        (
            "lost / duplicated / split / partial",
            f"{utt['lost']} / {utt['duplicated']} / {utt['split']} / {utt['partial']}",
        ),
        ("finals matching no utterance", utt["unmatched_finals"]),
        ("speech coverage per utterance (min–max)", f"{utt['coverage_min']}–{utt['coverage_max']}"),
        (
            "captured / sent / replayed (daemon stats)",
            f"{stats.get('captured_s')} s / {stats.get('sent_s')} s / {stats.get('replayed_s')} s",
        ),
        (
            "seconds dropped",
            f"{stats.get('dropped_s')} s ({log['audio_dropped_warnings']} "
            f"audio_dropped warnings, {log['shutdown_untranscribed_s']} s untranscribed at stop)",
        ),
        ("faults fired (server)", kv(srv["faults_fired"])),
        ("handshakes by status (server)", kv(srv["handshakes_by_status"])),
        (
            "reconnect attempts (server: handshakes after the first)",
            f"{srv['reconnects']} after {srv['connection_ending_faults']} connection-ending faults",
        ),
        (
            "successful reconnects by last cause (daemon)",
            f"{log['reconnects']}: {kv(log['reconnects_by_cause'])}",
        ),
        ("largest replay backlog at reconnect", f"{log['replay_backlog_max_s']} s"),
        (
            "catch-up reports",
            f"{log['catchups']} (longest {log['catchup_took_max_s']} s for "
            f"{log['catchup_backlog_max_s']} s)",
        ),
        ("KeepAlives / Finalizes (server)", f"{srv['keepalives']} / {srv['finalizes']}"),
        ("peak memory (VmHWM)", f"{mem.get('peak_kb')} kB"),
        (
            "RSS first 10 % → last 10 %",
            f"{mem.get('rss_first_10pct_kb')} → {mem.get('rss_last_10pct_kb')} kB",
        ),
        (
            "RSS slope after warm-up",
            f"{mem.get('slope_after_warmup_kb_per_min')} kB/min; second half "
            f"{mem.get('slope_second_half_kb_per_min')} kB/min ({mem.get('samples')} samples)",
        ),
        ("daemon exit code", result["daemon_exit_code"]),
        ("verdict", "PASS" if not result["problems"] else "FAIL: " + "; ".join(result["problems"])),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="dgd-soak-") as tmp:
        yield Path(tmp)


def save_record(record: RunRecord, meta: dict[str, Any]) -> None:
    """Keep the raw run data in the work directory (``record.json``) for ``--analyse``."""
    data = {
        "meta": meta,
        "truth": record.truth,
        "indices": record.indices,
        "audio_s": record.audio_s,
        "wall_s": record.wall_s,
        "daemon_exit": record.daemon_exit,
        "rss": record.rss,
        "hwm_kb": record.hwm_kb,
        "drained": record.drained,
        "notes": record.notes,
    }
    (record.work / "record.json").write_text(json.dumps(data), encoding="utf-8")


def load_record(work: Path) -> tuple[RunRecord, dict[str, Any]]:
    """The record saved by `save_record`, and the run's metadata.

    Raises:
        FileNotFoundError: ``work`` holds no record.json (not a kept soak directory).
    """
    data = json.loads((work / "record.json").read_text("utf-8"))
    record = RunRecord(
        work=work,
        truth=[(float(a), float(b)) for a, b in data["truth"]],
        indices=[int(i) for i in data["indices"]],
        audio_s=float(data["audio_s"]),
        wall_s=float(data["wall_s"]),
        daemon_exit=data["daemon_exit"],
        rss=[(float(t), int(kb)) for t, kb in data["rss"]],
        hwm_kb=data["hwm_kb"],
        drained=bool(data["drained"]),
        notes=list(data["notes"]),
    )
    return record, dict(data["meta"])


def analyse(record: RunRecord, meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run, and the verdict (``problems``: empty means PASS)."""
    result: dict[str, Any] = {
        **meta,
        "audio_s": round(record.audio_s, 1),
        "wall_s": round(record.wall_s, 1),
        "drained": record.drained,
        "notes": record.notes,
        "daemon_exit_code": record.daemon_exit,
        "settings": {
            "backoff_initial_s": BACKOFF_INITIAL_S,
            "backoff_max_s": BACKOFF_MAX_S,
            "ping_interval_s": PING_INTERVAL_S,
            "ping_timeout_s": PING_TIMEOUT_S,
            "rate_limited_backoff_s": RATE_LIMITED_BACKOFF_S,
            "replay_buffer_s": REPLAY_BUFFER_S,
            "stats_interval_s": STATS_INTERVAL_S,
        },
        "utterances": analyse_utterances(record),
        "daemon_log": analyse_log(record.work / "daemon.stderr"),
        "server": analyse_server(record.work / "server"),
        "memory": analyse_memory(record),
    }
    result["problems"] = verdict(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; print the table; write the JSON. Returns 0 on PASS, 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes-of-audio", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=3.0, help="FifoMic pace (default 3)")
    parser.add_argument("--quick", action="store_true", help="5 min of audio, to validate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-faults", action="store_true", help="a baseline without faults")
    parser.add_argument(
        "--fault-after-s",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="each accepted connection fails after LO..HI s of wall time "
        "(default 60 120; --quick: 15 40)",
    )
    parser.add_argument("--rss-interval-s", type=float, default=2.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep all files of the run in DIR")
    parser.add_argument(
        "--analyse",
        type=Path,
        default=None,
        metavar="DIR",
        help="do not run: analyse again the run kept in DIR (--keep)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default: bench/results/soak-DATE[-quick|-nofaults].json)",
    )
    args = parser.parse_args(argv)
    if args.analyse is not None:
        try:
            record, meta = load_record(args.analyse)
        except FileNotFoundError:
            parser.error(f"--analyse {args.analyse}: no record.json there (run with --keep DIR)")
        result = analyse(record, meta)
    else:
        minutes = 5.0 if args.quick else args.minutes_of_audio
        if minutes <= 0 or args.speed <= 0 or args.rss_interval_s <= 0:
            parser.error("--minutes-of-audio, --speed and --rss-interval-s must be > 0")
        _, utterances = load_sample()
        placements = plan_audio(utterances, minutes, random.Random(args.seed))
        lo_s, hi_s = args.fault_after_s or (QUICK_FAULT_AFTER_S if args.quick else FAULT_AFTER_S)
        if not 0 < lo_s <= hi_s:
            parser.error("--fault-after-s LO HI needs 0 < LO <= HI")
        # Enough attempts for the whole run even if every connection ended at the earliest.
        attempts = int(minutes * 60 / args.speed / lo_s * 4) + 10
        faults = (
            None
            if args.no_faults
            else plan_faults(random.Random(args.seed + 1), attempts, (lo_s, hi_s))
        )
        meta = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "seed": args.seed,
            "speed": args.speed,
            "faults": not args.no_faults,
            "fault_after_s": [lo_s, hi_s],
            "quick": args.quick,
        }
        with _workdir(args.keep) as work:
            print(
                f"soak: {len(placements)} utterances, {minutes:g} min of audio at "
                f"{args.speed}×, files in {work}",
                flush=True,
            )
            record = run_soak(
                placements, faults, speed=args.speed, work=work, rss_interval_s=args.rss_interval_s
            )
            save_record(record, meta)
            result = analyse(record, meta)
    out = args.out
    if out is None:
        suffix = "-quick" if result["quick"] else ("" if result["faults"] else "-nofaults")
        out = RESULTS_DIR / f"soak-{result['started'][:10]}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(markdown_table(result))
    print(f"soak: result written to {out}")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
