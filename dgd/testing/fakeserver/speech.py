"""The fake recogniser: audio bytes in, Deepgram message objects out.

``SpeechTracker`` produces ``Results`` (finals and interims), ``SpeechStarted``,
``UtteranceEnd`` and ``Metadata``, and answers ``Configure`` (``ConfigureSuccess`` with the
keyterms now in effect, or ``ConfigureFailure`` for a message Deepgram would refuse).
It never recognises speech: a 20 ms block is voiced when
its RMS is above -50 dBFS, and a transcript says how much voiced audio its span held
(``[speech 1.42 s]``), so tests can compute every result from the bytes they sent. One
``SpeechTracker`` per connection; this module does no I/O.
"""

from __future__ import annotations

import hashlib
import operator
import sys
from array import array
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from dgd.testing.fakeserver.handshake import StreamOptions

__all__ = ["CONFIDENCE", "MODEL_INFO", "MODEL_UUID", "SpeechTracker"]

#: The "model" every result claims to come from; one fixed uuid keeps recordings diffable.
MODEL_UUID: Final = "00000000-0000-4000-8000-000000000fa6"
MODEL_INFO: Final = {"name": "fake", "version": "0", "arch": "fake"}
CONFIDENCE: Final = 0.99

_BLOCK_MS: Final = 20
#: -50 dBFS as an exact integer test: mean(x²) > (32768 · 10^(-50/20))² = 32768² / 10^5.
_VOICED_NUMERATOR: Final = 100_000
_VOICED_DENOMINATOR: Final = 32768 * 32768
#: Real Deepgram finalises long continuous speech roughly every 10 s of audio.
_MAX_SPAN_S: Final = 10
#: "Interim results roughly once per second" (Deepgram interim-results docs).
_INTERIM_EVERY_S: Final = 1
#: The formatting features a ``Configure`` may turn on or off (Deepgram docs "Configure").
CONFIGURABLE_FEATURES: Final = frozenset({"numerals"})


class SpeechTracker:
    """The fake recogniser of one connection: audio bytes in, Deepgram message objects out.

    Audio is cut into 20 ms blocks; a block is voiced when its RMS (all channels together)
    is above -50 dBFS. Offsets are seconds of audio received on this connection. Each final
    covers the audio from the previous final's end; see FAKE_SERVER.md for when finals,
    interims, SpeechStarted and UtteranceEnd are produced. This class does no I/O.
    """

    def __init__(
        self, options: StreamOptions, request_id: str, *, keyterms: tuple[str, ...] = ()
    ) -> None:
        self.options = options
        self.request_id = request_id
        #: The keyterms in effect: the handshake's ``keyterm`` parameters, then each accepted
        #: ``Configure``'s.
        self.keyterms = keyterms
        #: Formatting features a ``Configure`` turned on or off (``CONFIGURABLE_FEATURES``).
        self.features: dict[str, bool] = {}
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

    def configure(self, message: object) -> dict[str, Any]:
        """Apply a ``Configure`` message (already JSON-decoded) the way Deepgram does; return
        the answer: ``ConfigureSuccess`` (listing the keyterms now in effect when the message
        replaced them), or ``ConfigureFailure`` when a field is not of the documented form
        (``keyterms`` an array of strings or null; ``features`` an object of booleans for
        ``CONFIGURABLE_FEATURES``). A refused message changes nothing."""
        problem = _configure_problem(message)
        if problem is not None:
            return self.configure_failure(problem)
        assert isinstance(message, dict)
        answer: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": self.request_id}
        keyterms = message.get("keyterms")
        if keyterms is not None:
            self.keyterms = tuple(keyterms)
            answer["keyterms"] = list(self.keyterms)
        self.features.update(message.get("features") or {})
        return answer

    def configure_failure(self, description: str) -> dict[str, Any]:
        """A ``ConfigureFailure`` answer saying ``description``."""
        return {
            "type": "ConfigureFailure",
            "request_id": self.request_id,
            "code": "INVALID_CONFIGURE",
            "description": description,
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


def _configure_problem(message: object) -> str | None:
    """Why Deepgram would refuse this ``Configure``, or None when it is acceptable."""
    if not isinstance(message, dict):
        return "a Configure message must be a JSON object"
    unknown = sorted(set(message) - {"type", "keyterms", "features"})
    if unknown:
        return f"unknown Configure field(s): {', '.join(unknown)}"
    keyterms = message.get("keyterms")
    if keyterms is not None and (
        not isinstance(keyterms, list) or not all(isinstance(t, str) for t in keyterms)
    ):
        return "keyterms must be an array of strings"
    features = message.get("features")
    if features is not None:
        if not isinstance(features, dict):
            return "features must be an object"
        for name, value in features.items():
            if name not in CONFIGURABLE_FEATURES or not isinstance(value, bool):
                return f"features.{name} cannot be set by Configure"
    return None


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
