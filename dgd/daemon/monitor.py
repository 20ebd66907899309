"""The monitor task: feeds systemd's watchdog while capture is healthy, summarises repeated
journal lines, watches the wall clock for steps, and writes the periodic ``stats`` record and
the ``STATUS=`` gist.

The watchdog is the last line of defence: it is fed only while ``Microphone.check`` says
capture is healthy, so a capture that is stuck for good gets the service restarted.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Final

import trio

from dgd.core.wallclock import WallClock
from dgd.daemon.logsetup import event, flush_repeats

if TYPE_CHECKING:
    from collections.abc import Callable

    from dgd.core.config import Config
    from dgd.core.events import Transcript
    from dgd.core.stats import StatsRecord
    from dgd.core.status import StatusBoard
    from dgd.daemon.microphone import Microphone
    from dgd.daemon.sdnotify import Notifier

#: The monitor's tick: stall detection resolution, STATUS refresh, wall-clock watch.
MONITOR_TICK_S: Final = 1.0


def system_wall_offset_s() -> float:
    """``wall - monotonic`` now: what labels the capture timeline (``dgd.core.wallclock``)."""
    return time.time() - time.monotonic()


class Monitor:
    """The periodic checks of the running daemon.

    Args:
        notifier: sd_notify (WATCHDOG=1, STATUS=).
        mic: the microphone whose health decides whether the watchdog is fed.
        config: the config in force (``output.stats_interval_s`` changes on reload).
        statistics: the daemon's stats record, composed from its parts.
        status: the STATUS board (its gist is written here).
        publish_status: sends the STATUS line after a change.
        wall_offset: ``wall - capture timeline`` now (tests pass a fixed one).
    """

    def __init__(
        self,
        *,
        notifier: Notifier,
        mic: Microphone,
        config: Callable[[], Config],
        statistics: Callable[[], StatsRecord],
        status: StatusBoard,
        publish_status: Callable[[], None],
        wall_offset: Callable[[], float] = system_wall_offset_s,
    ) -> None:
        self._notifier = notifier
        self._mic = mic
        self._config = config
        self._statistics = statistics
        self._status = status
        self._publish_status = publish_status
        self._wall_offset = wall_offset
        self._wall = WallClock(wall_offset())

    async def run(self) -> None:
        """Tick until cancelled."""
        watchdog_s = self._notifier.watchdog_interval_s
        tick_s = min(MONITOR_TICK_S, watchdog_s) if watchdog_s else MONITOR_TICK_S
        next_watchdog = trio.current_time()
        next_stats = trio.current_time() + self._stats_interval_s()
        while True:
            now = trio.current_time()
            healthy = self._mic.check()
            if watchdog_s and healthy and now >= next_watchdog:
                self._notifier.watchdog()
                next_watchdog = now + watchdog_s
            self._watch_wall_clock()
            flush_repeats()
            if now >= next_stats:
                self.log_stats()
                next_stats = now + self._stats_interval_s()
            await trio.sleep(tick_s)

    def _stats_interval_s(self) -> float:
        interval = self._config().output.stats_interval_s
        return interval if interval > 0 else math.inf

    def log_stats(self) -> None:
        """Write the ``stats`` record and refresh the STATUS gist."""
        stats = self._statistics()
        self._status.gist = stats.gist()
        self._publish_status()
        event("stats", "%s", stats.summary(), fields_map=stats.fields())

    def label(self, transcript: Transcript) -> Transcript:
        """The transcript with wall-clock labels as of now (a step is noticed first)."""
        self._watch_wall_clock()
        return self._wall.label(transcript)

    def _watch_wall_clock(self) -> None:
        step_s = self._wall.observe(self._wall_offset())
        if step_s is not None:
            event(
                "clock_step",
                "the wall clock stepped %+.3f s (NTP synchronised, or someone set the time): "
                "transcripts from now on carry the new time; nothing was lost",
                step_s,
                level=logging.WARNING,
                step_s=f"{step_s:+.3f}",
            )
