"""One WebSocket connection to Deepgram: a sender, a receiver and a liveness check.

The sender is the only writer: it takes items from the outbox (audio frames, Finalize
markers), turns them into frames through the ``Session`` and sends them; when nothing has
been sent for ``stream.keepalive_interval_s`` it sends ``KeepAlive``. The receiver is the only
reader: it turns server messages into events. The liveness task pings and expects a pong, so
a half-open connection or a server that stopped answering is noticed within
``ping_interval_s + ping_timeout_s``. Any of them failing ends the link with a ``LinkFailure``
for the supervisor; the link itself never decides to retry.

A reload that changes only what ``Configure`` can change (``dgd.core.reload``) hands the link
a ``Configure`` frame (``LinkContext.configure``); the sender sends it on the open stream and a
watcher waits ``CONFIGURE_ANSWER_TIMEOUT_S`` for the answer. ``ConfigureSuccess`` is logged
(``configured``); ``ConfigureFailure``, an ``Error`` in its place, or no answer in time ends
the stream gracefully instead (``close_requested``), so the next handshake carries the new
settings and nothing is lost. An ``Error`` message is logged with its code; when the server
then closes the stream, the ``LinkFailure`` names the Error (``classify_server_error``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from dgd.core.backoff import Failure, classify_server_error, network_failure, timeout_failure
from dgd.core.connection import parse_close
from dgd.core.events import AudioFrame, FormatChange, OutboxItem, Transcript
from dgd.core.logtext import printable
from dgd.core.messages import (
    ConfigureFailure,
    ConfigureSuccess,
    Metadata,
    ServerError,
    Unrecognized,
)
from dgd.core.session import Confirmed, Marker, ReplayPacer, Session, SessionEvent
from dgd.daemon import wsclient
from dgd.daemon.logsetup import event

if TYPE_CHECKING:
    from collections.abc import Callable

    from dgd.core.config import StreamConfig
    from dgd.core.outbox import Dropped, Outbox
    from dgd.core.pcm import PcmFormat

log = logging.getLogger("dgd.link")

#: How long the link waits for the answer to a ``Configure`` (Deepgram answers each one with
#: exactly one ``ConfigureSuccess`` or ``ConfigureFailure``) before it gives up on it and
#: reconnects with the new settings: a round trip and the server's work take well under a
#: second, and audio keeps flowing while the link waits, so a few seconds cost nothing.
CONFIGURE_ANSWER_TIMEOUT_S: Final = 5.0
#: Longest excerpt of new settings (a Configure frame, the keyterms in effect) in a log line:
#: a list of hundreds of keyterms is config the operator has, not news for the journal.
LOGGED_SETTINGS_CHARS: Final = 200


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
    #: A ``Configure`` text frame the sender is to send on the open stream (config reload),
    #: None when there is none; the sender takes it. Each connection starts without one: its
    #: handshake already carries the settings in force.
    configure_text: str | None = None

    def configure(self, text: str) -> None:
        """Change settings on the open stream with ``text`` (a ``Configure`` frame, newest
        wins); the link falls back to a graceful reconnect if the server does not accept it."""
        self.configure_text = text
        self.feed.poke()

    def reconnect_gracefully(self) -> None:
        """End the current stream with ``CloseStream`` so the next handshake carries the
        settings now in force (its finals arrive; nothing is lost)."""
        self.close_requested.set()
        self.feed.poke()


class _Run:
    """One link's shared state: the first failure ends it."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.failure: Failure | None = None
        self.closed_gracefully = False
        #: The ``Error`` the server sent on this stream, if any: a close that follows is
        #: reported as that Error.
        self.server_error: ServerError | None = None
        #: ``Configure`` frames sent and not yet answered, and when the newest one is due.
        self.configures_unanswered = 0
        self.configure_due_at = 0.0
        self.configure_changed = trio.Event()

    def configure_sent(self, now: float) -> None:
        self.configures_unanswered += 1
        self.configure_due_at = now + CONFIGURE_ANSWER_TIMEOUT_S
        self.configure_changed.set()

    def configure_answered(self) -> bool:
        """One ``Configure`` was answered; False when none was waiting for an answer."""
        if self.configures_unanswered == 0:
            return False
        self.configures_unanswered -= 1
        self.configure_changed.set()
        return True

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
    ctx.configure_text = None  # this stream's handshake carries the settings in force
    async with trio.open_nursery() as nursery:
        run = _Run(nursery.cancel_scope)
        nursery.start_soon(_sender, ws, session, ctx, run, fmt)
        nursery.start_soon(_receiver, ws, session, ctx, run)
        nursery.start_soon(_liveness, ws, ctx, run)
        nursery.start_soon(_configure_watch, ctx, run)
    session.connection_lost()
    if run.failure is not None:
        raise LinkFailure(run.failure)


def _on_close(run: _Run, session: Session, exc: wsclient.Closed) -> None:
    failure = session.closed(exc.code, exc.reason)
    if failure is None:
        run.done()
        return
    if run.server_error is not None:
        # The Error said why; the close that follows it only ends the stream.
        error = run.server_error
        failure = classify_server_error(
            error.code, error.description, parse_close(exc.code, exc.reason)
        )
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
            if ctx.configure_text is not None:
                text, ctx.configure_text = ctx.configure_text, None
                if not finishing:  # else the next handshake carries the new settings anyway
                    await _send_text(ws, session.configure(text, trio.current_time()), timeout_s)
                    run.configure_sent(trio.current_time())
                    event(
                        "configure_sent",
                        "new settings sent to the open stream: %s",
                        printable(text, LOGGED_SETTINGS_CHARS),
                    )
                continue
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
                _dispatch(item, session, ctx, run, outbox)
            if session.finished:
                run.done()
                return
    except wsclient.Closed as exc:
        _on_close(run, session, exc)
    except (OSError, trio.BrokenResourceError) as exc:
        run.fail(network_failure(str(exc) or type(exc).__name__))


def _dispatch(
    item: SessionEvent, session: Session, ctx: LinkContext, run: _Run, outbox: Outbox
) -> None:
    if isinstance(item, ServerError | ConfigureSuccess | ConfigureFailure):
        _on_control_answer(item, ctx, run)
    elif isinstance(item, Transcript):
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


def _on_control_answer(
    item: ServerError | ConfigureSuccess | ConfigureFailure, ctx: LinkContext, run: _Run
) -> None:
    """Log an ``Error`` or a ``Configure`` answer; fall back to a graceful reconnect when the
    server refused new settings (``ConfigureFailure``, or an ``Error`` in its place)."""
    if isinstance(item, ConfigureSuccess):
        run.configure_answered()
        terms = "unchanged" if item.keyterms is None else ", ".join(item.keyterms) or "none"
        event(
            "configured",
            "Deepgram applied the new settings to the open stream (keyterms: %s)",
            printable(terms, LOGGED_SETTINGS_CHARS),
            keyterm_count="" if item.keyterms is None else len(item.keyterms),
        )
        return
    if isinstance(item, ConfigureFailure):
        run.configure_answered()
        event(
            "configure_failed",
            "Deepgram refused the new settings on the open stream (%s); reconnecting so that "
            "they take effect",
            item.describe(),
            level=logging.WARNING,
            code=item.code,
        )
        ctx.reconnect_gracefully()
        return
    run.server_error = run.server_error or item
    answers_configure = run.configure_answered()
    event(
        "server_error",
        "Deepgram reported an error on the stream: %s%s",
        item.describe(),
        "; it refused the new settings: reconnecting so that they take effect"
        if answers_configure
        else "",
        level=logging.WARNING,
        code=item.code,
    )
    if answers_configure:
        ctx.reconnect_gracefully()


async def _configure_watch(ctx: LinkContext, run: _Run) -> None:
    """Give up on a ``Configure`` that got no answer within ``CONFIGURE_ANSWER_TIMEOUT_S`` (a
    server that does not know the message ignores it) and reconnect with the new settings."""
    while True:
        if run.configures_unanswered == 0:
            await run.configure_changed.wait()
            run.configure_changed = trio.Event()
            continue
        with trio.move_on_at(run.configure_due_at) as scope:
            await run.configure_changed.wait()
            run.configure_changed = trio.Event()
        if not scope.cancelled_caught:
            continue  # answered, or another Configure was sent: look again
        run.configures_unanswered = 0
        event(
            "configure_unanswered",
            "no answer to Configure within %g s (the server may not support it); reconnecting "
            "so that the new settings take effect",
            CONFIGURE_ANSWER_TIMEOUT_S,
            level=logging.WARNING,
        )
        ctx.reconnect_gracefully()


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
