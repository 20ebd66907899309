"""Wall-clock labels for the capture timeline.

dgd's times are monotonic (``dgd.core.events``); the wall clock is read only to label a
transcript for the sinks, as ``monotonic + offset``, the offset being ``time.time() -
time.monotonic()`` observed just before. A Raspberry Pi has no real-time clock: it boots with
the time of the last shutdown and steps when NTP syncs, by hours, either way. A step changes
the offset; it is reported once with its size, and transcripts labelled after it carry the
new labels (both ends of one transcript always get the same offset, so none spans a step).
This module does no I/O: the shell passes the offsets in.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dgd.core.events import Transcript

#: A change of the offset at least this big is a step (NTP slews smaller errors at no more
#: than 0.5 ms a second; reading the two clocks one after the other costs microseconds).
STEP_S: Final = 0.1


class WallClock:
    """The offset from the capture timeline to the wall clock, watched for steps.

    Args:
        offset_s: ``wall - monotonic`` now.
    """

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def observe(self, offset_s: float) -> float | None:
        """Take a new offset; return the step's size in seconds if it is one, else None."""
        step_s = offset_s - self.offset_s
        self.offset_s = offset_s
        return step_s if abs(step_s) >= STEP_S else None

    def label(self, transcript: Transcript) -> Transcript:
        """The transcript with its times moved onto the wall clock, at the current offset."""
        offset_s = self.offset_s
        return dataclasses.replace(
            transcript,
            start_s=transcript.start_s + offset_s,
            end_s=transcript.end_s + offset_s,
            words=tuple(
                dataclasses.replace(w, start_s=w.start_s + offset_s, end_s=w.end_s + offset_s)
                for w in transcript.words
            ),
        )
