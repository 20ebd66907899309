"""One accepted WebSocket: the receive loop, the control messages, the timed faults.

``_Connection`` feeds binary frames to its ``SpeechTracker`` and sends what it returns,
answers Finalize/CloseStream/KeepAlive and Configure (unless a ``configure`` fault says
otherwise), closes 1011/NET-0001 after the idle timeout, and
fires the plan's timed faults. ``_FaultableStream`` sits under trio-websocket and does the
two faults the library cannot: stalling both directions and aborting the TCP connection.
Everything is written to the connection's ``_Recorder``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError as WsprotoStateError

from dgd.testing.fakeserver.faults import (
    MAX_CLOSE_REASON_BYTES,
    CloseAfterFault,
    ConfigureFault,
    DropAfterBytesFault,
    DropAfterFault,
    ErrorAfterFault,
    RejectFault,
    StallFault,
)
from dgd.testing.fakeserver.malformed import (
    is_transcript_final,
    malformed_messages,
    with_lone_surrogate,
)

if TYPE_CHECKING:
    from dgd.testing.fakeserver.faults import Fault, TimedFault
    from dgd.testing.fakeserver.recorder import _Recorder
    from dgd.testing.fakeserver.speech import SpeechTracker

__all__ = ["IDLE_CLOSE_REASON"]

#: The reason real Deepgram gives for NET-0001 (108 bytes: fits the 123-byte close reason).
IDLE_CLOSE_REASON: Final = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
#: How long a server-initiated close waits for the client's close frame before hanging up.
_CLOSE_HANDSHAKE_TIMEOUT_S: Final = 5.0
#: Control messages are tiny; longer text is recorded but not parsed (keeps per-frame work small).
_MAX_CONTROL_TEXT_CHARS: Final = 4096


def _control_message(text: str) -> tuple[str | None, object]:
    """The control message's ``type`` (None: not a control message) and the decoded JSON."""
    if len(text) > _MAX_CONTROL_TEXT_CHARS:
        return None, None
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    if isinstance(message, dict) and isinstance(message.get("type"), str):
        return str(message["type"]), message
    return None, message


def _close_reason(text: str) -> str:
    """``text`` cut to fit a close frame (``MAX_CLOSE_REASON_BYTES`` of UTF-8)."""
    return text.encode()[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


# --------------------------------------------------------------------------- transport


class _FaultableStream(trio.abc.Stream):
    """The TCP stream under trio-websocket, with the two faults the library cannot do.

    ``stall()`` blocks both directions below wsproto, so even trio-websocket's automatic
    pongs stop (its reader task answers pings itself); ``abort()`` resets the TCP connection
    (SO_LINGER 0) so the client sees no close frame.
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self._inner = inner
        self._flowing = trio.Event()
        self._flowing.set()

    def stall(self) -> None:
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def abort(self) -> None:
        self._flowing.set()
        # Linger 0 makes close() send RST instead of FIN: an abrupt drop, as on a dead NAT.
        with contextlib.suppress(OSError):  # already closed: nothing left to abort
            self._inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._inner.aclose()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._flowing.wait()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._flowing.wait()
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._flowing.wait()
        data = await self._inner.receive_some(max_bytes)
        # Bytes that arrive during a stall are held until it ends (pings stay unanswered).
        await self._flowing.wait()
        return data

    async def aclose(self) -> None:
        self._flowing.set()
        await self._inner.aclose()


# --------------------------------------------------------------------------- connections


class _Connection:
    """One accepted WebSocket: the receive loop, the timed faults, the recording."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: _FaultableStream,
        tracker: SpeechTracker,
        recorder: _Recorder,
        faults: tuple[Fault, ...],
        idle_timeout_s: float,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._tracker = tracker
        self._recorder = recorder
        self._idle_timeout_s = idle_timeout_s
        self._created = datetime.now(UTC)
        self._opened_at = trio.current_time()
        self._last_activity = self._opened_at
        self._stall_over: trio.Event | None = None
        self._close_recorded = False
        #: A ``lone_surrogate`` fault fired: the next final with a transcript is spoiled.
        self._spoil_next_final = False
        self._timed = [
            f
            for f in faults
            if not isinstance(f, RejectFault | DropAfterBytesFault | ConfigureFault)
        ]
        #: How this connection answers Configure instead of applying it (None: it applies it).
        self._configure_fault = next((f for f in faults if isinstance(f, ConfigureFault)), None)
        drops = [f for f in faults if isinstance(f, DropAfterBytesFault)]
        self._drop_after_bytes = min(drops, key=lambda f: f.after_bytes) if drops else None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for fault in self._timed:
                nursery.start_soon(self._timed_fault, fault)
            try:
                await self._receive_loop()
            except trio_websocket.ConnectionClosed:
                self._record_close_by_client()
            nursery.cancel_scope.cancel()

    async def _receive_loop(self) -> None:
        while True:
            message = await self._next_message()
            if message is None:
                await self._send(self._tracker.metadata(self._created))
                await self._close(1011, IDLE_CLOSE_REASON)
                return
            self._last_activity = trio.current_time()
            if isinstance(message, str):
                self._recorder.event("text", text=message)
                kind, decoded = _control_message(message)
                if kind == "Finalize":
                    await self._send_all(self._tracker.flush(from_finalize=True))
                elif kind == "CloseStream":
                    await self._close_stream()
                    return
                elif kind == "Configure":
                    await self._configure(decoded)
                continue  # KeepAlive and anything else only reset the idle timer
            self._recorder.audio(message, self._tracker.received_bytes)
            if not message:  # an empty binary frame means CloseStream to Deepgram
                await self._close_stream()
                return
            await self._send_all(self._tracker.feed(message))
            drop = self._drop_after_bytes
            if drop is not None and self._tracker.received_bytes >= drop.after_bytes:
                await self._drop(drop)
                return

    async def _next_message(self) -> str | bytes | None:
        """The next frame, or None once no frame came for ``idle_timeout_s`` (NET-0001)."""
        while True:
            if self._stall_over is not None:
                await self._stall_over.wait()
            with trio.move_on_at(self._last_activity + self._idle_timeout_s):
                message: str | bytes = await self._ws.get_message()
                return message
            # A stall (which resets the timer when it ends) may have run meanwhile.
            stalled = self._stall_over is not None
            if not stalled and trio.current_time() >= self._last_activity + self._idle_timeout_s:
                return None

    async def _configure(self, message: object) -> None:
        """Answer a ``Configure`` (Deepgram answers each with exactly one message), unless a
        ``configure`` fault makes it refuse or ignore it."""
        self._recorder.event("configure", message=message)
        fault = self._configure_fault
        if fault is None:
            await self._send(self._tracker.configure(message))
            return
        self._recorder.event("fault", fault=fault.describe())
        if fault.answer == "failure":
            await self._send(self._tracker.configure_failure("Configure refused (injected fault)"))

    async def _close_stream(self) -> None:
        await self._send_all(self._tracker.flush(from_finalize=False))
        await self._send(self._tracker.metadata(self._created))
        await self._close(1000, None)

    async def _send_all(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._spoil_next_final and is_transcript_final(message):
            self._spoil_next_final = False
            message = with_lone_surrogate(message)
        await self._send_text(json.dumps(message, separators=(",", ":")), known_json=True)

    async def _send_text(self, text: str, *, known_json: bool) -> None:
        try:
            await self._ws.send_message(text)
        except WsprotoStateError as exc:
            # trio-websocket 0.9 (Debian 12) lets wsproto's state error through when the peer
            # is already gone; newer releases raise ConnectionClosed, which callers handle.
            raise trio_websocket.ConnectionClosed(self._ws.closed) from exc
        self._recorder.sent(text, known_json=known_json)

    async def _close(self, code: int, reason: str | None) -> None:
        self._record_close(code, reason, "server")
        with trio.move_on_after(_CLOSE_HANDSHAKE_TIMEOUT_S):
            await self._ws.aclose(code, reason)

    async def _drop(self, fault: Fault) -> None:
        self._recorder.event("fault", fault=fault.describe())
        self._record_close(1006, "TCP connection aborted without a close frame", "server")
        await self._stream.abort()

    async def _timed_fault(self, fault: TimedFault) -> None:
        await trio.sleep_until(self._opened_at + fault.after_s)
        try:
            await self._fire(fault)
        except trio_websocket.ConnectionClosed:
            self._record_close_by_client()

    async def _fire(self, fault: TimedFault) -> None:
        if isinstance(fault, DropAfterFault):
            await self._drop(fault)
            return
        self._recorder.event("fault", fault=fault.describe())
        if isinstance(fault, CloseAfterFault):
            await self._close(fault.code, fault.reason)
        elif isinstance(fault, ErrorAfterFault):
            error = {"type": "Error", "code": fault.error_code, "description": fault.description}
            await self._send(error)
            await self._close(1011, _close_reason(f"{fault.error_code}: {fault.description}"))
        elif isinstance(fault, StallFault):
            self._stall_over = trio.Event()
            self._stream.stall()
            await trio.sleep(fault.for_s)
            self._stream.resume()
            self._last_activity = trio.current_time()
            self._stall_over.set()
            self._stall_over = None
        else:
            for kind in fault.kinds:
                for message in malformed_messages(kind, self._tracker.empty_results()):
                    if isinstance(message, str):
                        await self._send_text(message, known_json=False)
                    else:
                        await self._send(message)
            # After the sequence: its own hostile finals are not the ones to spoil.
            self._spoil_next_final |= "lone_surrogate" in fault.kinds

    def _record_close_by_client(self) -> None:
        closed = self._ws.closed
        if closed is None:
            self._record_close(1006, None, "client")
        else:
            self._record_close(closed.code, closed.reason, "client")

    def _record_close(self, code: int, reason: str | None, by: Literal["server", "client"]) -> None:
        if not self._close_recorded:
            self._close_recorded = True
            self._recorder.event("close", code=code, reason=reason, by=by)
