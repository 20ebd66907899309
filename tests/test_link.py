"""The link in trio's virtual time over an in-memory WebSocket: what goes on the wire, when."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from dgd.core.backoff import Verdict
from dgd.core.config import StreamConfig
from dgd.core.events import AudioFrame, FinalizeMarker, FormatChange, Transcript
from dgd.core.outbox import Outbox
from dgd.core.pcm import PcmFormat
from dgd.core.session import Session
from dgd.daemon.link import LinkContext, LinkFailure, OutboxFeed, run_link
from tests.memory_ws import MemoryWebSocket, metadata, results

FMT = PcmFormat(16000, 1, 20)
BPS = FMT.bytes_per_second
WALL0 = 1_700_000_000.0


def frame(start_s: float, duration_s: float = 0.1, fill: int = 1) -> AudioFrame:
    return AudioFrame(bytes([fill]) * int(duration_s * BPS), WALL0 + start_s, duration_s)


def make_ctx(**stream: float) -> tuple[LinkContext, list[Transcript]]:
    got: list[Transcript] = []
    ctx = LinkContext(
        feed=OutboxFeed(Outbox(FMT, 120.0)),
        stream=StreamConfig(**stream),  # type: ignore[arg-type]
        on_transcript=got.append,
        stopping=trio.Event(),
    )
    return ctx, got


async def run_for(ws: MemoryWebSocket, ctx: LinkContext, seconds: float) -> LinkFailure | None:
    session = Session(keepalive_interval_s=ctx.stream.keepalive_interval_s, now=trio.current_time())
    with trio.move_on_after(seconds):
        try:
            await run_link(ws, session, ctx, FMT)
        except LinkFailure as exc:
            return exc
    return None


async def test_keepalive_every_interval_while_nothing_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    start = trio.current_time()
    assert await run_for(ws, ctx, 13.0) is None
    assert [(at - start, text) for at, text in ws.texts()] == [
        (4.0, '{"type":"KeepAlive"}'),
        (8.0, '{"type":"KeepAlive"}'),
        (12.0, '{"type":"KeepAlive"}'),
    ]
    assert ws.binaries() == []


async def test_audio_resets_the_keepalive_deadline_and_finalize_follows_audio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx(keepalive_interval_s=4.0)
    start = trio.current_time()

    async def producer() -> None:
        await trio.sleep(1.0)
        ctx.feed.put(frame(0.0, fill=1))
        ctx.feed.put(frame(0.1, fill=2))
        ctx.feed.put(FinalizeMarker(WALL0 + 0.2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        assert await run_for(ws, ctx, 9.5) is None
    assert [(s.kind, s.at - start) for s in ws.sent] == [
        ("binary", 1.0),
        ("binary", 1.0),
        ("text", 1.0),  # Finalize
        ("text", 5.0),  # KeepAlive: 4 s after the Finalize
        ("text", 9.0),
    ]
    assert ws.sent[2].payload == '{"type":"Finalize"}'
    assert ws.binaries() == [bytes([1]) * 3200, bytes([2]) * 3200]


async def test_stop_sends_closestream_and_waits_for_results_and_metadata(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, got = make_ctx()
    ctx.feed.put(frame(0.0))
    ctx.feed.put(frame(0.1))
    ctx.stopping.set()
    ctx.feed.capture_done = True
    session = Session(keepalive_interval_s=4.0, now=trio.current_time())

    async def server() -> None:
        await trio.sleep(0.5)
        ws.push(results(0.0, 0.2, "hello there"))
        ws.push(metadata(duration_s=0.2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with trio.fail_after(5):
            await run_link(ws, session, ctx, FMT)
    assert [s.payload for s in ws.sent if isinstance(s.payload, str)] == ['{"type":"CloseStream"}']
    assert len(ws.binaries()) == 2
    assert [(t.text, t.start_s, t.end_s) for t in got] == [
        ("hello there", WALL0 + 0.0, WALL0 + 0.2)
    ]
    # The final result covered everything: nothing is left to replay.
    assert ctx.feed.outbox.held_s == 0.0


async def test_wall_clock_times_skip_gated_silence(autojump_clock: trio.testing.MockClock) -> None:
    """Deepgram's offsets count only audio sent; the transcript's times are capture times."""
    ws = MemoryWebSocket()
    ctx, got = make_ctx()
    ctx.feed.put(frame(0.0, 0.5))
    ctx.feed.put(frame(60.0, 0.5))  # a minute of gated silence in between

    async def server() -> None:
        await trio.sleep(0.5)
        ws.push(results(0.25, 0.5, "across the gap"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await run_for(ws, ctx, 1.0)
    assert [(t.start_s - WALL0, t.end_s - WALL0) for t in got] == [(0.25, 60.25)]


@pytest.mark.parametrize(
    ("code", "reason", "verdict", "cause"),
    [
        (
            1011,
            "Deepgram did not receive audio data ... NET-0001",
            Verdict.TRANSIENT,
            "closed-1011",
        ),
        (1011, "NET-0000 internal", Verdict.TRANSIENT, "closed-1011"),
        (1008, "DATA-0000 cannot decode", Verdict.REJECTED, "closed-1008"),
        (1006, "", Verdict.TRANSIENT, "network"),
        (1000, "", Verdict.TRANSIENT, "closed-1000"),
    ],
)
async def test_server_close_ends_the_link_with_a_classified_failure(
    autojump_clock: trio.testing.MockClock, code: int, reason: str, verdict: Verdict, cause: str
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    ws.close(code, reason)
    failure = await run_for(ws, ctx, 30.0)
    assert failure is not None
    assert (failure.failure.verdict, failure.failure.cause) == (verdict, cause)


async def test_a_server_that_stops_answering_is_noticed_by_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket(stalled=True)
    ctx, _ = make_ctx(ping_interval_s=5.0, ping_timeout_s=10.0)
    start = trio.current_time()
    failure = await run_for(ws, ctx, 60.0)
    assert failure is not None
    assert failure.failure.cause == "timeout"
    # The first KeepAlive send blocks at 4 s and times out at 14 s; the ping would at 15 s.
    assert trio.current_time() - start == pytest.approx(14.0)


async def test_unconfirmed_audio_is_replayed_in_order_on_the_next_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ctx, got = make_ctx()
    for i in range(5):
        ctx.feed.put(frame(i * 0.1, fill=i + 1))
    first = MemoryWebSocket()

    async def server_confirms_then_drops() -> None:
        await trio.sleep(0.5)
        first.push(results(0.0, 0.15, "first words"))  # ends mid-frame 2
        await trio.sleep(0.5)
        first.close(1006)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_confirms_then_drops)
        failure = await run_for(first, ctx, 5.0)
    assert failure is not None
    replayed_s = ctx.feed.outbox.rewind()
    assert replayed_s == pytest.approx(0.35)
    second = MemoryWebSocket()
    await run_for(second, ctx, 0.5)
    sent = second.binaries()
    # Frame 2 is trimmed at 0.15 s (sample-exact); frames 3-5 follow whole.
    assert sent == [bytes([2]) * 1600, bytes([3]) * 3200, bytes([4]) * 3200, bytes([5]) * 3200]
    assert [t.text for t in got] == ["first words"]


async def test_a_backlog_is_replayed_at_125_percent_of_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    for i in range(300):  # 30 s captured while disconnected
        ctx.feed.put(frame(i * 0.1))
    start = trio.current_time()
    await run_for(ws, ctx, 40.0)
    sends = [s.at - start for s in ws.sent if s.kind == "binary"]
    assert len(sends) == 300
    # 2 s go out at once, the remaining 28 s at 1.25x: the last frame leaves at 22.4 s.
    assert sends[19] == pytest.approx(0.0, abs=1e-9)
    assert sends[-1] == pytest.approx(28.0 / 1.25)


async def test_audio_of_another_rate_ends_the_stream_after_the_audio_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    ctx.feed.put(frame(0.0))
    ctx.feed.put(FormatChange(PcmFormat(8000, 1, 20)))
    ctx.feed.put(AudioFrame(b"\x02" * 1600, WALL0 + 0.1, 0.1))
    session = Session(keepalive_interval_s=4.0, now=trio.current_time())

    async def server() -> None:
        await trio.sleep(0.5)
        ws.push(metadata(duration_s=0.1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with trio.fail_after(5):
            await run_link(ws, session, ctx, FMT)  # returns: a graceful end, not a failure
    assert ws.binaries() == [b"\x01" * 3200]
    assert [text for _, text in ws.texts()] == ['{"type":"CloseStream"}']
    assert isinstance(ctx.feed.outbox.peek(), FormatChange)  # left for the next handshake


async def test_a_new_period_alone_keeps_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    ctx.feed.put(frame(0.0))
    ctx.feed.put(FormatChange(PcmFormat(16000, 1, 10)))
    ctx.feed.put(frame(0.1, fill=2))
    assert await run_for(ws, ctx, 1.0) is None
    assert ws.binaries() == [b"\x01" * 3200, b"\x02" * 3200]
    assert ws.texts() == []
    assert ctx.feed.outbox.format == PcmFormat(16000, 1, 10)


async def test_a_stream_that_never_finishes_after_closestream_fails_in_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx(close_timeout_s=3.0)
    ctx.close_requested.set()
    start = trio.current_time()
    failure = await run_for(ws, ctx, 30.0)
    assert failure is not None
    assert failure.failure.summary == (
        "timed out: the stream did not finish within 3 s of CloseStream"
    )
    assert trio.current_time() - start == pytest.approx(3.0)


def test_a_full_replay_buffer_drops_the_oldest_audio_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = OutboxFeed(Outbox(FMT, 0.25))
    with caplog.at_level(logging.WARNING, logger="dgd"):
        for k in range(3):
            feed.put(frame(0.1 * k))
    assert feed.outbox.statistics().dropped_s == pytest.approx(0.1)
    assert [r.getMessage() for r in caplog.records] == [
        "replay buffer full (stream.replay_buffer_s = 0.25): dropping the oldest audio, "
        "0.1 s in all so far"
    ]


# --- Configure on reload, and the server's Error message ------------------------------------

CONFIGURE = '{"type":"Configure","keyterms":["Acme"]}'
CLOSESTREAM = '{"type":"CloseStream"}'


def events_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.__dict__["DGD_EVENT"] for r in caplog.records if "DGD_EVENT" in r.__dict__]


async def answer_configure(ws: MemoryWebSocket, *answers: dict[str, object]) -> None:
    """Play a server that answers the first Configure with ``answers`` (none: ignore it) and
    finishes the stream like Deepgram when it gets CloseStream."""
    answered = closed = False
    while not closed:
        await trio.sleep(0.05)
        texts = [text for _, text in ws.texts()]
        if not answered and CONFIGURE in texts:
            answered = True
            for answer in answers:
                ws.push(answer)
        if CLOSESTREAM in texts:
            closed = True
            ws.push(metadata())
            ws.close(1000)


async def configure_then_run(
    ws: MemoryWebSocket, ctx: LinkContext, seconds: float, *answers: dict[str, object]
) -> tuple[LinkFailure | None, float]:
    """Run the link; 1 s in, ask it to send ``CONFIGURE``. Returns the failure and when (in
    seconds from the start) CloseStream was sent (``inf``: never)."""
    start = trio.current_time()
    failure: LinkFailure | None = None

    async def reload() -> None:
        await trio.sleep(1.0)
        ctx.configure(CONFIGURE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reload)
        nursery.start_soon(answer_configure, ws, *answers)
        failure = await run_for(ws, ctx, seconds)
        nursery.cancel_scope.cancel()
    closes = [at - start for at, text in ws.texts() if text == CLOSESTREAM]
    return failure, closes[0] if closes else float("inf")


async def test_configure_success_keeps_the_stream(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    success: dict[str, object] = {
        "type": "ConfigureSuccess",
        "request_id": "r",
        "keyterms": ["Acme"],
    }
    with caplog.at_level(logging.INFO, logger="dgd"):
        failure, closed_at = await configure_then_run(ws, ctx, 20.0, success)
    assert failure is None
    assert closed_at == float("inf")  # no reconnect: the stream goes on
    sent = [(round(at - ws.sent[0].at, 1), text) for at, text in ws.texts()]
    assert sent[0] == (0.0, CONFIGURE)
    assert [text for _, text in sent[1:]] == ['{"type":"KeepAlive"}'] * 4
    assert events_of(caplog) == ["configure_sent", "configured"]
    configured = caplog.records[-1].getMessage()
    assert configured == "Deepgram applied the new settings to the open stream (keyterms: Acme)"


@pytest.mark.parametrize(
    ("answers", "closed_after_s", "logged"),
    [
        pytest.param(
            ({"type": "ConfigureFailure", "code": "INVALID", "description": "no"},),
            0.0,
            "configure_failed",
            id="configure-failure",
        ),
        pytest.param(
            ({"type": "Error", "code": "INVALID_KEYTERMS", "description": "no"},),
            0.0,
            "server_error",
            id="error-in-its-place",
        ),
        pytest.param((), 5.0, "configure_unanswered", id="no-answer"),
    ],
)
async def test_a_refused_or_unanswered_configure_reconnects_gracefully(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    answers: tuple[dict[str, object], ...],
    closed_after_s: float,
    logged: str,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    with caplog.at_level(logging.INFO, logger="dgd"):
        failure, closed_at = await configure_then_run(ws, ctx, 30.0, *answers)
    assert failure is None  # the stream ended as asked: CloseStream, Metadata, 1000
    configure_at = next(at for at, text in ws.texts() if text == CONFIGURE)
    # The fake answers within 0.05 s of the Configure; the watcher waits 5 s for none.
    assert closed_at - (configure_at - ws.sent[0].at) - 1.0 == pytest.approx(
        closed_after_s, abs=0.06
    )
    assert events_of(caplog) == ["configure_sent", logged, "metadata"]
    assert caplog.records[1].levelno == logging.WARNING


async def test_configure_asked_before_the_stream_opened_is_not_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    ctx.configure_text = CONFIGURE  # left from an earlier stream: this handshake carries it
    assert await run_for(ws, ctx, 5.0) is None
    assert [text for _, text in ws.texts()] == ['{"type":"KeepAlive"}']


async def test_configure_while_closing_is_not_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()

    async def reload_twice() -> None:
        await trio.sleep(1.0)
        ctx.reconnect_gracefully()
        ctx.configure(CONFIGURE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reload_twice)
        nursery.start_soon(answer_configure, ws)
        assert await run_for(ws, ctx, 10.0) is None
    assert [text for _, text in ws.texts()] == [CLOSESTREAM]


@pytest.mark.parametrize(
    ("error", "close", "verdict", "cause", "summary"),
    [
        pytest.param(
            {
                "type": "Error",
                "code": "INTERNAL_SERVER_ERROR",
                "description": "An internal server error occurred",
            },
            (1011, "INTERNAL_SERVER_ERROR"),
            Verdict.TRANSIENT,
            "error-INTERNAL_SERVER_ERROR",
            "Deepgram reported an error on the stream: INTERNAL_SERVER_ERROR: An internal "
            "server error occurred, then closed the stream (close 1011 'INTERNAL_SERVER_ERROR')",
            id="server-error-transient",
        ),
        pytest.param(
            {"type": "Error", "code": "DATA-0000", "description": "bad audio"},
            (1011, ""),
            Verdict.REJECTED,
            "error-DATA-0000",
            "Deepgram reported an error on the stream: DATA-0000: bad audio, then closed the "
            "stream (close 1011); check [audio] rate/channels and that [deepgram.query] sets "
            "no encoding",
            id="audio-rejected",
        ),
        pytest.param(
            {"type": "Error", "description": "the connection is going away"},
            (1006, ""),
            Verdict.TRANSIENT,
            "error",
            "Deepgram reported an error on the stream: the connection is going away, then "
            "closed the stream (close 1006)",
            id="no-code-then-dropped",
        ),
    ],
)
async def test_an_error_then_a_close_fails_the_link_naming_the_error(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    error: dict[str, object],
    close: tuple[int, str],
    verdict: Verdict,
    cause: str,
    summary: str,
) -> None:
    ws = MemoryWebSocket()
    ctx, _ = make_ctx()
    ws.push(error)
    ws.close(*close)
    with caplog.at_level(logging.INFO, logger="dgd"):
        failure = await run_for(ws, ctx, 30.0)
    assert failure is not None
    assert failure.failure.verdict is verdict
    assert failure.failure.cause == cause
    assert failure.failure.summary == summary
    assert events_of(caplog) == ["server_error"]
    assert caplog.records[0].__dict__["DGD_CODE"] == error.get("code", "")
