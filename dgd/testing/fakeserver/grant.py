"""``POST /v1/auth/grant`` on the WebSocket's port: temporary tokens, as Deepgram issues them.

``handle_tcp`` reads a connection's request line first (``read_request_line``). A grant
request is answered here with h11: 401 ``INVALID_AUTH`` without a valid ``Token <key>``, 400
for a ``ttl_seconds`` outside 1..3600, else 200 ``{"access_token": "<random>",
"expires_in": <ttl>}``. The ``GrantStore`` remembers each token until it expires, so the
handshake accepts ``Authorization: Bearer <token>`` for exactly the tokens issued here. Any
other request line is replayed into the WebSocket handshake through ``ReplayStream``. With a
record directory, every grant answer is a line of ``grants.jsonl``, token included (this is a
test server: the tests check that dgd never logs the tokens it was given).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Final

import h11
import trio

from dgd.testing.fakeserver.handshake import auth_ok

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "GRANT_PATH",
    "GrantStore",
    "ReplayStream",
    "is_grant_request",
    "read_request_line",
    "serve_grant",
]

GRANT_PATH: Final = "/v1/auth/grant"
#: ``ttl_seconds`` when the request has no body (Deepgram's default), and its bounds.
DEFAULT_TTL_S: Final = 30
MIN_TTL_S: Final = 1
MAX_TTL_S: Final = 3600
#: A request line longer than this is not HTTP the fake server serves (it is replayed as is).
MAX_REQUEST_LINE_BYTES: Final = 8192
#: Largest grant request accepted (headers and body).
MAX_GRANT_REQUEST_BYTES: Final = 1 << 16


class GrantStore:
    """The tokens issued by one ``serve``, each valid until its ``expires_in`` has passed
    (measured on ``trio.current_time()``)."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, ttl_s: int) -> str:
        """A new random token valid for ``ttl_s`` seconds from now."""
        now = trio.current_time()
        self._expiry = {t: e for t, e in self._expiry.items() if e > now}  # forget expired ones
        token = "fake." + secrets.token_urlsafe(32)
        self._expiry[token] = now + ttl_s
        return token

    def valid(self, token: str) -> bool:
        """True for a token issued here that has not expired."""
        expiry = self._expiry.get(token)
        return expiry is not None and trio.current_time() < expiry


async def read_request_line(stream: trio.abc.Stream) -> bytes:
    """Bytes from ``stream`` up to and including the first line break (or
    ``MAX_REQUEST_LINE_BYTES``, or whatever came before the peer stopped sending): everything
    read, so that it can be replayed."""
    data = bytearray()
    while b"\n" not in data and len(data) < MAX_REQUEST_LINE_BYTES:
        chunk = await stream.receive_some(MAX_REQUEST_LINE_BYTES)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def is_grant_request(prefix: bytes) -> bool:
    """True when the request line is ``POST /v1/auth/grant`` (query string ignored)."""
    method, _, rest = prefix.partition(b" ")
    target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
    return method == b"POST" and target == GRANT_PATH.encode()


class ReplayStream(trio.abc.Stream):
    """``inner`` with ``prefix`` (bytes already read from it) read again first."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def serve_grant(
    stream: trio.abc.Stream,
    prefix: bytes,
    *,
    api_key: str | None,
    store: GrantStore,
    record_dir: Path | None,
) -> int:
    """Answer one ``POST /v1/auth/grant`` whose first bytes (``prefix``) were already read.

    Args:
        stream: the connection.
        prefix: what ``read_request_line`` returned.
        api_key: the only key accepted (None: any non-empty one), as for the handshake.
        store: where the issued token is remembered.
        record_dir: where ``grants.jsonl`` is appended to, or None.

    Returns:
        The HTTP status sent.

    Raises:
        h11.RemoteProtocolError: the request is not valid HTTP/1.1 or is too large.
        trio.BrokenResourceError: the client went away.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_GRANT_REQUEST_BYTES)
    conn.receive_data(prefix)
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(MAX_GRANT_REQUEST_BYTES)))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_GRANT_REQUEST_BYTES:
                raise h11.RemoteProtocolError("grant request body too large")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if request is None:
        raise h11.RemoteProtocolError("the client closed the connection before its request")
    headers = [(bytes(name), bytes(value)) for name, value in request.headers]
    status, document = _answer(headers, bytes(body), api_key, store)
    if record_dir is not None:
        record = {"t": time.time(), "status": status, **document}
        with (record_dir / "grants.jsonl").open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
    payload = json.dumps(document, separators=(",", ":")).encode()
    response = h11.Response(
        status_code=status,
        headers=[
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("connection", "close"),
        ],
    )
    await stream.send_all(conn.send(response) + conn.send(h11.Data(data=payload)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    return status


def _answer(
    headers: list[tuple[bytes, bytes]], body: bytes, api_key: str | None, store: GrantStore
) -> tuple[int, dict[str, object]]:
    request_id = str(uuid.uuid4())
    if not auth_ok(headers, api_key):
        return 401, {
            "err_code": "INVALID_AUTH",
            "err_msg": "Invalid credentials.",
            "request_id": request_id,
        }
    ttl_s = _ttl_s(body)
    if ttl_s is None:
        return 400, {
            "err_code": "INVALID_QUERY_PARAMETER",
            "err_msg": f"ttl_seconds must be an integer from {MIN_TTL_S} to {MAX_TTL_S}.",
            "request_id": request_id,
        }
    return 200, {"access_token": store.issue(ttl_s), "expires_in": ttl_s}


def _ttl_s(body: bytes) -> int | None:
    if not body.strip():
        return DEFAULT_TTL_S
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    ttl = document.get("ttl_seconds", DEFAULT_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
        return None
    return ttl
