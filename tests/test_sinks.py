"""Transcript sinks (dgd.daemon.sinks): RFC 3339 times, journald fields, JSON lines, and the writer.

journald is replaced by a list-backed ``journal_send`` (the port the sink is built on); the
JSON-lines file is a real file in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest

from dgd.core.config import OutputConfig
from dgd.core.events import TimedWord, Transcript
from dgd.daemon.logsetup import RepeatFilter
from dgd.daemon.sinks import (
    PRIORITY_DEBUG,
    PRIORITY_INFO,
    TranscriptSinks,
    journal_fields,
    jsonl_line,
    jsonl_record,
    rfc3339,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
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
    assert errors[0].getMessage() == (
        "cannot write transcripts to journald: [Errno 111] Connection refused"
    )
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


# --- failures stay in the sink (issue "Never lose a word") --------------------------------


def sink_events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "DGD_EVENT", None) == name]


@pytest.fixture(name="repeats")
def repeats_fixture(caplog: pytest.LogCaptureFixture) -> Iterator[RepeatFilter]:
    """caplog with the daemon's repeat filter on it (as every real log handler has), so
    "logged once" is checked as the journal would show it."""
    caplog.set_level(logging.INFO, logger="dgd")
    repeats = RepeatFilter(clock=lambda: 0.0)
    caplog.handler.addFilter(repeats)
    yield repeats
    caplog.handler.removeFilter(repeats)


def set_immutable(path: Path, on: bool) -> None:
    """Make a directory refuse new files, also to root (chattr +i), or allow them again."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:  # a minimal root (the Debian 13 chroot)
            if on:
                pytest.skip("root needs chattr (e2fsprogs) to make a directory refuse files")
            return
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
    else:
        path.chmod(0o555 if on else 0o755)


class FileSizeLimit:
    """RLIMIT_FSIZE for this process: writes past ``limit`` bytes are short, then EFBIG (a
    real partial write on a real file; Python ignores SIGXFSZ)."""

    def __init__(self) -> None:
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)

    def set(self, limit: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self.saved[1]))

    def restore(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


@dataclasses.dataclass
class Failure:
    """One way the JSONL file stops being writable: ``breaks`` it, ``heals`` it."""

    name: str
    breaks: Callable[[Path, FileSizeLimit], None]
    heals: Callable[[Path, FileSizeLimit], None]
    errno: int
    expected_before: int  # lines in the file when it broke (the first write precedes it)


def _ro_breaks(path: Path, _: FileSizeLimit) -> None:
    path.unlink()  # the next write must create the file: in a directory that refuses it
    set_immutable(path.parent, True)


def _ro_heals(path: Path, _: FileSizeLimit) -> None:
    set_immutable(path.parent, False)


def _gone_breaks(path: Path, _: FileSizeLimit) -> None:
    shutil.rmtree(path.parent)


def _gone_heals(path: Path, _: FileSizeLimit) -> None:
    path.parent.mkdir()


def _full_breaks(path: Path, limit: FileSizeLimit) -> None:
    limit.set(path.stat().st_size + 25)  # the next line gets 25 bytes in, then EFBIG


def _full_heals(path: Path, limit: FileSizeLimit) -> None:
    limit.restore()


FAILURES = [
    Failure("read-only directory", _ro_breaks, _ro_heals, errno.EPERM, 0),
    Failure("directory deleted", _gone_breaks, _gone_heals, errno.ENOENT, 0),
    Failure("disk full mid-line", _full_breaks, _full_heals, errno.EFBIG, 1),
]


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
def test_jsonl_failure_is_logged_once_journal_goes_on_and_writing_resumes(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    repeats: RepeatFilter,
    failure: Failure,
) -> None:
    path = tmp_path / "out" / "t.jsonl"
    journal = JournalRecorder()
    sinks = TranscriptSinks(OutputConfig(jsonl=str(path)), journal, echo_to_log=False)
    texts = [f"utterance {i}" for i in range(6)]
    finals = [dataclasses.replace(FINAL, text=t) for t in texts]
    limit = FileSizeLimit()
    try:
        sinks.emit(finals[0])
        failure.breaks(path, limit)
        for transcript in finals[1:4]:
            sinks.emit(transcript)  # never raises
        if failure.errno != errno.ENOENT:
            on_disk = path.read_bytes() if path.exists() else b""
            # Whole lines only: the partial line was taken back.
            assert on_disk.count(b"\n") == failure.expected_before
            assert on_disk.endswith(b"\n") or not on_disk
    finally:
        failure.heals(path, limit)
    sinks.emit(finals[4])
    sinks.emit(finals[5])
    sinks.close()

    assert [e["MESSAGE"] for e in journal.entries] == texts  # the journal got every one
    errors = sink_events(caplog, "sink_error")
    assert len(errors) == 1, [e.getMessage() for e in errors]
    assert errors[0].levelno == logging.WARNING
    message = errors[0].getMessage()
    assert message.startswith(f"cannot write transcript to {path}: {os.strerror(failure.errno)}")
    assert f"(errno {errno.errorcode[failure.errno]})" in message
    resumed = sink_events(caplog, "sink_resumed")
    assert [r.getMessage() for r in resumed] == [
        f"writing transcripts to {path} again; 3 transcript(s) could not be written there "
        "meanwhile (the journal has them)"
    ]
    lines = path.read_text("utf-8").splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)
    kept = texts[:1] if failure.expected_before else []
    assert [json.loads(line)["text"] for line in lines] == [*kept, *texts[4:]]
    assert sinks.written == 6


@dataclasses.dataclass
class Rotation:
    """What happens to the file between two transcripts, and whether dgd gets a SIGHUP."""

    name: str
    moves: Callable[[Path], None]
    sighup: bool
    new_file: bool  # the second transcript must land in a new file at the path


def _rename(path: Path) -> None:
    path.rename(path.with_name(path.name + ".1"))


def _rename_and_create(path: Path) -> None:  # logrotate's `create`
    _rename(path)
    path.write_bytes(b"")


ROTATIONS = [
    Rotation("renamed, no SIGHUP", _rename, sighup=False, new_file=True),
    Rotation("renamed + SIGHUP", _rename, sighup=True, new_file=True),
    Rotation("renamed, new file created", _rename_and_create, sighup=False, new_file=True),
    Rotation("deleted", lambda p: p.unlink(), sighup=False, new_file=True),
    Rotation("untouched + SIGHUP", lambda p: None, sighup=True, new_file=False),
    Rotation("untouched", lambda p: None, sighup=False, new_file=False),
]


@pytest.mark.parametrize("rotation", ROTATIONS, ids=[r.name for r in ROTATIONS])
def test_jsonl_follows_the_path_after_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, repeats: RepeatFilter, rotation: Rotation
) -> None:
    path = tmp_path / "t.jsonl"
    sinks = TranscriptSinks(OutputConfig(journald=False, jsonl=str(path)), None, echo_to_log=False)
    first, second = (dataclasses.replace(FINAL, text=t) for t in ("one", "two"))
    sinks.emit(first)
    rotation.moves(path)
    if rotation.sighup:
        sinks.reopen()
    sinks.emit(second)
    sinks.close()
    rotated = path.with_name("t.jsonl.1")
    texts = [r["text"] for r in read_lines(path)]
    if rotation.new_file:
        assert texts == ["two"]
        if rotated.exists():
            assert [r["text"] for r in read_lines(rotated)] == ["one"]
    else:
        assert texts == ["one", "two"]
    assert not sink_events(caplog, "sink_error")


def test_path_that_is_a_directory_then_a_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, repeats: RepeatFilter
) -> None:
    path = tmp_path / "t.jsonl"
    path.mkdir()
    sinks = TranscriptSinks(OutputConfig(journald=False, jsonl=str(path)), None, echo_to_log=False)
    sinks.emit(FINAL)
    sinks.emit(FINAL)
    assert len(sink_events(caplog, "sink_error")) == 1
    path.rmdir()
    sinks.emit(FINAL)
    sinks.close()
    assert len(read_lines(path)) == 1
    assert len(sink_events(caplog, "sink_resumed")) == 1


class StrictJournal(JournalRecorder):
    """Like systemd.journal.send: every value must encode as UTF-8."""

    def __call__(self, MESSAGE: str, **fields: str) -> None:
        for value in (MESSAGE, *fields.values()):
            value.encode("utf-8")
        super().__call__(MESSAGE, **fields)


ODD = [
    ("lone surrogate in the text", {"text": "caf\ud800e"}, True, True),
    ("lone surrogate in a word", {"words": (TimedWord("\udcff", T, T + 1, 0.5),)}, True, True),
    ("start beyond datetime", {"start_s": 1e20}, False, False),
    ("start is NaN", {"start_s": float("nan")}, False, False),
    ("word end is infinite", {"words": (TimedWord("x", T, float("inf"), 0.5),)}, True, False),
]


@pytest.mark.parametrize(
    ("changes", "in_journal", "in_jsonl"),
    [case[1:] for case in ODD],
    ids=[case[0] for case in ODD],
)
def test_emit_never_raises_on_odd_transcripts(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    repeats: RepeatFilter,
    changes: dict[str, object],
    in_journal: bool,
    in_jsonl: bool,
) -> None:
    path = tmp_path / "t.jsonl"
    journal = StrictJournal()
    sinks = TranscriptSinks(OutputConfig(jsonl=str(path)), journal, echo_to_log=True)
    odd = dataclasses.replace(FINAL, **changes)  # type: ignore[arg-type]
    sinks.emit(odd)
    sinks.emit(FINAL)  # and the next one goes through both
    sinks.close()
    assert len(journal.entries) == 1 + in_journal
    assert journal.entries[-1]["MESSAGE"] == FINAL.text
    lines = read_lines(path)  # every line is valid JSON
    assert len(lines) == 1 + in_jsonl
    assert lines[-1] == jsonl_record(FINAL)
    if in_jsonl:
        assert lines[0]["text"] == odd.text  # the surrogate survives, \\u-escaped
    if not (in_journal and in_jsonl):
        assert sink_events(caplog, "sink_error")


def test_jsonl_line_is_one_whole_utf8_line() -> None:
    line = jsonl_line(FINAL)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == jsonl_record(FINAL)
    escaped = jsonl_line(dataclasses.replace(FINAL, text="a\ud800"))
    assert b"\\ud800" in escaped


@pytest.fixture(name="socket_path")
def socket_path_fixture(tmp_path: Path) -> Path:
    return tmp_path / "journal.socket"


def bind_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


@pytest.mark.parametrize("what_is_there", ["nothing", "a regular file"])
def test_missing_journal_socket_is_reported_once_then_the_recovery(
    tmp_path: Path,
    socket_path: Path,
    caplog: pytest.LogCaptureFixture,
    repeats: RepeatFilter,
    what_is_there: str,
) -> None:
    # libsystemd returns success and drops the entry when the socket is missing: dgd looks.
    if what_is_there == "a regular file":
        socket_path.write_bytes(b"")
    path = tmp_path / "t.jsonl"
    journal = JournalRecorder()
    sinks = TranscriptSinks(
        OutputConfig(jsonl=str(path)), journal, echo_to_log=False, journal_socket=socket_path
    )
    sinks.emit(FINAL)
    sinks.emit(FINAL)
    errors = sink_events(caplog, "sink_error")
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "journald's socket is missing" in errors[0].getMessage()
    assert str(socket_path) in errors[0].getMessage()
    assert len(read_lines(path)) == 2  # the JSONL copy went on
    socket_path.unlink(missing_ok=True)
    with bind_socket(socket_path):
        sinks.emit(FINAL)
    sinks.close()
    assert len(journal.entries) == 1
    resumed = sink_events(caplog, "sink_resumed")
    assert [r.getMessage() for r in resumed] == [
        "writing transcripts to journald again; 2 transcript(s) did not reach it"
    ]


def test_present_journal_socket_is_not_reported(
    socket_path: Path, caplog: pytest.LogCaptureFixture, repeats: RepeatFilter
) -> None:
    journal = JournalRecorder()
    with bind_socket(socket_path):
        sinks = TranscriptSinks(
            OutputConfig(), journal, echo_to_log=False, journal_socket=socket_path
        )
        sinks.emit(FINAL)
    assert len(journal.entries) == 1
    assert not sink_events(caplog, "sink_error")
