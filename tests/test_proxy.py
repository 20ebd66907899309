"""The pure proxy choice (dgd.core.proxy) and the TLS/proxy failure classification."""

from __future__ import annotations

import random

import pytest

from dgd.core.backoff import (
    CLOCK_HINT,
    Failure,
    RetryPolicy,
    Verdict,
    proxy_failure,
    tls_failure,
)
from dgd.core.proxy import (
    ConnectReply,
    ProxyConfigError,
    ProxyServer,
    check_credentials,
    choose_proxy,
    connect_request,
    no_proxy_matches,
    parse_connect_reply,
    parse_proxy_url,
)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "expected"),
    [
        ("", "api.deepgram.com", 443, False),
        ("*", "api.deepgram.com", 443, True),
        ("deepgram.com", "api.deepgram.com", 443, True),
        ("deepgram.com", "deepgram.com", 443, True),
        (".deepgram.com", "api.deepgram.com", 443, True),
        (".deepgram.com", "deepgram.com", 443, True),
        ("DeepGram.COM", "api.deepgram.com", 443, True),
        ("gram.com", "api.deepgram.com", 443, False),  # a suffix of a label is no match
        ("example.com, deepgram.com", "api.deepgram.com", 443, True),
        ("example.com deepgram.com", "api.deepgram.com", 443, True),
        ("example.com,,", "api.deepgram.com", 443, False),
        ("deepgram.com:443", "api.deepgram.com", 443, True),
        ("deepgram.com:8443", "api.deepgram.com", 443, False),
        ("127.0.0.1", "127.0.0.1", 8765, True),
        ("127.0.0.1", "127.0.0.2", 8765, False),
        ("127.0.0.0/8", "127.1.2.3", 8765, True),
        ("10.0.0.0/8", "127.1.2.3", 8765, False),
        ("::1", "::1", 443, True),
        ("[::1]:443", "::1", 443, True),
        ("[::1]:80", "::1", 443, False),
        ("localhost", "127.0.0.1", 443, False),  # names are not resolved
        ("1.2.3.4", "api.deepgram.com", 443, False),
        ("api.deepgram.com.", "api.deepgram.com", 443, True),
        ("x,*", "api.deepgram.com", 443, True),
    ],
)
def test_no_proxy_matches_as_curl(no_proxy: str, host: str, port: int, expected: bool) -> None:
    assert no_proxy_matches(no_proxy, host, port) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://proxy.lan:3128", ProxyServer("proxy.lan", 3128, "o")),
        ("http://proxy.lan:3128/", ProxyServer("proxy.lan", 3128, "o")),
        ("proxy.lan:3128", ProxyServer("proxy.lan", 3128, "o")),
        ("http://proxy.lan", ProxyServer("proxy.lan", 1080, "o")),
        ("HTTP://Proxy.LAN:8080", ProxyServer("proxy.lan", 8080, "o")),
        ("http://[::1]:3128", ProxyServer("::1", 3128, "o")),
        ("http://u:p%40ss@proxy.lan:3128", ProxyServer("proxy.lan", 3128, "o", "u:p@ss")),
        ("http://u@proxy.lan:3128", ProxyServer("proxy.lan", 3128, "o", "u:")),
    ],
)
def test_parse_proxy_url(text: str, expected: ProxyServer) -> None:
    parsed = parse_proxy_url(text, "o")
    assert parsed == expected
    assert parsed.credentials == expected.credentials


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://proxy.lan:3128", "o: only http:// proxies are supported (got a https:// proxy)"),
        (
            "socks5://proxy.lan:1080",
            "o: only http:// proxies are supported (got a socks5:// proxy)",
        ),
        ("http://:3128", "o: the proxy URL names no host"),
        ("http://proxy.lan:3128/path", "o: a proxy URL has no path (use http://host:port)"),
        ("http://proxy.lan:99999", "o: not a proxy URL (Port out of range 0-65535)"),
    ],
)
def test_unusable_proxy_urls_are_named(text: str, message: str) -> None:
    with pytest.raises(ProxyConfigError) as caught:
        parse_proxy_url(text, "o")
    assert str(caught.value) == message


def test_credentials_stay_out_of_repr() -> None:
    proxy = parse_proxy_url("http://user:s3cret@proxy.lan:3128", "$https_proxy")
    assert "s3cret" not in repr(proxy)
    assert proxy.address == "proxy.lan:3128"


ENV = {
    "https_proxy": "http://lower:1",
    "HTTPS_PROXY": "http://upper:2",
    "HTTP_PROXY": "http://plain:3",
    "NO_PROXY": "internal.lan",
}


@pytest.mark.parametrize(
    ("setting", "tls", "host", "environ", "expected"),
    [
        ("", True, "api.deepgram.com", {}, None),
        ("", True, "api.deepgram.com", ENV, ProxyServer("lower", 1, "$https_proxy")),
        (
            "",
            True,
            "api.deepgram.com",
            {"HTTPS_PROXY": "http://upper:2"},
            ProxyServer("upper", 2, "$HTTPS_PROXY"),
        ),
        ("", False, "api.deepgram.com", ENV, ProxyServer("plain", 3, "$HTTP_PROXY")),
        ("", True, "dg.internal.lan", ENV, None),
        ("", True, "x", {"https_proxy": "http://p:1", "no_proxy": "x", "NO_PROXY": ""}, None),
        ("direct", True, "api.deepgram.com", ENV, None),
        (
            "http://cfg:3128",
            True,
            "dg.internal.lan",
            ENV,
            ProxyServer("cfg", 3128, "deepgram.proxy"),
        ),
        (
            "http://cfg:3128",
            False,
            "api.deepgram.com",
            {},
            ProxyServer("cfg", 3128, "deepgram.proxy"),
        ),
    ],
)
def test_choose_proxy(
    setting: str, tls: bool, host: str, environ: dict[str, str], expected: ProxyServer | None
) -> None:
    assert choose_proxy(setting, tls=tls, host=host, port=443, environ=environ) == expected


def test_credentials_file_replaces_those_in_the_url() -> None:
    proxy = choose_proxy(
        "",
        tls=True,
        host="api.deepgram.com",
        port=443,
        environ={"https_proxy": "http://a:b@p:1"},
        credentials="c:d",
    )
    assert proxy is not None
    assert proxy.credentials == "c:d"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user:pass\n", "user:pass"),
        ("user:pa:ss\r\nsecond line\n", "user:pa:ss"),
        ("user:", "user:"),
    ],
)
def test_check_credentials(text: str, expected: str) -> None:
    assert check_credentials(text) == expected


@pytest.mark.parametrize("text", ["", "user\n", ":pass\n"])
def test_check_credentials_refuses(text: str) -> None:
    with pytest.raises(ProxyConfigError, match="expected one line user:password"):
        check_credentials(text)


@pytest.mark.parametrize(
    ("host", "port", "authorization", "expected"),
    [
        (
            "api.deepgram.com",
            443,
            "",
            b"CONNECT api.deepgram.com:443 HTTP/1.1\r\nHost: api.deepgram.com:443\r\n\r\n",
        ),
        (
            "::1",
            8765,
            "Basic dTpw",
            b"CONNECT [::1]:8765 HTTP/1.1\r\nHost: [::1]:8765\r\n"
            b"Proxy-Authorization: Basic dTpw\r\n\r\n",
        ),
    ],
)
def test_connect_request(host: str, port: int, authorization: str, expected: bytes) -> None:
    assert connect_request(host, port, authorization) == expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"HTTP/1.1 200 Connection established", ConnectReply(200, "Connection established")),
        (
            b"HTTP/1.0 407 Proxy Authentication Required\r\nX: y",
            ConnectReply(407, "Proxy Authentication Required"),
        ),
        (b"HTTP/1.1 502", ConnectReply(502, "")),
    ],
)
def test_parse_connect_reply(head: bytes, expected: ConnectReply) -> None:
    assert parse_connect_reply(head) == expected


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH_9.2", b"HTTP/1.1 abc nope", b""])
def test_parse_connect_reply_refuses_non_http(head: bytes) -> None:
    with pytest.raises(ProxyConfigError, match="not an HTTP proxy"):
        parse_connect_reply(head)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            407,
            Failure(
                Verdict.REJECTED,
                "proxy-407",
                "D; fix the proxy credentials (deepgram.proxy_credentials_file)",
                "proxy authentication failed (407)",
            ),
        ),
        (
            403,
            Failure(
                Verdict.REJECTED,
                "proxy-403",
                "D; the proxy refuses the tunnel: ask its administrator to allow CONNECT to "
                "this host and port, or set deepgram.proxy",
                "proxy refused (403)",
            ),
        ),
        (502, Failure(Verdict.TRANSIENT, "proxy-502", "D", "proxy error (502)")),
        (503, Failure(Verdict.TRANSIENT, "proxy-503", "D", "proxy error (503)")),
        (None, Failure(Verdict.TRANSIENT, "proxy", "D", "proxy unreachable")),
    ],
)
def test_proxy_failure(status: int | None, expected: Failure) -> None:
    assert proxy_failure(status, "D") == expected


UNTRUSTED = (
    "the server's certificate is not signed by a trusted CA: behind a TLS-inspecting proxy "
    "or for a self-hosted server, put its CA in deepgram.ca_file"
)


@pytest.mark.parametrize(
    ("code", "synced", "expected"),
    [
        (20, True, Failure(Verdict.REJECTED, "tls", f"D; {UNTRUSTED}", "TLS: certificate refused")),
        (18, None, Failure(Verdict.REJECTED, "tls", f"D; {UNTRUSTED}", "TLS: certificate refused")),
        (
            20,
            False,
            Failure(
                Verdict.REJECTED,
                "tls",
                f"D; the clock is not synchronised: {CLOCK_HINT}; {UNTRUSTED}",
                "TLS: certificate refused",
            ),
        ),
        (
            62,
            True,
            Failure(
                Verdict.REJECTED,
                "tls",
                "D; the certificate is for another host name: check deepgram.url",
                "TLS: certificate refused",
            ),
        ),
        (9, True, Failure(Verdict.CLOCK, "tls-clock", f"D; {CLOCK_HINT}", "TLS: check the clock")),
        (10, None, Failure(Verdict.CLOCK, "tls-clock", f"D; {CLOCK_HINT}", "TLS: check the clock")),
        (
            None,
            False,
            Failure(
                Verdict.REJECTED,
                "tls",
                "D; check deepgram.url (wss:// and the port of a TLS server)",
                "TLS handshake failed",
            ),
        ),
        (
            26,
            True,
            Failure(Verdict.REJECTED, "tls", "D; see docs/NETWORK.md", "TLS: certificate refused"),
        ),
    ],
)
def test_tls_failure(code: int | None, synced: bool | None, expected: Failure) -> None:
    assert tls_failure(code, "D", clock_synchronized=synced) == expected


def test_clock_verdict_waits_at_most_the_backoff_cap() -> None:
    policy = RetryPolicy(
        initial_s=1, max_s=30, rate_limited_s=20, rejected_s=300, rng=random.Random(1)
    )
    clock = tls_failure(10, "D", clock_synchronized=True)
    assert [policy.failed(clock, now=float(i)) for i in range(3)] == [30, 30, 30]
