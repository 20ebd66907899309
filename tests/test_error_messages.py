"""The ``Error`` message and the answers to ``Configure`` past the parser: the session hands
them on as they are, and ``classify_server_error`` (dgd.core.backoff) turns an Error, and the
close after it, into an exact Failure."""

from __future__ import annotations

import pytest

from dgd.core.backoff import Failure, Verdict, classify_server_error
from dgd.core.connection import CloseInfo
from dgd.core.messages import ConfigureFailure, ConfigureSuccess, ServerError
from dgd.core.session import LocalProtocolError, Session

CLOSE_1011 = CloseInfo(1011, "", "")
PREFIX = "Deepgram reported an error on the stream: "
QUERY_HINT = "check [deepgram.query] in /etc/dgd.toml, then `systemctl reload dgd`"


@pytest.mark.parametrize(
    ("code", "description", "close", "expected"),
    [
        pytest.param(
            "INTERNAL_SERVER_ERROR",
            "An internal server error occurred",
            CloseInfo(1011, "INTERNAL_SERVER_ERROR", ""),
            Failure(
                Verdict.TRANSIENT,
                "error-INTERNAL_SERVER_ERROR",
                f"{PREFIX}INTERNAL_SERVER_ERROR: An internal server error occurred, then closed "
                "the stream (close 1011 'INTERNAL_SERVER_ERROR')",
                "server error (INTERNAL_SERVER_ERROR)",
            ),
            id="server-side-transient",
        ),
        pytest.param(
            "NET-0001",
            "no audio",
            None,
            Failure(
                Verdict.TRANSIENT,
                "error-NET-0001",
                f"{PREFIX}NET-0001: no audio",
                "server error (NET-0001)",
            ),
            id="no-close",
        ),
        pytest.param(
            "DATA-0000",
            "",
            CLOSE_1011,
            Failure(
                Verdict.REJECTED,
                "error-DATA-0000",
                f"{PREFIX}DATA-0000, then closed the stream (close 1011); check [audio] "
                "rate/channels and that [deepgram.query] sets no encoding",
                "server error (DATA-0000)",
            ),
            id="audio-rejected",
        ),
        pytest.param(
            "INVALID_AUTH",
            "token expired",
            CLOSE_1011,
            Failure(
                Verdict.REJECTED,
                "error-INVALID_AUTH",
                f"{PREFIX}INVALID_AUTH: token expired, then closed the stream (close 1011); "
                "check the key (or token) and its role, then `systemctl reload dgd`",
                "server error (INVALID_AUTH)",
            ),
            id="auth-before-invalid",
        ),
        pytest.param(
            "INVALID_KEYTERMS",
            "",
            None,
            Failure(
                Verdict.REJECTED,
                "error-INVALID_KEYTERMS",
                f"{PREFIX}INVALID_KEYTERMS; {QUERY_HINT}",
                "server error (INVALID_KEYTERMS)",
            ),
            id="parameters-rejected",
        ),
        pytest.param(
            "TOO_MANY_REQUESTS",
            "",
            CLOSE_1011,
            Failure(
                Verdict.RATE_LIMITED,
                "error-TOO_MANY_REQUESTS",
                f"{PREFIX}TOO_MANY_REQUESTS, then closed the stream (close 1011)",
                "rate limited (TOO_MANY_REQUESTS)",
            ),
            id="rate-limited",
        ),
        pytest.param(
            "",
            "",
            CloseInfo(1006, "", ""),
            Failure(
                Verdict.TRANSIENT,
                "error",
                f"{PREFIX}no code or description, then closed the stream (close 1006)",
                "server error",
            ),
            id="nothing-said",
        ),
    ],
)
def test_classify_server_error(
    code: str, description: str, close: CloseInfo | None, expected: Failure
) -> None:
    assert classify_server_error(code, description, close) == expected


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        ('{"type":"Error","code":"X","description":"d"}', ServerError("X", "d", "")),
        ('{"type":"ConfigureSuccess","keyterms":["a"]}', ConfigureSuccess("", ("a",))),
        ('{"type":"ConfigureFailure","code":"C"}', ConfigureFailure("", "C", "")),
    ],
)
def test_the_session_hands_them_on(payload: str, event: object) -> None:
    session = Session(keepalive_interval_s=4.0, now=0.0)
    assert session.receive(payload) == [event]
    assert session.statistics().unrecognized == 0


def test_configure_counts_as_traffic_and_needs_an_open_stream() -> None:
    session = Session(keepalive_interval_s=4.0, now=0.0)
    text = '{"type":"Configure","keyterms":[]}'
    assert session.configure(text, 3.0) == text
    assert session.keepalive_due_at() == 7.0
    session.close_stream(5.0)
    with pytest.raises(LocalProtocolError, match="cannot send Configure: the stream is closing"):
        session.configure(text, 6.0)
