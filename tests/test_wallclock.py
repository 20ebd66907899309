"""Wall-clock labels for the capture timeline (dgd.core.wallclock): steps and labels, exact."""

from __future__ import annotations

import pytest

from dgd.core.events import TimedWord, Transcript
from dgd.core.wallclock import STEP_S, WallClock


@pytest.mark.parametrize(
    ("before_s", "after_s", "step_s"),
    [
        pytest.param(1000.0, 1000.0, None, id="unchanged"),
        pytest.param(1000.0, 1000.0625, None, id="slewed"),
        pytest.param(1000.0, 1000.125, 0.125, id="small-step-forward"),
        pytest.param(1000.0, 4600.0, 3600.0, id="hour-forward"),
        pytest.param(4600.0, 1000.0, -3600.0, id="hour-back"),
        pytest.param(1000.0, 1000.0 - 86400.0 * 365, -86400.0 * 365, id="year-back"),
    ],
)
def test_a_step_is_reported_with_its_size(
    before_s: float, after_s: float, step_s: float | None
) -> None:
    clock = WallClock(before_s)
    assert clock.observe(after_s) == step_s
    assert clock.observe(after_s) is None  # once
    assert clock.offset_s == after_s


def test_step_threshold() -> None:
    assert STEP_S == 0.1


def test_labels_move_every_time_by_the_current_offset() -> None:
    transcript = Transcript(
        text="hello there",
        is_final=True,
        speech_final=True,
        from_finalize=False,
        confidence=0.9,
        start_s=10.5,
        end_s=11.25,
        request_id="r",
        words=(TimedWord("hello", 10.5, 10.75, 0.9), TimedWord("there", 10.75, 11.25, 0.9)),
    )
    clock = WallClock(1000.0)
    labelled = clock.label(transcript)
    assert (labelled.start_s, labelled.end_s) == (1010.5, 1011.25)
    assert labelled.words == (
        TimedWord("hello", 1010.5, 1010.75, 0.9),
        TimedWord("there", 1010.75, 1011.25, 0.9),
    )
    assert (labelled.text, labelled.request_id) == ("hello there", "r")
    clock.observe(-2600.0)
    assert (clock.label(transcript).start_s, clock.label(transcript).end_s) == (-2589.5, -2588.75)
