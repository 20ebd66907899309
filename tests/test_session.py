"""The sans-I/O Deepgram session (dgd.core.session): sending, keep-alive timing, receiving.

Wall-clock capture times and connection offsets are multiples of 1/8 s, so mapped times are
exact. The session under test has sent two frames: [0, 0.5) captured at 1000.0 and, after a
gap, [0.5, 1.25) captured at 2000.0.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from dgd.core.events import AudioFrame, TimedWord, Transcript
from dgd.core.messages import (
    CLOSESTREAM_MESSAGE,
    EXCERPT_CHARS,
    FINALIZE_MESSAGE,
    KEEPALIVE_MESSAGE,
    Metadata,
    Unrecognized,
)
from dgd.core.session import (
    SENT_TOLERANCE_S,
    Confirmed,
    DuplicateFilter,
    LocalProtocolError,
    Marker,
    ReplayPacer,
    Session,
    SessionEvent,
    SessionState,
    SessionStatistics,
)

OPENED_AT = 100.0
KEEPALIVE_S = 4.0
FRAME_A = AudioFrame(b"\x01\x00" * 4000, 1000.0, 0.5)
FRAME_B = AudioFrame(b"\x02\x00" * 6000, 2000.0, 0.75)


def new_session() -> Session:
    return Session(keepalive_interval_s=KEEPALIVE_S, now=OPENED_AT)


def streaming_session() -> Session:
    session = new_session()
    session.send_audio(FRAME_A, OPENED_AT + 0.5)
    session.send_audio(FRAME_B, OPENED_AT + 1.0)
    return session


def results(
    transcript: str,
    *,
    start: float,
    duration: float,
    is_final: bool = True,
    speech_final: bool = False,
    from_finalize: bool = False,
    confidence: float = 0.875,
    words: list[dict[str, Any]] | None = None,
    request_id: str | None = "req-1",
) -> str:
    message: dict[str, Any] = {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {"transcript": transcript, "confidence": confidence, "words": words or []}
            ]
        },
    }
    if request_id is not None:
        message["metadata"] = {"request_id": request_id, "model_info": {"name": "nova-3"}}
    return json.dumps(message)


def word(
    text: str, start: float, end: float, confidence: float, punctuated: str | None = None
) -> dict[str, Any]:
    w: dict[str, Any] = {"word": text, "start": start, "end": end, "confidence": confidence}
    if punctuated is not None:
        w["punctuated_word"] = punctuated
    return w


# --- sending -----------------------------------------------------------------------------


def test_new_session() -> None:
    session = new_session()
    assert session.state is SessionState.OPEN
    assert session.request_id == ""
    assert session.metadata is None
    assert session.statistics() == SessionStatistics()
    assert session.timemap.segments == ()
    assert session.keepalive_due_at() == OPENED_AT + KEEPALIVE_S


def test_send_audio_returns_payload_and_advances_the_timemap() -> None:
    session = new_session()
    assert session.send_audio(FRAME_A, 100.5) == FRAME_A.data
    assert session.timemap.sent_s == 0.5
    assert session.send_audio(FRAME_B, 101.0) == FRAME_B.data
    assert session.timemap.sent_s == 1.25
    assert session.timemap.segments == ((0.0, 1000.0, 0.5), (0.5, 2000.0, 0.75))
    assert session.statistics() == SessionStatistics(sent_s=1.25)
    assert session.keepalive_due_at() == 105.0


def test_send_contiguous_audio_extends_one_segment() -> None:
    session = new_session()
    session.send_audio(AudioFrame(b"\x01\x00" * 2000, 1000.0, 0.25), 100.25)
    session.send_audio(AudioFrame(b"\x01\x00" * 2000, 1000.25, 0.25), 100.5)
    assert session.timemap.segments == ((0.0, 1000.0, 0.5),)


def test_empty_frame_raises_and_changes_nothing() -> None:
    session = new_session()
    with pytest.raises(LocalProtocolError, match="empty binary frame"):
        session.send_audio(AudioFrame(b"", 1000.0, 0.0), 101.0)
    assert session.state is SessionState.OPEN
    assert session.statistics() == SessionStatistics()
    assert session.timemap.sent_s == 0.0
    assert session.keepalive_due_at() == OPENED_AT + KEEPALIVE_S


def test_finalize_returns_the_text_frame() -> None:
    session = streaming_session()
    assert session.finalize(102.0) == FINALIZE_MESSAGE == '{"type":"Finalize"}'
    assert session.statistics().finalizes == 1
    assert session.keepalive_due_at() == 106.0
    assert session.state is SessionState.OPEN


def test_close_stream_then_every_send_raises_and_leaves_state_unchanged() -> None:
    session = streaming_session()
    assert session.close_stream(103.0) == CLOSESTREAM_MESSAGE == '{"type":"CloseStream"}'
    assert session.state is SessionState.CLOSING
    before = (session.statistics(), session.timemap.segments, session.timemap.sent_s)
    with pytest.raises(LocalProtocolError, match="cannot send audio: the stream is closing"):
        session.send_audio(FRAME_A, 104.0)
    with pytest.raises(LocalProtocolError, match="cannot send Finalize: the stream is closing"):
        session.finalize(104.0)
    with pytest.raises(LocalProtocolError, match="cannot send CloseStream: the stream is closing"):
        session.close_stream(104.0)
    assert session.handle_timer(1e9) is None
    after = (session.statistics(), session.timemap.segments, session.timemap.sent_s)
    assert after == before
    assert session.state is SessionState.CLOSING
    assert session.keepalive_due_at() == math.inf


def test_connection_lost_closes() -> None:
    session = streaming_session()
    session.connection_lost()
    assert session.state is SessionState.CLOSED
    assert session.keepalive_due_at() == math.inf
    with pytest.raises(LocalProtocolError, match="cannot send audio: the stream is closed"):
        session.send_audio(FRAME_A, 104.0)
    with pytest.raises(LocalProtocolError, match="the stream is closed"):
        session.finalize(104.0)
    assert session.handle_timer(1e9) is None


# --- keep-alive timing -------------------------------------------------------------------

# (action, now, expected): "timer" expects handle_timer's result; "due" expects
# keepalive_due_at(); "audio"/"finalize" send and expect nothing.
KEEPALIVE_SCRIPTS = [
    pytest.param(
        [
            ("due", 0.0, 104.0),
            ("timer", 100.0, None),
            ("timer", 103.875, None),
            ("timer", 104.0, KEEPALIVE_MESSAGE),
            ("due", 0.0, 108.0),
            ("timer", 104.0, None),
            ("timer", 107.5, None),
            ("timer", 108.0, KEEPALIVE_MESSAGE),
            ("due", 0.0, 112.0),
        ],
        2,
        id="idle",
    ),
    pytest.param(
        [
            ("audio", 102.0, None),
            ("due", 0.0, 106.0),
            ("timer", 104.0, None),
            ("timer", 105.875, None),
            ("finalize", 105.0, None),
            ("due", 0.0, 109.0),
            ("timer", 106.0, None),
            ("timer", 109.0, KEEPALIVE_MESSAGE),
            ("due", 0.0, 113.0),
        ],
        1,
        id="audio-and-finalize-reset-the-deadline",
    ),
    pytest.param(
        [
            # A late timer (the loop was busy) sends one KeepAlive and counts from then.
            ("timer", 111.0, KEEPALIVE_MESSAGE),
            ("due", 0.0, 115.0),
            ("timer", 114.0, None),
        ],
        1,
        id="late-timer",
    ),
    pytest.param(
        [
            ("audio", 101.0, None),
            ("close", 102.0, None),
            ("due", 0.0, math.inf),
            ("timer", 106.0, None),
            ("timer", 1e12, None),
        ],
        0,
        id="closing-sends-no-keepalive",
    ),
]


@pytest.mark.parametrize(("script", "keepalives"), KEEPALIVE_SCRIPTS)
def test_keepalive_timing(
    script: list[tuple[str, float, str | float | None]], keepalives: int
) -> None:
    session = new_session()
    for action, now, expected in script:
        if action == "timer":
            assert session.handle_timer(now) == expected, f"handle_timer({now})"
        elif action == "due":
            assert session.keepalive_due_at() == expected
        elif action == "audio":
            session.send_audio(AudioFrame(b"\x01\x00", 1000.0, 1 / 8000), now)
        elif action == "finalize":
            session.finalize(now)
        elif action == "close":
            session.close_stream(now)
    assert session.statistics().keepalives == keepalives


def test_keepalive_message_is_a_json_text_frame() -> None:
    assert KEEPALIVE_MESSAGE == '{"type":"KeepAlive"}'


# --- receiving results -------------------------------------------------------------------


def test_final_result_gives_transcript_then_confirmed() -> None:
    session = streaming_session()
    payload = results(
        "Hello world.",
        start=0.25,
        duration=0.75,
        speech_final=True,
        words=[
            word("hello", 0.25, 0.5, 0.75, "Hello"),
            word("world", 0.5, 1.0, 0.5, "world."),
        ],
    )
    assert session.receive(payload) == [
        Transcript(
            text="Hello world.",
            is_final=True,
            speech_final=True,
            from_finalize=False,
            confidence=0.875,
            start_s=1000.25,
            # 1.0 is inside the second segment: 2000.0 + 0.5.
            end_s=2000.5,
            request_id="req-1",
            words=(
                # "hello" ends exactly on the segment boundary: the end of the first segment.
                TimedWord("Hello", 1000.25, 1000.5, 0.75),
                # "world" starts exactly on it: the start of the second segment.
                TimedWord("world.", 2000.0, 2000.5, 0.5),
            ),
        ),
        Confirmed(1.0),
    ]
    assert session.request_id == "req-1"
    assert session.statistics().results == 1
    assert session.statistics().unrecognized == 0


def test_transcript_ending_on_a_boundary_maps_to_the_earlier_segment() -> None:
    session = streaming_session()
    events = session.receive(results("hi", start=0.0, duration=0.5))
    assert events == [
        Transcript("hi", True, False, False, 0.875, 1000.0, 1000.5, "req-1", ()),
        Confirmed(0.5),
    ]


def test_words_without_punctuation_use_the_plain_word() -> None:
    session = streaming_session()
    events = session.receive(
        results("a b", start=0.0, duration=0.25, words=[word("a", 0, 0.125, 1.0)])
    )
    transcript = events[0]
    assert isinstance(transcript, Transcript)
    assert transcript.words == (TimedWord("a", 1000.0, 1000.125, 1.0),)


def test_from_finalize_flag_is_kept() -> None:
    session = streaming_session()
    events = session.receive(results("ok", start=0.5, duration=0.25, from_finalize=True))
    assert events == [
        Transcript("ok", True, False, True, 0.875, 2000.0, 2000.25, "req-1", ()),
        Confirmed(0.75),
    ]


def test_interim_result_gives_transcript_without_confirmed() -> None:
    session = streaming_session()
    events = session.receive(results("hel", start=0.25, duration=0.5, is_final=False))
    assert events == [Transcript("hel", False, False, False, 0.875, 1000.25, 2000.25, "req-1", ())]


@pytest.mark.parametrize(
    ("is_final", "expected"),
    [(True, [Confirmed(1.25)]), (False, [])],
)
def test_empty_transcript_gives_only_confirmed(is_final: bool, expected: list[object]) -> None:
    session = streaming_session()
    assert session.receive(results("", start=0.0, duration=1.25, is_final=is_final)) == expected
    assert session.statistics().results == 1


def test_result_extrapolates_beyond_what_was_sent() -> None:
    # Deepgram pads the last result a little past the audio it was sent.
    session = streaming_session()
    events = session.receive(results("end", start=1.0, duration=0.5))
    assert events == [
        Transcript("end", True, False, False, 0.875, 2000.5, 2001.0, "req-1", ()),
        Confirmed(1.5),
    ]


def test_request_id_falls_back_to_the_sessions() -> None:
    session = streaming_session()
    session.receive(results("one", start=0.0, duration=0.25, request_id="req-7"))
    events = session.receive(results("two", start=0.25, duration=0.25, request_id=None))
    transcript = events[0]
    assert isinstance(transcript, Transcript)
    assert transcript.request_id == "req-7"
    assert session.request_id == "req-7"


def test_transcript_before_any_audio_is_unrecognized() -> None:
    session = new_session()
    events = session.receive(results("ghost", start=0.0, duration=0.5))
    assert events == [
        Confirmed(0.5),
        Unrecognized("a transcript arrived before any audio was sent", ""),
    ]
    assert session.statistics() == SessionStatistics(results=1, unrecognized=1)


def test_interim_before_any_audio_is_unrecognized_without_confirmed() -> None:
    session = new_session()
    events = session.receive(results("ghost", start=0.0, duration=0.5, is_final=False))
    assert events == [Unrecognized("a transcript arrived before any audio was sent", "")]


# --- other messages ----------------------------------------------------------------------


def test_metadata_is_kept_and_sets_the_request_id() -> None:
    session = streaming_session()
    payload = json.dumps(
        {
            "type": "Metadata",
            "request_id": "req-9",
            "created": "2026-11-23T21:40:01.000Z",
            "duration": 1.25,
            "channels": 1,
            "sha256": "abc",
        }
    )
    metadata = Metadata("req-9", 1.25, 1, "2026-11-23T21:40:01.000Z", "abc")
    assert session.receive(payload) == [metadata]
    assert session.metadata == metadata
    assert session.request_id == "req-9"


def test_metadata_does_not_override_a_known_request_id() -> None:
    session = streaming_session()
    session.receive(results("x", start=0.0, duration=0.25, request_id="req-1"))
    session.receive(json.dumps({"type": "Metadata", "request_id": "req-other"}))
    assert session.request_id == "req-1"
    assert session.metadata is not None
    assert session.metadata.request_id == "req-other"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"type": "SpeechStarted", "channel": [0], "timestamp": 0.625},
            [Marker("speech_started", 2000.125)],
        ),
        (
            {"type": "SpeechStarted", "channel": [0], "timestamp": 0.5},
            [Marker("speech_started", 2000.0)],
        ),
        (
            {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.25},
            [Marker("utterance_end", 1000.25)],
        ),
        (
            {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.0},
            [Marker("utterance_end", 2000.5)],
        ),
    ],
)
def test_markers_map_to_wall_clock(payload: dict[str, Any], expected: list[Marker]) -> None:
    session = streaming_session()
    assert session.receive(json.dumps(payload)) == expected
    assert session.statistics().unrecognized == 0


def test_utterance_end_on_a_boundary_is_the_end_of_the_earlier_segment() -> None:
    # last_word_end is an end time: on a boundary it is the end of the segment it ends, not
    # the start of the next one (which was captured after the gap).
    session = streaming_session()
    payload = {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.5}
    assert session.receive(json.dumps(payload)) == [Marker("utterance_end", 1000.5)]


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "SpeechStarted", "channel": [0], "timestamp": 0.0},
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.0},
    ],
)
def test_markers_before_any_audio_are_ignored(payload: dict[str, Any]) -> None:
    session = new_session()
    assert session.receive(json.dumps(payload)) == []
    assert session.statistics() == SessionStatistics()


MALFORMED = [
    pytest.param("not json", "invalid JSON: Expecting value: line 1 column 1 (char 0)", id="text"),
    pytest.param("[]", "expected a JSON object, got array", id="array"),
    pytest.param('{"channel": 1}', "missing field type", id="no-type"),
    pytest.param('{"type": "Mystery"}', "unknown type 'Mystery'", id="unknown-type"),
    pytest.param('{"type": "Results"}', "Results: missing field channel", id="results-no-channel"),
    pytest.param(
        '{"type": "UtteranceEnd", "last_word_end": "1.0"}',
        "UtteranceEnd: field last_word_end is string, expected number",
        id="utterance-end-string",
    ),
    pytest.param(b"\xff\xfe", None, id="binary-not-utf8"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED)
def test_malformed_messages_are_unrecognized_and_counted(
    payload: str | bytes, reason: str | None
) -> None:
    session = streaming_session()
    events = session.receive(payload)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, Unrecognized)
    if reason is not None:
        assert event.reason == reason
        assert event.excerpt == payload
    else:
        assert event.reason.startswith("binary message of 2 bytes is not UTF-8 text")
    assert session.statistics().unrecognized == 1
    assert session.statistics().results == 0
    # The session is unharmed.
    assert session.state is SessionState.OPEN
    assert session.send_audio(FRAME_A, 102.0) == FRAME_A.data


def test_binary_json_is_parsed_like_text() -> None:
    session = streaming_session()
    events = session.receive(results("bytes", start=0.0, duration=0.25).encode())
    assert events[-1] == Confirmed(0.25)


def test_results_still_parse_while_closing() -> None:
    session = streaming_session()
    session.close_stream(102.0)
    assert session.receive(results("", start=0.0, duration=1.25)) == [Confirmed(1.25)]


# --- hostile content: bounded at the door --------------------------------------------------

#: The streaming session has sent 1.25 s; times up to 1.25 + SENT_TOLERANCE_S are accepted.
LIMIT_S = 1.25 + SENT_TOLERANCE_S
BEYOND = "time beyond the audio sent on this connection"
REPAIRED = "text is not valid Unicode: lone surrogates replaced by U+FFFD in"
ALT = "channel.alternatives[0]"


def excerpt(payload: str) -> str:
    return payload[:EXCERPT_CHARS]


#: (payload, the events, (results, unrecognized) counted). Every payload is ASCII JSON, so its
#: excerpt is its first EXCERPT_CHARS characters (marked "X" below and filled in by the test).
X = Unrecognized("", "")
HOSTILE: list[tuple[str, list[SessionEvent], tuple[int, int]]] = [
    (
        # The latest accepted end: padding up to the tolerance past the audio sent.
        results("end", start=1.0, duration=LIMIT_S - 1.0),
        [
            Transcript("end", True, False, False, 0.875, 2000.5, 2001.75, "req-1", ()),
            Confirmed(LIMIT_S),
        ],
        (1, 0),
    ),
    (
        results("late", start=1.0, duration=LIMIT_S - 1.0 + 0.125),
        [Unrecognized(f"Results: {BEYOND}: 2.375 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        # start: 1e20 used to raise OverflowError when the sink formatted the time.
        results("far", start=1e20, duration=0.5),
        [Unrecognized(f"Results: {BEYOND}: 1e+20 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        # duration: 1e9 used to push the duplicate filter's mark 31 years ahead.
        results("long", start=0.0, duration=1e9),
        [Unrecognized(f"Results: {BEYOND}: 1e+09 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        # An empty final beyond the audio confirms nothing (it would release unsent audio).
        results("", start=0.0, duration=1e9),
        [Unrecognized(f"Results: {BEYOND}: 1e+09 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        # A word within its result's tolerance but beyond the audio sent.
        results("w", start=1.0, duration=1.25, words=[word("w", 1.5, 2.5, 0.5)]),
        [Unrecognized(f"Results: {BEYOND}: 2.5 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        # Two finite halves whose sum is not: still beyond.
        results("inf", start=1e308, duration=1e308),
        [Unrecognized(f"Results: {BEYOND}: inf s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        results("neg", start=-0.25, duration=0.5),
        [Unrecognized("Results: negative time in field start: -0.25", "X")],
        (0, 1),
    ),
    (
        results("back", start=1.0, duration=-0.5),
        [Unrecognized("Results: end before start: field duration = -0.5", "X")],
        (0, 1),
    ),
    (
        results("w", start=0.0, duration=1.0, words=[word("w", 0.5, 0.25, 0.5)]),
        [
            Unrecognized(
                f"Results: end before start: field {ALT}.words[0].end = 0.25 < start 0.5", "X"
            )
        ],
        (0, 1),
    ),
    (
        results("w", start=0.0, duration=0.25, words=[word("w", 0.875, 1.0, 0.5)]),
        [
            Unrecognized(
                f"Results: word outside its result: {ALT}.words[0] spans [0.875, 1] s, "
                "the result [0, 0.25] s",
                "X",
            )
        ],
        (0, 1),
    ),
    (
        json.dumps({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 3.0}),
        [Unrecognized(f"UtteranceEnd: {BEYOND}: 3 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        json.dumps({"type": "SpeechStarted", "channel": [0], "timestamp": LIMIT_S + 0.5}),
        [Unrecognized(f"SpeechStarted: {BEYOND}: 2.75 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        # A lone surrogate used to raise UnicodeEncodeError in a sink: repaired, reported.
        results("caf\ud800 ok", start=0.0, duration=0.5, words=[word("caf\udc00", 0, 0.5, 1)]),
        [
            Unrecognized(f"Results: {REPAIRED} {ALT}.transcript, {ALT}.words[0].word", "X"),
            Transcript(
                "caf\ufffd ok",
                True,
                False,
                False,
                0.875,
                1000.0,
                1000.5,
                "req-1",
                (TimedWord("caf\ufffd", 1000.0, 1000.5, 1.0),),
            ),
            Confirmed(0.5),
        ],
        (1, 1),
    ),
    (
        # Repaired text does not save a result whose times are beyond the audio: one reason.
        results("caf\ud800", start=0.0, duration=5.0),
        [Unrecognized(f"Results: {BEYOND}: 5 s, 1.25 s sent", "X")],
        (0, 1),
    ),
    (
        results("x", start=0.0, duration=0.5, request_id="req-\udfff"),
        [
            Unrecognized(f"Results: {REPAIRED} metadata.request_id", "X"),
            Transcript("x", True, False, False, 0.875, 1000.0, 1000.5, "req-\ufffd", ()),
            Confirmed(0.5),
        ],
        (1, 1),
    ),
    (
        json.dumps({"type": "Metadata", "request_id": "\ud800", "duration": 1e9}),
        [
            Unrecognized(f"Metadata: {REPAIRED} request_id", "X"),
            Metadata("\ufffd", 1e9, 0, "", ""),
        ],
        (0, 1),
    ),
]


@pytest.mark.parametrize(("payload", "expected", "counted"), HOSTILE)
def test_hostile_content_is_rejected_or_repaired(
    payload: str, expected: list[SessionEvent], counted: tuple[int, int]
) -> None:
    session = streaming_session()
    wanted = [
        Unrecognized(e.reason, excerpt(payload))
        if isinstance(e, Unrecognized) and e.excerpt == "X"
        else e
        for e in expected
    ]
    assert session.receive(payload) == wanted
    statistics = session.statistics()
    assert (statistics.results, statistics.unrecognized) == counted
    assert session.state is SessionState.OPEN


def test_hostile_content_before_any_audio_is_beyond_it() -> None:
    session = new_session()
    payload = results("", start=0.0, duration=SENT_TOLERANCE_S + 0.25)
    assert session.receive(payload) == [
        Unrecognized(f"Results: {BEYOND}: 1.25 s, 0 s sent", excerpt(payload))
    ]
    assert session.statistics() == SessionStatistics(unrecognized=1)


def test_hostile_results_never_poison_later_ones() -> None:
    """A stream of broken results between good ones: only the good ones reach the duplicate
    filter, each is accepted once, and only good finals confirm audio."""
    session = streaming_session()
    dedup = DuplicateFilter()
    script = [
        results("one", start=0.0, duration=0.25),
        results("poison", start=0.0, duration=1e9),
        results("overflow", start=1e20, duration=1.0),
        results("nan", start=0.25, duration=0.25).replace('"start": 0.25', '"start": NaN'),
        results("", start=0.25, duration=1e9),
        results("two", start=0.25, duration=0.5),
        results("two", start=0.25, duration=0.5),  # a true duplicate: still caught
        results("three", start=0.75, duration=0.5),
    ]
    accepted: list[str] = []
    confirmed: list[float] = []
    for payload in script:
        for item in session.receive(payload):
            if isinstance(item, Transcript) and dedup.accept(item):
                accepted.append(item.text)
            elif isinstance(item, Confirmed):
                confirmed.append(item.offset_s)
    assert accepted == ["one", "two", "three"]
    assert confirmed == [0.25, 0.75, 0.75, 1.25]
    assert dedup.duplicates == 1
    assert session.statistics() == SessionStatistics(sent_s=1.25, results=4, unrecognized=4)


# --- DuplicateFilter ---------------------------------------------------------------------


def transcript(end_s: float, *, is_final: bool) -> Transcript:
    return Transcript("x", is_final, False, False, 1.0, end_s - 1.0, end_s, "r", ())


DUPLICATE_SCRIPT = [
    # (end_s, is_final, accepted, duplicates so far)
    (10.0, True, True, 0),
    (10.0, True, False, 1),  # the same final again
    (10.0005, True, False, 2),  # within 1 ms: still the same audio
    (9.0, True, False, 3),  # older audio
    (9.5, False, False, 3),  # an interim for old audio: dropped, not counted
    (10.002, True, True, 3),
    (11.0, False, True, 3),  # interims do not advance the high-water mark
    (10.5, True, True, 3),
    (10.5, False, False, 3),
    (12.0, True, True, 3),
]


def test_duplicate_filter() -> None:
    dedup = DuplicateFilter()
    for end_s, is_final, accepted, duplicates in DUPLICATE_SCRIPT:
        assert dedup.accept(transcript(end_s, is_final=is_final)) is accepted, (end_s, is_final)
        assert dedup.duplicates == duplicates


@pytest.mark.parametrize("is_final", [True, False])
def test_duplicate_filter_accepts_the_first(is_final: bool) -> None:
    dedup = DuplicateFilter()
    assert dedup.accept(transcript(-5.0, is_final=is_final)) is True
    assert dedup.duplicates == 0


# --- how a stream ends (the session decides) ----------------------------------------------


@pytest.mark.parametrize(
    ("closing", "code", "reason", "expected"),
    [
        pytest.param(True, 1000, "", None, id="asked-and-normal"),
        pytest.param(False, 1000, "", "closed-1000", id="normal-but-not-asked"),
        pytest.param(True, 1011, "NET-0000 internal", "closed-1011", id="error-while-closing"),
        pytest.param(False, 1006, "", "network", id="no-close-frame"),
        pytest.param(False, 1008, "DATA-0000", "closed-1008", id="data-error"),
    ],
)
def test_closed_says_graceful_or_how_it_failed(
    closing: bool, code: int, reason: str, expected: str | None
) -> None:
    session = Session(keepalive_interval_s=4.0, now=0.0)
    if closing:
        session.close_stream(1.0)
    failure = session.closed(code, reason)
    assert (None if failure is None else failure.cause) == expected
    assert session.state is SessionState.CLOSED


def test_a_closing_stream_is_finished_when_metadata_arrives() -> None:
    session = Session(keepalive_interval_s=4.0, now=0.0)
    metadata = '{"type":"Metadata","request_id":"r","duration":1.0,"channels":1}'
    session.receive(metadata)
    assert not session.finished  # Metadata alone: the stream was not asked to close
    session.close_stream(1.0)
    assert not session.finished
    session.receive(metadata)
    assert session.finished


@pytest.mark.parametrize(
    ("now", "sent_s", "next_s", "expected_s"),
    [
        pytest.param(0.0, 0.0, 0.1, 0.0, id="first-frame-at-once"),
        pytest.param(0.0, 1.9, 0.1, 0.0, id="within-the-burst"),
        pytest.param(0.0, 2.0, 0.5, 0.4, id="past-the-burst"),
        pytest.param(8.0, 8.0, 0.1, 0.0, id="live-audio-is-never-held"),
        pytest.param(8.0, 12.0, 0.5, 0.4, id="backlog-at-1.25x"),
    ],
)
def test_replay_pacer(now: float, sent_s: float, next_s: float, expected_s: float) -> None:
    pacer = ReplayPacer(started_at=0.0)
    assert pacer.wait_s(now, sent_s, next_s) == pytest.approx(expected_s)


def test_replay_pacer_never_asks_for_a_wait_that_rounds_away() -> None:
    """A wait of 1e-17 s added to a clock reading of 1000 s is no wait at all: the sender
    would loop without ever sleeping (seen as a hang in virtual time)."""
    pacer = ReplayPacer(started_at=0.0)
    budget_s = 2.0 + 1000.0 * 1.25
    assert pacer.wait_s(1000.0, budget_s - 0.1, 0.1 + 1e-15) == 0.0
    assert pacer.wait_s(1000.0, budget_s - 0.1, 0.1 + 0.00125) == pytest.approx(0.001)
