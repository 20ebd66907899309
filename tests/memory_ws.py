"""An in-memory WebSocket for link and supervisor tests in trio's virtual time.

It implements ``dgd.daemon.wsclient.WebSocketPort``; the test plays the server through ``push``,
``close`` and ``stall``, and reads what the client sent from ``sent``.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from dgd.daemon import transport, wsclient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence


@dataclass
class Sent:
    kind: str  # "binary" | "text"
    payload: bytes | str
    at: float  # trio.current_time() when sent


@dataclass
class MemoryWebSocket:
    sent: list[Sent] = field(default_factory=list)
    stalled: bool = False  # pings never answered, sends block
    closed: wsclient.Closed | None = None

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str | bytes | wsclient.Closed](100)

    # -- the client's side (WebSocketPort) --

    async def send_bytes(self, data: bytes) -> None:
        await self._check()
        self.sent.append(Sent("binary", data, trio.current_time()))

    async def send_text(self, text: str) -> None:
        await self._check()
        self.sent.append(Sent("text", text, trio.current_time()))

    async def receive(self) -> str | bytes:
        if self.closed is not None:
            raise self.closed
        item = await self._receive.receive()
        if isinstance(item, wsclient.Closed):
            self.closed = item
            raise item
        return item

    async def ping(self) -> None:
        await self._check()

    async def _check(self) -> None:
        if self.closed is not None:
            raise self.closed
        if self.stalled:
            await trio.sleep_forever()

    # -- the server's side (the test) --

    def push(self, message: dict[str, object] | str) -> None:
        self._send.send_nowait(message if isinstance(message, str) else json.dumps(message))

    def close(self, code: int, reason: str = "") -> None:
        self._send.send_nowait(wsclient.Closed(code, reason))

    def texts(self) -> list[tuple[float, str]]:
        return [(s.at, s.payload) for s in self.sent if isinstance(s.payload, str)]

    def binaries(self) -> list[bytes]:
        return [s.payload for s in self.sent if isinstance(s.payload, bytes)]


def results(
    start_s: float,
    duration_s: float,
    text: str,
    *,
    request_id: str = "req-1",
    speech_final: bool = True,
    from_finalize: bool = False,
) -> dict[str, object]:
    """A final Results message in Deepgram's schema."""
    words = (
        [{"word": "w", "start": start_s, "end": start_s + duration_s, "confidence": 0.9}]
        if text
        else []
    )
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "start": start_s,
        "duration": duration_s,
        "is_final": True,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": words}]},
        "metadata": {"request_id": request_id},
    }


def metadata(request_id: str = "req-1", duration_s: float = 0.0) -> dict[str, object]:
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": "",
        "created": "2026-01-01T00:00:00.000Z",
        "duration": duration_s,
        "channels": 1,
    }


@dataclass
class Attempt:
    """What one connection attempt does: reject, fail, or hand out a MemoryWebSocket."""

    reject: int | None = None
    network_error: str | None = None
    ws: MemoryWebSocket | None = None
    #: Called while the handshake is in flight (e.g. a reload that lands during it).
    during_handshake: Callable[[], None] | None = None


class MemoryConnector:
    """A ``wsclient.Connector`` that plays a scripted list of attempts."""

    def __init__(self, attempts: Sequence[Attempt]) -> None:
        self.attempts = list(attempts)
        self.calls: list[tuple[float, str, tuple[tuple[str, str], ...]]] = []
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
        self.calls.append((trio.current_time(), url, tuple(headers)))
        attempt = self.attempts.pop(0) if self.attempts else Attempt(network_error="no more")
        if attempt.reject is not None:
            body = json.dumps(
                {"err_code": "X", "err_msg": f"status {attempt.reject}", "request_id": "r"}
            ).encode()
            raise wsclient.Rejected(attempt.reject, [(b"dg-error", b"nope")], body)
        if attempt.network_error is not None:
            raise wsclient.NetworkError(attempt.network_error)
        assert attempt.ws is not None
        if attempt.during_handshake is not None:
            attempt.during_handshake()
        self.connected.set()
        yield attempt.ws
