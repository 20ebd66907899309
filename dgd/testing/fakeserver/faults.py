"""The fault plan of ``dgd fake-server --faults``: the rules, their actions, the JSON parser.

A plan is a JSON list of rules; each rule selects handshake attempts (``Attempts``) and names
one action (a ``Fault``). ``FaultPlan.from_json`` validates everything up front and raises
``FaultPlanError`` naming the rule and the key, so a running server never meets a bad rule.
The connection (``connection.py``) and the server (``server.py``) carry the actions out; this
module does no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_CLOSE_FAULT_REASON",
    "HOSTILE_KINDS",
    "MALFORMED_KINDS",
    "MAX_CLOSE_REASON_BYTES",
    "Attempts",
    "CloseAfterFault",
    "ConfigureFault",
    "DropAfterBytesFault",
    "DropAfterFault",
    "ErrorAfterFault",
    "Fault",
    "FaultPlan",
    "FaultPlanError",
    "FaultRule",
    "MalformedFault",
    "RejectFault",
    "StallFault",
    "TimedFault",
]

#: The ``Error`` message of ``error_after_s`` when the rule names none (the fields of Deepgram's
#: documented example).
DEFAULT_ERROR_CODE: Final = "INTERNAL_SERVER_ERROR"
DEFAULT_ERROR_DESCRIPTION: Final = "An internal server error occurred while processing the request"
#: What ``configure`` can make the server do with a ``Configure`` instead of accepting it.
CONFIGURE_ANSWERS: Final = ("failure", "ignore")
DEFAULT_CLOSE_FAULT_REASON: Final = (
    "NET-0000 fake server closed the stream (injected fault). See https://dpgr.am/net0000"
)
#: RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON_BYTES: Final = 123
_FAULT_REJECT_STATUSES: Final = (400, 401, 402, 403, 429, 503)
#: What ``malformed_after_s`` sends when the rule names no ``kinds``, in this order: messages
#: that are not valid Deepgram messages at all.
MALFORMED_KINDS: Final = (
    "invalid_json",
    "unknown_type",
    "gigantic",
    "no_channel",
    "string_start",
)
#: Well-formed final ``Results`` with a transcript whose content is hostile: impossible or
#: absurd times, or text that is not valid Unicode (the content of each: FAKE_SERVER.md).
HOSTILE_KINDS: Final = (
    "nan_time",
    "negative_time",
    "huge_start",
    "huge_duration",
    "beyond_sent",
    "end_before_start",
    "word_end_before_start",
    "word_outside_result",
    "lone_surrogate",
)


class FaultPlanError(ValueError):
    """The fault plan JSON is malformed; the message names the rule and the key."""


@dataclass(frozen=True, slots=True)
class Attempts:
    """Which handshake attempts (1-based, counted per server) a rule applies to.

    Attributes:
        numbers: explicit attempt numbers, or None for a range.
        first: first attempt of the range (ignored when ``numbers`` is set).
        last: last attempt of the range, inclusive; None means no end.
    """

    numbers: frozenset[int] | None
    first: int = 1
    last: int | None = None

    def matches(self, attempt: int) -> bool:
        """True when ``attempt`` is selected."""
        if self.numbers is not None:
            return attempt in self.numbers
        return attempt >= self.first and (self.last is None or attempt <= self.last)


@dataclass(frozen=True, slots=True)
class RejectFault:
    """Reject the handshake with ``status`` and Deepgram's JSON error body."""

    status: int

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"reject": self.status}


@dataclass(frozen=True, slots=True)
class DropAfterBytesFault:
    """Abort the TCP connection (no close frame) once ``after_bytes`` audio bytes arrived."""

    after_bytes: int

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"drop_after_bytes": self.after_bytes}


@dataclass(frozen=True, slots=True)
class DropAfterFault:
    """Abort the TCP connection (no close frame) ``after_s`` seconds after the handshake."""

    after_s: float

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"drop_after_s": self.after_s}


@dataclass(frozen=True, slots=True)
class CloseAfterFault:
    """Send a close frame ``code``/``reason`` ``after_s`` seconds after the handshake."""

    after_s: float
    code: int = 1011
    reason: str = DEFAULT_CLOSE_FAULT_REASON

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"close_after_s": self.after_s, "code": self.code, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ErrorAfterFault:
    """``after_s`` seconds after the handshake, send an ``Error`` message with ``error_code``
    and ``description``, then close the stream with 1011 (as Deepgram does on a fatal error)."""

    after_s: float
    error_code: str = DEFAULT_ERROR_CODE
    description: str = DEFAULT_ERROR_DESCRIPTION

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {
            "error_after_s": self.after_s,
            "error_code": self.error_code,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class ConfigureFault:
    """Answer every ``Configure`` with ``ConfigureFailure`` (``answer == "failure"``), or not
    at all (``"ignore"``: a server that does not know the message), instead of applying it."""

    answer: str

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"configure": self.answer}


@dataclass(frozen=True, slots=True)
class StallFault:
    """From ``after_s`` after the handshake: no reads, sends or pongs for ``for_s``; then resume."""

    after_s: float
    for_s: float

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"stall_after_s": self.after_s, "stall_for_s": self.for_s}


@dataclass(frozen=True, slots=True)
class MalformedFault:
    """``after_s`` after the handshake, send a message of each of ``kinds`` in order (all but
    ``lone_surrogate``, which spoils the next final with a transcript), then carry on."""

    after_s: float
    kinds: tuple[str, ...] = MALFORMED_KINDS

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        if self.kinds == MALFORMED_KINDS:
            return {"malformed_after_s": self.after_s}
        return {"malformed_after_s": self.after_s, "kinds": list(self.kinds)}


Fault = (
    RejectFault
    | DropAfterBytesFault
    | DropAfterFault
    | CloseAfterFault
    | ErrorAfterFault
    | StallFault
    | MalformedFault
    | ConfigureFault
)
TimedFault = DropAfterFault | CloseAfterFault | ErrorAfterFault | StallFault | MalformedFault


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One rule of a fault plan: an action for the selected handshake attempts."""

    attempts: Attempts
    action: Fault


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults to inject, as parsed from the ``--faults`` JSON file (see FAKE_SERVER.md)."""

    rules: tuple[FaultRule, ...] = ()

    @classmethod
    def none(cls) -> FaultPlan:
        """A plan that injects nothing."""
        return cls(())

    @classmethod
    def from_json(cls, text: str) -> FaultPlan:
        """Parse a plan: a JSON list of rule objects.

        Raises:
            FaultPlanError: the text is not valid JSON or a rule is malformed; the message
                names the rule (1-based) and the offending key.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaultPlanError(f"not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise FaultPlanError("the fault plan must be a JSON list of rule objects")
        return cls(tuple(_parse_rule(index, item) for index, item in enumerate(data, 1)))

    def actions_for(self, attempt: int) -> tuple[Fault, ...]:
        """Every action whose rule selects handshake attempt ``attempt``, in plan order."""
        return tuple(rule.action for rule in self.rules if rule.attempts.matches(attempt))


_ACTION_KEYS: Final = (
    "reject",
    "drop_after_bytes",
    "drop_after_s",
    "close_after_s",
    "error_after_s",
    "stall_after_s",
    "malformed_after_s",
    "configure",
)
_COMPANION_KEYS: Final = {
    "close_after_s": {"code", "reason"},
    "error_after_s": {"error_code", "description"},
    "stall_after_s": {"stall_for_s"},
    "malformed_after_s": {"kinds"},
}


def _parse_rule(index: int, item: object) -> FaultRule:
    where = f"rule {index}"
    if not isinstance(item, dict):
        raise FaultPlanError(f"{where}: must be a JSON object, got {type(item).__name__}")
    actions = [key for key in _ACTION_KEYS if key in item]
    if len(actions) != 1:
        raise FaultPlanError(
            f"{where}: needs exactly one action key of {', '.join(_ACTION_KEYS)} "
            f"(found {', '.join(actions) or 'none'})"
        )
    action_key = actions[0]
    allowed = {"attempts", action_key} | _COMPANION_KEYS.get(action_key, set())
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise FaultPlanError(f"{where}: unknown key(s) {', '.join(unknown)} for {action_key!r}")
    if "attempts" not in item:
        raise FaultPlanError(f'{where}: missing "attempts" (a list, "all" or {{"from", "to"}})')
    attempts = _parse_attempts(where, item["attempts"])
    return FaultRule(attempts, _parse_action(where, action_key, item))


def _parse_attempts(where: str, value: object) -> Attempts:
    if value == "all":
        return Attempts(None)
    if isinstance(value, list):
        if not value or not all(_is_int(n) and n >= 1 for n in value):
            raise FaultPlanError(f"{where}: attempts: a list must hold attempt numbers >= 1")
        return Attempts(frozenset(value))
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"from", "to"})
        first = value.get("from", 1)
        last = value.get("to")
        if unknown or not _is_int(first) or first < 1:
            raise FaultPlanError(f'{where}: attempts: expected {{"from": N >= 1, "to": M}}')
        if last is not None and (not _is_int(last) or last < first):
            raise FaultPlanError(f'{where}: attempts: "to" must be an integer >= "from"')
        return Attempts(None, first, last)
    raise FaultPlanError(
        f'{where}: attempts: expected a list of numbers, "all" or {{"from", "to"}}'
    )


def _parse_action(where: str, key: str, item: dict[str, Any]) -> Fault:
    value = item[key]
    if key == "reject":
        if not _is_int(value) or value not in _FAULT_REJECT_STATUSES:
            codes = ", ".join(map(str, _FAULT_REJECT_STATUSES))
            raise FaultPlanError(f"{where}: reject: must be one of {codes} (got {value!r})")
        return RejectFault(value)
    if key == "drop_after_bytes":
        if not _is_int(value) or value < 0:
            raise FaultPlanError(f"{where}: drop_after_bytes: must be an integer >= 0")
        return DropAfterBytesFault(value)
    if key == "configure":
        if value not in CONFIGURE_ANSWERS:
            answers = ", ".join(map(repr, CONFIGURE_ANSWERS))
            raise FaultPlanError(f"{where}: configure: must be one of {answers} (got {value!r})")
        return ConfigureFault(value)
    after_s = _seconds(where, key, value)
    if key == "drop_after_s":
        return DropAfterFault(after_s)
    if key == "malformed_after_s":
        return MalformedFault(after_s, _kinds(where, item.get("kinds", list(MALFORMED_KINDS))))
    if key == "error_after_s":
        error_code = item.get("error_code", DEFAULT_ERROR_CODE)
        description = item.get("description", DEFAULT_ERROR_DESCRIPTION)
        for name, text in (("error_code", error_code), ("description", description)):
            if not isinstance(text, str):
                raise FaultPlanError(f"{where}: {name}: must be a string (got {text!r})")
        return ErrorAfterFault(after_s, error_code, description)
    if key == "stall_after_s":
        if "stall_for_s" not in item:
            raise FaultPlanError(f"{where}: stall_after_s needs stall_for_s (seconds to stall)")
        return StallFault(after_s, _seconds(where, "stall_for_s", item["stall_for_s"]))
    code = item.get("code", 1011)
    reason = item.get("reason", DEFAULT_CLOSE_FAULT_REASON)
    # 1004-1006 and 1015 are reserved or local-only: they may never appear in a close frame.
    if not _is_int(code) or not 1000 <= code <= 4999 or code in (1004, 1005, 1006, 1015):
        raise FaultPlanError(
            f"{where}: code: must be a sendable close code 1000-4999 (got {code!r})"
        )
    if not isinstance(reason, str) or len(reason.encode()) > MAX_CLOSE_REASON_BYTES:
        raise FaultPlanError(
            f"{where}: reason: must be a string of at most {MAX_CLOSE_REASON_BYTES} UTF-8 bytes"
        )
    return CloseAfterFault(after_s, code, reason)


def _kinds(where: str, value: object) -> tuple[str, ...]:
    known = (*MALFORMED_KINDS, *HOSTILE_KINDS)
    if not isinstance(value, list) or not value or not all(k in known for k in value):
        raise FaultPlanError(
            f"{where}: kinds: must be a non-empty list of {', '.join(known)} (got {value!r})"
        )
    return tuple(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(where: str, key: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise FaultPlanError(f"{where}: {key}: must be a number of seconds >= 0 (got {value!r})")
    if not math.isfinite(value):
        raise FaultPlanError(f"{where}: {key}: must be finite")
    return float(value)
