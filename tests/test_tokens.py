"""Temporary tokens, pure (dgd.core.tokens), and what a refused handshake says for each kind
of credential (dgd.core.backoff.classify_rejection with a ``Credential``).

Every case is a table row with the exact expected value; no message may contain the token.
"""

from __future__ import annotations

import pytest

from dgd.core.backoff import Failure, Verdict, classify_rejection
from dgd.core.connection import Credential, HandshakeRejection, bearer_headers
from dgd.core.tokens import (
    GRANT_ROLE_HINT,
    MAX_GRANT_RESPONSE_BYTES,
    MAX_TOKEN_CHARS,
    GrantedToken,
    GrantTarget,
    TokenError,
    check_token,
    command_failure,
    command_token,
    grant_rejected_failure,
    grant_request_body,
    grant_request_headers,
    grant_target,
    grant_unavailable_failure,
    parse_grant_response,
    stderr_excerpt,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZ2QifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
HOSTED = GrantTarget("api.deepgram.com", 443, True, "api.deepgram.com", "/v1/auth/grant")
LOCAL = GrantTarget("127.0.0.1", 8080, False, "127.0.0.1:8080", "/v1/auth/grant")


# --- where the grant goes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen_url", "expected", "url"),
    [
        pytest.param(
            "wss://api.deepgram.com/v1/listen",
            HOSTED,
            "https://api.deepgram.com/v1/auth/grant",
            id="hosted",
        ),
        pytest.param(
            "wss://api.eu.deepgram.com/v1/listen",
            GrantTarget("api.eu.deepgram.com", 443, True, "api.eu.deepgram.com", "/v1/auth/grant"),
            "https://api.eu.deepgram.com/v1/auth/grant",
            id="region",
        ),
        pytest.param(
            "ws://127.0.0.1:8080/v1/listen",
            LOCAL,
            "http://127.0.0.1:8080/v1/auth/grant",
            id="self-hosted-ws",
        ),
        pytest.param(
            "ws://asr.lan/v1/listen",
            GrantTarget("asr.lan", 80, False, "asr.lan", "/v1/auth/grant"),
            "http://asr.lan/v1/auth/grant",
            id="ws-default-port",
        ),
        pytest.param(
            "wss://[::1]:8443/deepgram/v1/listen/",
            GrantTarget("::1", 8443, True, "[::1]:8443", "/deepgram/v1/auth/grant"),
            "https://[::1]:8443/deepgram/v1/auth/grant",
            id="ipv6-and-path-prefix",
        ),
        pytest.param(
            "wss://asr.example/custom",
            GrantTarget("asr.example", 443, True, "asr.example", "/v1/auth/grant"),
            "https://asr.example/v1/auth/grant",
            id="other-path",
        ),
    ],
)
def test_grant_target(listen_url: str, expected: GrantTarget, url: str) -> None:
    target = grant_target(listen_url)
    assert target == expected
    assert target.url == url


@pytest.mark.parametrize(
    "listen_url", ["https://api.deepgram.com/v1/listen", "wss:///v1/listen", "ws://h:99999/"]
)
def test_grant_target_refuses_what_is_not_a_websocket_url(listen_url: str) -> None:
    with pytest.raises(ValueError):
        grant_target(listen_url)


# --- the request -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl_s", "expected"),
    [(1, b'{"ttl_seconds":1}'), (30, b'{"ttl_seconds":30}'), (3600, b'{"ttl_seconds":3600}')],
)
def test_grant_request_body(ttl_s: int, expected: bytes) -> None:
    assert grant_request_body(ttl_s) == expected


@pytest.mark.parametrize("ttl_s", [0, -1, 3601])
def test_grant_request_body_refuses_ttl_outside_deepgrams_bounds(ttl_s: int) -> None:
    with pytest.raises(ValueError, match=f"ttl_seconds must be 1..3600, not {ttl_s}"):
        grant_request_body(ttl_s)


def test_grant_request_headers() -> None:
    assert grant_request_headers(LOCAL, "k3y", 18) == [
        ("Host", "127.0.0.1:8080"),
        ("Authorization", "Token k3y"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("Content-Length", "18"),
        ("Connection", "close"),
        ("User-Agent", "dgd"),
    ]


def test_bearer_headers() -> None:
    assert bearer_headers(JWT) == [("Authorization", "Bearer " + JWT)]


# --- the answer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"access_token":"' + JWT.encode() + b'","expires_in":30}',
            GrantedToken(JWT, 30.0),
            id="deepgram",
        ),
        pytest.param(
            b'{"access_token":"abc","expires_in":2.5,"extra":[1]}',
            GrantedToken("abc", 2.5),
            id="float-and-extra-fields",
        ),
    ],
)
def test_parse_grant_response(body: bytes, expected: GrantedToken) -> None:
    assert parse_grant_response(body) == expected


def test_parse_grant_response_without_expires_in() -> None:
    granted = parse_grant_response(b'{"access_token":"abc"}')
    assert granted.access_token == "abc"
    assert granted.expires_in_s != granted.expires_in_s  # NaN: the server did not say


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>proxy error</html>", "the answer is not JSON"),
        (b"\xff\xfe", "the answer is not JSON"),
        (b"[1, 2]", "the answer is not a JSON object"),
        (b'{"expires_in":30}', "the answer has no access_token string"),
        (b'{"access_token":42}', "the answer has no access_token string"),
        (b'{"access_token":""}', "access_token: the token is empty"),
        (
            b'{"access_token":"ab cd"}',
            "access_token: character 3 of the token is U+0020, which a Bearer token cannot"
            " contain (visible ASCII only)",
        ),
        (
            b'{"access_token":"abc","expires_in":0}',
            "expires_in must be a positive number of seconds, not 0",
        ),
        (
            b'{"access_token":"abc","expires_in":true}',
            "expires_in must be a positive number of seconds, not True",
        ),
        (
            b'{"access_token":"abc","expires_in":"30"}',
            "expires_in must be a positive number of seconds, not '30'",
        ),
        (
            b'{"access_token":"abc","expires_in":1e999}',
            "expires_in must be a positive number of seconds, not inf",
        ),
        (
            b" " * (MAX_GRANT_RESPONSE_BYTES + 1),
            f"the answer is larger than {MAX_GRANT_RESPONSE_BYTES} bytes",
        ),
    ],
)
def test_parse_grant_response_refuses(body: bytes, message: str) -> None:
    with pytest.raises(TokenError) as caught:
        parse_grant_response(body)
    assert str(caught.value) == message


def test_granted_token_repr_hides_the_token() -> None:
    assert repr(GrantedToken(JWT, 30.0)) == "GrantedToken(<redacted>, expires_in_s=30)"


# --- a token's characters ----------------------------------------------------------------


@pytest.mark.parametrize("token", [JWT, "a", "x" * MAX_TOKEN_CHARS, "!~+/=-._"])
def test_check_token_accepts(token: str) -> None:
    check_token(token, "where")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "where: the token is empty"),
        (
            "x" * (MAX_TOKEN_CHARS + 1),
            f"where: the token is {MAX_TOKEN_CHARS + 1} characters long; at most"
            f" {MAX_TOKEN_CHARS} fit in a header",
        ),
        (
            "abc\tdef",
            "where: character 4 of the token is U+0009, which a Bearer token cannot contain"
            " (visible ASCII only)",
        ),
        (
            "tok\u00e9n",
            'where: character 4 of the token is "\u00e9" (U+00E9), which a Bearer token cannot'
            " contain (visible ASCII only)",
        ),
        (
            "a\x7f",
            "where: character 2 of the token is U+007F, which a Bearer token cannot contain"
            " (visible ASCII only)",
        ),
    ],
)
def test_check_token_refuses(token: str, message: str) -> None:
    with pytest.raises(TokenError) as caught:
        check_token(token, "where")
    assert str(caught.value) == message


# --- a program's output ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        (JWT.encode() + b"\n", JWT),
        (b"  tok\r\n", "tok"),
        (b"tok", "tok"),
        (b"first\nsecond\n", "first"),
    ],
)
def test_command_token(stdout: bytes, expected: str) -> None:
    assert command_token(stdout) == expected


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"", "it printed nothing"),
        (b"\n \n", "it printed nothing"),
        (b"\ntok\n", "its first line is blank"),
        (b"\xfftok", "its output is not UTF-8 text"),
        (
            b"Bearer tok\n",
            "its first line: character 7 of the token is U+0020, which a Bearer token cannot"
            " contain (visible ASCII only)",
        ),
    ],
)
def test_command_token_refuses(stdout: bytes, message: str) -> None:
    with pytest.raises(TokenError) as caught:
        command_token(stdout)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (b"", ""),
        (b"curl: (7) Failed to connect\n  to vault\n", "curl: (7) Failed to connect to vault"),
        (b"x" * 500, "x" * 200),
        (b"bad \xff byte", "bad \ufffd byte"),
    ],
)
def test_stderr_excerpt(stderr: bytes, expected: str) -> None:
    assert stderr_excerpt(stderr) == expected


# --- failures ----------------------------------------------------------------------------


def rejection(status: int, code: str = "", msg: str = "") -> HandshakeRejection:
    return HandshakeRejection(status, code, msg, "", "")


ROLE = f"{GRANT_ROLE_HINT}; check the key in /etc/dgd/api-key (or deepgram.api_key_file)"
WHERE = "POST http://127.0.0.1:8080/v1/auth/grant"


@pytest.mark.parametrize(
    ("rejected", "expected"),
    [
        pytest.param(
            rejection(401, "INVALID_AUTH", "Invalid credentials."),
            Failure(
                Verdict.REJECTED,
                "grant-401",
                f"{ROLE} ({WHERE}: HTTP 401 INVALID_AUTH: Invalid credentials.)",
                "token grant refused (401)",
            ),
            id="401",
        ),
        pytest.param(
            rejection(403, "FORBIDDEN", "Insufficient permissions."),
            Failure(
                Verdict.REJECTED,
                "grant-403",
                f"{ROLE} ({WHERE}: HTTP 403 FORBIDDEN: Insufficient permissions.)",
                "token grant refused (403)",
            ),
            id="403",
        ),
        pytest.param(
            rejection(429),
            Failure(
                Verdict.RATE_LIMITED,
                "grant-429",
                f"Deepgram refused a temporary token: too many requests ({WHERE}: HTTP 429 Too"
                " Many Requests)",
                "token grant rate limited (429)",
            ),
            id="429",
        ),
        pytest.param(
            rejection(404),
            Failure(
                Verdict.REJECTED,
                "grant-404",
                "the server refused the token request: check deepgram.url (a self-hosted server"
                ' may have no /v1/auth/grant: use deepgram.auth = "key" or "none")'
                f" ({WHERE}: HTTP 404 Not Found)",
                "token grant refused (404)",
            ),
            id="404-no-grant-endpoint",
        ),
        pytest.param(
            rejection(503),
            Failure(
                Verdict.TRANSIENT,
                "grant-503",
                f"the token endpoint is unavailable ({WHERE}: HTTP 503 Service Unavailable)",
                "token grant failed (503)",
            ),
            id="503",
        ),
        pytest.param(
            rejection(408),
            Failure(
                Verdict.TRANSIENT,
                "grant-408",
                f"the token endpoint is unavailable ({WHERE}: HTTP 408 Request Timeout)",
                "token grant failed (408)",
            ),
            id="408",
        ),
    ],
)
def test_grant_rejected_failure(rejected: HandshakeRejection, expected: Failure) -> None:
    assert grant_rejected_failure(LOCAL, rejected) == expected


def test_grant_unavailable_failure() -> None:
    assert grant_unavailable_failure(HOSTED, "no answer within 10 s") == Failure(
        Verdict.TRANSIENT,
        "grant",
        "could not get a temporary token from POST https://api.deepgram.com/v1/auth/grant:"
        " no answer within 10 s",
        "token grant failed",
    )


def test_command_failure() -> None:
    assert command_failure("/usr/local/bin/get-token", "it exited with status 3") == Failure(
        Verdict.TRANSIENT,
        "token-command",
        "deepgram.token_command /usr/local/bin/get-token gave no token: it exited with status 3",
        "token command failed",
    )


# --- a refused handshake, by what it carried ---------------------------------------------

INVALID = rejection(401, "INVALID_AUTH", "Invalid credentials.")
DETAIL = "(HTTP 401 INVALID_AUTH: Invalid credentials.)"


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        pytest.param(
            Credential.API_KEY,
            Failure(
                Verdict.REJECTED,
                "http-401",
                "the API key was rejected: put a valid key in the key file (/etc/dgd/api-key) and"
                " run `systemctl restart dgd` (or `reload` when the key comes from"
                f" deepgram.api_key_file) {DETAIL}",
                "auth rejected (401)",
            ),
            id="key",
        ),
        pytest.param(
            Credential.NOTHING,
            Failure(
                Verdict.REJECTED,
                "http-401",
                "the server asks for an API key: put one in /etc/dgd/api-key (or set"
                ' deepgram.api_key_file), keep deepgram.auth = "key", then `systemctl restart'
                f" dgd` {DETAIL}",
                "API key needed (401)",
            ),
            id="nothing-sent",
        ),
        pytest.param(
            Credential.GRANTED_TOKEN,
            Failure(
                Verdict.REJECTED,
                "http-401",
                "the server refused the temporary token from /v1/auth/grant (expired, or issued"
                " by another server): check deepgram.url; when connecting takes long, raise"
                f" deepgram.grant_ttl_s {DETAIL}",
                "temporary token rejected (401)",
            ),
            id="granted-token",
        ),
        pytest.param(
            Credential.COMMAND_TOKEN,
            Failure(
                Verdict.REJECTED,
                "http-401",
                "the server refused the temporary token printed by deepgram.token_command"
                " (expired, or not a token for this server): check what the program prints"
                f" {DETAIL}",
                "temporary token rejected (401)",
            ),
            id="command-token",
        ),
    ],
)
def test_classify_unauthorized_by_credential(credential: Credential, expected: Failure) -> None:
    assert classify_rejection(INVALID, credential) == expected


@pytest.mark.parametrize("credential", list(Credential))
def test_classify_rejection_other_statuses_ignore_the_credential(credential: Credential) -> None:
    for status in (400, 402, 403, 404, 429, 503):
        assert classify_rejection(rejection(status), credential) == classify_rejection(
            rejection(status)
        )
