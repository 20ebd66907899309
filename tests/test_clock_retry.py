"""A certificate refused for its dates: the supervisor waits for the clock, not the backoff.

The connector raises the ``TlsError`` that ``transport.open_stream`` raises for an expired
certificate; the clock state is injected (``clock_synchronized``), time is trio's virtual clock.
Also: ``clocksync`` reads timesyncd's flag file before asking the kernel.
"""

from __future__ import annotations

import logging
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from dgd.core.config import Config
from dgd.core.outbox import Outbox
from dgd.core.pcm import PcmFormat
from dgd.daemon import clocksync, transport, wsclient
from dgd.daemon.link import LinkContext, OutboxFeed
from dgd.daemon.supervisor import CLOCK_POLL_S, Supervisor
from tests.memory_ws import MemoryWebSocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

FMT = PcmFormat(16000, 1, 20)
CONFIG = Config()
EXPIRED = "TLS: certificate verify failed: certificate has expired (api.deepgram.com:443)"


class ExpiredThenFine:
    """Refuses ``refusals`` times with an expired certificate, then connects."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls: list[float] = []
        self.connected = trio.Event()

    @asynccontextmanager
    async def __call__(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        *,
        connect_timeout_s: float,
        disconnect_timeout_s: float,
        network: transport.Network | None = None,
    ) -> AsyncIterator[wsclient.WebSocketPort]:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.refusals:
            raise transport.TlsError(
                EXPIRED, verify_code=10, verify_message="certificate has expired"
            )
        self.connected.set()
        yield MemoryWebSocket()


def make(
    connector: ExpiredThenFine, synchronized: list[bool | None]
) -> tuple[Supervisor, list[str]]:
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
        rng=random.Random(1),
        connect=connector,
        environ={},
        clock_synchronized=lambda: synchronized[0],
    )
    return supervisor, statuses


async def test_retries_as_soon_as_the_clock_is_synchronised(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    synchronized: list[bool | None] = [False]
    connector = ExpiredThenFine(refusals=1)
    supervisor, statuses = make(connector, synchronized)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.sleep(5.0)
        assert len(connector.calls) == 1  # still waiting for the clock
        synchronized[0] = True
        await connector.connected.wait()
        nursery.cancel_scope.cancel()
    assert connector.calls[1] - connector.calls[0] <= 5.0 + CLOCK_POLL_S
    decisions = [r for r in caplog.records if getattr(r, "DGD_EVENT", "") == "disconnected"]
    assert [r.DGD_VERDICT for r in decisions] == ["clock"]  # type: ignore[attr-defined]
    assert (
        decisions[0]
        .getMessage()
        .startswith(f"{EXPIRED}; is the system clock right? (timedatectl) [clock]")
    )
    assert any(s.startswith("TLS: check the clock: waiting for the system clock") for s in statuses)


async def test_a_right_clock_retries_after_the_backoff_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    synchronized: list[bool | None] = [True]  # the certificate is expired, not the clock wrong
    connector = ExpiredThenFine(refusals=2)
    supervisor, _ = make(connector, synchronized)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await connector.connected.wait()
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(connector.calls, connector.calls[1:], strict=False)]
    assert gaps == pytest.approx([CONFIG.stream.backoff_max_s] * 2, abs=CLOCK_POLL_S)


def test_timesyncd_flag_means_synchronised(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    assert clocksync.clock_synchronized(str(flag)) is True


def test_without_the_flag_the_kernel_decides(tmp_path: Path) -> None:
    state = clocksync._adjtimex()
    expected = None if state is None else state != clocksync.TIME_ERROR
    assert clocksync.clock_synchronized(str(tmp_path / "absent")) is expected
