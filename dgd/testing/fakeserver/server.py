"""``dgd fake-server``: a local Deepgram-compatible ``/v1/listen`` server with fault injection.

It answers the live STT protocol of ``docs/FAKE_SERVER.md`` (handshake checks, Results built
from its own energy detector, Finalize/CloseStream/KeepAlive, the 10 s idle close), records
every connection attempt when asked to, and injects the faults of a JSON fault plan (rejected
handshakes, TCP drops, error closes, stalls, malformed messages). It never recognises speech:
a transcript says how much voiced audio a span held, so tests can compute it from the bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import operator
import signal
import socket
import struct
import sys
import time
import uuid
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError as WsprotoStateError

from dgd.core.messages import SECRET_QUERY_KEYS

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_ENDPOINTING_MS",
    "IDLE_CLOSE_REASON",
    "MODEL_UUID",
    "CloseAfterFault",
    "DropAfterBytesFault",
    "DropAfterFault",
    "Fault",
    "FaultPlan",
    "FaultPlanError",
    "FaultRule",
    "MalformedFault",
    "RejectFault",
    "SpeechTracker",
    "StallFault",
    "main",
    "serve",
]

logger: Final = logging.getLogger(__name__)

LISTEN_PATH: Final = "/v1/listen"
#: The "model" every result claims to come from; one fixed uuid keeps recordings diffable.
MODEL_UUID: Final = "00000000-0000-4000-8000-000000000fa6"
MODEL_INFO: Final = {"name": "fake", "version": "0", "arch": "fake"}
CONFIDENCE: Final = 0.99
#: Deepgram's default is 10 ms; 600 ms is what a client with a speech gate should plan for,
#: and a fake that ends utterances on every tiny pause would make tests noisy.
DEFAULT_ENDPOINTING_MS: Final = 600
#: The reason real Deepgram gives for NET-0001 (108 bytes: fits the 123-byte close reason).
IDLE_CLOSE_REASON: Final = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
DEFAULT_CLOSE_FAULT_REASON: Final = (
    "NET-0000 fake server closed the stream (injected fault). See https://dpgr.am/net0000"
)
#: RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON_BYTES: Final = 123

_BLOCK_MS: Final = 20
#: -50 dBFS as an exact integer test: mean(x²) > (32768 · 10^(-50/20))² = 32768² / 10^5.
_VOICED_NUMERATOR: Final = 100_000
_VOICED_DENOMINATOR: Final = 32768 * 32768
#: Real Deepgram finalises long continuous speech roughly every 10 s of audio.
_MAX_SPAN_S: Final = 10
#: "Interim results roughly once per second" (Deepgram interim-results docs).
_INTERIM_EVERY_S: Final = 1
#: A client that connects and never completes the HTTP upgrade is dropped after this.
_HANDSHAKE_TIMEOUT_S: Final = 10.0
#: How long a server-initiated close waits for the client's close frame before hanging up.
_CLOSE_HANDSHAKE_TIMEOUT_S: Final = 5.0
#: Control messages are tiny; longer text is recorded but not parsed (keeps per-frame work small).
_MAX_CONTROL_TEXT_CHARS: Final = 4096
#: Longest text of a sent message kept verbatim in the recording (the 1 MB malformed one isn't).
_MAX_RECORDED_TEXT_CHARS: Final = 65536

#: Deepgram's handshake error bodies (errors.mdx), by HTTP status.
_REJECTIONS: Final[dict[int, tuple[str, str]]] = {
    400: ("INVALID_QUERY_PARAMETER", "Invalid query parameter (injected fault)."),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: ("ASR_PAYMENT_REQUIRED", "Project does not have enough credits for an ASR request."),
    403: ("INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."),
    404: ("NOT_FOUND", f"Unknown path: the live API is served at {LISTEN_PATH}."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later."),
    503: ("SERVICE_UNAVAILABLE", "The service is temporarily unavailable. Please retry later."),
}
_FAULT_REJECT_STATUSES: Final = (400, 401, 402, 403, 429, 503)


# --------------------------------------------------------------------------- fault plan


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
class StallFault:
    """From ``after_s`` after the handshake: no reads, sends or pongs for ``for_s``; then resume."""

    after_s: float
    for_s: float

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"stall_after_s": self.after_s, "stall_for_s": self.for_s}


@dataclass(frozen=True, slots=True)
class MalformedFault:
    """``after_s`` after the handshake, send the malformed-message sequence, then carry on."""

    after_s: float

    def describe(self) -> dict[str, object]:
        """The rule's action as it appears in the plan (for the recording)."""
        return {"malformed_after_s": self.after_s}


Fault = (
    RejectFault
    | DropAfterBytesFault
    | DropAfterFault
    | CloseAfterFault
    | StallFault
    | MalformedFault
)
TimedFault = DropAfterFault | CloseAfterFault | StallFault | MalformedFault


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
    "stall_after_s",
    "malformed_after_s",
)
_COMPANION_KEYS: Final = {"close_after_s": {"code", "reason"}, "stall_after_s": {"stall_for_s"}}


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
    after_s = _seconds(where, key, value)
    if key == "drop_after_s":
        return DropAfterFault(after_s)
    if key == "malformed_after_s":
        return MalformedFault(after_s)
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(where: str, key: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise FaultPlanError(f"{where}: {key}: must be a number of seconds >= 0 (got {value!r})")
    if not math.isfinite(value):
        raise FaultPlanError(f"{where}: {key}: must be finite")
    return float(value)


# --------------------------------------------------------------------------- speech tracking


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What the handshake query asked for (validated).

    Attributes:
        rate_hz: ``sample_rate``.
        channels: ``channels`` (default 1).
        endpointing_ms: silence that ends an utterance (``endpointing``, default 600).
        interim_results: ``interim_results=true``.
        vad_events: ``vad_events=true``.
        utterance_end_ms: ``utterance_end_ms`` if given as an integer.
    """

    rate_hz: int
    channels: int = 1
    endpointing_ms: int = DEFAULT_ENDPOINTING_MS
    interim_results: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None


class SpeechTracker:
    """The fake recogniser of one connection: audio bytes in, Deepgram message objects out.

    Audio is cut into 20 ms blocks; a block is voiced when its RMS (all channels together)
    is above -50 dBFS. Offsets are seconds of audio received on this connection. Each final
    covers the audio from the previous final's end; see FAKE_SERVER.md for when finals,
    interims, SpeechStarted and UtteranceEnd are produced. This class does no I/O.
    """

    def __init__(self, options: StreamOptions, request_id: str) -> None:
        self.options = options
        self.request_id = request_id
        self.received_bytes = 0
        self._frame_bytes = 2 * options.channels
        self._bytes_per_s = options.rate_hz * self._frame_bytes
        self._block_bytes = max(1, options.rate_hz * _BLOCK_MS // 1000) * self._frame_bytes
        self._endpoint_bytes = options.endpointing_ms * self._bytes_per_s // 1000
        self._max_span_bytes = _MAX_SPAN_S * self._bytes_per_s
        self._interim_bytes = _INTERIM_EVERY_S * self._bytes_per_s
        self._sha256 = hashlib.sha256()
        self._carry = b""
        self._classified = 0  # audio bytes already cut into blocks and classified
        self._span_start = 0  # where the next final starts (the previous final's end)
        self._voiced_start: int | None = None  # first voiced block start in the span
        self._voiced_end: int | None = None  # last voiced block end in the span
        self._last_silent_end: int | None = None  # end of the latest silent block in the span
        self._voiced_end_at_silence: int | None = None  # _voiced_end when that block came
        self._last_word_end: int | None = None
        self._in_utterance = False
        self._silence_bytes = 0
        self._speech_since_interim = 0
        self._metadata_model_info = {MODEL_UUID: dict(MODEL_INFO)}

    def seconds(self, n_bytes: int) -> float:
        """Audio offset in seconds of byte offset ``n_bytes``."""
        return n_bytes / self._bytes_per_s

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Take one binary frame of audio; return the messages it triggers, in order."""
        self._sha256.update(data)
        self.received_bytes += len(data)
        out: list[dict[str, Any]] = []
        buffer = memoryview(self._carry + data if self._carry else data)
        block = self._block_bytes
        position = 0
        while len(buffer) - position >= block:
            self._classify(buffer[position : position + block], out)
            position += block
        self._carry = bytes(buffer[position:])
        return out

    def flush(self, *, from_finalize: bool) -> list[dict[str, Any]]:
        """Finalize or close: classify any partial block, then one final to "now" (always)."""
        out: list[dict[str, Any]] = []
        if self._carry:
            carry, self._carry = self._carry, b""
            self._classify(memoryview(carry), out)
        out.append(self._final(self._classified, speech_final=False, from_finalize=from_finalize))
        self._in_utterance = False
        self._silence_bytes = 0
        return out

    def metadata(self, created: datetime) -> dict[str, Any]:
        """The Metadata message sent before the server closes the stream."""
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha256.hexdigest(),
            "created": created.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "duration": self.seconds(self.received_bytes),
            "channels": self.options.channels if self.received_bytes else 0,
            "models": [MODEL_UUID],
            "model_info": self._metadata_model_info,
        }

    def empty_results(self) -> dict[str, Any]:
        """A well-formed empty final at the current offset; changes no state.

        The malformed-messages fault breaks copies of it.
        """
        return self._results(self._classified, self._classified, None)

    def _classify(self, block: memoryview, out: list[dict[str, Any]]) -> None:
        start = self._classified
        end = self._classified = start + len(block)
        if _is_voiced(block):
            if not self._in_utterance:
                self._in_utterance = True
                if self.options.vad_events:
                    out.append(self._speech_started(start))
            if self._voiced_start is None:
                self._voiced_start = start
            self._voiced_end = self._last_word_end = end
            self._silence_bytes = 0
            self._speech_since_interim += end - start
            if self.options.interim_results and self._speech_since_interim >= self._interim_bytes:
                self._speech_since_interim = 0
                out.append(self._results(self._span_start, end, self._voiced(), is_final=False))
        else:
            self._last_silent_end = end
            self._voiced_end_at_silence = self._voiced_end
            if self._in_utterance:
                self._silence_bytes += end - start
                if self._silence_bytes >= self._endpoint_bytes:
                    self._end_utterance(end, out)
                    return
        if end - self._span_start >= self._max_span_bytes:
            self._cut_long_span(end, out)

    def _end_utterance(self, end: int, out: list[dict[str, Any]]) -> None:
        voiced = self._voiced()
        if voiced is not None:
            out.append(self._results(self._span_start, end, voiced, speech_final=True))
        self._start_span(end)
        self._in_utterance = False
        self._silence_bytes = 0
        if self.options.utterance_end_ms is not None and self._last_word_end is not None:
            out.append(
                {
                    "type": "UtteranceEnd",
                    "channel": [0, self.options.channels],
                    "last_word_end": self.seconds(self._last_word_end),
                }
            )

    def _cut_long_span(self, end: int, out: list[dict[str, Any]]) -> None:
        # Cut at the latest silent block, so a word is not split; every block after it is
        # voiced, which makes the remainder's voiced range exactly [cut, end).
        silent_end = self._last_silent_end
        if silent_end is None or silent_end <= self._span_start or silent_end == end:
            voiced = self._voiced()
            cut = end
        else:
            voiced_end = self._voiced_end_at_silence
            voiced_start = self._voiced_start
            voiced = (
                None if voiced_start is None or voiced_end is None else (voiced_start, voiced_end)
            )
            cut = silent_end
        if voiced is not None:
            out.append(self._results(self._span_start, cut, voiced))
        self._start_span(cut)
        if cut < end:
            self._voiced_start, self._voiced_end = cut, end

    def _start_span(self, start: int) -> None:
        self._span_start = start
        self._voiced_start = self._voiced_end = None
        self._last_silent_end = self._voiced_end_at_silence = None
        self._speech_since_interim = 0

    def _voiced(self) -> tuple[int, int] | None:
        if self._voiced_start is None or self._voiced_end is None:
            return None
        return self._voiced_start, self._voiced_end

    def _final(self, end: int, *, speech_final: bool, from_finalize: bool) -> dict[str, Any]:
        message = self._results(
            self._span_start,
            end,
            self._voiced(),
            speech_final=speech_final,
            from_finalize=from_finalize,
        )
        self._start_span(end)
        return message

    def _speech_started(self, start: int) -> dict[str, Any]:
        return {
            "type": "SpeechStarted",
            "channel": [0, self.options.channels],
            "timestamp": self.seconds(start),
        }

    def _results(
        self,
        start: int,
        end: int,
        voiced: tuple[int, int] | None,
        *,
        is_final: bool = True,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        if voiced is None:
            transcript = ""
            words: list[dict[str, Any]] = []
        else:
            voiced_start_s, voiced_end_s = self.seconds(voiced[0]), self.seconds(voiced[1])
            transcript = f"[speech {voiced_end_s - voiced_start_s:.2f} s]"
            words = [
                {
                    "word": "[speech]",
                    "punctuated_word": "[speech]",
                    "start": voiced_start_s,
                    "end": voiced_end_s,
                    "confidence": CONFIDENCE,
                }
            ]
        return {
            "type": "Results",
            "channel_index": [0, self.options.channels],
            "duration": self.seconds(end - start),
            "start": self.seconds(start),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {"transcript": transcript, "confidence": CONFIDENCE, "words": words}
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": dict(MODEL_INFO),
                "model_uuid": MODEL_UUID,
            },
        }


def _is_voiced(block: memoryview) -> bool:
    decoded = array("h")
    usable = len(block) - len(block) % 2
    decoded.frombytes(block[:usable])
    if sys.byteorder != "little":
        decoded.byteswap()
    if not decoded:
        return False
    energy: int = sum(map(operator.mul, decoded, decoded))
    return energy * _VOICED_NUMERATOR > _VOICED_DENOMINATOR * len(decoded)


# --------------------------------------------------------------------------- handshake


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused handshake: HTTP status and Deepgram's ``err_code``/``err_msg``."""

    status: int
    err_code: str
    err_msg: str

    @classmethod
    def of(cls, status: int, err_msg: str | None = None) -> Rejection:
        """The standard rejection for ``status``, optionally with a specific message."""
        err_code, default_msg = _REJECTIONS[status]
        return cls(status, err_code, err_msg or default_msg)


def auth_ok(headers: Sequence[tuple[bytes, bytes]], api_key: str | None) -> bool:
    """True when the headers carry ``Authorization: Token <non-empty>`` (matching ``api_key``)."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").strip().partition(" ")
        token = token.strip()
        return scheme.lower() == "token" and bool(token) and (api_key is None or token == api_key)
    return False


def parse_options(query: dict[str, list[str]]) -> StreamOptions | Rejection:
    """Validate the handshake query; a Rejection (400) explains what to fix."""
    encoding = _last(query, "encoding")
    if encoding != "linear16":
        got = "missing" if encoding is None else f"got {encoding!r}"
        return Rejection.of(
            400,
            "The fake server decodes raw PCM only: query parameter encoding must be "
            f"linear16 ({got}).",
        )
    rate = _positive_int(_last(query, "sample_rate"))
    if rate is None:
        return Rejection.of(
            400, "Query parameter sample_rate must be a positive integer when encoding is set."
        )
    channels_text = _last(query, "channels")
    channels = 1 if channels_text is None else _positive_int(channels_text)
    if channels is None:
        return Rejection.of(400, "Query parameter channels must be a positive integer.")
    endpointing = _non_negative_int(_last(query, "endpointing"))
    return StreamOptions(
        rate_hz=rate,
        channels=channels,
        endpointing_ms=DEFAULT_ENDPOINTING_MS if endpointing is None else endpointing,
        interim_results=_last(query, "interim_results") == "true",
        vad_events=_last(query, "vad_events") == "true",
        utterance_end_ms=_non_negative_int(_last(query, "utterance_end_ms")),
    )


def _last(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _non_negative_int(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _positive_int(text: str | None) -> int | None:
    value = _non_negative_int(text)
    return value if value else None


# --------------------------------------------------------------------------- recording


class _Recorder:
    """``conn-NNNN.raw`` and ``conn-NNNN.jsonl`` of one connection attempt (or nothing)."""

    def __init__(self, record_dir: Path | None, attempt: int) -> None:
        self._jsonl: IO[str] | None = None
        self._raw: IO[bytes] | None = None
        if record_dir is not None:
            stem = record_dir / f"conn-{attempt:04d}"
            self._jsonl = stem.with_suffix(".jsonl").open("w", encoding="utf-8")
            self._raw = stem.with_suffix(".raw").open("wb")

    def event(self, kind: str, **fields: object) -> None:
        if self._jsonl is not None:
            self._line(json.dumps({"t": time.time(), "kind": kind, **fields}))

    def sent(self, text: str, *, known_json: bool) -> None:
        """Record a sent message; JSON is spliced in as is, without re-encoding it."""
        if self._jsonl is None:
            return
        if len(text) <= _MAX_RECORDED_TEXT_CHARS and (known_json or _is_json_object(text)):
            self._line(f'{{"t": {time.time()!r}, "kind": "sent", "message": {text}}}')
        else:
            head = text[:200]
            self._line(
                json.dumps({"t": time.time(), "kind": "sent", "text": head, "len": len(text)})
            )

    def audio(self, data: bytes, offset: int) -> None:
        if self._jsonl is None or self._raw is None:
            return
        self._raw.write(data)
        self._raw.flush()
        self._line(
            f'{{"t": {time.time()!r}, "kind": "binary", "len": {len(data)}, "offset": {offset}}}'
        )

    def close(self) -> None:
        for file in (self._jsonl, self._raw):
            if file is not None:
                file.close()

    def _line(self, line: str) -> None:
        assert self._jsonl is not None
        self._jsonl.write(line + "\n")
        self._jsonl.flush()


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _control_type(text: str) -> str | None:
    if len(text) > _MAX_CONTROL_TEXT_CHARS:
        return None
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(message, dict) and isinstance(message.get("type"), str):
        return str(message["type"])
    return None


# --------------------------------------------------------------------------- transport


class _FaultableStream(trio.abc.Stream):
    """The TCP stream under trio-websocket, with the two faults the library cannot do.

    ``stall()`` blocks both directions below wsproto, so even trio-websocket's automatic
    pongs stop (its reader task answers pings itself); ``abort()`` resets the TCP connection
    (SO_LINGER 0) so the client sees no close frame.
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self._inner = inner
        self._flowing = trio.Event()
        self._flowing.set()

    def stall(self) -> None:
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def abort(self) -> None:
        self._flowing.set()
        # Linger 0 makes close() send RST instead of FIN: an abrupt drop, as on a dead NAT.
        with contextlib.suppress(OSError):  # already closed: nothing left to abort
            self._inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._inner.aclose()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._flowing.wait()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._flowing.wait()
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._flowing.wait()
        data = await self._inner.receive_some(max_bytes)
        # Bytes that arrive during a stall are held until it ends (pings stay unanswered).
        await self._flowing.wait()
        return data

    async def aclose(self) -> None:
        self._flowing.set()
        await self._inner.aclose()


# --------------------------------------------------------------------------- connections


_MALFORMED_TEXTS: Final = (
    '{"type": "Res',
    '{"type":"Mystery"}',
    # Exactly 1 000 000 characters: under trio-websocket's default 1 MiB message limit.
    '{"type":"Gigantic","padding":"' + "x" * (1_000_000 - 32) + '"}',
)


class _Connection:
    """One accepted WebSocket: the receive loop, the timed faults, the recording."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: _FaultableStream,
        tracker: SpeechTracker,
        recorder: _Recorder,
        faults: tuple[Fault, ...],
        idle_timeout_s: float,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._tracker = tracker
        self._recorder = recorder
        self._idle_timeout_s = idle_timeout_s
        self._created = datetime.now(UTC)
        self._opened_at = trio.current_time()
        self._last_activity = self._opened_at
        self._stall_over: trio.Event | None = None
        self._close_recorded = False
        self._timed = [f for f in faults if not isinstance(f, RejectFault | DropAfterBytesFault)]
        drops = [f for f in faults if isinstance(f, DropAfterBytesFault)]
        self._drop_after_bytes = min(drops, key=lambda f: f.after_bytes) if drops else None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for fault in self._timed:
                nursery.start_soon(self._timed_fault, fault)
            try:
                await self._receive_loop()
            except trio_websocket.ConnectionClosed:
                self._record_close_by_client()
            nursery.cancel_scope.cancel()

    async def _receive_loop(self) -> None:
        while True:
            message = await self._next_message()
            if message is None:
                await self._send(self._tracker.metadata(self._created))
                await self._close(1011, IDLE_CLOSE_REASON)
                return
            self._last_activity = trio.current_time()
            if isinstance(message, str):
                self._recorder.event("text", text=message)
                kind = _control_type(message)
                if kind == "Finalize":
                    await self._send_all(self._tracker.flush(from_finalize=True))
                elif kind == "CloseStream":
                    await self._close_stream()
                    return
                continue  # KeepAlive and anything else only reset the idle timer
            self._recorder.audio(message, self._tracker.received_bytes)
            if not message:  # an empty binary frame means CloseStream to Deepgram
                await self._close_stream()
                return
            await self._send_all(self._tracker.feed(message))
            drop = self._drop_after_bytes
            if drop is not None and self._tracker.received_bytes >= drop.after_bytes:
                await self._drop(drop)
                return

    async def _next_message(self) -> str | bytes | None:
        """The next frame, or None once no frame came for ``idle_timeout_s`` (NET-0001)."""
        while True:
            if self._stall_over is not None:
                await self._stall_over.wait()
            with trio.move_on_at(self._last_activity + self._idle_timeout_s):
                message: str | bytes = await self._ws.get_message()
                return message
            # A stall (which resets the timer when it ends) may have run meanwhile.
            stalled = self._stall_over is not None
            if not stalled and trio.current_time() >= self._last_activity + self._idle_timeout_s:
                return None

    async def _close_stream(self) -> None:
        await self._send_all(self._tracker.flush(from_finalize=False))
        await self._send(self._tracker.metadata(self._created))
        await self._close(1000, None)

    async def _send_all(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_text(json.dumps(message, separators=(",", ":")), known_json=True)

    async def _send_text(self, text: str, *, known_json: bool) -> None:
        try:
            await self._ws.send_message(text)
        except WsprotoStateError as exc:
            # trio-websocket 0.9 (Debian 12) lets wsproto's state error through when the peer
            # is already gone; newer releases raise ConnectionClosed, which callers handle.
            raise trio_websocket.ConnectionClosed(self._ws.closed) from exc
        self._recorder.sent(text, known_json=known_json)

    async def _close(self, code: int, reason: str | None) -> None:
        self._record_close(code, reason, "server")
        with trio.move_on_after(_CLOSE_HANDSHAKE_TIMEOUT_S):
            await self._ws.aclose(code, reason)

    async def _drop(self, fault: Fault) -> None:
        self._recorder.event("fault", fault=fault.describe())
        self._record_close(1006, "TCP connection aborted without a close frame", "server")
        await self._stream.abort()

    async def _timed_fault(self, fault: TimedFault) -> None:
        await trio.sleep_until(self._opened_at + fault.after_s)
        try:
            await self._fire(fault)
        except trio_websocket.ConnectionClosed:
            self._record_close_by_client()

    async def _fire(self, fault: TimedFault) -> None:
        if isinstance(fault, DropAfterFault):
            await self._drop(fault)
            return
        self._recorder.event("fault", fault=fault.describe())
        if isinstance(fault, CloseAfterFault):
            await self._close(fault.code, fault.reason)
        elif isinstance(fault, StallFault):
            self._stall_over = trio.Event()
            self._stream.stall()
            await trio.sleep(fault.for_s)
            self._stream.resume()
            self._last_activity = trio.current_time()
            self._stall_over.set()
            self._stall_over = None
        else:
            for text in _MALFORMED_TEXTS:
                await self._send_text(text, known_json=False)
            template = self._tracker.empty_results()
            await self._send({k: v for k, v in template.items() if k != "channel"})
            await self._send({**template, "start": str(template["start"])})

    def _record_close_by_client(self) -> None:
        closed = self._ws.closed
        if closed is None:
            self._record_close(1006, None, "client")
        else:
            self._record_close(closed.code, closed.reason, "client")

    def _record_close(self, code: int, reason: str | None, by: Literal["server", "client"]) -> None:
        if not self._close_recorded:
            self._close_recorded = True
            self._recorder.event("close", code=code, reason=reason, by=by)


# --------------------------------------------------------------------------- server


class _Server:
    """Per-``serve`` state: the attempt counter and the settings every connection shares."""

    def __init__(
        self, faults: FaultPlan, record_dir: Path | None, api_key: str | None, idle_timeout_s: float
    ) -> None:
        self.faults = faults
        self.record_dir = record_dir
        self.api_key = api_key
        self.idle_timeout_s = idle_timeout_s
        self.attempts = 0

    async def handle_tcp(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; a client that vanishes never takes the server down."""
        faultable = _FaultableStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                request: trio_websocket.WebSocketRequest | None = None
                with trio.move_on_after(_HANDSHAKE_TIMEOUT_S):
                    request = await trio_websocket.wrap_server_stream(nursery, faultable)
                if request is not None:
                    await self.handle_request(request, faultable)
                nursery.cancel_scope.cancel()  # stops trio-websocket's reader task
        except* (
            trio_websocket.ConnectionClosed,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as group:
            logger.info("connection lost: %r", group.exceptions[0])
        except* OSError as group:
            # A socket error, or --record-dir became unwritable: this connection ends, the
            # server keeps serving the next ones.
            logger.warning("connection failed: %s", group.exceptions[0])
        finally:
            await trio.aclose_forcefully(faultable)

    async def handle_request(
        self, request: trio_websocket.WebSocketRequest, stream: _FaultableStream
    ) -> None:
        """Check the handshake, then reject it or run the connection (recording both)."""
        self.attempts += 1
        attempt = self.attempts
        request_id = str(uuid.uuid4())
        target = urlsplit(request.path)
        query = parse_qs(target.query, keep_blank_values=True)
        faults = self.faults.actions_for(attempt)
        reject = next((f for f in faults if isinstance(f, RejectFault)), None)
        authorized = auth_ok(request.headers, self.api_key)
        recorder = _Recorder(self.record_dir, attempt)
        try:
            outcome = _decide(target.path, query, reject, authorized)
            status = outcome.status if isinstance(outcome, Rejection) else 101
            recorder.event(
                "handshake",
                attempt=attempt,
                request_id=request_id,
                path=target.path,
                query=_recordable_query(query),
                auth_ok=authorized,
                status=status,
            )
            logger.info(
                "attempt %d: %s -> %d (request %s)", attempt, target.path, status, request_id
            )
            if isinstance(outcome, Rejection):
                if reject is not None and target.path == LISTEN_PATH:
                    recorder.event("fault", fault=reject.describe())
                await _reject(request, outcome, request_id)
                return
            ws = await request.accept(extra_headers=[(b"dg-request-id", request_id.encode())])
            tracker = SpeechTracker(outcome, request_id)
            connection = _Connection(ws, stream, tracker, recorder, faults, self.idle_timeout_s)
            await connection.run()
        finally:
            recorder.close()


def _decide(
    path: str, query: dict[str, list[str]], reject: RejectFault | None, authorized: bool
) -> StreamOptions | Rejection:
    # Order: unknown path, injected rejection (an overloaded server refuses before it looks
    # at credentials), credentials, then the query.
    if path != LISTEN_PATH:
        return Rejection.of(404)
    if reject is not None:
        return Rejection.of(reject.status)
    if not authorized:
        return Rejection.of(401)
    return parse_options(query)


def _recordable_query(query: dict[str, list[str]]) -> dict[str, str | list[str]]:
    recorded: dict[str, str | list[str]] = {}
    for key, values in query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            recorded[key] = "<redacted>"
        else:
            recorded[key] = values[0] if len(values) == 1 else values
    return recorded


async def _reject(
    request: trio_websocket.WebSocketRequest, rejection: Rejection, request_id: str
) -> None:
    body = json.dumps(
        {"err_code": rejection.err_code, "err_msg": rejection.err_msg, "request_id": request_id},
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"dg-request-id", request_id.encode()),
        (b"dg-error", rejection.err_msg.encode("ascii", "replace")),
    ]
    with trio.move_on_after(_CLOSE_HANDSHAKE_TIMEOUT_S):
        await request.reject(rejection.status, extra_headers=headers, body=body)


async def serve(
    host: str,
    port: int,
    *,
    faults: FaultPlan,
    record_dir: Path | None,
    api_key: str | None = None,
    idle_timeout_s: float = 10.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the fake ``/v1/listen`` on ``host:port`` until cancelled.

    Args:
        host: address to bind (``127.0.0.1`` for tests and demos).
        port: TCP port; 0 picks a free one, reported through ``task_status``.
        faults: the fault plan (``FaultPlan.none()`` for none); attempts count from 1 per call.
        record_dir: where ``conn-NNNN.raw``/``.jsonl`` go (created if missing); None: no recording.
        api_key: if given, the only token accepted; otherwise any non-empty token is.
        idle_timeout_s: close 1011/NET-0001 after this long without a data frame.
        task_status: receives the bound port (``port = await nursery.start(serve, ...)``).

    Raises:
        OSError: the address cannot be bound (port in use, unknown host), or ``record_dir``
            cannot be created.
    """
    if record_dir is not None:
        _make_dir(record_dir)
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = _Server(faults, record_dir, api_key, idle_timeout_s)
    bound_port = int(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle_tcp, listeners)
        task_status.started(bound_port)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgd fake-server",
        description="Run a local Deepgram-compatible /v1/listen server (see docs/FAKE_SERVER.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="TCP port; 0 picks one (default 8765)"
    )
    parser.add_argument("--record-dir", type=Path, help="write conn-NNNN.raw/.jsonl here")
    parser.add_argument("--api-key", help="accept only this token (default: any non-empty one)")
    parser.add_argument("--faults", type=Path, help="JSON fault plan (see docs/FAKE_SERVER.md)")
    parser.add_argument(
        "--idle-timeout-s", type=float, default=10.0, help="NET-0001 idle close (default 10)"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``dgd fake-server [--host H] [--port P] [--record-dir DIR] [--api-key KEY] ...``.

    Prints ``dgd fake-server listening on ws://HOST:PORT/v1/listen`` once bound and serves
    until SIGINT/SIGTERM. Returns 0 on a signal, 2 on bad usage, an unreadable fault plan
    or an uncreatable record directory, 1 when the address cannot be bound.
    """
    args = _parser().parse_args(list(argv))
    faults = FaultPlan.none()
    if args.faults is not None:
        try:
            faults = FaultPlan.from_json(args.faults.read_text(encoding="utf-8"))
        except OSError as exc:
            print(
                f"dgd fake-server: cannot read --faults {args.faults}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        except (FaultPlanError, UnicodeDecodeError) as exc:
            print(f"dgd fake-server: --faults {args.faults}: {exc}", file=sys.stderr)
            return 2
    if args.record_dir is not None:
        try:
            _make_dir(args.record_dir)
        except OSError as exc:
            print(
                f"dgd fake-server: cannot create --record-dir {args.record_dir}: {exc}",
                file=sys.stderr,
            )
            return 2
    if args.idle_timeout_s <= 0:
        print("dgd fake-server: --idle-timeout-s must be > 0", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="dgd fake-server: %(message)s")
    return trio.run(_run, args, faults)


async def _run(args: argparse.Namespace, faults: FaultPlan) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(
                    partial(
                        serve,
                        args.host,
                        args.port,
                        faults=faults,
                        record_dir=args.record_dir,
                        api_key=args.api_key,
                        idle_timeout_s=args.idle_timeout_s,
                    )
                )
            except OSError as exc:
                print(
                    f"dgd fake-server: cannot listen on {args.host}:{args.port} "
                    f"(check --host/--port): {exc}",
                    file=sys.stderr,
                )
                return 1
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(f"dgd fake-server listening on ws://{host}:{port}{LISTEN_PATH}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
