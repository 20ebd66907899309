"""Logging: journald with structured ``DGD_*`` fields under systemd, readable lines otherwise.

Log records carry their journal fields in ``extra`` (``DGD_EVENT`` and friends, upper case,
since journald drops other names). ``event()`` is the one way the daemon logs an event.
A ``SecretFilter`` on every handler replaces the API key wherever it would appear, at any
level and from any library logger; a ``RepeatFilter`` folds a flood of one message into one
line and a count. Under systemd, ``capture_stderr`` turns what libraries write to file
descriptor 2 (alsa-lib's ``ALSA lib ...`` lines) into events too, so every record dgd writes
to the journal carries ``DGD_EVENT``.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib
import logging
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from dgd.core.config import LogLevel

log = logging.getLogger("dgd")

#: A message repeated within this window is counted, not logged again.
REPEAT_WINDOW_S: Final = 300.0
REDACTED: Final = "<redacted>"


class SecretFilter(logging.Filter):
    """Replaces secrets in the rendered message and in string fields of every record."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, *secrets: str) -> None:
        """The values never to print (empty and very short strings are ignored)."""
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            scrubbed = self.scrub(message)
            if scrubbed != message or record.args:
                record.msg, record.args = scrubbed, None
            for key, value in list(record.__dict__.items()):
                if key.isupper() and isinstance(value, str):
                    record.__dict__[key] = self.scrub(value)
            if record.exc_info and record.exc_info[1] is not None:
                # Tracebacks can carry headers; render now and scrub the text.
                formatted = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.msg}\n{self.scrub(formatted)}"
        return True


class RepeatFilter(logging.Filter):
    """Logs a repeated message once, then counts the repeats and reports them in one line.

    Records opt in by carrying ``dgd_repeat_key`` (lower case, so journald does not store
    it). The first record of a key passes; the rest within ``window_s`` are counted. The next
    one after the window passes with "(repeated N times in the last 5 min)" appended, and
    ``flush()`` (called by the daemon every second) reports a count whose window ended
    without a further record, so a burst that stopped is still summarised.

    Args:
        window_s: the summary window.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        # key -> (window start, repeats counted, the last repeated record)
        self._seen: dict[str, tuple[float, int, logging.LogRecord | None]] = {}

    def _suffix(self, count: int) -> str:
        return f" (repeated {count} times in the last {round(self.window_s / 60)} min)"

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "dgd_repeat_key", None)
        if not key:
            return True
        now = self._clock()
        first_s, count, _ = self._seen.get(key, (-math.inf, 0, None))
        if now - first_s < self.window_s:
            self._seen[key] = (first_s, count + 1, record)
            return False
        self._seen[key] = (now, 0, None)
        if count:
            record.msg = record.getMessage() + self._suffix(count)
            record.args = None
        return True

    def flush(self) -> list[logging.LogRecord]:
        """Summary records for windows that ended with repeats not yet reported."""
        now = self._clock()
        summaries: list[logging.LogRecord] = []
        for key, (first_s, count, last) in list(self._seen.items()):
            if now - first_s < self.window_s:
                continue
            del self._seen[key]
            if count and last is not None:
                summary = logging.makeLogRecord(last.__dict__)
                summary.msg = last.getMessage() + self._suffix(count)
                summary.args = None
                summary.dgd_repeat_key = None
                summaries.append(summary)
        return summaries


class StderrFormatter(logging.Formatter):
    """``2026-11-23 21:40:01 INFO gate_open: speech started`` — readable in a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        event = getattr(record, "DGD_EVENT", None)
        prefix = f"{event}: " if event else ""
        text = f"{stamp} {record.levelname} {prefix}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


SECRETS: Final = SecretFilter()
REPEATS: Final = RepeatFilter()


def flush_repeats() -> None:
    """Write the summaries of repeated messages whose window has ended."""
    for record in REPEATS.flush():
        logging.getLogger(record.name).handle(record)


def journal_module() -> Any:
    """``systemd.journal`` (imported on demand: it has no type information)."""
    return importlib.import_module("systemd.journal")


def journal_available(environ: Mapping[str, str]) -> bool:
    """True when stderr is connected to the journal (systemd sets ``JOURNAL_STREAM``)."""
    stream = environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return info.st_dev == device and info.st_ino == inode


def setup(target: str, level: LogLevel, environ: Mapping[str, str]) -> str:
    """Configure the root logger once.

    Args:
        target: ``journal``, ``stderr`` or ``auto`` (journal when started by systemd).
        level: ``debug``, ``info``, ``warning`` or ``error``.

    Returns:
        The target chosen (``journal`` or ``stderr``).
    """
    chosen = target
    if target == "auto":
        chosen = "journal" if journal_available(environ) else "stderr"
    handler: logging.Handler
    if chosen == "journal":
        handler = journal_module().JournalHandler(SYSLOG_IDENTIFIER="dgd")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    handler.addFilter(SECRETS)
    handler.addFilter(REPEATS)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    return chosen


def set_level(level: LogLevel) -> None:
    """Apply ``log.level`` (also on reload). Library loggers stay at WARNING unless debugging."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.getLogger().setLevel(numeric)
    logging.getLogger("dgd").setLevel(numeric)


def event(
    name: str,
    message: str,
    *args: object,
    level: int = logging.INFO,
    repeat_key: str | None = None,
    logger: logging.Logger = log,
    fields_map: Mapping[str, object] | None = None,
    **fields: object,
) -> None:
    """Log one daemon event with ``DGD_EVENT=name`` and ``DGD_<FIELD>`` journal fields.

    Fields come as keywords or, when computed, as ``fields_map``; names are upper-cased.
    """
    extra: dict[str, object] = {"DGD_EVENT": name}
    for key, value in {**(fields_map or {}), **fields}.items():
        extra[f"DGD_{key.upper()}"] = value
    if repeat_key is not None:
        extra["dgd_repeat_key"] = repeat_key
    logger.log(level, message, *args, extra=extra)


#: How long, at exit, the stderr reader gets to log what was written last (a traceback).
STDERR_DRAIN_S: Final = 0.5


def _log_stderr_line(line: str) -> None:
    if not line.strip():
        return
    if line.startswith("ALSA lib "):
        # alsa-lib's own diagnostics (snd_lib_error): e.g. a card named in audio.device that
        # is not there yet. dgd's device events say what it means for capture.
        event(
            "alsa_lib",
            "alsa-lib: %s",
            line.removeprefix("ALSA lib "),
            level=logging.WARNING,
            repeat_key=f"alsa:{line[:60]}",
            logger=logging.getLogger("dgd.stderr"),
        )
    else:
        event("stderr", "%s", line, level=logging.WARNING, logger=logging.getLogger("dgd.stderr"))


def capture_stderr() -> None:
    """Route file descriptor 2 through a pipe whose lines are logged as events.

    Under systemd, stderr is a plain journal stream: what C libraries write there (alsa-lib
    prints ``ALSA lib confmisc.c:...`` lines itself) would reach the journal without
    ``DGD_EVENT``. Each line becomes an ``alsa_lib`` (or ``stderr``) event instead. The pipe's
    write end is non-blocking: if the reader ever falls behind by a full pipe (64 KiB), a line
    is lost rather than a capture thread blocked. At exit the last lines (a traceback) are
    drained before the process ends. Call once, after ``setup("journal", ...)``.
    """
    read_fd, write_fd = os.pipe()
    flags = fcntl.fcntl(write_fd, fcntl.F_GETFL)
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    sys.stderr.flush()
    original_fd = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def read_lines() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                _log_stderr_line(line.rstrip("\n"))

    reader = threading.Thread(target=read_lines, name="dgd-stderr", daemon=True)
    reader.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(original_fd, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(STDERR_DRAIN_S)

    atexit.register(drain)
