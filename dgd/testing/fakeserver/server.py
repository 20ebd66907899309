"""``serve`` and ``dgd fake-server``: the listener, each connection's handshake, the CLI.

``_Server`` counts handshake attempts (from 1 per ``serve`` call), asks ``handshake.py`` for
the answer, records it, then rejects the request or hands the accepted WebSocket to a
``_Connection``. A client that vanishes, or a record directory that becomes unwritable,
ends only its own connection. ``main`` is the command line (options in FAKE_SERVER.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import ssl
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import parse_qs, urlsplit

import h11
import trio
import trio_websocket

from dgd.testing.fakeserver.connection import (
    _CLOSE_HANDSHAKE_TIMEOUT_S,
    _Connection,
    _FaultableStream,
)
from dgd.testing.fakeserver.faults import FaultPlan, FaultPlanError, RejectFault
from dgd.testing.fakeserver.grant import (
    GrantStore,
    ReplayStream,
    is_grant_request,
    read_request_line,
    serve_grant,
)
from dgd.testing.fakeserver.handshake import (
    LISTEN_PATH,
    Rejection,
    _decide,
    auth_ok,
    auth_scheme,
)
from dgd.testing.fakeserver.recorder import _recordable_query, _Recorder
from dgd.testing.fakeserver.speech import SpeechTracker

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main", "serve"]

#: Named after the package, as it was before the package was split into modules.
logger: Final = logging.getLogger("dgd.testing.fakeserver")

#: A client that connects and never completes the HTTP upgrade is dropped after this.
_HANDSHAKE_TIMEOUT_S: Final = 10.0


# --------------------------------------------------------------------------- server


class _Server:
    """Per-``serve`` state: the attempt counter and the settings every connection shares."""

    def __init__(
        self,
        faults: FaultPlan,
        record_dir: Path | None,
        api_key: str | None,
        idle_timeout_s: float,
        *,
        require_auth: bool = True,
    ) -> None:
        self.faults = faults
        self.record_dir = record_dir
        self.api_key = api_key
        self.idle_timeout_s = idle_timeout_s
        self.require_auth = require_auth
        self.grants = GrantStore()  # tokens POST /v1/auth/grant issued (grant.py)
        self.attempts = 0

    async def handle_tcp(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; a client that vanishes never takes the server down."""
        faultable = _FaultableStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                request: trio_websocket.WebSocketRequest | None = None
                with trio.move_on_after(_HANDSHAKE_TIMEOUT_S):
                    # POST /v1/auth/grant shares the port: look at the request line first.
                    prefix = await read_request_line(faultable)
                    if is_grant_request(prefix):
                        status = await serve_grant(
                            faultable,
                            prefix,
                            api_key=self.api_key,
                            store=self.grants,
                            record_dir=self.record_dir,
                        )
                        logger.info("POST /v1/auth/grant -> %d", status)
                        return
                    replay = ReplayStream(faultable, prefix)
                    request = await trio_websocket.wrap_server_stream(nursery, replay)
                if request is not None:
                    await self.handle_request(request, faultable)
                nursery.cancel_scope.cancel()  # stops trio-websocket's reader task
        except* (
            trio_websocket.ConnectionClosed,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as group:
            logger.info("connection lost: %r", group.exceptions[0])
        except* h11.RemoteProtocolError as group:
            logger.info("bad grant request: %s", group.exceptions[0])
        except* OSError as group:
            # A socket error, or --record-dir became unwritable: this connection ends, the
            # server keeps serving the next ones.
            logger.warning("connection failed: %s", group.exceptions[0])
        finally:
            await trio.aclose_forcefully(faultable)

    async def handle_request(
        self, request: trio_websocket.WebSocketRequest, stream: _FaultableStream
    ) -> None:
        """Check the handshake, then reject it or run the connection (recording both)."""
        self.attempts += 1
        attempt = self.attempts
        request_id = str(uuid.uuid4())
        target = urlsplit(request.path)
        query = parse_qs(target.query, keep_blank_values=True)
        faults = self.faults.actions_for(attempt)
        reject = next((f for f in faults if isinstance(f, RejectFault)), None)
        authorized = not self.require_auth or auth_ok(
            request.headers, self.api_key, self.grants.valid
        )
        recorder = _Recorder(self.record_dir, attempt)
        try:
            outcome = _decide(target.path, query, reject, authorized)
            status = outcome.status if isinstance(outcome, Rejection) else 101
            recorder.event(
                "handshake",
                attempt=attempt,
                request_id=request_id,
                path=target.path,
                query=_recordable_query(query),
                auth_ok=authorized,
                auth=auth_scheme(request.headers)[0],
                status=status,
            )
            logger.info(
                "attempt %d: %s -> %d (request %s)", attempt, target.path, status, request_id
            )
            if isinstance(outcome, Rejection):
                if reject is not None and target.path == LISTEN_PATH:
                    recorder.event("fault", fault=reject.describe())
                await _reject(request, outcome, request_id)
                return
            ws = await request.accept(extra_headers=[(b"dg-request-id", request_id.encode())])
            tracker = SpeechTracker(outcome, request_id, keyterms=tuple(query.get("keyterm", ())))
            connection = _Connection(ws, stream, tracker, recorder, faults, self.idle_timeout_s)
            await connection.run()
        finally:
            recorder.close()


async def _reject(
    request: trio_websocket.WebSocketRequest, rejection: Rejection, request_id: str
) -> None:
    body = json.dumps(
        {"err_code": rejection.err_code, "err_msg": rejection.err_msg, "request_id": request_id},
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"dg-request-id", request_id.encode()),
        (b"dg-error", rejection.err_msg.encode("ascii", "replace")),
    ]
    with trio.move_on_after(_CLOSE_HANDSHAKE_TIMEOUT_S):
        await request.reject(rejection.status, extra_headers=headers, body=body)


async def serve(
    host: str,
    port: int,
    *,
    faults: FaultPlan,
    record_dir: Path | None,
    api_key: str | None = None,
    idle_timeout_s: float = 10.0,
    require_auth: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the fake ``/v1/listen`` on ``host:port`` until cancelled.

    Args:
        host: address to bind (``127.0.0.1`` for tests and demos).
        port: TCP port; 0 picks a free one, reported through ``task_status``.
        faults: the fault plan (``FaultPlan.none()`` for none); attempts count from 1 per call.
        record_dir: where ``conn-NNNN.raw``/``.jsonl`` go (created if missing); None: no recording.
        api_key: if given, the only token accepted; otherwise any non-empty token is.
        idle_timeout_s: close 1011/NET-0001 after this long without a data frame.
        require_auth: False: the handshake needs no ``Authorization`` at all (a self-hosted
            server without authentication); ``POST /v1/auth/grant`` still needs the key.
        ssl_context: serve TLS (``wss://``) with this server context (certificate loaded);
            None: plain ``ws://``.
        task_status: receives the bound port (``port = await nursery.start(serve, ...)``).

    Raises:
        OSError: the address cannot be bound (port in use, unknown host), or ``record_dir``
            cannot be created.
    """
    if record_dir is not None:
        _make_dir(record_dir)
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = _Server(faults, record_dir, api_key, idle_timeout_s, require_auth=require_auth)
    bound_port = int(listeners[0].socket.getsockname()[1])
    handler = (
        server.handle_tcp if ssl_context is None else partial(_handle_tls, server, ssl_context)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound_port)


async def _handle_tls(server: _Server, context: ssl.SSLContext, stream: trio.SocketStream) -> None:
    """TLS first, then the connection as over plain TCP. A client that refuses the
    certificate ends only its own connection (logged with OpenSSL's reason)."""
    tls = trio.SSLStream(stream, context, server_side=True)
    try:
        with trio.fail_after(_HANDSHAKE_TIMEOUT_S):
            await tls.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        logger.info("TLS handshake failed: %r", exc.__cause__ or exc)
        await trio.aclose_forcefully(stream)
        return
    # SSLStream forwards socket attributes (setsockopt, for the abort fault) to the TCP stream.
    await server.handle_tcp(cast("trio.SocketStream", tls))


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgd fake-server",
        description="Run a local Deepgram-compatible /v1/listen server (see docs/FAKE_SERVER.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="TCP port; 0 picks one (default 8765)"
    )
    parser.add_argument("--record-dir", type=Path, help="write conn-NNNN.raw/.jsonl here")
    parser.add_argument("--api-key", help="accept only this token (default: any non-empty one)")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="accept handshakes without Authorization (a self-hosted server without auth)",
    )
    parser.add_argument("--faults", type=Path, help="JSON fault plan (see docs/FAKE_SERVER.md)")
    parser.add_argument(
        "--idle-timeout-s", type=float, default=10.0, help="NET-0001 idle close (default 10)"
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="serve wss:// with this PEM certificate (chain) file"
    )
    parser.add_argument("--tls-key", type=Path, help="the private key for --tls-cert (PEM)")
    return parser


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context for ``--tls-cert``/``--tls-key``.

    Raises:
        OSError: a file is unreadable.
        ssl.SSLError: not PEM, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


def main(argv: Sequence[str]) -> int:
    """``dgd fake-server [--host H] [--port P] [--record-dir DIR] [--api-key KEY] ...``.

    Prints ``dgd fake-server listening on ws://HOST:PORT/v1/listen`` once bound and serves
    until SIGINT/SIGTERM. Returns 0 on a signal, 2 on bad usage, an unreadable fault plan
    or an uncreatable record directory, 1 when the address cannot be bound.
    """
    args = _parser().parse_args(list(argv))
    faults = FaultPlan.none()
    if args.faults is not None:
        try:
            faults = FaultPlan.from_json(args.faults.read_text(encoding="utf-8"))
        except OSError as exc:
            print(
                f"dgd fake-server: cannot read --faults {args.faults}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        except (FaultPlanError, UnicodeDecodeError) as exc:
            print(f"dgd fake-server: --faults {args.faults}: {exc}", file=sys.stderr)
            return 2
    if args.record_dir is not None:
        try:
            _make_dir(args.record_dir)
        except OSError as exc:
            print(
                f"dgd fake-server: cannot create --record-dir {args.record_dir}: {exc}",
                file=sys.stderr,
            )
            return 2
    if args.idle_timeout_s <= 0:
        print("dgd fake-server: --idle-timeout-s must be > 0", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("dgd fake-server: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    ssl_context = None
    if args.tls_cert is not None:
        try:
            ssl_context = tls_server_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            print(
                f"dgd fake-server: cannot use --tls-cert {args.tls_cert} / --tls-key "
                f"{args.tls_key}: {exc}",
                file=sys.stderr,
            )
            return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="dgd fake-server: %(message)s")
    return trio.run(_run, args, faults, ssl_context)


async def _run(
    args: argparse.Namespace, faults: FaultPlan, ssl_context: ssl.SSLContext | None
) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(
                    partial(
                        serve,
                        args.host,
                        args.port,
                        faults=faults,
                        record_dir=args.record_dir,
                        api_key=args.api_key,
                        idle_timeout_s=args.idle_timeout_s,
                        require_auth=not args.no_auth,
                        ssl_context=ssl_context,
                    )
                )
            except OSError as exc:
                print(
                    f"dgd fake-server: cannot listen on {args.host}:{args.port} "
                    f"(check --host/--port): {exc}",
                    file=sys.stderr,
                )
                return 1
            host = f"[{args.host}]" if ":" in args.host else args.host
            scheme = "ws" if ssl_context is None else "wss"
            print(f"dgd fake-server listening on {scheme}://{host}:{port}{LISTEN_PATH}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return 0
