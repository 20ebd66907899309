"""Exact decisions of the silence gate (dgd.core.gate) for level sequences: pure, no I/O."""

from __future__ import annotations

import pytest

from dgd.core.gate import (
    AUTO_CLOSE_MARGIN_DB,
    AUTO_OPEN_MARGIN_DB,
    FLOOR_MIN_DBFS,
    Gate,
    GateMode,
    GateStatistics,
    GateStep,
    NoiseFloor,
)

Q = -60.0  # quiet: below every fixed threshold used here
L = -30.0  # loud: above them
T = -40.0  # the fixed threshold (open at >= -40, stay open at >= -43)


def make(
    mode: GateMode = GateMode.ENERGY,
    threshold: float | None = T,
    preroll_ms: int = 60,
    hangover_ms: int = 60,
    period_ms: int = 20,
) -> Gate[int]:
    return Gate(
        mode=mode,
        threshold_dbfs=threshold,
        preroll_ms=preroll_ms,
        hangover_ms=hangover_ms,
        period_ms=period_ms,
    )


def run(gate: Gate[int], levels: list[float], start: int = 0) -> list[GateStep[int]]:
    """Feed item i with levels[i - start]; items are their indices, so forwards read easily."""
    return [gate.feed(start + i, level) for i, level in enumerate(levels)]


def forwards(steps: list[GateStep[int]]) -> list[tuple[int, ...]]:
    return [s.forward for s in steps]


def flagged(steps: list[GateStep[int]], attr: str) -> list[int]:
    return [i for i, s in enumerate(steps) if getattr(s, attr)]


# --- energy mode with a fixed threshold: pre-roll, attack, hangover, hysteresis -------------

ENERGY_CASES = [
    pytest.param(
        # 3 periods of pre-roll; two loud periods open on the second: ring (2, 3, 4) + 5.
        [Q, Q, Q, Q, L, L, Q, Q, Q, Q, Q],
        60,
        60,
        [(), (), (), (), (), (2, 3, 4, 5), (6,), (7,), (8,), (), ()],
        [5],
        [9],
        id="preroll-then-hangover-3-periods",
    ),
    pytest.param(
        # Fewer items than the ring holds: the pre-roll is what there is.
        [Q, L, L, Q],
        100,
        0,
        [(), (), (0, 1, 2), ()],
        [2],
        [3],
        id="short-preroll-history",
    ),
    pytest.param(
        # preroll 0: the ring still keeps the attack's first period (1), so it is sent.
        [Q, L, L, Q, Q],
        0,
        20,
        [(), (), (1, 2), (3,), ()],
        [2],
        [4],
        id="preroll-0-keeps-attack",
    ),
    pytest.param(
        # Rounding up: 41 ms of pre-roll is 3 periods, 21 ms of hangover is 2.
        [Q, Q, Q, Q, L, L, Q, Q, Q, Q],
        41,
        21,
        [(), (), (), (), (), (2, 3, 4, 5), (6,), (7,), (), ()],
        [5],
        [8],
        id="rounding-up",
    ),
    pytest.param(
        # A click (one loud period) does not open; nothing is sent.
        [Q, L, Q, Q, L, Q, Q],
        60,
        60,
        [(), (), (), (), (), (), ()],
        [],
        [],
        id="single-click-ignored",
    ),
    pytest.param(
        # Hysteresis: -42 dBFS does not open (threshold -40) but holds an open gate
        # (close threshold -43); hangover 20 ms is one quiet period, the second closes.
        [L, L, -42.0, -42.0, -42.0, Q, Q, Q, -42.0, -42.0],
        0,
        20,
        [(), (0, 1), (2,), (3,), (4,), (5,), (), (), (), ()],
        [1],
        [6],
        id="hysteresis",
    ),
    pytest.param(
        # Two loud periods in the hangover restart it; a single one (7) does not.
        [L, L, Q, L, L, Q, Q, L, Q, Q, Q],
        0,
        40,
        [(), (0, 1), (2,), (3,), (4,), (5,), (6,), (), (), (), ()],
        [1],
        [7],
        id="hangover-restarts-on-speech-only",
    ),
    pytest.param(
        # Close then re-open: the closing period (2) is the oldest of the next pre-roll.
        [L, L, Q, Q, Q, L, L],
        100,
        0,
        [(), (0, 1), (), (), (), (), (2, 3, 4, 5, 6)],
        [1, 6],
        [2],
        id="close-then-reopen",
    ),
]


@pytest.mark.parametrize(
    ("levels", "preroll_ms", "hangover_ms", "expected", "opened", "closed"), ENERGY_CASES
)
def test_energy_decisions(
    levels: list[float],
    preroll_ms: int,
    hangover_ms: int,
    expected: list[tuple[int, ...]],
    opened: list[int],
    closed: list[int],
) -> None:
    gate = make(preroll_ms=preroll_ms, hangover_ms=hangover_ms)
    steps = run(gate, levels)
    assert forwards(steps) == expected
    assert flagged(steps, "opened") == opened
    assert flagged(steps, "closed") == closed
    assert flagged(steps, "would_drop") == []


@pytest.mark.parametrize(
    ("hangover_ms", "forwarded_after_speech"),
    [(0, 0), (1, 1), (20, 1), (21, 2), (1500, 75)],
)
def test_hangover_length_in_periods(hangover_ms: int, forwarded_after_speech: int) -> None:
    gate = make(preroll_ms=0, hangover_ms=hangover_ms)
    steps = run(gate, [L, L] + [Q] * 100)
    tail = steps[2:]
    assert sum(len(s.forward) for s in tail) == forwarded_after_speech
    assert flagged(tail, "closed") == [forwarded_after_speech]
    assert not tail[forwarded_after_speech].forward


@pytest.mark.parametrize(
    ("period_ms", "n_loud", "opens"),
    [(10, 3, False), (10, 4, True), (20, 1, False), (20, 2, True), (50, 1, True)],
)
def test_attack_is_40_ms_rounded_up(period_ms: int, n_loud: int, opens: bool) -> None:
    gate = make(period_ms=period_ms, preroll_ms=0, hangover_ms=0)
    steps = run(gate, [Q] + [L] * n_loud + [Q])
    assert bool(flagged(steps, "opened")) is opens


def test_items_are_opaque() -> None:
    gate: Gate[str] = Gate(
        mode=GateMode.ENERGY, threshold_dbfs=T, preroll_ms=20, hangover_ms=0, period_ms=20
    )
    assert gate.feed("a", Q).forward == ()
    assert gate.feed("b", L).forward == ()
    assert gate.feed("c", L).forward == ("b", "c")


# --- off and shadow -----------------------------------------------------------------------


def test_off_forwards_everything_and_never_opens() -> None:
    gate = make(mode=GateMode.OFF)
    levels = [Q, L, L, Q, Q, Q, Q, Q, -120.0]
    steps = run(gate, levels)
    assert forwards(steps) == [(i,) for i in range(len(levels))]
    assert flagged(steps, "opened") == flagged(steps, "closed") == []
    assert flagged(steps, "would_drop") == []
    assert gate.is_open
    assert gate.statistics() == GateStatistics(
        periods_in=9, periods_forwarded=9, periods_gated=0, opens=0, closes=0, would_drop=0
    )


def test_shadow_forwards_everything_and_reports_energy_decisions() -> None:
    levels = [Q, Q, Q, Q, L, L, Q, Q, Q, Q, Q]
    energy = run(make(), levels)
    gate = make(mode=GateMode.SHADOW)
    shadow = run(gate, levels)
    assert forwards(shadow) == [(i,) for i in range(len(levels))]
    assert flagged(shadow, "opened") == flagged(energy, "opened") == [5]
    assert flagged(shadow, "closed") == flagged(energy, "closed") == [9]
    assert flagged(shadow, "would_drop") == [0, 1, 2, 3, 4, 9, 10]
    assert gate.is_open
    # Items 2, 3 and 4 were held back but would have been sent as pre-roll: not dropped.
    assert gate.statistics() == GateStatistics(
        periods_in=11, periods_forwarded=11, periods_gated=0, opens=1, closes=1, would_drop=4
    )


def test_statistics_energy() -> None:
    gate = make()
    run(gate, [Q, Q, Q, Q, L, L, Q, Q, Q, Q, Q, L, L, Q])
    # Sent: 2..8 (7) and the re-opening 9, 10, 11, 12 (ring of 3 + current) and 13.
    assert gate.statistics() == GateStatistics(
        periods_in=14, periods_forwarded=12, periods_gated=2, opens=2, closes=1, would_drop=0
    )
    assert gate.is_open


# --- reconfigure ----------------------------------------------------------------------------


def test_reconfigure_keeps_open_state_and_applies_new_hangover() -> None:
    gate = make(preroll_ms=0, hangover_ms=200)
    run(gate, [L, L, Q])
    gate.reconfigure(mode=GateMode.ENERGY, threshold_dbfs=T, preroll_ms=0, hangover_ms=40)
    assert gate.is_open
    steps = run(gate, [Q, Q, Q], start=3)
    # One quiet period already counted; 40 ms = 2 periods of hangover: 3 sent, 4 closes.
    assert forwards(steps) == [(3,), (), ()]
    assert flagged(steps, "closed") == [1]


def test_reconfigure_keeps_the_newest_preroll() -> None:
    gate = make(preroll_ms=100, hangover_ms=0)
    run(gate, [Q] * 6)  # the ring holds items 1..5
    gate.reconfigure(mode=GateMode.ENERGY, threshold_dbfs=T, preroll_ms=40, hangover_ms=0)
    steps = run(gate, [L, L], start=6)
    assert forwards(steps) == [(), (5, 6, 7)]


def test_reconfigure_off_to_energy_starts_open() -> None:
    gate = make(mode=GateMode.OFF, preroll_ms=0, hangover_ms=20)
    run(gate, [Q, Q])
    gate.reconfigure(mode=GateMode.ENERGY, threshold_dbfs=T, preroll_ms=0, hangover_ms=20)
    assert gate.is_open
    steps = run(gate, [Q, Q, Q], start=2)
    assert forwards(steps) == [(2,), (), ()]
    assert flagged(steps, "closed") == [1]


def test_reconfigure_shadow_to_energy_does_not_resend_preroll() -> None:
    gate = make(mode=GateMode.SHADOW, preroll_ms=60, hangover_ms=0)
    run(gate, [Q, Q, Q])  # forwarded already, and in the shadow ring
    gate.reconfigure(mode=GateMode.ENERGY, threshold_dbfs=T, preroll_ms=60, hangover_ms=0)
    steps = run(gate, [Q, L, L], start=3)
    assert forwards(steps) == [(), (), (3, 4, 5)]


def test_reconfigure_to_fixed_threshold() -> None:
    gate = make(threshold=None)
    run(gate, [-70.0] * 10)
    gate.reconfigure(mode=GateMode.ENERGY, threshold_dbfs=-20.0, preroll_ms=60, hangover_ms=60)
    assert gate.threshold_dbfs == -20.0
    assert gate.close_threshold_dbfs == -20.0 - (AUTO_OPEN_MARGIN_DB - AUTO_CLOSE_MARGIN_DB)
    assert gate.noise_floor_dbfs == -70.0  # kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "vad"}, "gate.mode: must be one of off, energy, shadow, got 'vad'"),
        ({"preroll_ms": -1}, "gate.preroll_ms: must be >= 0, got -1"),
        ({"hangover_ms": -20}, "gate.hangover_ms: must be >= 0, got -20"),
    ],
)
def test_reconfigure_rejects_bad_values_and_changes_nothing(
    kwargs: dict[str, object], message: str
) -> None:
    gate = make(preroll_ms=0, hangover_ms=0)
    args: dict[str, object] = {
        "mode": GateMode.ENERGY,
        "threshold_dbfs": T,
        "preroll_ms": 0,
        "hangover_ms": 0,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        gate.reconfigure(**args)  # type: ignore[arg-type]
    assert forwards(run(gate, [L, L, Q])) == [(), (0, 1), ()]


def test_bad_period_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"audio.period_ms: must be > 0, got 0"):
        make(period_ms=0)


def test_modes_are_the_config_spellings() -> None:
    assert [str(mode) for mode in GateMode] == ["off", "energy", "shadow"]


def test_a_mode_given_as_its_string_is_taken_as_the_member() -> None:
    gate = make()
    mode: object = "shadow"
    gate.reconfigure(mode=mode, threshold_dbfs=T, preroll_ms=0, hangover_ms=0)  # type: ignore[arg-type]
    assert gate.statistics().would_drop == 0
    assert forwards(run(gate, [Q, Q])) == [(0,), (1,)]  # shadow forwards even silence


# --- auto threshold: noise floor, start-up, hysteresis --------------------------------------


def test_auto_startup_is_open_then_closes_on_a_constant_floor() -> None:
    gate = make(threshold=None, preroll_ms=0, hangover_ms=100)
    steps = run(gate, [-50.0] * 60)
    # Start-up: open at once, 1 s = 50 periods count as speech, then 5 periods of hangover.
    assert flagged(steps, "opened") == [0]
    assert flagged(steps, "closed") == [55]
    assert gate.noise_floor_dbfs == -50.0
    assert gate.threshold_dbfs == -50.0 + AUTO_OPEN_MARGIN_DB
    assert gate.close_threshold_dbfs == -50.0 + AUTO_CLOSE_MARGIN_DB


@pytest.mark.parametrize(
    ("level", "floor"),
    [(-50.0, -50.0), (-72.5, -72.5), (-120.0, FLOOR_MIN_DBFS), (-95.0, FLOOR_MIN_DBFS)],
)
def test_auto_threshold_after_constant_level(level: float, floor: float) -> None:
    gate = make(threshold=None)
    run(gate, [level] * 300)
    assert gate.noise_floor_dbfs == floor
    assert gate.threshold_dbfs == floor + AUTO_OPEN_MARGIN_DB
    assert not gate.is_open


def test_auto_opens_on_speech_above_the_floor() -> None:
    gate = make(threshold=None, preroll_ms=40, hangover_ms=0)
    run(gate, [-50.0] * 100)
    edge = -50.0 + AUTO_OPEN_MARGIN_DB
    steps = run(gate, [edge - 0.1, edge - 0.1, edge, edge], start=100)
    assert forwards(steps) == [(), (), (), (101, 102, 103)]


# Floor after a step from -60 to -40 dBFS at period 150 (20 ms periods): a 200 ms mean
# (10 periods) and the minimum over 5 sub-windows of 30 periods (0.6 s). The -60 minima age
# out of the window at period 270 (the sub-window holding the -58 mean of the step's first
# period remains) and that one at 300.
@pytest.mark.parametrize(
    ("after_period", "floor"),
    [(149, -60.0), (150, -60.0), (269, -60.0), (270, -58.0), (299, -58.0), (300, -40.0)],
)
def test_noise_floor_follows_a_rise_within_the_window(after_period: int, floor: float) -> None:
    nf = NoiseFloor(period_ms=20)
    levels = [-60.0] * 150 + [-40.0] * 200
    for level in levels[: after_period + 1]:
        nf.update(level)
    assert nf.dbfs == floor


def test_noise_floor_falls_at_once() -> None:
    nf = NoiseFloor(period_ms=20)
    for _ in range(100):
        nf.update(-40.0)
    # 10 quiet periods fill the 200 ms mean: the floor is the new level straight away.
    values = [nf.update(-60.0) for _ in range(10)]
    assert values[0] == -42.0
    assert values[-1] == -60.0


def test_noise_floor_does_not_learn_a_short_utterance() -> None:
    gate = make(threshold=None, preroll_ms=0, hangover_ms=0)
    run(gate, [-60.0] * 150)
    steps = run(gate, [-30.0] * 100 + [-60.0], start=150)  # 2 s of loud speech
    assert gate.noise_floor_dbfs == -60.0
    assert flagged(steps, "opened") == [1]
    assert flagged(steps, "closed") == [100]


def test_auto_noise_rise_opens_then_closes_once_learnt() -> None:
    # A machine switches on (+25 dB): the gate opens, and closes once the floor catches up.
    gate = make(threshold=None, preroll_ms=0, hangover_ms=100)
    run(gate, [-65.0] * 150)
    steps = run(gate, [-40.0] * 300, start=150)
    assert flagged(steps, "opened") == [1]
    # The floor reaches -40 at period 300 (see the table above) = step index 150;
    # the close threshold is then above -40, and the 5-period hangover runs out.
    assert flagged(steps, "closed") == [156]
    assert gate.noise_floor_dbfs == -40.0
