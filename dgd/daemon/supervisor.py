"""The supervisor: the one place that decides to retry, how soon, or to give up.

It runs connections one after another. Each failure is classified (``dgd.core.backoff``), logged
as one journal line with the classification, the attempt number and the next delay, shown in
``STATUS=``, and followed by a wait that SIGHUP (a fixed key) or a stop cuts short. Audio that
was sent but not confirmed by a final result goes back in front of the outbox (replay), so no
word is lost to a dropped connection. The daemon never exits because Deepgram said no: a
rejected key is retried slowly until someone fixes it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from typing import TYPE_CHECKING, Final

import trio

from dgd.core.backoff import (
    Failure,
    RetryPolicy,
    Verdict,
    classify_rejection,
    config_failure,
    network_failure,
    proxy_failure,
    tls_failure,
)
from dgd.core.config import ConfigError
from dgd.core.connection import listen_url, parse_rejection
from dgd.core.events import FormatChange
from dgd.core.session import Session, SessionStatistics
from dgd.core.stats import LinkStatistics
from dgd.daemon import clocksync, credentials, transport, wsclient
from dgd.daemon.link import LinkContext, LinkFailure, run_link
from dgd.daemon.logsetup import event

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from dgd.core.config import Config

log = logging.getLogger("dgd.supervisor")

#: Pause between the few connection attempts made while shutting down.
SHUTDOWN_RETRY_S: Final = 0.5
#: After a certificate was refused for its dates: how often the clock is looked at, ...
CLOCK_POLL_S: Final = 1.0
#: ... and how far the wall clock must move against the monotonic one to count as set.
CLOCK_STEP_S: Final = 2.0


class Supervisor:
    """Keeps one connection to Deepgram alive for as long as the daemon runs.

    Args:
        ctx: what every link shares (outbox, stream config, sinks, stop event).
        config: returns the config in force (it changes on reload).
        api_key: returns the API key in force (it changes on reload).
        set_status: shows a line in ``STATUS=``.
        rng: randomness for backoff jitter.
        connect: opens a WebSocket (``wsclient.connect``; tests pass an in-memory one).
        environ: the proxy variables' source (``os.environ`` when None).
        clock_synchronized: is the system clock set? (``clocksync``; tests inject it).
    """

    def __init__(
        self,
        ctx: LinkContext,
        *,
        config: Callable[[], Config],
        api_key: Callable[[], str],
        set_status: Callable[[str], None],
        rng: random.Random | None = None,
        connect: wsclient.Connector = wsclient.connect,
        environ: Mapping[str, str] | None = None,
        clock_synchronized: Callable[[], bool | None] = clocksync.clock_synchronized,
    ) -> None:
        self.ctx = ctx
        self._connect = connect
        # The proxy variables are read per attempt: ``os.environ`` unless a test passes its own.
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._clock_synchronized = clock_synchronized
        self._networks = transport.NetworkCache()
        self._config = config
        self._api_key = api_key
        self._set_status = set_status
        stream = config().stream
        self.policy = RetryPolicy(
            initial_s=stream.backoff_initial_s,
            max_s=stream.backoff_max_s,
            rate_limited_s=stream.rate_limited_backoff_s,
            rejected_s=stream.rejected_retry_s,
            rng=rng or random.Random(),
        )
        self._connects = 0
        self._reconnects_by_cause: dict[str, int] = {}
        self._finished_streams = SessionStatistics()
        self._session: Session | None = None
        self.connected = False
        self.last_failure: Failure | None = None
        self._retry_now = trio.Event()
        self._stopping_attempts = 0

    def statistics(self) -> LinkStatistics:
        """Connections so far and what their streams sent and received."""
        streams = self._finished_streams
        if self._session is not None:
            streams += self._session.statistics()
        return LinkStatistics(
            streams=streams,
            connects=self._connects,
            reconnects_by_cause=dict(self._reconnects_by_cause),
        )

    def retry_now(self) -> None:
        """Cut the current backoff wait short and start from the first attempt (SIGHUP)."""
        self.policy.reset()
        self._retry_now.set()

    def apply_stream_config(self) -> None:
        """Take over reloaded backoff settings."""
        stream = self._config().stream
        self.policy.initial_s = stream.backoff_initial_s
        self.policy.max_s = stream.backoff_max_s
        self.policy.rate_limited_s = stream.rate_limited_backoff_s
        self.policy.rejected_s = stream.rejected_retry_s

    def _finished(self) -> bool:
        outbox = self.ctx.feed.outbox
        return (
            self.ctx.stopping.is_set()
            and self.ctx.feed.capture_done
            and not outbox.has_pending
            and outbox.in_flight_s == 0
        )

    async def run(self) -> None:
        """Connect, stream, and reconnect until the daemon stops and everything was sent."""
        while not self._finished():
            failure = await self._connect_once()
            if failure is None:
                if self.ctx.stopping.is_set():
                    return
                continue  # a reload closed the stream gracefully: reconnect with new settings
            self.last_failure = failure
            self.ctx.feed.outbox.rewind()
            cause = failure.cause
            self._reconnects_by_cause[cause] = self._reconnects_by_cause.get(cause, 0) + 1
            if self.ctx.stopping.is_set():
                # Shutting down: a transient failure gets a few quick tries (the caller's
                # close timeout bounds them) to deliver what is buffered; a refusal will not
                # change in the seconds left, so it is not retried.
                self._stopping_attempts += 1
                if failure.verdict is not Verdict.TRANSIENT or self._stopping_attempts > 3:
                    self._log_decision(failure, math.inf)
                    return
                self._log_decision(failure, SHUTDOWN_RETRY_S)
                await trio.sleep(SHUTDOWN_RETRY_S)
                continue
            delay_s = self.policy.failed(failure, trio.current_time())
            self._log_decision(failure, delay_s)
            await self._wait(delay_s, failure)

    async def _connect_once(self) -> Failure | None:
        config = self._config()
        outbox = self.ctx.feed.outbox
        # The handshake declares the format of the audio it will carry: the outbox's head.
        while isinstance(outbox.peek(), FormatChange):
            outbox.take_format_change()
        fmt = outbox.format
        url = listen_url(config.deepgram.url, config.deepgram.query, fmt.rate_hz, fmt.channels)
        stream = config.stream
        self._set_status("connecting")
        try:
            # Checked per attempt (a reload or an edited file changes it), built only when
            # something changed.
            network = self._networks.get(config.deepgram, self._environ)
        except ConfigError as exc:
            return config_failure(str(exc))
        try:
            # A temporary token is fetched per attempt (deepgram.auth): the last one may have
            # expired. The grant goes through the same network (proxy, CAs) as the WebSocket,
            # so its TLS and proxy failures are classified below like the WebSocket's.
            api_key = self._api_key()
            auth = await credentials.authorization(
                config.deepgram,
                api_key,
                network=network,
                timeout_s=stream.connect_timeout_s,
            )
            async with self._connect(
                url,
                auth.headers,
                connect_timeout_s=stream.connect_timeout_s,
                disconnect_timeout_s=min(2.0, stream.close_timeout_s),
                network=network,
            ) as ws:
                self._on_connected()
                if self._config().deepgram != config.deepgram or self._api_key() != api_key:
                    # A reload came during the handshake, which carried the settings before
                    # it (and found no open stream to Configure or close): end this stream
                    # gracefully at once, so that the next one carries the new settings.
                    self.ctx.reconnect_gracefully()
                session = Session(
                    keepalive_interval_s=stream.keepalive_interval_s, now=trio.current_time()
                )
                self._session = session
                try:
                    await run_link(ws, session, self.ctx, fmt)
                finally:
                    self._session = None
                    self._finished_streams += session.statistics()
                    self.connected = False
                    self.ctx.close_requested = trio.Event()
        except credentials.CredentialError as exc:
            return exc.failure
        except wsclient.Rejected as exc:
            rejection = parse_rejection(exc.status, exc.headers, exc.body)
            return classify_rejection(rejection, auth.credential)
        except transport.TlsError as exc:
            return tls_failure(
                exc.verify_code, str(exc), clock_synchronized=self._clock_synchronized()
            )
        except transport.ProxyError as exc:
            return proxy_failure(exc.status, str(exc))
        except wsclient.NetworkError as exc:
            return network_failure(str(exc))
        except LinkFailure as exc:
            return exc.failure
        return None

    def _on_connected(self) -> None:
        self.connected = True
        self._connects += 1
        self.policy.connected(trio.current_time())
        outbox = self.ctx.feed.outbox
        backlog_s = outbox.pending_s
        if self.last_failure is not None:
            event(
                "connected",
                "connected to Deepgram again after %s; replaying %.1f s of audio",
                self.last_failure.cause,
                backlog_s,
                attempt=self.policy.attempt,
                backlog_s=f"{backlog_s:.2f}",
            )
            if backlog_s > 0:
                self.ctx.catchup = (trio.current_time(), backlog_s)
        else:
            event("connected", "connected to Deepgram", attempt=0)
        self.last_failure = None
        self._set_status("streaming")

    def _log_decision(self, failure: Failure, delay_s: float) -> None:
        """One journal line per decision; the same failure again is folded (RepeatFilter)."""
        level = logging.ERROR if failure.verdict is Verdict.REJECTED else logging.WARNING
        attempt = self.policy.attempt
        event(
            "disconnected",
            "%s [%s]; attempt %d, next try in %s; %.1f s of audio kept for replay",
            failure.summary,
            failure.verdict.value,
            attempt,
            "none (stopping)" if math.isinf(delay_s) else f"{delay_s:.1f} s",
            self.ctx.feed.outbox.pending_s,
            level=level,
            repeat_key=f"disconnected:{failure.cause}:{failure.status}",
            verdict=failure.verdict.value,
            cause=failure.cause,
            attempt=attempt,
            next_delay_s=f"{delay_s:.1f}",
        )

    async def _wait(self, delay_s: float, failure: Failure) -> None:
        deadline = trio.current_time() + delay_s
        self._retry_now = trio.Event()
        if failure.verdict is Verdict.CLOCK:
            await self._wait_for_clock(deadline, failure)
            return
        while True:
            remaining_s = deadline - trio.current_time()
            if remaining_s <= 0 or self._retry_now.is_set() or self.ctx.stopping.is_set():
                return
            if failure.verdict is Verdict.REJECTED:
                self._set_status(f"{failure.status}; retrying in {remaining_s:.0f} s")
            else:
                self._set_status(
                    f"reconnecting in {remaining_s:.1f} s (attempt {self.policy.attempt}): "
                    f"{failure.status}"
                )
            # Refresh the countdown now and then, not every tick: STATUS= is for humans.
            with trio.move_on_after(min(remaining_s, 10.0)):
                await _wait_any(self._retry_now, self.ctx.stopping)

    async def _wait_for_clock(self, deadline: float, failure: Failure) -> None:
        """After a certificate was refused for its dates: wait until the clock becomes
        synchronised or is stepped (the wall clock jumps against the monotonic one), a reload
        or stop, or ``deadline`` (the clock may be right and the certificate wrong)."""
        was_synchronized = self._clock_synchronized()
        offset_s = time.time() - time.monotonic()
        while True:
            remaining_s = deadline - trio.current_time()
            if remaining_s <= 0 or self._retry_now.is_set() or self.ctx.stopping.is_set():
                return
            synchronized = self._clock_synchronized()
            stepped = abs(time.time() - time.monotonic() - offset_s) > CLOCK_STEP_S
            if stepped or (synchronized and not was_synchronized):
                log.info("the system clock was set; connecting again")
                return
            self._set_status(
                f"{failure.status}: waiting for the system clock to be set "
                f"(retrying in {remaining_s:.0f} s)"
            )
            with trio.move_on_after(min(remaining_s, CLOCK_POLL_S)):
                await _wait_any(self._retry_now, self.ctx.stopping)


async def _wait_any(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for ev in events:

            async def waiter(ev: trio.Event = ev) -> None:
                await ev.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(waiter)
