"""TOML text, generic: values written in TOML syntax, and tables read with every problem kept.

``dgd.core.config`` uses both: `value` to write the config (``dump``) and to quote the
"(got ...)" of its messages, `Table` to validate a parsed document key by key. Nothing here
knows the config's keys. This module does no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Final, TypeVar

E = TypeVar("E", bound=enum.StrEnum)

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_INTEGER: Final = re.compile(r"-?[1-9][0-9]*|0")


def string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters (but not tab) escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif (code < 0x20 and char != "\t") or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def key(name: str) -> str:
    """A key as written: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else string(name)


def value(item: object) -> str:
    """A value in TOML syntax (``None`` is gate.threshold_dbfs's ``"auto"``, its only use)."""
    if item is None:
        return '"auto"'
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, str):  # enum.StrEnum members too: their value
        return string(str(item))
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, Mapping):
        items = ", ".join(f"{key(str(k))} = {value(v)}" for k, v in item.items())
        return "{" + (f" {items} " if items else "") + "}"
    return str(item)  # TOML dates and times print as themselves


def string_pairs(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The lines of a table of string pairs, the repeats of a key as one array.

    TOML keys are unique, so the repeats of a key must be adjacent. Values that read as
    booleans or integers are written bare, as a person would write them (``smart_format =
    true``): for a reader that turns every value back into a string, as ``[deepgram.query]``'s
    does.

    Raises:
        ValueError: a key's repeats are not adjacent.
    """
    grouped: list[tuple[str, list[str]]] = []
    for name, text in pairs:
        bare = text in ("true", "false") or _INTEGER.fullmatch(text)
        shown = text if bare else string(text)
        if grouped and grouped[-1][0] == name:
            grouped[-1][1].append(shown)
        elif any(name == seen for seen, _ in grouped):
            raise ValueError(f"{key(name)}: its repeats are apart, which TOML cannot express")
        else:
            grouped.append((name, [shown]))
    return [
        f"{key(name)} = {shown[0] if len(shown) == 1 else '[' + ', '.join(shown) + ']'}"
        for name, shown in grouped
    ]


class _Missing:
    """Sentinel type for "key not present"."""


MISSING: Final = _Missing()


class Table:
    """Reads one TOML table, recording problems instead of raising so a parser reports all.

    On a problem a getter returns the default and marks the key bad, so cross-key checks
    can skip keys that already have a complaint.
    """

    def __init__(self, path: str, raw: Mapping[str, object], problems: list[str]) -> None:
        self.path = path
        self.raw = raw
        self.known: list[str] = []
        self.bad: set[str] = set()
        self._problems = problems

    def full(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, text: str, got: object = MISSING) -> None:
        self.bad.add(key)
        shown = "" if got is MISSING else f" (got {value(got)})"
        self._problems.append(f"{self.full(key)}: {text}{shown}")

    def take(self, key: str) -> object:
        self.known.append(key)
        return self.raw.get(key, MISSING)

    def table(self, key: str) -> Mapping[str, object] | None:
        got = self.take(key)
        if got is MISSING:
            return None
        if not isinstance(got, Mapping):
            self.problem(key, f"must be a table ([{self.full(key)}])", got)
            return None
        return got

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        got = self.take(key)
        if got is MISSING:
            return default
        if isinstance(got, bool) or not isinstance(got, int):
            self.problem(key, f"must be a whole number between {lo} and {hi}", got)
            return default
        return got if self.in_range(key, got, lo, hi, "") else default

    def number(
        self, key: str, default: float, lo: float, hi: float, why: str = "", *, above: str = ""
    ) -> float:
        """A number of seconds (or dB): an integer or a float, returned as a float.

        ``why`` is added to both range messages, ``above`` only to the "<=" one.
        """
        got = self.take(key)
        if got is MISSING:
            return default
        if isinstance(got, bool) or not isinstance(got, int | float):
            self.problem(key, f"must be a number between {lo!r} and {hi!r}", got)
            return default
        return float(got) if self.in_range(key, got, lo, hi, why, above=above) else default

    def in_range(
        self, key: str, got: float, lo: float, hi: float, why: str, *, above: str = ""
    ) -> bool:
        # Written as "not >=" so that NaN, which compares false to everything, is refused.
        if not got >= lo:
            self.problem(key, f"must be >= {lo!r}{why}", got)
            return False
        if not got <= hi:
            self.problem(key, f"must be <= {hi!r}{why or above}", got)
            return False
        return True

    def boolean(self, key: str, default: bool) -> bool:
        got = self.take(key)
        if got is MISSING:
            return default
        if not isinstance(got, bool):
            self.problem(key, "must be true or false", got)
            return default
        return got

    def string(self, key: str, default: str) -> str:
        got = self.take(key)
        if got is MISSING:
            return default
        if not isinstance(got, str):
            self.problem(key, "must be a string", got)
            return default
        return got

    def choice(self, key: str, default: E) -> E:
        """One of the members of ``default``'s enum, spelled as its value."""
        got = self.take(key)
        if got is MISSING:
            return default
        members = type(default)
        if not isinstance(got, str) or got not in {m.value for m in members}:
            allowed = ", ".join(string(m.value) for m in members)
            self.problem(key, f"must be one of {allowed}", got)
            return default
        return members(got)

    def unknown_keys(self, schema: Mapping[str, list[str]]) -> None:
        """Complain about every key this table did not read, suggesting what was meant."""
        for name in self.raw:
            if name not in self.known:
                self._problems.append(f"{self.full(name)}: unknown key; {self._hint(name, schema)}")

    def _hint(self, name: str, schema: Mapping[str, list[str]]) -> str:
        # A key under the wrong table (or above all tables) is the likeliest slip, then a typo.
        elsewhere = [
            f"{path}.{name}" if path else name
            for path, keys in schema.items()
            if path != self.path and name in keys
        ]
        if elsewhere:
            return f"did you mean {elsewhere[0]}?"
        import difflib  # only on an error: it costs 10 ms of start-up on every run otherwise

        close = difflib.get_close_matches(name, self.known, n=1)
        if close:
            return f"did you mean {self.full(close[0])}?"
        return ("valid tables: " if not self.path else "valid keys: ") + ", ".join(self.known)
