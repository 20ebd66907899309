"""The stats record: the daemon's counters in one frozen value, as journal fields and as the
gist ``STATUS=`` shows. This module does no I/O.

Each part counts what it does and exposes it as one frozen record from ``statistics()``:
the microphone ``CaptureStatistics`` (across pipelines), the supervisor ``LinkStatistics``
(across connections), the outbox ``OutboxStatistics``. ``compose`` makes the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dgd.core.session import SessionStatistics
from dgd.core.status import duration_text

if TYPE_CHECKING:
    from dgd.core.outbox import OutboxStatistics
    from dgd.core.pipeline import CaptureStatistics


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """Connections so far and the sum of their streams."""

    streams: SessionStatistics = field(default_factory=SessionStatistics)
    connects: int = 0
    reconnects_by_cause: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatsRecord:
    """Totals since the daemon started (seconds of audio, counts)."""

    captured_s: float
    sent_s: float
    gated_s: float
    replayed_s: float
    overruns: int
    invalid_buffers: int
    keepalives: int
    finalizes: int
    connects: int
    duplicates: int
    transcripts: int
    dropped_by_cause_s: dict[str, float] = field(default_factory=dict)
    reconnects_by_cause: dict[str, int] = field(default_factory=dict)
    #: Server messages ignored, or used only after their text was repaired.
    unrecognized: int = 0

    @property
    def dropped_s(self) -> float:
        """Audio that had to be dropped, all causes."""
        return sum(self.dropped_by_cause_s.values())

    def fields(self) -> dict[str, object]:
        """The ``DGD_*`` journal fields (names without the prefix)."""
        fields: dict[str, object] = {
            "captured_s": f"{self.captured_s:.1f}",
            "sent_s": f"{self.sent_s:.1f}",
            "gated_s": f"{self.gated_s:.1f}",
            "replayed_s": f"{self.replayed_s:.1f}",
            "dropped_s": f"{self.dropped_s:.1f}",
            "overruns": self.overruns,
            "invalid_buffers": self.invalid_buffers,
            "keepalives": self.keepalives,
            "finalizes": self.finalizes,
            "connects": self.connects,
            "duplicates": self.duplicates,
            "transcripts": self.transcripts,
            "unrecognized": self.unrecognized,
        }
        for cause, seconds in self.dropped_by_cause_s.items():
            fields[f"dropped_{cause}_s"] = f"{seconds:.1f}"
        for cause, count in self.reconnects_by_cause.items():
            fields[f"reconnects_{cause.replace('-', '_')}"] = count
        return fields

    def gist(self) -> str:
        """The counters in a few words, for ``STATUS=``."""
        return (
            f"sent {duration_text(self.sent_s)} of {duration_text(self.captured_s)} captured, "
            f"{self.dropped_s:.1f} s dropped, {self.connects} connection(s)"
        )

    def summary(self) -> str:
        """The ``stats`` event's message."""
        return (
            f"captured {self.captured_s:.1f} s, sent {self.sent_s:.1f} s, gated "
            f"{self.gated_s:.1f} s, replayed {self.replayed_s:.1f} s, dropped "
            f"{self.dropped_s:.1f} s, {self.keepalives} keep-alives, "
            f"{self.transcripts} transcripts"
        )


def compose(
    *,
    capture: CaptureStatistics,
    link: LinkStatistics,
    outbox: OutboxStatistics,
    duplicates: int,
    transcripts: int,
) -> StatsRecord:
    """The record from the parts' statistics."""
    dropped = {"replay_buffer_full": outbox.dropped_s} if outbox.dropped_s else {}
    return StatsRecord(
        captured_s=capture.captured_s,
        sent_s=link.streams.sent_s,
        gated_s=capture.gated_s,
        replayed_s=outbox.replayed_s,
        overruns=capture.overruns,
        invalid_buffers=capture.invalid_buffers,
        keepalives=link.streams.keepalives,
        finalizes=link.streams.finalizes,
        connects=link.connects,
        duplicates=duplicates,
        transcripts=transcripts,
        dropped_by_cause_s=dropped,
        reconnects_by_cause=dict(link.reconnects_by_cause),
        unrecognized=link.streams.unrecognized,
    )
