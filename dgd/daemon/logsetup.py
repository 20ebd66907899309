"""Logging: journald with structured ``DGD_*`` fields under systemd, readable lines otherwise.

Log records carry their journal fields in ``extra`` (``DGD_EVENT`` and friends, upper case,
since journald drops other names). ``event()`` is the one way the daemon logs an event.
A ``SecretFilter`` on every handler replaces the API key and the secret query values
(``register_secrets``) wherever they would appear, at any level and from any library logger:
message, arguments, tracebacks, stack traces, journal fields. ``forbid_core_dumps`` and
``remove_from_environment`` keep the key out of core files and ``/proc/<pid>/environ``. A
``RepeatFilter`` folds a flood of one message into one line and a count. Under systemd,
``capture_stderr`` turns what libraries write to file descriptor 2 (alsa-lib's
``ALSA lib ...`` lines) into events too, so every record dgd writes to the journal carries
``DGD_EVENT``.

It is a little over the project's 400 lines: the secret scrubbing has to sit on every handler
this module installs, so the handlers and the filters stay together.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import fcntl
import importlib
import json
import logging
import math
import os
import sys
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

from dgd.core.connection import SECRET_QUERY_KEYS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from dgd.core.config import LogLevel

log = logging.getLogger("dgd")

#: A message repeated within this window is counted, not logged again.
REPEAT_WINDOW_S: Final = 300.0
REDACTED: Final = "<redacted>"
#: Shorter values are not treated as secrets (replacing them would garble every line).
MIN_SECRET_CHARS: Final = 4


def secret_forms(secret: str) -> set[str]:
    """The spellings under which ``secret`` can reach a log line.

    The value itself; percent-encoded as in the listen URL (``urlencode`` with
    ``quote``: trio-websocket logs the URL at debug level) and with ``+`` for spaces; and
    escaped as inside a ``repr()`` or a JSON string (a header or an exception printed with
    ``%r``). Values shorter than ``MIN_SECRET_CHARS`` are ignored.
    """
    if len(secret) < MIN_SECRET_CHARS:
        return set()
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret, safe=""),
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        repr(secret.encode("utf-8"))[2:-1],
    }
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


#: Temporary tokens scrubbed: one is fetched per connection attempt and used only in that
#: attempt's handshake, so the newest few cover every line that can still mention one.
TOKENS_KEPT: Final = 16


class SecretFilter(logging.Filter):
    """Replaces secrets in every part of a record that a handler can print or send.

    Installed on each handler dgd sets up (journald, stderr), so it sees records from every
    logger: dgd's own and libraries' (trio-websocket, wsproto, urllib3, ...), at any level.
    For a record that it processes it renders the message (``msg % args``), folds a
    traceback (``exc_info`` or an already rendered ``exc_text``) into the message and drops
    ``args`` and ``exc_info``, since journald's handler would otherwise send them as
    ``CODE_ARGS`` and ``EXCEPTION_INFO`` unscrubbed; then it scrubs that message,
    ``stack_info`` and every upper-case (journal) field. A record whose message cannot be
    rendered (a library's bad format string) is scrubbed too, never raised from here.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self._secrets_bytes: tuple[bytes, ...] = ()
        self._lasting: set[str] = set()  # the key's and the query's forms
        self._tokens: collections.deque[str] = collections.deque(maxlen=TOKENS_KEPT)

    def _install(self, forms: set[str]) -> None:
        ordered = tuple(sorted(forms, key=lambda form: (-len(form), form)))  # longest first
        self._secrets_bytes = tuple(form.encode("utf-8") for form in ordered)
        self._secrets = ordered  # one assignment: a logging thread sees old or new, never half

    def set_secrets(self, *secrets: str) -> None:
        """The values never to print, replacing the previous ones and the tokens (short values
        are ignored)."""
        self._lasting = {form for secret in secrets for form in secret_forms(secret)}
        self._tokens.clear()
        self._install(self._lasting)

    def add_secrets(self, *secrets: str) -> None:
        """Add values never to print; the earlier ones stay (an old key may still be in flight)."""
        self._lasting = self._lasting.union(*(secret_forms(s) for s in secrets))
        self._install(self._lasting.union(*(secret_forms(t) for t in self._tokens)))

    def add_token(self, token: str) -> None:
        """Add a temporary token (one per connection attempt); only the newest
        ``TOKENS_KEPT`` are kept, so that weeks of reconnects do not grow the list for ever."""
        self._tokens.append(token)
        self._install(self._lasting.union(*(secret_forms(t) for t in self._tokens)))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every form scrubbed, longest first."""
        return self._secrets

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _scrub_value(self, value: object) -> object:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, bytes):
            for secret in self._secrets_bytes:
                value = value.replace(secret, REDACTED.encode())
            return value
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.scrub(str(value))  # what journald's handler would send: str(value)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: log what there is
            message = f"{record.msg!r} % {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks can carry headers and URLs; render now and scrub the text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        record.msg, record.args = self.scrub(message), None
        record.exc_info, record.exc_text = None, None
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key.isupper():
                record.__dict__[key] = self._scrub_value(value)
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


#: ``prctl(2)`` options (linux/prctl.h).
PR_GET_DUMPABLE: Final = 3
PR_SET_DUMPABLE: Final = 4

#: Events that happened before logging was set up; ``setup()`` logs them.
_pending: list[tuple[str, str, int]] = []


def register_secrets(api_key: str, query: Iterable[tuple[str, str]] = ()) -> None:
    """Scrub the API key and the ``[deepgram.query]`` values whose names mark them as secret
    (``dgd.core.connection.SECRET_QUERY_KEYS``) from every log line from now on.

    Called when the config and the key are loaded, and again on every reload; values
    registered earlier stay scrubbed (an old key can still be in flight on a closing stream).
    """
    SECRETS.add_secrets(api_key, *(v for k, v in query if k.lower() in SECRET_QUERY_KEYS))


def register_token(token: str) -> None:
    """Scrub a temporary token (``deepgram.auth = "grant"`` or ``"command"``) from every log
    line from now on; the oldest is forgotten after ``TOKENS_KEPT`` newer ones."""
    SECRETS.add_token(token)


def forbid_core_dumps() -> bool:
    """Make this process non-dumpable: no core file (systemd-coredump, ``core_pattern``)
    and no ``/proc/<pid>/mem`` or ``environ`` for other processes of the same user.

    ``prctl(PR_SET_DUMPABLE, 0)``; call it before the key is read. Linux only (elsewhere a
    no-op). A failure is not fatal: it is logged as a ``hardening`` warning once logging is
    set up. Returns whether the process is now non-dumpable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        zero = ctypes.c_ulong(0)
        if libc.prctl(PR_SET_DUMPABLE, zero, zero, zero, zero) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        _pending.append(
            (
                "hardening",
                f"could not make the process non-dumpable (prctl PR_SET_DUMPABLE): {exc};"
                " a core dump could hold the API key (the unit's LimitCORE=0 still applies)",
                logging.WARNING,
            )
        )
        return False
    return True


def remove_from_environment(name: str) -> None:
    """Remove ``$name`` (``DEEPGRAM_API_KEY``) from this process's environment, for good.

    ``os.environ.pop`` also calls ``unsetenv(3)``, so the C ``environ`` and any child no longer
    see it. But ``unsetenv`` only drops the pointer: the ``NAME=value`` string itself stays in
    the block the kernel set up at exec, which ``/proc/<pid>/environ`` shows. So the bytes
    of that string are overwritten with zeros too (Linux with glibc or musl: ``environ``).
    """
    if name not in os.environ:
        return
    target: int | None = None
    length = 0
    prefix = name.encode() + b"="
    try:
        environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
        index = 0
        while environ[index] is not None:
            entry = environ[index]
            if entry is not None and entry.startswith(prefix):
                target = ctypes.cast(environ, ctypes.POINTER(ctypes.c_void_p))[index]
                length = len(entry)
                break
            index += 1
    except (OSError, ValueError, AttributeError):
        target = None
    os.environ.pop(name, None)
    if target is not None and length:
        ctypes.memset(target, 0, length)


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
    while _pending:
        name, message, severity = _pending.pop(0)
        event(name, "%s", message, level=severity)
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
