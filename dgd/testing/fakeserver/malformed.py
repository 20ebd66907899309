"""The messages of the ``malformed_after_s`` fault, one kind at a time.

``MALFORMED_KINDS`` are messages that are not valid Deepgram messages at all (invalid JSON, an
unknown type, a 1 MB message, Results without ``channel`` or with a string ``start``).
``HOSTILE_KINDS`` are well-formed final ``Results`` with a transcript and one word whose
*content* is hostile: times that are not finite, negative, absurdly large, beyond the audio
the server received, or inconsistent (an end before its start, a word outside its result);
and ``lone_surrogate``, which is not a message of its own but spoils the next real final with
a transcript (``with_lone_surrogate``). A client must not write any of them as a transcript,
and none may change how it treats the results that follow.

Each message is built from ``template``, the empty final at the connection's current offset
(``SpeechTracker.empty_results``), so none of them changes the spans of the real results.
Messages come as dicts (sent as JSON, ``NaN`` included) or as raw text. This module does no
I/O.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Final

__all__ = ["LONE_SURROGATE", "is_transcript_final", "malformed_messages", "with_lone_surrogate"]

#: What ``lone_surrogate`` puts in a transcript: a UTF-16 high surrogate with no low half.
#: ``json.dumps`` writes it as the escape ``\ud800``, which is valid JSON but not Unicode text.
LONE_SURROGATE: Final = "\ud800"
#: Exactly 1 000 000 characters: under trio-websocket's default 1 MiB message limit.
_GIGANTIC: Final = '{"type":"Gigantic","padding":"' + "x" * (1_000_000 - 32) + '"}'
#: How far past the audio received ``beyond_sent`` ends: far more than a client's tolerance.
BEYOND_S: Final = 5.0


def malformed_messages(kind: str, template: dict[str, Any]) -> list[dict[str, Any] | str]:
    """The messages of one ``kind`` (of ``faults.MALFORMED_KINDS`` or ``HOSTILE_KINDS``).

    ``lone_surrogate`` has none: the connection spoils its next final instead.

    Raises:
        ValueError: an unknown kind (the fault plan parser admits only known ones).
    """
    if kind == "invalid_json":
        return ['{"type": "Res']
    if kind == "unknown_type":
        return ['{"type":"Mystery"}']
    if kind == "gigantic":
        return [_GIGANTIC]
    if kind == "no_channel":
        return [{k: v for k, v in template.items() if k != "channel"}]
    if kind == "string_start":
        return [{**template, "start": str(template["start"])}]
    if kind == "lone_surrogate":
        return []
    now_s = float(template["start"])
    builders = {
        # Not a number: JSON has no NaN, but json.dumps writes one (and json.loads reads it).
        "nan_time": lambda: _hostile(template, kind, math.nan, 0.0, (now_s, now_s)),
        "negative_time": lambda: _hostile(template, kind, -1.0, now_s + 1.0, (now_s, now_s)),
        # 1e20 s after the epoch is beyond what a date can hold (OverflowError when formatted).
        "huge_start": lambda: _hostile(template, kind, 1e20, 0.0, (1e20, 1e20)),
        # 31 years: a duplicate filter that believed it would drop every later transcript.
        "huge_duration": lambda: _hostile(template, kind, now_s, 1e9, (now_s, now_s)),
        "beyond_sent": lambda: _hostile(
            template, kind, now_s, BEYOND_S, (now_s + BEYOND_S - 0.5, now_s + BEYOND_S)
        ),
        "end_before_start": lambda: _hostile(template, kind, now_s, -1.0, (now_s, now_s)),
        "word_end_before_start": lambda: _hostile(
            template, kind, now_s, 0.25, (now_s + 0.25, now_s)
        ),
        "word_outside_result": lambda: _hostile(
            template, kind, now_s, 0.0, (now_s + 2.0, now_s + 2.5)
        ),
    }
    if kind not in builders:
        raise ValueError(f"unknown malformed-message kind {kind!r}")
    return [builders[kind]()]


def _hostile(
    template: dict[str, Any], kind: str, start: float, duration: float, word: tuple[float, float]
) -> dict[str, Any]:
    message = copy.deepcopy(template)
    message["start"], message["duration"] = start, duration
    alternative = message["channel"]["alternatives"][0]
    alternative["transcript"] = f"[hostile {kind}]"
    alternative["words"] = [
        {
            "word": "[hostile]",
            "punctuated_word": "[hostile]",
            "start": word[0],
            "end": word[1],
            "confidence": alternative["confidence"],
        }
    ]
    return message


def is_transcript_final(message: dict[str, Any]) -> bool:
    """A final ``Results`` with a non-empty transcript (what ``lone_surrogate`` spoils)."""
    if message.get("type") != "Results" or message.get("is_final") is not True:
        return False
    return bool(message["channel"]["alternatives"][0]["transcript"])


def with_lone_surrogate(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with a lone surrogate after its transcript and after each punctuated word;
    the times, and the plain ``word``s, are untouched."""
    spoiled = copy.deepcopy(message)
    alternative = spoiled["channel"]["alternatives"][0]
    alternative["transcript"] += " " + LONE_SURROGATE
    for word in alternative["words"]:
        word["punctuated_word"] = word["punctuated_word"] + LONE_SURROGATE
    return spoiled
