"""Map a connection's audio offsets back to the wall-clock time the audio was captured.

Deepgram's ``start``/``duration`` and word times count only the audio it received on one
connection (docs/DEEPGRAM.md): gated silence and the time spent disconnected do not advance
them, and every new connection starts again at 0. Each connection therefore keeps a
``TimeMap``: a list of segments "connection offset → capture time", one per run of contiguous
audio. This module does no I/O.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Final

#: Frames whose capture times meet within this tolerance extend the same segment. Wall-clock
#: times near 1.7e9 s carry only ~0.2 µs of float precision, so sums of period durations
#: drift by microseconds; a real gap is at least one period (5 ms or more).
CONTIGUOUS_TOLERANCE_S: Final = 1e-3


@dataclass(slots=True)
class Segment:
    """Audio sent contiguously: ``[offset_s, offset_s + duration_s)`` ↔ ``[wall_s, ...)``."""

    offset_s: float
    wall_s: float
    duration_s: float

    @property
    def end_offset_s(self) -> float:
        return self.offset_s + self.duration_s


class TimeMap:
    """Per-connection map from audio offset (seconds of audio sent) to capture time."""

    def __init__(self) -> None:
        self._segments: list[Segment] = []
        self._starts: list[float] = []  # segment offsets, for bisect
        self.sent_s = 0.0

    def append(self, wall_s: float, duration_s: float) -> float:
        """Record that ``duration_s`` of audio captured at ``wall_s`` was just sent.

        Returns:
            The connection offset at which that audio starts.
        """
        offset_s = self.sent_s
        last = self._segments[-1] if self._segments else None
        if (
            last is not None
            and abs(last.wall_s + last.duration_s - wall_s) <= CONTIGUOUS_TOLERANCE_S
        ):
            last.duration_s += duration_s
        else:
            self._segments.append(Segment(offset_s, wall_s, duration_s))
            self._starts.append(offset_s)
        self.sent_s = offset_s + duration_s
        return offset_s

    def to_wall(self, offset_s: float, *, is_end: bool = False) -> float:
        """Capture time of the audio at ``offset_s`` on this connection.

        An offset on the boundary between two segments is the end of the earlier one when
        ``is_end`` (a transcript ending there) and the start of the later one otherwise. "On"
        means within ``CONTIGUOUS_TOLERANCE_S``: segment offsets are sums of frame durations
        (25 × 0.1 = 2.500000000000001), and Deepgram's 2.5 must still fall on the boundary
        (seen on a real system: the first transcript after start-up stamped 2.9 s early).
        Offsets beyond what was sent extrapolate from the last segment; before anything was sent
        there is no answer and ``ValueError`` is raised.
        """
        if not self._segments:
            raise ValueError("no audio has been sent on this connection")
        index = (
            bisect.bisect_left(self._starts, offset_s - CONTIGUOUS_TOLERANCE_S) - 1
            if is_end
            else bisect.bisect_right(self._starts, offset_s + CONTIGUOUS_TOLERANCE_S) - 1
        )
        segment = self._segments[max(index, 0)]
        return segment.wall_s + (offset_s - segment.offset_s)

    def forget_before(self, offset_s: float) -> None:
        """Drop segments ending at or before ``offset_s`` (finalized audio): memory stays flat."""
        keep_from = 0
        while (
            keep_from < len(self._segments) - 1
            and self._segments[keep_from].end_offset_s <= offset_s
        ):
            keep_from += 1
        if keep_from:
            del self._segments[:keep_from]
            del self._starts[:keep_from]

    @property
    def segments(self) -> tuple[tuple[float, float, float], ...]:
        """(offset_s, wall_s, duration_s) of every segment kept, for tests and diagnostics."""
        return tuple((s.offset_s, s.wall_s, s.duration_s) for s in self._segments)
