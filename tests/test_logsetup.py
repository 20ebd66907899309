"""Logging (dgd.daemon.logsetup): secret scrubbing, repeat folding, events, stderr format."""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
import time
import types
import urllib.parse
import uuid
from typing import TYPE_CHECKING

import pytest

from dgd.core.config import LogLevel
from dgd.daemon import logsetup
from dgd.daemon.logsetup import (
    REDACTED,
    REPEAT_WINDOW_S,
    RepeatFilter,
    SecretFilter,
    StderrFormatter,
    event,
    journal_available,
    secret_forms,
)
from tests.harness import journal_entries, journald_fixture  # noqa: F401  (the fixture)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "dg_0123456789abcdef"  # a made-up key


def record(
    msg: object,
    *args: object,
    level: int = logging.WARNING,
    exc_info: logging._SysExcInfoType | None = None,
    **fields: object,
) -> logging.LogRecord:
    rec = logging.LogRecord("dgd.test", level, __file__, 1, msg, args or None, exc_info)
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


def secret_filter(*secrets: str) -> SecretFilter:
    f = SecretFilter()
    f.set_secrets(*secrets)
    return f


# --- SecretFilter ------------------------------------------------------------------------

SCRUB_CASES = [
    pytest.param((f"Authorization: Token {SECRET}",), "Authorization: Token <redacted>", id="msg"),
    pytest.param(("key=%s", SECRET), "key=<redacted>", id="arg"),
    pytest.param(
        ("url=%s?x=%d", f"wss://h/{SECRET}/x", 3), "url=wss://h/<redacted>/x?x=3", id="args"
    ),
    pytest.param((f"{SECRET} and {SECRET}",), "<redacted> and <redacted>", id="twice"),
    pytest.param(("%s", f"a{SECRET}b"), "a<redacted>b", id="embedded"),
    pytest.param(("nothing secret",), "nothing secret", id="clean"),
    pytest.param(("nothing secret: %d%%", 5), "nothing secret: 5%", id="clean-args-rendered"),
]


@pytest.mark.parametrize(("call", "expected"), SCRUB_CASES)
def test_secret_filter_scrubs_the_message(call: tuple[object, ...], expected: str) -> None:
    rec = record(*call)
    assert secret_filter(SECRET).filter(rec) is True
    assert rec.getMessage() == expected
    assert SECRET not in str(rec.msg)
    # Rendered now: a later getMessage() cannot bring the secret back through args.
    assert rec.args is None or rec.getMessage() == expected


def test_secret_filter_scrubs_upper_case_fields_only() -> None:
    rec = record(
        "connect",
        DGD_URL=f"wss://api/{SECRET}",
        DGD_ATTEMPT=3,
        dgd_lower=f"x{SECRET}",
    )
    secret_filter(SECRET).filter(rec)
    assert f"wss://api/{REDACTED}" == rec.DGD_URL  # type: ignore[attr-defined]
    assert rec.DGD_ATTEMPT == 3  # type: ignore[attr-defined]
    # Lower-case attributes never reach journald (it drops them) nor the stderr format.
    assert rec.dgd_lower == f"x{SECRET}"  # type: ignore[attr-defined]


def test_secret_filter_scrubs_exception_text() -> None:
    try:
        raise ValueError(f"handshake failed with header Token {SECRET}")
    except ValueError:
        rec = record("connect failed", exc_info=sys.exc_info())
    secret_filter(SECRET).filter(rec)
    assert rec.exc_info is None
    assert rec.exc_text is None
    message = rec.getMessage()
    assert message.startswith("connect failed\nTraceback (most recent call last):")
    assert message.endswith(f"ValueError: handshake failed with header Token {REDACTED}")
    assert SECRET not in message
    # Any formatter now prints the scrubbed text and no traceback of its own.
    formatted = logging.Formatter("%(message)s").format(rec)
    assert SECRET not in formatted
    assert formatted.count("Traceback") == 1


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (("abc",), "abc abc", "abc abc"),  # shorter than 4: ignored
        (("",), "anything", "anything"),
        (("abcd",), "xabcdx", f"x{REDACTED}x"),  # 4 is enough
        (("abc", SECRET), f"abc {SECRET}", f"abc {REDACTED}"),
        ((SECRET, "second-key"), f"{SECRET}/second-key", f"{REDACTED}/{REDACTED}"),
    ],
)
def test_short_secrets_are_ignored(secrets: tuple[str, ...], text: str, expected: str) -> None:
    f = secret_filter(*secrets)
    assert f.scrub(text) == expected
    rec = record(text)
    f.filter(rec)
    assert rec.getMessage() == expected


def test_secret_filter_without_secrets_leaves_records_alone() -> None:
    rec = record("key=%s", "abc", DGD_X="abc")
    secret_filter().filter(rec)
    assert rec.msg == "key=%s"
    assert rec.args == ("abc",)


def test_set_secrets_replaces_the_previous_ones() -> None:
    f = secret_filter("old-secret")
    f.set_secrets("new-secret")
    assert f.scrub("old-secret new-secret") == f"old-secret {REDACTED}"


# --- every part of a record, from any logger ---------------------------------------------

TOKEN = "tok/en+se cret:42"  # a [deepgram.query] token; percent-encoded in the URL


def _raise(text: str) -> logging._SysExcInfoType:
    try:
        raise ConnectionError(text)
    except ConnectionError:
        return sys.exc_info()


def _chained(text: str) -> logging._SysExcInfoType:
    try:
        try:
            raise KeyError(text)
        except KeyError as inner:
            raise RuntimeError("handshake failed") from inner
    except RuntimeError:
        return sys.exc_info()


# (where the secret is, how the foreign logger's record is built, the secret's spelling)
FOREIGN_CASES = [
    pytest.param({"msg": f"Authorization: Token {SECRET}"}, SECRET, id="msg"),
    pytest.param(
        {"msg": "headers %r", "args": ([(b"Authorization", SECRET.encode())],)},
        SECRET,
        id="args-bytes-repr",
    ),
    pytest.param(
        {"msg": "%(url)s", "args": {"url": f"wss://h/?key={SECRET}"}}, SECRET, id="args-mapping"
    ),
    pytest.param(
        {
            "msg": "Connecting to ws://h:80%s",
            "args": ("/v1/listen?token=" + urllib.parse.quote(TOKEN, safe=""),),
        },
        urllib.parse.quote(TOKEN, safe=""),
        id="args-percent-encoded",
    ),
    pytest.param({"msg": "token %s", "args": (TOKEN,)}, TOKEN, id="args-raw-token"),
    pytest.param(
        {"msg": "connect failed", "exc_info": _raise(f"bad key {SECRET}")},
        SECRET,
        id="exception-message",
    ),
    pytest.param(
        {"msg": "connect failed", "exc_info": _chained(TOKEN)}, TOKEN, id="exception-cause"
    ),
    pytest.param(
        {"msg": "connect failed", "exc_text": f"Traceback ...\nError: {SECRET}"},
        SECRET,
        id="exc-text-rendered-earlier",
    ),
    pytest.param(
        {"msg": "here", "stack_info": f"Stack (most recent call last):\n  k={SECRET}"},
        SECRET,
        id="stack-info",
    ),
    pytest.param({"msg": "bad format %d", "args": (SECRET,)}, SECRET, id="unrenderable"),
    pytest.param({"msg": ValueError(f"an object as msg: {SECRET}")}, SECRET, id="object-msg"),
    pytest.param({"msg": "x", "DGD_HEADERS": [("Authorization", SECRET)]}, SECRET, id="field-list"),
    pytest.param({"msg": "x", "DGD_RAW": f"k={SECRET}".encode()}, SECRET, id="field-bytes"),
]


def foreign_record(parts: dict[str, object]) -> logging.LogRecord:
    rec = logging.LogRecord(
        "trio-websocket", logging.DEBUG, "/lib/_impl.py", 7, parts.pop("msg"), None, None
    )
    for key, value in parts.items():
        setattr(rec, key, value)
    return rec


def everything_printed(rec: logging.LogRecord) -> str:
    """All a handler could print or send: both formatters and every attribute's str()."""
    try:
        text = [logging.Formatter().format(rec), StderrFormatter().format(rec)]
    except TypeError:  # a bad format string: a handler would print msg and args
        text = [f"{rec.msg!s} {rec.args!s}"]
    text += [f"{key}={value!s}" for key, value in vars(rec).items()]
    return "\n".join(text)


@pytest.mark.parametrize(("parts", "spelling"), FOREIGN_CASES)
def test_a_foreign_record_is_scrubbed_everywhere(parts: dict[str, object], spelling: str) -> None:
    rec = foreign_record(dict(parts))
    assert spelling in everything_printed(foreign_record(dict(parts)))  # it would leak ...
    f = SecretFilter()
    f.add_secrets(SECRET, TOKEN)
    assert f.filter(rec) is True
    printed = everything_printed(rec)
    assert spelling not in printed  # ... and does not
    assert REDACTED in printed
    assert rec.args is None
    assert rec.exc_info is None


def test_the_traceback_stays_readable() -> None:
    rec = foreign_record({"msg": "connect failed", "exc_info": _chained(TOKEN)})
    secret_filter(TOKEN).filter(rec)
    message = rec.getMessage()
    assert message.startswith("connect failed\nTraceback (most recent call last):")
    assert f"KeyError: '{REDACTED}'" in message
    assert "The above exception was the direct cause" in message
    assert message.endswith("RuntimeError: handshake failed")


@pytest.mark.parametrize(
    ("secret", "forms"),
    [
        ("abcd1234", {"abcd1234"}),
        ("a/b c+d", {"a/b c+d", "a%2Fb%20c%2Bd", "a/b%20c%2Bd", "a%2Fb+c%2Bd"}),
        ("it's\\", {"it's\\", "it%27s%5C", "it's\\\\"}),
        ("abc", set()),
    ],
)
def test_secret_forms(secret: str, forms: set[str]) -> None:
    assert secret_forms(secret) == forms


def test_add_secrets_keeps_the_earlier_ones() -> None:
    f = secret_filter("first-key")
    f.add_secrets("second-key")
    assert f.scrub("first-key second-key") == f"{REDACTED} {REDACTED}"
    assert f.secrets == ("second-key", "first-key")  # longest first, then by text


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> SecretFilter:
    fresh = SecretFilter()
    monkeypatch.setattr(logsetup, "SECRETS", fresh)
    return fresh


@pytest.mark.parametrize(
    ("query", "scrubbed", "kept"),
    [
        ((("token", "tok-1234"),), ["tok-1234"], []),
        ((("Access_Token", "acc-1234"), ("apikey", "api-1234")), ["acc-1234", "api-1234"], []),
        ((("key", "k-123456"), ("api_key", "ak-12345")), ["k-123456", "ak-12345"], []),
        ((("model", "nova-3"), ("keyterm", "Deepgram")), [], ["nova-3", "Deepgram"]),
        ((), [], []),
    ],
)
def test_register_secrets_takes_the_key_and_secret_query_values(
    registered: SecretFilter,
    query: tuple[tuple[str, str], ...],
    scrubbed: list[str],
    kept: list[str],
) -> None:
    logsetup.register_secrets(SECRET, query)
    for value in [SECRET, *scrubbed]:
        assert registered.scrub(f"<{value}>") == f"<{REDACTED}>"
    for value in kept:
        assert registered.scrub(value) == value


def test_register_secrets_on_reload_keeps_the_old_key(registered: SecretFilter) -> None:
    logsetup.register_secrets("old-key-1", (("token", "old-token"),))
    logsetup.register_secrets("new-key-2", (("token", "new-token"),))
    text = "old-key-1 old-token new-key-2 new-token"
    assert registered.scrub(text) == " ".join([REDACTED] * 4)


def test_register_token_keeps_only_the_newest_tokens(registered: SecretFilter) -> None:
    logsetup.register_secrets("the-api-key", (("token", "query-token"),))
    tokens = [f"bearer-token-{n:03d}" for n in range(logsetup.TOKENS_KEPT + 3)]
    for token in tokens:
        logsetup.register_token(token)
    forgotten, kept = tokens[:3], tokens[3:]
    for token in kept:
        assert registered.scrub(token) == REDACTED
    for token in forgotten:
        assert registered.scrub(token) == token
    # The key and the secret query values are never pushed out by tokens; a key registered
    # after the tokens does not forget them either.
    logsetup.register_secrets("new-api-key")
    assert registered.scrub("the-api-key query-token new-api-key") == " ".join([REDACTED] * 3)
    assert registered.scrub(kept[-1]) == REDACTED
    assert len(registered.secrets) == len(
        {f for s in ["the-api-key", "query-token", "new-api-key", *kept] for f in secret_forms(s)}
    )


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    dgd_level = logging.getLogger("dgd").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("dgd").setLevel(dgd_level)


LIBRARIES = ["trio-websocket", "wsproto", "urllib3.connectionpool", "some.other.library"]


@pytest.mark.usefixtures("restore_root_logging")
@pytest.mark.parametrize("library", LIBRARIES)
def test_setup_stderr_scrubs_library_debug_lines(
    library: str, registered: SecretFilter, capsys: pytest.CaptureFixture[str]
) -> None:
    logsetup.register_secrets(SECRET, (("token", TOKEN),))
    assert logsetup.setup("stderr", LogLevel.DEBUG, {}) == "stderr"
    foreign = logging.getLogger(library)
    encoded = urllib.parse.quote(TOKEN, safe="")
    foreign.debug("Connecting to ws://h:80%s", f"/v1/listen?token={encoded}&x=1")
    foreign.debug("headers %r", [(b"authorization", f"Token {SECRET}".encode())])
    try:
        raise OSError(f"refused: {SECRET}")
    except OSError:
        foreign.debug("failed", exc_info=True, stack_info=True)
    err = capsys.readouterr().err
    assert "Connecting to ws://h:80/v1/listen?token=<redacted>&x=1" in err
    assert "Traceback (most recent call last):" in err
    assert f"OSError: refused: {REDACTED}" in err
    for spelling in (SECRET, TOKEN, encoded):
        assert spelling not in err


@pytest.mark.usefixtures("restore_root_logging")
def test_setup_journal_sends_no_secret_in_any_field(
    registered: SecretFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What journald's handler sends (MESSAGE, CODE_ARGS, EXCEPTION_INFO, EXCEPTION_TEXT,
    every record attribute) holds no secret; without the filter it would."""
    journal = logsetup.journal_module()
    sent: list[dict[str, object]] = []

    def send(text: str, /, **fields: object) -> None:
        sent.append({"MESSAGE": text, **fields})

    fake = types.SimpleNamespace(
        JournalHandler=lambda **kw: journal.JournalHandler(sender_function=send, **kw)
    )
    monkeypatch.setattr(logsetup, "journal_module", lambda: fake)
    assert logsetup.setup("journal", LogLevel.DEBUG, {}) == "journal"
    foreign = logging.getLogger("trio-websocket")

    def log_all() -> None:
        foreign.debug("sending %r", f"Token {SECRET}")
        try:
            raise OSError(f"refused: {SECRET}")
        except OSError:
            foreign.warning("failed", exc_info=True, stack_info=True)

    registered.set_secrets()  # first with no secret known: shows what would leak
    log_all()
    leaked = "\n".join(f"{k}={v}" for entry in sent for k, v in entry.items())
    assert leaked.count(SECRET) >= 3, leaked  # MESSAGE, CODE_ARGS, EXCEPTION_INFO ...
    sent.clear()
    logsetup.register_secrets(SECRET)
    log_all()
    assert len(sent) == 2
    text = "\n".join(f"{k}={v}" for entry in sent for k, v in entry.items())
    assert SECRET not in text
    assert f"MESSAGE=sending 'Token {REDACTED}'" in text
    assert f"OSError: refused: {REDACTED}" in text
    assert "Stack (most recent call last):" in text


# --- no core dumps, no key in the environment ---------------------------------------------

CHILD_DUMPABLE = """
import ctypes, sys
from dgd.daemon import logsetup
libc = ctypes.CDLL(None)
before = libc.prctl(logsetup.PR_GET_DUMPABLE, 0, 0, 0, 0)
ok = logsetup.forbid_core_dumps()
print(before, ok, libc.prctl(logsetup.PR_GET_DUMPABLE, 0, 0, 0, 0))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_forbid_core_dumps_makes_the_process_not_dumpable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD_DUMPABLE], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["1", "True", "0"], result.stderr


@pytest.mark.usefixtures("restore_root_logging")
def test_forbid_core_dumps_failure_is_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class NoPrctl:
        def __init__(self, *_args: object, **_kwargs: object) -> None:
            pass

        def prctl(self, *_args: object) -> int:
            ctypes.set_errno(1)
            return -1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", NoPrctl)
    assert logsetup.forbid_core_dumps() is False
    logsetup.setup("stderr", LogLevel.INFO, {})
    err = capsys.readouterr().err
    assert "WARNING hardening: could not make the process non-dumpable" in err
    assert "Operation not permitted" in err
    logsetup.setup("stderr", LogLevel.INFO, {})
    assert capsys.readouterr().err == ""  # logged once


CHILD_ENVIRON = """
import ctypes, os
from dgd.daemon import logsetup
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
logsetup.remove_from_environment("DEEPGRAM_API_KEY")
logsetup.remove_from_environment("NOT_SET_AT_ALL")
with open("/proc/self/environ", "rb") as f:
    block = f.read()
print("environ", "DEEPGRAM_API_KEY" in os.environ, libc.getenv(b"DEEPGRAM_API_KEY"))
print("block", b"DEEPGRAM_API_KEY" in block, b"%s" in block, b"KEEP_ME=1" in block)
print("others", os.environ.get("KEEP_ME"), libc.getenv(b"KEEP_ME"))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs /proc")
@pytest.mark.parametrize("remove", [True, False])
def test_remove_from_environment_also_clears_proc_environ(remove: bool) -> None:
    env = {**os.environ, "DEEPGRAM_API_KEY": SECRET, "KEEP_ME": "1"}
    code = CHILD_ENVIRON.replace("%s", SECRET)
    if not remove:  # the control: without it, the key is in all three places
        code = code.replace('logsetup.remove_from_environment("DEEPGRAM_API_KEY")', "")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    expected = [
        f"environ {not remove} {SECRET.encode() if not remove else None!r}",
        f"block {not remove} {not remove} True",
        "others 1 b'1'",
    ]
    assert result.stdout.splitlines() == expected, result.stderr


# --- RepeatFilter ------------------------------------------------------------------------


def test_repeat_window_default() -> None:
    assert REPEAT_WINDOW_S == 300.0
    assert RepeatFilter().window_s == 300.0


def test_records_without_a_key_always_pass() -> None:
    f = RepeatFilter()
    assert [f.filter(record("same")) for _ in range(3)] == [True, True, True]


def test_repeats_are_suppressed_within_the_window_and_counted_after() -> None:
    f = RepeatFilter()
    first = record("device %s lost", "hw:1", dgd_repeat_key="device")
    assert f.filter(first) is True
    assert first.getMessage() == "device hw:1 lost"
    assert [
        f.filter(record("device %s lost", "hw:1", dgd_repeat_key="device")) for _ in range(3)
    ] == [
        False,
        False,
        False,
    ]
    # No clock is injected: shrinking the (public) window ends it without sleeping.
    f.window_s = 0.0
    after = record("device %s lost", "hw:1", dgd_repeat_key="device")
    assert f.filter(after) is True
    assert after.getMessage() == "device hw:1 lost (repeated 3 times in the last 0 min)"
    assert after.args is None
    # A new window starts with that record: the count restarts.
    f.window_s = 300.0
    assert f.filter(record("device lost", dgd_repeat_key="device")) is False
    f.window_s = 0.0
    again = record("device lost", dgd_repeat_key="device")
    assert f.filter(again) is True
    assert again.getMessage() == "device lost (repeated 1 times in the last 0 min)"


def test_repeat_report_names_the_window_in_minutes() -> None:
    f = RepeatFilter(window_s=600.0)
    assert f.filter(record("x", dgd_repeat_key="k")) is True
    assert f.filter(record("x", dgd_repeat_key="k")) is False
    f.window_s = 0.0
    rec = record("x", dgd_repeat_key="k")
    f.filter(rec)
    assert rec.getMessage() == "x (repeated 1 times in the last 0 min)"


def test_a_record_after_the_window_without_repeats_is_unchanged() -> None:
    f = RepeatFilter(window_s=0.0)
    assert f.filter(record("x", dgd_repeat_key="k")) is True
    rec = record("x", dgd_repeat_key="k")
    assert f.filter(rec) is True
    assert rec.getMessage() == "x"


def test_repeat_keys_are_independent() -> None:
    f = RepeatFilter()
    assert f.filter(record("a", dgd_repeat_key="a")) is True
    assert f.filter(record("b", dgd_repeat_key="b")) is True
    assert f.filter(record("a", dgd_repeat_key="a")) is False
    assert f.filter(record("b", dgd_repeat_key="b")) is False
    assert f.filter(record("c", dgd_repeat_key="")) is True  # an empty key opts out


# --- event() -----------------------------------------------------------------------------


def test_event_sets_dgd_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dgd.test.event")
    caplog.set_level(logging.DEBUG, logger="dgd.test.event")
    event(
        "gate_open",
        "speech started at %.1f dBFS",
        -20.0,
        level=logging.WARNING,
        repeat_key="gate",
        logger=logger,
        fields_map={"level_dbfs": -20.0, "threshold_dbfs": -45.0},
        threshold_dbfs=-40.0,  # keywords win over the map
        attempt=3,
    )
    (rec,) = caplog.records
    assert rec.getMessage() == "speech started at -20.0 dBFS"
    assert rec.levelno == logging.WARNING
    assert rec.name == "dgd.test.event"
    assert rec.DGD_EVENT == "gate_open"  # type: ignore[attr-defined]
    assert rec.DGD_LEVEL_DBFS == -20.0  # type: ignore[attr-defined]
    assert rec.DGD_THRESHOLD_DBFS == -40.0  # type: ignore[attr-defined]
    assert rec.DGD_ATTEMPT == 3  # type: ignore[attr-defined]
    assert rec.dgd_repeat_key == "gate"  # type: ignore[attr-defined]


def test_event_defaults(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dgd")
    event("connected", "connected to %s", "api.deepgram.com")
    (rec,) = caplog.records
    assert rec.name == "dgd"
    assert rec.levelno == logging.INFO
    assert rec.DGD_EVENT == "connected"  # type: ignore[attr-defined]
    assert not hasattr(rec, "dgd_repeat_key")
    assert [k for k in vars(rec) if k.startswith("DGD_")] == ["DGD_EVENT"]


def test_event_through_both_filters(caplog: pytest.LogCaptureFixture) -> None:
    # The way setup() wires a handler: secret scrubbing, then repeat folding.
    logger = logging.getLogger("dgd.test.filters")
    logger.propagate = False
    collected: list[logging.LogRecord] = []

    class ListHandler(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            collected.append(rec)

    handler = ListHandler()
    handler.addFilter(secret_filter(SECRET))
    handler.addFilter(RepeatFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        for _ in range(3):
            event("auth", "rejected key %s", SECRET, logger=logger, repeat_key="auth", url=SECRET)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert [r.getMessage() for r in collected] == [f"rejected key {REDACTED}"]
    assert collected[0].DGD_URL == REDACTED  # type: ignore[attr-defined]


# --- StderrFormatter ---------------------------------------------------------------------


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize(
    ("fields", "level", "expected"),
    [
        (
            {"DGD_EVENT": "gate_open"},
            logging.INFO,
            "2026-11-23 21:40:01 INFO gate_open: speech started",
        ),
        ({}, logging.WARNING, "2026-11-23 21:40:01 WARNING speech started"),
        ({"DGD_EVENT": ""}, logging.ERROR, "2026-11-23 21:40:01 ERROR speech started"),
    ],
)
def test_stderr_formatter(fields: dict[str, object], level: int, expected: str) -> None:
    rec = record("speech %s", "started", level=level)
    for key, value in fields.items():
        setattr(rec, key, value)
    rec.created = 1_795_470_001.75
    assert StderrFormatter().format(rec) == expected


@pytest.mark.usefixtures("utc")
def test_stderr_formatter_appends_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("failed", level=logging.ERROR, exc_info=sys.exc_info(), DGD_EVENT="crash")
    rec.created = 1_795_470_001.0
    text = StderrFormatter().format(rec)
    first, rest = text.split("\n", 1)
    assert first == "2026-11-23 21:40:01 ERROR crash: failed"
    assert rest.startswith("Traceback (most recent call last):")
    assert rest.endswith("RuntimeError: boom")


# --- journal_available -------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["", "garbage", "1:2:3", "x:y", "0:0"])
def test_journal_not_available(stream: str) -> None:
    assert journal_available({"JOURNAL_STREAM": stream}) is False


def test_journal_available_when_stderr_matches() -> None:
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        pytest.skip("stderr has no file descriptor under this capture mode")
    assert journal_available({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}) is True
    assert journal_available({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"}) is False


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def repeat_record(message: str, key: str = "k") -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": message, "levelno": logging.WARNING})
    record.dgd_repeat_key = key
    return record


def test_repeat_filter_summarises_a_burst_that_stopped() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(window_s=300.0, clock=clock)
    assert repeats.filter(repeat_record("mic lost")) is True
    for _ in range(37):
        clock.now += 1.0
        assert repeats.filter(repeat_record("mic lost")) is False
    assert repeats.flush() == []  # the window is still open
    clock.now = 1000.0 + 300.0
    [summary] = repeats.flush()
    assert summary.getMessage() == "mic lost (repeated 37 times in the last 5 min)"
    assert repeats.flush() == []  # reported once
    # The next occurrence starts afresh and passes.
    assert repeats.filter(repeat_record("mic lost")) is True


def test_repeat_filter_keys_are_independent() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(window_s=60.0, clock=clock)
    assert [repeats.filter(repeat_record("a", "a")), repeats.filter(repeat_record("b", "b"))] == [
        True,
        True,
    ]
    assert repeats.filter(repeat_record("a", "a")) is False
    clock.now += 60.0
    assert [r.getMessage() for r in repeats.flush()] == ["a (repeated 1 times in the last 1 min)"]


# --- stderr of C libraries under systemd ------------------------------------------------

STDERR_CHILD = """
import os, sys
from dgd.daemon import logsetup
logsetup.setup("journal", "info", os.environ)
logsetup.capture_stderr()
os.write(2, b"plain line from a C library\\n")
import alsaaudio
try:
    alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, device="nosuchdev-" + sys.argv[1])
except alsaaudio.ALSAAudioError:
    pass
raise SystemExit("last words " + sys.argv[1])
"""


@pytest.mark.usefixtures("journald")
def test_capture_stderr_wraps_alsa_lib_lines_as_events(tmp_path: Path) -> None:
    """alsa-lib writes its own diagnostics to fd 2; under systemd each line becomes an event
    with DGD_EVENT, and even the last line before exit is logged (read back with journalctl)."""
    tag = uuid.uuid4().hex[:12]
    script = tmp_path / "child.py"
    script.write_text(STDERR_CHILD)
    with subprocess.Popen(
        [sys.executable, str(script), tag], stderr=subprocess.PIPE, text=True
    ) as child:
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == 1
    assert stderr == ""  # everything went to the journal
    entries = journal_entries(5.0, 3, _PID=str(child.pid))
    events = [(e.get("DGD_EVENT"), e["MESSAGE"]) for e in entries]
    assert ("stderr", "plain line from a C library") in events, events
    assert ("stderr", f"last words {tag}") in events, events
    alsa = [message for name, message in events if name == "alsa_lib"]
    assert any(f"Unknown PCM nosuchdev-{tag}" in m for m in alsa), events
    assert all(name is not None for name, _ in events), events
