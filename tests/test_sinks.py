"""Transcript sinks (dgd.daemon.sinks): RFC 3339 times, journald fields, JSON lines, and the writer.

journald is replaced by a list-backed ``journal_send`` (the port the sink is built on); the
JSON-lines file is a real file in ``tmp_path``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest

from dgd.core.config import OutputConfig
from dgd.core.events import TimedWord, Transcript
from dgd.daemon.sinks import (
    PRIORITY_DEBUG,
    PRIORITY_INFO,
    TranscriptSinks,
    journal_fields,
    jsonl_record,
    rfc3339,
)

if TYPE_CHECKING:
    from pathlib import Path

T = 1_795_470_001.0  # 2026-11-23T21:40:01Z


class JournalRecorder:
    """Records every ``journal_send`` call as one dict (``MESSAGE`` included)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def __call__(self, MESSAGE: str, **fields: str) -> None:
        self.entries.append({"MESSAGE": MESSAGE, **fields})


class FailingJournal:
    """A journal whose socket is gone for the first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.entries: list[dict[str, str]] = []

    def __call__(self, MESSAGE: str, **fields: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        self.entries.append({"MESSAGE": MESSAGE, **fields})


FINAL = Transcript(
    text="Hello, wörld.",
    is_final=True,
    speech_final=True,
    from_finalize=False,
    confidence=0.98765,
    start_s=T + 0.25,
    end_s=T + 1.5,
    request_id="req-1",
    words=(
        TimedWord("Hello,", T + 0.25, T + 0.75, 0.5),
        TimedWord("wörld.", T + 0.75, T + 1.5, 0.875),
    ),
)
INTERIM = Transcript(
    text="hello",
    is_final=False,
    speech_final=False,
    from_finalize=False,
    confidence=0.5,
    start_s=T + 0.25,
    end_s=T + 0.75,
    request_id="req-1",
    words=(),
)


# --- rfc3339 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wall_s", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (T, "2026-11-23T21:40:01.000Z"),
        (T + 0.25, "2026-11-23T21:40:01.250Z"),
        (T + 0.234, "2026-11-23T21:40:01.234Z"),
        (T + 59.0, "2026-11-23T21:41:00.000Z"),
        (1.5, "1970-01-01T00:00:01.500Z"),
        # Milliseconds are truncated, not rounded (as isoformat does).
        (1.9995, "1970-01-01T00:00:01.999Z"),
        (0.0005, "1970-01-01T00:00:00.000Z"),
        (951_782_400.0, "2000-02-29T00:00:00.000Z"),  # a leap day
        (4_102_444_799.5, "2099-12-31T23:59:59.500Z"),
    ],
)
def test_rfc3339(wall_s: float, expected: str) -> None:
    assert rfc3339(wall_s) == expected


def test_rfc3339_does_not_depend_on_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Pacific/Auckland")
    time.tzset()
    try:
        assert rfc3339(T) == "2026-11-23T21:40:01.000Z"
    finally:
        monkeypatch.undo()
        time.tzset()


# --- journal_fields / jsonl_record -------------------------------------------------------


def test_journal_fields_of_a_final() -> None:
    assert journal_fields(FINAL) == {
        "DGD_EVENT": "transcript",
        "DGD_IS_FINAL": "true",
        "DGD_SPEECH_FINAL": "true",
        "DGD_FROM_FINALIZE": "false",
        "DGD_CONFIDENCE": "0.988",
        "DGD_START": "2026-11-23T21:40:01.250Z",
        "DGD_END": "2026-11-23T21:40:02.500Z",
        "DGD_REQUEST_ID": "req-1",
        "SYSLOG_IDENTIFIER": "dgd",
        "PRIORITY": "6",
    }


def test_journal_fields_of_an_interim() -> None:
    assert journal_fields(INTERIM) == {
        "DGD_EVENT": "transcript",
        "DGD_IS_FINAL": "false",
        "DGD_SPEECH_FINAL": "false",
        "DGD_FROM_FINALIZE": "false",
        "DGD_CONFIDENCE": "0.500",
        "DGD_START": "2026-11-23T21:40:01.250Z",
        "DGD_END": "2026-11-23T21:40:01.750Z",
        "DGD_REQUEST_ID": "req-1",
        "SYSLOG_IDENTIFIER": "dgd",
        "PRIORITY": "7",
    }
    assert (PRIORITY_INFO, PRIORITY_DEBUG) == (6, 7)


def test_journal_fields_are_upper_case_strings() -> None:
    # journald keeps only upper-case field names.
    fields = journal_fields(FINAL)
    assert all(key.isupper() and isinstance(value, str) for key, value in fields.items())
    assert "MESSAGE" not in fields


def test_jsonl_record_of_a_final() -> None:
    assert jsonl_record(FINAL) == {
        "text": "Hello, wörld.",
        "is_final": True,
        "speech_final": True,
        "from_finalize": False,
        "confidence": 0.98765,
        "start": "2026-11-23T21:40:01.250Z",
        "end": "2026-11-23T21:40:02.500Z",
        "request_id": "req-1",
        "words": [
            {
                "word": "Hello,",
                "start": "2026-11-23T21:40:01.250Z",
                "end": "2026-11-23T21:40:01.750Z",
                "confidence": 0.5,
            },
            {
                "word": "wörld.",
                "start": "2026-11-23T21:40:01.750Z",
                "end": "2026-11-23T21:40:02.500Z",
                "confidence": 0.875,
            },
        ],
    }


def test_jsonl_record_without_words() -> None:
    record = jsonl_record(INTERIM)
    assert record["words"] == []
    assert record["is_final"] is False


# --- TranscriptSinks ---------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    ("interim", "emitted", "expected_texts"),
    [
        (False, [FINAL, INTERIM, FINAL], ["Hello, wörld.", "Hello, wörld."]),
        (True, [FINAL, INTERIM, FINAL], ["Hello, wörld.", "hello", "Hello, wörld."]),
        (False, [INTERIM, INTERIM], []),
        (True, [INTERIM], ["hello"]),
    ],
)
def test_sinks_write_finals_and_interims_only_when_asked(
    tmp_path: Path, interim: bool, emitted: list[Transcript], expected_texts: list[str]
) -> None:
    path = tmp_path / "transcripts.jsonl"
    journal = JournalRecorder()
    sinks = TranscriptSinks(
        OutputConfig(journald=True, jsonl=str(path), interim=interim), journal, echo_to_log=False
    )
    for transcript in emitted:
        sinks.emit(transcript)
    assert [e["MESSAGE"] for e in journal.entries] == expected_texts
    if expected_texts:
        assert [r["text"] for r in read_lines(path)] == expected_texts
    else:
        assert not path.exists()
    assert sinks.written == len(expected_texts)
    sinks.close()


def test_journal_entry_is_message_plus_fields() -> None:
    journal = JournalRecorder()
    sinks = TranscriptSinks(OutputConfig(journald=True), journal, echo_to_log=False)
    sinks.emit(FINAL)
    assert journal.entries == [{"MESSAGE": "Hello, wörld.", **journal_fields(FINAL)}]


def test_jsonl_lines_are_flushed_one_object_a_line(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "t.jsonl"  # the directory is created
    sinks = TranscriptSinks(OutputConfig(journald=False, jsonl=str(path)), None, echo_to_log=False)
    sinks.emit(FINAL)
    # Not closed: the line is already visible to a reader.
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    assert "wörld".encode() in raw  # UTF-8, not \\u escapes
    assert read_lines(path) == [jsonl_record(FINAL)]
    sinks.emit(FINAL)
    assert read_lines(path) == [jsonl_record(FINAL)] * 2
    sinks.close()


def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "earlier"}\n', encoding="utf-8")
    sinks = TranscriptSinks(OutputConfig(journald=False, jsonl=str(path)), None, echo_to_log=False)
    sinks.emit(FINAL)
    sinks.close()
    assert [r["text"] for r in read_lines(path)] == ["earlier", "Hello, wörld."]


@pytest.mark.parametrize(
    ("journald", "journal_given", "expected_entries"),
    [(True, True, 1), (False, True, 0), (True, False, 0)],
)
def test_journald_switch(journald: bool, journal_given: bool, expected_entries: int) -> None:
    journal = JournalRecorder()
    sinks = TranscriptSinks(
        OutputConfig(journald=journald), journal if journal_given else None, echo_to_log=False
    )
    sinks.emit(FINAL)
    assert len(journal.entries) == expected_entries


def test_journal_oserror_is_survived_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dgd")
    path = tmp_path / "t.jsonl"
    journal = FailingJournal(failures=2)
    sinks = TranscriptSinks(OutputConfig(jsonl=str(path)), journal, echo_to_log=False)
    sinks.emit(FINAL)
    sinks.emit(FINAL)
    errors = [r for r in caplog.records if getattr(r, "DGD_EVENT", None) == "sink_error"]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert errors[0].getMessage() == "cannot write to journald: [Errno 111] Connection refused"
    # The JSON-lines copy went through both times, and the journal recovers.
    assert len(read_lines(path)) == 2
    sinks.emit(FINAL)
    assert len(journal.entries) == 1
    assert sinks.written == 3
    # After a success, a new failure is reported again.
    journal.failures = 1
    sinks.emit(FINAL)
    errors = [r for r in caplog.records if getattr(r, "DGD_EVENT", None) == "sink_error"]
    assert len(errors) == 2
    sinks.close()


def test_jsonl_error_is_logged_with_the_key_and_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dgd")
    journal = JournalRecorder()
    sinks = TranscriptSinks(
        OutputConfig(journald=True, jsonl=str(tmp_path)), journal, echo_to_log=False
    )  # a directory: open() fails
    sinks.emit(FINAL)
    assert len(journal.entries) == 1  # journald still got it
    errors = [r for r in caplog.records if getattr(r, "DGD_EVENT", None) == "sink_error"]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert message.startswith(f"cannot write transcript to {tmp_path}: ")
    assert "output.jsonl" in message


def test_reconfigure_to_a_new_jsonl_path_reopens(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sinks = TranscriptSinks(OutputConfig(journald=False, jsonl=str(first)), None, echo_to_log=False)
    sinks.emit(FINAL)
    sinks.reconfigure(OutputConfig(journald=False, jsonl=str(second)))
    sinks.emit(FINAL)
    sinks.reconfigure(OutputConfig(journald=False, jsonl=""))  # off
    sinks.emit(FINAL)
    sinks.close()
    assert len(read_lines(first)) == 1
    assert len(read_lines(second)) == 1


def test_reconfigure_interim_takes_effect(tmp_path: Path) -> None:
    journal = JournalRecorder()
    sinks = TranscriptSinks(OutputConfig(interim=False), journal, echo_to_log=False)
    sinks.emit(INTERIM)
    sinks.reconfigure(OutputConfig(interim=True))
    sinks.emit(INTERIM)
    assert [e["PRIORITY"] for e in journal.entries] == ["7"]


def test_echo_to_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dgd")
    sinks = TranscriptSinks(OutputConfig(journald=False, interim=True), None, echo_to_log=True)
    sinks.emit(FINAL)
    sinks.emit(INTERIM)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgd.sinks"]
    assert lines == [
        "final [2026-11-23T21:40:01.250Z]: Hello, wörld.",
        "interim [2026-11-23T21:40:01.250Z]: hello",
    ]


def test_close_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    sinks = TranscriptSinks(OutputConfig(journald=False, jsonl=str(path)), None, echo_to_log=False)
    sinks.close()
    sinks.emit(FINAL)
    sinks.close()
    sinks.close()
    assert len(read_lines(path)) == 1
