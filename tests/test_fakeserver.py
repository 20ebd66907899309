"""Tests for dgd.testing.fakeserver: a real trio-websocket client against the real server
on 127.0.0.1.

Network tests run under trio's autojump clock: idle timeouts, stalls and timed faults take
virtual seconds, while loopback I/O stays real.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import socket
import struct
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import pytest
import trio
import trio.testing
import trio_websocket

from dgd.core.events import AudioFrame, TimedWord, Transcript
from dgd.core.messages import Unrecognized
from dgd.core.session import Confirmed, Session
from dgd.testing.fakeserver import (
    DEFAULT_CLOSE_FAULT_REASON,
    HOSTILE_KINDS,
    IDLE_CLOSE_REASON,
    MALFORMED_KINDS,
    MODEL_UUID,
    Attempts,
    CloseAfterFault,
    DropAfterBytesFault,
    DropAfterFault,
    FaultPlan,
    FaultPlanError,
    FaultRule,
    MalformedFault,
    RejectFault,
    SpeechTracker,
    StallFault,
    StreamOptions,
    auth_ok,
    main,
    parse_options,
    serve,
)
from dgd.testing.fakeserver.faults import (
    DEFAULT_ERROR_CODE,
    DEFAULT_ERROR_DESCRIPTION,
    ConfigureFault,
    ErrorAfterFault,
)
from dgd.testing.fakeserver.malformed import malformed_messages

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

RATE = 16000
BYTES_PER_S = 2 * RATE
AUTH = [(b"Authorization", b"Token test-key")]
QUERY = "encoding=linear16&sample_rate=16000&channels=1"
MODEL_INFO = {"name": "fake", "version": "0", "arch": "fake"}


# ----------------------------------------------------------------------------- helpers


def tone(ms: int, *, amplitude: int = 8000, channels: int = 1) -> bytes:
    """A 440 Hz sine, far above -50 dBFS (8000/32768 is about -15 dBFS RMS)."""
    frames = RATE * ms // 1000
    values = [int(amplitude * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(frames)]
    return struct.pack(f"<{frames * channels}h", *[v for v in values for _ in range(channels)])


def silence(ms: int, *, channels: int = 1) -> bytes:
    return bytes(2 * channels * RATE * ms // 1000)


def frames_of(audio: bytes, frame_bytes: int = 3200) -> list[bytes]:
    return [audio[i : i + frame_bytes] for i in range(0, len(audio), frame_bytes)]


def results(
    start_b: int,
    end_b: int,
    voiced: tuple[int, int] | None,
    request_id: str,
    *,
    is_final: bool = True,
    speech_final: bool = False,
    from_finalize: bool = False,
    channels: int = 1,
) -> dict[str, Any]:
    """The Results the server must send, computed independently from byte offsets."""
    bps = 2 * RATE * channels
    if voiced is None:
        alternative: dict[str, Any] = {"transcript": "", "confidence": 0.99, "words": []}
    else:
        start_s, end_s = voiced[0] / bps, voiced[1] / bps
        alternative = {
            "transcript": f"[speech {end_s - start_s:.2f} s]",
            "confidence": 0.99,
            "words": [
                {
                    "word": "[speech]",
                    "punctuated_word": "[speech]",
                    "start": start_s,
                    "end": end_s,
                    "confidence": 0.99,
                }
            ],
        }
    return {
        "type": "Results",
        "channel_index": [0, channels],
        "duration": (end_b - start_b) / bps,
        "start": start_b / bps,
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {"alternatives": [alternative]},
        "metadata": {"request_id": request_id, "model_info": MODEL_INFO, "model_uuid": MODEL_UUID},
    }


@asynccontextmanager
async def running_server(
    *,
    faults: FaultPlan | None = None,
    record_dir: Path | None = None,
    api_key: str | None = None,
    idle_timeout_s: float = 10.0,
) -> AsyncIterator[str]:
    """Yield ``ws://127.0.0.1:PORT`` of a server that stops when the block ends."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve(
                "127.0.0.1",
                0,
                faults=faults or FaultPlan.none(),
                record_dir=record_dir,
                api_key=api_key,
                idle_timeout_s=idle_timeout_s,
                task_status=task_status,
            )
        )
        yield f"ws://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def connect(
    base: str,
    *,
    path: str = "/v1/listen",
    query: str = QUERY,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Any:
    return trio_websocket.open_websocket_url(
        f"{base}{path}?{query}", extra_headers=AUTH if headers is None else headers
    )


async def next_json(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    parsed = json.loads(message)
    assert isinstance(parsed, dict)
    return parsed


def request_id_of(ws: trio_websocket.WebSocketConnection) -> str:
    headers = dict(ws.handshake_headers)
    return headers[b"dg-request-id"].decode()


async def expect_closed(ws: trio_websocket.WebSocketConnection) -> trio_websocket.CloseReason:
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    reason = info.value.reason
    assert reason is not None
    return reason


def body_of(error: trio_websocket.ConnectionRejected) -> dict[str, Any]:
    assert error.body is not None
    body = json.loads(error.body)
    assert isinstance(body, dict)
    return body


async def rejection(base: str, **kwargs: Any) -> trio_websocket.ConnectionRejected:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with connect(base, **kwargs):
            pass
    return info.value


# ----------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    ("headers", "api_key", "accepted"),
    [
        ([], None, False),
        ([(b"Authorization", b"Token ")], None, False),
        ([(b"Authorization", b"Bearer abc")], None, False),
        ([(b"Authorization", b"abc")], None, False),
        ([(b"Authorization", b"Token abc")], None, True),
        ([(b"authorization", b"token abc")], None, True),
        ([(b"Authorization", b"TOKEN abc")], "abc", True),
        ([(b"Authorization", b"Token abd")], "abc", False),
    ],
)
def test_auth_ok(headers: list[tuple[bytes, bytes]], api_key: str | None, accepted: bool) -> None:
    assert auth_ok(headers, api_key) is accepted


@pytest.mark.parametrize(
    ("headers", "api_key"),
    [([], None), ([(b"Authorization", b"Token wrong")], "right"), ([(b"X-Other", b"1")], None)],
)
async def test_bad_credentials_get_401_with_deepgram_body(
    headers: list[tuple[bytes, bytes]], api_key: str | None
) -> None:
    async with running_server(api_key=api_key) as base:
        error = await rejection(base, headers=headers)
    assert error.status_code == 401
    body = body_of(error)
    assert body["err_code"] == "INVALID_AUTH"
    assert body["err_msg"] == "Invalid credentials."
    response_headers = dict(error.headers)
    assert response_headers[b"dg-error"] == b"Invalid credentials."
    assert response_headers[b"dg-request-id"].decode() == body["request_id"]
    assert len(body["request_id"]) == 36


async def test_matching_api_key_is_accepted_with_request_id_header() -> None:
    async with running_server(api_key="test-key") as base, connect(base) as ws:
        assert len(request_id_of(ws)) == 36


@pytest.mark.parametrize(
    ("query", "message_part"),
    [
        ("sample_rate=16000", "encoding must be linear16 (missing)"),
        ("encoding=mulaw&sample_rate=8000", "encoding must be linear16 (got 'mulaw')"),
        ("encoding=linear16", "sample_rate must be a positive integer"),
        ("encoding=linear16&sample_rate=16k", "sample_rate must be a positive integer"),
        ("encoding=linear16&sample_rate=0", "sample_rate must be a positive integer"),
        ("encoding=linear16&sample_rate=16000&channels=two", "channels must be a positive integer"),
    ],
)
async def test_bad_query_gets_400(query: str, message_part: str) -> None:
    async with running_server() as base:
        error = await rejection(base, query=query)
    assert error.status_code == 400
    body = body_of(error)
    assert body["err_code"] == "INVALID_QUERY_PARAMETER"
    assert message_part in body["err_msg"]
    assert dict(error.headers)[b"dg-error"].decode() == body["err_msg"]


async def test_unknown_path_gets_404_json() -> None:
    async with running_server() as base:
        error = await rejection(base, path="/v2/listen")
    assert error.status_code == 404
    assert body_of(error)["err_code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (QUERY, StreamOptions(16000)),
        (
            "encoding=linear16&sample_rate=8000&channels=2&endpointing=300&interim_results=true"
            "&vad_events=true&utterance_end_ms=1000",
            StreamOptions(
                8000, 2, 300, interim_results=True, vad_events=True, utterance_end_ms=1000
            ),
        ),
        (
            "encoding=linear16&sample_rate=16000&endpointing=false&interim_results=True",
            StreamOptions(16000),
        ),
    ],
)
def test_parse_options(query: str, expected: StreamOptions) -> None:
    assert parse_options(parse_qs(query)) == expected


# ----------------------------------------------------------------------------- results


async def test_tone_burst_gives_exact_final_then_closestream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    audio = silence(500) + tone(1000) + silence(800)
    async with running_server() as base, connect(base) as ws:
        rid = request_id_of(ws)
        for frame in frames_of(audio):
            await ws.send_message(frame)
        # The utterance ends when 600 ms of silence followed the last voiced block.
        end_b = (500 + 1000 + 600) * BYTES_PER_S // 1000
        voiced = (500 * BYTES_PER_S // 1000, 1500 * BYTES_PER_S // 1000)
        assert await next_json(ws) == results(0, end_b, voiced, rid, speech_final=True)
        await ws.send_message('{"type":"CloseStream"}')
        assert await next_json(ws) == results(end_b, len(audio), None, rid)
        metadata = await next_json(ws)
        closed = await expect_closed(ws)
    assert closed.code == 1000
    assert metadata["type"] == "Metadata"
    assert metadata["transaction_key"] == "deprecated"
    assert metadata["request_id"] == rid
    assert metadata["sha256"] == hashlib.sha256(audio).hexdigest()
    assert metadata["duration"] == len(audio) / BYTES_PER_S
    assert metadata["channels"] == 1
    assert metadata["models"] == [MODEL_UUID]
    assert metadata["model_info"] == {MODEL_UUID: MODEL_INFO}
    assert metadata["created"].endswith("Z")


async def test_finalize_flushes_with_from_finalize(autojump_clock: trio.testing.MockClock) -> None:
    audio = silence(100) + tone(300)
    async with running_server() as base, connect(base) as ws:
        rid = request_id_of(ws)
        await ws.send_message(audio)
        await ws.send_message('{"type":"Finalize"}')
        voiced = (100 * BYTES_PER_S // 1000, len(audio))
        assert await next_json(ws) == results(0, len(audio), voiced, rid, from_finalize=True)
        # Nothing pending: the flush still answers, with an empty zero-length final.
        await ws.send_message('{"type":"Finalize","channel":0}')
        assert await next_json(ws) == results(len(audio), len(audio), None, rid, from_finalize=True)


async def test_empty_binary_frame_acts_as_closestream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 330 ms: the last 10 ms are a partial block, classified on the flush.
    audio = tone(330)
    async with running_server() as base, connect(base) as ws:
        rid = request_id_of(ws)
        await ws.send_message(audio)
        await ws.send_message(b"")
        assert await next_json(ws) == results(0, len(audio), (0, len(audio)), rid)
        metadata = await next_json(ws)
        closed = await expect_closed(ws)
    assert closed.code == 1000
    assert metadata["sha256"] == hashlib.sha256(audio).hexdigest()
    assert metadata["duration"] == 0.33


async def test_idle_timeout_sends_metadata_and_closes_1011(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(idle_timeout_s=2.0) as base, connect(base) as ws:
        opened = trio.current_time()
        await trio.sleep(1.5)
        await ws.send_message('{"type":"KeepAlive"}')  # resets the idle timer
        metadata = await next_json(ws)
        closed = await expect_closed(ws)
        idle_for = trio.current_time() - opened
    assert metadata["type"] == "Metadata"
    assert metadata["duration"] == 0
    assert metadata["channels"] == 0
    assert metadata["sha256"] == hashlib.sha256(b"").hexdigest()
    assert closed.code == 1011
    assert closed.reason == IDLE_CLOSE_REASON
    assert "net0001" in IDLE_CLOSE_REASON
    assert idle_for == pytest.approx(3.5, abs=0.01)


async def test_interim_vad_and_utterance_end_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    query = QUERY + "&interim_results=true&vad_events=true&utterance_end_ms=1000&endpointing=300"
    audio = silence(200) + tone(1200) + silence(400)
    async with running_server() as base, connect(base, query=query) as ws:
        rid = request_id_of(ws)
        for frame in frames_of(audio):
            await ws.send_message(frame)
        ms = BYTES_PER_S // 1000
        assert await next_json(ws) == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.2}
        assert await next_json(ws) == results(
            0, 1200 * ms, (200 * ms, 1200 * ms), rid, is_final=False
        )
        assert await next_json(ws) == results(
            0, 1700 * ms, (200 * ms, 1400 * ms), rid, speech_final=True
        )
        assert await next_json(ws) == {
            "type": "UtteranceEnd",
            "channel": [0, 1],
            "last_word_end": 1.4,
        }


async def test_stereo_offsets_count_both_channels(autojump_clock: trio.testing.MockClock) -> None:
    audio = tone(200, channels=2)
    query = "encoding=linear16&sample_rate=16000&channels=2"
    async with running_server() as base, connect(base, query=query) as ws:
        rid = request_id_of(ws)
        await ws.send_message(audio)
        await ws.send_message('{"type":"Finalize"}')
        expected = results(0, len(audio), (0, len(audio)), rid, from_finalize=True, channels=2)
        assert await next_json(ws) == expected
    assert expected["duration"] == 0.2


# ----------------------------------------------------------------------------- SpeechTracker


def tracker(**options: Any) -> SpeechTracker:
    return SpeechTracker(StreamOptions(RATE, **options), "rid")


def feed_all(t: SpeechTracker, audio: bytes, frame_bytes: int = 3200) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames_of(audio, frame_bytes):
        out.extend(t.feed(frame))
    return out


def spans(messages: list[dict[str, Any]]) -> list[tuple[float, float, str, bool]]:
    return [
        (
            m["start"],
            round(m["start"] + m["duration"], 6),
            m["channel"]["alternatives"][0]["transcript"],
            m["speech_final"],
        )
        for m in messages
    ]


@pytest.mark.parametrize(
    ("audio", "expected"),
    [
        # Long silence without Finalize: empty finals are not sent.
        (silence(25_000), []),
        # 25 s of continuous tone: a final at every 10 s, none speech_final.
        (
            tone(25_000),
            [(0.0, 10.0, "[speech 10.00 s]", False), (10.0, 20.0, "[speech 10.00 s]", False)],
        ),
        # Continuous speech with short pauses: the cut lands at the latest silent block.
        (
            (tone(3000) + silence(200)) * 4,
            [(0.0, 9.6, "[speech 9.40 s]", False)],
        ),
        # Two utterances separated by more than the endpointing pause.
        (
            tone(400) + silence(700) + tone(200) + silence(600),
            [(0.0, 1.0, "[speech 0.40 s]", True), (1.0, 1.9, "[speech 0.20 s]", True)],
        ),
        # A pause shorter than endpointing keeps one utterance.
        (
            tone(400) + silence(500) + tone(200) + silence(600),
            [(0.0, 1.7, "[speech 1.10 s]", True)],
        ),
        # -55 dBFS noise is not speech; -45 dBFS is.
        (tone(1000, amplitude=82) + silence(700), []),
        (tone(1000, amplitude=260) + silence(700), [(0.0, 1.6, "[speech 1.00 s]", True)]),
    ],
)
def test_tracker_finals(audio: bytes, expected: list[tuple[float, float, str, bool]]) -> None:
    assert spans(feed_all(tracker(), audio)) == expected


def test_tracker_contiguous_spans_with_odd_frame_sizes() -> None:
    t = tracker()
    audio = (tone(700) + silence(900)) * 3 + tone(150)
    out = feed_all(t, audio, frame_bytes=1234) + t.flush(from_finalize=False)
    starts = [m["start"] for m in out]
    ends = [m["start"] + m["duration"] for m in out]
    assert starts[0] == 0.0
    assert starts[1:] == pytest.approx(ends[:-1])
    assert ends[-1] == len(audio) / BYTES_PER_S
    assert [m["channel"]["alternatives"][0]["transcript"] for m in out] == [
        "[speech 0.70 s]",
        "[speech 0.70 s]",
        "[speech 0.70 s]",
        "[speech 0.15 s]",
    ]


# ----------------------------------------------------------------------------- fault plan


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", FaultPlan.none()),
        (
            '[{"attempts": [1, 3], "reject": 429}]',
            FaultPlan((FaultRule(Attempts(frozenset({1, 3})), RejectFault(429)),)),
        ),
        (
            '[{"attempts": "all", "drop_after_bytes": 6400},'
            ' {"attempts": {"from": 2, "to": 4}, "drop_after_s": 1.5}]',
            FaultPlan(
                (
                    FaultRule(Attempts(None), DropAfterBytesFault(6400)),
                    FaultRule(Attempts(None, 2, 4), DropAfterFault(1.5)),
                )
            ),
        ),
        (
            '[{"attempts": {"from": 2}, "close_after_s": 3},'
            ' {"attempts": [1], "close_after_s": 1, "code": 1008, "reason": "DATA-0000"},'
            ' {"attempts": [1], "stall_after_s": 2, "stall_for_s": 30},'
            ' {"attempts": [1], "malformed_after_s": 0}]',
            FaultPlan(
                (
                    FaultRule(Attempts(None, 2, None), CloseAfterFault(3.0)),
                    FaultRule(Attempts(frozenset({1})), CloseAfterFault(1.0, 1008, "DATA-0000")),
                    FaultRule(Attempts(frozenset({1})), StallFault(2.0, 30.0)),
                    FaultRule(Attempts(frozenset({1})), MalformedFault(0.0)),
                )
            ),
        ),
    ],
)
def test_fault_plan_parses(text: str, expected: FaultPlan) -> None:
    assert FaultPlan.from_json(text) == expected


@pytest.mark.parametrize(
    ("kinds", "fault", "described"),
    [
        (None, MalformedFault(1.0, MALFORMED_KINDS), {"malformed_after_s": 1.0}),
        (
            ["huge_duration", "lone_surrogate", "invalid_json"],
            MalformedFault(1.0, ("huge_duration", "lone_surrogate", "invalid_json")),
            {
                "malformed_after_s": 1.0,
                "kinds": ["huge_duration", "lone_surrogate", "invalid_json"],
            },
        ),
        (
            list(HOSTILE_KINDS),
            MalformedFault(1.0, HOSTILE_KINDS),
            {"malformed_after_s": 1.0, "kinds": list(HOSTILE_KINDS)},
        ),
        (list(MALFORMED_KINDS), MalformedFault(1.0), {"malformed_after_s": 1.0}),
    ],
)
def test_malformed_kinds_parse_and_describe(
    kinds: list[str] | None, fault: MalformedFault, described: dict[str, object]
) -> None:
    rule: dict[str, object] = {"attempts": "all", "malformed_after_s": 1}
    if kinds is not None:
        rule["kinds"] = kinds
    plan = FaultPlan.from_json(json.dumps([rule]))
    assert plan.actions_for(1) == (fault,)
    assert fault.describe() == described


@pytest.mark.parametrize("kinds", ['"huge_duration"', "[]", '["nan"]', "[1]", "null"])
def test_malformed_kinds_must_be_known(kinds: str) -> None:
    with pytest.raises(FaultPlanError) as info:
        FaultPlan.from_json(f'[{{"attempts": "all", "malformed_after_s": 1, "kinds": {kinds}}}]')
    assert "rule 1: kinds: must be a non-empty list of invalid_json, unknown_type," in str(
        info.value
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"attempts": "all"}', "must be a JSON list"),
        ("[3]", "rule 1: must be a JSON object"),
        ('[{"attempts": "all"}]', "rule 1: needs exactly one action key"),
        ('[{"attempts": "all", "reject": 401, "drop_after_s": 1}]', "found reject, drop_after_s"),
        ('[{"reject": 401}]', 'rule 1: missing "attempts"'),
        ('[{"attempts": [0], "reject": 401}]', "attempt numbers >= 1"),
        ('[{"attempts": {"from": 3, "to": 2}, "reject": 401}]', '"to" must be an integer'),
        ('[{"attempts": "some", "reject": 401}]', "attempts: expected a list"),
        ('[{"attempts": "all", "reject": 404}]', "reject: must be one of 400, 401"),
        ('[{"attempts": "all", "reject": 401, "code": 1}]', "unknown key(s) code"),
        ('[{"attempts": "all", "drop_after_bytes": -1}]', "drop_after_bytes: must be"),
        ('[{"attempts": "all", "drop_after_s": "1"}]', "drop_after_s: must be a number"),
        ('[{"attempts": "all", "stall_after_s": 1}]', "needs stall_for_s"),
        ('[{"attempts": "all", "close_after_s": 1, "code": 1006}]', "sendable close code"),
        ('[{"attempts": "all", "close_after_s": 1, "reason": "' + "x" * 124 + '"}]', "123 UTF-8"),
        ('[{"attempts": "all", "reject": 401}, {"attempts": "all"}]', "rule 2:"),
    ],
)
def test_fault_plan_errors_name_the_rule_and_key(text: str, message: str) -> None:
    with pytest.raises(FaultPlanError) as info:
        FaultPlan.from_json(text)
    assert message in str(info.value)


def test_actions_for_selects_by_attempt() -> None:
    plan = FaultPlan.from_json(
        '[{"attempts": [1], "reject": 503}, {"attempts": {"from": 2, "to": 3}, "drop_after_s": 1},'
        ' {"attempts": "all", "malformed_after_s": 2}]'
    )
    assert plan.actions_for(1) == (RejectFault(503), MalformedFault(2.0))
    assert plan.actions_for(3) == (DropAfterFault(1.0), MalformedFault(2.0))
    assert plan.actions_for(4) == (MalformedFault(2.0),)


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "err_code"),
    [
        (400, "INVALID_QUERY_PARAMETER"),
        (401, "INVALID_AUTH"),
        (403, "INSUFFICIENT_PERMISSIONS"),
        (429, "TOO_MANY_REQUESTS"),
        (503, "SERVICE_UNAVAILABLE"),
    ],
)
async def test_reject_fault_then_accept(status: int, err_code: str) -> None:
    plan = FaultPlan.from_json(f'[{{"attempts": {{"from": 1, "to": 2}}, "reject": {status}}}]')
    async with running_server(faults=plan) as base:
        for _ in range(2):
            error = await rejection(base)
            assert error.status_code == status
            body = body_of(error)
            assert body["err_code"] == err_code
            headers = dict(error.headers)
            assert headers[b"dg-error"].decode() == body["err_msg"]
            assert headers[b"dg-request-id"].decode() == body["request_id"]
        async with connect(base) as ws:  # attempt 3 is not selected
            await ws.send_message('{"type":"Finalize"}')
            assert (await next_json(ws))["from_finalize"] is True


async def test_drop_after_bytes_aborts_without_close_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plan = FaultPlan.from_json('[{"attempts": [1], "drop_after_bytes": 6400}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        await ws.send_message(silence(100))
        await ws.send_message(silence(100))
        closed = await expect_closed(ws)
    assert closed.code == 1006  # abnormal closure: no close frame arrived


async def test_drop_after_s(autojump_clock: trio.testing.MockClock) -> None:
    plan = FaultPlan.from_json('[{"attempts": "all", "drop_after_s": 2}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        opened = trio.current_time()
        closed = await expect_closed(ws)
        assert trio.current_time() - opened == pytest.approx(2.0, abs=0.01)
    assert closed.code == 1006


@pytest.mark.parametrize(
    ("rule", "code", "reason"),
    [
        ('"close_after_s": 1', 1011, DEFAULT_CLOSE_FAULT_REASON),
        (
            '"close_after_s": 1, "code": 1008, "reason": "DATA-0000 bad audio"',
            1008,
            "DATA-0000 bad audio",
        ),
    ],
)
async def test_close_after_s(
    autojump_clock: trio.testing.MockClock, rule: str, code: int, reason: str
) -> None:
    plan = FaultPlan.from_json(f'[{{"attempts": [1], {rule}}}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        closed = await expect_closed(ws)
    assert (closed.code, closed.reason) == (code, reason)


async def test_stall_stops_pongs_then_resumes(autojump_clock: trio.testing.MockClock) -> None:
    plan = FaultPlan.from_json('[{"attempts": [1], "stall_after_s": 1, "stall_for_s": 20}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        await ws.ping(b"before")  # answered while healthy
        await trio.sleep(2)
        with trio.move_on_after(5) as ping_scope:
            await ws.ping(b"during")
        assert ping_scope.cancelled_caught  # a client's ping timeout is what detects this
        await ws.send_message(tone(100))  # held by the server until the stall ends
        await ws.send_message('{"type":"Finalize"}')
        with trio.move_on_after(10) as result_scope:
            await ws.get_message()
        assert result_scope.cancelled_caught  # still stalled 17 s in: nothing answered
        final = await next_json(ws)  # the stall ended at 21 s: the queued frames are served
        assert trio.current_time() >= 21
        assert final["from_finalize"] is True
        assert final["channel"]["alternatives"][0]["transcript"] == "[speech 0.10 s]"
        await ws.ping(b"after")


async def test_malformed_sequence_then_normal() -> None:
    # Real clock: the 1 MB message takes real (if brief) TCP round trips, during which an
    # autojump clock would leap to the idle timeout.
    plan = FaultPlan.from_json('[{"attempts": "all", "malformed_after_s": 0.05}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        rid = request_id_of(ws)
        assert await ws.get_message() == '{"type": "Res'
        assert await next_json(ws) == {"type": "Mystery"}
        huge = await ws.get_message()
        assert len(huge) == 1_000_000
        assert json.loads(huge)["type"] == "Gigantic"
        no_channel = await next_json(ws)
        assert no_channel["type"] == "Results"
        assert "channel" not in no_channel
        string_start = await next_json(ws)
        assert string_start["start"] == "0.0"
        assert string_start["channel"]["alternatives"][0]["transcript"] == ""
        audio = tone(200)
        await ws.send_message(audio)
        await ws.send_message('{"type":"Finalize"}')
        assert await next_json(ws) == results(
            0, len(audio), (0, len(audio)), rid, from_finalize=True
        )


def hostile(kind: str, start: float, duration: float, word: tuple[float, float], rid: str) -> str:
    """The hostile final of ``kind`` the server must send, computed independently (as JSON
    text with sorted keys: NaN is not equal to itself, its JSON spelling is)."""
    message = results(0, 0, None, rid)
    message["start"], message["duration"] = start, duration
    message["channel"]["alternatives"][0] = {
        "transcript": f"[hostile {kind}]",
        "confidence": 0.99,
        "words": [
            {
                "word": "[hostile]",
                "punctuated_word": "[hostile]",
                "start": word[0],
                "end": word[1],
                "confidence": 0.99,
            }
        ],
    }
    return json.dumps(message, sort_keys=True)


def test_malformed_messages_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown malformed-message kind 'nan'"):
        malformed_messages("nan", results(0, 0, None, "r"))


async def test_hostile_kinds_then_a_spoiled_final_then_normal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each hostile kind, in plan order, at the offset reached (0.3 s); then the next final
    with a transcript carries a lone surrogate, and the one after it is normal again. Each
    one, fed to dgd's own session, is rejected (or repaired) for the intended reason."""
    rule = {"attempts": "all", "malformed_after_s": 1, "kinds": list(HOSTILE_KINDS)}
    plan = FaultPlan.from_json(json.dumps([rule]))
    audio = tone(300)
    async with running_server(faults=plan) as base, connect(base) as ws:
        rid = request_id_of(ws)
        await ws.send_message(audio)
        received = [await ws.get_message() for _ in range(len(HOSTILE_KINDS) - 1)]
        await ws.send_message('{"type":"Finalize"}')
        spoiled = await ws.get_message()
        await ws.send_message(tone(100))
        await ws.send_message('{"type":"Finalize"}')
        after = await next_json(ws)
    assert [json.dumps(json.loads(text), sort_keys=True) for text in received] == [
        hostile("nan_time", math.nan, 0.0, (0.3, 0.3), rid),
        hostile("negative_time", -1.0, 1.3, (0.3, 0.3), rid),
        hostile("huge_start", 1e20, 0.0, (1e20, 1e20), rid),
        hostile("huge_duration", 0.3, 1e9, (0.3, 0.3), rid),
        hostile("beyond_sent", 0.3, 5.0, (4.8, 5.3), rid),
        hostile("end_before_start", 0.3, -1.0, (0.3, 0.3), rid),
        hostile("word_end_before_start", 0.3, 0.25, (0.55, 0.3), rid),
        hostile("word_outside_result", 0.3, 0.0, (2.3, 2.8), rid),
    ]
    expected_spoiled = results(0, len(audio), (0, len(audio)), rid, from_finalize=True)
    alternative = expected_spoiled["channel"]["alternatives"][0]
    alternative["transcript"] = "[speech 0.30 s] \ud800"
    alternative["words"][0]["punctuated_word"] = "[speech]\ud800"
    assert json.loads(spoiled) == expected_spoiled
    assert "\\ud800" in spoiled  # sent as the JSON escape: valid JSON, not Unicode text
    assert after == results(
        len(audio), len(audio) + 3200, (len(audio), len(audio) + 3200), rid, from_finalize=True
    )

    # What dgd makes of them, having sent the same 0.3 s.
    session = Session(keepalive_interval_s=4.0, now=0.0)
    session.send_audio(AudioFrame(audio, 1000.0, 0.3), 0.0)
    beyond = "Results: time beyond the audio sent on this connection"
    sent = "0.3 s sent"
    words0 = "channel.alternatives[0].words[0]"
    reasons = [
        [e.reason if isinstance(e, Unrecognized) else repr(e) for e in session.receive(text)]
        for text in received
    ]
    assert reasons == [
        ["Results: field start is not a finite number"],
        ["Results: negative time in field start: -1"],
        [f"{beyond}: 1e+20 s, {sent}"],
        [f"{beyond}: 1e+09 s, {sent}"],
        [f"{beyond}: 5.3 s, {sent}"],
        ["Results: end before start: field duration = -1"],
        [f"Results: end before start: field {words0}.end = 0.3 < start 0.55"],
        [f"Results: word outside its result: {words0} spans [2.3, 2.8] s, the result [0.3, 0.3] s"],
    ]
    assert session.receive(spoiled) == [
        Unrecognized(
            "Results: text is not valid Unicode: lone surrogates replaced by U+FFFD in "
            f"channel.alternatives[0].transcript, {words0}.punctuated_word",
            spoiled[:120],
        ),
        Transcript(
            "[speech 0.30 s] \ufffd",
            True,
            False,
            True,
            0.99,
            1000.0,
            1000.3,
            rid,
            (TimedWord("[speech]\ufffd", 1000.0, 1000.3, 0.99),),
        ),
        Confirmed(0.3),
    ]
    assert session.statistics().unrecognized == len(HOSTILE_KINDS)


# ----------------------------------------------------------------------------- recording


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def has_close_line(path: Path) -> bool:
    return any(e["kind"] == "close" for e in read_jsonl(path))


async def wait_for_close_line(path: Path) -> None:
    for _ in range(500):  # at most about 5 s
        if has_close_line(path):
            return
        await trio.sleep(0.01)
    pytest.fail(f"{path} never got its close line")


def recorded_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


async def test_recording_files(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    plan = FaultPlan.from_json('[{"attempts": [2], "reject": 429}]')
    audio = tone(300)
    async with running_server(faults=plan, record_dir=tmp_path, api_key="test-key") as base:
        await rejection(base, headers=[(b"Authorization", b"Token secret-wrong-key")])
        await rejection(base)
        async with connect(base, query=QUERY + "&model=nova-3&keyterm=a&keyterm=b") as ws:
            rid = request_id_of(ws)
            await ws.send_message(audio[:3200])
            # The server writes each line as it goes: readable while the connection is open.
            await ws.send_message('{"type":"KeepAlive"}')
            await ws.send_message("not json")
            await ws.send_message(audio[3200:])
            await ws.send_message('{"type":"CloseStream"}')
            sent = [await next_json(ws), await next_json(ws)]
            await expect_closed(ws)
    files = recorded_files(tmp_path)
    assert list(files) == [
        "conn-0001.jsonl",
        "conn-0001.raw",
        "conn-0002.jsonl",
        "conn-0002.raw",
        "conn-0003.jsonl",
        "conn-0003.raw",
    ]
    for content in files.values():
        assert b"secret-wrong-key" not in content
        assert b"test-key" not in content

    first = read_jsonl(tmp_path / "conn-0001.jsonl")
    assert [(e["kind"], e["status"], e["auth_ok"], e["path"]) for e in first] == [
        ("handshake", 401, False, "/v1/listen")
    ]
    second = read_jsonl(tmp_path / "conn-0002.jsonl")
    assert [e["kind"] for e in second] == ["handshake", "fault"]
    assert (second[0]["status"], second[0]["auth_ok"]) == (429, True)
    assert second[1]["fault"] == {"reject": 429}

    assert (tmp_path / "conn-0003.raw").read_bytes() == audio
    third = read_jsonl(tmp_path / "conn-0003.jsonl")
    handshake = third[0]
    assert handshake["status"] == 101
    assert handshake["request_id"] == rid
    assert handshake["query"] == {
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
        "model": "nova-3",
        "keyterm": ["a", "b"],
    }
    assert [(e["kind"], e.get("len"), e.get("offset"), e.get("text")) for e in third[1:5]] == [
        ("binary", 3200, 0, None),
        ("text", None, None, '{"type":"KeepAlive"}'),
        ("text", None, None, "not json"),
        ("binary", len(audio) - 3200, 3200, None),
    ]
    assert third[5] == {"t": third[5]["t"], "kind": "text", "text": '{"type":"CloseStream"}'}
    assert [e["message"] for e in third[6:8]] == sent
    assert third[8]["kind"] == "close"
    assert (third[8]["code"], third[8]["reason"], third[8]["by"]) == (1000, None, "server")
    assert len(third) == 9
    times = [e["t"] for e in first + second + third]
    assert times == sorted(times)


async def test_recording_of_client_close_and_faults(tmp_path: Path) -> None:
    # Real clock, as in test_malformed_sequence_then_normal.
    plan = FaultPlan.from_json(
        '[{"attempts": [1], "malformed_after_s": 0.05}, {"attempts": [2], "drop_after_bytes": 100}]'
    )
    async with running_server(faults=plan, record_dir=tmp_path) as base:
        async with connect(base) as ws:
            for _ in range(5):
                await ws.get_message()
        async with connect(base) as ws:
            await ws.send_message(silence(20))
            await expect_closed(ws)
        # The server records a client's close after the client has seen the handshake end.
        await wait_for_close_line(tmp_path / "conn-0001.jsonl")
    first = read_jsonl(tmp_path / "conn-0001.jsonl")
    assert [e["kind"] for e in first] == ["handshake", "fault"] + ["sent"] * 5 + ["close"]
    assert first[1]["fault"] == {"malformed_after_s": 0.05}
    assert first[2]["text"] == '{"type": "Res'
    assert first[3]["message"] == {"type": "Mystery"}
    assert (first[4]["len"], first[4]["text"][:20]) == (1_000_000, '{"type":"Gigantic","')
    assert (first[-1]["code"], first[-1]["by"]) == (1000, "client")
    second = read_jsonl(tmp_path / "conn-0002.jsonl")
    assert [e["kind"] for e in second] == ["handshake", "binary", "fault", "close"]
    assert second[2]["fault"] == {"drop_after_bytes": 100}
    assert (second[3]["code"], second[3]["by"]) == (1006, "server")


# ----------------------------------------------------------------------------- CLI


def test_main_rejects_bad_fault_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "faults.json"
    plan.write_text('[{"attempts": "all", "reject": 302}]')
    assert main(["--faults", str(plan)]) == 2
    assert f"--faults {plan}: rule 1: reject: must be one of" in capsys.readouterr().err
    assert main(["--faults", str(tmp_path / "missing.json")]) == 2
    assert "cannot read --faults" in capsys.readouterr().err


def test_main_prints_the_url_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    plan = tmp_path / "faults.json"
    plan.write_text('[{"attempts": [1], "reject": 503}]')
    code = "import sys; from dgd.testing.fakeserver import main; sys.exit(main(sys.argv[1:]))"
    args = ["--port", "0", "--faults", str(plan), "--record-dir", str(tmp_path / "rec")]
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("dgd fake-server listening on ws://127.0.0.1:")
        url = line.split()[-1]
        assert url.endswith("/v1/listen")

        async def talk() -> int:
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(url + "?" + QUERY, extra_headers=AUTH):
                    pass
            assert info.value.status_code == 503
            async with trio_websocket.open_websocket_url(
                url + "?" + QUERY, extra_headers=AUTH
            ) as ws:
                await ws.send_message(b"")
                await ws.get_message()
                return len(await ws.get_message())

        assert trio.run(talk) > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert (tmp_path / "rec" / "conn-0002.raw").exists()


async def test_server_survives_clients_that_vanish(autojump_clock: trio.testing.MockClock) -> None:
    plan = FaultPlan.from_json('[{"attempts": [2], "stall_after_s": 0, "stall_for_s": 5}]')
    async with running_server(faults=plan) as base:
        port = int(base.rsplit(":", 1)[1])
        # A TCP connection that closes at once, and one that is not a WebSocket at all.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await stream.receive_some()).startswith(b"HTTP/1.1 4")
        await stream.aclose()
        # A client that drops its TCP connection while the server is stalled (attempt 2)...
        with trio.move_on_after(1):
            async with connect(base) as ws:
                await ws.send_message(tone(100))
                await ws.send_message('{"type":"Finalize"}')
                await trio.sleep_forever()
        # ... or while results are on their way (attempt 3).
        async with connect(base) as ws:
            await ws.send_message(tone(300))
            await ws.send_message('{"type":"CloseStream"}')
        await trio.sleep(10)
        async with connect(base) as ws:  # attempt 4: all is still well
            await ws.send_message('{"type":"Finalize"}')
            assert (await next_json(ws))["from_finalize"] is True


def test_main_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port} (check --host/--port)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Configure, Error


def test_fault_plan_parses_configure_and_error_faults() -> None:
    plan = FaultPlan.from_json(
        '[{"attempts": [1], "configure": "failure"}, {"attempts": [2], "configure": "ignore"},'
        ' {"attempts": [3], "error_after_s": 1},'
        ' {"attempts": [4], "error_after_s": 2, "error_code": "DATA-0000", "description": "no"}]'
    )
    assert plan == FaultPlan(
        (
            FaultRule(Attempts(frozenset({1})), ConfigureFault("failure")),
            FaultRule(Attempts(frozenset({2})), ConfigureFault("ignore")),
            FaultRule(Attempts(frozenset({3})), ErrorAfterFault(1.0)),
            FaultRule(Attempts(frozenset({4})), ErrorAfterFault(2.0, "DATA-0000", "no")),
        )
    )
    assert ErrorAfterFault(1.0).describe() == {
        "error_after_s": 1.0,
        "error_code": DEFAULT_ERROR_CODE,
        "description": DEFAULT_ERROR_DESCRIPTION,
    }
    assert ConfigureFault("ignore").describe() == {"configure": "ignore"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"attempts": "all", "configure": "success"}]', "configure: must be one of 'failure'"),
        ('[{"attempts": "all", "configure": "ignore", "code": 1}]', "unknown key(s) code"),
        ('[{"attempts": "all", "error_after_s": 1, "error_code": 5}]', "error_code: must be a"),
        ('[{"attempts": "all", "error_after_s": 1, "description": null}]', "description: must"),
        ('[{"attempts": "all", "error_after_s": -1}]', "error_after_s: must be a number"),
    ],
)
def test_configure_and_error_fault_errors(text: str, message: str) -> None:
    with pytest.raises(FaultPlanError) as info:
        FaultPlan.from_json(text)
    assert message in str(info.value)


OPTIONS = StreamOptions(rate_hz=RATE, channels=1)


@pytest.mark.parametrize(
    ("message", "answer", "keyterms_after", "features_after"),
    [
        pytest.param(
            {"type": "Configure", "keyterms": ["Deepgram", "customer service"]},
            {
                "type": "ConfigureSuccess",
                "request_id": "rid",
                "keyterms": ["Deepgram", "customer service"],
            },
            ("Deepgram", "customer service"),
            {},
            id="replace-keyterms",
        ),
        pytest.param(
            {"type": "Configure", "keyterms": []},
            {"type": "ConfigureSuccess", "request_id": "rid", "keyterms": []},
            (),
            {},
            id="clear-keyterms",
        ),
        pytest.param(
            {"type": "Configure", "keyterms": None, "features": {"numerals": True}},
            {"type": "ConfigureSuccess", "request_id": "rid"},
            ("a", "b"),
            {"numerals": True},
            id="null-keeps-keyterms",
        ),
        pytest.param(
            {"type": "Configure", "keyterms": "x"},
            {
                "type": "ConfigureFailure",
                "request_id": "rid",
                "code": "INVALID_CONFIGURE",
                "description": "keyterms must be an array of strings",
            },
            ("a", "b"),
            {},
            id="keyterms-not-an-array",
        ),
        pytest.param(
            {"type": "Configure", "features": {"diarize": True}},
            {
                "type": "ConfigureFailure",
                "request_id": "rid",
                "code": "INVALID_CONFIGURE",
                "description": "features.diarize cannot be set by Configure",
            },
            ("a", "b"),
            {},
            id="feature-not-configurable",
        ),
        pytest.param(
            {"type": "Configure", "model": "nova-2"},
            {
                "type": "ConfigureFailure",
                "request_id": "rid",
                "code": "INVALID_CONFIGURE",
                "description": "unknown Configure field(s): model",
            },
            ("a", "b"),
            {},
            id="unknown-field",
        ),
    ],
)
def test_tracker_configure(
    message: dict[str, object],
    answer: dict[str, object],
    keyterms_after: tuple[str, ...],
    features_after: dict[str, bool],
) -> None:
    tracker = SpeechTracker(OPTIONS, "rid", keyterms=("a", "b"))
    assert tracker.configure(message) == answer
    assert tracker.keyterms == keyterms_after
    assert tracker.features == features_after


async def test_configure_is_answered_and_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    configure = {"type": "Configure", "keyterms": ["Zoë"]}
    async with (
        running_server(record_dir=tmp_path) as base,
        connect(base, query=QUERY + "&keyterm=a") as ws,
    ):
        rid = request_id_of(ws)
        await ws.send_message(json.dumps(configure))
        assert await next_json(ws) == {
            "type": "ConfigureSuccess",
            "request_id": rid,
            "keyterms": ["Zoë"],
        }
        await ws.send_message('{"type":"CloseStream"}')
        await next_json(ws)
        await next_json(ws)
        await expect_closed(ws)
    events = read_jsonl(tmp_path / "conn-0001.jsonl")
    assert [e["kind"] for e in events] == [
        "handshake",
        "text",
        "configure",
        "sent",
        "text",
        "sent",
        "sent",
        "close",
    ]
    assert events[2]["message"] == configure


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "failure",
            {
                "type": "ConfigureFailure",
                "code": "INVALID_CONFIGURE",
                "description": "Configure refused (injected fault)",
            },
        ),
        ("ignore", None),
    ],
)
async def test_configure_fault_refuses_or_ignores(
    autojump_clock: trio.testing.MockClock, answer: str, expected: dict[str, object] | None
) -> None:
    plan = FaultPlan.from_json(f'[{{"attempts": "all", "configure": "{answer}"}}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        rid = request_id_of(ws)
        await ws.send_message('{"type":"Configure","keyterms":["x"]}')
        await ws.send_message('{"type":"Finalize"}')
        first = await next_json(ws)
    if expected is None:
        assert first["type"] == "Results"  # no answer: the Finalize's result comes first
    else:
        assert first == {**expected, "request_id": rid}


@pytest.mark.parametrize(
    ("rule", "error", "reason"),
    [
        (
            '"error_after_s": 1',
            {
                "type": "Error",
                "code": DEFAULT_ERROR_CODE,
                "description": DEFAULT_ERROR_DESCRIPTION,
            },
            f"{DEFAULT_ERROR_CODE}: {DEFAULT_ERROR_DESCRIPTION}",
        ),
        (
            '"error_after_s": 1, "error_code": "X", "description": "' + "y" * 200 + '"',
            {"type": "Error", "code": "X", "description": "y" * 200},
            "X: " + "y" * 120,
        ),
    ],
)
async def test_error_after_s_sends_error_then_closes_1011(
    autojump_clock: trio.testing.MockClock, rule: str, error: dict[str, object], reason: str
) -> None:
    plan = FaultPlan.from_json(f'[{{"attempts": [1], {rule}}}]')
    async with running_server(faults=plan) as base, connect(base) as ws:
        opened = trio.current_time()
        assert await next_json(ws) == error
        assert trio.current_time() - opened == pytest.approx(1.0, abs=0.01)
        closed = await expect_closed(ws)
    assert (closed.code, closed.reason) == (1011, reason)
