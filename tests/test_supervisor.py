"""The supervisor in virtual time: classification, backoff delays, replay, SIGHUP, stop."""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from dgd.core.backoff import RetryPolicy, Verdict, classify_rejection
from dgd.core.config import Config
from dgd.core.connection import parse_rejection
from dgd.core.events import AudioFrame, FormatChange
from dgd.core.outbox import Outbox
from dgd.core.pcm import PcmFormat
from dgd.daemon.link import LinkContext, OutboxFeed
from dgd.daemon.supervisor import Supervisor
from tests.memory_ws import Attempt, MemoryConnector, MemoryWebSocket, metadata, results

if TYPE_CHECKING:
    from dgd.core.events import OutboxItem

FMT = PcmFormat(16000, 1, 20)
CONFIG = Config()
SEED = 7


def expected_delays(verdicts: list[Verdict]) -> list[float]:
    """Replay the policy with the same seed: the delays the supervisor must have used."""
    stream = CONFIG.stream
    policy = RetryPolicy(
        initial_s=stream.backoff_initial_s,
        max_s=stream.backoff_max_s,
        rate_limited_s=stream.rate_limited_backoff_s,
        rejected_s=stream.rejected_retry_s,
        rng=random.Random(SEED),
    )
    failure = {
        v: classify_rejection(parse_rejection(s, [], None))
        for v, s in [(Verdict.TRANSIENT, 503), (Verdict.REJECTED, 401), (Verdict.RATE_LIMITED, 429)]
    }
    return [policy.failed(failure[v], 0.0) for v in verdicts]


def make(connector: MemoryConnector) -> tuple[Supervisor, LinkContext, list[str]]:
    statuses: list[str] = []
    ctx = LinkContext(
        feed=OutboxFeed(Outbox(FMT, 120.0)),
        stream=CONFIG.stream,
        on_transcript=lambda t: None,
        stopping=trio.Event(),
    )
    supervisor = Supervisor(
        ctx,
        config=lambda: CONFIG,
        api_key=lambda: "test-key-0123",
        set_status=statuses.append,
        rng=random.Random(SEED),
        connect=connector,
    )
    return supervisor, ctx, statuses


async def test_three_503s_back_off_with_full_jitter_then_connect(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ws = MemoryWebSocket()
    connector = MemoryConnector([Attempt(reject=503)] * 3 + [Attempt(ws=ws)])
    supervisor, _, statuses = make(connector)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await connector.connected.wait()
        nursery.cancel_scope.cancel()
    times = [t for t, _, _ in connector.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx(expected_delays([Verdict.TRANSIENT] * 3))
    assert all(g <= 4.0 for g in gaps)  # ceilings 1, 2, 4 s
    assert statuses[-1] == "streaming"
    assert any(s.startswith("reconnecting in ") and "(attempt 3)" in s for s in statuses)
    decisions = [r for r in caplog.records if getattr(r, "DGD_EVENT", "") == "disconnected"]
    assert [(r.DGD_VERDICT, r.DGD_ATTEMPT) for r in decisions] == [  # type: ignore[attr-defined]
        ("transient", 1),
        ("transient", 2),
        ("transient", 3),
    ]
    # The URL carries the audio format; the key travels only in the header.
    _, url, headers = connector.calls[0]
    assert url.endswith("encoding=linear16&sample_rate=16000&channels=1")
    assert headers == (("Authorization", "Token test-key-0123"),)


async def test_a_rejected_key_is_retried_slowly_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    connector = MemoryConnector([Attempt(reject=401)] * 4)
    supervisor, _, statuses = make(connector)
    with trio.move_on_after(3 * 340.0):
        await supervisor.run()
    times = [t for t, _, _ in connector.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx(expected_delays([Verdict.REJECTED] * 3))
    assert all(270.0 <= g <= 330.0 for g in gaps)
    assert any(s.startswith("auth rejected (401); retrying in ") for s in statuses)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert "API key was rejected" in errors[0].getMessage()


async def test_sighup_retry_now_cuts_the_wait_short(autojump_clock: trio.testing.MockClock) -> None:
    ws = MemoryWebSocket()
    connector = MemoryConnector([Attempt(reject=401), Attempt(ws=ws)])
    supervisor, _, _ = make(connector)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.sleep(10.0)
        supervisor.retry_now()
        await connector.connected.wait()
        nursery.cancel_scope.cancel()
    assert [t for t, _, _ in connector.calls] == pytest.approx([0.0, 10.0], abs=0.01)


async def test_audio_survives_a_dropped_connection(autojump_clock: trio.testing.MockClock) -> None:
    first, second = MemoryWebSocket(), MemoryWebSocket()
    connector = MemoryConnector(
        [Attempt(ws=first), Attempt(network_error="reset"), Attempt(ws=second)]
    )
    supervisor, ctx, _ = make(connector)
    frames = [AudioFrame(bytes([i + 1]) * 3200, 1000.0 + i * 0.1, 0.1) for i in range(4)]

    async def scenario() -> None:
        await trio.sleep(0.1)
        for f in frames[:2]:
            ctx.feed.put(f)
        await trio.sleep(0.1)
        first.close(1011, "NET-0000")  # nothing confirmed: both frames must be replayed
        await trio.sleep(0.1)
        for f in frames[2:]:
            ctx.feed.put(f)  # captured while disconnected

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        nursery.start_soon(scenario)
        await trio.sleep(30.0)
        nursery.cancel_scope.cancel()
    assert first.binaries() == [f.data for f in frames[:2]]
    assert second.binaries() == [f.data for f in frames]
    assert supervisor.statistics().reconnects_by_cause == {"closed-1011": 1, "network": 1}


async def test_a_reload_during_the_handshake_ends_that_stream_for_the_new_settings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reload finds no open stream to Configure or close; the handshake in flight carried
    # the old query. The supervisor notices once connected and starts over with the new one.
    config = CONFIG
    reloaded = replace(
        CONFIG,
        deepgram=replace(CONFIG.deepgram, query=(*CONFIG.deepgram.query, ("keyterm", "dgd"))),
    )

    def reload() -> None:
        nonlocal config
        config = reloaded

    first, second = MemoryWebSocket(), MemoryWebSocket()
    connector = MemoryConnector([Attempt(ws=first, during_handshake=reload), Attempt(ws=second)])
    supervisor, _, _ = make(connector)
    supervisor._config = lambda: config

    async def server() -> None:
        while '{"type":"CloseStream"}' not in [t for _, t in first.texts()]:  # noqa: ASYNC110
            await trio.sleep(0.05)  # (MemoryWebSocket has no event for "a text was sent")
        first.push(metadata())
        first.close(1000, "")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        nursery.start_soon(server)
        await trio.sleep(10.0)
        still_connected = supervisor.connected  # the second stream stays open
        nursery.cancel_scope.cancel()
    urls = [url for _, url, _ in connector.calls]
    assert len(urls) == 2, urls
    assert "keyterm=dgd" not in urls[0]
    assert "keyterm=dgd" in urls[1]
    assert still_connected
    # No CloseStream on the stream with the new settings (only KeepAlives: no audio here).
    assert {text for _, text in second.texts()} == {'{"type":"KeepAlive"}'}
    assert supervisor.statistics().reconnects_by_cause == {}  # a graceful end, no failure


async def test_stop_finishes_the_stream_and_returns(autojump_clock: trio.testing.MockClock) -> None:
    ws = MemoryWebSocket()
    connector = MemoryConnector([Attempt(ws=ws)])
    supervisor, ctx, _ = make(connector)

    async def scenario() -> None:
        await connector.connected.wait()
        ctx.feed.put(AudioFrame(b"\x01\x00" * 1600, 1000.0, 0.1))
        ctx.stopping.set()
        ctx.feed.capture_done = True
        ctx.feed.poke()
        await trio.sleep(0.2)
        ws.push(results(0.0, 0.1, "bye"))
        ws.push(metadata())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scenario)
            await supervisor.run()
    assert ws.texts()[-1][1] == '{"type":"CloseStream"}'
    assert ctx.feed.outbox.held_s == 0.0


async def test_every_handshake_declares_the_format_of_the_audio_it_carries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reload to 8 kHz: the 16 kHz audio queued before it goes on the 16 kHz stream, which
    then ends gracefully; the 8 kHz audio goes only on a stream opened for 8 kHz."""
    first, second = MemoryWebSocket(), MemoryWebSocket()
    connector = MemoryConnector([Attempt(ws=first), Attempt(ws=second)])
    supervisor, ctx, _ = make(connector)
    old = [AudioFrame(bytes([1 + i]) * 3200, 1000.0 + i * 0.1, 0.1) for i in range(2)]
    new = [AudioFrame(bytes([9 + i]) * 1600, 1000.2 + i * 0.1, 0.1) for i in range(2)]

    async def scenario() -> None:
        await connector.connected.wait()
        items: list[OutboxItem] = [*old, FormatChange(PcmFormat(8000, 1, 20)), *new]
        for item in items:
            ctx.feed.put(item)
        await trio.sleep(0.5)
        first.push(results(0.0, 0.2, "old words"))
        first.push(metadata(duration_s=0.2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        nursery.start_soon(scenario)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    urls = [url for _, url, _ in connector.calls]
    assert [u.split("?")[1].split("&")[-3:] for u in urls] == [
        ["encoding=linear16", "sample_rate=16000", "channels=1"],
        ["encoding=linear16", "sample_rate=8000", "channels=1"],
    ]
    assert first.binaries() == [f.data for f in old]
    assert first.texts()[-1][1] == '{"type":"CloseStream"}'
    assert second.binaries() == [f.data for f in new]
    assert ctx.feed.outbox.format == PcmFormat(8000, 1, 20)
