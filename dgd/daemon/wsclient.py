"""The one module that knows the WebSocket library (trio-websocket).

Everything else sees ``WebSocket`` (send bytes/text, receive, ping, close) and three
exceptions: ``Rejected`` (the handshake got an HTTP error), ``Closed`` (the connection ended,
with the close code; 1006 when it dropped without a close frame) and ``NetworkError``
(DNS/TCP/TLS). Swapping trio-websocket for a driver over wsproto stays a change to this file.
trio-websocket offers no permessage-deflate, which is what we want: compression would cost
CPU on every frame for audio that does not compress.
"""

from __future__ import annotations

import ssl
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Final, Protocol

import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError as WsprotoStateError

from dgd.core.connection import ABNORMAL_CLOSURE
from dgd.core.messages import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

#: Largest server message the WebSocket layer accepts: 8 × the parser's limit
#: (``dgd.core.messages.MAX_MESSAGE_BYTES``). A message between the two is read, refused by the
#: parser cheaply and logged as unrecognized, and the stream goes on; only one beyond this
#: closes the connection (1009), so that an absurd message cannot cost a Pi its memory.
MAX_WIRE_MESSAGE_BYTES: Final = 8 * MAX_MESSAGE_BYTES


class Rejected(Exception):
    """The server answered the handshake with an HTTP error instead of upgrading."""

    def __init__(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes | None
    ) -> None:
        super().__init__(f"handshake rejected with HTTP {status}")
        self.status = status
        self.headers = tuple(headers)
        self.body = body


class Closed(Exception):
    """The connection is closed; ``code`` 1006 means it dropped without a close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed ({code} {reason})".strip())
        self.code = code
        self.reason = reason


class NetworkError(Exception):
    """The connection could not be established (DNS, TCP, TLS, timeout)."""


def _closed_from(exc: trio_websocket.ConnectionClosed) -> Closed:
    reason = exc.reason
    code = getattr(reason, "code", None) or ABNORMAL_CLOSURE
    text = getattr(reason, "reason", None) or ""
    return Closed(int(code), str(text))


class WebSocketPort(Protocol):
    """What the link needs from a connected WebSocket (tests provide an in-memory one)."""

    async def send_bytes(self, data: bytes) -> None: ...
    async def send_text(self, text: str) -> None: ...
    async def receive(self) -> str | bytes: ...
    async def ping(self) -> None: ...


class Connector(Protocol):
    """``connect``'s shape: an async context manager yielding a connected WebSocket."""

    def __call__(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        *,
        connect_timeout_s: float,
        disconnect_timeout_s: float,
    ) -> AbstractAsyncContextManager[WebSocketPort]: ...


class WebSocket:
    """A connected WebSocket: one writer and one reader may use it concurrently."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message (callers never pass an empty one)."""
        await self._send(data)

    async def send_text(self, text: str) -> None:
        """Send one text message."""
        await self._send(text)

    async def _send(self, message: str | bytes) -> None:
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed_from(exc) from exc
        except WsprotoStateError as exc:
            # trio-websocket 0.9 lets wsproto's state error through when the peer has begun
            # closing; it means the same as ConnectionClosed.
            closed = self._ws.closed
            if closed is not None:
                raise Closed(int(closed.code), str(closed.reason or "")) from exc
            raise Closed(ABNORMAL_CLOSURE, "the server is closing the connection") from exc

    async def receive(self) -> str | bytes:
        """Wait for the next message."""
        try:
            message: str | bytes = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed_from(exc) from exc
        return message

    async def ping(self) -> None:
        """Send a ping and wait for its pong (bound it with a cancel scope)."""
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed_from(exc) from exc

    async def aclose(self, code: int = 1000) -> None:
        """Start the closing handshake (bounded by the connect's ``disconnect_timeout_s``)."""
        await self._ws.aclose(code=code)


@asynccontextmanager
async def connect(
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout_s: float,
    disconnect_timeout_s: float,
) -> AsyncIterator[WebSocket]:
    """Open a WebSocket to ``url`` with extra request ``headers``.

    Raises:
        Rejected: the server refused the upgrade with an HTTP status.
        NetworkError: name resolution, TCP, TLS or the handshake failed or timed out.
    """
    ssl_context = ssl.create_default_context() if url.startswith("wss:") else None
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    async with AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(
                trio_websocket.open_websocket_url(
                    url,
                    ssl_context,
                    extra_headers=extra,
                    max_message_size=MAX_WIRE_MESSAGE_BYTES,
                    connect_timeout=connect_timeout_s,
                    disconnect_timeout=disconnect_timeout_s,
                )
            )
        except trio_websocket.ConnectionRejected as exc:
            raise Rejected(exc.status_code, exc.headers or (), exc.body) from exc
        except trio_websocket.ConnectionTimeout as exc:
            raise NetworkError(f"no answer within {connect_timeout_s:g} s") from exc
        except trio_websocket.HandshakeError as exc:
            cause = exc.__cause__
            raise NetworkError(str(cause) if cause else "WebSocket handshake failed") from exc
        except (OSError, trio.BrokenResourceError) as exc:  # ssl.SSLError is an OSError
            raise NetworkError(str(exc) or type(exc).__name__) from exc
        yield WebSocket(ws)
