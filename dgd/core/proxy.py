"""Which HTTP proxy (if any) carries a connection, decided as curl decides it.

``deepgram.proxy`` is ``""`` (the environment: ``https_proxy``/``HTTPS_PROXY`` for ``wss://``,
``http_proxy``/``HTTP_PROXY`` for ``ws://``, lowercase first, and ``no_proxy``/``NO_PROXY``),
``"direct"`` (never a proxy) or ``http://host:port``. The proxy is always spoken to in plain
HTTP and asked to ``CONNECT host:port``; TLS to Deepgram then runs through the tunnel, end to
end. This module does no I/O: the environment and the credentials file's text are parameters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Mapping

#: curl's default proxy port when a proxy URL names none.
DEFAULT_PROXY_PORT: Final = 1080
#: ``deepgram.proxy`` value that turns proxies off, whatever the environment says.
DIRECT: Final = "direct"


class ProxyConfigError(ValueError):
    """A proxy URL or credentials text that cannot be used (the message names what and why,
    never the password)."""


@dataclass(frozen=True, slots=True)
class ProxyServer:
    """One HTTP proxy.

    Attributes:
        host: host name or IP literal (no brackets).
        port: TCP port.
        origin: where it came from, for messages (``deepgram.proxy``, ``$https_proxy``, ...).
        credentials: ``user:password`` for ``Proxy-Authorization: Basic`` or ``""``; a
            secret, kept out of ``repr``.
    """

    host: str
    port: int
    origin: str
    credentials: str = field(default="", repr=False)

    @property
    def address(self) -> str:
        """``host:port`` for messages (IPv6 in brackets)."""
        return f"{_bracketed(self.host)}:{self.port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_credentials(text: str) -> str:
    """The ``user:password`` line of a credentials file's ``text`` (first line, line end
    removed).

    Raises:
        ProxyConfigError: no ``:`` in the line or an empty user name.
    """
    line = text.split("\n", 1)[0].rstrip("\r")
    user, sep, _password = line.partition(":")
    if not sep or not user:
        raise ProxyConfigError("expected one line user:password")
    return line


def parse_proxy_url(text: str, origin: str) -> ProxyServer:
    """Parse ``http://[user:password@]host[:port][/]`` (the scheme may be left out, as curl
    allows). Credentials in the URL (percent-decoded) become ``credentials``; ``origin``
    names the source in messages.

    Raises:
        ProxyConfigError: another scheme (``https://``, ``socks5://``: not supported), a path,
            no host, or a bad port.
    """
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ProxyConfigError(f"{origin}: not a proxy URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ProxyConfigError(
            f"{origin}: only http:// proxies are supported (got a {scheme}:// proxy)"
        )
    if not parts.hostname:
        raise ProxyConfigError(f"{origin}: the proxy URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(f"{origin}: a proxy URL has no path (use http://host:port)")
    credentials = ""
    if parts.username:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return ProxyServer(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PROXY_PORT,
        origin=origin,
        credentials=credentials,
    )


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        return host, int(port_text) if port_text.isdigit() else None
    if entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        return host, int(port_text) if port_text.isdigit() else None
    return entry, None


def no_proxy_matches(no_proxy: str, host: str, port: int) -> bool:
    """Does ``no_proxy`` exempt ``host:port``? curl's rules:

    entries are separated by commas (and whitespace); ``*`` alone exempts every host; a name
    matches itself and its subdomains (``example.com`` and ``.example.com`` both match
    ``api.example.com`` and ``example.com``), case-insensitively; an IP literal matches that
    address, and ``addr/bits`` a CIDR range; an entry with ``:port`` only matches that port.
    """
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.replace(",", " ").split():
        if raw == "*":
            return True
        name, entry_port = _split_host_port(raw)
        if entry_port is not None and entry_port != port:
            continue
        name = name.rstrip(".").lower()
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _environment_proxy(tls: bool, environ: Mapping[str, str]) -> tuple[str, str] | None:
    names = ("https_proxy", "HTTPS_PROXY") if tls else ("http_proxy", "HTTP_PROXY")
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return f"${name}", value
    return None


def choose_proxy(
    setting: str,
    *,
    tls: bool,
    host: str,
    port: int,
    environ: Mapping[str, str],
    credentials: str = "",
) -> ProxyServer | None:
    """The proxy for a connection to ``host:port`` (``tls``: ``wss://``/``https://``), or None
    to connect directly.

    ``setting`` is ``deepgram.proxy``. An explicit proxy ignores ``no_proxy`` (it is what the
    configuration asks for). ``credentials`` (from ``deepgram.proxy_credentials_file``)
    replace those carried in the URL.

    Raises:
        ProxyConfigError: the proxy URL (configured or from the environment) is unusable.
    """
    if setting == DIRECT:
        return None
    if setting:
        proxy = parse_proxy_url(setting, "deepgram.proxy")
    else:
        found = _environment_proxy(tls, environ)
        if found is None:
            return None
        no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        if no_proxy_matches(no_proxy, host, port):
            return None
        proxy = parse_proxy_url(found[1], found[0])
    if credentials:
        proxy = ProxyServer(proxy.host, proxy.port, proxy.origin, credentials)
    return proxy


def connect_request(host: str, port: int, authorization: str = "") -> bytes:
    """The ``CONNECT host:port HTTP/1.1`` request that opens a tunnel through a proxy."""
    target = f"{_bracketed(host)}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class ConnectReply:
    """A proxy's answer to ``CONNECT``: status and reason phrase."""

    status: int
    reason: str


def parse_connect_reply(head: bytes) -> ConnectReply:
    """Parse the head of a proxy's answer (up to, not including, the blank line).

    Raises:
        ProxyConfigError: not an HTTP response (the address is not an HTTP proxy).
    """
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code_text) != 3 or not code_text.isdigit():
        shown = status_line[:60]
        raise ProxyConfigError(f"not an HTTP proxy (it answered {shown!r})")
    return ConnectReply(int(code_text), reason.strip())
