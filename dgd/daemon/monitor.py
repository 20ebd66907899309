"""The monitor task: feeds systemd's watchdog while capture is healthy, summarises repeated
journal lines, and writes the periodic ``stats`` record and the ``STATUS=`` gist.

The watchdog is the last line of defence: it is fed only while ``Microphone.check`` says
capture is healthy, so a capture that is stuck for good gets the service restarted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import trio

from dgd.daemon.logsetup import event, flush_repeats

if TYPE_CHECKING:
    from collections.abc import Callable

    from dgd.core.config import Config
    from dgd.core.stats import StatsRecord
    from dgd.core.status import StatusBoard
    from dgd.daemon.microphone import Microphone
    from dgd.daemon.sdnotify import Notifier

#: The monitor's tick: stall detection resolution and STATUS refresh.
MONITOR_TICK_S: Final = 1.0


class Monitor:
    """The periodic checks of the running daemon.

    Args:
        notifier: sd_notify (WATCHDOG=1, STATUS=).
        mic: the microphone whose health decides whether the watchdog is fed.
        config: the config in force (``output.stats_interval_s`` changes on reload).
        statistics: the daemon's stats record, composed from its parts.
        status: the STATUS board (its gist is written here).
        publish_status: sends the STATUS line after a change.
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
    ) -> None:
        self._notifier = notifier
        self._mic = mic
        self._config = config
        self._statistics = statistics
        self._status = status
        self._publish_status = publish_status

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
