"""Connection offset → capture time (dgd.core.timemap): segments, boundaries, extrapolation,
forgetting.

Every time here is a multiple of 1/8 s (or a power of two), so the floats are exact and the
expected values are compared with ``==``.
"""

from __future__ import annotations

import pytest

from dgd.core.timemap import CONTIGUOUS_TOLERANCE_S, Segment, TimeMap


def build(*appends: tuple[float, float]) -> TimeMap:
    tm = TimeMap()
    for wall_s, duration_s in appends:
        tm.append(wall_s, duration_s)
    return tm


# --- append ------------------------------------------------------------------------------

APPEND_CASES = [
    pytest.param([(100.0, 0.5)], [0.0], ((0.0, 100.0, 0.5),), 0.5, id="one"),
    pytest.param(
        [(100.0, 0.5), (100.5, 0.25), (100.75, 0.125)],
        [0.0, 0.5, 0.75],
        ((0.0, 100.0, 0.875),),
        0.875,
        id="contiguous-merge",
    ),
    pytest.param(
        [(100.0, 0.5), (200.0, 0.5)],
        [0.0, 0.5],
        ((0.0, 100.0, 0.5), (0.5, 200.0, 0.5)),
        1.0,
        id="gap-new-segment",
    ),
    pytest.param(
        [(100.0, 0.5), (200.0, 0.25), (200.25, 0.25), (300.0, 0.125)],
        [0.0, 0.5, 0.75, 1.0],
        ((0.0, 100.0, 0.5), (0.5, 200.0, 0.5), (1.0, 300.0, 0.125)),
        1.125,
        id="gap-merge-gap",
    ),
    pytest.param(
        # A wall-clock step backwards (NTP) is a new segment too, never a merge.
        [(100.0, 0.5), (50.0, 0.5)],
        [0.0, 0.5],
        ((0.0, 100.0, 0.5), (0.5, 50.0, 0.5)),
        1.0,
        id="clock-stepped-back",
    ),
    pytest.param(
        # Overlapping capture (the next frame starts before the previous ended) is not contiguous.
        [(100.0, 0.5), (100.25, 0.5)],
        [0.0, 0.5],
        ((0.0, 100.0, 0.5), (0.5, 100.25, 0.5)),
        1.0,
        id="overlap-new-segment",
    ),
    pytest.param(
        # Within the tolerance (2**-10 s ≈ 0.98 ms ≤ 1 ms) the frames still merge: float sums
        # of period durations at epoch magnitude drift by microseconds.
        [(100.0, 0.5), (100.5 + 2**-10, 0.5)],
        [0.0, 0.5],
        ((0.0, 100.0, 1.0),),
        1.0,
        id="within-tolerance-late",
    ),
    pytest.param(
        [(100.0, 0.5), (100.5 - 2**-10, 0.5)],
        [0.0, 0.5],
        ((0.0, 100.0, 1.0),),
        1.0,
        id="within-tolerance-early",
    ),
    pytest.param(
        # Beyond it (2**-9 s ≈ 1.95 ms) they do not.
        [(100.0, 0.5), (100.5 + 2**-9, 0.5)],
        [0.0, 0.5],
        ((0.0, 100.0, 0.5), (0.5, 100.5 + 2**-9, 0.5)),
        1.0,
        id="beyond-tolerance",
    ),
]


@pytest.mark.parametrize(("appends", "offsets", "segments", "sent_s"), APPEND_CASES)
def test_append(
    appends: list[tuple[float, float]],
    offsets: list[float],
    segments: tuple[tuple[float, float, float], ...],
    sent_s: float,
) -> None:
    tm = TimeMap()
    assert tm.sent_s == 0.0
    assert tm.segments == ()
    returned = [tm.append(wall_s, duration_s) for wall_s, duration_s in appends]
    assert returned == offsets
    assert tm.segments == segments
    assert tm.sent_s == sent_s


def test_tolerance_constant() -> None:
    assert CONTIGUOUS_TOLERANCE_S == 1e-3
    assert 2**-10 < CONTIGUOUS_TOLERANCE_S < 2**-9


def test_segment_end_offset() -> None:
    assert Segment(offset_s=0.5, wall_s=200.0, duration_s=0.25).end_offset_s == 0.75


# --- to_wall -----------------------------------------------------------------------------

# Three segments: [0, 0.5) at 100, [0.5, 1.0) at 200, [1.0, 1.25) at 300.
THREE = [(100.0, 0.5), (200.0, 0.5), (300.0, 0.25)]

TO_WALL_CASES = [
    # offset, is_end, expected wall
    pytest.param(0.0, False, 100.0, id="start"),
    pytest.param(0.0, True, 100.0, id="start-as-end"),
    pytest.param(0.25, False, 100.25, id="inside-first"),
    pytest.param(0.25, True, 100.25, id="inside-first-as-end"),
    pytest.param(0.5, False, 200.0, id="boundary-is-start-of-later"),
    pytest.param(0.5, True, 100.5, id="boundary-is-end-of-earlier"),
    pytest.param(0.625, False, 200.125, id="inside-second"),
    pytest.param(0.625, True, 200.125, id="inside-second-as-end"),
    pytest.param(1.0, False, 300.0, id="second-boundary-start"),
    pytest.param(1.0, True, 200.5, id="second-boundary-end"),
    pytest.param(1.25, False, 300.25, id="end-of-sent"),
    pytest.param(1.25, True, 300.25, id="end-of-sent-as-end"),
    pytest.param(2.0, False, 301.0, id="extrapolate-forward"),
    pytest.param(2.0, True, 301.0, id="extrapolate-forward-as-end"),
    pytest.param(-0.5, False, 99.5, id="extrapolate-backward"),
    pytest.param(-0.5, True, 99.5, id="extrapolate-backward-as-end"),
]


@pytest.mark.parametrize(("offset_s", "is_end", "expected"), TO_WALL_CASES)
def test_to_wall(offset_s: float, is_end: bool, expected: float) -> None:
    tm = build(*THREE)
    assert tm.to_wall(offset_s, is_end=is_end) == expected


def test_to_wall_default_is_start() -> None:
    tm = build(*THREE)
    assert tm.to_wall(0.5) == 200.0


def test_to_wall_across_merged_frames_has_no_boundary() -> None:
    tm = build((100.0, 0.25), (100.25, 0.25), (100.5, 0.25))
    assert tm.to_wall(0.25) == 100.25
    assert tm.to_wall(0.25, is_end=True) == 100.25
    assert tm.to_wall(0.5, is_end=True) == 100.5


@pytest.mark.parametrize("is_end", [False, True])
def test_to_wall_empty_map_raises(is_end: bool) -> None:
    with pytest.raises(ValueError, match="no audio has been sent"):
        TimeMap().to_wall(0.0, is_end=is_end)


# --- forget_before -----------------------------------------------------------------------

FORGET_CASES = [
    pytest.param(0.0, ((0.0, 100.0, 0.5), (0.5, 200.0, 0.5), (1.0, 300.0, 0.25)), id="nothing"),
    pytest.param(0.25, ((0.0, 100.0, 0.5), (0.5, 200.0, 0.5), (1.0, 300.0, 0.25)), id="mid-first"),
    pytest.param(0.5, ((0.5, 200.0, 0.5), (1.0, 300.0, 0.25)), id="end-of-first"),
    pytest.param(0.75, ((0.5, 200.0, 0.5), (1.0, 300.0, 0.25)), id="mid-second"),
    pytest.param(1.0, ((1.0, 300.0, 0.25),), id="end-of-second"),
    pytest.param(1.25, ((1.0, 300.0, 0.25),), id="end-of-last-keeps-last"),
    pytest.param(100.0, ((1.0, 300.0, 0.25),), id="far-beyond-keeps-last"),
]


@pytest.mark.parametrize(("offset_s", "kept"), FORGET_CASES)
def test_forget_before(offset_s: float, kept: tuple[tuple[float, float, float], ...]) -> None:
    tm = build(*THREE)
    tm.forget_before(offset_s)
    assert tm.segments == kept
    assert tm.sent_s == 1.25  # forgetting never changes the connection's offset


def test_forget_before_on_empty_map_is_harmless() -> None:
    tm = TimeMap()
    tm.forget_before(10.0)
    assert tm.segments == ()


def test_lookups_after_forgetting_use_the_kept_segments() -> None:
    tm = build(*THREE)
    tm.forget_before(0.5)
    assert tm.to_wall(0.75) == 200.25
    assert tm.to_wall(1.0) == 300.0
    assert tm.to_wall(1.0, is_end=True) == 200.5
    # A forgotten offset extrapolates backwards from the oldest kept segment.
    assert tm.to_wall(0.25) == 199.75


def test_append_after_forgetting_everything_but_the_last() -> None:
    tm = build(*THREE)
    tm.forget_before(5.0)
    assert tm.append(300.25, 0.25) == 1.25  # contiguous with the kept segment: merged
    assert tm.append(400.0, 0.5) == 1.5
    assert tm.segments == ((1.0, 300.0, 0.5), (1.5, 400.0, 0.5))
    assert tm.sent_s == 2.0
    assert tm.to_wall(1.5) == 400.0
    assert tm.to_wall(1.5, is_end=True) == 300.5


def epoch_frames(n_frames: int) -> list[tuple[float, float]]:
    """(start_s, duration_s) of 100 ms frames of 20 ms periods captured contiguously from
    2026-11-23T21:40:01Z, with start times ``anchor + n·period`` as
    ``dgd.core.pipeline.CaptureClock`` computes them."""
    anchor_s = 1_795_470_001.0
    return [(anchor_s + index * 5 * 0.02, 0.1) for index in range(n_frames)]


def test_an_hour_of_contiguous_frames_stays_one_segment() -> None:
    tm = build(*epoch_frames(36_000))
    assert len(tm.segments) == 1
    assert tm.sent_s == pytest.approx(3600.0, abs=1e-6)


def test_contiguous_frames_map_within_a_microsecond() -> None:
    frames = epoch_frames(6000)  # ten minutes
    tm = build(*frames)
    for index in (0, 1, 2999, 3000, 5999):
        start_s, _ = frames[index]
        assert tm.to_wall(index * 0.1) == pytest.approx(start_s, abs=1e-6)
        assert tm.to_wall(index * 0.1, is_end=True) == pytest.approx(start_s, abs=1e-6)


def test_a_boundary_reached_by_summed_durations_is_still_the_boundary() -> None:
    """25 frames of 0.1 s put the next segment at offset 2.500000000000001; Deepgram says 2.5.
    Seen in the VM: the first final after start-up came out at the end of the start-up audio,
    2.9 s before the words were spoken."""
    timemap = TimeMap()
    for k in range(25):
        timemap.append(1000.0 + k * 0.1, 0.1)
    timemap.append(2000.0, 1.0)  # after a gap of gated silence
    assert timemap.segments[1][0] != 2.5  # the float sum is not exact
    assert timemap.to_wall(2.5) == 2000.0
    assert timemap.to_wall(2.5, is_end=True) == pytest.approx(1002.5)
    assert timemap.to_wall(3.0, is_end=True) == 2000.5
