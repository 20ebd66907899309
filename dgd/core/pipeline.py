"""The per-period path from an ALSA read to outbox items: assemble, stamp, measure, gate, frame.

``CapturePipeline.feed`` is called once per ALSA read, in the capture thread, so that gate
decisions are made before anything is handed to trio: gated silence then costs the event loop
nothing (keep-alives aside), and speech reaches trio in frames of ``stream.frame_ms`` rather
than one wake-up per period.

Capture is a byte stream: a kernel device read without blocking returns whatever is ready
(sizes seen on a real card in 6 s: 128 B, 3072 B and 3200 B for 3200 B periods), so reads
are joined into whole periods in order and nothing the device delivered is dropped. Only the
kernel's own losses (an overrun) and bytes that cannot be sample frames break the stream.
This module does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dgd.core.events import (
    AudioFrame,
    DigitalSilence,
    FinalizeMarker,
    GateClosed,
    GateOpened,
    InvalidBuffer,
    Overrun,
    Period,
    PipelineOutput,
    SignalReturned,
)
from dgd.core.gate import Gate, GateMode
from dgd.core.pcm import PcmFormat, is_digital_silence, level_dbfs
from dgd.core.timemap import CONTIGUOUS_TOLERANCE_S

if TYPE_CHECKING:
    from dgd.core.config import Config

#: A read can return late by up to the ALSA buffer (dgd.daemon.alsadevice.ALSA_BUFFER_MS, 500 ms)
#: without losing audio: later than that, or this much earlier than the schedule, samples are
#: missing (a stall that delivered nothing, a lost overrun) and the clock re-anchors.
MAX_READ_LATENESS_S: Final = 0.6
#: The schedule follows the device's sample clock against the system clock over windows of
#: this length: the earliest read of a window was on time, so its lateness is drift. USB
#: devices differ from the system clock by up to a few hundred ppm: 300 ppm is 3 ms a window.
DRIFT_WINDOW_S: Final = 10.0
#: Exact zeros for this long are reported once as digital silence (muted mixer, dead input).
DIGITAL_SILENCE_REPORT_S: Final = 5.0


class CaptureClock:
    """Assigns a capture time on the monotonic clock to each period.

    The audio itself is the timeline: period ``n`` after the anchor starts at
    ``anchor + n·period``. The first sample of a read of ``n`` periods was captured ``n``
    periods before the read returned, or earlier if the read returned late (the capture thread
    was not scheduled; ALSA kept the audio in its buffer). Lateness never moves the times: an
    observation later than the schedule is ignored, one earlier than it moves the anchor back
    (that read was more punctual than the one the anchor came from). Over each
    ``DRIFT_WINDOW_S`` the smallest lateness seen is the device clock's drift and moves the
    anchor forward. Only missing samples re-anchor (``MAX_READ_LATENESS_S``, an overrun, a
    reopen: ``reset``). The wall clock plays no part: it only labels results, at the sinks.
    """

    def __init__(self, period_s: float) -> None:
        self._period_s = period_s
        self._window_periods = max(1, round(DRIFT_WINDOW_S / period_s))
        self._anchor_s: float | None = None
        self._count = 0  # periods since the anchor: anchor + n·period avoids summing rounding
        self._window_end = 0  # count at which the current drift window ends
        self._window_min_late_s = math.inf

    def stamp(self, read_done_s: float, periods: int = 1) -> float:
        """Return the capture start time of the first of ``periods`` periods whose read
        finished at monotonic time ``read_done_s``; the others follow at one period each."""
        observed_s = read_done_s - periods * self._period_s
        if self._anchor_s is None:
            return self._start(observed_s, periods)
        expected_s = self._anchor_s + self._count * self._period_s
        late_s = observed_s - expected_s
        if abs(late_s) > MAX_READ_LATENESS_S:
            return self._start(observed_s, periods)
        if late_s < 0:
            self._anchor_s += late_s
            expected_s = observed_s
            late_s = 0.0
        self._window_min_late_s = min(self._window_min_late_s, late_s)
        self._count += periods
        if self._count >= self._window_end:
            self._anchor_s += self._window_min_late_s
            self._window_min_late_s = math.inf
            self._window_end = self._count + self._window_periods
        return expected_s

    def _start(self, observed_s: float, periods: int) -> float:
        self._anchor_s = observed_s
        self._count = periods
        self._window_end = periods + self._window_periods
        self._window_min_late_s = math.inf
        return observed_s

    def start_of(self, first_s: float, index: int) -> float:
        """Capture time of period ``index`` of a read stamped ``first_s``."""
        return first_s + index * self._period_s

    def reset(self) -> None:
        """Forget continuity (lost samples, or the device was reopened)."""
        self._anchor_s = None


@dataclass(frozen=True, slots=True)
class CaptureStatistics:
    """Audio captured so far, by one pipeline or several added with ``+``.

    Attributes:
        captured_s: seconds of audio gated (every whole period, and a last partial one).
        gated_s: of those, seconds not sent (pre-roll that was sent on opening is sent).
        invalid_buffers: reads that were not whole sample frames (never sent).
        overruns: times the kernel lost audio before a read.
    """

    captured_s: float = 0.0
    gated_s: float = 0.0
    invalid_buffers: int = 0
    overruns: int = 0

    def __add__(self, other: CaptureStatistics) -> CaptureStatistics:
        return CaptureStatistics(
            captured_s=self.captured_s + other.captured_s,
            gated_s=self.gated_s + other.gated_s,
            invalid_buffers=self.invalid_buffers + other.invalid_buffers,
            overruns=self.overruns + other.overruns,
        )


class CapturePipeline:
    """Validate, stamp, measure and gate periods; assemble forwarded periods into frames.

    Args:
        fmt: the capture format.
        gate: the silence gate (owned by this pipeline from now on).
        frame_ms: audio per outgoing frame; a whole number of periods.
    """

    def __init__(self, fmt: PcmFormat, gate: Gate[Period], frame_ms: int) -> None:
        self.fmt = fmt
        self.gate = gate
        self._invalid_buffers = 0
        self._overruns = 0
        #: Send Finalize when the gate closes; False in shadow mode, where nothing is gated.
        self.finalize_on_close = True
        self._clock = CaptureClock(fmt.period_ms / 1000)
        self._frame_bytes = fmt.period_bytes * max(1, frame_ms // fmt.period_ms)
        self._pending: list[Period] = []
        self._pending_bytes = 0
        #: The start of a period whose first bytes have arrived but not the rest (reads are
        #: not whole periods on kernel devices), and its capture time.
        self._partial = b""
        self._partial_start_s = 0.0
        self._zeros_since_s: float | None = None
        self._zeros_reported = False

    def statistics(self) -> CaptureStatistics:
        """What this pipeline has captured (the gate counts the periods)."""
        gate = self.gate.statistics()
        period_s = self.fmt.period_ms / 1000
        return CaptureStatistics(
            captured_s=gate.periods_in * period_s,
            gated_s=gate.periods_gated * period_s,
            invalid_buffers=self._invalid_buffers,
            overruns=self._overruns,
        )

    def set_frame_ms(self, frame_ms: int) -> None:
        """Change the frame size (config reload); takes effect with the next frame."""
        self._frame_bytes = self.fmt.period_bytes * max(1, frame_ms // self.fmt.period_ms)

    def feed(self, data: bytes, read_done_s: float) -> list[PipelineOutput]:
        """Process the bytes of one ALSA read that finished at wall-clock ``read_done_s``.

        ``data`` may be any whole number of sample frames: it is appended to what is left of
        the previous read, and every whole period is gated, period by period. The rest waits
        for the next read. An empty read is nothing to do (it is never sent: an empty binary
        frame would close the Deepgram stream).

        Returns:
            Outbox items (frames, Finalize markers) and notices, in order. Empty while the gate
            is closed and nothing noteworthy happened, which is the common case in silence.
        """
        out: list[PipelineOutput] = []
        if len(data) % self.fmt.frame_bytes:
            # Not sample frames: the stream's alignment is lost, so the partial period before
            # it cannot be trusted either. Never sent; the clock starts afresh.
            self._invalid_buffers += 1
            out.append(InvalidBuffer(read_done_s, len(data), self.fmt.frame_bytes))
            self._partial = b""
            self._clock.reset()
            return out
        if not data:
            return out
        buffer = self._partial + data if self._partial else data
        period_bytes = self.fmt.period_bytes
        n_periods, rest = divmod(len(buffer), period_bytes)
        if n_periods == 0:
            if not self._partial:
                self._partial_start_s = read_done_s - self.fmt.seconds(len(buffer))
            self._partial = buffer
            return out
        # The last byte read was captured as the read returned: the whole periods end where
        # the leftover bytes begin.
        first_s = self._clock.stamp(read_done_s - self.fmt.seconds(rest), n_periods)
        for index in range(n_periods):
            chunk = buffer[index * period_bytes : (index + 1) * period_bytes]
            self._feed_period(Period(chunk, self._clock.start_of(first_s, index)), out)
        self._partial = buffer[n_periods * period_bytes :]
        self._partial_start_s = self._clock.start_of(first_s, n_periods)
        if self._pending_bytes and self._pending_bytes + len(data) > self._frame_bytes:
            # A frame never waits for a read it could not hold: otherwise, once the gate opened
            # mid-read (pre-roll + onset is rarely whole reads), every frame would straddle two
            # reads and wait a whole read longer (p99 latency 164 ms instead of 100 ms).
            self._flush(out)
        return out

    def overrun(self, at_s: float) -> list[PipelineOutput]:
        """The kernel lost audio (ALSA ``-EPIPE``) before this read: the partial period cannot
        be completed by what follows, so it is dropped, and the clock re-anchors."""
        self._overruns += 1
        dropped = len(self._partial)
        self._partial = b""
        self._clock.reset()
        return [Overrun(at_s, dropped)]

    def _feed_period(self, period: Period, out: list[PipelineOutput]) -> None:
        data, start_s = period.data, period.start_s
        self._track_digital_silence(period, out)
        level = level_dbfs(data)
        step = self.gate.feed(period, level)
        if step.opened:
            out.append(GateOpened(step.forward[0].start_s, level, self.gate.threshold_dbfs))
        if step.forward:
            for forwarded in step.forward:
                self._append(forwarded, out)
        if step.closed:
            self._flush(out)
            end_s = start_s + self.fmt.seconds(len(data))
            out.append(GateClosed(end_s))
            if self.finalize_on_close:
                out.append(FinalizeMarker(end_s))

    def flush(self) -> list[PipelineOutput]:
        """End of capture (stop, or the device is reopened): gate the partial period as a
        short one, so the last bytes captured are not lost, and hand over the partial frame.
        Shutdown then sends ``CloseStream``, which makes Deepgram finalize everything, so no
        Finalize marker is needed here."""
        out: list[PipelineOutput] = []
        if self._partial:
            self._feed_period(Period(self._partial, self._partial_start_s), out)
            self._partial = b""
        self._flush(out)
        self._clock.reset()
        return out

    def _append(self, period: Period, out: list[PipelineOutput]) -> None:
        if self._pending:
            last = self._pending[-1]
            gap_s = period.start_s - (last.start_s + self.fmt.seconds(len(last.data)))
            contiguous = abs(gap_s) <= CONTIGUOUS_TOLERANCE_S
            if not contiguous:
                self._flush(out)
        self._pending.append(period)
        self._pending_bytes += len(period.data)
        if self._pending_bytes >= self._frame_bytes:
            self._flush(out)

    def _flush(self, out: list[PipelineOutput]) -> None:
        if not self._pending:
            return
        data = b"".join(p.data for p in self._pending)
        out.append(AudioFrame(data, self._pending[0].start_s, self.fmt.seconds(len(data))))
        self._pending.clear()
        self._pending_bytes = 0

    def _track_digital_silence(self, period: Period, out: list[PipelineOutput]) -> None:
        if is_digital_silence(period.data):
            if self._zeros_since_s is None:
                self._zeros_since_s = period.start_s
            silent_s = period.start_s + self.fmt.seconds(len(period.data)) - self._zeros_since_s
            if not self._zeros_reported and silent_s >= DIGITAL_SILENCE_REPORT_S:
                self._zeros_reported = True
                out.append(DigitalSilence(self._zeros_since_s, silent_s))
            return
        if self._zeros_since_s is not None and self._zeros_reported:
            out.append(SignalReturned(period.start_s, period.start_s - self._zeros_since_s))
        self._zeros_since_s = None
        self._zeros_reported = False


def pcm_format(config: Config) -> PcmFormat:
    """The capture format the config asks for."""
    return PcmFormat(config.audio.rate, config.audio.channels, config.audio.period_ms)


def make_pipeline(config: Config) -> CapturePipeline:
    """The capture pipeline for the config's format, gate and frame size."""
    pipeline = CapturePipeline(
        pcm_format(config), make_gate(config, config.audio.period_ms), config.stream.frame_ms
    )
    pipeline.finalize_on_close = config.gate.mode is not GateMode.SHADOW
    return pipeline


def make_gate(config: Config, period_ms: int) -> Gate[Period]:
    """A gate from ``[gate]`` for periods of ``period_ms``."""
    gate = config.gate
    return Gate(
        mode=gate.mode,
        threshold_dbfs=gate.threshold_dbfs,
        preroll_ms=gate.preroll_ms,
        hangover_ms=gate.hangover_ms,
        period_ms=period_ms,
    )
