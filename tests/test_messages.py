"""Tests for dgd.core.messages: parsing server messages, and the control messages."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from dgd.core.messages import (
    CLOSESTREAM_MESSAGE,
    EXCERPT_CHARS,
    FINALIZE_MESSAGE,
    KEEPALIVE_MESSAGE,
    MAX_CODE_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_KEYTERMS,
    MAX_MESSAGE_BYTES,
    WORD_TOLERANCE_S,
    ConfigureFailure,
    ConfigureSuccess,
    Metadata,
    Repaired,
    ServerError,
    ServerMessage,
    SpeechStarted,
    TranscriptResult,
    Unrecognized,
    UtteranceEnd,
    Word,
    configure_message,
    parse_server_message,
)

DATA_DIR = Path(__file__).parent / "data" / "deepgram"
REQUEST_ID = "3b0f6c1e-9d2a-4f7e-8c55-1a2b3c4d5e6f"


def sample(name: str) -> str:
    """A recorded-style message as it arrives on the wire (no trailing newline)."""
    return (DATA_DIR / name).read_text(encoding="utf-8").rstrip("\n")


def excerpt_of(name: str) -> str:
    return sample(name)[:EXCERPT_CHARS]


# --- server messages: well-formed samples -------------------------------------------------

VALID_SAMPLES: list[tuple[str, ServerMessage]] = [
    (
        "results_final.json",
        TranscriptResult(
            transcript="Turn the hallway light off.",
            confidence=0.991,
            is_final=True,
            speech_final=True,
            from_finalize=False,
            start_s=12.3,
            duration_s=1.46,
            words=(
                Word("turn", 12.38, 12.58, 0.998, "Turn", None),
                Word("the", 12.58, 12.7, 0.995, "the", None),
                Word("hallway", 12.7, 13.1, 0.981, "hallway", None),
                Word("light", 13.1, 13.36, 0.99, "light", None),
                Word("off", 13.36, 13.7, 0.991, "off.", None),
            ),
            request_id=REQUEST_ID,
            channel=0,
        ),
    ),
    (
        "results_interim.json",
        TranscriptResult(
            transcript="turn the hallway",
            confidence=0.87,
            is_final=False,
            speech_final=False,
            from_finalize=False,
            start_s=12.3,
            duration_s=0.98,
            words=(
                Word("turn", 12.38, 12.58, 0.91, None, None),
                Word("the", 12.58, 12.7, 0.88, None, None),
                Word("hallway", 12.7, 13.1, 0.8, None, None),
            ),
            request_id=REQUEST_ID,
            channel=0,
        ),
    ),
    (
        "results_from_finalize.json",
        TranscriptResult(
            transcript="please",
            confidence=0.96,
            is_final=True,
            speech_final=False,
            from_finalize=True,
            start_s=13.76,
            duration_s=0.7,
            words=(Word("please", 13.8, 14.2, 0.96, "please.", None),),
            request_id=REQUEST_ID,
            channel=0,
        ),
    ),
    (
        "results_speakers.json",
        TranscriptResult(
            transcript="Hello? Hi there.",
            confidence=0.9,
            is_final=True,
            speech_final=True,
            from_finalize=False,
            start_s=40.0,
            duration_s=2.0,
            words=(
                Word("hello", 40.1, 40.5, 0.93, "Hello?", 0),
                Word("hi", 41.0, 41.2, 0.9, "Hi", 1),
                Word("there", 41.2, 41.6, 0.88, "there.", 1),
            ),
            request_id="5c2e1a90-77aa-4b1c-9e0f-2d3c4b5a6978",
            channel=1,
        ),
    ),
    (
        "results_empty.json",
        TranscriptResult("", 0.0, True, False, False, 0.0, 3.02, (), REQUEST_ID, 0),
    ),
    (
        "results_minimal.json",
        TranscriptResult("ok", 0.0, True, False, False, 5.0, 1.0, (), "", 0),
    ),
    (
        "results_null_optionals.json",
        TranscriptResult("ok", 0.0, False, False, False, 5.5, 0.5, (), "", 0),
    ),
    (
        "metadata.json",
        Metadata(
            request_id=REQUEST_ID,
            duration_s=184.32,
            channels=1,
            created="2026-03-02T10:15:04.117Z",
            sha256="9c1185a5c5e9fc54612808977ee8f548b2258d31bb4c5e8e1f8b3bd4c0a0d7e2",
        ),
    ),
    (
        "metadata_no_audio.json",
        Metadata(
            request_id="0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a",
            duration_s=0.0,
            channels=0,
            created="2026-03-02T10:20:00.001Z",
            sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ),
    ("utterance_end.json", UtteranceEnd(last_word_end_s=13.7, channel=0)),
    ("speech_started.json", SpeechStarted(timestamp_s=12.24, channel=0)),
]


@pytest.mark.parametrize(("name", "expected"), VALID_SAMPLES)
def test_parse_valid_sample(name: str, expected: ServerMessage) -> None:
    assert parse_server_message(sample(name)) == expected


@pytest.mark.parametrize(("name", "expected"), VALID_SAMPLES)
def test_utf8_bytes_parse_like_text(name: str, expected: ServerMessage) -> None:
    assert parse_server_message(sample(name).encode("utf-8")) == expected


def test_numbers_are_floats_even_when_sent_as_integers() -> None:
    result = parse_server_message(sample("results_speakers.json"))
    assert isinstance(result, TranscriptResult)
    assert type(result.start_s) is float
    assert type(result.duration_s) is float
    assert type(result.words[1].start_s) is float


@pytest.mark.parametrize(
    ("start_s", "duration_s", "end_s"),
    [(12.3, 1.46, 13.76), (0.0, 0.0, 0.0), (5.0, 1.0, 6.0)],
)
def test_end_is_start_plus_duration(start_s: float, duration_s: float, end_s: float) -> None:
    result = TranscriptResult("x", 1.0, True, True, False, start_s, duration_s, (), "", 0)
    assert result.end_s == pytest.approx(end_s)


# --- server messages: malformed samples -----------------------------------------------------

BAD_SAMPLES: list[tuple[str, str]] = [
    ("unknown_type.json", "unknown type 'Mystery'"),
    (
        "truncated.json",
        "invalid JSON: Unterminated string starting at: line 1 column 147 (char 146)",
    ),
    (
        "invalid_json.json",
        "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ),
    ("results_missing_alternatives.json", "Results: missing field channel.alternatives"),
    ("results_missing_is_final.json", "Results: missing field is_final"),
    ("results_start_is_string.json", "Results: field start is string, expected number"),
    ("results_duration_is_bool.json", "Results: field duration is boolean, expected number"),
    ("results_bad_word.json", "Results: missing field channel.alternatives[0].words[1].end"),
]


@pytest.mark.parametrize(("name", "reason"), BAD_SAMPLES)
def test_parse_bad_sample(name: str, reason: str) -> None:
    assert parse_server_message(sample(name)) == Unrecognized(reason, excerpt_of(name))


def results_with(**changes: object) -> str:
    """The final Results sample with top-level fields replaced (None value = field removed)."""
    document = json.loads(sample("results_final.json"))
    for key, value in changes.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document)


def alternative_with(**changes: object) -> str:
    """The final Results sample with fields of alternatives[0] replaced (None = removed)."""
    document = json.loads(sample("results_final.json"))
    alternative = document["channel"]["alternatives"][0]
    for key, value in changes.items():
        if value is None:
            del alternative[key]
        else:
            alternative[key] = value
    return json.dumps(document)


def word_with(**changes: object) -> str:
    """The final Results sample with fields of words[0] replaced (None = removed)."""
    document = json.loads(sample("results_final.json"))
    word = document["channel"]["alternatives"][0]["words"][0]
    for key, value in changes.items():
        if value is None:
            del word[key]
        else:
            word[key] = value
    return json.dumps(document)


ALT = "channel.alternatives[0]"

MALFORMED_REASONS: list[tuple[str, str]] = [
    ("", "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    ("   ", "invalid JSON: Expecting value: line 1 column 4 (char 3)"),
    ("[", "invalid JSON: Expecting value: line 1 column 2 (char 1)"),
    ('{"type":"Results"} trailing', "invalid JSON: Extra data: line 1 column 20 (char 19)"),
    ("[" * 100_000, "invalid JSON: nested too deeply"),
    ("null", "expected a JSON object, got null"),
    ("[1, 2]", "expected a JSON object, got array"),
    ('"Results"', "expected a JSON object, got string"),
    ("3.5", "expected a JSON object, got number"),
    ("true", "expected a JSON object, got boolean"),
    ("{}", "missing field type"),
    ('{"type":1}', "field type is number, expected string"),
    ('{"type":null}', "field type is null, expected string"),
    ('{"type":"results"}', "unknown type 'results'"),
    ('{"type":"ERROR","code":"X"}', "unknown type 'ERROR'"),
    ('{"type":"Bad\\u0000Type"}', "unknown type 'Bad\\x00Type'"),
    ('{"type":"Results"}', "Results: missing field channel"),
    (results_with(channel=[0, 1]), "Results: field channel is array, expected object"),
    (
        results_with(channel={"alternatives": {}}),
        "Results: field channel.alternatives is object, expected array",
    ),
    (results_with(channel={"alternatives": []}), "Results: field channel.alternatives is empty"),
    (
        results_with(channel={"alternatives": ["hi"]}),
        f"Results: field {ALT} is string, expected object",
    ),
    (results_with(start=None), "Results: missing field start"),
    (results_with(duration=None), "Results: missing field duration"),
    (results_with(is_final="true"), "Results: field is_final is string, expected boolean"),
    (results_with(is_final=1), "Results: field is_final is number, expected boolean"),
    (results_with(speech_final=0), "Results: field speech_final is number, expected boolean"),
    (results_with(from_finalize="no"), "Results: field from_finalize is string, expected boolean"),
    (results_with(start=False), "Results: field start is boolean, expected number"),
    (results_with(duration=[1.0]), "Results: field duration is array, expected number"),
    (results_with(channel_index=0), "Results: field channel_index is number, expected array"),
    (results_with(channel_index=[]), "Results: field channel_index is empty"),
    (
        results_with(channel_index=[True, 1]),
        "Results: field channel_index[0] is boolean, expected integer",
    ),
    (
        results_with(channel_index=[0.0, 1]),
        "Results: field channel_index[0] is number, expected integer",
    ),
    (results_with(metadata="x"), "Results: field metadata is string, expected object"),
    (
        results_with(metadata={"request_id": 7}),
        "Results: field metadata.request_id is number, expected string",
    ),
    (alternative_with(transcript=None), f"Results: missing field {ALT}.transcript"),
    (
        alternative_with(transcript=["a"]),
        f"Results: field {ALT}.transcript is array, expected string",
    ),
    (
        alternative_with(confidence="high"),
        f"Results: field {ALT}.confidence is string, expected number",
    ),
    (
        alternative_with(confidence=True),
        f"Results: field {ALT}.confidence is boolean, expected number",
    ),
    (alternative_with(words={}), f"Results: field {ALT}.words is object, expected array"),
    (alternative_with(words=[1]), f"Results: field {ALT}.words[0] is number, expected object"),
    (word_with(word=None), f"Results: missing field {ALT}.words[0].word"),
    (word_with(start=None), f"Results: missing field {ALT}.words[0].start"),
    (word_with(end="13"), f"Results: field {ALT}.words[0].end is string, expected number"),
    (
        word_with(confidence=False),
        f"Results: field {ALT}.words[0].confidence is boolean, expected number",
    ),
    (
        word_with(punctuated_word=1),
        f"Results: field {ALT}.words[0].punctuated_word is number, expected string",
    ),
    (
        word_with(speaker=True),
        f"Results: field {ALT}.words[0].speaker is boolean, expected integer",
    ),
    (word_with(speaker=1.5), f"Results: field {ALT}.words[0].speaker is number, expected integer"),
    (results_with(start=float("inf")), "Results: field start is not a finite number"),
    (results_with(start=float("nan")), "Results: field start is not a finite number"),
    (results_with(start=10**400), "Results: field start is not a finite number"),
    (
        '{"type":"SpeechStarted","timestamp":' + "9" * 5000 + "}",
        "invalid JSON: Exceeds the limit (4300 digits) for "
        "integer string conversion: value has 5000 di",
    ),
    ('{"type":"UtteranceEnd","channel":[0,1]}', "UtteranceEnd: missing field last_word_end"),
    (
        '{"type":"UtteranceEnd","last_word_end":"1"}',
        "UtteranceEnd: field last_word_end is string, expected number",
    ),
    (
        '{"type":"UtteranceEnd","last_word_end":1,"channel":{}}',
        "UtteranceEnd: field channel is object, expected array",
    ),
    ('{"type":"SpeechStarted"}', "SpeechStarted: missing field timestamp"),
    (
        '{"type":"SpeechStarted","timestamp":true}',
        "SpeechStarted: field timestamp is boolean, expected number",
    ),
    (
        '{"type":"SpeechStarted","timestamp":1,"channel":["0"]}',
        "SpeechStarted: field channel[0] is string, expected integer",
    ),
    ('{"type":"Metadata","duration":"184"}', "Metadata: field duration is string, expected number"),
    ('{"type":"Metadata","channels":1.0}', "Metadata: field channels is number, expected integer"),
    (
        '{"type":"Metadata","request_id":["x"]}',
        "Metadata: field request_id is array, expected string",
    ),
    ('{"type":"Metadata","created":0}', "Metadata: field created is number, expected string"),
    ('{"type":"Metadata","sha256":false}', "Metadata: field sha256 is boolean, expected string"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED_REASONS)
def test_malformed_message_reason(payload: str, reason: str) -> None:
    result = parse_server_message(payload)
    assert isinstance(result, Unrecognized)
    assert result.reason == reason


# --- hostile content: bounded at the door -----------------------------------------------------

#: The final sample as parsed; the hostile cases below are copies of it with one thing broken.
FINAL = VALID_SAMPLES[0][1]
assert isinstance(FINAL, TranscriptResult)
WORD0 = f"{ALT}.words[0]"

#: Times that cannot describe audio: rejected whole (no transcript, no confirmation), with the
#: reason the log shows. The result spans [12.3, 13.76] s; its first word [12.38, 12.58] s.
IMPOSSIBLE_TIMES: list[tuple[str, str]] = [
    (results_with(start=-0.5), "Results: negative time in field start: -0.5"),
    (results_with(start=-1e-9), "Results: negative time in field start: -1e-09"),
    (results_with(duration=-1.46), "Results: end before start: field duration = -1.46"),
    (results_with(start=float("nan")), "Results: field start is not a finite number"),
    (results_with(duration=float("-inf")), "Results: field duration is not a finite number"),
    (word_with(start=-1), f"Results: negative time in field {WORD0}.start: -1"),
    (word_with(end=float("nan")), f"Results: field {WORD0}.end is not a finite number"),
    (
        word_with(end=12.3),
        f"Results: end before start: field {WORD0}.end = 12.3 < start 12.38",
    ),
    (
        word_with(start=11.7, end=11.79),
        f"Results: word outside its result: {WORD0} spans [11.7, 11.79] s, "
        "the result [12.3, 13.76] s",
    ),
    (
        word_with(start=13.7, end=14.5),
        f"Results: word outside its result: {WORD0} spans [13.7, 14.5] s, "
        "the result [12.3, 13.76] s",
    ),
    (
        # A result of no length: its first two words are within the tolerance, the third not.
        results_with(duration=0.0),
        f"Results: word outside its result: {ALT}.words[2] spans [12.7, 13.1] s, "
        "the result [12.3, 12.3] s",
    ),
    (
        '{"type":"UtteranceEnd","last_word_end":-0.5}',
        "UtteranceEnd: negative time in field last_word_end: -0.5",
    ),
    (
        '{"type":"SpeechStarted","timestamp":-2}',
        "SpeechStarted: negative time in field timestamp: -2",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), IMPOSSIBLE_TIMES)
def test_impossible_times_are_rejected(payload: str, reason: str) -> None:
    assert parse_server_message(payload) == Unrecognized(reason, payload[:EXCERPT_CHARS])


#: Times at the edge of what is accepted: parsed as they are. (How far beyond the audio sent
#: a time may lie is the session's check: tests/test_session.py.)
EDGE_TIMES: list[tuple[str, TranscriptResult]] = [
    (
        results_with(start=0, duration=0),
        dataclasses.replace(FINAL, start_s=0.0, duration_s=0.0, words=()),
    ),
    (
        word_with(start=12.3 - WORD_TOLERANCE_S + 0.125, end=12.3),
        dataclasses.replace(FINAL, words=(Word("turn", 11.925, 12.3, 0.998, "Turn", None),)),
    ),
    (
        word_with(start=12.5, end=12.5),  # a word of no length
        dataclasses.replace(FINAL, words=(Word("turn", 12.5, 12.5, 0.998, "Turn", None),)),
    ),
    (
        word_with(start=13.5, end=13.76 + WORD_TOLERANCE_S - 0.125),
        dataclasses.replace(FINAL, words=(Word("turn", 13.5, 14.135, 0.998, "Turn", None),)),
    ),
    (
        # An absurd time that is well-formed: only the session, which knows what was sent,
        # can tell it is beyond the audio.
        results_with(start=1e20),
        dataclasses.replace(FINAL, start_s=1e20, words=()),
    ),
]


@pytest.mark.parametrize(("payload", "expected"), EDGE_TIMES)
def test_edge_times_are_accepted(payload: str, expected: TranscriptResult) -> None:
    document = json.loads(payload)
    alternative = document["channel"]["alternatives"][0]
    if len(expected.words) == 1:
        alternative["words"] = alternative["words"][:1]
    elif not expected.words:
        alternative["words"] = []
    assert parse_server_message(json.dumps(document)) == expected


REPAIRED_PREFIX = "text is not valid Unicode: lone surrogates replaced by U+FFFD in"

#: Text that is not valid Unicode (lone surrogates) is repaired with U+FFFD, field by field;
#: the message is used, and the repair is reported.
LONE_SURROGATES: list[tuple[str, ServerMessage]] = [
    (
        alternative_with(transcript="Turn the \ud800 light off."),
        Repaired(
            dataclasses.replace(FINAL, transcript="Turn the \ufffd light off."),
            f"Results: {REPAIRED_PREFIX} {ALT}.transcript",
            "",
        ),
    ),
    (
        word_with(word="\udfff", punctuated_word="T\ud83d\udc00\udbff"),
        Repaired(
            dataclasses.replace(
                FINAL,
                words=(
                    Word("\ufffd", 12.38, 12.58, 0.998, "T\U0001f400\ufffd", None),
                    *FINAL.words[1:],
                ),
            ),
            f"Results: {REPAIRED_PREFIX} {WORD0}.word, {WORD0}.punctuated_word",
            "",
        ),
    ),
    (
        results_with(metadata={"request_id": "\ud800req"}),
        Repaired(
            dataclasses.replace(FINAL, request_id="\ufffdreq"),
            f"Results: {REPAIRED_PREFIX} metadata.request_id",
            "",
        ),
    ),
    (
        json.dumps(
            {
                "type": "Results",
                "start": 0,
                "duration": 1,
                "is_final": False,
                "channel": {
                    "alternatives": [
                        {
                            "transcript": "\ud800",
                            "words": [
                                {"word": "\ud800", "start": 0, "end": 1},
                                {"word": "\ud800", "start": 0, "end": 1},
                                {"word": "ok", "start": 0, "end": 1},
                                {"word": "\ud800", "start": 0, "end": 1},
                            ],
                        }
                    ]
                },
            }
        ),
        Repaired(
            TranscriptResult(
                "\ufffd",
                0.0,
                False,
                False,
                False,
                0.0,
                1.0,
                (
                    Word("\ufffd", 0.0, 1.0, 0.0, None, None),
                    Word("\ufffd", 0.0, 1.0, 0.0, None, None),
                    Word("ok", 0.0, 1.0, 0.0, None, None),
                    Word("\ufffd", 0.0, 1.0, 0.0, None, None),
                ),
                "",
                0,
            ),
            f"Results: {REPAIRED_PREFIX} {ALT}.transcript, {ALT}.words[0].word, "
            f"{ALT}.words[1].word and 1 more",
            "",
        ),
    ),
    (
        '{"type":"Metadata","request_id":"\\ud800","created":"2026\\udfff","sha256":"ab"}',
        Repaired(
            Metadata("\ufffd", 0.0, 0, "2026\ufffd", "ab"),
            f"Metadata: {REPAIRED_PREFIX} request_id, created",
            "",
        ),
    ),
    # A surrogate pair escaped in JSON is one character; U+FFFD itself is valid text.
    (
        alternative_with(transcript="\ud83d\ude00 \ufffd"),
        dataclasses.replace(FINAL, transcript="\U0001f600 \ufffd"),
    ),
    # A lone surrogate in a field dgd does not read needs no repair.
    (
        results_with(metadata={"request_id": "r", "model_info": {"name": "\ud800"}}),
        dataclasses.replace(FINAL, request_id="r"),
    ),
]


@pytest.mark.parametrize(("payload", "expected"), LONE_SURROGATES)
def test_lone_surrogates_are_repaired(payload: str, expected: ServerMessage) -> None:
    if isinstance(expected, Repaired):
        expected = dataclasses.replace(expected, excerpt=payload[:EXCERPT_CHARS])
    assert parse_server_message(payload) == expected
    # The same text in a binary frame (UTF-8) is repaired the same way.
    assert parse_server_message(payload.encode("utf-8")) == expected


def test_raw_lone_surrogate_in_text_is_repaired_and_the_excerpt_escaped() -> None:
    # json.dumps(ensure_ascii=False) keeps the lone surrogate as a character: such a str
    # cannot come from a UTF-8 decoder, but parsing must not care how it came to be.
    payload = json.dumps(
        {"type": "Metadata", "request_id": "\ud800"}, ensure_ascii=False, separators=(",", ":")
    )
    assert parse_server_message(payload) == Repaired(
        Metadata("\ufffd", 0.0, 0, "", ""),
        f"Metadata: {REPAIRED_PREFIX} request_id",
        '{"type":"Metadata","request_id":"\\ud800"}',
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"type":"Metadata"}', Metadata("", 0.0, 0, "", "")),
        ('{"type":"UtteranceEnd","last_word_end":2}', UtteranceEnd(2.0, 0)),
        ('{"type":"SpeechStarted","timestamp":0,"channel":[3,4]}', SpeechStarted(0.0, 3)),
        ('{"type":"UtteranceEnd","last_word_end":0.5,"channel":null}', UtteranceEnd(0.5, 0)),
        # Extra unknown fields are ignored; they appear as Deepgram adds features.
        ('{"type":"SpeechStarted","timestamp":1.5,"new_field":{"x":[1]}}', SpeechStarted(1.5, 0)),
        # JSON may escape anything; the parser sees the decoded text.
        ('{"type":"Speech\\u0053tarted","timestamp":1}', SpeechStarted(1.0, 0)),
        # The last key wins for duplicates, as in json.loads.
        ('{"type":"Mystery","type":"UtteranceEnd","last_word_end":1}', UtteranceEnd(1.0, 0)),
    ],
)
def test_defaults_and_leniency(payload: str, expected: ServerMessage) -> None:
    assert parse_server_message(payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            b"\xff\xfe\x00{",
            Unrecognized(
                "binary message of 4 bytes is not UTF-8 text (invalid start byte at byte 0)",
                "\\xff\\xfe\\x00{",
            ),
        ),
        (
            b'{"type":"SpeechStarted","timestamp":1}\xc3',
            Unrecognized(
                "binary message of 39 bytes is not UTF-8 text (unexpected end of data at byte 38)",
                '{"type":"SpeechStarted","timestamp":1}\\xc3',
            ),
        ),
        (b"", Unrecognized("invalid JSON: Expecting value: line 1 column 1 (char 0)", "")),
        (
            b"\x00\x01",
            Unrecognized("invalid JSON: Expecting value: line 1 column 1 (char 0)", "\\x00\\x01"),
        ),
        (
            b'{"type":"Results"}\n',
            Unrecognized("Results: missing field channel", '{"type":"Results"}\\n'),
        ),
        (
            '{"type":"Wörter"}'.encode(),
            Unrecognized("unknown type 'Wörter'", '{"type":"Wörter"}'),
        ),
    ],
)
def test_bytes_payload(payload: bytes, expected: Unrecognized) -> None:
    assert parse_server_message(payload) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("x" * (1 << 20), f"message of 1048576 characters exceeds {MAX_MESSAGE_BYTES}"),
        (b"x" * (1 << 20), f"message of 1048576 bytes exceeds {MAX_MESSAGE_BYTES}"),
        (
            " " * (MAX_MESSAGE_BYTES + 1),
            f"message of {MAX_MESSAGE_BYTES + 1} characters exceeds {MAX_MESSAGE_BYTES}",
        ),
    ],
)
def test_oversized_message_rejected_before_parsing(payload: str | bytes, reason: str) -> None:
    result = parse_server_message(payload)
    assert isinstance(result, Unrecognized)
    assert result.reason == reason
    assert len(result.excerpt) == EXCERPT_CHARS


def test_message_at_the_cap_is_parsed() -> None:
    body = '{"type":"SpeechStarted","timestamp":1}'
    payload = body + " " * (MAX_MESSAGE_BYTES - len(body))
    assert len(payload) == MAX_MESSAGE_BYTES
    assert parse_server_message(payload) == SpeechStarted(1.0, 0)


def test_large_plausible_results_is_parsed() -> None:
    # A final with 1000 diarized words (~ several minutes of speech) fits under the cap.
    words = [
        {
            "word": "word",
            "start": i * 0.3,
            "end": i * 0.3 + 0.25,
            "confidence": 0.98,
            "punctuated_word": "Word,",
            "speaker": i % 3,
            "speaker_confidence": 0.5,
        }
        for i in range(1000)
    ]
    document = json.loads(sample("results_final.json"))
    document["channel"]["alternatives"][0]["words"] = words
    document["start"], document["duration"] = 0.0, 300.0  # the words lie within the result
    payload = json.dumps(document)
    assert len(payload) < MAX_MESSAGE_BYTES
    result = parse_server_message(payload)
    assert isinstance(result, TranscriptResult)
    assert len(result.words) == 1000
    assert result.words[999] == Word("word", 299.7, 299.95, 0.98, "Word,", 0)


@pytest.mark.parametrize(
    ("payload", "excerpt"),
    [
        ('{"type":"X",\n\t"a":1}', '{"type":"X",\\n\\t"a":1}'),
        ('{"type":"X","a":"\ud800"}', '{"type":"X","a":"\\ud800"}'),
        ("é" * 200, "é" * EXCERPT_CHARS),
        # Escapes count towards the limit and are never cut in half.
        ("\x00" * 200, "\\x00" * (EXCERPT_CHARS // 4)),
        ("a" + "\x00" * 200, "a" + "\\x00" * ((EXCERPT_CHARS - 1) // 4)),
    ],
)
def test_excerpt_is_printable_and_bounded(payload: str, excerpt: str) -> None:
    result = parse_server_message(payload)
    assert isinstance(result, Unrecognized)
    assert result.excerpt == excerpt
    assert result.excerpt.isprintable()
    assert len(result.excerpt) <= EXCERPT_CHARS


# --- fuzzing: nothing raises ----------------------------------------------------------------

MESSAGE_TYPES = (TranscriptResult, UtteranceEnd, SpeechStarted, Metadata, Repaired, Unrecognized)


def random_json_value(rng: random.Random, depth: int = 0) -> object:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-(10**20), 10**20)
    if choice == 3:
        return rng.choice([0.0, -1.5, 1e308, 3.25, rng.random()])
    if choice == 4:
        return "".join(chr(rng.randrange(0x11000)) for _ in range(rng.randrange(6)))
    if choice == 5:
        return rng.choice(["Results", "Metadata", "UtteranceEnd", "SpeechStarted", ""])
    if choice == 6:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["type", "channel", "alternatives", "transcript", "words", "start", "end", "x"]
    return {rng.choice(keys): random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate_tree(rng: random.Random, node: object) -> object:
    """Replace or delete one randomly chosen node of a parsed JSON tree."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        if rng.random() < 0.2:
            return {k: v for k, v in node.items() if k != key}
        return {**node, key: mutate_tree(rng, node[key])}
    if isinstance(node, list) and node and rng.random() < 0.8:
        index = rng.randrange(len(node))
        return [*node[:index], mutate_tree(rng, node[index]), *node[index + 1 :]]
    return random_json_value(rng)


SAMPLE_NAMES = sorted(path.name for path in DATA_DIR.glob("*.json"))


def test_fuzz_random_bytes_never_raise() -> None:
    rng = random.Random(20260302)
    for _ in range(3000):
        payload = rng.randbytes(rng.randrange(64))
        result = parse_server_message(payload)
        assert isinstance(result, MESSAGE_TYPES)
        assert isinstance(parse_server_message(payload.decode("latin-1")), MESSAGE_TYPES)


def test_fuzz_mutated_samples_never_raise() -> None:
    rng = random.Random(7)
    alphabet = '{}[]":,0123456789.eE-+ truefalsnl\\u\x00é'
    texts = [sample(name) for name in SAMPLE_NAMES]
    for _ in range(3000):
        text = rng.choice(texts)
        chars = list(text)
        for _ in range(rng.randrange(1, 6)):
            position = rng.randrange(len(chars) + 1)
            operation = rng.randrange(3)
            if operation == 0 and position < len(chars):
                del chars[position]
            elif operation == 1:
                chars.insert(position, rng.choice(alphabet))
            elif position < len(chars):
                chars[position] = rng.choice(alphabet)
        mutated = "".join(chars)
        assert isinstance(parse_server_message(mutated), MESSAGE_TYPES)
        assert isinstance(
            parse_server_message(mutated[: rng.randrange(len(mutated) + 1)]), MESSAGE_TYPES
        )


def test_fuzz_structural_mutations_never_raise() -> None:
    rng = random.Random(42)
    trees = []
    for name in SAMPLE_NAMES:
        try:
            trees.append(json.loads(sample(name)))
        except json.JSONDecodeError:
            continue
    kinds_seen: set[type] = set()
    for _ in range(5000):
        tree = mutate_tree(rng, rng.choice(trees))
        payload = json.dumps(tree)
        result = parse_server_message(payload)
        assert isinstance(result, MESSAGE_TYPES)
        assert parse_server_message(payload.encode("utf-8")) == result
        kinds_seen.add(type(result))
    # The mutations must exercise both the accepting and the rejecting paths.
    assert kinds_seen == set(MESSAGE_TYPES)


# --- control messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constant", "expected"),
    [
        (KEEPALIVE_MESSAGE, '{"type":"KeepAlive"}'),
        (FINALIZE_MESSAGE, '{"type":"Finalize"}'),
        (CLOSESTREAM_MESSAGE, '{"type":"CloseStream"}'),
    ],
)
def test_control_messages_are_exact(constant: str, expected: str) -> None:
    assert constant == expected
    assert json.loads(constant) == {"type": json.loads(expected)["type"]}


@pytest.mark.parametrize(
    ("keyterms", "numerals", "expected"),
    [
        pytest.param(None, None, '{"type":"Configure"}', id="nothing"),
        pytest.param(
            ("Acme", "customer service"),
            None,
            '{"type":"Configure","keyterms":["Acme","customer service"]}',
            id="keyterms",
        ),
        pytest.param((), None, '{"type":"Configure","keyterms":[]}', id="clear-keyterms"),
        pytest.param(
            None, True, '{"type":"Configure","features":{"numerals":true}}', id="numerals-on"
        ),
        pytest.param(
            ("Zoë",),
            False,
            '{"type":"Configure","keyterms":["Zoë"],"features":{"numerals":false}}',
            id="both-unicode-kept",
        ),
    ],
)
def test_configure_message(
    keyterms: tuple[str, ...] | None, numerals: bool | None, expected: str
) -> None:
    assert configure_message(keyterms=keyterms, numerals=numerals) == expected


# --- Error and the answers to Configure ------------------------------------------------------

LONG = "d" * (MAX_DESCRIPTION_CHARS + 50)

CONTROL_ANSWERS: list[tuple[str, ServerMessage]] = [
    (
        '{"type":"Error","code":"INTERNAL_SERVER_ERROR",'
        '"description":"An internal server error occurred while processing the request"}',
        ServerError(
            "INTERNAL_SERVER_ERROR",
            "An internal server error occurred while processing the request",
            "",
        ),
    ),
    ('{"type":"Error"}', ServerError("", "", "")),
    ('{"type":"Error","code":null,"description":null}', ServerError("", "", "")),
    (
        '{"type":"Error","variant":"Error","description":"bad keyterms","code":"K"}',
        ServerError("K", "bad keyterms", "Error"),
    ),
    # Bounded and printable at the door: a control character, a lone surrogate, a long text.
    (
        json.dumps({"type": "Error", "code": "A\nB\ud800", "description": LONG}),
        ServerError("A\\nB\\ud800", "d" * MAX_DESCRIPTION_CHARS, ""),
    ),
    (
        json.dumps({"type": "Error", "code": "C" * 100}),
        ServerError("C" * MAX_CODE_CHARS, "", ""),
    ),
    (
        '{"type":"ConfigureSuccess","request_id":"550e8400-e29b-41d4-a716-446655440000",'
        '"keyterms":["Deepgram","customer service"]}',
        ConfigureSuccess("550e8400-e29b-41d4-a716-446655440000", ("Deepgram", "customer service")),
    ),
    ('{"type":"ConfigureSuccess"}', ConfigureSuccess("", None)),
    ('{"type":"ConfigureSuccess","keyterms":[]}', ConfigureSuccess("", ())),
    ('{"type":"ConfigureSuccess","keyterms":null}', ConfigureSuccess("", None)),
    (
        '{"type":"ConfigureFailure","request_id":"r","code":"INVALID","description":"no"}',
        ConfigureFailure("r", "INVALID", "no"),
    ),
    ('{"type":"ConfigureFailure"}', ConfigureFailure("", "", "")),
]


@pytest.mark.parametrize(("payload", "expected"), CONTROL_ANSWERS)
def test_error_and_configure_answers(payload: str, expected: ServerMessage) -> None:
    assert parse_server_message(payload) == expected
    assert parse_server_message(payload.encode()) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"type":"Error","code":7}', "Error: field code is number, expected string"),
        (
            '{"type":"Error","description":{}}',
            "Error: field description is object, expected string",
        ),
        (
            '{"type":"ConfigureSuccess","keyterms":"Acme"}',
            "ConfigureSuccess: field keyterms is string, expected array",
        ),
        (
            '{"type":"ConfigureSuccess","keyterms":["a",1]}',
            "ConfigureSuccess: field keyterms[1] is number, expected string",
        ),
        (
            json.dumps({"type": "ConfigureSuccess", "keyterms": ["k"] * (MAX_KEYTERMS + 1)}),
            f"ConfigureSuccess: field keyterms has {MAX_KEYTERMS + 1} items, "
            f"more than {MAX_KEYTERMS}",
        ),
        (
            '{"type":"ConfigureFailure","code":false}',
            "ConfigureFailure: field code is boolean, expected string",
        ),
    ],
)
def test_bad_error_and_configure_answers(payload: str, reason: str) -> None:
    result = parse_server_message(payload)
    assert isinstance(result, Unrecognized)
    assert result.reason == reason


@pytest.mark.parametrize(
    ("message", "described"),
    [
        (ServerError("NET-0001", "no audio", ""), "NET-0001: no audio"),
        (ServerError("", "no audio", "Error"), "Error: no audio"),
        (ServerError("", "", ""), "no code or description"),
        (ConfigureFailure("r", "", "too many keyterms"), "too many keyterms"),
        (ConfigureFailure("r", "", ""), "no reason given"),
    ],
)
def test_describe(message: ServerError | ConfigureFailure, described: str) -> None:
    assert message.describe() == described
