"""Tests for dgd.core.connection: the listen URL, the auth header, handshake rejections and
close frames."""

from __future__ import annotations

import random

import pytest

from dgd.core.connection import (
    CloseInfo,
    HandshakeRejection,
    auth_headers,
    is_deepgram_host,
    listen_url,
    parse_close,
    parse_rejection,
    region_url,
)

# --- URL and headers ------------------------------------------------------------------------

BASE = "wss://api.deepgram.com/v1/listen"


@pytest.mark.parametrize(
    ("base_url", "query", "rate_hz", "channels", "expected"),
    [
        (BASE, [], 16000, 1, f"{BASE}?encoding=linear16&sample_rate=16000&channels=1"),
        (
            BASE,
            [
                ("model", "nova-3"),
                ("language", "en-US"),
                ("smart_format", "true"),
                ("interim_results", "false"),
            ],
            16000,
            1,
            f"{BASE}?model=nova-3&language=en-US&smart_format=true&interim_results=false"
            "&encoding=linear16&sample_rate=16000&channels=1",
        ),
        (
            BASE,
            [
                ("model", "nova-3"),
                ("keyterm", "hallway light"),
                ("keyterm", "Pi-hole"),
                ("keyterm", "dgd"),
            ],
            48000,
            2,
            f"{BASE}?model=nova-3&keyterm=hallway%20light&keyterm=Pi-hole&keyterm=dgd"
            "&encoding=linear16&sample_rate=48000&channels=2",
        ),
        (
            f"{BASE}?tag=kitchen",
            [("model", "nova-3")],
            16000,
            1,
            f"{BASE}?tag=kitchen&model=nova-3&encoding=linear16&sample_rate=16000&channels=1",
        ),
        (
            f"{BASE}?",
            [("extra", "room:kitchen"), ("replace", "a/b&c=d"), ("search", "caf\u00e9")],
            8000,
            1,
            f"{BASE}?extra=room%3Akitchen&replace=a%2Fb%26c%3Dd&search=caf%C3%A9"
            "&encoding=linear16&sample_rate=8000&channels=1",
        ),
        (
            "ws://127.0.0.1:8765/v1/listen",
            [("endpointing", "300"), ("utterance_end_ms", "1000")],
            16000,
            1,
            "ws://127.0.0.1:8765/v1/listen?endpointing=300&utterance_end_ms=1000"
            "&encoding=linear16&sample_rate=16000&channels=1",
        ),
    ],
)
def test_listen_url(
    base_url: str, query: list[tuple[str, str]], rate_hz: int, channels: int, expected: str
) -> None:
    assert listen_url(base_url, query, rate_hz, channels) == expected


@pytest.mark.parametrize("key", ["encoding", "sample_rate", "channels"])
def test_listen_url_refuses_audio_keys_from_query(key: str) -> None:
    with pytest.raises(ValueError, match=f"deepgram.query.{key}: remove it"):
        listen_url(BASE, [("model", "nova-3"), (key, "1")], 16000, 1)


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [
        ("0123abcd", [("Authorization", "Token 0123abcd")]),
        ("", [("Authorization", "Token ")]),
    ],
)
def test_auth_headers(api_key: str, expected: list[tuple[str, str]]) -> None:
    assert auth_headers(api_key) == expected


# --- handshake rejections -------------------------------------------------------------------

RID = "8f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b"
RID_HEADER = [(b"dg-request-id", RID.encode())]

REJECTIONS: list[tuple[int, list[tuple[bytes, bytes]], bytes | None, HandshakeRejection, str]] = [
    (
        401,
        [
            (b"content-type", b"application/json"),
            (b"dg-request-id", RID.encode()),
            (b"dg-error", b"Invalid credentials."),
        ],
        b'{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"'
        + RID.encode()
        + b'"}',
        HandshakeRejection(
            401, "INVALID_AUTH", "Invalid credentials.", RID, "Invalid credentials."
        ),
        f"HTTP 401 INVALID_AUTH: Invalid credentials. (request id {RID})",
    ),
    (
        400,
        [
            (b"DG-Request-ID", RID.encode()),
            (b"DG-Error", b"The keywords parameter is not supported for nova-3. Use keyterm."),
        ],
        b'{"err_code":"INVALID_QUERY_PARAMETER","err_msg":"Bad Request: keywords is not '
        b'supported with nova-3, use keyterm","request_id":"' + RID.encode() + b'"}',
        HandshakeRejection(
            400,
            "INVALID_QUERY_PARAMETER",
            "Bad Request: keywords is not supported with nova-3, use keyterm",
            RID,
            "The keywords parameter is not supported for nova-3. Use keyterm.",
        ),
        "HTTP 400 INVALID_QUERY_PARAMETER: Bad Request: keywords is not supported with nova-3, "
        "use keyterm (dg-error: The keywords parameter is not supported for nova-3. Use "
        f"keyterm., request id {RID})",
    ),
    (
        429,
        [],
        b'{"err_code":"TOO_MANY_REQUESTS","err_msg":"Too many requests. Please try again later",'
        b'"request_id":"body-id"}',
        HandshakeRejection(
            429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later", "body-id", ""
        ),
        "HTTP 429 TOO_MANY_REQUESTS: Too many requests. Please try again later "
        "(request id body-id)",
    ),
    (
        503,
        RID_HEADER,
        b'{"error_code":503,"error_message":"Service unavailable","request_id":"body-id"}',
        HandshakeRejection(503, "503", "Service unavailable", RID, ""),
        f"HTTP 503 503: Service unavailable (request id {RID})",
    ),
    (
        402,
        RID_HEADER,
        b'{"category":"ASR_PAYMENT_REQUIRED","message":"Project does not have enough credits",'
        b'"details":"","request_id":"' + RID.encode() + b'"}',
        HandshakeRejection(
            402, "ASR_PAYMENT_REQUIRED", "Project does not have enough credits", RID, ""
        ),
        f"HTTP 402 ASR_PAYMENT_REQUIRED: Project does not have enough credits (request id {RID})",
    ),
    (
        403,
        [(b"dg-error", b"Insufficient permissions.")],
        None,
        HandshakeRejection(403, "", "", "", "Insufficient permissions."),
        "HTTP 403 Forbidden (dg-error: Insufficient permissions.)",
    ),
    (503, [], None, HandshakeRejection(503, "", "", "", ""), "HTTP 503 Service Unavailable"),
    (503, [], b"", HandshakeRejection(503, "", "", "", ""), "HTTP 503 Service Unavailable"),
    (599, [], None, HandshakeRejection(599, "", "", "", ""), "HTTP 599"),
    (
        502,
        [(b"content-type", b"text/html")],
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        HandshakeRejection(
            502,
            "",
            "<html> <head><title>502 Bad Gateway</title></head> <body> "
            "<center><h1>502 Bad Gateway</h1></center> </body> </html>",
            "",
            "",
        ),
        "HTTP 502: <html> <head><title>502 Bad Gateway</title></head> <body> "
        "<center><h1>502 Bad Gateway</h1></center> </body> </html>",
    ),
    (
        405,
        [],
        b"Method Not Allowed",
        HandshakeRejection(405, "", "Method Not Allowed", "", ""),
        "HTTP 405: Method Not Allowed",
    ),
    (
        400,
        [],
        b"\xff\xfe\x00garbage\x07\x1b[31m",
        HandshakeRejection(400, "", "\ufffd\ufffd garbage [31m", "", ""),
        "HTTP 400: \ufffd\ufffd garbage [31m",
    ),
    (
        400,
        [],
        b"x" * 1000,
        HandshakeRejection(400, "", "x" * 200, "", ""),
        "HTTP 400: " + "x" * 200,
    ),
    (
        400,
        [],
        b'["INVALID_AUTH"]',
        HandshakeRejection(400, "", '["INVALID_AUTH"]', "", ""),
        'HTTP 400: ["INVALID_AUTH"]',
    ),
    (
        401,
        [],
        # Wrong types and bool codes are ignored; the body is then shown as text.
        b'{"err_code":true,"err_msg":{"a":1},"request_id":5}',
        HandshakeRejection(401, "", '{"err_code":true,"err_msg":{"a":1},"request_id":5}', "", ""),
        'HTTP 401: {"err_code":true,"err_msg":{"a":1},"request_id":5}',
    ),
    (
        401,
        [(b"dg-request-id", b"  id\r\nInjected: yes  ")],
        b'{"err_code":"INVALID_AUTH","err_msg":"line one\\nline two"}',
        HandshakeRejection(401, "INVALID_AUTH", "line one line two", "id Injected: yes", ""),
        "HTTP 401 INVALID_AUTH: line one line two (request id id Injected: yes)",
    ),
    (
        401,
        [],
        b'{"err_code":"INVALID_AUTH"}',
        HandshakeRejection(401, "INVALID_AUTH", "", "", ""),
        "HTTP 401 INVALID_AUTH",
    ),
]


@pytest.mark.parametrize(("status", "headers", "body", "expected", "line"), REJECTIONS)
def test_parse_rejection(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    expected: HandshakeRejection,
    line: str,
) -> None:
    rejection = parse_rejection(status, headers, body)
    assert rejection == expected
    assert rejection.describe() == line


def test_parse_rejection_oversized_json_body_is_excerpted_not_parsed() -> None:
    body = b'{"err_code":"INVALID_AUTH","err_msg":"' + b"y" * 100_000 + b'"}'
    rejection = parse_rejection(401, [], body)
    assert rejection == HandshakeRejection(
        401, "", ('{"err_code":"INVALID_AUTH","err_msg":"' + "y" * 200)[:200], "", ""
    )


def test_fuzz_parse_rejection_never_raises() -> None:
    rng = random.Random(99)
    bodies = [body for _, _, body, _, _ in REJECTIONS if body]
    for _ in range(2000):
        if rng.random() < 0.5:
            body: bytes | None = rng.randbytes(rng.randrange(80))
        else:
            base = bytearray(rng.choice(bodies))
            for _ in range(rng.randrange(1, 5)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            body = bytes(base)
        headers = [
            (rng.choice([b"dg-error", b"DG-REQUEST-ID", b"x"]), rng.randbytes(rng.randrange(20)))
            for _ in range(rng.randrange(3))
        ]
        rejection = parse_rejection(rng.randrange(100, 600), headers, body)
        line = rejection.describe()
        assert line.isprintable()
        assert "\n" not in line


# --- close frames ---------------------------------------------------------------------------

NET0001_REASON = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
NET0000_REASON = (
    "Deepgram did not provide a response message within the timeout window. "
    "See https://dpgr.am/net0000"
)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1011, NET0001_REASON, CloseInfo(1011, NET0001_REASON, "NET-0001")),
        (1011, NET0000_REASON, CloseInfo(1011, NET0000_REASON, "NET-0000")),
        (1011, "NET-0001: timeout", CloseInfo(1011, "NET-0001: timeout", "NET-0001")),
        (1011, "net-0000", CloseInfo(1011, "net-0000", "NET-0000")),
        (
            1008,
            "DATA-0000: The payload cannot be decoded as audio. It is either not audio data or "
            "is a codec unsupported by Deepgram.",
            CloseInfo(
                1008,
                "DATA-0000: The payload cannot be decoded as audio. It is either not audio data "
                "or is a codec unsupported by Deepgram.",
                "DATA-0000",
            ),
        ),
        (
            1008,
            "see https://dpgr.am/data0000",
            CloseInfo(1008, "see https://dpgr.am/data0000", "DATA-0000"),
        ),
        (1000, "", CloseInfo(1000, "", "")),
        (1000, None, CloseInfo(1000, "", "")),
        (1006, None, CloseInfo(1006, "", "")),
        (1011, "Internal error", CloseInfo(1011, "Internal error", "")),
        (1011, "NET-0002 is not a known tag", CloseInfo(1011, "NET-0002 is not a known tag", "")),
        (1011, "line\nbreak\x00 NET0001", CloseInfo(1011, "line break NET0001", "NET-0001")),
    ],
)
def test_parse_close(code: int, reason: str | None, expected: CloseInfo) -> None:
    assert parse_close(code, reason) == expected


def test_fuzz_parse_close_never_raises() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        reason = "".join(chr(rng.randrange(0x3000)) for _ in range(rng.randrange(140)))
        info = parse_close(rng.randrange(1000, 5000), reason)
        assert info.tag in {"", "NET-0001", "NET-0000", "DATA-0000"}
        assert info.reason.isprintable()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://api.deepgram.com/v1/listen", True),
        ("wss://api.eu.deepgram.com/v1/listen", True),
        ("wss://API.US.DEEPGRAM.COM./v1/listen", True),
        ("wss://deepgram.com/v1/listen", True),
        ("wss://deepgram.com.example/v1/listen", False),
        ("wss://notdeepgram.com/v1/listen", False),
        ("ws://127.0.0.1:8765/v1/listen", False),
        ("ws://[::1]:8765/v1/listen", False),
    ],
)
def test_is_deepgram_host(url: str, expected: bool) -> None:
    assert is_deepgram_host(url) is expected


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("global", "wss://api.deepgram.com/v1/listen"),
        ("eu", "wss://api.eu.deepgram.com/v1/listen"),
        ("us", "wss://api.us.deepgram.com/v1/listen"),
        ("in", "wss://api.in.deepgram.com/v1/listen"),
        ("au", "wss://api.au.deepgram.com/v1/listen"),
    ],
)
def test_region_url(region: str, expected: str) -> None:
    assert region_url(region) == expected
