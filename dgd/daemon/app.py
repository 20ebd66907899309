"""The composition root: builds the parts, starts every task, handles signals.

Task tree (every task lives in the root nursery opened here)::

    root
    ├── signals      SIGTERM/SIGINT → graceful stop (once); SIGHUP → a reload request
    ├── reloader     executes reload plans one at a time (dgd.core.reload); requests coalesce
    ├── capture      reopens the ALSA device whenever it fails (the thread does the reading)
    ├── supervisor   connection after connection (each: sender, receiver, liveness)
    └── monitor      watchdog, stall detection, STATUS=, periodic stats (dgd.daemon.monitor)

Data flows one way: capture thread → pipeline (gate, frames) → outbox → link sender →
WebSocket; WebSocket → link receiver → session events → sinks.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Final

import trio

from dgd.core.events import (
    AudioFrame,
    FinalizeMarker,
    FormatChange,
    GateClosed,
    GateOpened,
    PipelineOutput,
    Transcript,
)
from dgd.core.outbox import Outbox
from dgd.core.pipeline import make_pipeline, pcm_format
from dgd.core.session import DuplicateFilter
from dgd.core.stats import StatsRecord, compose
from dgd.core.status import StatusBoard
from dgd.daemon import wsclient
from dgd.daemon.capture import OpenSource, open_alsa
from dgd.daemon.link import LinkContext, OutboxFeed
from dgd.daemon.logsetup import event
from dgd.daemon.microphone import Microphone
from dgd.daemon.monitor import Monitor, system_wall_offset_s
from dgd.daemon.notices import log_notice
from dgd.daemon.reloader import Reloader
from dgd.daemon.supervisor import Supervisor

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from dgd.core.config import ApiKey, Config
    from dgd.daemon.sdnotify import Notifier
    from dgd.daemon.sinks import TranscriptSinks

log = logging.getLogger("dgd.app")


#: What a stop needs beyond the drain (``stream.close_timeout_s``): the device's release,
#: cancelling the tasks, the last journal records and the interpreter's exit. The shipped
#: unit's TimeoutStopSec= leaves the same room above the largest close_timeout_s.
STOP_EXIT_MARGIN_S: Final = 5.0


class Daemon:
    """The running daemon: owns every part and the tasks that move data between them.

    Args:
        config: the validated config.
        api_key: the API key.
        notifier: sd_notify (READY, STATUS, WATCHDOG, STOPPING, RELOADING).
        reload_config: re-reads the config and the key for SIGHUP (None: SIGHUP only says
            READY again).
        sinks: where transcripts go (journald, JSONL).
        open_source: the audio-source port (ALSA; tests pass an in-memory source).
        connect: opens a WebSocket (``wsclient.connect``; tests pass an in-memory one).
        clock: the monotonic clock the audio source stamps the heartbeat with (the ALSA
            thread uses ``time.monotonic``; an in-memory source uses trio's clock).
        rng: randomness for backoff jitter.
        signals_before_start: SIGHUPs recorded before the daemon listened for signals itself
            (by ``dgd.cli``); a reload is carried out for them once it is ready.
        wall_offset: ``wall - capture timeline`` now, which labels transcripts (tests pass a
            fixed one).
    """

    def __init__(
        self,
        config: Config,
        api_key: ApiKey,
        *,
        notifier: Notifier,
        reload_config: Callable[[], tuple[Config, ApiKey]] | None,
        sinks: TranscriptSinks,
        open_source: OpenSource = open_alsa,
        connect: wsclient.Connector = wsclient.connect,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        signals_before_start: list[int] | None = None,
        wall_offset: Callable[[], float] = system_wall_offset_s,
    ) -> None:
        self._signals_before_start = (
            signals_before_start if signals_before_start is not None else []
        )
        self.config = config
        self.api_key = api_key
        self.notifier = notifier
        self.sinks = sinks
        self.feed = OutboxFeed(Outbox(pcm_format(config), config.stream.replay_buffer_s))
        self.duplicates = DuplicateFilter()
        self.stopping = trio.Event()
        self.link = LinkContext(
            feed=self.feed,
            stream=config.stream,
            on_transcript=self._on_transcript,
            stopping=self.stopping,
        )
        self.status = StatusBoard(gate_mode=config.gate.mode)
        self.supervisor = Supervisor(
            self.link,
            config=lambda: self.config,
            api_key=lambda: self.api_key.value,
            set_status=self._set_link_status,
            rng=rng,
            connect=connect,
        )
        self.mic = Microphone(
            config=lambda: self.config,
            pipeline=make_pipeline(config),
            deliver=self._deliver,
            status=self.status,
            publish_status=self._publish_status,
            open_source=open_source,
            clock=clock,
            stopping=self.stopping,
        )
        self.monitor = Monitor(
            notifier=notifier,
            mic=self.mic,
            config=lambda: self.config,
            statistics=self.statistics,
            status=self.status,
            publish_status=self._publish_status,
            wall_offset=wall_offset,
        )
        self._root: trio.Nursery | None = None
        self.reloader = Reloader(self, reload_config)
        self._stop_requested = False

    # -- the task tree -------------------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully (bounded by close_timeout_s)."""
        async with trio.open_nursery() as root:
            self._root = root
            root.start_soon(self._signals, root)
            root.start_soon(self.mic.run)
            supervisor_done = trio.Event()
            self._supervisor_done = supervisor_done
            root.start_soon(self._supervisor_task, supervisor_done)
            await self.mic.first_attempt.wait()
            self.notifier.ready(self.status.render())
            event("started", "dgd is running: %s", self.status.render())
            root.start_soon(self.monitor.run)
            # Started after READY=1: a SIGHUP that came earlier is carried out now.
            root.start_soon(self.reloader.run)

    async def _supervisor_task(self, done: trio.Event) -> None:
        try:
            await self.supervisor.run()
        finally:
            done.set()

    async def _signals(self, root: trio.Nursery) -> None:
        """Receive signals for the daemon's whole life, so that none falls back to its default
        action (a second SIGTERM during shutdown, a SIGHUP before READY=1)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            # Checked only now that the receiver is open, so that none falls in between.
            if self._signals_before_start:
                self._signals_before_start.clear()
                event("reload_pending", "SIGHUP before dgd was ready: reloading once it is")
                self.request_reload()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.request_reload()
                else:
                    self.request_stop(name)

    def request_stop(self, why: str) -> None:
        """SIGTERM/SIGINT: shut down gracefully (once; a second request is logged and
        ignored, so the results already received are still written)."""
        if self._stop_requested or self._root is None:
            event("stopping", "already stopping; %s ignored: finishing first", why)
            return
        self._stop_requested = True
        self._root.start_soon(self._stop, why, self._root.cancel_scope)

    async def _stop(self, why: str, root_scope: trio.CancelScope) -> None:
        await self._shutdown(why)
        root_scope.cancel()

    async def _shutdown(self, why: str) -> None:
        close_timeout_s = self.config.stream.close_timeout_s
        # EXTEND_TIMEOUT_USEC: systemd waits as long as this stop may legitimately take, even
        # where a drop-in made TimeoutStopSec= shorter than the drain.
        self.notifier.stopping(
            "stopping: sending the last audio", needs_s=close_timeout_s + STOP_EXIT_MARGIN_S
        )
        event("stopping", "stopping on %s: finishing within %.1f s", why, close_timeout_s)
        self.stopping.set()
        deadline = trio.current_time() + close_timeout_s
        await self.mic.stop()
        self.feed.capture_done = True
        self.feed.poke()
        with trio.move_on_at(deadline):
            await self._supervisor_done.wait()
        outbox = self.feed.outbox
        untranscribed_s = outbox.held_s
        if untranscribed_s > 0:
            event(
                "shutdown_incomplete",
                "stopped with %.1f s of captured audio not transcribed (%s)",
                untranscribed_s,
                "not connected" if not self.supervisor.connected else "no final results in time",
                level=logging.WARNING,
                untranscribed_s=f"{untranscribed_s:.2f}",
            )
        event("stopped", "dgd stopped", fields_map=self.statistics().fields())

    # -- capture -------------------------------------------------------------------------

    def _deliver(self, outputs: list[PipelineOutput]) -> None:
        """In trio: take a batch from the audio source (it must not block or raise)."""
        for item in outputs:
            if isinstance(item, AudioFrame | FinalizeMarker | FormatChange):
                self.feed.put(item)  # it logs audio the replay buffer's bound dropped
                continue
            log_notice(item, self.config.audio.device)
            if isinstance(item, GateOpened | GateClosed):
                self.status.gate_open = isinstance(item, GateOpened)
                self._publish_status()

    # -- transcripts ---------------------------------------------------------------------

    def _on_transcript(self, transcript: Transcript) -> None:
        if self.duplicates.accept(transcript):  # on the capture timeline
            self.sinks.emit(self.monitor.label(transcript))

    # -- status, watchdog, stats ---------------------------------------------------------

    def _set_link_status(self, text: str) -> None:
        self.status.link = text
        self._publish_status()

    def _publish_status(self) -> None:
        if not self.stopping.is_set():
            self.notifier.status(self.status.render())

    def statistics(self) -> StatsRecord:
        """The daemon's counters, composed from its parts."""
        return compose(
            capture=self.mic.statistics(),
            link=self.supervisor.statistics(),
            outbox=self.feed.outbox.statistics(),
            duplicates=self.duplicates.duplicates,
            transcripts=self.sinks.written,
        )

    # -- reload (dgd.daemon.reloader executes the plans) ----------------------------------

    def request_reload(self) -> None:
        """SIGHUP: re-read the config and the key as soon as the reloader is free."""
        self.reloader.request()
