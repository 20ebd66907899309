"""One WebSocket connection to Deepgram: a sender, a receiver and a liveness check.

The sender is the only writer: it takes items from the outbox (audio frames, Finalize
markers), turns them into frames through the ``Session`` and sends them; when nothing has
been sent for ``stream.keepalive_interval_s`` it sends ``KeepAlive``. The receiver is the only
reader: it turns server messages into events. The liveness task pings and expects a pong, so
a half-open connection or a server that stopped answering is noticed within
``ping_interval_s + ping_timeout_s``. Any of them failing ends the link with a ``LinkFailure``
for the supervisor; the link itself never decides to retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from dgd.core.backoff import Failure, network_failure, timeout_failure
from dgd.core.events import AudioFrame, FormatChange, OutboxItem, Transcript
from dgd.core.messages import Metadata, Unrecognized
from dgd.core.session import Confirmed, Marker, ReplayPacer, Session, SessionEvent
from dgd.daemon import wsclient
from dgd.daemon.logsetup import event

if TYPE_CHECKING:
    from collections.abc import Callable

    from dgd.core.config import StreamConfig
    from dgd.core.outbox import Dropped, Outbox
    from dgd.core.pcm import PcmFormat

log = logging.getLogger("dgd.link")


class LinkFailure(Exception):
    """The connection failed; ``failure`` says how (for the supervisor)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.summary)
        self.failure = failure


class OutboxFeed:
    """The outbox plus the wake-up the sender waits on. Lives as long as the daemon."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._changed = trio.Event()
        self.capture_done = False  # capture stopped for good: no more items will come

    def put(self, item: OutboxItem) -> Dropped | None:
        """Queue an outbox item and wake the sender; log audio the bound made room by."""
        dropped = self.outbox.put(item)
        self._changed.set()
        if dropped is not None:
            event(
                "audio_dropped",
                "replay buffer full (stream.replay_buffer_s = %g): dropping the oldest "
                "audio, %.1f s in all so far",
                self.outbox.replay_buffer_s,
                self.outbox.statistics().dropped_s,
                level=logging.WARNING,
                repeat_key="replay-buffer-full",
                dropped_s=f"{dropped.seconds:.2f}",
            )
        return dropped

    def poke(self) -> None:
        """Wake the sender to re-check its conditions (stop, capture done)."""
        self._changed.set()

    async def wait_changed(self) -> None:
        """Wait until something was queued or ``poke`` was called."""
        await self._changed.wait()
        self._changed = trio.Event()


@dataclass(slots=True)
class LinkContext:
    """What a link needs from the daemon; shared by every connection."""

    feed: OutboxFeed
    stream: StreamConfig
    on_transcript: Callable[[Transcript], None]
    stopping: trio.Event
    #: Set to end the current connection gracefully (CloseStream) so the supervisor reconnects
    #: with new settings (config reload).
    close_requested: trio.Event = field(default_factory=trio.Event)
    #: (trio time, seconds of backlog) when a connection began with a replay backlog; the
    #: sender reports how long catching up took once the outbox runs empty.
    catchup: tuple[float, float] | None = None


class _Run:
    """One link's shared state: the first failure ends it."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.failure: Failure | None = None
        self.closed_gracefully = False

    def fail(self, failure: Failure) -> None:
        if self.failure is None and not self.closed_gracefully:
            self.failure = failure
        self.scope.cancel()

    def done(self) -> None:
        self.closed_gracefully = True
        self.scope.cancel()


async def run_link(
    ws: wsclient.WebSocketPort, session: Session, ctx: LinkContext, fmt: PcmFormat
) -> None:
    """Stream audio in ``fmt`` (what the handshake declared) until the stream closes gracefully
    after ``CloseStream``: on stop, on a reload that needs a new stream, or when the outbox
    reaches audio of another rate or channel count.

    Raises:
        LinkFailure: the connection failed, was closed by the server, stopped answering, or
            did not finish within ``stream.close_timeout_s`` of ``CloseStream``.
    """
    async with trio.open_nursery() as nursery:
        run = _Run(nursery.cancel_scope)
        nursery.start_soon(_sender, ws, session, ctx, run, fmt)
        nursery.start_soon(_receiver, ws, session, ctx, run)
        nursery.start_soon(_liveness, ws, ctx, run)
    session.connection_lost()
    if run.failure is not None:
        raise LinkFailure(run.failure)


def _on_close(run: _Run, session: Session, exc: wsclient.Closed) -> None:
    failure = session.closed(exc.code, exc.reason)
    if failure is None:
        run.done()
    else:
        run.fail(failure)


async def _send_bytes(ws: wsclient.WebSocketPort, payload: bytes, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        await ws.send_bytes(payload)


async def _send_text(ws: wsclient.WebSocketPort, text: str, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        await ws.send_text(text)


async def _sender(
    ws: wsclient.WebSocketPort, session: Session, ctx: LinkContext, run: _Run, fmt: PcmFormat
) -> None:
    feed, outbox = ctx.feed, ctx.feed.outbox
    timeout_s = ctx.stream.ping_timeout_s
    pacer = ReplayPacer(started_at=trio.current_time())
    try:
        while True:
            finishing = ctx.close_requested.is_set() or (
                ctx.stopping.is_set() and feed.capture_done
            )
            item = outbox.peek()
            if isinstance(item, FormatChange):
                if item.fmt.same_stream(fmt):
                    outbox.take_format_change()  # only the period changed: same stream
                    continue
                # Audio of another rate or channel count follows: it needs its own handshake.
                item, finishing = None, True
            if item is None and ctx.catchup is not None:
                _report_catchup(ctx)
            if item is None and finishing:
                await _send_text(ws, session.close_stream(trio.current_time()), timeout_s)
                # The receiver ends the link when the stream is finished; a server that never
                # finishes it must not hold the audio queued behind it.
                await trio.sleep(ctx.stream.close_timeout_s)
                run.fail(
                    timeout_failure(
                        f"the stream did not finish within {ctx.stream.close_timeout_s:g} s "
                        "of CloseStream"
                    )
                )
                return
            if item is None:
                with trio.move_on_at(session.keepalive_due_at()):
                    await feed.wait_changed()
                    continue
                await _keepalive_if_due(ws, session, ctx)
                continue
            if isinstance(item, AudioFrame):
                if not ctx.stopping.is_set():
                    wait_s = pacer.wait_s(
                        trio.current_time(), session.timemap.sent_s, item.duration_s
                    )
                    if wait_s > 0:
                        await _wait_or_keepalive(ws, session, ctx, wait_s)
                        continue
                payload = session.send_audio(item, trio.current_time())
                outbox.take(session.timemap.sent_s)
                await _send_bytes(ws, payload, timeout_s)
            else:
                text = session.finalize(trio.current_time())
                outbox.take(session.timemap.sent_s)
                await _send_text(ws, text, timeout_s)
    except wsclient.Closed as exc:
        _on_close(run, session, exc)
    except trio.TooSlowError:
        run.fail(timeout_failure(f"a send did not complete within {timeout_s:g} s"))
    except (OSError, trio.BrokenResourceError) as exc:
        run.fail(network_failure(str(exc) or type(exc).__name__))


def _report_catchup(ctx: LinkContext) -> None:
    assert ctx.catchup is not None
    started_at, backlog_s = ctx.catchup
    ctx.catchup = None
    took_s = trio.current_time() - started_at
    event(
        "caught_up",
        "replay done: %.1f s of buffered audio sent in %.1f s; streaming live again",
        backlog_s,
        took_s,
        backlog_s=f"{backlog_s:.2f}",
        took_s=f"{took_s:.2f}",
    )


async def _wait_or_keepalive(
    ws: wsclient.WebSocketPort, session: Session, ctx: LinkContext, wait_s: float
) -> None:
    """Sleep for replay pacing, still sending KeepAlive if one falls due meanwhile."""
    deadline = trio.current_time() + wait_s
    while trio.current_time() < deadline:
        await trio.sleep_until(min(deadline, session.keepalive_due_at()))
        await _keepalive_if_due(ws, session, ctx)


async def _keepalive_if_due(ws: wsclient.WebSocketPort, session: Session, ctx: LinkContext) -> None:
    """The one keep-alive path: send ``KeepAlive`` if the session says one is due."""
    text = session.handle_timer(trio.current_time())
    if text is not None:
        await _send_text(ws, text, ctx.stream.ping_timeout_s)


async def _receiver(
    ws: wsclient.WebSocketPort, session: Session, ctx: LinkContext, run: _Run
) -> None:
    outbox = ctx.feed.outbox
    try:
        while True:
            payload = await ws.receive()
            for item in session.receive(payload):
                _dispatch(item, session, ctx, outbox)
            if session.finished:
                run.done()
                return
    except wsclient.Closed as exc:
        _on_close(run, session, exc)
    except (OSError, trio.BrokenResourceError) as exc:
        run.fail(network_failure(str(exc) or type(exc).__name__))


def _dispatch(item: SessionEvent, session: Session, ctx: LinkContext, outbox: Outbox) -> None:
    if isinstance(item, Transcript):
        ctx.on_transcript(item)
    elif isinstance(item, Confirmed):
        outbox.confirm(item.offset_s)
        session.timemap.forget_before(item.offset_s)
    elif isinstance(item, Metadata):
        event(
            "metadata",
            "Deepgram received %.2f s of audio on this stream (request %s)",
            item.duration_s,
            item.request_id,
            request_id=item.request_id,
            audio_s=f"{item.duration_s:.3f}",
        )
    elif isinstance(item, Unrecognized):
        event(
            "unrecognized_message",
            "bad server message: %s [%s]",
            item.reason,
            item.excerpt,
            level=logging.WARNING,
            repeat_key=f"unrecognized:{item.reason[:40]}",
        )
    elif isinstance(item, Marker):
        log.debug("%s at %.3f", item.kind, item.at_s)


async def _liveness(ws: wsclient.WebSocketPort, ctx: LinkContext, run: _Run) -> None:
    interval_s, timeout_s = ctx.stream.ping_interval_s, ctx.stream.ping_timeout_s
    try:
        while True:
            await trio.sleep(interval_s)
            with trio.fail_after(timeout_s):
                await ws.ping()
    except trio.TooSlowError:
        run.fail(timeout_failure(f"no answer to a ping within {timeout_s:g} s"))
    except wsclient.Closed:
        pass  # the receiver reports the close with its code
