"""`dgd demo`, and the paced FIFO "microphone" that the demo and the end-to-end tests use.

Without a sound card, alsa-lib can still capture: a ``type file`` PCM over the ``null`` slave
reads its samples from ``infile`` (testing.md §2). Make that infile a FIFO, write audio into it
at real-time pace, and the daemon captures through real alsa-lib exactly as from a microphone,
with read() blocking until the next period arrives. `FifoMic` is that writer; `run_demo` wires
it to the fake Deepgram server and a real `dgd run` process and plays the bundled sample.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: POSIX guarantees writes of at most PIPE_BUF (4096 on Linux) bytes to a pipe are atomic,
#: so the reader never sees half a chunk (testing.md §2: partial periods corrupt the stream).
MAX_WRITE_BYTES: Final = 4096
SAMPLE_WIDTH_BYTES: Final = 2
#: How often the writer re-checks for a reader, for `close()`, and for a full pipe to drain.
_POLL_S: Final = 0.01
#: Demo timings. The daemon needs a moment to import and open the device; 20 s is generous
#: for a Pi Zero 2 W. Shutdown waits stream.close_timeout_s (5 s default) for the finals.
_SERVER_START_TIMEOUT_S: Final = 20.0
_DAEMON_OPEN_TIMEOUT_S: Final = 20.0
_DAEMON_STOP_TIMEOUT_S: Final = 15.0
_LISTENING_RE: Final = re.compile(r"listening on (ws://\S+)")
DEMO_API_KEY: Final = "demo-key"
DEMO_PCM_NAME: Final = "dgddemo"


def write_alsa_conf(path: Path, pcm_name: str, infile: Path) -> None:
    """Write an alsa-lib config defining ``pcm_name`` as a capture PCM that reads ``infile``.

    The PCM is ``type file`` over the ``null`` slave with ``format "raw"``: bytes come from
    ``infile`` unchanged, so it must already be in the format the reader opens (no ``plug``
    conversion is faithful here). ``file "/dev/null"`` is required by alsa-lib even for capture.

    Args:
        path: where to write the config (point ``ALSA_CONFIG_PATH`` at it, see `alsa_config_path`).
        pcm_name: the PCM name to define, i.e. the value of ``audio.device``.
        infile: absolute path of the raw audio file or FIFO to read.
    """
    infile = infile.resolve()
    path.write_text(
        f"# Written by dgd.demo: capture from {infile} through alsa-lib's file plugin.\n"
        f"pcm.{pcm_name} {{\n"
        "    type file\n"
        '    slave.pcm "null"\n'
        '    file "/dev/null"\n'
        f"    infile {json.dumps(str(infile))}\n"
        '    format "raw"\n'
        "}\n",
        encoding="utf-8",
    )


def alsa_config_path(conf: Path) -> str:
    """The ``ALSA_CONFIG_PATH`` value that loads alsa.conf (for ``null``) and then ``conf``."""
    return "/usr/share/alsa/alsa.conf:" + str(conf.resolve())


class FifoMic:
    """A paced microphone: a FIFO that a writer thread fills with audio at real-time pace.

    The stream is one endless sequence of bytes: whatever `play` queued, and digital silence
    (zeros) whenever the queue is empty, so the reader never runs past the data (reading past
    the end of an alsa ``file`` infile yields garbage, testing.md §2). Every ``write()`` is a
    whole number of periods and at most 4096 bytes.

    Pacing follows a sound card: a chunk is written once the audio in it "has happened", i.e.
    the chunk ending at stream offset ``e`` is written at ``base + e / (bytes_per_s * speed)``.
    Deadlines are absolute, so sleeping late never accumulates drift. If the reader does not
    keep up, the pipe fills and the writer waits (no audio is dropped) and then catches up.

    `timeline` records, for every chunk, ``(offset of its first byte, time.time() just before
    the successful write)``; `capture_time` turns any byte offset into the wall-clock time at
    which that sample was "captured". If the reader goes away (EPIPE), the writer keeps the
    pipe open and retries the chunk until a new reader opens the FIFO, so a daemon that reopens
    its device continues exactly where it left off.

    Args:
        path: where to create the FIFO (must not exist).
        rate_hz, channels: the stream format (S16_LE); the reader must open the same.
        period_frames: the reader's ALSA period size; writes are whole periods.
        chunk_periods: periods per write (``chunk_periods * period bytes`` must be <= 4096);
            the default, 5 (100 ms at 16 kHz), is one read of the daemon (capture.MAX_READ_MS).
        speed: pacing factor; 1.0 is real time, 2.0 twice as fast.
    """

    def __init__(
        self,
        path: Path,
        *,
        rate_hz: int = 16000,
        channels: int = 1,
        period_frames: int = 320,
        chunk_periods: int = 5,
        speed: float = 1.0,
    ) -> None:
        self.period_bytes: Final = period_frames * channels * SAMPLE_WIDTH_BYTES
        self.chunk_bytes: Final = chunk_periods * self.period_bytes
        if chunk_periods < 1 or self.chunk_bytes > MAX_WRITE_BYTES:
            raise ValueError(
                f"FifoMic: chunk_periods={chunk_periods} x {self.period_bytes} B per period must "
                f"be 1..{MAX_WRITE_BYTES} B so each write is atomic; use fewer periods per write"
            )
        if speed <= 0:
            raise ValueError(f"FifoMic: speed must be > 0, got {speed}")
        self.path: Final = path
        self.bytes_per_s: Final = rate_hz * channels * SAMPLE_WIDTH_BYTES
        self.speed: Final = speed
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._pending = bytearray()  # queued by play(); always whole periods
        self._assigned = 0  # stream offset after the last chunk the writer has taken
        self._written = 0  # stream offset after the last chunk actually written
        self._offsets: list[int] = []
        self._times: list[float] = []
        self._stall_until_mono = 0.0
        self._readers_seen = 0
        self._connected = False  # the writer holds an open write end
        self._reader_present = False  # a reader has the FIFO open (as far as writes tell)
        self.error: BaseException | None = None
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._run, name=f"FifoMic({path.name})", daemon=True)
        self._thread.start()

    # ---- the caller's side -------------------------------------------------------------

    def play(self, data: bytes) -> int:
        """Queue ``data`` (zero-padded to whole writes) and return its stream offset.

        The offset is exact: audio queued earlier plays first, and silence fills only the time
        when the queue is empty, so ``returned offset + i`` is where byte ``i`` of ``data`` goes.
        Every write is a whole chunk: a short one would make the reader's whole-period read
        come up short, and alsa-lib's ``file`` plugin then returns the period anyway, its rest
        being stale memory (on Python 3.13, loud enough to open the gate).
        """
        padded = bytes(data) + bytes(-len(data) % self.chunk_bytes)
        with self._lock:
            start = self._assigned + len(self._pending)
            self._pending += padded
            return start

    def stall(self, seconds: float) -> None:
        """Stop writing for ``seconds`` starting now (a stuck microphone); returns at once.

        After the stall the schedule restarts from the end of the stall: the audio that was
        due during it is delayed, not bunched up, like a device that froze and recovered.
        """
        with self._lock:
            self._stall_until_mono = time.monotonic() + seconds

    def wait_reader(self, timeout_s: float, *, present: bool = True) -> bool:
        """Wait until a reader has the FIFO open (the daemon opened its PCM); True if so.

        With ``present=False``, wait until the writer has found that the reader closed it
        (a write failed with EPIPE) instead.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._reader_present != present and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return self._reader_present == present

    @contextlib.contextmanager
    def reader_placeholder(self, timeout_s: float = 5.0) -> Iterator[None]:
        """Hold the FIFO open for reading while a reader in *this* process opens its PCM.

        pyalsaaudio keeps the GIL while alsa-lib's open() of the infile blocks for a writer,
        so in one process the writer thread could never run and the open would hang. With a
        placeholder read end open, the writer connects first and the PCM's open returns at
        once. Open the PCM inside the ``with``; the placeholder never reads.

        Raises:
            TimeoutError: the writer thread did not connect within ``timeout_s``.
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not self._wait_connected(timeout_s):
                raise TimeoutError(f"FifoMic: the writer did not open {self.path} in {timeout_s} s")
            yield
        finally:
            os.close(fd)

    def _wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._connected and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return self._connected

    def wait_written(self, offset: int, timeout_s: float) -> bool:
        """Wait until every byte before stream ``offset`` has been written; True if so."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._written < offset and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return self._written >= offset

    @property
    def bytes_written(self) -> int:
        """Bytes written to the FIFO so far (the stream offset of the next write)."""
        with self._lock:
            return self._written

    @property
    def queued_bytes(self) -> int:
        """Bytes queued by `play` and not yet taken by the writer."""
        with self._lock:
            return len(self._pending)

    @property
    def readers_seen(self) -> int:
        """How many readers the writer has served (a reader that closes and reopens the FIFO
        before the writer's next write counts once)."""
        with self._lock:
            return self._readers_seen

    @property
    def timeline(self) -> list[tuple[int, float]]:
        """``(stream offset of a chunk's first byte, time.time() as it was written)``, in order."""
        with self._lock:
            return list(zip(self._offsets, self._times, strict=True))

    def capture_time(self, offset: int) -> float:
        """Wall-clock time (``time.time()``) at which the sample at stream ``offset`` was captured.

        A chunk is written when its last sample has happened, so a byte ``k`` bytes before the
        end of its chunk was captured ``k / bytes_per_s / speed`` seconds before the write.

        Raises:
            ValueError: ``offset`` has not been written yet (or is negative).
        """
        with self._lock:
            if not 0 <= offset < self._written:
                raise ValueError(
                    f"FifoMic.capture_time: offset {offset} is outside the {self._written} "
                    "bytes written so far; wait_written() first"
                )
            k = bisect.bisect_right(self._offsets, offset) - 1
            end = self._offsets[k + 1] if k + 1 < len(self._offsets) else self._written
            return self._times[k] - (end - offset) / (self.bytes_per_s * self.speed)

    def close(self) -> None:
        """Stop the writer, close the FIFO (the reader then sees EOF) and remove it.

        Stop the reading daemon first: after EOF an alsa ``file`` PCM returns garbage.

        Raises:
            the writer thread's exception, if it died of one.
        """
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> FifoMic:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        fd = -1
        try:
            fd = self._open_for_reader()
            base_mono = time.monotonic()
            since_base = 0  # bytes scheduled since base_mono
            rate = self.bytes_per_s * self.speed
            while fd >= 0 and not self._stop.is_set():
                with self._lock:
                    offset = self._assigned
                    if self._pending:
                        chunk = bytes(self._pending[: self.chunk_bytes])
                        del self._pending[: self.chunk_bytes]
                    else:
                        chunk = bytes(self.chunk_bytes)
                    self._assigned += len(chunk)
                since_base += len(chunk)
                if self._stop.wait(max(0.0, base_mono + since_base / rate - time.monotonic())):
                    break
                with self._lock:
                    stall_until, self._stall_until_mono = self._stall_until_mono, 0.0
                if stall_until > time.monotonic():
                    if self._stop.wait(stall_until - time.monotonic()):
                        break
                    base_mono, since_base = time.monotonic(), 0
                self._write_chunk(fd, offset, chunk)
        except OSError as exc:
            self.error = exc
        finally:
            if fd >= 0:
                os.close(fd)
            with self._changed:
                self._connected = self._reader_present = False
                self._changed.notify_all()

    def _open_for_reader(self) -> int:
        """Open the FIFO for writing once a reader has it open; -1 if closed meanwhile."""
        while not self._stop.is_set():
            try:
                # O_NONBLOCK: fails with ENXIO while there is no reader (so close() is never
                # stuck in open()), and makes a write to a full pipe fail instead of blocking.
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                self._stop.wait(_POLL_S)
                continue
            with self._changed:
                self._readers_seen += 1
                self._connected = self._reader_present = True
                self._changed.notify_all()
            return fd
        return -1

    def _write_chunk(self, fd: int, offset: int, chunk: bytes) -> None:
        """Write one chunk atomically, waiting for room or for a reader (or for `close`)."""
        reader_lost = False
        while not self._stop.is_set():
            # Stamp before writing: once written, the reader may return before we could stamp.
            now = time.time()
            try:
                os.write(fd, chunk)  # <= PIPE_BUF on a pipe: all or nothing
            except BlockingIOError:
                select.select([], [fd], [], _POLL_S)  # the reader is behind: wait for room
                continue
            except BrokenPipeError:
                # The reader closed its PCM. Keep our write end open, so the pipe (and any
                # audio still in it) survives, and retry until a reader opens it again.
                if not reader_lost:
                    reader_lost = True
                    with self._changed:
                        self._reader_present = False
                        self._changed.notify_all()
                self._stop.wait(_POLL_S)
                continue
            with self._changed:
                self._readers_seen += reader_lost
                self._reader_present = True
                self._offsets.append(offset)
                self._times.append(now)
                self._written = offset + len(chunk)
                self._changed.notify_all()
            return


# ---- the demo ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleUtterance:
    """One spoken sentence of the bundled sample: bytes ``[start_byte, end_byte)``."""

    index: int
    text: str
    start_byte: int
    end_byte: int


def load_sample() -> tuple[bytes, list[SampleUtterance]]:
    """The bundled sample (16 kHz mono S16_LE) and its ground-truth utterances."""
    data = resources.files("dgd").joinpath("data/sample.raw").read_bytes()
    meta = json.loads(resources.files("dgd").joinpath("data/sample.json").read_text("utf-8"))
    utterances = [
        SampleUtterance(int(u["index"]), str(u["text"]), int(u["start_byte"]), int(u["end_byte"]))
        for u in meta["utterances"]
    ]
    return data, utterances


class FakeServerProcess:
    """``python -m dgd fake-server`` as a subprocess, bound to 127.0.0.1 on a free port.

    Args:
        record_dir: where the server records each connection (``conn-NNNN.raw``/``.jsonl``).
        api_key: the key the server accepts (None: the server's default policy).
        faults: optional fault script passed as ``--faults``.
        env: environment for the server process.
    """

    def __init__(
        self,
        record_dir: Path,
        *,
        api_key: str | None = None,
        faults: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.record_dir: Final = record_dir
        record_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dgd", "fake-server", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--record-dir", str(record_dir)]
        if api_key is not None:
            argv += ["--api-key", api_key]
        if faults is not None:
            argv += ["--faults", str(faults)]
        self.process: Final = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env=env if env is not None else package_env()
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []  # everything the server printed on stdout
        threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True).start()
        self.url: Final = self._wait_listening(_SERVER_START_TIMEOUT_S)
        self.port: Final = int(self.url.split(":")[2].split("/")[0])

    def _drain(self, stream: IO[str] | None) -> None:
        # Keep reading so the server never blocks on a full stdout pipe.
        if stream is None:
            self._lines.put(None)
            return
        for line in stream:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_listening(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if match := _LISTENING_RE.search(line):
                return match.group(1)
        self.stop()
        raise RuntimeError(
            f"`dgd fake-server` did not print 'listening on ws://...' within {timeout_s:.0f} s "
            f"(exit code {self.process.poll()}; its stderr is above); check that `python -m dgd "
            "fake-server` runs"
        )

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM the server and wait; SIGKILL if it does not stop. Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def records(self) -> list[dict[str, Any]]:
        """Every record the server wrote so far; see `server_records`."""
        return server_records(self.record_dir)

    def received_audio(self) -> bytes:
        """All audio the server received so far; see `server_audio`."""
        return server_audio(self.record_dir)


def server_records(record_dir: Path) -> list[dict[str, Any]]:
    """The fake server's records (``conn-NNNN.jsonl``), connection by connection, in order.

    Each record gets ``"conn"``: the 1-based position of its connection's file.
    """
    out: list[dict[str, Any]] = []
    for n, path in enumerate(sorted(record_dir.glob("conn-*.jsonl")), start=1):
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                out.append({**json.loads(line), "conn": n})
    return out


def server_audio(record_dir: Path) -> bytes:
    """Every binary payload the fake server received (``conn-NNNN.raw``), concatenated in order."""
    return b"".join(path.read_bytes() for path in sorted(record_dir.glob("conn-*.raw")))


def package_env(**extra: str) -> dict[str, str]:
    """This environment plus ``extra``, with dgd importable by a ``python -m dgd`` child."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def write_demo_config(path: Path, *, url: str, device: str, jsonl: Path) -> None:
    """The daemon config of the demo: the fake server, the FIFO mic, a JSONL transcript file."""
    path.write_text(
        "# Written by `dgd demo`.\n"
        "[deepgram]\n"
        f"url = {json.dumps(url)}\n"
        "[audio]\n"
        f"device = {json.dumps(device)}\n"
        "rate = 16000\nchannels = 1\nperiod_ms = 20\n"
        "[gate]\n"
        'mode = "energy"\n'
        "threshold_dbfs = -50.0\n"  # the sample's pauses are digital silence
        "[stream]\n"
        "frame_ms = 100\n"
        "[output]\n"
        "journald = false\n"
        f"jsonl = {json.dumps(str(jsonl))}\n",
        encoding="utf-8",
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _stop_daemon(daemon: subprocess.Popen[bytes], timeout_s: float) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout_s)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return daemon.returncode


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="dgd-demo-") as tmp:
        yield Path(tmp)


def run_demo(
    seconds: float | None = None, keep: Path | None = None, out: TextIO = sys.stdout
) -> int:
    """Run the daemon against the fake server on the bundled sample; print what it wrote.

    Args:
        seconds: play only the first ``seconds`` of the sample (None: all of it).
        keep: keep every file (configs, FIFO recordings, transcripts) in this directory.
        out: where the transcripts and the summary go (the daemon logs to stderr).

    Returns:
        0 if the daemon exited 0 and at least one final transcript arrived, else 1.
    """
    sample, utterances = load_sample()
    if seconds is not None:
        bps = 16000 * SAMPLE_WIDTH_BYTES
        sample = sample[: max(0, int(seconds * bps)) // SAMPLE_WIDTH_BYTES * SAMPLE_WIDTH_BYTES]
        utterances = [u for u in utterances if u.end_byte <= len(sample)]
    with _workdir(keep) as work:
        conf, fifo, jsonl = work / "alsa.conf", work / "mic.fifo", work / "transcripts.jsonl"
        for stale in (fifo, jsonl):
            stale.unlink(missing_ok=True)
        write_alsa_conf(conf, DEMO_PCM_NAME, fifo)
        server = FakeServerProcess(work / "server", api_key=DEMO_API_KEY)
        mic = FifoMic(fifo)
        try:
            write_demo_config(work / "demo.toml", url=server.url, device=DEMO_PCM_NAME, jsonl=jsonl)
            env = package_env(
                ALSA_CONFIG_PATH=alsa_config_path(conf), DEEPGRAM_API_KEY=DEMO_API_KEY
            )
            argv = [sys.executable, "-m", "dgd", "run", "-c", str(work / "demo.toml")]
            daemon = subprocess.Popen([*argv, "--log-target", "stderr"], env=env)
            try:
                _play(daemon, mic, sample, out)
            finally:
                exit_code = _stop_daemon(daemon, _DAEMON_STOP_TIMEOUT_S)
        finally:
            mic.close()
            server.stop()
        transcripts = [t for t in read_jsonl(jsonl) if t.get("is_final")]
        for t in transcripts:
            out.write(f"{t.get('start')}  {t.get('text')!s}  (confidence {t.get('confidence')})\n")
        keepalives = sum(
            1
            for r in server_records(server.record_dir)
            if r.get("kind") == "text" and "KeepAlive" in str(r.get("text"))
        )
        out.write(
            f"dgd demo: {len(utterances)} utterances in the sample, {len(transcripts)} final "
            f"transcripts received, {keepalives} KeepAlives seen by the server, "
            f"daemon exit code {exit_code}"
            + (f"; files kept in {work}" if keep is not None else "")
            + "\n"
        )
        return 0 if exit_code == 0 and transcripts else 1


def _play(daemon: subprocess.Popen[bytes], mic: FifoMic, sample: bytes, out: TextIO) -> None:
    """Play ``sample`` once the daemon has opened the mic; return early if the daemon dies."""
    deadline = time.monotonic() + _DAEMON_OPEN_TIMEOUT_S
    while not mic.wait_reader(0.1):
        if daemon.poll() is not None or time.monotonic() > deadline:
            out.write(
                "dgd demo: the daemon did not open the audio device "
                f"(exit code {daemon.poll()}); see its log above\n"
            )
            return
    end = mic.play(sample) + len(sample)
    out.write(f"dgd demo: playing {len(sample) / 32000:.1f} s of speech and silence...\n")
    out.flush()
    while not mic.wait_written(end, 0.1):
        if daemon.poll() is not None:
            out.write(f"dgd demo: the daemon exited early with code {daemon.poll()}\n")
            return


def main(argv: Sequence[str] | None = None) -> int:
    """``dgd demo [--seconds N] [--keep DIR]``: see `run_demo`. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="dgd demo",
        description="Run dgd against a local fake Deepgram server on a bundled spoken sample "
        "(no microphone, no network, no API key needed).",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="play only the first N seconds of the sample"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep all files of the run in DIR")
    args = parser.parse_args(argv)
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be > 0")
    return run_demo(seconds=args.seconds, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
