"""The silence gate: decides, one ALSA period at a time, which audio is sent to Deepgram.

A closed gate keeps the last ``preroll_ms`` of periods in a ring; when speech is detected it
opens and forwards the ring plus the current period, so word onsets are not clipped; it stays
open until ``hangover_ms`` of non-speech has passed, then closes (the caller sends
``Finalize``). Speech is a level above a threshold: a fixed one, or ("auto") one that follows
an adaptive noise floor with hysteresis. The figures behind every default are in
``docs/GATE.md``. This module does no I/O.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")


class GateMode(enum.StrEnum):
    """``gate.mode``: what the gate does with the audio."""

    OFF = "off"  # forward everything; never open or close
    ENERGY = "energy"  # gate on the level
    SHADOW = "shadow"  # forward everything, but report what ENERGY would have done


#: Auto threshold: the gate opens at this much above the noise floor. Two consecutive 20 ms
#: periods of pink, brown or fan noise reach 4.3–5.5 dB above the floor estimate (99.9th
#: percentile on the corpus); speech at 10 dB SNR must still open it. The corpus passes every
#: target from 8 to 10 dB; 9 is the middle (docs/GATE.md §4).
AUTO_OPEN_MARGIN_DB: Final = 9.0
#: Hysteresis: once open, periods this far above the floor (``attack`` of them in a row) count
#: as speech and restart the hangover, so the quieter parts of words keep the gate open.
#: Below 5 dB noise peaks restart the hangover and the gate stays open in pink noise.
AUTO_CLOSE_MARGIN_DB: Final = 6.0
#: With a fixed threshold, the close threshold is this far below it (the same hysteresis).
FIXED_HYSTERESIS_DB: Final = AUTO_OPEN_MARGIN_DB - AUTO_CLOSE_MARGIN_DB
#: Levels are clamped here before they reach the floor tracker: digital silence (-120 dBFS
#: from a muted mixer) must not drag the floor down so far that the first breath of room
#: noise opens the gate for a whole window. Real microphones hiss well above -80 dBFS.
FLOOR_MIN_DBFS: Final = -80.0
#: The floor tracker smooths levels over this long (mean of dB levels) before taking the
#: minimum: the minimum of raw 20 ms levels of brown or pink noise sits 4–8 dB below their
#: typical level, the minimum of 200 ms means only 1–2 dB.
FLOOR_SMOOTHING_MS: Final = 200
#: The floor is the minimum of the smoothed level over this window (minimum statistics,
#: R. Martin 2001): it falls at once when the room gets quieter, rises within one window when
#: it gets louder (a machine switched on). 3 s: shorter windows learn speech as noise (the
#: floor climbs 8 dB during sentences at 2 s, 4 dB at 3 s), longer ones keep the gate open
#: longer after the noise rises (docs/GATE.md §4).
FLOOR_WINDOW_MS: Final = 3000
#: The window is kept as this many sub-window minima, so one period costs O(1).
FLOOR_SUBWINDOWS: Final = 5
#: Auto threshold at start-up: the floor is unknown, so every period counts as speech for
#: this long (the gate is open; conservative: nothing is lost while the floor is learnt).
STARTUP_MS: Final = 1000
#: Opening needs this long of consecutive periods above the open threshold, and staying open
#: this long above the close threshold: a single click (one loud period) does not open the
#: gate, and a single noise peak does not restart the hangover. The pre-roll ring always
#: keeps at least the periods that caused the opening, so the attack never clips an onset.
ATTACK_MS: Final = 40


def _periods(duration_ms: int, period_ms: int) -> int:
    """Whole periods covering ``duration_ms`` (rounded up: 310 ms at 20 ms is 16 periods)."""
    return -(-duration_ms // period_ms)


@dataclass(frozen=True, slots=True)
class GateStep(Generic[T]):
    """What the caller does with one period.

    Attributes:
        forward: items to send now, oldest first: on opening, the pre-roll then the current item.
        opened: the gate opened on this item.
        closed: the gate closed on this item: it is the first item *not* forwarded after the
            hangover ran out, so the caller sends ``Finalize`` now (after the items of earlier
            steps). In shadow mode ``closed`` (like ``opened``) is reported for logging and
            counting only: the item is still forwarded and no ``Finalize`` should be sent.
        would_drop: shadow mode only: the energy gate would not have sent this item with this
            step (it would be held in the pre-roll ring; it is still forwarded).
    """

    forward: tuple[T, ...]
    opened: bool
    closed: bool
    would_drop: bool


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """Counters since the gate was created (a reconfigure keeps them).

    Attributes:
        periods_in: periods fed.
        periods_forwarded: periods returned in ``forward`` (pre-roll included).
        periods_gated: periods not forwarded (so far: pre-roll still in the ring counts).
        opens: times the gate opened (in shadow mode: would have opened).
        closes: times the gate closed (in shadow mode: would have closed).
        would_drop: shadow mode: periods the energy gate would not have forwarded so far.
    """

    periods_in: int
    periods_forwarded: int
    periods_gated: int
    opens: int
    closes: int
    would_drop: int


class NoiseFloor:
    """Minimum-statistics noise floor: the minimum of the smoothed level over a window.

    Levels below ``FLOOR_MIN_DBFS`` are clamped first. ``update`` costs about 15 float
    operations (a 10-value mean and a 5-value minimum at 20 ms periods). It is public so
    that ``dgd levels`` can report the same floor the gate uses.

    Args:
        period_ms: duration of one period.
    """

    __slots__ = ("_floor", "_recent", "_run_min", "_run_n", "_sub_mins", "_sub_n")

    def __init__(self, *, period_ms: int) -> None:
        smoothing = max(1, _periods(FLOOR_SMOOTHING_MS, period_ms))
        self._sub_n = max(1, _periods(FLOOR_WINDOW_MS, period_ms * FLOOR_SUBWINDOWS))
        self._recent: deque[float] = deque(maxlen=smoothing)
        self._sub_mins: deque[float] = deque(maxlen=FLOOR_SUBWINDOWS - 1)
        self._run_min = math.inf
        self._run_n = 0
        self._floor = FLOOR_MIN_DBFS

    @property
    def dbfs(self) -> float:
        """The current estimate (``FLOOR_MIN_DBFS`` before the first update)."""
        return self._floor

    def update(self, level_dbfs: float) -> float:
        """Take one period's level into account and return the new floor estimate."""
        self._recent.append(max(level_dbfs, FLOOR_MIN_DBFS))
        smoothed = sum(self._recent) / len(self._recent)
        self._run_min = min(self._run_min, smoothed)
        self._run_n += 1
        floor = self._run_min
        for m in self._sub_mins:
            floor = min(floor, m)
        if self._run_n == self._sub_n:
            # The sub-window is complete: keep its minimum and start the next one. The
            # oldest sub-window falls out of the deque, which is how the floor can rise.
            self._sub_mins.append(self._run_min)
            self._run_min = math.inf
            self._run_n = 0
        self._floor = floor
        return floor


class Gate(Generic[T]):
    """The silence gate (see the module docstring); one ``feed`` per period, in order.

    Args:
        mode: ``OFF`` forwards everything and never opens or closes; ``ENERGY`` gates;
            ``SHADOW`` forwards everything but reports what ``ENERGY`` would have done.
        threshold_dbfs: periods at or above this level are speech; ``None`` means auto: the
            threshold follows the noise floor (``AUTO_OPEN_MARGIN_DB`` above it to open,
            ``AUTO_CLOSE_MARGIN_DB`` above it to stay open).
        preroll_ms: audio from before the opening that is sent with it (rounded up to whole
            periods; never fewer than the attack needs, so the periods that opened the gate
            are always sent).
        hangover_ms: non-speech audio sent after the last speech before the gate closes
            (rounded up to whole periods).
        period_ms: duration of one period (fixed for the gate's lifetime).

    Raises:
        ValueError: an unknown mode, a negative duration or a non-positive period.
    """

    def __init__(
        self,
        *,
        mode: GateMode,
        threshold_dbfs: float | None,
        preroll_ms: int,
        hangover_ms: int,
        period_ms: int,
    ) -> None:
        if period_ms <= 0:
            raise ValueError(f"audio.period_ms: must be > 0, got {period_ms}")
        self._period_ms = period_ms
        self._attack = max(1, _periods(ATTACK_MS, period_ms))
        self._startup_left = _periods(STARTUP_MS, period_ms)
        self._floor = NoiseFloor(period_ms=period_ms)
        self._ring: deque[T] = deque(maxlen=0)
        # Energy state, also run in shadow mode. Off mode leaves it closed.
        self._open = False
        self._above_open = 0  # consecutive periods at or above the open threshold
        self._above_close = 0  # consecutive periods at or above the close threshold
        self._quiet = 0  # consecutive non-speech periods (while open)
        self._in = 0
        self._forwarded = 0
        self._would_forward = 0
        self._opens = 0
        self._closes = 0
        self._mode = GateMode.OFF
        self._threshold: float | None = None
        self._hangover = 0
        self.reconfigure(
            mode=mode,
            threshold_dbfs=threshold_dbfs,
            preroll_ms=preroll_ms,
            hangover_ms=hangover_ms,
        )

    def reconfigure(
        self, *, mode: GateMode, threshold_dbfs: float | None, preroll_ms: int, hangover_ms: int
    ) -> None:
        """Apply a reloaded config without losing state.

        The open/closed state, the noise-floor estimate, the counters and the newest pre-roll
        items that fit the new size are kept. Switching from ``OFF`` to a gating mode starts
        open (as if speech had just been heard), so nothing is cut mid-word by a reload.

        Raises:
            ValueError: an unknown mode or a negative duration (nothing is changed).
        """
        if mode not in set(GateMode):  # a plain string from an untyped caller is refused
            allowed = ", ".join(GateMode)
            raise ValueError(f"gate.mode: must be one of {allowed}, got {mode!r}")
        mode = GateMode(mode)
        if preroll_ms < 0:
            raise ValueError(f"gate.preroll_ms: must be >= 0, got {preroll_ms}")
        if hangover_ms < 0:
            raise ValueError(f"gate.hangover_ms: must be >= 0, got {hangover_ms}")
        if self._mode is GateMode.OFF and mode is not GateMode.OFF and self._in > 0:
            self._open = True
            self._quiet = 0
        if self._mode is GateMode.SHADOW and mode is GateMode.ENERGY:
            # In shadow mode the ring's items have been forwarded already.
            self._ring.clear()
        self._mode = mode
        self._threshold = threshold_dbfs
        ring_size = max(_periods(preroll_ms, self._period_ms), self._attack - 1)
        # deque(iterable, maxlen) keeps the newest items that fit.
        self._ring = deque(self._ring, maxlen=ring_size)
        self._hangover = _periods(hangover_ms, self._period_ms)

    @property
    def is_open(self) -> bool:
        """Whether audio is being sent (always True in ``OFF`` and ``SHADOW`` modes)."""
        return self._mode is not GateMode.ENERGY or self._open

    @property
    def threshold_dbfs(self) -> float:
        """The open threshold in force now (fixed, or noise floor + ``AUTO_OPEN_MARGIN_DB``)."""
        if self._threshold is not None:
            return self._threshold
        return self._floor.dbfs + AUTO_OPEN_MARGIN_DB

    @property
    def close_threshold_dbfs(self) -> float:
        """While open, periods at or above this level count as speech (hysteresis)."""
        if self._threshold is not None:
            return self._threshold - FIXED_HYSTERESIS_DB
        return self._floor.dbfs + AUTO_CLOSE_MARGIN_DB

    @property
    def noise_floor_dbfs(self) -> float:
        """The noise-floor estimate (tracked in every mode, so a reload to auto starts warm)."""
        return self._floor.dbfs

    def statistics(self) -> GateStatistics:
        """A snapshot of the counters."""
        return GateStatistics(
            periods_in=self._in,
            periods_forwarded=self._forwarded,
            periods_gated=self._in - self._forwarded,
            opens=self._opens,
            closes=self._closes,
            would_drop=self._in - self._would_forward if self._mode is GateMode.SHADOW else 0,
        )

    def feed(self, item: T, level_dbfs: float) -> GateStep[T]:
        """Decide about one period.

        Args:
            item: the caller's period object; the gate only stores and returns it.
            level_dbfs: its level (``dgd.core.pcm.level_dbfs``).

        Returns:
            What to send now and whether the gate opened or closed on this period.
        """
        self._in += 1
        # Decide against the floor as it was before this period, so a loud onset is judged
        # against the room, not against itself.
        open_at = self.threshold_dbfs
        stay_at = self.close_threshold_dbfs
        self._floor.update(level_dbfs)
        startup = False
        if self._startup_left > 0:
            self._startup_left -= 1
            startup = self._threshold is None
        if self._mode is GateMode.OFF:
            self._forwarded += 1
            return GateStep((item,), opened=False, closed=False, would_drop=False)

        # Both thresholds need `attack` consecutive periods: one loud period (a click, or
        # the top of a noise fluctuation) neither opens the gate nor holds it open.
        self._above_open = self._above_open + 1 if level_dbfs >= open_at else 0
        self._above_close = self._above_close + 1 if level_dbfs >= stay_at else 0
        opened = closed = False
        forward: tuple[T, ...]
        if self._open:
            if startup or self._above_close >= self._attack:
                self._quiet = 0
            else:
                self._quiet += 1
            if self._quiet > self._hangover:
                closed = True
                self._open = False
                self._closes += 1
                forward = ()
                self._ring.append(item)
            else:
                forward = (item,)
        elif startup or self._above_open >= self._attack:
            self._open = opened = True
            self._opens += 1
            self._quiet = 0
            forward = (*self._ring, item)
            self._ring.clear()
        else:
            forward = ()
            self._ring.append(item)  # a full ring drops its oldest item

        self._would_forward += len(forward)
        if self._mode is GateMode.SHADOW:
            self._forwarded += 1
            return GateStep((item,), opened=opened, closed=closed, would_drop=not forward)
        self._forwarded += len(forward)
        return GateStep(forward, opened=opened, closed=closed, would_drop=False)
