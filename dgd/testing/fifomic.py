"""The paced FIFO "microphone" that the demo, the end-to-end tests and the benchmarks use.

Without a sound card, alsa-lib can still capture: a ``type file`` PCM over the ``null`` slave
reads its samples from ``infile``. Make that infile a FIFO, write audio into it at real-time
pace, and the daemon captures through real alsa-lib exactly as from a microphone, with read()
blocking until the next period arrives. ``FifoMic`` is that writer; ``write_alsa_conf`` defines
the PCM.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: POSIX guarantees writes of at most PIPE_BUF (4096 on Linux) bytes to a pipe are atomic,
#: so the reader never sees half a chunk (docs/TESTING.md: partial reads corrupt the stream).
MAX_WRITE_BYTES: Final = 4096
SAMPLE_WIDTH_BYTES: Final = 2
#: How often the writer re-checks for a reader, for `close()`, and for a full pipe to drain.
_POLL_S: Final = 0.01


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
        f"# Written by dgd.tools.demo: capture from {infile} through alsa-lib's file plugin.\n"
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
    the end of an alsa ``file`` infile yields garbage, docs/TESTING.md). Every ``write()`` is a
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
