"""Where transcripts go: journald (structured fields) and an optional JSON-lines file.

Finals are never dropped. Each JSON line is flushed to the OS as it is written (a reader
tailing the file sees it at once) but not fsync'ed: SD cards wear out, and journald
already keeps the durable copy.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from dgd.daemon.logsetup import event

if TYPE_CHECKING:
    from dgd.core.config import OutputConfig
    from dgd.core.events import Transcript

log = logging.getLogger("dgd.sinks")

PRIORITY_INFO = 6
PRIORITY_DEBUG = 7


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


class TranscriptSinks:
    """Writes each transcript to the configured outputs.

    Args:
        output: the ``[output]`` config.
        journal_send: ``systemd.journal.send`` (or a test double).
        echo_to_log: also log transcripts as plain lines (when logs go to a terminal, so a
            person running ``dgd run`` sees them; under systemd the journal entry is enough).
    """

    def __init__(
        self, output: OutputConfig, journal_send: JournalSend | None, *, echo_to_log: bool
    ) -> None:
        self.output = output
        self._journal_send = journal_send
        self._echo = echo_to_log
        self._jsonl: IO[str] | None = None
        self._jsonl_path = ""
        self._journal_failed = False
        self.written = 0

    def reconfigure(self, output: OutputConfig) -> None:
        """Apply a reloaded ``[output]`` (a changed JSONL path is reopened on the next write)."""
        if output.jsonl != self._jsonl_path:
            self.close()
        self.output = output

    def emit(self, transcript: Transcript) -> None:
        """Write one transcript (interims only when ``output.interim``)."""
        if not transcript.is_final and not self.output.interim:
            return
        self.written += 1
        if self.output.journald and self._journal_send is not None:
            self._send_journal(transcript)
        if self.output.jsonl:
            self._write_jsonl(transcript)
        if self._echo:
            kind = "final" if transcript.is_final else "interim"
            log.info("%s [%s]: %s", kind, rfc3339(transcript.start_s), transcript.text)

    def _send_journal(self, transcript: Transcript) -> None:
        assert self._journal_send is not None
        try:
            self._journal_send(MESSAGE=transcript.text, **journal_fields(transcript))
        except OSError as exc:
            # A stale journal socket (journald restarting) raises; the JSONL copy and the next
            # transcript still go through.
            if not self._journal_failed:
                self._journal_failed = True
                event("sink_error", "cannot write to journald: %s", exc, level=logging.ERROR)
        else:
            self._journal_failed = False

    def _write_jsonl(self, transcript: Transcript) -> None:
        line = json.dumps(jsonl_record(transcript), ensure_ascii=False)
        try:
            if self._jsonl is None:
                path = Path(self.output.jsonl)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._jsonl = path.open("a", encoding="utf-8")
                self._jsonl_path = self.output.jsonl
            self._jsonl.write(line + "\n")
            self._jsonl.flush()
        except OSError as exc:
            event(
                "sink_error",
                "cannot write transcript to %s: %s (check output.jsonl and the directory's "
                "permissions; under systemd use a path in /var/lib/dgd)",
                self.output.jsonl,
                exc,
                level=logging.ERROR,
                repeat_key="jsonl-error",
            )
            self.close()

    def close(self) -> None:
        """Close the JSONL file."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
            self._jsonl_path = ""
