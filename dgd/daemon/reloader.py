"""The reload executor: SIGHUP → re-read the config and the key → carry out the plan.

``dgd.core.reload.plan_reload`` decides what a new configuration changes; this task carries
the plans out one at a time, and SIGHUPs that arrive meanwhile coalesce into one more reload
of the newest file, so any sequence of them ends with the daemon running exactly the file.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from dgd.core.config import ApiKey, Config, ConfigError
from dgd.core.events import FormatChange
from dgd.core.gate import GateMode
from dgd.core.pipeline import make_pipeline, pcm_format
from dgd.core.reload import plan_reload, refuse
from dgd.daemon.logsetup import event, set_level

if TYPE_CHECKING:
    from collections.abc import Callable

    from dgd.core.pcm import PcmFormat
    from dgd.daemon.app import Daemon


class Reloader:
    """Carries out reloads for ``daemon``.

    Args:
        daemon: the running daemon (its config, key and parts are what a reload changes).
        read_config: re-reads the config file and the key (None: a reload only says READY).
    """

    def __init__(
        self, daemon: Daemon, read_config: Callable[[], tuple[Config, ApiKey]] | None
    ) -> None:
        self._daemon = daemon
        self._read_config = read_config
        self._reload_requested = trio.Event()

    def request(self) -> None:
        """SIGHUP: re-read the config and the key as soon as the reloader is free (requests
        that arrive meanwhile make one more reload, of the newest file)."""
        d = self._daemon
        if d.stopping.is_set():
            event("reload_ignored", "SIGHUP ignored: dgd is stopping")
            return
        self._reload_requested.set()

    async def run(self) -> None:
        d = self._daemon
        while not d.stopping.is_set():
            await self._reload_requested.wait()
            self._reload_requested = trio.Event()
            if not d.stopping.is_set():
                await self.reload()

    async def reload(self) -> None:
        """Re-read config and key; carry out the plan (``dgd.core.reload``). An invalid new config
        is refused and the running one stays."""
        d = self._daemon
        d.notifier.reloading()
        d.sinks.reopen()  # logrotate's postrotate: a new JSONL file, whatever the config says
        if self._read_config is None:
            d.notifier.ready(d.status.render())
            return
        try:
            new_config, new_key = self._read_config()
        except ConfigError as exc:
            problems = refuse(str(exc)).refused or ("the configuration is invalid",)
            event(
                "reload_failed",
                "reload refused, the running configuration stays in force:\n%s",
                "\n".join(problems),
                level=logging.ERROR,
            )
            # systemd 257 cannot fail the reload job (sdnotify's docstring): STATUS= says it,
            # on one line, until a reload succeeds; the journal has every problem.
            more = f" (and {len(problems) - 1} more: journalctl -u dgd)" if problems[1:] else ""
            d.notifier.reload_refused(
                d.status.render(),
                f"reload refused, the previous configuration stays: {problems[0]}{more}",
            )
            return
        old = d.config
        plan = plan_reload(old, new_config, key_changed=new_key.value != d.api_key.value)
        d.config, d.api_key = new_config, new_key
        if plan.apply_in_place:
            self._apply_in_place(old, new_config)
        if plan.reopen_capture:
            await self._reopen_capture()
        if plan.configure:
            self._configure(plan.configure)
        if plan.reconnect:
            self._reconnect_gracefully()
        if d.supervisor.last_failure is not None:
            d.supervisor.retry_now()  # a fixed key or URL is tried at once
        if not plan.reopen_capture:
            d.mic.retry_now()  # a device that was waited for (perhaps fixed) is tried at once
        event(
            "reloaded",
            "configuration reloaded (%s changed)",
            ", ".join(plan.changed) or "nothing",
            changed=",".join(plan.changed),
        )
        d.notifier.ready(d.status.render())

    def _apply_in_place(self, old: Config, new: Config) -> None:
        """Gate, output, stream and log settings take effect at once."""
        d = self._daemon
        if new.gate != old.gate:
            gate = new.gate
            d.mic.pipeline.gate.reconfigure(
                mode=gate.mode,
                threshold_dbfs=gate.threshold_dbfs,
                preroll_ms=gate.preroll_ms,
                hangover_ms=gate.hangover_ms,
            )
            d.status.gate_mode = gate.mode
            d.mic.pipeline.finalize_on_close = gate.mode is not GateMode.SHADOW
        d.sinks.reconfigure(new.output)
        d.link.stream = new.stream
        d.mic.pipeline.set_frame_ms(new.stream.frame_ms)
        d.feed.outbox.replay_buffer_s = new.stream.replay_buffer_s
        d.supervisor.apply_stream_config()
        set_level(new.log.level)

    def _reconnect_gracefully(self) -> None:
        """End the current stream with CloseStream (its finals arrive, nothing is lost); the
        supervisor then connects again with the settings now in force."""
        d = self._daemon
        if d.supervisor.connected:
            d.link.reconnect_gracefully()

    def _configure(self, text: str) -> None:
        """Change the open stream's settings with the ``Configure`` frame ``text``; the link
        reconnects instead if the server refuses it or does not answer. Without an open
        stream there is nothing to do: the next handshake carries the new settings."""
        d = self._daemon
        if d.supervisor.connected:
            d.link.configure(text)

    def _format_changed(self, fmt: PcmFormat) -> None:
        d = self._daemon
        d.feed.put(FormatChange(fmt))

    async def _reopen_capture(self) -> None:
        """Open capture again with the ``[audio]`` now in ``d.config``.

        Capture stops only while the device is closed and opened again. When the rate or the
        channel count changed, a ``FormatChange`` goes into the outbox behind the last audio
        of the old format: the link sends that audio on the current stream, ends it, and the
        next handshake declares the new format (``dgd.daemon.link``, ``dgd.daemon.supervisor``).
        """
        d = self._daemon
        audio = d.config.audio
        new_fmt = pcm_format(d.config)
        new_pipeline = make_pipeline(d.config) if new_fmt != d.mic.pipeline.fmt else None
        await d.mic.reopen(new_pipeline, before_resuming=self._format_changed)
        event(
            "reload_audio",
            'capture reopens: device "%s", %d Hz, %d channel(s), %d ms periods',
            audio.device,
            audio.rate,
            audio.channels,
            audio.period_ms,
        )
