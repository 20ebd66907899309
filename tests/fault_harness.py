"""Helpers for the end-to-end fault tests (issue 3, "Never lose a word").

A `FaultRig` is one scenario's world: the fake Deepgram server as a process with a fault plan
and ``--record-dir``, a FIFO-fed ALSA ``file`` PCM (the microphone, which may appear only
later), a NOTIFY_SOCKET, and ``dgd run`` as a process logging to the real journald. The
checks compare what reached the server, connection by connection, with what the microphone
played, and the transcripts the daemon wrote with the true capture times of the utterances.

Everything is per test (tmp_path, port 0, an ALSA config of its own, journal entries filtered
by the daemon's ``_PID``), so scenarios can run in parallel under pytest-xdist.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from dgd.core.config import (
    AudioConfig,
    Config,
    DeepgramConfig,
    GateConfig,
    OutputConfig,
    StreamConfig,
    dump,
)
from dgd.core.gate import GateMode
from dgd.testing.fifomic import write_alsa_conf
from tests.harness import (
    BYTES_PER_S,
    E2E_API_KEY,
    ONSET_TOLERANCE_S,
    DaemonProcess,
    FakeServerProcess,
    FifoMic,
    NotifyListener,
    assert_one_final_per_utterance,
    daemon_env,
    journal_bool,
    journal_entries,
    journal_text,
    parse_rfc3339,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

PCM_NAME: Final = "dgdfault"
#: Startup (imports, ALSA open) on a slow machine; not a performance claim.
READY_TIMEOUT_S: Final = 30.0
#: SIGTERM → exit: stream.close_timeout_s plus teardown, with margin.
STOP_TIMEOUT_S: Final = 20.0
#: The small, fast settings every scenario starts from (the issue's CI budget).
FAST_STREAM: Final = StreamConfig(
    frame_ms=100,
    backoff_initial_s=0.2,
    backoff_max_s=2.0,
    rejected_retry_s=10.0,
    ping_interval_s=1.0,
    ping_timeout_s=2.0,
    close_timeout_s=5.0,
)
#: A 20 ms block counts as voiced above this peak (the fake server's threshold is -50 dBFS
#: RMS; this only has to find where speech starts inside an utterance's bytes).
_VOICED_PEAK: Final = 1000
_BLOCK_BYTES: Final = 640
#: Bytes of an utterance used to find it in a connection's audio (100 ms of speech).
_PROBE_BYTES: Final = 3200


# ---- configuration ---------------------------------------------------------------------------


def write_fault_config(
    path: Path,
    *,
    url: str,
    device: str,
    jsonl: Path,
    stream: StreamConfig = FAST_STREAM,
    api_key_file: Path | None = None,
) -> Config:
    """Write a daemon config (docs/CONFIG.md) and return it: 16 kHz mono, 20 ms periods,
    energy gate at -50 dBFS, ``stream``, transcripts to journald and ``jsonl``."""
    key_file = "" if api_key_file is None else str(api_key_file)
    config = Config(
        deepgram=DeepgramConfig(url=url, api_key_file=key_file),
        audio=AudioConfig(device=device, rate=16000, channels=1, period_ms=20),
        gate=GateConfig(mode=GateMode.ENERGY, threshold_dbfs=-50.0),
        stream=stream,
        output=OutputConfig(journald=True, jsonl=str(jsonl)),
    )
    path.write_text(dump(config), encoding="utf-8")
    return config


# ---- the server's records, connection by connection -------------------------------------------


def conn_jsonl(record_dir: Path, attempt: int) -> Path:
    """The record file of connection attempt ``attempt`` (1-based)."""
    return record_dir / f"conn-{attempt:04d}.jsonl"


def conn_records(record_dir: Path, attempt: int) -> list[dict[str, Any]]:
    """The records of one attempt so far (a line being written is skipped)."""
    path = conn_jsonl(record_dir, attempt)
    if not path.exists():
        return []
    out = []
    for line in path.read_text("utf-8").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def conn_audio(record_dir: Path, attempt: int) -> bytes:
    """Every audio byte the server received on attempt ``attempt``."""
    path = record_dir / f"conn-{attempt:04d}.raw"
    return path.read_bytes() if path.exists() else b""


def attempt_numbers(record_dir: Path) -> list[int]:
    """The attempts recorded so far, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in record_dir.glob("conn-*.jsonl"))


def handshakes(record_dir: Path) -> list[dict[str, Any]]:
    """The handshake record of every attempt so far, in order (``status`` 101 = accepted)."""
    out = []
    for n in attempt_numbers(record_dir):
        found = [r for r in conn_records(record_dir, n) if r.get("kind") == "handshake"]
        out.extend(found[:1])
    return out


def wait_handshake(record_dir: Path, attempt: int, timeout_s: float) -> dict[str, Any] | None:
    """Wait for the handshake record of ``attempt``; None if it did not come in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in conn_records(record_dir, attempt) if r.get("kind") == "handshake"]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def audio_before_fault(record_dir: Path, attempt: int) -> bytes:
    """The audio attempt ``attempt`` had received when its first fault fired.

    The fault record is written as the fault fires; a ``drop_after_bytes`` fault fires after
    the frame that crossed the limit was recorded.

    Raises:
        AssertionError: no fault fired on that attempt.
    """
    records = conn_records(record_dir, attempt)
    kinds = [r.get("kind") for r in records]
    assert "fault" in kinds, f"no fault fired on attempt {attempt}: {records[:5]}..."
    received = 0
    for record in records[: kinds.index("fault")]:
        if record.get("kind") == "binary":
            received += int(record["len"])
    return conn_audio(record_dir, attempt)[:received]


def final_ends_before_fault(record_dir: Path, attempt: int) -> list[int]:
    """Byte offsets where the final results the server sent on ``attempt`` end, counting
    only those sent before its first fault fired (after a stall the server sends results
    into a connection the client has left), in order, starting with 0."""
    ends = [0]
    for record in conn_records(record_dir, attempt):
        if record.get("kind") == "fault":
            break
        message = record.get("message") if record.get("kind") == "sent" else None
        if (
            isinstance(message, dict)
            and message.get("type") == "Results"
            and message.get("is_final") is True
        ):
            end_s = float(message["start"]) + float(message["duration"])
            ends.append(round(end_s * 16000) * 2)
    return ends


def assert_replay_continues(record_dir: Path, prev: int, nxt: int, diagnostics: str) -> int:
    """Connection ``nxt`` begins, byte for byte, with everything connection ``prev`` received
    after the end of one of its final results (nothing confirmed is sent twice, nothing
    unconfirmed is skipped). Returns that offset in ``prev``'s audio.

    The client trims at the last final it *received*; after a TCP reset the last results the
    server sent may not have arrived, so any final end before the fault is accepted, the
    latest preferred.
    """
    before = conn_audio(record_dir, prev)
    after = conn_audio(record_dir, nxt)
    ends = final_ends_before_fault(record_dir, prev)
    for end in reversed(ends):
        tail = before[end:]
        if after.startswith(tail):
            return end
    raise AssertionError(
        f"connection {nxt} ({len(after)} B) does not start with connection {prev}'s audio "
        f"after any of its finals (ends {ends}, {len(before)} B received)\n{diagnostics}"
    )


def closes(record_dir: Path) -> list[dict[str, Any]]:
    """Every ``close`` record, each with its ``attempt``."""
    return [
        {**r, "attempt": n}
        for n in attempt_numbers(record_dir)
        for r in conn_records(record_dir, n)
        if r.get("kind") == "close"
    ]


# ---- audio ground truth ----------------------------------------------------------------------


def first_voiced_offset(audio: bytes) -> int:
    """Offset of the first 20 ms block of ``audio`` whose peak is above ``_VOICED_PEAK``."""
    for pos in range(0, len(audio) - _BLOCK_BYTES + 1, _BLOCK_BYTES):
        block = struct.unpack(f"<{_BLOCK_BYTES // 2}h", audio[pos : pos + _BLOCK_BYTES])
        if max(abs(s) for s in block) > _VOICED_PEAK:
            return pos
    raise ValueError("no voiced block in this audio")


def cut_fraction(received: bytes, utterance: bytes) -> float:
    """How much of ``utterance`` ends ``received`` (the audio a connection got before its
    fault): 0 < result < 1 when the fault hit mid-utterance.

    Returns 0.0 when the utterance's speech had not started on that connection, and 1.0 or
    more when the whole utterance had already gone out.

    Raises:
        AssertionError: the utterance's start is there but what follows is not its bytes.
    """
    voiced = first_voiced_offset(utterance)
    probe = utterance[voiced : voiced + _PROBE_BYTES]
    found = received.rfind(probe)
    if found < 0:
        return 0.0
    start = found - voiced
    assert start >= 0, "the utterance's start was cut off on this connection"
    sent = len(received) - start
    overlap = min(sent, len(utterance))
    assert received[start : start + overlap] == utterance[:overlap], (
        "the connection got the utterance's start but then other bytes"
    )
    return sent / len(utterance)


def silence_s(seconds: float) -> bytes:
    """Digital silence of whole samples."""
    return bytes(round(seconds * 16000) * 2)


# ---- transcripts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finals:
    """The non-empty final transcripts, as journald and the JSONL file hold them."""

    journal: list[dict[str, Any]]
    jsonl: list[dict[str, Any]]


def read_finals(pid: int, jsonl: Path) -> Finals:
    """This daemon's non-empty finals from journald and from ``jsonl``."""
    entries = journal_entries(0.0, 0, _PID=str(pid), DGD_EVENT="transcript")
    journal = [e for e in entries if journal_bool(e["DGD_IS_FINAL"]) and e["MESSAGE"].strip()]
    lines = []
    if jsonl.exists():
        lines = [json.loads(x) for x in jsonl.read_text("utf-8").splitlines() if x.strip()]
    return Finals(journal, [t for t in lines if t["is_final"] is True and t["text"].strip()])


def assert_transcripts_match(
    finals: Finals, truth: Sequence[tuple[float, float]], diag: str
) -> None:
    """One final per utterance in journald and in JSONL, none duplicated, the same in both,
    and every first word within `ONSET_TOLERANCE_S` of the utterance's true onset."""
    journal_spans = [
        (parse_rfc3339(e["DGD_START"]), parse_rfc3339(e["DGD_END"])) for e in finals.journal
    ]
    assert_one_final_per_utterance("journald", journal_spans, truth, diag)
    jsonl_spans = [(parse_rfc3339(t["start"]), parse_rfc3339(t["end"])) for t in finals.jsonl]
    owners = assert_one_final_per_utterance("JSONL", jsonl_spans, truth, diag)
    for item, j in zip(finals.jsonl, owners, strict=True):
        assert item["words"], f"final without words: {item}"
        first_word_s = parse_rfc3339(item["words"][0]["start"])
        onset = truth[j][0]
        assert abs(first_word_s - onset) <= ONSET_TOLERANCE_S, (
            f"utterance {j}: first word at {first_word_s:.3f}, true onset {onset:.3f} "
            f"(off by {first_word_s - onset:+.3f} s)\n{diag}"
        )
    assert [t["text"] for t in finals.jsonl] == [e["MESSAGE"] for e in finals.journal], diag


# ---- the rig ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Placed:
    """An utterance queued on the microphone: stream bytes ``[start, end)``."""

    audio: bytes
    start: int

    @property
    def end(self) -> int:
        """Stream offset just after the utterance."""
        return self.start + len(self.audio)


@dataclass(slots=True)
class FaultRig:
    """One scenario: fake server (with a fault plan), FIFO mic, NOTIFY_SOCKET, the daemon.

    Build it with `fault_rig`. ``mic`` is None until `start_mic` when the scenario starts
    without a microphone.
    """

    tmp: Path
    server: FakeServerProcess
    notify: NotifyListener
    daemon: DaemonProcess
    jsonl: Path
    fifo: Path
    mic: FifoMic | None
    placed: list[Placed] = field(default_factory=list)

    @property
    def record_dir(self) -> Path:
        """Where the server records each connection attempt."""
        return self.server.record_dir

    def start_mic(self) -> FifoMic:
        """Create the FIFO microphone (the device "appears")."""
        assert self.mic is None, "the microphone is already there"
        self.mic = FifoMic(self.fifo)
        return self.mic

    def the_mic(self) -> FifoMic:
        """The microphone (it must exist by now)."""
        assert self.mic is not None, "start_mic() first"
        return self.mic

    def diagnostics(self) -> str:
        """Daemon output, its journal and a summary of the server's attempts (for failures)."""
        attempts = [
            f"attempt {h['attempt']} at {h['t']:.3f}: status {h['status']}"
            for h in handshakes(self.record_dir)
        ]
        closed = [
            f"attempt {c['attempt']} closed at {c['t']:.3f}: {c['code']} by {c['by']}"
            for c in closes(self.record_dir)
        ]
        return (
            self.daemon.output()
            + "\n--- journal ---\n"
            + journal_text(_PID=str(self.daemon.pid))[-12000:]
            + "\n--- server ---\n"
            + "\n".join(attempts + closed)
        )

    def wait_ready(self) -> None:
        """Wait for READY=1 from the daemon."""
        assert self.notify.wait_for("READY=1", READY_TIMEOUT_S), self.diagnostics()

    def play(self, audio: bytes) -> int:
        """Queue raw audio on the microphone; returns its stream offset."""
        return self.the_mic().play(audio)

    def play_utterance(self, audio: bytes, silence_before_s: float) -> Placed:
        """Queue silence then an utterance, and remember where the utterance went."""
        mic = self.the_mic()
        mic.play(silence_s(silence_before_s))
        placed = Placed(audio, mic.play(audio))
        self.placed.append(placed)
        return placed

    def lead_for(self, audio: bytes, hit_at: float, fraction: float = 0.5) -> float:
        """Silence to play first so that ``fraction`` of ``audio`` has been captured (and
        sent, one 100 ms frame later) at wall-clock time ``hit_at``."""
        mic = self.the_mic()
        # Queued audio plays after what is queued already; the chunk being written now is 20 ms.
        starts_at = time.time() + 0.02 + mic.queued_bytes / BYTES_PER_S
        return hit_at - starts_at - fraction * len(audio) / BYTES_PER_S - 0.1

    def wait_written(self, offset: int, timeout_s: float | None = None) -> None:
        """Wait until the microphone has written up to ``offset`` (the daemon must stay up)."""
        mic = self.the_mic()
        if timeout_s is None:
            timeout_s = (offset - mic.bytes_written) / BYTES_PER_S + 30.0
        deadline = time.monotonic() + timeout_s
        while not mic.wait_written(offset, 0.2):
            assert self.daemon.poll() is None, "the daemon exited\n" + self.diagnostics()
            assert time.monotonic() < deadline, "the microphone did not play\n" + self.diagnostics()

    def truth(self) -> list[tuple[float, float]]:
        """True capture times (wall clock) of each placed utterance: first and last sample."""
        mic = self.the_mic()
        return [(mic.capture_time(p.start), mic.capture_time(p.end - 2)) for p in self.placed]

    def stop(self) -> None:
        """SIGTERM the daemon, require a clean exit (0) and wait for its ``stopped`` record
        (its last journal entry, so the journal then holds everything it wrote)."""
        exit_code = self.daemon.terminate(STOP_TIMEOUT_S)
        assert exit_code == 0, f"exit code {exit_code}\n" + self.diagnostics()
        assert self.events("stopped", 10.0, 1), "no `stopped` record\n" + self.diagnostics()

    def events(self, name: str, timeout_s: float = 0.0, n: int = 0) -> list[dict[str, Any]]:
        """This daemon's journal entries with ``DGD_EVENT=name``."""
        return journal_entries(timeout_s, n, _PID=str(self.daemon.pid), DGD_EVENT=name)

    def statuses(self) -> list[tuple[float, str]]:
        """Every ``STATUS=`` the daemon sent: (time received, text)."""
        return [
            (n.t, n.assignment.removeprefix("STATUS="))
            for n in self.notify.notifications
            if n.assignment.startswith("STATUS=")
        ]

    def check_no_audio_lost(self) -> None:
        """Every placed utterance arrived whole on some connection; the daemon dropped
        nothing (its ``stopped`` record says ``dropped_s = 0.0``)."""
        conns = {n: conn_audio(self.record_dir, n) for n in attempt_numbers(self.record_dir)}
        for i, placed in enumerate(self.placed):
            holders = [n for n, raw in conns.items() if placed.audio in raw]
            assert holders, (
                f"utterance {i} ({len(placed.audio)} B) is not whole on any connection; "
                f"connections got {[len(r) for r in conns.values()]} B\n{self.diagnostics()}"
            )
        stopped = self.events("stopped", 10.0, 1)
        assert stopped, "no `stopped` record\n" + self.diagnostics()
        assert float(stopped[-1]["DGD_DROPPED_S"]) == 0.0, stopped[-1]

    def check_transcripts(self) -> None:
        """One final per utterance (journald and JSONL agree), on time, none duplicated."""
        truth = self.truth()
        assert_transcripts_match(
            read_finals(self.daemon.pid, self.jsonl), truth, self.diagnostics()
        )


@contextlib.contextmanager
def fault_rig(
    tmp_path: Path,
    faults: list[dict[str, Any]],
    *,
    stream: StreamConfig = FAST_STREAM,
    mic_present: bool = True,
    watchdog_usec: int | None = None,
    server_key: str = E2E_API_KEY,
    key_file: Path | None = None,
) -> Iterator[FaultRig]:
    """Start the fake server (``faults`` as its plan), the mic (unless ``mic_present`` is
    False: then the PCM's FIFO does not exist yet) and the daemon; tear all down on exit
    (the daemon first: a closed FIFO makes its PCM read garbage).

    ``key_file`` makes the daemon read its key from ``deepgram.api_key_file`` instead of
    ``$DEEPGRAM_API_KEY``.
    """
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps(faults), encoding="utf-8")
    conf = tmp_path / "alsa.conf"
    fifo = tmp_path / "mic.fifo"
    write_alsa_conf(conf, PCM_NAME, fifo)
    jsonl = tmp_path / "transcripts.jsonl"
    config = tmp_path / "dgd.toml"
    with contextlib.ExitStack() as stack:
        server = FakeServerProcess(tmp_path / "server", api_key=server_key, faults=plan)
        stack.callback(server.stop)
        mic: FifoMic | None = None
        if mic_present:
            mic = FifoMic(fifo)
        notify = stack.enter_context(NotifyListener(tmp_path / "notify.sock"))
        write_fault_config(
            config,
            url=server.url,
            device=PCM_NAME,
            jsonl=jsonl,
            stream=stream,
            api_key_file=key_file,
        )
        env = daemon_env(alsa_conf=conf, notify_socket=notify.address)
        if key_file is not None:
            env.pop("DEEPGRAM_API_KEY", None)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        rig: FaultRig | None = None
        try:
            daemon = DaemonProcess(config, env=env, log_dir=tmp_path)
            with daemon:
                rig = FaultRig(tmp_path, server, notify, daemon, jsonl, fifo, mic)
                yield rig
        finally:
            if rig is not None:
                mic = rig.mic
            if mic is not None:
                mic.close()


# ---- secrets ---------------------------------------------------------------------------------


def journal_dump() -> str:
    """Every journal entry there is, as ``journalctl -o json`` text."""
    argv = ["journalctl", "--no-pager", "-o", "json"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def files_containing(root: Path, needle: str) -> list[Path]:
    """Files under ``root`` whose bytes contain ``needle``."""
    raw = needle.encode()
    return [p for p in sorted(root.rglob("*")) if p.is_file() and raw in p.read_bytes()]


def within(times: Sequence[float], lo: float, hi: float) -> list[float]:
    """The times in ``[lo, hi]``."""
    return [t for t in times if lo <= t <= hi]


def fmt_times(times: Sequence[float], origin: float) -> str:
    """Times relative to ``origin``, for messages."""
    return "[" + ", ".join(f"{t - origin:+.2f}" for t in times) + "]"


def fresh_key(label: str) -> str:
    """A unique API key (it must never show up in any log)."""
    return f"dgd-e2e-{label}-{os.urandom(12).hex()}"
