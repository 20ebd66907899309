"""The URLs dgd connects to, checked: ``deepgram.url``, ``deepgram.region`` and ``deepgram.proxy``.

Each rule is something the connection would otherwise fail on at the first attempt, with a
traceback instead of a message naming the key (urllib.parse, h11, the resolver's IDNA step), or
a value that would leak a secret into the config's visible text. Part of ``dgd.core.config``'s
parse; this module does no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Final

from dgd.core import tomltext
from dgd.core.connection import REGION_HOSTS, region_url

if TYPE_CHECKING:
    from dgd.core.tomltext import Table

DEFAULT_URL: Final = "wss://api.deepgram.com/v1/listen"
#: ``deepgram.proxy`` value that turns proxies off, whatever the environment says.
PROXY_DIRECT: Final = "direct"


def ws_url(table: Table) -> str:
    """``deepgram.url``, checked (problems go to ``table``)."""
    url = table.string("url", DEFAULT_URL)
    if "url" in table.bad:
        return url
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        # Never echo it: the part before "@" may well be a secret.
        table.problem("url", "must not contain credentials; use deepgram.api_key_file")
    elif not sep or scheme not in ("ws", "wss") or not authority:
        hint = ""
        if scheme in ("http", "https") and sep:
            hint = f"; for {scheme}:// use {'wss' if scheme == 'https' else 'ws'}://"
        table.problem("url", f"must be a ws:// or wss:// URL with a host{hint}", url)
    elif "?" in url or "#" in url:
        table.problem("url", "must not contain a query string; use [deepgram.query]", url)
    else:
        problem = url_problem(url, authority)
        if problem:
            table.problem("url", problem, url)
    return url


#: A host name's label (RFC 1123, and "_", which DNS allows and resolvers pass).
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")
_IPV6_EXAMPLE: Final = "e.g. ws://[::1]:8765/v1/listen"


def url_problem(url: str, authority: str) -> str:
    """What in a ws(s):// URL the WebSocket client would fail on, or ``""``.

    urllib.parse (which trio-websocket uses) raises on a port out of range or not a number and
    on unbalanced brackets; h11 refuses a request target with spaces, control characters or
    non-ASCII; the resolver's IDNA step refuses empty or over-long labels. Each would end
    `dgd run` with a traceback at the first connection, so they are configuration errors.
    """
    for position, char in enumerate(url, 1):
        if not "\x21" <= char <= "\x7e":
            return (
                "must be printable ASCII without spaces (percent-encode the path, write an"
                f" international host name in its xn-- form); character {position} is"
                f" {describe_char(char)}"
            )
    if authority.startswith("["):
        literal, bracket, after = authority[1:].partition("]")
        if not bracket or "[" in literal or "[" in after or "]" in after:
            return f"unbalanced [ ]: an IPv6 address is written in brackets, {_IPV6_EXAMPLE}"
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return f"{tomltext.string(literal)} in [ ] is not an IPv6 address ({_IPV6_EXAMPLE})"
        if after and not after.startswith(":"):
            return f"only :port may follow ] ({_IPV6_EXAMPLE})"
        port = after[1:] if after else None
    elif "[" in authority or "]" in authority:
        return f"unbalanced [ ]: an IPv6 address is written in brackets, {_IPV6_EXAMPLE}"
    elif authority.count(":") > 1:
        return f"an IPv6 address must be written in brackets, {_IPV6_EXAMPLE}"
    else:
        host, colon, after = authority.partition(":")
        port = after if colon else None
        if not host:
            return "must be a ws:// or wss:// URL with a host"
        labels = host.split(".")
        if labels[-1] == "" and len(labels) > 1:
            labels.pop()  # one trailing dot is the root: "localhost." is fine
        if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            return (
                f"{tomltext.string(host)} is not a valid host name (letters, digits, - and _,"
                " in dot-separated labels of 1 to 63 characters)"
            )
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port must be a whole number between 1 and 65535, not {port or 'empty'}"
    return ""


def region(table: Table, url: str) -> str:
    """``deepgram.region``, checked against ``url`` (problems go to ``table``)."""
    region = table.string("region", "")
    if "region" in table.bad or not region:
        return ""
    if region not in REGION_HOSTS:
        allowed = ", ".join(tomltext.string(name) for name in REGION_HOSTS)
        table.problem("region", f"must be one of {allowed}, or empty", region)
        return ""
    if "url" in table.raw and "url" not in table.bad and url != region_url(region):
        # Two answers to "where": refuse rather than guess which one the operator meant.
        table.problem(
            "region",
            f"sets the endpoint to {region_url(region)}, but deepgram.url says {url}; keep one",
            region,
        )
        return ""
    return region


def proxy(table: Table) -> str:
    """``deepgram.proxy``, checked (problems go to ``table``)."""
    proxy = table.string("proxy", "")
    if "proxy" in table.bad or proxy in ("", PROXY_DIRECT):
        return proxy
    scheme, sep, rest = proxy.partition("://")
    authority = rest.rstrip("/")
    if "@" in authority:
        # Never echo it: the part before "@" is a password.
        table.problem(
            "proxy",
            "must not contain credentials; put user:password in deepgram.proxy_credentials_file",
        )
    elif not sep or scheme != "http" or not authority or "/" in authority:
        table.problem(
            "proxy",
            f'must be "http://host:port" (dgd speaks HTTP CONNECT to the proxy), "{PROXY_DIRECT}"'
            " or empty (use $https_proxy)",
            proxy,
        )
    else:
        problem = url_problem(proxy, authority)
        if problem:
            table.problem("proxy", problem.replace("ws:// or wss://", "http://"), proxy)
    return proxy


def describe_char(char: str) -> str:
    """A character as a message can show it: ``"’" (U+2019)``, or ``U+0009`` if invisible."""
    code = f"U+{ord(char):04X}"
    return f"{tomltext.string(char)} ({code})" if char.isprintable() and char != " " else code
