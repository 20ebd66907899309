"""Records that cross the line between the pure core and the trio shell.

Every value here is a frozen, slotted dataclass named as a noun. Capture times are on the
capture timeline: seconds of the monotonic clock (``time.monotonic()`` as reads return, made
contiguous and drift-free by ``dgd.core.pipeline.CaptureClock``). The wall clock never decides
anything; it only labels a transcript on its way to the sinks (``dgd.core.wallclock``), so a
wall-clock step loses, duplicates and stretches nothing.
This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dgd.core.pcm import PcmFormat


@dataclass(frozen=True, slots=True)
class Period:
    """One ALSA period as captured.

    Attributes:
        data: S16_LE interleaved PCM, exactly one period long.
        start_s: wall-clock time of its first sample.
    """

    data: bytes
    start_s: float


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Audio to send in one WebSocket binary message: whole, contiguous periods.

    Attributes:
        data: S16_LE PCM, never empty.
        start_s: wall-clock capture time of its first sample.
        duration_s: its duration in seconds (``len(data) / bytes_per_second``).
    """

    data: bytes
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        """Wall-clock capture time just after its last sample."""
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class FinalizeMarker:
    """The gate closed after speech: ask Deepgram to finalize what it has (``Finalize``).

    Attributes:
        at_s: wall-clock capture time at which the gate closed.
    """

    at_s: float


@dataclass(frozen=True, slots=True)
class FormatChange:
    """From here on the audio is in ``fmt`` (a reload changed ``[audio]``).

    The link never sends audio past it on a stream whose handshake declared another rate or
    channel count: it ends that stream gracefully, and the next handshake declares ``fmt``.
    """

    fmt: PcmFormat


OutboxItem = AudioFrame | FinalizeMarker | FormatChange


@dataclass(frozen=True, slots=True)
class GateOpened:
    """The gate opened: speech (or something loud) started. ``at_s`` is capture time."""

    at_s: float
    level_dbfs: float
    threshold_dbfs: float


@dataclass(frozen=True, slots=True)
class GateClosed:
    """The gate closed after ``hangover_ms`` without speech. ``at_s`` is capture time."""

    at_s: float


@dataclass(frozen=True, slots=True)
class DigitalSilence:
    """The input has been exact zeros for ``duration_s`` (muted mixer or dead microphone)."""

    since_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class SignalReturned:
    """Non-zero samples arrived again after a reported stretch of digital silence."""

    at_s: float
    silent_s: float


@dataclass(frozen=True, slots=True)
class InvalidBuffer:
    """A read returned bytes that cannot be sample frames (not a whole number of
    ``frame_bytes``); they were dropped, never sent, with the partial period before them."""

    at_s: float
    length_bytes: int
    frame_bytes: int


@dataclass(frozen=True, slots=True)
class Overrun:
    """The kernel's ring buffer overflowed (ALSA ``-EPIPE``): audio was lost before dgd could
    read it. The partial period assembled before it was dropped too (it cannot be joined to
    what follows), and the capture clock re-anchors."""

    at_s: float
    partial_bytes_dropped: int


CaptureNotice = GateOpened | GateClosed | DigitalSilence | SignalReturned | InvalidBuffer | Overrun
PipelineOutput = OutboxItem | CaptureNotice


@dataclass(frozen=True, slots=True)
class TimedWord:
    """One recognised word with its capture times."""

    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """A transcript: capture-timeline times from the session, wall-clock labels once
    ``WallClock.label`` has put it on its way to the sinks.

    Attributes:
        text: the transcript (Deepgram's ``transcript``), never empty.
        is_final / speech_final / from_finalize: Deepgram's flags.
        confidence: Deepgram's confidence for the alternative.
        start_s / end_s: capture times of the audio it covers.
        request_id: Deepgram's request id of the connection it came from.
        words: the words with their capture times.
    """

    text: str
    is_final: bool
    speech_final: bool
    from_finalize: bool
    confidence: float
    start_s: float
    end_s: float
    request_id: str
    words: tuple[TimedWord, ...]
