"""Deepgram's messages on an open ``/v1/listen`` stream: parsing what the server sends (JSON
``Results``, ``UtteranceEnd``, ``SpeechStarted``, ``Metadata``, ``Error``, and the answers to
``Configure``: ``ConfigureSuccess``/``ConfigureFailure``) and the control messages dgd sends
(``KeepAlive``, ``Finalize``, ``CloseStream``, ``Configure``).

Parsing never raises on remote content: anything malformed becomes an ``Unrecognized`` value
whose ``reason`` says, in words, what was wrong. Content is bounded at the door: times must be
finite and non-negative, a result's words must lie within it and end after they start
(``Unrecognized`` otherwise), and text that is not valid Unicode (a lone surrogate, which JSON
can spell as ``"\\ud800"``) is repaired with U+FFFD and returned as ``Repaired``. Whether a
time lies within the audio actually sent is the session's check (``dgd.core.session``), which
knows how much was sent. This module does no I/O. What belongs to the
connection rather than to a message (the URL, authentication, handshake rejections, close
frames) is in ``dgd.core.connection``.

It is over the project's 400 lines on purpose: each message's schema and its bounds (what
is refused at the door, and why) read best side by side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dgd.core.logtext import printable

if TYPE_CHECKING:
    from collections.abc import Callable

# Outgoing control messages (Deepgram docs "KeepAlive", "Finalize", "Close Stream"). They must go
# in *text* frames: a binary frame would be fed to the audio decoder.
KEEPALIVE_MESSAGE: Final = '{"type":"KeepAlive"}'
FINALIZE_MESSAGE: Final = '{"type":"Finalize"}'
CLOSESTREAM_MESSAGE: Final = '{"type":"CloseStream"}'
#: The ``[deepgram.query]`` parameters a ``Configure`` message can change on an open stream
#: (Deepgram docs "Configure", 2026-10: ``keyterms`` replaces the stream's keyterms; the
#: ``features`` object turns ``numerals`` on or off). Every other parameter needs a new stream.
CONFIGURABLE_QUERY_KEYS: Final = frozenset({"keyterm", "numerals"})

#: Largest server message that is JSON-parsed (bytes for a binary payload, characters for text).
#: 256 KiB: a final ``Results`` carries ~100-150 bytes per word, and finals arrive every few
#: seconds, so even a minute of uninterrupted speech with diarization stays far below this.
#: Anything bigger is not a plausible Deepgram message, and is refused before ``json.loads``
#: so a hostile or broken peer cannot make a Pi spend seconds and megabytes on it.
MAX_MESSAGE_BYTES: Final = 1 << 18
#: Length of ``Unrecognized.excerpt``: enough to recognise the message in a log line.
EXCERPT_CHARS: Final = 120
#: How far a word may lie outside its result's span (seconds) before the result counts as
#: inconsistent: room for rounding of the server's times, far less than a word.
WORD_TOLERANCE_S: Final = 0.5
#: Longest ``code`` of an ``Error``/``ConfigureFailure`` kept (characters); Deepgram's codes are
#: short tags such as ``NET-0001`` or ``INVALID_KEYTERMS``. Longer ones are cut.
MAX_CODE_CHARS: Final = 64
#: Longest ``description`` kept (characters): a sentence for the journal, not a document.
MAX_DESCRIPTION_CHARS: Final = 300
#: Most keyterms a ``ConfigureSuccess`` may list: Deepgram allows 500 tokens of keyterms in all,
#: so a list longer than that is not a plausible answer.
MAX_KEYTERMS: Final = 500
#: What replaces each lone surrogate in text (U+FFFD REPLACEMENT CHARACTER).
REPLACEMENT_CHARACTER: Final = "\ufffd"
#: A UTF-16 surrogate code point. ``json.loads`` joins an escaped high-low pair into one
#: character, and a UTF-8 decoder never produces one, so any that is left is lone: not
#: Unicode text, and a ``UnicodeEncodeError`` in any sink that encodes it.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a transcript alternative, times in seconds of this connection's audio.

    Attributes:
        word: the normalised word (lower case, no punctuation).
        start_s: stream audio time at which the word starts.
        end_s: stream audio time at which the word ends.
        confidence: 0..1 (0.0 when the server omitted it).
        punctuated_word: the word as written with ``punctuate``/``smart_format``, else None.
        speaker: the speaker number with ``diarize``, else None.
    """

    word: str
    start_s: float
    end_s: float
    confidence: float
    punctuated_word: str | None
    speaker: int | None


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    """A ``Results`` message (its first alternative).

    Attributes:
        transcript: the text; often ``""`` for silence.
        confidence: 0..1 for the alternative (0.0 when omitted).
        is_final: this time span will not be revised.
        speech_final: an endpoint (pause) was detected after this span.
        from_finalize: this result answers a ``Finalize`` message.
        start_s: stream audio time of the span's start, counted on this connection only.
        duration_s: length of the span.
        words: per-word timings, empty when the server sent none.
        request_id: ``metadata.request_id``, ``""`` when absent.
        channel: audio channel, ``channel_index[0]`` (0 when absent).
    """

    transcript: str
    confidence: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    start_s: float
    duration_s: float
    words: tuple[Word, ...]
    request_id: str
    channel: int

    @property
    def end_s(self) -> float:
        """Stream audio time of the span's end."""
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """An ``UtteranceEnd`` message: a gap of ``utterance_end_ms`` followed the last word."""

    last_word_end_s: float
    channel: int


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """A ``SpeechStarted`` message (``vad_events=true``): the server's VAD heard speech begin."""

    timestamp_s: float
    channel: int


@dataclass(frozen=True, slots=True)
class Metadata:
    """A ``Metadata`` message, sent once when the server closes the stream.

    Missing fields default to ``""``/0. ``duration_s`` is the audio the server received (what is
    billed); ``channels == 0`` means no audio was accepted.
    """

    request_id: str
    duration_s: float
    channels: int
    created: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Unrecognized:
    """A server message that could not be understood.

    Attributes:
        reason: what was wrong, in words, e.g. ``"unknown type 'Mystery'"`` or
            ``"Results: missing field channel.alternatives"``.
        excerpt: the first ``EXCERPT_CHARS`` characters of the message, with non-printable
            characters escaped so the excerpt is safe to log on one line.
    """

    reason: str
    excerpt: str


@dataclass(frozen=True, slots=True)
class Repaired:
    """A message that was understood once its text was repaired: every lone surrogate in the
    fields dgd reads was replaced by U+FFFD. The times were valid, so the message is used;
    the repair is reported (and counted) like an unrecognized message.

    Attributes:
        message: the message, repaired.
        reason: what was repaired, in words, e.g. ``"Results: text is not valid Unicode: lone
            surrogates replaced by U+FFFD in channel.alternatives[0].transcript"``.
        excerpt: the first ``EXCERPT_CHARS`` characters of the message, printable.
    """

    message: TranscriptResult | Metadata
    reason: str
    excerpt: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``Error`` message: the server reports a problem with the stream (it usually closes
    the stream next, e.g. with 1011), or refuses a ``Configure``.

    Text is made printable and bounded at the door (``MAX_CODE_CHARS``,
    ``MAX_DESCRIPTION_CHARS``), so every field is safe to log on one line.

    Attributes:
        code: the error's code, e.g. ``"NET-0001"``; ``""`` when the server sent none.
        description: what went wrong, in the server's words; ``""`` when absent.
        variant: the error's variant (Deepgram's SDKs expose one), ``""`` when absent.
    """

    code: str
    description: str
    variant: str

    def describe(self) -> str:
        """``"<code>: <description>"`` (or whichever of them is there) for a log line."""
        parts = [part for part in (self.code or self.variant, self.description) if part]
        return ": ".join(parts) or "no code or description"


@dataclass(frozen=True, slots=True)
class ConfigureSuccess:
    """A ``ConfigureSuccess`` message: the last ``Configure`` took effect on this stream.

    Attributes:
        request_id: the stream's request id, ``""`` when absent.
        keyterms: the keyterms now in effect when the update replaced them, else None.
    """

    request_id: str
    keyterms: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ConfigureFailure:
    """A ``ConfigureFailure`` message: the last ``Configure`` was refused; the stream goes on
    with the settings it had. Text is printable and bounded like ``ServerError``'s.

    Attributes:
        request_id: the stream's request id, ``""`` when absent.
        code: the failure's code, ``""`` when absent.
        description: why, in the server's words, ``""`` when absent.
    """

    request_id: str
    code: str
    description: str

    def describe(self) -> str:
        """``"<code>: <description>"`` (or whichever of them is there) for a log line."""
        parts = [part for part in (self.code, self.description) if part]
        return ": ".join(parts) or "no reason given"


ServerMessage = (
    TranscriptResult
    | UtteranceEnd
    | SpeechStarted
    | Metadata
    | ServerError
    | ConfigureSuccess
    | ConfigureFailure
    | Repaired
    | Unrecognized
)


class _Malformed(Exception):
    """Internal: a field is missing, has the wrong type or an impossible value (a time that
    is negative, an end before its start, a word outside its result); carries the reason."""


def excerpt(payload: str | bytes) -> str:
    """The first ``EXCERPT_CHARS`` characters of a message, safe to log on one line."""
    if isinstance(payload, bytes):
        payload = payload[: EXCERPT_CHARS * 4].decode("utf-8", errors="backslashreplace")
    return printable(payload[: EXCERPT_CHARS * 2], EXCERPT_CHARS)


def _type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _field(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise _Malformed(f"missing field {path}")
    return obj[key]


def _as_object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"field {path} is {_type_name(value)}, expected object")
    return value


def _as_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"field {path} is {_type_name(value)}, expected string")
    return value


def _as_bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Malformed(f"field {path} is {_type_name(value)}, expected boolean")
    return value


def _as_int(value: object, path: str) -> int:
    # bool is a subclass of int in Python, but true/false is never a count or an index.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"field {path} is {_type_name(value)}, expected integer")
    return value


def _as_number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"field {path} is {_type_name(value)}, expected number")
    try:
        number = float(value)
    except OverflowError:  # an integer literal beyond float range
        raise _Malformed(f"field {path} is not a finite number") from None
    if not math.isfinite(number):  # json.loads accepts NaN, Infinity and 1e999
        raise _Malformed(f"field {path} is not a finite number")
    return number


def _as_time(value: object, path: str) -> float:
    """A time or a duration in seconds of stream audio: a finite number, never negative."""
    number = _as_number(value, path)
    if number < 0:
        raise _Malformed(f"negative time in field {path}: {number:g}")
    return number


def _optional(obj: dict[str, Any], key: str) -> object:
    """The value of an optional field; JSON null counts as absent."""
    return obj.get(key)


def _channel_of(value: object, path: str) -> int:
    """The channel number from a ``[channel, n_channels]`` array."""
    if not isinstance(value, list):
        raise _Malformed(f"field {path} is {_type_name(value)}, expected array")
    if not value:
        raise _Malformed(f"field {path} is empty")
    return _as_int(value[0], f"{path}[0]")


def _parse_word(value: object, path: str) -> Word:
    obj = _as_object(value, path)
    confidence = _optional(obj, "confidence")
    punctuated = _optional(obj, "punctuated_word")
    speaker = _optional(obj, "speaker")
    start_s = _as_time(_field(obj, "start", f"{path}.start"), f"{path}.start")
    end_s = _as_time(_field(obj, "end", f"{path}.end"), f"{path}.end")
    if end_s < start_s:
        raise _Malformed(f"end before start: field {path}.end = {end_s:g} < start {start_s:g}")
    return Word(
        word=_as_str(_field(obj, "word", f"{path}.word"), f"{path}.word"),
        start_s=start_s,
        end_s=end_s,
        confidence=0.0 if confidence is None else _as_number(confidence, f"{path}.confidence"),
        punctuated_word=None
        if punctuated is None
        else _as_str(punctuated, f"{path}.punctuated_word"),
        speaker=None if speaker is None else _as_int(speaker, f"{path}.speaker"),
    )


def _parse_results(obj: dict[str, Any]) -> TranscriptResult:
    channel_obj = _as_object(_field(obj, "channel", "channel"), "channel")
    alternatives = _field(channel_obj, "alternatives", "channel.alternatives")
    if not isinstance(alternatives, list):
        raise _Malformed(
            f"field channel.alternatives is {_type_name(alternatives)}, expected array"
        )
    if not alternatives:
        raise _Malformed("field channel.alternatives is empty")
    alt_path = "channel.alternatives[0]"
    alt = _as_object(alternatives[0], alt_path)
    transcript = _as_str(
        _field(alt, "transcript", f"{alt_path}.transcript"), f"{alt_path}.transcript"
    )
    confidence = _optional(alt, "confidence")
    words_value = _optional(alt, "words")
    words: tuple[Word, ...] = ()
    if words_value is not None:
        if not isinstance(words_value, list):
            raise _Malformed(f"field {alt_path}.words is {_type_name(words_value)}, expected array")
        words = tuple(
            _parse_word(word, f"{alt_path}.words[{index}]")
            for index, word in enumerate(words_value)
        )
    start_s = _as_time(_field(obj, "start", "start"), "start")
    duration_s = _as_number(_field(obj, "duration", "duration"), "duration")
    if duration_s < 0:
        raise _Malformed(f"end before start: field duration = {duration_s:g}")
    end_s = start_s + duration_s
    for index, word in enumerate(words):
        if word.start_s < start_s - WORD_TOLERANCE_S or word.end_s > end_s + WORD_TOLERANCE_S:
            raise _Malformed(
                f"word outside its result: {alt_path}.words[{index}] spans "
                f"[{word.start_s:g}, {word.end_s:g}] s, the result [{start_s:g}, {end_s:g}] s"
            )
    speech_final = _optional(obj, "speech_final")
    from_finalize = _optional(obj, "from_finalize")
    channel_index = _optional(obj, "channel_index")
    metadata = _optional(obj, "metadata")
    request_id = ""
    if metadata is not None:
        request_value = _optional(_as_object(metadata, "metadata"), "request_id")
        if request_value is not None:
            request_id = _as_str(request_value, "metadata.request_id")
    return TranscriptResult(
        transcript=transcript,
        confidence=0.0 if confidence is None else _as_number(confidence, f"{alt_path}.confidence"),
        is_final=_as_bool(_field(obj, "is_final", "is_final"), "is_final"),
        speech_final=False if speech_final is None else _as_bool(speech_final, "speech_final"),
        from_finalize=False if from_finalize is None else _as_bool(from_finalize, "from_finalize"),
        start_s=start_s,
        duration_s=duration_s,
        words=words,
        request_id=request_id,
        channel=0 if channel_index is None else _channel_of(channel_index, "channel_index"),
    )


def _parse_utterance_end(obj: dict[str, Any]) -> UtteranceEnd:
    channel = _optional(obj, "channel")
    return UtteranceEnd(
        last_word_end_s=_as_time(_field(obj, "last_word_end", "last_word_end"), "last_word_end"),
        channel=0 if channel is None else _channel_of(channel, "channel"),
    )


def _parse_speech_started(obj: dict[str, Any]) -> SpeechStarted:
    channel = _optional(obj, "channel")
    return SpeechStarted(
        timestamp_s=_as_time(_field(obj, "timestamp", "timestamp"), "timestamp"),
        channel=0 if channel is None else _channel_of(channel, "channel"),
    )


def _parse_metadata(obj: dict[str, Any]) -> Metadata:
    # Metadata is informational (it comes once, at close), so missing fields default rather
    # than discard the rest; present fields must still have the documented types.
    request_id = _optional(obj, "request_id")
    duration = _optional(obj, "duration")
    channels = _optional(obj, "channels")
    created = _optional(obj, "created")
    sha256 = _optional(obj, "sha256")
    return Metadata(
        request_id="" if request_id is None else _as_str(request_id, "request_id"),
        duration_s=0.0 if duration is None else _as_number(duration, "duration"),
        channels=0 if channels is None else _as_int(channels, "channels"),
        created="" if created is None else _as_str(created, "created"),
        sha256="" if sha256 is None else _as_str(sha256, "sha256"),
    )


def _optional_text(obj: dict[str, Any], key: str, limit: int) -> str:
    """An optional string field made printable (control characters and lone surrogates
    backslash-escaped) and cut to ``limit`` characters; ``""`` when absent."""
    value = _optional(obj, key)
    if value is None:
        return ""
    return printable(_as_str(value, key), limit)


def _parse_error(obj: dict[str, Any]) -> ServerError:
    # Deepgram's docs name code and description; its SDKs also read a variant. All optional:
    # an Error is reported whatever it carries, since what matters is that it came.
    return ServerError(
        code=_optional_text(obj, "code", MAX_CODE_CHARS),
        description=_optional_text(obj, "description", MAX_DESCRIPTION_CHARS),
        variant=_optional_text(obj, "variant", MAX_CODE_CHARS),
    )


def _parse_configure_success(obj: dict[str, Any]) -> ConfigureSuccess:
    value = _optional(obj, "keyterms")
    keyterms: tuple[str, ...] | None = None
    if value is not None:
        if not isinstance(value, list):
            raise _Malformed(f"field keyterms is {_type_name(value)}, expected array")
        if len(value) > MAX_KEYTERMS:
            raise _Malformed(f"field keyterms has {len(value)} items, more than {MAX_KEYTERMS}")
        keyterms = tuple(
            printable(_as_str(term, f"keyterms[{index}]"), MAX_DESCRIPTION_CHARS)
            for index, term in enumerate(value)
        )
    return ConfigureSuccess(
        request_id=_optional_text(obj, "request_id", MAX_CODE_CHARS), keyterms=keyterms
    )


def _parse_configure_failure(obj: dict[str, Any]) -> ConfigureFailure:
    return ConfigureFailure(
        request_id=_optional_text(obj, "request_id", MAX_CODE_CHARS),
        code=_optional_text(obj, "code", MAX_CODE_CHARS),
        description=_optional_text(obj, "description", MAX_DESCRIPTION_CHARS),
    )


def configure_message(
    *, keyterms: tuple[str, ...] | None = None, numerals: bool | None = None
) -> str:
    """The ``Configure`` text frame that changes settings on an open stream.

    Args:
        keyterms: the stream's new keyterms, replacing the old ones (``()`` clears them);
            None leaves them as they are (the field is omitted).
        numerals: turn ``numerals`` on or off; None leaves it as it is.
    """
    message: dict[str, object] = {"type": "Configure"}
    if keyterms is not None:
        message["keyterms"] = list(keyterms)
    if numerals is not None:
        message["features"] = {"numerals": numerals}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def _repaired_text(text: str, path: str, repaired: list[str]) -> str:
    if _SURROGATE.search(text) is None:
        return text
    repaired.append(path)
    return _SURROGATE.sub(REPLACEMENT_CHARACTER, text)


def _repair(message: TranscriptResult | Metadata) -> tuple[TranscriptResult | Metadata, list[str]]:
    """``message`` with every lone surrogate in its text replaced by U+FFFD, and the paths of
    the fields that needed it (none: the message itself)."""
    repaired: list[str] = []
    if isinstance(message, Metadata):
        fixed_metadata = Metadata(
            request_id=_repaired_text(message.request_id, "request_id", repaired),
            duration_s=message.duration_s,
            channels=message.channels,
            created=_repaired_text(message.created, "created", repaired),
            sha256=_repaired_text(message.sha256, "sha256", repaired),
        )
        return (fixed_metadata if repaired else message), repaired
    alt_path = "channel.alternatives[0]"
    transcript = _repaired_text(message.transcript, f"{alt_path}.transcript", repaired)
    words = tuple(
        dataclasses.replace(
            word,
            word=_repaired_text(word.word, f"{alt_path}.words[{index}].word", repaired),
            punctuated_word=None
            if word.punctuated_word is None
            else _repaired_text(
                word.punctuated_word, f"{alt_path}.words[{index}].punctuated_word", repaired
            ),
        )
        for index, word in enumerate(message.words)
    )
    fixed_result = dataclasses.replace(
        message,
        transcript=transcript,
        words=words,
        request_id=_repaired_text(message.request_id, "metadata.request_id", repaired),
    )
    return (fixed_result if repaired else message), repaired


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ServerMessage]]] = {
    "Results": _parse_results,
    "UtteranceEnd": _parse_utterance_end,
    "SpeechStarted": _parse_speech_started,
    "Metadata": _parse_metadata,
    "Error": _parse_error,
    "ConfigureSuccess": _parse_configure_success,
    "ConfigureFailure": _parse_configure_failure,
}


def parse_server_message(payload: str | bytes) -> ServerMessage:
    """Parses one message from the Deepgram ``/v1/listen`` WebSocket.

    Deepgram sends JSON text frames of these types: ``Results``, ``Metadata``, ``UtteranceEnd``,
    ``SpeechStarted``, ``Error``, and ``ConfigureSuccess``/``ConfigureFailure`` (one answers
    each ``Configure``); the text fields of the last three are made printable and cut to
    bounds. A binary payload is treated exactly like the same text when it is valid UTF-8. For
    ``Results`` only the first alternative is kept; optional fields that are absent
    (or JSON null) get defaults: ``speech_final``/``from_finalize`` False, ``confidence`` 0.0,
    ``words`` empty, ``request_id`` ``""``, channel 0.

    Args:
        payload: the message as received.

    Returns:
        The typed message; ``Repaired`` (wrapping it) when text it carries held lone
        surrogates, now U+FFFD; or ``Unrecognized`` (with the reason in words) for anything
        that is too large, not JSON, not an object, of an unknown ``type``, missing a required
        field or carrying a field of the wrong type, or with impossible times: not finite,
        negative, a result or word that ends before it starts, a word more than
        ``WORD_TOLERANCE_S`` outside its result. Never raises.
    """
    size = len(payload)
    if size > MAX_MESSAGE_BYTES:
        unit = "bytes" if isinstance(payload, bytes) else "characters"
        return Unrecognized(
            f"message of {size} {unit} exceeds {MAX_MESSAGE_BYTES}", excerpt(payload)
        )
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Unrecognized(
                f"binary message of {size} bytes is not UTF-8 text "
                f"({exc.reason} at byte {exc.start})",
                excerpt(payload),
            )
    else:
        text = payload
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return Unrecognized(f"invalid JSON: {exc}", excerpt(text))
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        return Unrecognized(f"invalid JSON: {printable(str(exc), 80)}", excerpt(text))
    except RecursionError:
        return Unrecognized("invalid JSON: nested too deeply", excerpt(text))
    if not isinstance(document, dict):
        return Unrecognized(f"expected a JSON object, got {_type_name(document)}", excerpt(text))
    if "type" not in document:
        return Unrecognized("missing field type", excerpt(text))
    kind = document["type"]
    if not isinstance(kind, str):
        return Unrecognized(f"field type is {_type_name(kind)}, expected string", excerpt(text))
    parser = _PARSERS.get(kind)
    if parser is None:
        return Unrecognized(f"unknown type {printable(repr(kind), 60)}", excerpt(text))
    try:
        message = parser(document)
    except _Malformed as exc:
        return Unrecognized(f"{kind}: {exc}", excerpt(text))
    if not isinstance(message, TranscriptResult | Metadata):
        return message
    fixed, repaired = _repair(message)
    if not repaired:
        return message
    shown = ", ".join(repaired[:3]) + (
        f" and {len(repaired) - 3} more" if len(repaired) > 3 else ""
    )
    return Repaired(
        fixed,
        f"{kind}: text is not valid Unicode: lone surrogates replaced by U+FFFD in {shown}",
        excerpt(text),
    )
