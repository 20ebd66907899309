"""PCM arithmetic and levels (dgd.core.pcm): exact values for known signals and formats."""

from __future__ import annotations

import math
import struct

import pytest

from dgd.core import pcm
from dgd.core.pcm import (
    FULL_SCALE,
    SAMPLE_WIDTH_BYTES,
    SILENCE_DBFS,
    PcmFormat,
    is_digital_silence,
    level_dbfs,
    samples,
)


def s16(*values: int) -> bytes:
    """S16_LE bytes of ``values``, packed explicitly little-endian whatever the host is."""
    return struct.pack(f"<{len(values)}h", *values)


def sine(amplitude: float, freq_hz: float, rate_hz: int, n: int) -> bytes:
    return s16(
        *(round(amplitude * math.sin(2 * math.pi * freq_hz * k / rate_hz)) for k in range(n))
    )


def db(rms: float) -> float:
    return 20.0 * math.log10(rms / FULL_SCALE)


# --- constants ---------------------------------------------------------------------------


def test_constants() -> None:
    assert SAMPLE_WIDTH_BYTES == 2
    assert FULL_SCALE == 32768.0
    assert SILENCE_DBFS == -120.0


# --- decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\x01\x00", [1]),
        (b"\xff\xff", [-1]),
        (b"\x00\x80", [-32768]),
        (b"\xff\x7f", [32767]),
        (b"\x01\x00\xff\xff\x00\x01", [1, -1, 256]),
    ],
)
def test_samples_decode_little_endian(data: bytes, expected: list[int]) -> None:
    assert list(samples(data)) == expected


def test_samples_rejects_odd_length() -> None:
    with pytest.raises(ValueError, match="multiple"):
        samples(b"\x00\x00\x00")


# --- level_dbfs --------------------------------------------------------------------------

LEVEL_CASES = [
    pytest.param(b"", SILENCE_DBFS, id="empty"),
    pytest.param(s16(0) * 320, SILENCE_DBFS, id="digital-silence"),
    # A constant -32768 is a full-scale square with zero frequency: RMS = 32768 exactly.
    pytest.param(s16(-32768) * 320, 0.0, id="full-scale-negative-constant"),
    pytest.param(s16(-32768, 32767) * 160, db(math.sqrt((32768**2 + 32767**2) / 2)), id="square"),
    pytest.param(s16(1) * 320, db(1.0), id="constant-1"),  # -90.309 dBFS
    pytest.param(s16(-1) * 320, db(1.0), id="constant-minus-1"),
    pytest.param(s16(16384) * 320, db(16384.0), id="half-scale"),  # -6.0206 dBFS
    pytest.param(s16(1, 0), db(math.sqrt(0.5)), id="one-of-two"),  # -93.319 dBFS
    # One LSB among 10 000 zeros is -130.3 dBFS, below the floor: clamped to SILENCE_DBFS.
    pytest.param(s16(1) + s16(0) * 9999, SILENCE_DBFS, id="below-floor-clamped"),
    # Stereo: all channels count alike, so (L=100, R=0) is the RMS of [100, 0].
    pytest.param(s16(100, 0) * 160, db(math.sqrt(100**2 / 2)), id="stereo-one-channel"),
]


#: level_dbfs uses audioop where Python still has it; audioop.rms truncates to a whole LSB
#: (after dgd scales quiet audio up), which moves a level by at most a few thousandths of a dB.
LEVEL_TOLERANCE_DB = 0.005


@pytest.mark.parametrize(("data", "expected"), LEVEL_CASES)
def test_level_dbfs_exact(data: bytes, expected: float) -> None:
    assert level_dbfs(data) == pytest.approx(expected, abs=LEVEL_TOLERANCE_DB)


@pytest.mark.parametrize(("data", "expected"), LEVEL_CASES)
def test_level_without_audioop_is_exact(data: bytes, expected: float) -> None:
    # The math.hypot path, which level_dbfs takes where there is no audioop (Python 3.13,
    # Debian 13), checked on every interpreter; it does not truncate, so it is exact.
    assert pcm._level_hypot(data) == pytest.approx(expected, abs=1e-9)


def test_level_of_half_scale_is_minus_6_02() -> None:
    assert level_dbfs(s16(16384) * 320) == pytest.approx(-6.0206, abs=1e-4)
    assert level_dbfs(s16(1) * 320) == pytest.approx(-90.3090, abs=1e-4)


@pytest.mark.parametrize(
    ("freq_hz", "rate_hz", "n"),
    [
        (1000, 16000, 320),  # a 20 ms period at 16 kHz: 20 whole cycles
        (440, 48000, 48000),  # one second at 48 kHz
        (4000, 16000, 16),  # fs/4: samples 0, A, 0, -A
    ],
)
def test_level_of_full_scale_sine_is_minus_3_0103(freq_hz: int, rate_hz: int, n: int) -> None:
    # A sine of amplitude A has RMS A/sqrt(2): -3.0103 dB below a full-scale square (A is
    # 32767 here, 0.00027 dB short of full scale, plus rounding to integers).
    assert level_dbfs(sine(32767, freq_hz, rate_hz, n)) == pytest.approx(
        -3.0103, abs=LEVEL_TOLERANCE_DB
    )


def test_level_of_quiet_sine_is_6_db_per_halving() -> None:
    loud = level_dbfs(sine(16384, 1000, 16000, 320))
    quiet = level_dbfs(sine(8192, 1000, 16000, 320))
    assert loud == pytest.approx(-9.0309, abs=1e-3)
    assert loud - quiet == pytest.approx(20 * math.log10(2), abs=1e-3)


def test_level_rejects_odd_length() -> None:
    # The pipeline never passes an odd buffer (it counts it as invalid first); pcm refuses it.
    with pytest.raises(ValueError, match="multiple"):
        level_dbfs(b"\x01")


# --- is_digital_silence ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", True),
        (b"\x00" * 640, True),
        (s16(0, 0, 0, 1), False),
        (s16(-1) + s16(0) * 319, False),
        (b"\x00" * 639 + b"\x01", False),  # only the last byte is non-zero
        (s16(1) * 320, False),  # a quiet room is not digital silence
    ],
)
def test_is_digital_silence(data: bytes, expected: bool) -> None:
    assert is_digital_silence(data) is expected


# --- PcmFormat ---------------------------------------------------------------------------

FORMAT_CASES = [
    # rate, channels, period_ms -> frame_bytes, period_frames, period_bytes, bytes_per_second
    (16000, 1, 20, 2, 320, 640, 32000),
    (16000, 2, 20, 4, 320, 1280, 64000),
    (48000, 1, 20, 2, 960, 1920, 96000),
    (48000, 2, 10, 4, 480, 1920, 192000),
    (8000, 1, 125, 2, 1000, 2000, 16000),
    (44100, 2, 10, 4, 441, 1764, 176400),
    (22050, 1, 20, 2, 441, 882, 44100),
    (16000, 4, 32, 8, 512, 4096, 128000),
]


@pytest.mark.parametrize(
    ("rate", "channels", "period_ms", "frame_bytes", "period_frames", "period_bytes", "bps"),
    FORMAT_CASES,
)
def test_pcm_format_arithmetic(
    rate: int,
    channels: int,
    period_ms: int,
    frame_bytes: int,
    period_frames: int,
    period_bytes: int,
    bps: int,
) -> None:
    fmt = PcmFormat(rate_hz=rate, channels=channels, period_ms=period_ms)
    assert fmt.frame_bytes == frame_bytes
    assert fmt.period_frames == period_frames
    assert fmt.period_bytes == period_bytes
    assert fmt.bytes_per_second == bps
    assert fmt.seconds(bps) == 1.0
    assert fmt.seconds(0) == 0.0
    assert fmt.seconds(fmt.period_bytes) == pytest.approx(period_ms / 1000, abs=1e-12)


@pytest.mark.parametrize(
    ("fmt", "n_bytes", "expected_s"),
    [
        (PcmFormat(8000, 1, 125), 2000, 0.125),
        (PcmFormat(8000, 1, 125), 8000, 0.5),
        (PcmFormat(8000, 2, 125), 8000, 0.25),
        (PcmFormat(16000, 1, 20), 16000, 0.5),
        (PcmFormat(16000, 1, 20), 2, 1 / 16000),
        (PcmFormat(48000, 2, 20), 48000, 0.25),
    ],
)
def test_pcm_format_seconds(fmt: PcmFormat, n_bytes: int, expected_s: float) -> None:
    assert fmt.seconds(n_bytes) == expected_s


def test_pcm_format_is_a_frozen_value() -> None:
    fmt = PcmFormat(16000, 1, 20)
    assert fmt == PcmFormat(rate_hz=16000, channels=1, period_ms=20)
    assert hash(fmt) == hash(PcmFormat(16000, 1, 20))
    with pytest.raises(AttributeError):
        fmt.rate_hz = 8000  # type: ignore[misc]
