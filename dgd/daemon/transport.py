"""How a byte stream to a server is opened: TCP, an HTTP proxy's CONNECT tunnel, then TLS.

``open_stream`` does each step explicitly so that each failure is raised at once and named:
a refused certificate is a ``TlsError`` carrying OpenSSL's verify code (not a handshake
timeout), a proxy that refuses is a ``ProxyError`` carrying its HTTP status. Trust is the
system's store plus ``deepgram.ca_file``; nothing here turns verification off. The WebSocket
handshake (``dgd.daemon.wsclient``) and the token grant request run over these streams.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio

from dgd.core.config import ConfigError
from dgd.core.proxy import (
    ProxyConfigError,
    ProxyServer,
    check_credentials,
    choose_proxy,
    connect_request,
    parse_connect_reply,
)
from dgd.daemon.logsetup import SECRETS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dgd.core.config import DeepgramConfig

log = logging.getLogger("dgd.transport")

#: A proxy's answer to CONNECT longer than this is not an HTTP proxy speaking.
MAX_PROXY_REPLY_BYTES: Final = 64 * 1024


class NetworkError(Exception):
    """The connection could not be established (DNS, TCP, TLS, proxy, timeout)."""


class TlsError(NetworkError):
    """The TLS handshake failed: the certificate was refused (``verify_code`` is OpenSSL's
    ``X509_V_ERR_*`` number, ``verify_message`` its text) or the peers could not agree
    (``verify_code`` None)."""

    def __init__(self, message: str, *, verify_code: int | None, verify_message: str) -> None:
        super().__init__(message)
        self.verify_code = verify_code
        self.verify_message = verify_message


class ProxyError(NetworkError):
    """The proxy refused the tunnel (``status``: its HTTP status, e.g. 407, 403, 502) or could
    not be reached or understood (``status`` None)."""

    def __init__(self, message: str, *, status: int | None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Network:
    """How to reach servers: whom to trust, which proxy to use.

    Attributes:
        ssl_context: the system's trust store plus ``deepgram.ca_file``, verification on.
        proxy_setting: ``deepgram.proxy`` (``""``: the environment, ``"direct"``, a URL).
        environ: the environment variables the proxy choice reads (``https_proxy``, ...).
        proxy_credentials: ``user:password`` from ``deepgram.proxy_credentials_file`` (a
            secret) or ``""``.
    """

    ssl_context: ssl.SSLContext
    proxy_setting: str = ""
    environ: Mapping[str, str] | None = field(default=None, repr=False)
    proxy_credentials: str = field(default="", repr=False)

    def proxy_for(self, host: str, port: int, *, tls: bool) -> ProxyServer | None:
        """The proxy for ``host:port``, or None to connect directly.

        Raises:
            ProxyConfigError: the proxy URL in the environment is unusable.
        """
        return choose_proxy(
            self.proxy_setting,
            tls=tls,
            host=host,
            port=port,
            environ=self.environ or {},
            credentials=self.proxy_credentials,
        )


_PROXY_VARIABLES: Final = (
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "no_proxy",
    "NO_PROXY",
)


def _read_text(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"deepgram.{key}: cannot read {path}: {reason}") from None


def network_for(cfg: DeepgramConfig, environ: Mapping[str, str]) -> Network:
    """Build the ``Network`` for ``cfg``: load ``ca_file`` into a default context, read the
    proxy credentials file (registered as a secret), check the proxy URL that would be used.

    Raises:
        ConfigError: ``ca_file`` is unreadable or holds no PEM certificate, the credentials
            file is unreadable or not ``user:password``, or a proxy URL is unusable.
    """
    context = ssl.create_default_context()
    if cfg.ca_file:
        text = _read_text(cfg.ca_file, "ca_file")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError(
                f"deepgram.ca_file: {cfg.ca_file} holds no PEM certificate "
                "(expected -----BEGIN CERTIFICATE----- blocks)"
            )
        try:
            context.load_verify_locations(cadata=text)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"deepgram.ca_file: {cfg.ca_file} is not a valid PEM bundle ({exc.reason})"
            ) from None
    credentials = ""
    if cfg.proxy_credentials_file:
        text = _read_text(cfg.proxy_credentials_file, "proxy_credentials_file")
        try:
            credentials = check_credentials(text)
        except ProxyConfigError as exc:
            raise ConfigError(
                f"deepgram.proxy_credentials_file: {cfg.proxy_credentials_file}: {exc}"
            ) from None
        _register_secret(credentials)
    env = {name: environ[name] for name in _PROXY_VARIABLES if name in environ}
    network = Network(context, cfg.proxy, env, credentials)
    target = urlsplit(cfg.url)
    tls = target.scheme == "wss"
    try:
        host, port = target.hostname or "", target.port or (443 if tls else 80)
        proxy = network.proxy_for(host, port, tls=tls)
    except (ProxyConfigError, ValueError) as exc:
        # The message starts with where the URL came from (deepgram.proxy, $https_proxy).
        raise ConfigError(str(exc)) from None
    if proxy is not None and proxy.credentials:
        _register_secret(proxy.credentials)  # from the environment's proxy URL
    return network


def _file_signature(path: str) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # network_for reports it, naming the key
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class NetworkCache:
    """``network_for``, built again only when its inputs change: the ``[deepgram]`` settings,
    the proxy variables, or the ``ca_file``/``proxy_credentials_file`` on disk. Building it
    loads the system's CA store (about 40 ms on a PC, several times that on a Pi Zero), which
    a connection attempt need not pay each time; a changed file still takes effect at the
    next attempt, without a reload."""

    def __init__(self) -> None:
        self._key: object = None
        self._network: Network | None = None

    def get(self, cfg: DeepgramConfig, environ: Mapping[str, str]) -> Network:
        """The ``Network`` for ``cfg`` (raises as ``network_for``; a failure is not kept)."""
        key = (
            cfg,
            _file_signature(cfg.ca_file),
            _file_signature(cfg.proxy_credentials_file),
            tuple(environ.get(name) for name in _PROXY_VARIABLES),
        )
        if self._network is None or key != self._key:
            self._network = None
            self._network = network_for(cfg, environ)
            self._key = key
        return self._network


def basic_authorization(credentials: str) -> str:
    """``Proxy-Authorization`` value for ``user:password`` (UTF-8, as curl sends it)."""
    return "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")


def _register_secret(credentials: str) -> None:
    """Scrub the password, the pair and its Basic encoding from every log line."""
    password = credentials.partition(":")[2]
    SECRETS.add_secrets(credentials, password, basic_authorization(credentials)[6:])


class _PrefixedStream(trio.abc.Stream):
    """A stream that first yields ``prefix`` (bytes the proxy sent after its reply head,
    which belong to the tunnel), then reads from ``inner``."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        if isinstance(self._inner, trio.abc.HalfCloseableStream):
            await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _os_reason(exc: OSError) -> str:
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and isinstance(cause.exceptions[-1], OSError):
        # trio's "all attempts to connect to ... failed": the last attempt's error says why.
        exc = cause.exceptions[-1]
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name ({exc.strerror})"
    if exc.errno is not None:
        return os.strerror(exc.errno)  # trio's strerror repeats the address
    return exc.strerror or str(exc) or type(exc).__name__


async def _tcp(host: str, port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream(host, port)


async def _tunnel(proxy: ProxyServer, host: str, port: int) -> trio.abc.Stream:
    """TCP to the proxy, ``CONNECT host:port``, and the tunnel once it answers 2xx."""
    try:
        stream = await _tcp(proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(
            f"proxy {proxy.address} ({proxy.origin}): {_os_reason(exc)}", status=None
        ) from None
    try:
        await stream.send_all(
            connect_request(
                host,
                port,
                basic_authorization(proxy.credentials) if proxy.credentials else "",
            )
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_PROXY_REPLY_BYTES:
                raise ProxyError(
                    f"proxy {proxy.address}: its answer to CONNECT is too long", status=None
                )
            data = await stream.receive_some(4096)
            if not data:
                raise ProxyError(
                    f"proxy {proxy.address}: closed the connection before answering CONNECT",
                    status=None,
                )
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        try:
            reply = parse_connect_reply(head)
        except ProxyConfigError as exc:
            raise ProxyError(f"proxy {proxy.address}: {exc}", status=None) from None
    except trio.BrokenResourceError as exc:
        await stream.aclose()
        cause = exc.__cause__
        reason = _os_reason(cause) if isinstance(cause, OSError) else "connection lost"
        raise ProxyError(f"proxy {proxy.address}: {reason}", status=None) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if not 200 <= reply.status < 300:
        await trio.aclose_forcefully(stream)
        target = f"{host}:{port}"
        raise ProxyError(
            f"proxy {proxy.address} refused CONNECT {target}: HTTP {reply.status} {reply.reason}",
            status=reply.status,
        )
    return _PrefixedStream(stream, rest) if rest else stream


async def _tls(
    stream: trio.abc.Stream, host: str, port: int, network: Network
) -> trio.SSLStream[trio.abc.Stream]:
    tls_stream = trio.SSLStream(stream, network.ssl_context, server_hostname=host)
    try:
        await tls_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__
        where = f"({host}:{port})"
        if isinstance(cause, ssl.SSLCertVerificationError):
            message = cause.verify_message or cause.reason or "refused"
            raise TlsError(
                f"TLS: certificate verify failed: {message} {where}",
                verify_code=cause.verify_code,
                verify_message=message,
            ) from None
        if isinstance(cause, ssl.SSLError) and not isinstance(
            cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
        ):
            reason = (cause.reason or str(cause)).lower().replace("_", " ")
            raise TlsError(
                f"TLS handshake failed: {reason} {where}",
                verify_code=None,
                verify_message=reason,
            ) from None
        reason = (
            _os_reason(cause)
            if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)
            else "the server closed the connection"
        )
        raise NetworkError(f"TLS handshake with {host}:{port} failed: {reason}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls_stream


async def open_stream(
    host: str, port: int, *, tls: bool, network: Network, timeout_s: float
) -> trio.abc.Stream:
    """A connected stream to ``host:port``: directly or through the proxy ``network`` picks,
    then TLS (certificate checked against ``host``) when ``tls``.

    Raises:
        TlsError: the certificate was refused or the TLS handshake failed.
        ProxyError: the proxy refused CONNECT, could not be reached, or is not an HTTP proxy.
        NetworkError: DNS or TCP failed, or nothing was connected within ``timeout_s``.
    """
    try:
        proxy = network.proxy_for(host, port, tls=tls)
    except ProxyConfigError as exc:
        raise ProxyError(str(exc), status=None) from None
    step = f"proxy {proxy.address}" if proxy is not None else f"{host}:{port}"
    if proxy is not None:
        log.debug("reaching %s:%d through proxy %s (%s)", host, port, proxy.address, proxy.origin)
    try:
        with trio.fail_after(timeout_s):
            if proxy is not None:
                stream: trio.abc.Stream = await _tunnel(proxy, host, port)
            else:
                try:
                    stream = await _tcp(host, port)
                except OSError as exc:
                    raise NetworkError(
                        f"cannot connect to {host}:{port}: {_os_reason(exc)}"
                    ) from None
            step = f"the TLS handshake with {host}:{port}"
            if tls:
                stream = await _tls(stream, host, port, network)
            return stream
    except trio.TooSlowError:
        if proxy is not None and step.startswith("proxy"):
            raise ProxyError(f"{step}: no answer within {timeout_s:g} s", status=None) from None
        raise NetworkError(f"{step}: no answer within {timeout_s:g} s") from None
