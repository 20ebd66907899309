"""PCM arithmetic: how long a period is, how many bytes it has, and how loud it is.

Only signed 16-bit little-endian interleaved PCM (ALSA ``S16_LE``) is handled, which is
what dgd captures and what Deepgram's ``encoding=linear16`` expects. This module does no I/O.
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from dataclasses import dataclass
from typing import Final

SAMPLE_WIDTH_BYTES: Final = 2
FULL_SCALE: Final = 32768.0
#: The level reported for digital silence (all samples exactly zero): log10(0) is -inf,
#: and a finite floor keeps arithmetic (averages, noise-floor tracking) well defined.
SILENCE_DBFS: Final = -120.0
_NEEDS_BYTESWAP: Final = sys.byteorder != "little"


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """The shape of the audio stream: S16_LE at ``rate_hz`` with ``channels`` interleaved.

    Attributes:
        rate_hz: frames per second.
        channels: interleaved channels per frame.
        period_ms: duration of one ALSA period, the unit of capture and of gate decisions.
    """

    rate_hz: int
    channels: int
    period_ms: int

    @property
    def frame_bytes(self) -> int:
        """Bytes in one frame (one sample of every channel)."""
        return SAMPLE_WIDTH_BYTES * self.channels

    @property
    def period_frames(self) -> int:
        """Frames in one period (``rate * period_ms / 1000``, exact by config validation)."""
        return self.rate_hz * self.period_ms // 1000

    @property
    def period_bytes(self) -> int:
        """Bytes in one full period."""
        return self.period_frames * self.frame_bytes

    @property
    def bytes_per_second(self) -> int:
        """Bytes of audio per second of audio."""
        return self.rate_hz * self.frame_bytes

    def seconds(self, n_bytes: int) -> float:
        """Duration in seconds of ``n_bytes`` of audio in this format."""
        return n_bytes / self.bytes_per_second


def samples(data: bytes) -> array[int]:
    """Decode S16_LE bytes into an array of ints (``len(data)`` must be even)."""
    decoded = array("h")
    decoded.frombytes(data)
    if _NEEDS_BYTESWAP:
        decoded.byteswap()
    return decoded


def level_dbfs(data: bytes) -> float:
    """RMS level of S16_LE audio in dBFS (0 dBFS = a full-scale square wave).

    All channels count alike. Digital silence (and empty input) returns ``SILENCE_DBFS``.
    ``sum(map(mul, a, a))`` keeps the loop in C: about 5 µs for a 20 ms period at 16 kHz.
    """
    decoded = samples(data)
    if not decoded:
        return SILENCE_DBFS
    energy = sum(map(operator.mul, decoded, decoded))
    if energy == 0:
        return SILENCE_DBFS
    rms = math.sqrt(energy / len(decoded))
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / FULL_SCALE))


def is_digital_silence(data: bytes) -> bool:
    """True when every byte is zero: a muted mixer or a dead input, not a quiet room."""
    return not any(data)
