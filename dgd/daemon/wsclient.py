"""The one module that knows the WebSocket library (trio-websocket).

Everything else sees ``WebSocket`` (send bytes/text, receive, ping, close) and three
exceptions: ``Rejected`` (the handshake got an HTTP error), ``Closed`` (the connection ended,
with the close code; 1006 when it dropped without a close frame) and ``NetworkError``
(DNS/TCP/TLS/proxy, from ``dgd.daemon.transport``, which opens the stream the handshake runs
over). Swapping trio-websocket for a driver over wsproto stays a change to this file.
trio-websocket offers no permessage-deflate, which is what we want: compression would cost
CPU on every frame for audio that does not compress.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol, cast
from urllib.parse import urlsplit

import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError as WsprotoStateError

from dgd.core.connection import ABNORMAL_CLOSURE
from dgd.core.messages import MAX_MESSAGE_BYTES
from dgd.daemon import transport
from dgd.daemon.transport import Network, NetworkError

__all__ = [
    "Closed",
    "Connector",
    "NetworkError",
    "Rejected",
    "WebSocket",
    "WebSocketPort",
    "connect",
]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

log = logging.getLogger("dgd.wsclient")

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
        network: Network,
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


def _target(url: str) -> tuple[str, int, bool, str, str]:
    """``(host, port, tls, resource, host header)`` of a ``ws://``/``wss://`` URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    shown = f"[{host}]" if ":" in host else host
    header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
    return host, port, tls, resource, header


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a nursery's group stands for: the first that is not ``Cancelled``
    (the reader task's ``ConnectionRejected``, or what the caller's body raised)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _unwrap(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group.exceptions[0]


@asynccontextmanager
async def connect(
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout_s: float,
    disconnect_timeout_s: float,
    network: Network,
) -> AsyncIterator[WebSocket]:
    """Open a WebSocket to ``url`` with extra request ``headers``, reaching the server as
    ``network`` says (trust, proxy). ``connect_timeout_s`` bounds everything up to the upgrade;
    leaving the context starts the closing handshake, given ``disconnect_timeout_s``.

    Raises:
        Rejected: the server refused the upgrade with an HTTP status.
        NetworkError: name resolution, TCP, the proxy (``transport.ProxyError``), TLS
            (``transport.TlsError``) or the handshake failed or timed out.
    """
    host, port, tls, resource, host_header = _target(url)
    # The URL may carry a secret query value: the log filter scrubs it (logsetup).
    log.debug("Connecting to %s", url)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    deadline = trio.current_time() + connect_timeout_s
    try:
        async with trio.open_nursery() as nursery:
            # open_stream names its own timeouts (the proxy, TCP, the TLS handshake); the
            # WebSocket handshake gets what is left of the same deadline.
            stream = await transport.open_stream(
                host, port, tls=tls, network=network, timeout_s=connect_timeout_s
            )
            try:
                with trio.fail_at(deadline):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        # Typed for trio's socket and SSL streams in 0.12; any trio Stream
                        # works (a proxy tunnel with bytes already read is not a socket).
                        cast("Any", stream),
                        host_header,
                        resource,
                        extra_headers=extra,
                        max_message_size=MAX_WIRE_MESSAGE_BYTES,
                    )
            except trio.TooSlowError:
                await trio.aclose_forcefully(stream)
                raise NetworkError(
                    f"no answer from {host}:{port} within {connect_timeout_s:g} s "
                    "(WebSocket handshake)"
                ) from None
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            try:
                yield WebSocket(ws)
            finally:
                with trio.move_on_after(disconnect_timeout_s):
                    await ws.aclose()
                # Whatever the close handshake did, the reader task must not outlive us.
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # trio >= 0.25 wraps what the nursery saw (the reader task's rejection, or the
        # caller's own exception) in a group; the caller expects the one that matters.
        raise _translate(_unwrap(group)) from None
    except (trio_websocket.HandshakeError, OSError, trio.BrokenResourceError) as exc:
        raise _translate(exc) from None


def _translate(exc: BaseException) -> BaseException:
    """Map trio-websocket's handshake exceptions to ``Rejected`` / ``NetworkError``; others
    (``Closed``, the caller's own, ``Cancelled``) stay as they are."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        rejected = Rejected(exc.status_code, exc.headers or (), exc.body)
        rejected.__cause__ = exc
        return rejected
    if isinstance(exc, trio_websocket.HandshakeError):
        cause = exc.__cause__
        failed = NetworkError(str(cause) if cause else "WebSocket handshake failed")
        failed.__cause__ = exc
        return failed
    if isinstance(exc, (OSError, trio.BrokenResourceError)) and not isinstance(exc, NetworkError):
        failed = NetworkError(str(exc) or type(exc).__name__)
        failed.__cause__ = exc
        return failed
    return exc
