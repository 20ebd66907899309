"""The per-period path (dgd.core.pipeline): capture clock, validation, gating, framing, notices.

Most tests use 8 kHz mono with 125 ms periods: every capture time is then a multiple of 1/8 s
and exact in binary, so start times and durations are compared with ``==``. The gate has a
fixed threshold (-40 dBFS to open, -43 dBFS to stay open), so its decisions do not depend on
the adaptive noise floor. Each period carries a distinct constant sample value, so a frame's
bytes show exactly which periods it was built from.
"""

from __future__ import annotations

import itertools
import random
import struct
from typing import TYPE_CHECKING

import pytest

from dgd.core.events import (
    AudioFrame,
    DigitalSilence,
    FinalizeMarker,
    GateClosed,
    GateOpened,
    InvalidBuffer,
    Overrun,
    PipelineOutput,
    SignalReturned,
)
from dgd.core.gate import Gate, GateMode
from dgd.core.pcm import PcmFormat, level_dbfs
from dgd.core.pipeline import (
    DIGITAL_SILENCE_REPORT_S,
    DRIFT_WINDOW_S,
    MAX_READ_LATENESS_S,
    CaptureClock,
    CapturePipeline,
    CaptureStatistics,
)
from dgd.core.timemap import TimeMap

if TYPE_CHECKING:
    from collections.abc import Sequence

FMT = PcmFormat(rate_hz=8000, channels=1, period_ms=125)  # 2000 bytes a period
P = 0.125  # period in seconds
T0 = 1000.0  # capture start of period 0
THRESHOLD_DBFS = -40.0


def const(value: int, fmt: PcmFormat = FMT) -> bytes:
    """One period whose every sample is ``value``."""
    n = fmt.period_frames * fmt.channels
    return struct.pack(f"<{n}h", *([value] * n))


def loud(k: int) -> bytes:
    return const(10000 + k)  # about -10 dBFS


def quiet(k: int) -> bytes:
    return const(1 + k)  # -90 .. -50 dBFS for k < 100: below the close threshold


ZEROS = bytes(FMT.period_bytes)


def make_pipeline(
    mode: str = "energy",
    *,
    preroll_ms: int = 250,
    hangover_ms: int = 250,
    frame_ms: int = 500,
    fmt: PcmFormat = FMT,
) -> CapturePipeline:
    gate: Gate[object] = Gate(
        mode=GateMode(mode),
        threshold_dbfs=THRESHOLD_DBFS,
        preroll_ms=preroll_ms,
        hangover_ms=hangover_ms,
        period_ms=fmt.period_ms,
    )
    return CapturePipeline(fmt, gate, frame_ms)  # type: ignore[arg-type]


def start(i: int) -> float:
    """Capture start of period ``i`` in a gapless run."""
    return T0 + i * P


def run(pipeline: CapturePipeline, periods: Sequence[bytes]) -> list[list[PipelineOutput]]:
    """Feed periods read on schedule (period ``i`` read at the end of its own capture)."""
    return [pipeline.feed(data, start(i) + P) for i, data in enumerate(periods)]


def flat(outputs: list[list[PipelineOutput]]) -> list[PipelineOutput]:
    return [item for step in outputs for item in step]


# --- CaptureClock ------------------------------------------------------------------------


def test_clock_constants() -> None:
    assert (MAX_READ_LATENESS_S, DRIFT_WINDOW_S) == (0.6, 10.0)
    assert DIGITAL_SILENCE_REPORT_S == 5.0


CLOCK_CASES = [
    pytest.param([10.125, 10.25, 10.375], [10.0, 10.125, 10.25], id="on-schedule"),
    pytest.param(
        # The capture thread ran 450 ms late (ALSA kept the audio): the times do not move.
        [10.125, 10.25 + 0.453125, 10.375 + 0.328125, 10.5],
        [10.0, 10.125, 10.25, 10.375],
        id="late-within-the-buffer",
    ),
    pytest.param(
        # The first read was late: a more punctual one moves the schedule back.
        [10.125 + 0.03125, 10.25, 10.375],
        [10.03125, 10.125, 10.25],
        id="first-read-late",
    ),
    pytest.param(
        # Later than the buffer can hold: samples are missing; re-anchored.
        [10.125, 10.25 + 0.625, 10.375 + 0.625],
        [10.0, 10.75, 10.875],
        id="late-beyond-the-buffer",
    ),
    pytest.param(
        # More audio than time passed (a fast test feeder): re-anchored, never extrapolated.
        [10.125, 10.25 - 0.625],
        [10.0, 9.5],
        id="early-beyond-the-buffer",
    ),
    pytest.param(
        # Jitter does not accumulate: each read is judged against the contiguous schedule.
        [10.125, 10.25 + 0.0625, 10.375 + 0.0625, 10.5 + 0.0625, 10.625],
        [10.0, 10.125, 10.25, 10.375, 10.5],
        id="sustained-jitter",
    ),
]


@pytest.mark.parametrize(("reads", "expected"), CLOCK_CASES)
def test_capture_clock(reads: list[float], expected: list[float]) -> None:
    clock = CaptureClock(P)
    assert [clock.stamp(r) for r in reads] == expected


def test_capture_clock_reset_re_anchors() -> None:
    clock = CaptureClock(P)
    assert clock.stamp(10.125) == 10.0
    assert clock.stamp(10.25 + 0.0625) == 10.125  # lateness ignored
    clock.reset()
    assert clock.stamp(10.375 + 0.0625) == 10.3125  # after reset: the read as it came
    assert clock.stamp(10.5) == 10.375  # a more punctual read moves the schedule back


@pytest.mark.parametrize("drift_ppm", [-300.0, 0.0, 300.0])
def test_capture_clock_follows_the_device_clock_for_a_day(drift_ppm: float) -> None:
    """A device whose sample clock is off by a few hundred ppm (a pure sample count would be
    26 s off after a day), read by a thread that is late by up to 300 ms at random: every
    period's capture time stays within 15 ms of the truth."""
    period_s = 0.1
    clock = CaptureClock(period_s)
    rng = random.Random(7)
    true_period_s = period_s * (1 + drift_ppm * 1e-6)
    worst_s = 0.0
    for k in range(864_000):
        true_start_s = 1000.0 + k * true_period_s
        late_s = rng.choice((0.0, 0.001, 0.01, 0.3 * rng.random()))
        stamped_s = clock.stamp(true_start_s + true_period_s + late_s)
        if k > 10:
            worst_s = max(worst_s, abs(stamped_s - true_start_s))
    assert worst_s < 0.015


def test_capture_clock_does_not_accumulate_rounding_at_epoch_magnitude() -> None:
    # Start times are anchor + n·period, not a running sum of 0.02 (which at 1.8e9 s drifts by
    # ~1.9e-8 s a period: 3.4 ms an hour).
    clock = CaptureClock(0.02)
    anchor_s = 1_795_470_001.0
    stamps = [clock.stamp(anchor_s + (k + 1) * 0.02) for k in range(180_000)]
    assert stamps[0] == anchor_s
    assert stamps[-1] == anchor_s + 179_999 * 0.02
    assert stamps[90_000] == anchor_s + 90_000 * 0.02


# --- capture is a byte stream -------------------------------------------------------------

#: Read sizes a real kernel device returned to a non-blocking reader of 3200-byte periods
#: (snd-aloop on its default clock, 6 s; issue 8): partial reads are normal.
KERNEL_READ_SIZES = (
    [3200] * 20 + [128, 3072] + [3200] * 18 + [128, 128, 3072, 128, 2944] + [3200] * 18
)
FMT16 = PcmFormat(rate_hz=16000, channels=1, period_ms=20)  # 640 bytes a period


def ramp(n_bytes: int) -> bytes:
    """Distinct, loud samples: any reordering, loss or duplication shows in the bytes."""
    n = n_bytes // 2
    return struct.pack(f"<{n}h", *[8000 + (k % 20000) for k in range(n)])


def feed_in_reads(
    pipeline: CapturePipeline, stream: bytes, sizes: Sequence[int], t0: float = T0
) -> list[PipelineOutput]:
    """Feed ``stream`` in reads of ``sizes``, each returning when its last byte was captured."""
    out: list[PipelineOutput] = []
    offset = 0
    for size in sizes:
        offset += size
        out += pipeline.feed(stream[offset - size : offset], t0 + pipeline.fmt.seconds(offset))
    assert offset == len(stream)
    return out


def frames_of(out: Sequence[PipelineOutput]) -> list[AudioFrame]:
    return [item for item in out if isinstance(item, AudioFrame)]


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param(KERNEL_READ_SIZES, id="kernel-device"),
        pytest.param([3200] * 60, id="whole-reads"),
        pytest.param([640] * 300, id="one-period-reads"),
        pytest.param([2] * 320 + [3200] * 59 + [2560], id="single-samples-first"),
        pytest.param([3198, 2, 3202, 3198] * 15, id="straddling"),
        pytest.param([192000], id="one-huge-read"),
    ],
)
def test_partial_reads_are_assembled_into_the_same_stream(sizes: list[int]) -> None:
    """Whatever sizes the device delivers, every byte is sent once, in order, as whole
    periods in frames of frame_ms, stamped on one gapless timeline."""
    stream = ramp(sum(sizes))
    pipeline = make_pipeline("off", frame_ms=100, fmt=FMT16)
    out = feed_in_reads(pipeline, stream, sizes)
    out += pipeline.flush()
    frames = frames_of(out)
    assert b"".join(f.data for f in frames) == stream
    assert [o for o in out if not isinstance(o, AudioFrame)] == []
    assert all(len(f.data) % FMT16.period_bytes == 0 for f in frames)
    assert pipeline.statistics() == CaptureStatistics(
        captured_s=(len(stream) // FMT16.period_bytes) * (FMT16.period_ms / 1000)
    )
    position_s = 0.0
    for frame in frames:
        assert frame.start_s == pytest.approx(T0 + position_s, abs=1e-6)
        position_s += frame.duration_s
    assert position_s == pytest.approx(FMT16.seconds(len(stream)))


def test_the_kernel_read_sizes_lose_nothing_through_the_gate() -> None:
    """Issue 8's defect 1: the same reads through the energy gate, speech throughout."""
    stream = ramp(sum(KERNEL_READ_SIZES))
    pipeline = make_pipeline("energy", frame_ms=100, fmt=FMT16)
    out = feed_in_reads(pipeline, stream, KERNEL_READ_SIZES) + pipeline.flush()
    assert b"".join(f.data for f in frames_of(out)) == stream
    assert not any(isinstance(o, InvalidBuffer) for o in out)


def test_a_partial_period_waits_for_its_rest() -> None:
    pipeline = make_pipeline("off", frame_ms=125)
    first, rest = loud(0)[:500], loud(0)[500:]
    assert pipeline.feed(first, start(0) + 0.03125) == []
    assert pipeline.statistics().captured_s == 0.0
    assert pipeline.feed(rest, start(0) + P) == [AudioFrame(loud(0), start(0), P)]


def test_flush_sends_the_partial_period() -> None:
    """At the end of capture the bytes of an incomplete period are not lost."""
    pipeline = make_pipeline("off", frame_ms=500)
    assert pipeline.feed(loud(0) + loud(1)[:1000], start(1) + P / 2) == []
    assert pipeline.flush() == [AudioFrame(loud(0) + loud(1)[:1000], start(0), P + P / 2)]
    assert pipeline.flush() == []


def test_empty_read_is_nothing() -> None:
    pipeline = make_pipeline("off", frame_ms=125)
    assert pipeline.feed(b"", 2000.5) == []
    assert pipeline.statistics() == CaptureStatistics()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x01", id="one-byte"),
        pytest.param(b"\x01" * 1999, id="odd-short"),
        pytest.param(b"\x01" * 2001, id="odd-long"),
    ],
)
@pytest.mark.parametrize("mode", ["off", "energy", "shadow"])
def test_bytes_that_are_not_sample_frames_are_invalid(data: bytes, mode: str) -> None:
    """Only an odd byte count (for S16_LE mono) cannot be audio; with it goes the partial
    period before it, since the stream's alignment is lost."""
    pipeline = make_pipeline(mode, frame_ms=125)
    assert pipeline.feed(loud(0)[:600], 2000.0) == []
    out = pipeline.feed(data, 2000.5)
    assert out == [InvalidBuffer(2000.5, len(data), 2)]
    assert pipeline.statistics() == CaptureStatistics(invalid_buffers=1)
    assert pipeline.flush() == []
    assert pipeline.gate.statistics().periods_in == 0


def test_frame_size_is_per_format() -> None:
    stereo = PcmFormat(rate_hz=8000, channels=2, period_ms=125)
    pipeline = make_pipeline("off", frame_ms=125, fmt=stereo)
    out = pipeline.feed(b"\x01\x00" * 3, 2000.0)  # one and a half stereo sample frames
    assert out == [InvalidBuffer(2000.0, 6, 4)]


def test_invalid_buffer_between_valid_periods_resets_the_clock() -> None:
    pipeline = make_pipeline("off", frame_ms=125)
    out = [
        pipeline.feed(loud(0), start(0) + P),
        pipeline.feed(b"\x00" * 7, start(1) + P),
        # The clock was reset by the invalid read: this read, 1/16 s late, is not pulled
        # back onto the old schedule but stamped as read.
        pipeline.feed(loud(2), start(2) + P + 0.0625),
    ]
    assert out == [
        [AudioFrame(loud(0), start(0), P)],
        [InvalidBuffer(start(1) + P, 7, 2)],
        [AudioFrame(loud(2), start(2) + 0.0625, P)],
    ]
    assert pipeline.statistics() == CaptureStatistics(captured_s=2 * P, invalid_buffers=1)


def test_overrun_drops_the_partial_period_and_reanchors() -> None:
    pipeline = make_pipeline("off", frame_ms=125)
    assert pipeline.feed(loud(0) + loud(1)[:800], start(1) + 0.05) == [
        AudioFrame(loud(0), start(0), P)
    ]
    assert pipeline.overrun(start(3)) == [Overrun(start(3), 800)]
    # What follows the lost audio is stamped as read, not joined to the schedule before it.
    assert pipeline.feed(loud(5), start(5) + P + 0.03) == [AudioFrame(loud(5), start(5) + 0.03, P)]
    assert pipeline.flush() == []


# --- framing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_ms", "periods_per_frame"),
    [(125, 1), (250, 2), (500, 4), (1000, 8), (60, 1), (300, 2), (0, 1)],
)
def test_frames_are_whole_periods_of_frame_ms(frame_ms: int, periods_per_frame: int) -> None:
    pipeline = make_pipeline("off", frame_ms=frame_ms)
    periods = [loud(k) for k in range(8)]
    frames = flat(run(pipeline, periods))
    n = periods_per_frame
    assert frames == [
        AudioFrame(b"".join(periods[i : i + n]), start(i), n * P) for i in range(0, 8, n)
    ]


def test_flush_returns_the_partial_frame_and_resets_the_clock() -> None:
    pipeline = make_pipeline("off", frame_ms=500)
    assert flat(run(pipeline, [loud(0), loud(1), loud(2)])) == []
    assert pipeline.flush() == [AudioFrame(loud(0) + loud(1) + loud(2), start(0), 3 * P)]
    assert pipeline.flush() == []
    # After flush the clock re-anchors: 1/16 s of jitter is not absorbed.
    assert pipeline.feed(loud(3), start(3) + P + 0.0625) == []
    assert pipeline.flush() == [AudioFrame(loud(3), start(3) + 0.0625, P)]


def test_non_contiguous_periods_split_frames() -> None:
    pipeline = make_pipeline("off", frame_ms=500)
    out = [
        pipeline.feed(loud(0), start(0) + P),
        pipeline.feed(loud(1), start(1) + P),
        # An overrun: periods 2 and 3 never arrived.
        pipeline.overrun(start(4)),
        pipeline.feed(loud(4), start(4) + P),
        pipeline.feed(loud(5), start(5) + P),
        pipeline.feed(loud(6), start(6) + P),
        pipeline.feed(loud(7), start(7) + P),
    ]
    assert out == [
        [],
        [],
        [Overrun(start(4), 0)],
        [AudioFrame(loud(0) + loud(1), start(0), 2 * P)],
        [],
        [],
        [AudioFrame(loud(4) + loud(5) + loud(6) + loud(7), start(4), 4 * P)],
    ]


def test_set_frame_ms_takes_effect_with_the_next_frame() -> None:
    pipeline = make_pipeline("off", frame_ms=250)
    out = flat(run(pipeline, [loud(0), loud(1), loud(2)]))
    assert out == [AudioFrame(loud(0) + loud(1), start(0), 2 * P)]
    pipeline.set_frame_ms(500)
    steps = [pipeline.feed(loud(k), start(k) + P) for k in range(3, 7)]
    assert steps == [
        [],
        [],
        [AudioFrame(loud(2) + loud(3) + loud(4) + loud(5), start(2), 4 * P)],
        [],
    ]
    pipeline.set_frame_ms(125)  # smaller than what is pending: the next period flushes
    assert pipeline.feed(loud(7), start(7) + P) == [AudioFrame(loud(6) + loud(7), start(6), 2 * P)]


def test_stereo_frames_are_byte_exact() -> None:
    fmt = PcmFormat(rate_hz=8000, channels=2, period_ms=125)
    pipeline = make_pipeline("off", frame_ms=250, fmt=fmt)
    periods = [
        struct.pack("<2000h", *(((k * 1000 + i) % 30000) - 15000 for i in range(2000)))
        for k in range(4)
    ]
    frames = [pipeline.feed(data, start(k) + P) for k, data in enumerate(periods)]
    assert frames == [
        [],
        [AudioFrame(periods[0] + periods[1], start(0), 0.25)],
        [],
        [AudioFrame(periods[2] + periods[3], start(2), 0.25)],
    ]


# --- gating: pre-roll, close, Finalize ---------------------------------------------------


def test_speech_burst_is_framed_flushed_and_finalized() -> None:
    # Pre-roll 250 ms (2 periods), hangover 250 ms (2 periods), frames of 4 periods.
    # With 125 ms periods the attack is one period, so the first loud period opens the gate.
    pipeline = make_pipeline("energy", preroll_ms=250, hangover_ms=250, frame_ms=500)
    periods = [
        quiet(0),
        quiet(1),
        quiet(2),
        loud(3),
        loud(4),
        loud(5),
        quiet(6),
        quiet(7),
        quiet(8),
        quiet(9),
    ]
    out = run(pipeline, periods)
    assert out == [
        [],
        [],
        [],
        [GateOpened(start(1), level_dbfs(loud(3)), THRESHOLD_DBFS)],
        [AudioFrame(quiet(1) + quiet(2) + loud(3) + loud(4), start(1), 4 * P)],
        [],
        [],
        [],
        [
            AudioFrame(loud(5) + quiet(6) + quiet(7), start(5), 3 * P),
            GateClosed(start(9)),
            FinalizeMarker(start(9)),
        ],
        [],
    ]
    # Not sent: quiet 0 (fell out of the pre-roll ring), 8 (closed the gate) and 9.
    assert pipeline.statistics() == CaptureStatistics(captured_s=10 * P, gated_s=3 * P)
    assert pipeline.flush() == []


@pytest.mark.parametrize(
    ("preroll_ms", "first_forwarded"),
    [(0, 3), (125, 2), (250, 1), (375, 0), (1000, 0)],
)
def test_preroll_reaches_frames_in_order(preroll_ms: int, first_forwarded: int) -> None:
    pipeline = make_pipeline("energy", preroll_ms=preroll_ms, hangover_ms=0, frame_ms=1000)
    periods = [quiet(0), quiet(1), quiet(2), loud(3), quiet(4), quiet(5)]
    items = flat(run(pipeline, periods))
    frames = [i for i in items if isinstance(i, AudioFrame)]
    # Hangover 0: the first quiet period after speech closes the gate and is not sent.
    assert frames == [
        AudioFrame(
            b"".join(periods[first_forwarded:4]),
            start(first_forwarded),
            (4 - first_forwarded) * P,
        )
    ]
    assert items[0] == GateOpened(start(first_forwarded), level_dbfs(loud(3)), THRESHOLD_DBFS)
    assert items[-2:] == [GateClosed(start(5)), FinalizeMarker(start(5))]


def test_two_bursts_give_two_finalizes() -> None:
    pipeline = make_pipeline("energy", preroll_ms=0, hangover_ms=0, frame_ms=1000)
    periods = [loud(0), quiet(1), quiet(2), loud(3), loud(4), quiet(5)]
    items = flat(run(pipeline, periods))
    assert items == [
        GateOpened(start(0), level_dbfs(loud(0)), THRESHOLD_DBFS),
        AudioFrame(loud(0), start(0), P),
        GateClosed(start(2)),
        FinalizeMarker(start(2)),
        GateOpened(start(3), level_dbfs(loud(3)), THRESHOLD_DBFS),
        AudioFrame(loud(3) + loud(4), start(3), 2 * P),
        GateClosed(start(6)),
        FinalizeMarker(start(6)),
    ]


def test_attack_of_two_periods_at_20_ms() -> None:
    # The realistic format: 16 kHz, 20 ms periods; the attack is 40 ms (two periods), and the
    # pre-roll (60 ms) always includes the period that began the attack.
    fmt = PcmFormat(rate_hz=16000, channels=1, period_ms=20)
    pipeline = make_pipeline("energy", preroll_ms=60, hangover_ms=40, frame_ms=100, fmt=fmt)
    values = [1, 2, 3, 4, 10000, 10001, 10002, 5, 6, 7, 8]
    periods = [const(v, fmt) for v in values]
    clock_s = 500.0
    items: list[PipelineOutput] = []
    for data in periods:
        clock_s += 0.02
        items += pipeline.feed(data, clock_s)
    frames = [i for i in items if isinstance(i, AudioFrame)]
    # Opened on the second loud period (index 5) with pre-roll 2, 3, 4; closed at index 9
    # after two hangover periods (7, 8).
    assert len(frames) == 2
    assert frames[0].data == b"".join(periods[2:7])
    assert frames[1].data == b"".join(periods[7:9])
    assert frames[0].duration_s == pytest.approx(0.1, abs=1e-12)
    assert frames[1].duration_s == pytest.approx(0.04, abs=1e-12)
    assert frames[0].start_s == pytest.approx(500.04, abs=1e-9)
    assert frames[1].start_s == pytest.approx(500.14, abs=1e-9)
    # Frames of one burst are contiguous in capture time.
    assert frames[0].end_s == pytest.approx(frames[1].start_s, abs=1e-9)
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["GateOpened", "AudioFrame", "AudioFrame", "GateClosed", "FinalizeMarker"]


# --- shadow and off modes ----------------------------------------------------------------


def test_shadow_mode_forwards_everything_without_finalize() -> None:
    pipeline = make_pipeline("shadow", preroll_ms=250, hangover_ms=0, frame_ms=500)
    pipeline.finalize_on_close = False
    periods = [quiet(0), quiet(1), loud(2), quiet(3), quiet(4), quiet(5), quiet(6), quiet(7)]
    out = run(pipeline, periods)
    assert out == [
        [],
        [],
        [GateOpened(start(2), level_dbfs(loud(2)), THRESHOLD_DBFS)],
        # The energy gate would close on quiet 3 (hangover 0); in shadow mode it is still sent.
        [
            AudioFrame(quiet(0) + quiet(1) + loud(2) + quiet(3), start(0), 4 * P),
            GateClosed(start(4)),
        ],
        [],
        [],
        [],
        [AudioFrame(quiet(4) + quiet(5) + quiet(6) + quiet(7), start(4), 4 * P)],
    ]
    assert not any(isinstance(i, FinalizeMarker) for i in flat(out))
    assert pipeline.statistics() == CaptureStatistics(captured_s=8 * P, gated_s=0.0)
    # The energy gate would not have sent 3 (closing) and 4..7 (closed); quiet 0 and 1 would
    # have gone out as pre-roll.
    assert pipeline.gate.statistics().would_drop == 5


def test_shadow_mode_flushes_the_closing_period_into_the_frame() -> None:
    # In shadow mode the closing period is forwarded before the flush, so no audio is held back.
    pipeline = make_pipeline("shadow", preroll_ms=0, hangover_ms=0, frame_ms=1000)
    pipeline.finalize_on_close = False
    out = run(pipeline, [loud(0), quiet(1)])
    assert out == [
        [GateOpened(start(0), level_dbfs(loud(0)), THRESHOLD_DBFS)],
        [AudioFrame(loud(0) + quiet(1), start(0), 2 * P), GateClosed(start(2))],
    ]


def test_off_mode_forwards_everything_and_never_reports_the_gate() -> None:
    pipeline = make_pipeline("off", frame_ms=250)
    periods = [quiet(0), loud(1), quiet(2), quiet(3), quiet(4), loud(5)]
    assert flat(run(pipeline, periods)) == [
        AudioFrame(quiet(0) + loud(1), start(0), 2 * P),
        AudioFrame(quiet(2) + quiet(3), start(2), 2 * P),
        AudioFrame(quiet(4) + loud(5), start(4), 2 * P),
    ]
    assert pipeline.statistics() == CaptureStatistics(captured_s=6 * P)


# --- digital silence ---------------------------------------------------------------------

REPORT_AFTER = 40  # 5 s of 125 ms periods


def test_digital_silence_reported_once_after_5_s_then_signal_returned() -> None:
    pipeline = make_pipeline("energy")
    periods = [quiet(0)] + [ZEROS] * (REPORT_AFTER + 20) + [quiet(1), quiet(2)]
    out = run(pipeline, periods)
    notices = [(i, item) for i, step in enumerate(out) for item in step]
    first_zero = 1
    last_zero = REPORT_AFTER + 20
    assert notices == [
        (first_zero + REPORT_AFTER - 1, DigitalSilence(start(first_zero), 5.0)),
        (last_zero + 1, SignalReturned(start(last_zero + 1), (REPORT_AFTER + 20) * P)),
    ]


def test_digital_silence_shorter_than_5_s_is_not_reported() -> None:
    pipeline = make_pipeline("energy")
    periods = [ZEROS] * (REPORT_AFTER - 1) + [quiet(0)] + [ZEROS] * REPORT_AFTER
    out = run(pipeline, periods)
    # The first run (4.875 s) is forgotten when signal returns; the second run counts anew.
    assert flat(out) == [DigitalSilence(start(REPORT_AFTER), 5.0)]
    assert out[-1] == [DigitalSilence(start(REPORT_AFTER), 5.0)]


def test_digital_silence_reported_again_after_signal_returned() -> None:
    pipeline = make_pipeline("energy")
    periods = [ZEROS] * REPORT_AFTER + [quiet(0)] + [ZEROS] * REPORT_AFTER + [quiet(1)]
    assert flat(run(pipeline, periods)) == [
        DigitalSilence(start(0), 5.0),
        SignalReturned(start(REPORT_AFTER), 5.0),
        DigitalSilence(start(REPORT_AFTER + 1), 5.0),
        SignalReturned(start(2 * REPORT_AFTER + 1), 5.0),
    ]


def test_digital_silence_in_off_mode_is_still_sent() -> None:
    # Zeros are reported, but in "off" mode they are audio like any other.
    pipeline = make_pipeline("off", frame_ms=5000)
    items = flat(run(pipeline, [ZEROS] * REPORT_AFTER))
    assert items == [
        DigitalSilence(start(0), 5.0),
        AudioFrame(ZEROS * REPORT_AFTER, start(0), 5.0),
    ]


def test_gated_and_forwarded_periods_add_up_to_captured() -> None:
    pipeline = make_pipeline("energy", preroll_ms=250, hangover_ms=250, frame_ms=500)
    run(pipeline, [quiet(0), quiet(1), quiet(2), loud(3), loud(4), quiet(5), quiet(6), quiet(7)])
    assert pipeline.gate.statistics().periods_forwarded == 6  # quiet 1, 2, loud 3, 4, quiet 5, 6
    assert pipeline.statistics() == CaptureStatistics(captured_s=8 * P, gated_s=2 * P)  # 0 and 7


def test_ten_minutes_of_epoch_time_frames_are_contiguous() -> None:
    # Realistic wall-clock magnitudes (2026) and 20 ms periods: the frames of an uninterrupted
    # capture must meet end to start, so the connection's TimeMap keeps a single segment.
    fmt = PcmFormat(rate_hz=16000, channels=1, period_ms=20)
    pipeline = make_pipeline("off", frame_ms=100, fmt=fmt)
    anchor_s = 1_795_470_001.0
    data = const(1, fmt)
    frames = [
        item
        for k in range(30_000)
        for item in pipeline.feed(data, anchor_s + (k + 1) * 0.02)
        if isinstance(item, AudioFrame)
    ]
    assert len(frames) == 6000
    assert all(abs(a.end_s - b.start_s) <= 1e-6 for a, b in itertools.pairwise(frames))
    timemap = TimeMap()
    for f in frames:
        timemap.append(f.start_s, f.duration_s)
    assert len(timemap.segments) == 1


# --- reads of several periods --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["off", "energy", "shadow"])
@pytest.mark.parametrize("per_read", [2, 4])
def test_a_read_of_several_periods_is_gated_period_by_period(mode: str, per_read: int) -> None:
    """Reading k periods at a time (ALSA reads of stream.frame_ms) forwards exactly the audio,
    with the same capture times and gate decisions, that feeding them one by one does; only
    where frames are cut may differ (they end with the read, see the next test)."""
    periods = (
        [quiet(k) for k in range(4)] + [loud(k) for k in range(6)] + [quiet(k) for k in range(6)]
    )
    single = make_pipeline(mode)
    one_by_one = flat([*run(single, periods), single.flush()])
    batched = make_pipeline(mode)
    outputs = []
    for i in range(0, len(periods), per_read):
        group = periods[i : i + per_read]
        outputs.append(batched.feed(b"".join(group), start(i + len(group) - 1) + P))
    outputs.append(batched.flush())

    def audio(items: list[PipelineOutput]) -> tuple[bytes, float]:
        frames = [i for i in items if isinstance(i, AudioFrame)]
        return b"".join(f.data for f in frames), frames[0].start_s if frames else 0.0

    def others(items: list[PipelineOutput]) -> list[PipelineOutput]:
        return [i for i in items if not isinstance(i, AudioFrame)]

    assert audio(flat(outputs)) == audio(one_by_one)
    assert others(flat(outputs)) == others(one_by_one)
    assert batched.gate.statistics().periods_in == len(periods)


def test_frames_end_with_the_read_when_the_next_read_would_not_fit() -> None:
    """The gate opens mid-read: pre-roll + onset is not a whole frame. The rest of the frame
    goes out at the end of the read instead of waiting for (and straddling) the next one."""
    pipeline = make_pipeline("energy", preroll_ms=250, frame_ms=500)  # 4 periods a frame/read
    reads = [[quiet(0), quiet(1), quiet(2), quiet(3)], [quiet(4), loud(0), loud(1), loud(2)]]
    reads.append([loud(3), loud(4), loud(5), loud(6)])
    out = [pipeline.feed(b"".join(r), start(4 * i + 3) + P) for i, r in enumerate(reads)]
    frames = [[len(f.data) // 2000 for f in step if isinstance(f, AudioFrame)] for step in out]
    # Read 2: the gate opens with 2 pre-roll periods + 3 periods: one whole frame of 4 and
    # the last period alone at the read's end; read 3 is one frame of its own.
    assert frames == [[], [4, 1], [4]]
