"""The outbox (dgd.core.outbox): pending and in-flight audio, Finalize markers, the bound, replay.

Audio is 8 kHz mono (16 000 bytes a second); every duration is a multiple of 1/8 s, so the
held/pending/in-flight sums are exact and compared with ``==``.
"""

from __future__ import annotations

import struct

import pytest

from dgd.core.events import AudioFrame, FinalizeMarker, FormatChange, OutboxItem
from dgd.core.outbox import Dropped, Outbox, OutboxStatistics
from dgd.core.pcm import PcmFormat

FMT = PcmFormat(rate_hz=8000, channels=1, period_ms=125)
STEREO = PcmFormat(rate_hz=8000, channels=2, period_ms=125)


def frame(start_s: float, duration_s: float, fmt: PcmFormat = FMT) -> AudioFrame:
    """A frame whose samples count up from a value derived from ``start_s``, so every
    frame's bytes (and every offset within them) are distinct."""
    n = round(duration_s * fmt.rate_hz) * fmt.channels
    base = int(start_s * 8) % 1000
    data = struct.pack(f"<{n}h", *(((base * 37 + i) % 65536) - 32768 for i in range(n)))
    return AudioFrame(data, start_s, duration_s)


def sizes(outbox: Outbox) -> tuple[float, float, float]:
    return outbox.held_s, outbox.pending_s, outbox.in_flight_s


def drain(outbox: Outbox) -> list[OutboxItem]:
    """Take every pending item (offsets are irrelevant to the caller here)."""
    items = []
    while outbox.has_pending:
        items.append(outbox.take(0.0))
    return items


A = frame(10.0, 0.5)
B = frame(10.5, 0.5)
C = frame(11.0, 0.5)
D = frame(11.5, 0.5)
E = frame(12.0, 0.5)
F1 = FinalizeMarker(10.5)
F2 = FinalizeMarker(11.5)


# --- put / peek / take / confirm ---------------------------------------------------------


def test_empty_outbox() -> None:
    outbox = Outbox(FMT, 10.0)
    assert not outbox.has_pending
    assert outbox.peek() is None
    assert sizes(outbox) == (0.0, 0.0, 0.0)
    assert outbox.statistics() == OutboxStatistics(0.0, 0.0, 0.0)
    with pytest.raises(IndexError):
        outbox.take(0.0)


def test_put_take_confirm_sequence() -> None:
    outbox = Outbox(FMT, 10.0)
    assert outbox.put(A) is None
    assert (outbox.has_pending, outbox.peek()) == (True, A)
    assert sizes(outbox) == (0.5, 0.5, 0.0)

    assert outbox.take(0.5) is A
    assert (outbox.has_pending, outbox.peek()) == (False, None)
    assert sizes(outbox) == (0.5, 0.0, 0.5)

    assert outbox.put(B) is None
    assert outbox.put(F1) is None
    assert outbox.put(C) is None
    assert sizes(outbox) == (1.5, 1.0, 0.5)
    assert outbox.take(1.0) is B
    assert outbox.take(1.0) is F1
    assert outbox.peek() is C
    assert sizes(outbox) == (1.5, 0.5, 1.0)

    outbox.confirm(0.25)  # inside A: nothing released
    assert sizes(outbox) == (1.5, 0.5, 1.0)
    outbox.confirm(0.5)  # A's end: A released
    assert sizes(outbox) == (1.0, 0.5, 0.5)
    outbox.confirm(0.25)  # going backwards changes nothing
    assert sizes(outbox) == (1.0, 0.5, 0.5)
    outbox.confirm(1.0)  # B and the marker after it
    assert sizes(outbox) == (0.5, 0.5, 0.0)
    assert outbox.take(1.5) is C
    outbox.confirm(1.5 - 5e-7)  # within the 1 µs tolerance of C's end
    assert sizes(outbox) == (0.0, 0.0, 0.0)
    assert outbox.statistics() == OutboxStatistics(0.0, 0.0, 0.0)


def test_confirm_short_of_tolerance_keeps_the_frame() -> None:
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    outbox.take(0.5)
    outbox.confirm(0.5 - 2e-6)
    assert sizes(outbox) == (0.5, 0.0, 0.5)


def test_confirm_releases_in_order_only() -> None:
    # A later frame is never released ahead of an unconfirmed earlier one.
    outbox = Outbox(FMT, 10.0)
    for item, end in ((A, 0.5), (B, 1.0), (C, 1.5)):
        outbox.put(item)
        outbox.take(end)
    outbox.confirm(1.25)
    assert sizes(outbox) == (0.5, 0.0, 0.5)


# --- Finalize markers --------------------------------------------------------------------


def queued(outbox: Outbox) -> list[OutboxItem]:
    return drain(outbox)


MARKER_CASES = [
    pytest.param([F1], [], id="marker-alone-dropped"),
    pytest.param([A, F1], [A, F1], id="after-audio"),
    pytest.param([A, F1, F2], [A, F1], id="second-marker-dropped"),
    pytest.param([A, F1, F1], [A, F1], id="repeat-dropped"),
    pytest.param([A, F1, B, F2], [A, F1, B, F2], id="one-per-run"),
    pytest.param([F1, A, F2, F1, B], [A, F2, B], id="mixed"),
]


@pytest.mark.parametrize(("puts", "expected"), MARKER_CASES)
def test_finalize_marker_deduplication(puts: list[OutboxItem], expected: list[OutboxItem]) -> None:
    outbox = Outbox(FMT, 10.0)
    for item in puts:
        assert outbox.put(item) is None
    assert queued(outbox) == expected


def test_marker_after_audio_in_flight_is_kept() -> None:
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    outbox.take(0.5)
    assert outbox.put(F1) is None
    assert outbox.peek() is F1


def test_marker_after_marker_in_flight_is_dropped() -> None:
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    outbox.take(0.5)
    outbox.put(F1)
    outbox.take(0.5)
    assert outbox.put(F2) is None
    assert outbox.peek() is None


def test_marker_after_everything_confirmed_is_dropped() -> None:
    # The finals already covered all audio: a Finalize would have nothing to flush.
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    outbox.take(0.5)
    outbox.confirm(0.5)
    outbox.put(F1)
    assert outbox.peek() is None


# --- the bound ---------------------------------------------------------------------------


def test_bound_releases_in_flight_first_then_drops_pending() -> None:
    outbox = Outbox(FMT, 1.0)
    outbox.put(A)
    outbox.take(0.5)
    outbox.put(B)
    outbox.take(1.0)
    assert sizes(outbox) == (1.0, 0.0, 1.0)  # exactly at the bound: nothing happens

    # 1.5 s held: the oldest in-flight frame goes, and is not counted as lost.
    assert outbox.put(C) is None
    assert sizes(outbox) == (1.0, 0.5, 0.5)
    assert outbox.statistics().released_unconfirmed_s == 0.5
    assert outbox.statistics().dropped_s == 0.0

    assert outbox.put(D) is None
    assert sizes(outbox) == (1.0, 1.0, 0.0)
    assert outbox.statistics().released_unconfirmed_s == 1.0

    # Nothing in flight any more: pending audio is dropped, oldest first, and reported.
    assert outbox.put(E) == Dropped(0.5, C.start_s)
    assert sizes(outbox) == (1.0, 1.0, 0.0)
    assert outbox.statistics().dropped_s == 0.5
    assert drain(outbox) == [D, E]


def test_bound_drops_several_frames_at_once() -> None:
    outbox = Outbox(FMT, 1.0)
    small = [frame(20.0 + k * 0.25, 0.25) for k in range(4)]
    for item in small:
        assert outbox.put(item) is None
    big = frame(21.0, 0.75)
    assert outbox.put(big) == Dropped(0.75, small[0].start_s)
    assert drain(outbox) == [small[3], big]
    assert outbox.statistics().dropped_s == 0.75


def test_bound_drops_a_frame_larger_than_the_bound_itself() -> None:
    outbox = Outbox(FMT, 1.0)
    outbox.put(A)
    huge = frame(30.0, 1.5)
    assert outbox.put(huge) == Dropped(2.0, A.start_s)
    assert sizes(outbox) == (0.0, 0.0, 0.0)
    assert not outbox.has_pending


def test_bound_drops_markers_with_the_audio_before_them() -> None:
    outbox = Outbox(FMT, 1.0)
    for item in (A, F1, B):
        outbox.put(item)
    # Over by 0.5 s: A goes; the marker behind it is now at the head and stays (held is 1.0).
    assert outbox.put(C) == Dropped(0.5, A.start_s)
    assert drain(outbox) == [F1, B, C]


def test_bound_releases_in_flight_markers_without_counting_them() -> None:
    outbox = Outbox(FMT, 1.0)
    for item, end in ((A, 0.5), (F1, 0.5), (B, 1.0)):
        outbox.put(item)
        outbox.take(end)
    outbox.put(C)  # releases A
    assert outbox.statistics().released_unconfirmed_s == 0.5
    outbox.put(D)  # releases F1 (no audio), then B
    assert outbox.statistics().released_unconfirmed_s == 1.0
    assert sizes(outbox) == (1.0, 1.0, 0.0)


def test_bound_can_be_changed_on_reload() -> None:
    outbox = Outbox(FMT, 10.0)
    for item in (A, B, C):
        outbox.put(item)
    outbox.replay_buffer_s = 1.0
    # Enforced on the next put.
    assert outbox.put(D) == Dropped(1.0, A.start_s)
    assert drain(outbox) == [C, D]


# --- rewind and replay -------------------------------------------------------------------


def send_all(outbox: Outbox) -> float:
    """Take every pending item with its connection offset; return the offset reached."""
    offset_s = 0.0
    while outbox.has_pending:
        item = outbox.peek()
        if isinstance(item, AudioFrame):
            offset_s += item.duration_s
        outbox.take(offset_s)
    return offset_s


def test_rewind_without_confirmation_replays_everything_in_order() -> None:
    outbox = Outbox(FMT, 10.0)
    for item in (A, F1, B):
        outbox.put(item)
    assert send_all(outbox) == 1.0
    outbox.put(C)  # captured while the connection was dying: behind the replay
    assert outbox.rewind() == 1.0
    assert outbox.statistics().replayed_s == 1.0
    assert sizes(outbox) == (1.5, 1.5, 0.0)
    assert drain(outbox) == [A, F1, B, C]


@pytest.mark.parametrize(
    ("confirmed_s", "skip_frames", "expected_replay_s"),
    [
        (0.0, 0, 1.0),
        (0.125, 1000, 0.875),
        (0.3, 2400, 0.7),
        (0.25 + 1 / 8000, 2001, 0.75 - 1 / 8000),
        # Not a whole sample: rounded to the nearest one.
        (0.25 + 0.4 / 8000, 2000, 0.75),
        (0.25 + 0.6 / 8000, 2001, 0.75 - 1 / 8000),
    ],
)
def test_rewind_trims_the_first_frame_sample_exactly(
    confirmed_s: float, skip_frames: int, expected_replay_s: float
) -> None:
    # Stereo, so a sample-exact cut is 4 bytes per frame.
    a = frame(10.0, 0.5, STEREO)
    b = frame(10.5, 0.5, STEREO)
    outbox = Outbox(STEREO, 10.0)
    outbox.put(a)
    outbox.put(b)
    send_all(outbox)
    outbox.confirm(confirmed_s)
    replayed = outbox.rewind()
    assert replayed == pytest.approx(expected_replay_s, abs=1e-12)
    items = drain(outbox)
    skipped_s = skip_frames / 8000
    if skip_frames:
        assert items == [
            AudioFrame(a.data[skip_frames * 4 :], 10.0 + skipped_s, 0.5 - skipped_s),
            b,
        ]
    else:
        assert items == [a, b]
    first = items[0]
    assert isinstance(first, AudioFrame)
    assert len(first.data) % 4 == 0
    assert first.duration_s == STEREO.seconds(len(first.data))


def test_rewind_after_partial_confirm_trims_the_frame_in_the_middle() -> None:
    outbox = Outbox(FMT, 10.0)
    for item in (A, B, C):
        outbox.put(item)
    send_all(outbox)
    outbox.confirm(0.75)  # A is released; B is half confirmed
    assert outbox.rewind() == 0.75
    assert drain(outbox) == [AudioFrame(B.data[4000:], 10.75, 0.25), C]


def test_rewind_drops_a_frame_confirmed_to_its_end_within_half_a_sample() -> None:
    # A's end is 0.5; a confirm 1.5 µs short of it (outside confirm's 1 µs tolerance) keeps A in
    # flight, but the trim rounds to whole samples and leaves nothing of it to replay.
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    outbox.put(B)
    send_all(outbox)
    outbox.confirm(0.5 - 1.5e-6)
    assert outbox.in_flight_s == 1.0
    assert outbox.rewind() == 0.5
    assert drain(outbox) == [B]


def test_rewind_replays_markers_in_order() -> None:
    outbox = Outbox(FMT, 10.0)
    for item in (A, F1, B, C, F2):
        outbox.put(item)
    send_all(outbox)
    outbox.confirm(0.25)
    assert outbox.rewind() == 1.25
    items = drain(outbox)
    assert items == [AudioFrame(A.data[4000:], 10.25, 0.25), F1, B, C, F2]


def test_replayed_s_accumulates_and_confirmed_offset_restarts() -> None:
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    outbox.put(B)
    send_all(outbox)
    outbox.confirm(0.25)
    assert outbox.rewind() == 0.75
    # The next connection starts at offset 0 and confirms nothing before it drops.
    send_all(outbox)
    assert outbox.rewind() == 0.75  # the old confirmed offset does not trim again
    assert outbox.statistics().replayed_s == 1.5
    assert drain(outbox) == [AudioFrame(A.data[4000:], 10.25, 0.25), B]


def test_rewind_with_nothing_in_flight() -> None:
    outbox = Outbox(FMT, 10.0)
    outbox.put(A)
    assert outbox.rewind() == 0.0
    assert outbox.statistics().replayed_s == 0.0
    assert drain(outbox) == [A]


def test_held_counts_stay_consistent_through_a_replay_cycle() -> None:
    outbox = Outbox(FMT, 1.5)
    for item in (A, B, C):
        outbox.put(item)
    send_all(outbox)
    outbox.confirm(0.5)
    outbox.put(D)
    assert sizes(outbox) == (1.5, 0.5, 1.0)
    outbox.rewind()
    assert sizes(outbox) == (1.5, 1.5, 0.0)
    # Replay and live audio share the bound: 2.0 s held, the oldest replayed frame goes.
    assert outbox.put(E) == Dropped(0.5, B.start_s)
    assert sizes(outbox) == (1.5, 1.5, 0.0)
    assert drain(outbox) == [C, D, E]


# --- format changes ----------------------------------------------------------------------

FMT16 = PcmFormat(16000, 1, 20)


def test_format_change_is_queued_in_order_and_taken_at_the_head() -> None:
    outbox = Outbox(FMT, 120.0)
    marker = FormatChange(FMT16)
    outbox.put(AudioFrame(b"\x01" * 3200, 0.0, 0.1))
    outbox.put(marker)
    assert outbox.format == FMT
    with pytest.raises(ValueError, match="does not begin with a format change"):
        outbox.take_format_change()
    outbox.take(0.1)
    assert outbox.peek() == marker
    assert outbox.take_format_change() == FMT16
    assert outbox.format == FMT16
    assert outbox.peek() is None


def test_the_replay_bound_never_drops_a_format_change() -> None:
    """Dropping it would send the audio after it under the old handshake."""
    outbox = Outbox(FMT, 0.25)
    outbox.put(AudioFrame(b"\x01" * 3200, 0.0, 0.1))
    outbox.put(FormatChange(FMT16))
    for k in range(3):
        outbox.put(AudioFrame(b"\x02" * 1600, 0.1 + k * 0.1, 0.1))
    assert isinstance(outbox.peek(), FormatChange)
    assert outbox.held_s == pytest.approx(0.2)
    assert outbox.statistics().dropped_s == pytest.approx(0.2)
