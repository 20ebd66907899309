"""Where transcripts go: journald (structured fields) and an optional JSON-lines file.

Finals are never dropped by dgd, and a sink's failure stays in that sink: ``emit`` never
raises, and one sink failing never stops the other. Each JSON line is written with one
``write`` of the whole line (a reader tailing the file sees it at once) but not fsync'ed: SD
cards wear out, and journald already keeps the durable copy. The file is reopened when it was
rotated (renamed or deleted) and on SIGHUP (``reopen``), so logrotate needs no
``copytruncate``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from dgd.daemon.logsetup import event

if TYPE_CHECKING:
    from dgd.core.config import OutputConfig
    from dgd.core.events import Transcript

log = logging.getLogger("dgd.sinks")

PRIORITY_INFO = 6
PRIORITY_DEBUG = 7
#: Where libsystemd sends journal entries. When it is missing, ``sd_journal_send`` returns
#: success and drops the entry ("fail silently if the journal is not available"), so dgd
#: looks for it before each transcript (one ``stat``) to say so.
JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")
#: What turning a transcript into a record can raise on odd values (a lone surrogate in the
#: text, a time outside datetime's range); I/O errors are ``OSError``.
RECORD_ERRORS: Final = (ValueError, OverflowError, TypeError)
#: Mode of a new JSONL file before the umask (the unit's UMask=0077 makes it 0600).
JSONL_MODE: Final = 0o666


def rfc3339(wall_s: float) -> str:
    """Wall-clock seconds as RFC 3339 UTC with milliseconds: ``2026-11-23T21:40:01.234Z``."""
    stamp = datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JournalSend(Protocol):
    """``systemd.journal.send``'s shape, so tests can pass their own."""

    def __call__(self, MESSAGE: str, **fields: str) -> None: ...


def journal_fields(transcript: Transcript) -> dict[str, str]:
    """The contract's journald fields for one transcript (``MESSAGE`` excluded)."""
    return {
        "DGD_EVENT": "transcript",
        "DGD_IS_FINAL": "true" if transcript.is_final else "false",
        "DGD_SPEECH_FINAL": "true" if transcript.speech_final else "false",
        "DGD_FROM_FINALIZE": "true" if transcript.from_finalize else "false",
        "DGD_CONFIDENCE": f"{transcript.confidence:.3f}",
        "DGD_START": rfc3339(transcript.start_s),
        "DGD_END": rfc3339(transcript.end_s),
        "DGD_REQUEST_ID": transcript.request_id,
        "SYSLOG_IDENTIFIER": "dgd",
        "PRIORITY": str(PRIORITY_INFO if transcript.is_final else PRIORITY_DEBUG),
    }


def jsonl_record(transcript: Transcript) -> dict[str, object]:
    """The JSON-lines object for one transcript (times as RFC 3339 wall-clock)."""
    return {
        "text": transcript.text,
        "is_final": transcript.is_final,
        "speech_final": transcript.speech_final,
        "from_finalize": transcript.from_finalize,
        "confidence": transcript.confidence,
        "start": rfc3339(transcript.start_s),
        "end": rfc3339(transcript.end_s),
        "request_id": transcript.request_id,
        "words": [
            {
                "word": w.word,
                "start": rfc3339(w.start_s),
                "end": rfc3339(w.end_s),
                "confidence": w.confidence,
            }
            for w in transcript.words
        ],
    }


def jsonl_line(transcript: Transcript) -> bytes:
    """One whole JSON line, UTF-8 (text that is not valid Unicode is written ``\\u``-escaped)."""
    record = jsonl_record(transcript)
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can still carry it, escaped
        return (json.dumps(record) + "\n").encode("ascii")


def _printable(text: str) -> str:
    """``text`` as valid Unicode (a lone surrogate becomes "?") for journald and logs."""
    return text.encode("utf-8", "replace").decode("utf-8")


class JsonlFile:
    """One JSON-lines file that is appended to by whole lines and never raises.

    Every line is one ``write`` of the complete line on an ``O_APPEND`` descriptor. Before
    each write the path is compared (``st_dev``/``st_ino``) with the open file: a file that
    was renamed or deleted (logrotate, an admin) is closed and a new one made at the path. A
    write that fails (full disk, read-only file system, directory gone) is logged as a
    warning naming the path and the error, the line is lost from the file (the journal has
    it), and the next line tries again, so writing resumes by itself. A write that stored
    only part of a line is finished with a second write; if that fails too, the file is
    truncated back to where the line began, so it never ends in a broken line (if even the
    truncation fails, the next line written starts with a newline, leaving the fragment on
    a line of its own that JSON readers reject alone).

    Missing directories are created when the path is first opened (at start, or after a
    reload that changed it), never later: a directory that disappeared under a running dgd
    was removed or unmounted by someone, and recreating it would hide that.

    Args:
        path: the file (``output.jsonl``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._opened_once = False
        self._needs_newline = False
        self._failing = False
        self.lost = 0  # lines not written since the current failure began
        self.written = 0

    def write(self, line: bytes) -> None:
        """Append one whole line (ending in ``\\n``); failures are logged, never raised."""
        try:
            fd, size = self._open_current()
            if self._needs_newline:
                line = b"\n" + line
            self._write_whole(fd, line, size)
        except OSError as exc:
            self._failed(exc)
        else:
            self._needs_newline = False
            self.written += 1
            if self._failing:
                self._failing = False
                event(
                    "sink_resumed",
                    "writing transcripts to %s again; %d transcript(s) could not be written "
                    "there meanwhile (the journal has them)",
                    self.path,
                    self.lost,
                    path=self.path,
                    lost=self.lost,
                )
                self.lost = 0

    def _open_current(self) -> tuple[int, int]:
        """The descriptor of the file now at ``path`` (opened if needed), and its size."""
        if self._fd is not None:
            opened = os.fstat(self._fd)
            try:
                at_path = os.stat(self.path)
            except FileNotFoundError:
                at_path = None
            if at_path is None or (at_path.st_dev, at_path.st_ino) != (
                opened.st_dev,
                opened.st_ino,
            ):
                self.close()  # rotated: renamed away or deleted
            else:
                return self._fd, opened.st_size
        if not self._opened_once:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
        fd = os.open(self.path, flags, JSONL_MODE)
        self._fd = fd
        self._opened_once = True
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            self.close()
            raise OSError(errno.EINVAL, "not a regular file", self.path)
        return fd, info.st_size

    def _write_whole(self, fd: int, line: bytes, size_before: int) -> None:
        written = os.write(fd, line)
        if written == len(line):
            return
        try:
            # A short write (the disk filled up inside this line): finish it, or learn why not.
            written += os.write(fd, line[written:])
            if written == len(line):
                return
            raise OSError(errno.EIO, f"short write ({written} of {len(line)} bytes)", self.path)
        except OSError:
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                self._needs_newline = True
            raise

    def _failed(self, exc: OSError) -> None:
        self.lost += 1
        self._failing = True
        detail = exc.strerror or str(exc)
        event(
            "sink_error",
            "cannot write transcript to %s: %s (errno %s); the journal still gets every "
            "transcript, and dgd tries the file again with the next one (check output.jsonl, "
            "free space and the directory; under systemd use a path in /var/lib/dgd)",
            self.path,
            detail,
            errno.errorcode.get(exc.errno or 0, exc.errno),
            level=logging.WARNING,
            repeat_key=f"jsonl:{self.path}:{exc.errno}",
            path=self.path,
            errno=exc.errno,
        )

    def reopen(self) -> None:
        """Close the file; the next line opens whatever is at the path then (SIGHUP)."""
        self.close()

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:  # nothing is buffered in dgd: no data depends on this
                log.debug("closing %s: %s", self.path, exc)


class TranscriptSinks:
    """Writes each transcript to the configured outputs; never raises into its caller.

    Args:
        output: the ``[output]`` config.
        journal_send: ``systemd.journal.send`` (or a test double).
        echo_to_log: also log transcripts as plain lines (when logs go to a terminal, so a
            person running ``dgd run`` sees them; under systemd the journal entry is enough).
        journal_socket: journald's socket, looked for before each entry (libsystemd drops
            entries silently without it); None: not checked (a test double as the journal).
    """

    def __init__(
        self,
        output: OutputConfig,
        journal_send: JournalSend | None,
        *,
        echo_to_log: bool,
        journal_socket: Path | None = None,
    ) -> None:
        self.output = output
        self._journal_send = journal_send
        self._echo = echo_to_log
        self._journal_socket = journal_socket
        self._jsonl: JsonlFile | None = JsonlFile(output.jsonl) if output.jsonl else None
        self._journal_failed = False
        self._journal_lost = 0
        self.written = 0

    @property
    def jsonl(self) -> JsonlFile | None:
        """The JSON-lines file, if one is configured."""
        return self._jsonl

    def reconfigure(self, output: OutputConfig) -> None:
        """Apply a reloaded ``[output]`` (a changed JSONL path is opened on the next write)."""
        if output.jsonl != (self._jsonl.path if self._jsonl else ""):
            self.close()
            self._jsonl = JsonlFile(output.jsonl) if output.jsonl else None
        self.output = output

    def reopen(self) -> None:
        """SIGHUP: close the JSONL file; the next transcript opens the file at the path then
        (after logrotate renamed it, a new one)."""
        if self._jsonl is not None:
            self._jsonl.reopen()

    def emit(self, transcript: Transcript) -> None:
        """Write one transcript (interims only when ``output.interim``). Never raises: each
        sink's failure is logged by that sink, and the others still get the transcript."""
        if not transcript.is_final and not self.output.interim:
            return
        self.written += 1
        if self.output.journald and self._journal_send is not None:
            self._send_journal(transcript)
        if self._jsonl is not None:
            self._write_jsonl(self._jsonl, transcript)
        if self._echo:
            self._echo_line(transcript)

    def _send_journal(self, transcript: Transcript) -> None:
        assert self._journal_send is not None
        try:
            fields = journal_fields(transcript)
            self._check_journal_socket()
            try:
                self._journal_send(MESSAGE=transcript.text, **fields)
            except UnicodeEncodeError:  # a lone surrogate in the text
                clean = {k: _printable(v) for k, v in fields.items()}
                self._journal_send(MESSAGE=_printable(transcript.text), **clean)
        except (OSError, *RECORD_ERRORS) as exc:
            # A stale journal socket (journald restarting) raises ECONNREFUSED; the JSONL
            # copy and the next transcript still go through.
            self._journal_lost += 1
            if not self._journal_failed:
                self._journal_failed = True
                event(
                    "sink_error",
                    "cannot write transcripts to journald: %s",
                    exc,
                    level=logging.ERROR,
                    repeat_key="journal",
                )
        else:
            if self._journal_failed:
                # Logged now, when it reaches the journal: what the journal is missing.
                event(
                    "sink_resumed",
                    "writing transcripts to journald again; %d transcript(s) did not reach it",
                    self._journal_lost,
                    level=logging.WARNING,
                    lost=self._journal_lost,
                )
            self._journal_failed = False
            self._journal_lost = 0

    def _check_journal_socket(self) -> None:
        if self._journal_socket is None:
            return
        try:
            mode = os.stat(self._journal_socket).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISSOCK(mode):
            raise FileNotFoundError(
                errno.ENOENT,
                "journald's socket is missing (is systemd-journald running?); "
                "libsystemd would drop the entry without a word",
                str(self._journal_socket),
            )

    def _write_jsonl(self, jsonl: JsonlFile, transcript: Transcript) -> None:
        try:
            line = jsonl_line(transcript)
        except RECORD_ERRORS as exc:
            event(
                "sink_error",
                "cannot write a transcript to %s: %s: %s",
                jsonl.path,
                type(exc).__name__,
                exc,
                level=logging.WARNING,
                repeat_key="jsonl-record",
            )
            return
        jsonl.write(line)

    def _echo_line(self, transcript: Transcript) -> None:
        kind = "final" if transcript.is_final else "interim"
        try:
            start = rfc3339(transcript.start_s)
        except RECORD_ERRORS:
            start = "?"
        log.info("%s [%s]: %s", kind, start, _printable(transcript.text))

    def close(self) -> None:
        """Close the JSONL file."""
        if self._jsonl is not None:
            self._jsonl.close()
