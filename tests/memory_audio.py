"""An in-memory microphone for running the whole daemon in trio's virtual time.

``MemoryMic`` is the device; each opening of it is a ``MemorySource``, the in-memory
implementation of ``dgd.daemon.capture.AudioSource``. Audio the test queues with ``play`` comes out
at real-time pace on trio's clock, one read of ``periods_per_read`` periods at a time, through
the daemon's real pipeline; when nothing is queued the room is quiet (low noise, not digital
silence). The mic can stall (reads stop, the device stays open) and be unplugged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from dgd.daemon.alsadevice import DeviceError, DeviceProblem

if TYPE_CHECKING:
    from dgd.core.pcm import PcmFormat
    from dgd.daemon.capture import SourceSpec

#: Wall-clock time of trio time 0 in these tests: the offset that labels the capture timeline
#: (trio's clock, as the monotonic clock is in the daemon).
WALL0 = 1_700_000_000.0


def tone(fmt: PcmFormat, seconds: float, amplitude: int = 8000) -> bytes:
    """Loud audio (a square wave, about -12 dBFS at 8000): the gate opens on it."""
    n = round(seconds * fmt.rate_hz) * fmt.channels
    return struct.pack(f"<{n}h", *[amplitude if (k // 8) % 2 else -amplitude for k in range(n)])


def quiet(fmt: PcmFormat, n_bytes: int) -> bytes:
    """A quiet room: samples of ±3 (about -80 dBFS), never exact zeros."""
    n = n_bytes // 2
    return struct.pack(f"<{n}h", *[3 if k % 2 else -3 for k in range(n)])


@dataclass
class MemoryMic:
    """The microphone: what every opening of the device reads from."""

    present: bool = True
    stalled: bool = False
    #: Opens, but in another format than the configuration's (``DeviceProblem.FORMAT``).
    wrong_format: bool = False
    openings: list[str] = field(default_factory=list)  # device names, one per opening
    formats: list[PcmFormat] = field(default_factory=list)
    _queued: bytearray = field(default_factory=bytearray)

    def play(self, data: bytes) -> None:
        """Queue audio; it is captured at real-time pace after what is queued before it."""
        self._queued += data

    @property
    def queued_bytes(self) -> int:
        return len(self._queued)

    def open(self, spec: SourceSpec) -> MemorySource:
        """The ``OpenSource`` factory for ``dgd.daemon.app.Daemon``."""
        return MemorySource(self, spec)

    def read(self, n_bytes: int, fmt: PcmFormat) -> bytes:
        data = bytes(self._queued[:n_bytes])
        del self._queued[:n_bytes]
        return data + quiet(fmt, n_bytes - len(data))


class MemorySource:
    """One opening of the ``MemoryMic`` (``dgd.daemon.capture.AudioSource``)."""

    def __init__(self, mic: MemoryMic, spec: SourceSpec) -> None:
        self.device = spec.device
        self.released = trio.Event()
        self._mic = mic
        self._spec = spec
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    async def capture(self) -> None:
        spec, mic = self._spec, self._mic
        fmt, beat = spec.fmt, spec.heartbeat
        try:
            if not mic.present:
                raise DeviceError(self.device, DeviceProblem.MISSING, "No such device")
            if mic.wrong_format:
                raise DeviceError(self.device, DeviceProblem.FORMAT, "it delivers S32_LE")
            mic.openings.append(self.device)
            mic.formats.append(fmt)
            beat.opened_at = trio.current_time()
            beat.opened = True
            spec.on_opened()
            read_s = fmt.period_ms * spec.periods_per_read / 1000
            read_bytes = fmt.period_bytes * spec.periods_per_read
            while not self._stop:
                await trio.sleep(read_s)
                if not mic.present:
                    raise DeviceError(self.device, DeviceProblem.UNPLUGGED, "No such device")
                if mic.stalled:
                    continue
                now = trio.current_time()
                output = spec.pipeline.feed(mic.read(read_bytes, fmt), now)
                beat.last_period_at = now
                if output:
                    spec.deliver(output)
            tail = spec.pipeline.flush()
            if tail:
                spec.deliver(tail)
        finally:
            beat.opened = False
            self.released.set()
