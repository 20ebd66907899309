"""Audio capture: an ALSA PCM read in a worker thread, periods gated before trio sees them.

Who owns the PCM, and how it is let go (issue 8; README "How it is built"):

- One ``CaptureThread`` is one opening of the device. Its worker thread opens the PCM, reads
  it and closes it; no other thread ever touches that PCM (pyalsaaudio does not survive a
  ``close()`` under a ``read()``).
- The PCM is non-blocking and waited for with ``poll`` for at most two reads' time, so the
  thread sees a stop request within a fraction of a second even when the device delivers
  nothing (a stalled clock, a hung USB device): ``stop()`` makes it hand over what it read,
  close the PCM and end, and ``released`` is set once the PCM is closed.
- At most one capture thread exists at a time: the app opens the device again only after the
  previous thread has released it. So a reopen never fails with "Device or resource busy"
  because of dgd's own stale thread. If a thread does not end (stuck inside alsa-lib or the
  driver, which nothing in-process can interrupt), the app stops petting the watchdog and
  systemd restarts dgd (``dgd.core.health``).

The read loop is ``dgd.daemon.alsadevice.read_stream``, shared with ``dgd levels``: read,
wait in ``poll``, classify errors, report overruns. The capture thread runs each read through
the ``CapturePipeline`` and hands only what must travel on (frames, Finalize markers, notices)
to trio with ``TrioToken.run_sync_soon``: in gated silence trio is not woken at all. A
heartbeat (the monotonic time of the last audio) tells the watchdog and the stall monitor that
audio is moving.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from dgd.daemon.alsadevice import open_pcm, read_stream

if TYPE_CHECKING:
    from dgd.core.events import PipelineOutput
    from dgd.core.pcm import PcmFormat
    from dgd.core.pipeline import CapturePipeline

log = logging.getLogger("dgd.capture")

#: trio 0.23 renamed ``cancellable`` to ``abandon_on_cancel``; Debian 12 ships trio 0.22.
_ABANDON_KEYWORD: Final = (
    "abandon_on_cancel"
    if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
    else "cancellable"
)


async def run_abandonable(fn: Callable[[], None]) -> None:
    """Run ``fn()`` in a worker thread; on cancellation return at once, leaving it running.

    Only a thread stuck inside alsa-lib is ever abandoned this way: the capture thread ends by
    itself within a fraction of a second of ``CaptureThread.stop()``.
    """
    keyword: dict[str, bool] = {_ABANDON_KEYWORD: True}
    await trio.to_thread.run_sync(fn, **keyword)  # type: ignore[arg-type]


@dataclass(slots=True)
class Heartbeat:
    """Written by the (one) capture thread, read by trio tasks (attribute reads are atomic)."""

    last_period_at: float = 0.0  # time.monotonic() of the last audio read; 0 = none yet
    opened_at: float = 0.0  # time.monotonic() of the last successful open
    opened: bool = False


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What an audio source needs for one opening of the device.

    Attributes:
        device: the ALSA PCM name.
        fmt: the capture format.
        pipeline: assembly, gate and framing (shared across openings, one source at a time).
        deliver: called in trio with each non-empty batch of pipeline output; must not block
            or raise.
        on_opened: called in trio once the device is open.
        heartbeat: updated after every read.
        periods_per_read: gate periods in one read (see ``read_periods``).
    """

    device: str
    fmt: PcmFormat
    pipeline: CapturePipeline
    deliver: Callable[[list[PipelineOutput]], None]
    on_opened: Callable[[], None]
    heartbeat: Heartbeat
    periods_per_read: int = 1


class AudioSource(Protocol):
    """The audio-source port: one opening of a device, from open to release.

    The ALSA capture thread is one implementation (``open_alsa``); tests use an in-memory one
    that runs in trio's virtual time.
    """

    device: str
    #: Set once the device is released (closed, or never opened).
    released: trio.Event

    async def capture(self) -> None:
        """Open the device and capture until ``stop()``; hand over the rest; release it.

        Raises:
            DeviceError: the device could not be opened or failed while capturing.
        """

    def stop(self) -> None:
        """Ask ``capture`` to finish soon (it hands over what it has read first)."""


#: Makes the source for one opening.
OpenSource = Callable[[SourceSpec], AudioSource]


def open_alsa(spec: SourceSpec) -> CaptureThread:
    """The ALSA implementation of ``AudioSource`` for ``spec`` (call in trio)."""
    return CaptureThread(
        device=spec.device,
        fmt=spec.fmt,
        pipeline=spec.pipeline,
        deliver=spec.deliver,
        on_opened=spec.on_opened,
        heartbeat=spec.heartbeat,
        trio_token=trio.lowlevel.current_trio_token(),
        periods_per_read=spec.periods_per_read,
    )


class CaptureThread:
    """The body of one capture thread, one opening of the device: open, read/gate/deliver
    until told to stop, hand over the rest, close.

    Args:
        device: the ALSA PCM name.
        fmt: the capture format.
        pipeline: assembly, gate and framing (shared across openings, one thread at a time).
        deliver: called in trio, with each non-empty batch of pipeline output (outside any
            task, via ``TrioToken.run_sync_soon``: it must not block or raise).
        on_opened: called in trio once the PCM is open.
        heartbeat: updated after every read.
        trio_token: the run to deliver into.
        periods_per_read: gate periods in one ALSA read (see ``read_periods``).
    """

    def __init__(
        self,
        *,
        device: str,
        fmt: PcmFormat,
        pipeline: CapturePipeline,
        deliver: Callable[[list[PipelineOutput]], None],
        on_opened: Callable[[], None],
        heartbeat: Heartbeat,
        trio_token: trio.lowlevel.TrioToken,
        periods_per_read: int = 1,
    ) -> None:
        self.device = device
        self.periods_per_read = periods_per_read
        self.fmt = fmt
        self.pipeline = pipeline
        self._deliver = deliver
        self._on_opened = on_opened
        self.heartbeat = heartbeat
        self._token = trio_token
        self.stop_requested = threading.Event()
        #: Set (in trio) once this thread has closed its PCM, or failed to open it.
        self.released = trio.Event()

    def stop(self) -> None:
        """Ask the thread to hand over what it has read, close the PCM and end (it sees the
        request within two reads' time unless it is stuck inside alsa-lib)."""
        self.stop_requested.set()

    async def capture(self) -> None:
        """Run the thread (``run``) and wait for it; on cancellation, abandon it."""
        await run_abandonable(self.run)

    def run(self) -> None:
        """Capture until ``stop()`` (in a worker thread).

        Raises:
            DeviceError: the device could not be opened or failed while reading.
        """
        try:
            pcm = open_pcm(self.device, self.fmt, self.periods_per_read)
            try:
                self.heartbeat.opened_at = time.monotonic()
                self.heartbeat.opened = True
                self._call_trio(self._on_opened)
                self._read_loop(pcm)
            finally:
                self.heartbeat.opened = False
                pcm.close()
        finally:
            self._call_trio(self.released.set)

    def _read_loop(self, pcm: Any) -> None:
        read_s = self.fmt.period_ms * self.periods_per_read / 1000
        read_stream(pcm, self.device, read_s, self.stop_requested, self._on_read, self._on_overrun)
        tail = self.pipeline.flush()
        if tail:
            self._call_trio(self._deliver, tail)

    def _on_read(self, data: bytes, read_done_s: float) -> None:
        output = self.pipeline.feed(data, read_done_s)
        self.heartbeat.last_period_at = time.monotonic()
        if output:
            self._call_trio(self._deliver, output)

    def _on_overrun(self, at_s: float) -> None:
        self._call_trio(self._deliver, self.pipeline.overrun(at_s))

    def _call_trio(self, fn: Callable[..., None], *args: object) -> None:
        # run_sync_soon queues the call and returns: the capture thread never waits for the
        # event loop (from_thread.run_sync's round trip was a fifth of the daemon's CPU while
        # streaming). Calls from this thread run in order. ``fn`` must not raise: the app's
        # callbacks only queue items, log and notify.
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            self.stop_requested.set()
