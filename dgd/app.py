"""The composition root: builds the parts, starts every task, handles signals.

Task tree (every task lives in the root nursery opened here)::

    root
    ├── signals      SIGTERM/SIGINT → graceful stop (once); SIGHUP → a reload request
    ├── reloader     executes reload plans one at a time (dgd.reload); requests coalesce
    ├── capture      reopens the ALSA device whenever it fails (the thread does the reading)
    ├── supervisor   connection after connection (each: sender, receiver, liveness)
    └── monitor      watchdog, stall detection, STATUS=, periodic stats

Data flows one way: capture thread → pipeline (gate, frames) → outbox → link sender →
WebSocket; WebSocket → link receiver → session events → sinks.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import TYPE_CHECKING, Final

import trio

from dgd import wsclient
from dgd.capture import (
    AudioSource,
    DeviceError,
    Heartbeat,
    OpenSource,
    SourceSpec,
    open_alsa,
    read_periods,
)
from dgd.config import ApiKey, Config, ConfigError
from dgd.events import (
    AudioFrame,
    FinalizeMarker,
    FormatChange,
    GateClosed,
    GateOpened,
    Period,
    PipelineOutput,
    Transcript,
)
from dgd.gate import Gate
from dgd.health import CaptureFacts, CaptureHealth, CaptureState
from dgd.link import LinkContext, OutboxFeed
from dgd.logsetup import event, flush_repeats, set_level
from dgd.notices import log_notice
from dgd.outbox import Outbox
from dgd.pcm import PcmFormat
from dgd.pipeline import CapturePipeline
from dgd.reload import plan_reload, refuse
from dgd.session import DuplicateFilter
from dgd.status import StatusBoard, duration_text
from dgd.supervisor import Supervisor

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from dgd.sdnotify import Notifier
    from dgd.sinks import TranscriptSinks

log = logging.getLogger("dgd.app")

#: Device reopen backoff: first retry, ceiling.
DEVICE_RETRY_INITIAL_S: Final = 0.5
DEVICE_RETRY_MAX_S: Final = 10.0
#: How long shutdown waits for the capture thread to hand over its last partial frame.
CAPTURE_STOP_GRACE_S: Final = 0.5
#: The monitor's tick: stall detection resolution and STATUS refresh.
MONITOR_TICK_S: Final = 1.0


def pcm_format(config: Config) -> PcmFormat:
    """The capture format the config asks for."""
    return PcmFormat(config.audio.rate, config.audio.channels, config.audio.period_ms)


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
    ) -> None:
        self._open_source = open_source
        self._clock = clock
        self.config = config
        self.api_key = api_key
        self.notifier = notifier
        self._reload_config = reload_config
        self.sinks = sinks
        self.fmt = pcm_format(config)
        self.pipeline = CapturePipeline(
            self.fmt, make_gate(config, config.audio.period_ms), config.stream.frame_ms
        )
        self.pipeline.finalize_on_close = config.gate.mode != "shadow"
        self.heartbeat = Heartbeat()
        self.feed = OutboxFeed(Outbox(self.fmt, config.stream.replay_buffer_s))
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
        self.capture: AudioSource | None = None
        self._capture_scope: trio.CancelScope | None = None
        self._first_capture_attempt = trio.Event()
        self._capture_idle = trio.Event()  # set while no capture thread runs
        self._capture_resume = trio.Event()  # cleared while an audio reload holds capture
        self._capture_resume.set()
        self._root: trio.Nursery | None = None
        self._device_retry_s = DEVICE_RETRY_INITIAL_S
        self.health = CaptureHealth()
        self._capture_state = CaptureState.STARTING
        self._waiting_for_device = False
        self._stop_requested_at: float | None = None  # a reopen asked the thread to stop
        self._stuck_capture: AudioSource | None = None  # abandoned, still holds the device
        self._reload_requested = trio.Event()
        self._stop_requested = False
        self.dropped_by_cause: dict[str, float] = {}

    # -- the task tree -------------------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully (bounded by close_timeout_s)."""
        async with trio.open_nursery() as root:
            self._root = root
            root.start_soon(self._signals, root)
            root.start_soon(self._capture_task)
            supervisor_done = trio.Event()
            self._supervisor_done = supervisor_done
            root.start_soon(self._supervisor_task, supervisor_done)
            await self._first_capture_attempt.wait()
            self.notifier.ready(self.status.render())
            event("started", "dgd is running: %s", self.status.render())
            root.start_soon(self._monitor)
            # Started after READY=1: a SIGHUP that came earlier is carried out now.
            root.start_soon(self._reloader)

    async def _supervisor_task(self, done: trio.Event) -> None:
        try:
            await self.supervisor.run()
        finally:
            done.set()

    async def _signals(self, root: trio.Nursery) -> None:
        """Receive signals for the daemon's whole life, so that none falls back to its default
        action (a second SIGTERM during shutdown, a SIGHUP before READY=1)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
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
        self.notifier.stopping("stopping: sending the last audio")
        event("stopping", "stopping on %s: finishing within %.1f s", why, close_timeout_s)
        self.stopping.set()
        deadline = trio.current_time() + close_timeout_s
        if self.capture is not None:
            self.capture.stop()
        with trio.move_on_after(CAPTURE_STOP_GRACE_S):
            await self._capture_idle.wait()
        if not self._capture_idle.is_set() and self._capture_scope is not None:
            self._capture_scope.cancel()  # stuck inside alsa-lib: abandon it
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
        event("stopped", "dgd stopped", fields_map=self._stats_fields())

    # -- capture -------------------------------------------------------------------------

    async def _capture_task(self) -> None:
        """Keep one capture thread running; open the device again whenever it fails, or the
        monitor asks for a reopen after a stall.

        A new thread is started only once the previous one has released the device (closed
        its PCM), so dgd never competes with itself for the device (``dgd.capture``).
        """
        while not self.stopping.is_set():
            await self._capture_resume.wait()
            self._capture_idle = trio.Event()
            capture = self._open_source(
                SourceSpec(
                    device=self.config.audio.device,
                    fmt=self.fmt,
                    pipeline=self.pipeline,
                    deliver=self._deliver,
                    on_opened=self._on_device_opened,
                    heartbeat=self.heartbeat,
                    periods_per_read=read_periods(self.fmt, self.config.stream.frame_ms),
                )
            )
            self.capture = capture
            self._capture_scope = trio.CancelScope()
            failure: DeviceError | None = None
            try:
                with self._capture_scope:
                    await capture.capture()
            except DeviceError as exc:
                failure = exc
            finally:
                self._stop_requested_at = None
                self._capture_idle.set()
            if not capture.released.is_set() and not self.stopping.is_set():
                await self._wait_released(capture)
            if failure is not None:
                await self._device_failed(failure)
        self.feed.capture_done = True
        self.feed.poke()

    async def _wait_released(self, capture: AudioSource) -> None:
        """An abandoned thread still holds the device: wait for it before opening again.

        Nothing in-process can interrupt a call stuck inside alsa-lib or the driver, so the
        watchdog stays unpetted meanwhile (``dgd.health``) and systemd restarts dgd if the
        thread never lets go.
        """
        self._stuck_capture = capture
        event(
            "capture_stuck",
            'the capture thread is stuck inside the audio driver and still holds audio device "%s"'
            ": dgd cannot reopen it while it does; the watchdog is no longer fed, so systemd "
            "restarts dgd (WatchdogSec) unless the driver lets go first",
            capture.device,
            level=logging.ERROR,
            device=capture.device,
        )
        self.status.device_ok = False
        self.status.device = f'capture stuck in the driver for audio device "{capture.device}"'
        self._publish_status()
        await capture.released.wait()
        self._stuck_capture = None
        event("capture_released", 'the stuck capture thread released "%s"', capture.device)

    def _on_device_opened(self) -> None:
        device = self.config.audio.device
        if not self.status.device_ok:
            event("device_opened", 'audio device "%s" opened; capturing', device, device=device)
        self._device_retry_s = DEVICE_RETRY_INITIAL_S
        self._waiting_for_device = False
        self.status.device_ok = True
        self.status.device = "capturing"
        self._first_capture_attempt.set()
        self._publish_status()

    async def _device_failed(self, exc: DeviceError) -> None:
        was_ok = self.status.device_ok
        self._waiting_for_device = True
        self.status.device_ok = False
        self.status.device = f'waiting for audio device "{exc.device}"'
        name = "device_lost" if was_ok else "device_unavailable"
        event(
            name,
            "%s; retrying in %.1f s",
            exc,
            self._device_retry_s,
            level=logging.ERROR,
            repeat_key=f"device:{exc.problem.value}",
            device=exc.device,
            problem=exc.problem.value,
        )
        self._first_capture_attempt.set()
        self._publish_status()
        with trio.move_on_after(self._device_retry_s):
            await self.stopping.wait()
        self._device_retry_s = min(DEVICE_RETRY_MAX_S, self._device_retry_s * 2)

    def _deliver(self, outputs: list[PipelineOutput]) -> None:
        """In trio: take a batch from the audio source (it must not block or raise)."""
        for item in outputs:
            if isinstance(item, AudioFrame | FinalizeMarker | FormatChange):
                dropped = self.feed.put(item)
                if dropped is not None:
                    self._count_drop("replay_buffer_full", dropped.seconds)
                    event(
                        "audio_dropped",
                        "replay buffer full (stream.replay_buffer_s = %g): dropping the oldest "
                        "audio, %.1f s in all so far",
                        self.config.stream.replay_buffer_s,
                        self.dropped_by_cause["replay_buffer_full"],
                        level=logging.WARNING,
                        repeat_key="replay-buffer-full",
                        dropped_s=f"{dropped.seconds:.2f}",
                    )
                continue
            log_notice(item, self.config.audio.device)
            if isinstance(item, GateOpened | GateClosed):
                self.status.gate_open = isinstance(item, GateOpened)
                self._publish_status()

    def _count_drop(self, cause: str, seconds: float) -> None:
        self.dropped_by_cause[cause] = self.dropped_by_cause.get(cause, 0.0) + seconds

    # -- transcripts ---------------------------------------------------------------------

    def _on_transcript(self, transcript: Transcript) -> None:
        if self.duplicates.accept(transcript):
            self.sinks.emit(transcript)

    # -- status, watchdog, stats ---------------------------------------------------------

    def _set_link_status(self, text: str) -> None:
        self.status.link = text
        self._publish_status()

    def _publish_status(self) -> None:
        if not self.stopping.is_set():
            self.notifier.status(self.status.render())

    async def _monitor(self) -> None:
        watchdog_s = self.notifier.watchdog_interval_s
        tick_s = min(MONITOR_TICK_S, watchdog_s) if watchdog_s else MONITOR_TICK_S
        next_watchdog = trio.current_time()
        next_stats = trio.current_time() + self._stats_interval_s()
        while True:
            now = trio.current_time()
            healthy = self._check_capture()
            if watchdog_s and healthy and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_s
            flush_repeats()
            if now >= next_stats:
                self._log_stats()
                next_stats = now + self._stats_interval_s()
            await trio.sleep(tick_s)

    def _stats_interval_s(self) -> float:
        interval = self.config.output.stats_interval_s
        return interval if interval > 0 else math.inf

    def _check_capture(self) -> bool:
        """Act on the capture health verdict (``dgd.health``); True if the watchdog may be fed.

        A missing or unplugged microphone is not a fault a restart can fix, so the daemon keeps
        petting the watchdog while it waits (and says so in STATUS=). A capture that is open but
        delivers nothing is stalled: the watchdog stops, the device is reopened after
        ``REOPEN_AFTER_S``, and systemd restarts the service if that does not help.
        """
        beat = self.heartbeat
        now = self._clock()
        facts = CaptureFacts(
            device_open=beat.opened,
            opened_at=beat.opened_at,
            last_audio_at=beat.last_period_at,
            waiting_for_device=self._waiting_for_device,
            stop_requested_at=self._stop_requested_at,
            thread_stuck=self._stuck_capture is not None,
        )
        verdict = self.health.assess(facts, now)
        previous, self._capture_state = self._capture_state, verdict.state
        device = self.config.audio.device
        if verdict.state is CaptureState.FLOWING and previous in (
            CaptureState.STALLED,
            CaptureState.STUCK,
        ):
            event("device_resumed", 'audio device "%s" delivers audio again', device)
            self.status.device = "capturing"
            self.status.device_ok = True
            self._publish_status()
        elif verdict.state is CaptureState.STALLED and previous is not CaptureState.STALLED:
            event(
                "device_stalled",
                'audio device "%s" stopped delivering audio; reopening it after %.0f s if it '
                "does not resume (the watchdog is no longer fed)",
                device,
                self.health.reopen_after_s,
                level=logging.ERROR,
                device=device,
            )
            self.status.device_ok = False
            self.status.device = f'audio device "{device}" stalled'
            self._publish_status()
        if verdict.reopen and self.capture is not None:
            event(
                "device_reopen",
                'audio device "%s" delivered nothing for %.0f s: closing and opening it again',
                device,
                verdict.stalled_s,
                level=logging.WARNING,
                device=device,
            )
            self._stop_requested_at = now
            self.capture.stop()
        if verdict.abandon and self._capture_scope is not None:
            self._stop_requested_at = None
            self._capture_scope.cancel()  # _capture_task then waits for the device's release
        return verdict.pet_watchdog

    def _stats_fields(self) -> dict[str, object]:
        counters = self.pipeline.counters
        period_s = self.fmt.period_ms / 1000
        fields: dict[str, object] = {
            "captured_s": f"{counters.periods_captured * period_s:.1f}",
            "sent_s": f"{self.link.counters.sent_s:.1f}",
            "gated_s": f"{counters.periods_gated * period_s:.1f}",
            "replayed_s": f"{self.feed.outbox.replayed_s:.1f}",
            "dropped_s": f"{sum(self.dropped_by_cause.values()):.1f}",
            "overruns": self.heartbeat.overruns,
            "invalid_buffers": counters.invalid_buffers,
            "keepalives": self.link.counters.keepalives,
            "finalizes": self.link.counters.finalizes,
            "connects": self.supervisor.counters.connects,
            "duplicates": self.duplicates.duplicates,
            "transcripts": self.sinks.written,
        }
        for cause, seconds in self.dropped_by_cause.items():
            fields[f"dropped_{cause}_s"] = f"{seconds:.1f}"
        for cause, count in self.supervisor.counters.reconnects_by_cause.items():
            fields[f"reconnects_{cause.replace('-', '_')}"] = count
        return fields

    def _log_stats(self) -> None:
        fields = self._stats_fields()
        self.status.gist = (
            f"sent {duration_text(self.link.counters.sent_s)} of "
            f"{duration_text(self.pipeline.counters.periods_captured * self.fmt.period_ms / 1000)} "
            f"captured, {fields['dropped_s']} s dropped, {fields['connects']} connection(s)"
        )
        self._publish_status()
        event(
            "stats",
            "captured %s s, sent %s s, gated %s s, replayed %s s, dropped %s s, "
            "%s keep-alives, %s transcripts",
            fields["captured_s"],
            fields["sent_s"],
            fields["gated_s"],
            fields["replayed_s"],
            fields["dropped_s"],
            fields["keepalives"],
            fields["transcripts"],
            fields_map=fields,
        )

    # -- reload --------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: re-read the config and the key as soon as the reloader is free (requests
        that arrive meanwhile make one more reload, of the newest file)."""
        if self.stopping.is_set():
            event("reload_ignored", "SIGHUP ignored: dgd is stopping")
            return
        self._reload_requested.set()

    async def _reloader(self) -> None:
        while not self.stopping.is_set():
            await self._reload_requested.wait()
            self._reload_requested = trio.Event()
            if not self.stopping.is_set():
                await self.reload()

    async def reload(self) -> None:
        """Re-read config and key; carry out the plan (``dgd.reload``). An invalid new config
        is refused and the running one stays."""
        self.notifier.reloading()
        if self._reload_config is None:
            self.notifier.ready(self.status.render())
            return
        try:
            new_config, new_key = self._reload_config()
        except ConfigError as exc:
            event(
                "reload_failed",
                "reload refused, the running configuration stays in force:\n%s",
                "\n".join(refuse(str(exc)).refused),
                level=logging.ERROR,
            )
            self.notifier.ready(self.status.render())
            return
        old = self.config
        plan = plan_reload(old, new_config, key_changed=new_key.value != self.api_key.value)
        self.config, self.api_key = new_config, new_key
        if plan.apply_in_place:
            self._apply_in_place(old, new_config)
        if plan.reopen_capture:
            await self._reopen_capture()
        if plan.reconnect:
            self._reconnect_gracefully()
        if self.supervisor.last_failure is not None:
            self.supervisor.retry_now()  # a fixed key or URL is tried at once
        event(
            "reloaded",
            "configuration reloaded (%s changed)",
            ", ".join(plan.changed) or "nothing",
            changed=",".join(plan.changed),
        )
        self.notifier.ready(self.status.render())

    def _apply_in_place(self, old: Config, new: Config) -> None:
        """Gate, output, stream and log settings take effect at once."""
        if new.gate != old.gate:
            gate = new.gate
            self.pipeline.gate.reconfigure(
                mode=gate.mode,
                threshold_dbfs=gate.threshold_dbfs,
                preroll_ms=gate.preroll_ms,
                hangover_ms=gate.hangover_ms,
            )
            self.status.gate_mode = gate.mode
            self.pipeline.finalize_on_close = gate.mode != "shadow"
        self.sinks.reconfigure(new.output)
        self.link.stream = new.stream
        self.pipeline.set_frame_ms(new.stream.frame_ms)
        self.feed.outbox.replay_buffer_s = new.stream.replay_buffer_s
        self.supervisor.apply_stream_config()
        set_level(new.log.level)

    def _reconnect_gracefully(self) -> None:
        """End the current stream with CloseStream (its finals arrive, nothing is lost); the
        supervisor then connects again with the settings now in force."""
        if self.supervisor.connected:
            self.link.close_requested.set()
            self.feed.poke()

    async def _reopen_capture(self) -> None:
        """Open capture again with the ``[audio]`` now in ``self.config``.

        Capture stops only while the device is closed and opened again. When the rate or the
        channel count changed, a ``FormatChange`` goes into the outbox behind the last audio
        of the old format: the link sends that audio on the current stream, ends it, and the
        next handshake declares the new format (``dgd.link``, ``dgd.supervisor``).
        """
        audio = self.config.audio
        self._capture_resume = trio.Event()
        if self.capture is not None:
            self.capture.stop()
        with trio.move_on_after(CAPTURE_STOP_GRACE_S):
            await self._capture_idle.wait()
        if not self._capture_idle.is_set() and self._capture_scope is not None:
            self._capture_scope.cancel()  # stuck: the capture task waits for the release
        new_fmt = pcm_format(self.config)
        if new_fmt != self.fmt:
            self.fmt = new_fmt
            self.pipeline = CapturePipeline(
                new_fmt, make_gate(self.config, audio.period_ms), self.config.stream.frame_ms
            )
            self.pipeline.finalize_on_close = self.config.gate.mode != "shadow"
            self.feed.put(FormatChange(new_fmt))
        self.status.device_ok = False
        self.status.device = f'opening audio device "{audio.device}"'
        event(
            "reload_audio",
            'capture reopens: device "%s", %d Hz, %d channel(s), %d ms periods',
            audio.device,
            audio.rate,
            audio.channels,
            audio.period_ms,
        )
        self._capture_resume.set()
