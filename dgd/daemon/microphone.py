"""The microphone as the daemon sees it: one audio source kept running for the daemon's life.

``Microphone.run`` opens the device through the audio-source port, waits for an absent or
busy one (``DeviceRetry``), reopens one that stalls, and never opens it again while its own
previous source still holds it (``dgd.daemon.capture``). ``check`` turns the heartbeat into the
capture-health verdict (``dgd.core.health``): the events, the ``STATUS=`` text, a reopen, and
whether the watchdog may be fed.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Final

import trio

from dgd.core.backoff import DeviceRetry
from dgd.core.health import CaptureFacts, CaptureHealth, CaptureState
from dgd.core.pipeline import CaptureStatistics
from dgd.daemon.alsadevice import DeviceError, DeviceProblem, read_periods
from dgd.daemon.capture import Heartbeat, SourceSpec
from dgd.daemon.logsetup import event

if TYPE_CHECKING:
    from collections.abc import Callable

    from dgd.core.config import Config
    from dgd.core.events import PipelineOutput
    from dgd.core.pcm import PcmFormat
    from dgd.core.pipeline import CapturePipeline
    from dgd.core.status import StatusBoard
    from dgd.daemon.capture import AudioSource, OpenSource

#: How long a stop or a reopen waits for the source to hand over its last partial frame
#: and release the device (it takes two reads' time, 0.2 s, unless stuck in the driver).
RELEASE_WAIT_S: Final = 0.5


class Microphone:
    """Keeps one audio source running.

    Args:
        config: the configuration in force (read at every opening).
        pipeline: what the source feeds (replaced by ``reopen`` when the format changes).
        deliver: the daemon's handler for pipeline output (in trio; must not block).
        status: the STATUS board (its device part is written here).
        publish_status: sends the STATUS line after a change.
        open_source: the audio-source port.
        clock: the monotonic clock the source stamps the heartbeat with.
        stopping: set when the daemon stops.
    """

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        pipeline: CapturePipeline,
        deliver: Callable[[list[PipelineOutput]], None],
        status: StatusBoard,
        publish_status: Callable[[], None],
        open_source: OpenSource,
        clock: Callable[[], float],
        stopping: trio.Event,
    ) -> None:
        self._config = config
        self.pipeline = pipeline
        self._deliver = deliver
        self._status = status
        self._publish_status = publish_status
        self._open_source = open_source
        self._clock = clock
        self._stopping = stopping
        self.heartbeat = Heartbeat()
        self.health = CaptureHealth()
        self.retry = DeviceRetry()
        #: Set once the first opening succeeded or failed (READY=1 waits for it).
        self.first_attempt = trio.Event()
        self._source: AudioSource | None = None
        self._scope: trio.CancelScope | None = None
        self._backoff: trio.CancelScope | None = None  # the wait before the next opening
        self._idle = trio.Event()  # set while no source runs
        self._resume = trio.Event()  # cleared while a reload holds capture
        self._resume.set()
        self._state = CaptureState.STARTING
        self._waiting_for_device = False
        self._stop_requested_at: float | None = None  # a reopen asked the source to stop
        self._stuck: AudioSource | None = None  # abandoned, still holds the device
        self._retired = CaptureStatistics()  # pipelines a new format replaced

    def statistics(self) -> CaptureStatistics:
        """Audio captured since the daemon started, across format changes."""
        return self._retired + self.pipeline.statistics()

    @property
    def device(self) -> str:
        return self._config().audio.device

    async def run(self) -> None:
        """Keep one source running until the daemon stops; open the device again whenever it
        fails, or ``check`` asks for a reopen after a stall."""
        while not self._stopping.is_set():
            # A reload may hold capture again (a new, unset ``_resume``) between the wake-up
            # and here: wait for the newest one, so a source is never started with the
            # configuration or pipeline a reload is about to replace.
            while not self._resume.is_set():
                await self._resume.wait()
            self._idle = trio.Event()
            config = self._config()
            fmt = self.pipeline.fmt
            source = self._open_source(
                SourceSpec(
                    device=config.audio.device,
                    fmt=fmt,
                    pipeline=self.pipeline,
                    deliver=self._deliver,
                    on_opened=functools.partial(self._opened, config.audio.device),
                    heartbeat=self.heartbeat,
                    periods_per_read=read_periods(fmt, config.stream.frame_ms),
                )
            )
            self._source = source
            self._scope = trio.CancelScope()
            failure: DeviceError | None = None
            try:
                with self._scope:
                    await source.capture()
            except DeviceError as exc:
                failure = exc
            finally:
                self._stop_requested_at = None
                self._idle.set()
            if not source.released.is_set() and not self._stopping.is_set():
                await self._wait_released(source)
            if failure is not None:
                await self._failed(failure)

    async def stop(self) -> None:
        """Stop capturing for good (shutdown): the source hands over its last partial frame;
        one stuck in the driver is abandoned."""
        await self._stop_source()

    async def reopen(
        self,
        pipeline: CapturePipeline | None = None,
        *,
        before_resuming: Callable[[PcmFormat], None] | None = None,
    ) -> None:
        """Close the device and open it again with the configuration now in force (reload).

        Capture stops only meanwhile. ``pipeline`` replaces the current one (a new format);
        ``before_resuming(fmt)`` is called with its format once the old source has handed
        over its last audio and before the new one starts (the format boundary).
        """
        self._resume = trio.Event()
        await self._stop_source()
        if pipeline is not None:
            self._retired += self.pipeline.statistics()
            self.pipeline = pipeline
            if before_resuming is not None:
                before_resuming(pipeline.fmt)
        self._status.device_ok = False
        self._status.device = f'opening audio device "{self.device}"'
        self.retry_now()  # the new configuration may fit the device: try it now
        self._resume.set()

    def retry_now(self) -> None:
        """Cut a wait before the next opening short (a reload: whoever reloads may have fixed
        the device, e.g. replaced a microphone that delivered another format)."""
        if self._backoff is not None:
            self._backoff.cancel()

    async def _stop_source(self) -> None:
        if self._source is not None:
            self._source.stop()
        with trio.move_on_after(RELEASE_WAIT_S):
            await self._idle.wait()
        if not self._idle.is_set() and self._scope is not None:
            self._scope.cancel()  # stuck inside alsa-lib: ``run`` waits for the release

    async def _wait_released(self, source: AudioSource) -> None:
        """An abandoned source still holds the device: wait for it before opening again.

        Nothing in-process can interrupt a call stuck inside alsa-lib or the driver, so the
        watchdog stays unpetted meanwhile (``dgd.core.health``) and systemd restarts dgd if the
        thread never lets go.
        """
        self._stuck = source
        event(
            "capture_stuck",
            'the capture thread is stuck inside the audio driver and still holds audio device "%s"'
            ": dgd cannot reopen it while it does; the watchdog is no longer fed, so systemd "
            "restarts dgd (WatchdogSec) unless the driver lets go first",
            source.device,
            level=logging.ERROR,
            device=source.device,
        )
        self._set_device(f'capture stuck in the driver for audio device "{source.device}"')
        await source.released.wait()
        self._stuck = None
        event("capture_released", 'the stuck capture thread released "%s"', source.device)

    def _opened(self, device: str) -> None:
        if not self._status.device_ok:
            event("device_opened", 'audio device "%s" opened; capturing', device, device=device)
        self.retry.opened()
        self._waiting_for_device = False
        self._set_device("capturing", ok=True)
        self.first_attempt.set()

    async def _failed(self, exc: DeviceError) -> None:
        was_ok = self._status.device_ok
        self._waiting_for_device = True
        misconfigured = exc.problem is DeviceProblem.FORMAT
        delay_s = self.retry.failed(misconfigured=misconfigured)
        name = (
            "device_format" if misconfigured else "device_lost" if was_ok else "device_unavailable"
        )
        event(
            name,
            "%s; retrying in %.1f s",
            exc,
            delay_s,
            level=logging.ERROR,
            repeat_key=f"device:{exc.problem.value}",
            device=exc.device,
            problem=exc.problem.value,
        )
        if misconfigured:
            self._set_device(f'audio device "{exc.device}" does not deliver the configured format')
        else:
            self._set_device(f'waiting for audio device "{exc.device}"')
        self.first_attempt.set()
        self._backoff = trio.CancelScope()
        with self._backoff, trio.move_on_after(delay_s):
            await self._stopping.wait()
        self._backoff = None

    def _set_device(self, text: str, *, ok: bool = False) -> None:
        self._status.device_ok = ok
        self._status.device = text
        self._publish_status()

    def check(self) -> bool:
        """Act on the capture-health verdict now; True if the watchdog may be fed.

        A missing or unplugged microphone is not a fault a restart can fix, so the watchdog is
        fed while dgd waits for it (and STATUS says so). A source that is open but delivers
        nothing is stalled: the watchdog stops, the device is reopened after
        ``reopen_after_s``, and systemd restarts the service if that does not help.
        """
        beat = self.heartbeat
        now = self._clock()
        facts = CaptureFacts(
            device_open=beat.opened,
            opened_at=beat.opened_at,
            last_audio_at=beat.last_period_at,
            waiting_for_device=self._waiting_for_device,
            stop_requested_at=self._stop_requested_at,
            thread_stuck=self._stuck is not None,
        )
        verdict = self.health.assess(facts, now)
        previous, self._state = self._state, verdict.state
        device = self.device
        if verdict.state is CaptureState.FLOWING and previous in (
            CaptureState.STALLED,
            CaptureState.STUCK,
        ):
            event("device_resumed", 'audio device "%s" delivers audio again', device)
            self._set_device("capturing", ok=True)
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
            self._set_device(f'audio device "{device}" stalled')
        if verdict.reopen and self._source is not None:
            event(
                "device_reopen",
                'audio device "%s" delivered nothing for %.0f s: closing and opening it again',
                device,
                verdict.stalled_s,
                level=logging.WARNING,
                device=device,
            )
            self._stop_requested_at = now
            self._source.stop()
        if verdict.abandon and self._scope is not None:
            self._stop_requested_at = None
            self._scope.cancel()  # ``run`` then waits for the device's release
        return verdict.pet_watchdog
