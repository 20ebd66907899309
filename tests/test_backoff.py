"""Failure classification and retry delays (dgd.core.backoff).

Delays are exact: ``random.Random.uniform(a, b)`` is ``a + (b - a) * random()``, so replaying
the same seed gives the ``random()`` draws and the expected delay for each ceiling.
"""

from __future__ import annotations

import random

import pytest

from dgd.core.backoff import (
    RATE_LIMITED_MAX_S,
    STABLE_CONNECTION_S,
    DeviceRetry,
    Failure,
    RetryPolicy,
    Verdict,
    classify_close,
    classify_rejection,
    network_failure,
    timeout_failure,
)
from dgd.core.connection import CloseInfo, HandshakeRejection, parse_close

SEED = 20261123

RELOAD = "`systemctl reload dgd`"


def rejection(
    status: int, code: str = "", msg: str = "", request_id: str = ""
) -> HandshakeRejection:
    return HandshakeRejection(status, code, msg, request_id, "")


# --- classify_rejection ------------------------------------------------------------------

REJECTION_CASES = [
    pytest.param(
        rejection(400, "Bad Request", "unknown model nova-9", "r-400"),
        Failure(
            Verdict.REJECTED,
            "http-400",
            "Deepgram refused the query parameters: check [deepgram.query] in /etc/dgd.toml, "
            f"then {RELOAD} (HTTP 400 Bad Request: unknown model nova-9 (request id r-400))",
            "request rejected (400)",
        ),
        id="400",
    ),
    pytest.param(
        rejection(401, "INVALID_AUTH", "Invalid credentials.", "r-401"),
        Failure(
            Verdict.REJECTED,
            "http-401",
            "the API key was rejected: put a valid key in the key file (/etc/dgd/api-key) and "
            "run `systemctl restart dgd` (or `reload` when the key comes from "
            "deepgram.api_key_file) (HTTP 401 INVALID_AUTH: Invalid credentials. "
            "(request id r-401))",
            "auth rejected (401)",
        ),
        id="401",
    ),
    pytest.param(
        rejection(402, "ASR_PAYMENT_REQUIRED", "Project does not have enough credits."),
        Failure(
            Verdict.REJECTED,
            "http-402",
            f"the Deepgram project has no credit left: add credit, then {RELOAD} "
            "(HTTP 402 ASR_PAYMENT_REQUIRED: Project does not have enough credits.)",
            "request rejected (402)",
        ),
        id="402",
    ),
    pytest.param(
        rejection(403, "INSUFFICIENT_PERMISSIONS"),
        Failure(
            Verdict.REJECTED,
            "http-403",
            "the key lacks permission for this model or feature: check [deepgram.query] and "
            f"the key's role, then {RELOAD} (HTTP 403 INSUFFICIENT_PERMISSIONS)",
            "auth rejected (403)",
        ),
        id="403",
    ),
    pytest.param(
        rejection(404),
        Failure(
            Verdict.REJECTED,
            "http-404",
            "no Deepgram listen endpoint at this address: check deepgram.url (HTTP 404 Not Found)",
            "request rejected (404)",
        ),
        id="404",
    ),
    pytest.param(
        rejection(405),
        Failure(
            Verdict.REJECTED,
            "http-405",
            "no Deepgram listen endpoint at this address: check deepgram.url "
            "(HTTP 405 Method Not Allowed)",
            "request rejected (405)",
        ),
        id="405",
    ),
    pytest.param(
        rejection(418),
        Failure(
            Verdict.REJECTED,
            "http-418",
            "the request was refused; check deepgram.url and the key (HTTP 418 I'm a Teapot)",
            "request rejected (418)",
        ),
        id="418-other-4xx",
    ),
    pytest.param(
        rejection(429, "TOO_MANY_REQUESTS", "Too many requests."),
        Failure(
            Verdict.RATE_LIMITED,
            "http-429",
            "Deepgram refused the stream: too many concurrent streams "
            "(HTTP 429 TOO_MANY_REQUESTS: Too many requests.)",
            "rate limited (429)",
        ),
        id="429",
    ),
    pytest.param(
        rejection(408),
        Failure(
            Verdict.TRANSIENT,
            "http-408",
            "Deepgram is unavailable (HTTP 408 Request Timeout)",
            "server error (408)",
        ),
        id="408-is-transient",
    ),
    pytest.param(
        rejection(500),
        Failure(
            Verdict.TRANSIENT,
            "http-500",
            "Deepgram is unavailable (HTTP 500 Internal Server Error)",
            "server error (500)",
        ),
        id="500",
    ),
    pytest.param(
        rejection(503, msg="upstream connect error", request_id="r-503"),
        Failure(
            Verdict.TRANSIENT,
            "http-503",
            "Deepgram is unavailable (HTTP 503: upstream connect error (request id r-503))",
            "server error (503)",
        ),
        id="503",
    ),
    pytest.param(
        rejection(302),
        Failure(
            Verdict.TRANSIENT,
            "http-302",
            "Deepgram is unavailable (HTTP 302 Found)",
            "server error (302)",
        ),
        id="302-redirect",
    ),
]


@pytest.mark.parametrize(("rejected", "expected"), REJECTION_CASES)
def test_classify_rejection(rejected: HandshakeRejection, expected: Failure) -> None:
    assert classify_rejection(rejected) == expected


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, "check [deepgram.query]"),
        (401, "put a valid key in the key file"),
        (402, "add credit"),
        (403, "the key's role"),
        (404, "check deepgram.url"),
    ],
)
def test_rejection_summary_tells_the_operator_what_to_do(status: int, hint: str) -> None:
    assert hint in classify_rejection(rejection(status)).summary


# --- classify_close ----------------------------------------------------------------------

NET0001_REASON = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)

CLOSE_CASES = [
    pytest.param(
        parse_close(1011, NET0001_REASON),
        Failure(
            Verdict.TRANSIENT,
            "closed-1011",
            "Deepgram closed the stream: it received no audio or message in time "
            f"(close 1011 NET-0001 {NET0001_REASON!r})",
            "closed (1011 NET-0001)",
        ),
        id="1011-NET-0001",
    ),
    pytest.param(
        parse_close(1011, "NET-0000: internal server error"),
        Failure(
            Verdict.TRANSIENT,
            "closed-1011",
            "the stream was closed (close 1011 NET-0000 'NET-0000: internal server error')",
            "closed (1011 NET-0000)",
        ),
        id="1011-NET-0000",
    ),
    pytest.param(
        parse_close(1008, "DATA-0000: The payload cannot be decoded as audio."),
        Failure(
            Verdict.REJECTED,
            "closed-1008",
            "Deepgram could not decode the audio (close 1008 DATA-0000 "
            "'DATA-0000: The payload cannot be decoded as audio.'); check [audio] "
            "rate/channels and that [deepgram.query] sets no encoding",
            "audio rejected (1008 DATA-0000)",
        ),
        id="1008-DATA-0000",
    ),
    pytest.param(
        CloseInfo(1008, "", ""),
        Failure(
            Verdict.REJECTED,
            "closed-1008",
            "Deepgram could not decode the audio (close 1008); check [audio] rate/channels and "
            "that [deepgram.query] sets no encoding",
            "audio rejected (1008)",
        ),
        id="1008-bare",
    ),
    pytest.param(
        CloseInfo(1011, "bad data https://dpgr.am/data0000", "DATA-0000"),
        Failure(
            Verdict.REJECTED,
            "closed-1011",
            "Deepgram could not decode the audio (close 1011 DATA-0000 "
            "'bad data https://dpgr.am/data0000'); check [audio] rate/channels and that "
            "[deepgram.query] sets no encoding",
            "audio rejected (1011 DATA-0000)",
        ),
        id="DATA-0000-on-another-code",
    ),
    pytest.param(
        parse_close(1006, None),
        Failure(
            Verdict.TRANSIENT,
            "closed-1006",
            "the stream was closed (close 1006)",
            "closed (1006)",
        ),
        id="1006-abnormal",
    ),
    pytest.param(
        parse_close(1012, "service restart"),
        Failure(
            Verdict.TRANSIENT,
            "closed-1012",
            "the stream was closed (close 1012 'service restart')",
            "closed (1012)",
        ),
        id="1012-restart",
    ),
    pytest.param(
        parse_close(1000, ""),
        Failure(
            Verdict.TRANSIENT,
            "closed-1000",
            "the stream was closed (close 1000)",
            "closed (1000)",
        ),
        id="1000-normal",
    ),
]


@pytest.mark.parametrize(("close", "expected"), CLOSE_CASES)
def test_classify_close(close: CloseInfo, expected: Failure) -> None:
    assert classify_close(close) == expected


def test_network_and_timeout_failures() -> None:
    assert network_failure("Connection refused") == Failure(
        Verdict.TRANSIENT, "network", "network error: Connection refused", "network error"
    )
    assert timeout_failure("no pong within 10 s") == Failure(
        Verdict.TRANSIENT, "timeout", "timed out: no pong within 10 s", "server not answering"
    )


# --- RetryPolicy -------------------------------------------------------------------------

TRANSIENT = network_failure("reset")
RATE_LIMITED = classify_rejection(rejection(429))
REJECTED = classify_rejection(rejection(401))


def policy(seed: int = SEED) -> RetryPolicy:
    return RetryPolicy(
        initial_s=1.0, max_s=30.0, rate_limited_s=10.0, rejected_s=300.0, rng=random.Random(seed)
    )


def draws(n: int, seed: int = SEED) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def test_constants() -> None:
    assert STABLE_CONNECTION_S == 60.0
    assert RATE_LIMITED_MAX_S == 600.0


def test_transient_delays_grow_exponentially_up_to_the_cap() -> None:
    retry = policy()
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    delays = [retry.failed(TRANSIENT, now=float(i)) for i in range(len(ceilings))]
    assert delays == [c * r for c, r in zip(ceilings, draws(len(ceilings)), strict=True)]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert retry.attempt == len(ceilings)


def test_transient_delays_replay_exactly_with_the_same_seed() -> None:
    first = [policy(7).failed(TRANSIENT, 0.0) for _ in range(3)]
    again = [policy(7).failed(TRANSIENT, 0.0) for _ in range(3)]
    assert first == again
    other = policy(8).failed(TRANSIENT, 0.0)
    assert other != first[0]


def test_many_failures_stay_at_the_cap_without_overflow() -> None:
    retry = policy()
    for i in range(200):
        delay = retry.failed(TRANSIENT, float(i))
    r = draws(200)[-1]
    assert delay == 30.0 * r
    assert retry.attempt == 200


@pytest.mark.parametrize(
    ("up_for_s", "ceiling"),
    [
        (STABLE_CONNECTION_S, 1.0),  # stable: start over
        (3600.0, 1.0),
        (STABLE_CONNECTION_S - 0.5, 8.0),  # not stable: the backoff continues
        (0.0, 8.0),
    ],
)
def test_reset_after_a_stable_connection(up_for_s: float, ceiling: float) -> None:
    retry = policy()
    for i in range(3):  # ceilings 1, 2, 4
        retry.failed(TRANSIENT, float(i))
    retry.connected(100.0)
    delay = retry.failed(TRANSIENT, 100.0 + up_for_s)
    assert delay == ceiling * draws(4)[3]


def test_connected_is_forgotten_after_a_failure() -> None:
    retry = policy()
    retry.connected(0.0)
    retry.failed(TRANSIENT, 10.0)  # attempt 0 -> 1
    # No new connection: a later failure is not "after a stable connection".
    delay = retry.failed(TRANSIENT, 1000.0)
    assert delay == 2.0 * draws(2)[1]


def test_rejected_waits_rejected_s_within_ten_percent() -> None:
    retry = policy()
    delays = [retry.failed(REJECTED, float(i)) for i in range(5)]
    assert delays == [300.0 * (0.9 + 0.2 * r) for r in draws(5)]
    assert all(270.0 <= d <= 330.0 for d in delays)


def test_rate_limited_doubles_up_to_its_cap() -> None:
    retry = policy()
    ceilings = [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]
    delays = [retry.failed(RATE_LIMITED, float(i)) for i in range(len(ceilings))]
    assert delays == [
        c / 2 + (c - c / 2) * r for c, r in zip(ceilings, draws(len(ceilings)), strict=True)
    ]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_only_429s_in_a_row_double_the_429_delay() -> None:
    """The attempt count is shared, but a 429 after other failures starts its own streak:
    a 429 after 503s waits rate_limited_s, not rate_limited_s * 2**attempt (the soak found a
    429 after 25 failures waiting 388 s, which filled the replay buffer)."""
    retry = policy()
    r = draws(5)
    assert retry.failed(TRANSIENT, 0.0) == 1.0 * r[0]
    assert retry.failed(REJECTED, 1.0) == 300.0 * (0.9 + 0.2 * r[1])
    assert retry.failed(RATE_LIMITED, 2.0) == 5.0 + 5.0 * r[2]  # first 429: ceiling 10
    assert retry.failed(RATE_LIMITED, 3.0) == 10.0 + 10.0 * r[3]  # second in a row: 20
    assert retry.attempt == 4
    retry.connected(4.0)  # a connection ends the streak (but was not stable)
    assert retry.failed(RATE_LIMITED, 5.0) == 5.0 + 5.0 * r[4]


def test_reset_starts_over() -> None:
    retry = policy()
    for i in range(5):
        retry.failed(TRANSIENT, float(i))
    retry.connected(10.0)
    retry.reset()
    assert retry.attempt == 0
    r = draws(7)
    assert retry.failed(TRANSIENT, 10.0) == 1.0 * r[5]
    assert retry.failed(TRANSIENT, 11.0) == 2.0 * r[6]


def test_policy_settings_are_public_for_reload() -> None:
    retry = policy()
    retry.max_s = 2.0
    r = draws(3)
    assert [retry.failed(TRANSIENT, 0.0) for _ in range(3)] == [1.0 * r[0], 2.0 * r[1], 2.0 * r[2]]


def test_device_retry_doubles_to_the_cap_and_starts_over_when_opened() -> None:
    retry = DeviceRetry()
    assert [retry.failed() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    retry.opened()
    assert retry.failed() == 0.5
