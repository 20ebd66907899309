"""PCM arithmetic: how long a period is, how many bytes it has, and how loud it is.

Only signed 16-bit little-endian interleaved PCM (ALSA ``S16_LE``) is handled, which is
what dgd captures and what Deepgram's ``encoding=linear16`` expects. This module does no I/O.
"""

from __future__ import annotations

import math
import sys
import warnings
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from types import ModuleType


def _import_audioop() -> ModuleType | None:
    """The standard library's audioop (C), deprecated in 3.11 and gone in 3.13 (where the
    audioop-lts port, Debian's python3-audioop-lts, provides the same module if installed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # Python 3.13+ (Debian 13): math.hypot is used instead
            return None
    return audioop


_AUDIOOP: Final = _import_audioop()

SAMPLE_WIDTH_BYTES: Final = 2
FULL_SCALE: Final = 32768.0
#: The level reported for digital silence (all samples exactly zero): log10(0) is -inf,
#: and a finite floor keeps arithmetic (averages, noise-floor tracking) well defined.
SILENCE_DBFS: Final = -120.0
_NEEDS_BYTESWAP: Final = sys.byteorder != "little"
#: Which implementation ``level_dbfs`` uses here (for benchmarks and diagnostics).
LEVEL_PATH: Final = "audioop" if _AUDIOOP is not None and not _NEEDS_BYTESWAP else "math.hypot"


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

    def same_stream(self, other: PcmFormat) -> bool:
        """True when audio in ``other`` can go on a stream opened for this format: Deepgram's
        handshake declares the rate and channels, not the period."""
        return self.rate_hz == other.rate_hz and self.channels == other.channels


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
    It runs 50 times a second in the capture thread, so its cost matters on a Pi Zero: with
    audioop (Python ≤ 3.12, or audioop-lts) it takes three C calls; without (Python 3.13,
    Debian 13) ``math.hypot`` does the sum of squares in C, once the samples are Python
    ints (bench/level_cost.py and docs/PERFORMANCE.md have the figures).
    """
    if _AUDIOOP is not None and not _NEEDS_BYTESWAP and data and len(data) % 2 == 0:
        return _level_audioop(_AUDIOOP, data)
    return _level_hypot(data)


def _level_hypot(data: bytes) -> float:
    # hypot(*a) = sqrt(sum of squares), computed in C with an error below 1 ulp and no
    # Python-level multiply or add per sample. On Python 3.13 it takes 0.42 × the
    # instructions of the previous sum(map(mul, a, a)) and 0.69 × those of
    # math.sumprod(a, a) (bench/level_cost.py); making the 320 int objects is most of the
    # rest, which is why it stays about 3.5 × audioop (docs/PERFORMANCE.md).
    decoded = samples(data)
    if not decoded:
        return SILENCE_DBFS
    norm = math.hypot(*decoded)
    if norm == 0.0:
        return SILENCE_DBFS
    rms = norm / math.sqrt(len(decoded))
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / FULL_SCALE))


def _level_audioop(audioop: ModuleType, data: bytes) -> float:
    # audioop.rms truncates to a whole LSB, which is coarse for quiet audio (the noise floor
    # the gate tracks): scale by the largest whole factor that cannot clip, measure, scale
    # back. The error is then below one part in (32767 / peak).
    peak: int = audioop.max(data, SAMPLE_WIDTH_BYTES)
    if peak == 0:
        return SILENCE_DBFS
    scale = 32767 // peak
    if scale > 1:
        rms = audioop.rms(audioop.mul(data, SAMPLE_WIDTH_BYTES, scale), SAMPLE_WIDTH_BYTES) / scale
    else:
        rms = audioop.rms(data, SAMPLE_WIDTH_BYTES)
    if rms == 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / FULL_SCALE))


def is_digital_silence(data: bytes) -> bool:
    """True when every byte is zero: a muted mixer or a dead input, not a quiet room."""
    # bytes.count runs in C (any() makes a Python int per byte: 10× slower on a silent
    # period); the first byte rules out nearly every other period without counting.
    return not data or (data[0] == 0 and data.count(0) == len(data))
