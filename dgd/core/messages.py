"""Deepgram live-API wire formats: parsing server messages, handshake rejections and close frames,
and building the outgoing URL, auth header and control messages.

Parsing never raises on remote content: anything malformed becomes an ``Unrecognized`` value
whose ``reason`` says, in words, what was wrong. This module does no I/O.
"""

from __future__ import annotations

import http
import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

# Outgoing control messages (Deepgram docs "KeepAlive", "Finalize", "Close Stream"). They must go
# in *text* frames: a binary frame would be fed to the audio decoder.
KEEPALIVE_MESSAGE: Final = '{"type":"KeepAlive"}'
FINALIZE_MESSAGE: Final = '{"type":"Finalize"}'
CLOSESTREAM_MESSAGE: Final = '{"type":"CloseStream"}'

#: Largest server message that is JSON-parsed (bytes for a binary payload, characters for text).
#: 256 KiB: a final ``Results`` carries ~100-150 bytes per word, and finals arrive every few
#: seconds, so even a minute of uninterrupted speech with diarization stays far below this.
#: Anything bigger is not a plausible Deepgram message, and is refused before ``json.loads``
#: so a hostile or broken peer cannot make a Pi spend seconds and megabytes on it.
MAX_MESSAGE_BYTES: Final = 1 << 18
#: Length of ``Unrecognized.excerpt``: enough to recognise the message in a log line.
EXCERPT_CHARS: Final = 120
#: Length of a handshake rejection's non-JSON body kept as ``err_msg`` (one log line).
REJECTION_TEXT_CHARS: Final = 200
#: Largest handshake rejection body that is JSON-parsed; Deepgram's are ~150 bytes, while a
#: proxy's HTML error page can be large and is only excerpted.
MAX_REJECTION_BODY_BYTES: Final = 1 << 16
#: A WebSocket close without a close frame (the TCP connection dropped; RFC 6455 §7.1.5).
ABNORMAL_CLOSURE: Final = 1006
#: The close code of a stream that ended as asked (after ``CloseStream``).
NORMAL_CLOSURE: Final = 1000
#: Query keys dgd derives from ``[audio]``; a duplicate from ``[deepgram.query]`` would conflict
#: with what is actually sent (Deepgram then fails to decode: close 1008 DATA-0000).
AUDIO_QUERY_KEYS: Final = frozenset({"encoding", "sample_rate", "channels"})
#: Query keys whose values are credentials: never printed or logged (config, fake server).
SECRET_QUERY_KEYS: Final = frozenset({"token", "access_token", "api_key", "apikey", "key"})

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


ServerMessage = TranscriptResult | UtteranceEnd | SpeechStarted | Metadata | Unrecognized


class _Malformed(Exception):
    """Internal: a field is missing or has the wrong type; carries the reason in words."""


def _printable(text: str, limit: int) -> str:
    """Returns at most ``limit`` characters of ``text``, non-printables backslash-escaped."""
    out: list[str] = []
    used = 0
    for char in text:
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _excerpt(payload: str | bytes) -> str:
    if isinstance(payload, bytes):
        payload = payload[: EXCERPT_CHARS * 4].decode("utf-8", errors="backslashreplace")
    return _printable(payload[: EXCERPT_CHARS * 2], EXCERPT_CHARS)


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
    return Word(
        word=_as_str(_field(obj, "word", f"{path}.word"), f"{path}.word"),
        start_s=_as_number(_field(obj, "start", f"{path}.start"), f"{path}.start"),
        end_s=_as_number(_field(obj, "end", f"{path}.end"), f"{path}.end"),
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
        start_s=_as_number(_field(obj, "start", "start"), "start"),
        duration_s=_as_number(_field(obj, "duration", "duration"), "duration"),
        words=words,
        request_id=request_id,
        channel=0 if channel_index is None else _channel_of(channel_index, "channel_index"),
    )


def _parse_utterance_end(obj: dict[str, Any]) -> UtteranceEnd:
    channel = _optional(obj, "channel")
    return UtteranceEnd(
        last_word_end_s=_as_number(_field(obj, "last_word_end", "last_word_end"), "last_word_end"),
        channel=0 if channel is None else _channel_of(channel, "channel"),
    )


def _parse_speech_started(obj: dict[str, Any]) -> SpeechStarted:
    channel = _optional(obj, "channel")
    return SpeechStarted(
        timestamp_s=_as_number(_field(obj, "timestamp", "timestamp"), "timestamp"),
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


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ServerMessage]]] = {
    "Results": _parse_results,
    "UtteranceEnd": _parse_utterance_end,
    "SpeechStarted": _parse_speech_started,
    "Metadata": _parse_metadata,
}


def parse_server_message(payload: str | bytes) -> ServerMessage:
    """Parses one message from the Deepgram ``/v1/listen`` WebSocket.

    Deepgram sends JSON text frames of four types (``Results``, ``Metadata``, ``UtteranceEnd``,
    ``SpeechStarted``). A binary payload is treated exactly like the same text when it is valid
    UTF-8. For ``Results`` only the first alternative is kept; optional fields that are absent
    (or JSON null) get defaults: ``speech_final``/``from_finalize`` False, ``confidence`` 0.0,
    ``words`` empty, ``request_id`` ``""``, channel 0.

    Args:
        payload: the message as received.

    Returns:
        The typed message, or ``Unrecognized`` (with the reason in words) for anything that is
        too large, not JSON, not an object, of an unknown ``type``, or missing a required field
        or carrying a field of the wrong type. Never raises.
    """
    size = len(payload)
    if size > MAX_MESSAGE_BYTES:
        unit = "bytes" if isinstance(payload, bytes) else "characters"
        return Unrecognized(
            f"message of {size} {unit} exceeds {MAX_MESSAGE_BYTES}", _excerpt(payload)
        )
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Unrecognized(
                f"binary message of {size} bytes is not UTF-8 text "
                f"({exc.reason} at byte {exc.start})",
                _excerpt(payload),
            )
    else:
        text = payload
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return Unrecognized(f"invalid JSON: {exc}", _excerpt(text))
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        return Unrecognized(f"invalid JSON: {_printable(str(exc), 80)}", _excerpt(text))
    except RecursionError:
        return Unrecognized("invalid JSON: nested too deeply", _excerpt(text))
    if not isinstance(document, dict):
        return Unrecognized(f"expected a JSON object, got {_type_name(document)}", _excerpt(text))
    if "type" not in document:
        return Unrecognized("missing field type", _excerpt(text))
    kind = document["type"]
    if not isinstance(kind, str):
        return Unrecognized(f"field type is {_type_name(kind)}, expected string", _excerpt(text))
    parser = _PARSERS.get(kind)
    if parser is None:
        return Unrecognized(f"unknown type {_printable(repr(kind), 60)}", _excerpt(text))
    try:
        return parser(document)
    except _Malformed as exc:
        return Unrecognized(f"{kind}: {exc}", _excerpt(text))


@dataclass(frozen=True, slots=True)
class HandshakeRejection:
    """Why Deepgram refused the WebSocket upgrade (an HTTP response instead of 101).

    Attributes:
        status: the HTTP status, e.g. 401.
        err_code: Deepgram's error code (``INVALID_AUTH``, ``TOO_MANY_REQUESTS``, ...), or ``""``.
        err_msg: Deepgram's message, or an excerpt of a non-JSON body, or ``""``.
        request_id: the ``dg-request-id`` header (else the body's ``request_id``), or ``""``.
        dg_error: the ``dg-error`` header, or ``""``.
    """

    status: int
    err_code: str
    err_msg: str
    request_id: str
    dg_error: str

    def describe(self) -> str:
        """One line for operators, e.g.
        ``HTTP 401 INVALID_AUTH: Invalid credentials. (request id 3b0f...)``.

        The ``dg-error`` header is shown only when it adds to ``err_msg``; when the server gave
        neither code nor message the standard HTTP reason phrase is used.
        """
        line = f"HTTP {self.status}"
        if self.err_code:
            line += f" {self.err_code}"
        if self.err_msg:
            line += f": {self.err_msg}"
        elif not self.err_code:
            phrase = _HTTP_PHRASES.get(self.status)
            if phrase:
                line += f" {phrase}"
        extras: list[str] = []
        if self.dg_error and self.dg_error != self.err_msg:
            extras.append(f"dg-error: {self.dg_error}")
        if self.request_id:
            extras.append(f"request id {self.request_id}")
        if extras:
            line += f" ({', '.join(extras)})"
        return line


_HTTP_PHRASES: Final = {status.value: status.phrase for status in http.HTTPStatus}
_WHITESPACE_RUN: Final = re.compile(r"\s+")


def _one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    spaced = "".join(char if char.isprintable() else " " for char in text[: limit * 4])
    return _WHITESPACE_RUN.sub(" ", spaced).strip()[:limit]


def _body_field(body: dict[str, Any], keys: Sequence[str], *, numeric_ok: bool = False) -> str:
    for key in keys:
        value = body.get(key)
        # asyncapi.yml's errorResponse has a numeric error_code (e.g. 401).
        if numeric_ok and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value:
            return _one_line(value, REJECTION_TEXT_CHARS)
    return ""


def parse_rejection(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | None
) -> HandshakeRejection:
    """Extracts what Deepgram said when it refused the upgrade.

    The body is normally ``{"err_code", "err_msg", "request_id"}`` (Deepgram docs "Errors");
    the variants ``{"category", "message"}`` and ``{"error_code", "error_message"}`` are
    accepted too. A non-JSON body (e.g. a proxy's HTML page) becomes ``err_msg``: its first
    ``REJECTION_TEXT_CHARS`` printable characters on one line.

    Args:
        status: the HTTP status code.
        headers: response headers as (name, value) byte pairs; names match case-insensitively.
        body: the response body, or None if there was none.

    Returns:
        The rejection; fields the server did not send are ``""``. Never raises.
    """
    request_id = ""
    dg_error = ""
    for name, value in headers:
        lowered = name.strip().lower()
        if lowered == b"dg-request-id":
            request_id = _one_line(value.decode("utf-8", "replace"), REJECTION_TEXT_CHARS)
        elif lowered == b"dg-error":
            dg_error = _one_line(value.decode("utf-8", "replace"), REJECTION_TEXT_CHARS)
    err_code = ""
    err_msg = ""
    if body:
        text = body[: MAX_REJECTION_BODY_BYTES * 4].decode("utf-8", "replace")
        document: object = None
        if len(body) <= MAX_REJECTION_BODY_BYTES:
            try:
                document = json.loads(text)
            except (ValueError, RecursionError):
                document = None
        if isinstance(document, dict):
            err_code = _body_field(
                document, ("err_code", "error_code", "category"), numeric_ok=True
            )
            err_msg = _body_field(document, ("err_msg", "error_message", "message"))
            if not request_id:
                request_id = _body_field(document, ("request_id",))
        if not err_msg and not err_code:
            err_msg = _one_line(text, REJECTION_TEXT_CHARS)
    return HandshakeRejection(status, err_code, err_msg, request_id, dg_error)


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """A WebSocket close frame from the server.

    Attributes:
        code: the close code (1000, 1008, 1011, ...).
        reason: the reason text on one printable line, ``""`` if none.
        tag: the Deepgram error tag found in the reason: ``"NET-0001"`` (client sent nothing
            for 10 s), ``"NET-0000"`` (server-side trouble), ``"DATA-0000"`` (audio could not be
            decoded), or ``""``.
    """

    code: int
    reason: str
    tag: str


# Deepgram's reasons are sentences with a link such as https://dpgr.am/net0001, so both the
# hyphenated tag and the link's spelling are matched.
_CLOSE_TAGS: Final = (
    (re.compile(r"net-?0001", re.IGNORECASE), "NET-0001"),
    (re.compile(r"net-?0000", re.IGNORECASE), "NET-0000"),
    (re.compile(r"data-?0000", re.IGNORECASE), "DATA-0000"),
)
#: A close reason is at most 123 bytes by RFC 6455; this only bounds a misbehaving peer.
_CLOSE_REASON_CHARS: Final = 300


def parse_close(code: int, reason: str | None) -> CloseInfo:
    """Classifies a server close frame by the Deepgram tag in its reason (Deepgram docs
    "Troubleshooting WebSocket, DATA and NET errors").

    Args:
        code: the close code.
        reason: the close reason, or None when the frame had none.

    Returns:
        The close info; never raises.
    """
    text = _one_line(reason or "", _CLOSE_REASON_CHARS)
    for pattern, tag in _CLOSE_TAGS:
        if pattern.search(text):
            return CloseInfo(code, text, tag)
    return CloseInfo(code, text, "")


def listen_url(base_url: str, query: Sequence[tuple[str, str]], rate_hz: int, channels: int) -> str:
    """Builds the ``/v1/listen`` URL for raw S16_LE PCM.

    The ``query`` pairs are appended in order (a repeated key such as ``keyterm`` stays
    repeated), then ``encoding=linear16``, ``sample_rate`` and ``channels``, which raw PCM
    requires. Values are percent-encoded (a space becomes ``%20``); a query string already in
    ``base_url`` is kept in front.

    Args:
        base_url: ``deepgram.url``, e.g. ``wss://api.deepgram.com/v1/listen``.
        query: ``[deepgram.query]`` as rendered strings (booleans already ``"true"``/``"false"``).
        rate_hz: ``audio.rate``.
        channels: ``audio.channels``.

    Returns:
        The full URL.

    Raises:
        ValueError: ``query`` sets one of ``encoding``, ``sample_rate``, ``channels``.
    """
    for key, _value in query:
        if key in AUDIO_QUERY_KEYS:
            raise ValueError(
                f"deepgram.query.{key}: remove it from the config; dgd sets encoding, "
                "sample_rate and channels from [audio]"
            )
    pairs = [
        *query,
        ("encoding", "linear16"),
        ("sample_rate", str(rate_hz)),
        ("channels", str(channels)),
    ]
    added = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    parts = urllib.parse.urlsplit(base_url)
    combined = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit(parts._replace(query=combined))


def auth_headers(api_key: str) -> list[tuple[str, str]]:
    """The handshake headers that authenticate with a Deepgram API key.

    Args:
        api_key: the key, without the ``Token`` scheme word.

    Returns:
        ``[("Authorization", "Token <api_key>")]``.
    """
    return [("Authorization", "Token " + api_key)]
