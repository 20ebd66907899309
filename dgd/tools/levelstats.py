"""The pure part of `dgd levels`: measuring, the threshold rule, the report, the meter line.

`LevelStats` takes period bytes and its `LevelStats.summary` gives the noise floor, speech
level, digital silence, clipping and the suggested ``gate.threshold_dbfs`` (`suggest_threshold`,
the rule is in docs/TOOLS.md); `advice`, `format_summary` and `summary_json` turn a summary into
the report; `PeakHold` and `render_meter` draw one meter line. This module does no I/O: the
shell that reads the device and prints is `dgd.tools.levels`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from dgd.core.gate import AUTO_OPEN_MARGIN_DB, FLOOR_MIN_DBFS
from dgd.core.pcm import SILENCE_DBFS, is_digital_silence, level_dbfs, samples

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dgd.core.pcm import PcmFormat

#: The noise floor is this percentile of the period levels: low enough to be the room between
#: words, high enough that a few unusually quiet periods do not set it.
FLOOR_PERCENTILE: Final = 10
#: The speech level is this percentile: the loud part of talking, not the one loudest period.
SPEECH_PERCENTILE: Final = 90
#: The suggested threshold sits this far above the floor: the same margin "auto" uses
#: (`dgd.core.gate.AUTO_OPEN_MARGIN_DB`), so a fixed threshold behaves like auto in this room.
THRESHOLD_MARGIN_DB: Final = AUTO_OPEN_MARGIN_DB
#: ... but at least this far below the speech level, so ordinary speech clears it.
SPEECH_HEADROOM_DB: Final = 6.0
#: If speech is less than this far above the floor, nobody talked during the measurement
#: (the level hardly changed), and there is no speech level to judge against.
SPEECH_MIN_CONTRAST_DB: Final = 6.0
#: Below this speech-to-floor contrast the gate cannot both stay shut on noise and open on
#: quiet speech (margin and headroom do not both fit).
LOW_CONTRAST_DB: Final = THRESHOLD_MARGIN_DB + SPEECH_HEADROOM_DB
#: A configured fixed threshold this close to the floor opens on noise.
NOISE_CLEARANCE_DB: Final = 3.0
#: The range `gate.threshold_dbfs` accepts (dgd.core.config).
THRESHOLD_MIN_DBFS: Final = -100.0
THRESHOLD_MAX_DBFS: Final = 0.0
CLIP_HIGH: Final = 32767
CLIP_LOW: Final = -32768

#: The meter shows this range; quieter than -80 dBFS is below any real microphone's hiss.
METER_MIN_DBFS: Final = -80.0
METER_WIDTH: Final = 40
#: The peak marker stays at the loudest level this long, long enough for the eye to read it.
PEAK_HOLD_S: Final = 1.5


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values`` (must not be empty)."""
    rank = math.ceil(percent / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def round_db(value: float) -> float:
    """Round to a whole dB, halves away from zero (not to even): thresholds read as -41.0."""
    return float(math.copysign(math.floor(abs(value) + 0.5), value))


@dataclass(frozen=True, slots=True)
class Suggestion:
    """What to put in ``gate.threshold_dbfs``, and whether "auto" would do as well.

    Attributes:
        threshold_dbfs: the suggested fixed threshold, a whole dB.
        speech_heard: the speech level is at least `SPEECH_MIN_CONTRAST_DB` above the floor.
        auto_open_dbfs: where "auto" would open in this room (floor, clamped like the gate's
            tracker at `FLOOR_MIN_DBFS`, plus `AUTO_OPEN_MARGIN_DB`).
        auto_ok: speech was heard and is at least `SPEECH_HEADROOM_DB` above ``auto_open_dbfs``.
    """

    threshold_dbfs: float
    speech_heard: bool
    auto_open_dbfs: float
    auto_ok: bool


def suggest_threshold(floor_dbfs: float, speech_dbfs: float) -> Suggestion:
    """The threshold rule: floor + margin, but no higher than speech − headroom.

    Without speech (speech − floor < `SPEECH_MIN_CONTRAST_DB`) the cap is not applied: the
    suggestion only clears the noise. The result is rounded to a whole dB and kept within the
    range the config accepts.
    """
    speech_heard = speech_dbfs - floor_dbfs >= SPEECH_MIN_CONTRAST_DB
    threshold = floor_dbfs + THRESHOLD_MARGIN_DB
    if speech_heard:
        threshold = min(threshold, speech_dbfs - SPEECH_HEADROOM_DB)
    threshold = min(max(round_db(threshold), THRESHOLD_MIN_DBFS), THRESHOLD_MAX_DBFS)
    auto_open = max(floor_dbfs, FLOOR_MIN_DBFS) + AUTO_OPEN_MARGIN_DB
    auto_ok = speech_heard and speech_dbfs - SPEECH_HEADROOM_DB >= auto_open
    return Suggestion(threshold, speech_heard, auto_open, auto_ok)


@dataclass(frozen=True, slots=True)
class PeriodLevel:
    """One period as the meter sees it: RMS level, loudest sample, clipping, digital silence."""

    level_dbfs: float
    peak_dbfs: float
    clipped_samples: int
    digital_silence: bool


@dataclass(frozen=True, slots=True)
class LevelSummary:
    """The measurement over a whole run.

    Attributes:
        periods: periods read.
        seconds: audio read, in seconds.
        floor_dbfs: `FLOOR_PERCENTILE` of the levels of the periods that were not digital
            silence; None when there were none.
        speech_dbfs: `SPEECH_PERCENTILE` of the same levels; None likewise.
        peak_dbfs: the loudest sample (`SILENCE_DBFS` when nothing but zeros).
        digital_silence_periods: periods whose samples were all exactly zero.
        clipped_samples: samples at full scale (32767 or -32768).
        clipped_periods: periods with at least one such sample.
        suggestion: the threshold suggestion; None when there are no levels to base it on.
    """

    periods: int
    seconds: float
    floor_dbfs: float | None
    speech_dbfs: float | None
    peak_dbfs: float
    digital_silence_periods: int
    clipped_samples: int
    clipped_periods: int
    suggestion: Suggestion | None

    @property
    def all_digital_silence(self) -> bool:
        """Every period read was all zeros: a muted capture control or a dead input."""
        return self.periods > 0 and self.digital_silence_periods == self.periods


def peak_dbfs(peak_sample: int) -> float:
    """A sample magnitude (0..32768) in dBFS; 0 is `SILENCE_DBFS`."""
    if peak_sample <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(peak_sample / 32768.0))


class LevelStats:
    """Accumulates period levels for the summary. This class does no I/O.

    Args:
        fmt: the capture format (for durations).
    """

    __slots__ = (
        "_bytes",
        "_clipped_periods",
        "_clipped_samples",
        "_fmt",
        "_levels",
        "_peak_sample",
        "_periods",
        "_silent_periods",
    )

    def __init__(self, fmt: PcmFormat) -> None:
        self._fmt = fmt
        self._levels: list[float] = []
        self._periods = 0
        self._bytes = 0
        self._silent_periods = 0
        self._clipped_samples = 0
        self._clipped_periods = 0
        self._peak_sample = 0

    @property
    def periods(self) -> int:
        """Periods fed so far."""
        return self._periods

    @property
    def seconds(self) -> float:
        """Audio fed so far, in seconds."""
        return self._fmt.seconds(self._bytes)

    def feed(self, data: bytes) -> PeriodLevel:
        """Take one period of S16_LE audio into account and return what the meter shows."""
        self._periods += 1
        self._bytes += len(data)
        if is_digital_silence(data):
            self._silent_periods += 1
            return PeriodLevel(SILENCE_DBFS, SILENCE_DBFS, 0, True)
        decoded = samples(data)
        level = level_dbfs(data)
        self._levels.append(level)
        clipped = decoded.count(CLIP_HIGH) + decoded.count(CLIP_LOW)
        if clipped:
            self._clipped_samples += clipped
            self._clipped_periods += 1
        peak_sample = max(max(decoded), -min(decoded))
        self._peak_sample = max(self._peak_sample, peak_sample)
        return PeriodLevel(level, peak_dbfs(peak_sample), clipped, False)

    def summary(self) -> LevelSummary:
        """The measurement so far (see `LevelSummary`)."""
        floor: float | None = None
        speech: float | None = None
        suggestion: Suggestion | None = None
        if self._levels:
            ordered = sorted(self._levels)
            floor = percentile(ordered, FLOOR_PERCENTILE)
            speech = percentile(ordered, SPEECH_PERCENTILE)
            suggestion = suggest_threshold(floor, speech)
        return LevelSummary(
            periods=self._periods,
            seconds=self.seconds,
            floor_dbfs=floor,
            speech_dbfs=speech,
            peak_dbfs=peak_dbfs(self._peak_sample),
            digital_silence_periods=self._silent_periods,
            clipped_samples=self._clipped_samples,
            clipped_periods=self._clipped_periods,
            suggestion=suggestion,
        )


def advice(summary: LevelSummary, configured_threshold_dbfs: float | None) -> list[str]:
    """What the operator should know or do, one sentence a line, most urgent first.

    Args:
        summary: the measurement.
        configured_threshold_dbfs: ``gate.threshold_dbfs`` from the config (None = "auto").
    """
    lines: list[str] = []
    if summary.all_digital_silence:
        lines.append(
            "DIGITAL SILENCE: every sample was exactly zero, so the input is muted or dead. "
            "Unmute the capture control (`alsamixer`, F4 for capture, Space toggles it), check "
            "the microphone's own mute switch and cable, or pick another audio.device "
            "(`dgd devices`)."
        )
        return lines
    if summary.digital_silence_periods:
        lines.append(
            f"digital silence in {summary.digital_silence_periods} of {summary.periods} "
            "periods (all zeros): the input cut out or was muted for a while."
        )
    if summary.clipped_samples:
        lines.append(
            f"CLIPPING: {summary.clipped_samples} samples in {summary.clipped_periods} periods "
            "hit full scale. Lower the capture gain (`alsamixer`, F4) or move the microphone "
            "away from the talker; clipped speech transcribes worse."
        )
    suggestion = summary.suggestion
    if suggestion is None or summary.floor_dbfs is None or summary.speech_dbfs is None:
        return lines
    contrast_db = summary.speech_dbfs - summary.floor_dbfs
    if not suggestion.speech_heard:
        lines.append(
            f"no speech heard: the level hardly changed ({contrast_db:.1f} dB between floor and "
            "loud periods). Run again and talk normally, from where people will talk, during "
            "the measurement; until then the suggestion only clears the noise."
        )
    elif contrast_db < LOW_CONTRAST_DB:
        lines.append(
            f"speech is only {contrast_db:.1f} dB above the noise floor: the gate will open on "
            "noise or miss quiet words. Move the microphone closer, raise the capture gain, or "
            "reduce the noise."
        )
    if suggestion.auto_ok:
        lines.append(
            f'"auto" should do fine here: it opens near {suggestion.auto_open_dbfs:.0f} dBFS, '
            f"{summary.speech_dbfs - suggestion.auto_open_dbfs:.0f} dB below the speech level."
        )
    elif suggestion.speech_heard:
        lines.append(
            f'prefer the fixed value to "auto": auto would open near '
            f"{suggestion.auto_open_dbfs:.0f} dBFS, too close to the speech level "
            f"({summary.speech_dbfs:.1f} dBFS) to catch quiet words."
        )
    if configured_threshold_dbfs is not None:
        if configured_threshold_dbfs < summary.floor_dbfs + NOISE_CLEARANCE_DB:
            lines.append(
                f"the configured gate.threshold_dbfs = {configured_threshold_dbfs:.1f} is at or "
                "near the noise floor: the gate will open on noise."
            )
        elif suggestion.speech_heard and configured_threshold_dbfs > summary.speech_dbfs:
            lines.append(
                f"the configured gate.threshold_dbfs = {configured_threshold_dbfs:.1f} is above "
                "the speech level: speech will be dropped."
            )
    return lines


def format_summary(
    summary: LevelSummary, device: str, fmt: PcmFormat, configured_threshold_dbfs: float | None
) -> str:
    """The end-of-run report, as printed."""

    def dbfs(value: float | None) -> str:
        return "   n/a" if value is None else f"{_db(value)} dBFS"

    channels = "channel" if fmt.channels == 1 else "channels"
    lines = [
        f'dgd levels: {summary.seconds:.1f} s ({summary.periods} periods) from "{device}" at '
        f"{fmt.rate_hz} Hz, {fmt.channels} {channels}, {fmt.period_ms} ms periods",
        f"  noise floor      {dbfs(summary.floor_dbfs)}  "
        f"({FLOOR_PERCENTILE}th percentile of period levels)",
        f"  speech level     {dbfs(summary.speech_dbfs)}  ({SPEECH_PERCENTILE}th percentile)",
        f"  loudest sample   {dbfs(summary.peak_dbfs)}",
        f"  digital silence  {summary.digital_silence_periods} periods",
        f"  clipping         {summary.clipped_samples} samples in "
        f"{summary.clipped_periods} periods",
    ]
    configured = (
        '"auto"' if configured_threshold_dbfs is None else f"{configured_threshold_dbfs:.1f}"
    )
    if summary.suggestion is not None:
        lines.append(
            f"suggested gate.threshold_dbfs = {summary.suggestion.threshold_dbfs:.1f}  "
            f"(noise floor + {THRESHOLD_MARGIN_DB:g} dB, at most speech level - "
            f"{SPEECH_HEADROOM_DB:g} dB; configured: {configured})"
        )
    else:
        lines.append(
            f"no suggested gate.threshold_dbfs: no usable audio (configured: {configured})"
        )
    lines.extend(advice(summary, configured_threshold_dbfs))
    return "\n".join(lines)


def summary_json(summary: LevelSummary, device: str, fmt: PcmFormat) -> str:
    """The summary for machines (``--json``)."""
    document: dict[str, Any] = {"device": device, **asdict(fmt), **asdict(summary)}
    document["all_digital_silence"] = summary.all_digital_silence
    document["suggested_threshold_dbfs"] = (
        None if summary.suggestion is None else summary.suggestion.threshold_dbfs
    )
    return json.dumps(document, indent=2)


class PeakHold:
    """The meter's peak marker: the loudest level, held for `PEAK_HOLD_S`. No I/O.

    ``now_s`` is audio time (seconds read so far), so the meter is deterministic.
    """

    __slots__ = ("_held_at_s", "_held_dbfs")

    def __init__(self) -> None:
        self._held_dbfs = SILENCE_DBFS
        self._held_at_s = -math.inf

    def update(self, level_dbfs: float, now_s: float) -> float:
        """Take a level at ``now_s`` and return the level the marker shows."""
        if level_dbfs >= self._held_dbfs or now_s - self._held_at_s > PEAK_HOLD_S:
            self._held_dbfs = level_dbfs
            self._held_at_s = now_s
        return self._held_dbfs


def _db(value: float) -> str:
    """A level as ``-42.0``; a hair below zero (a full-scale square) prints as 0.0, not -0.0."""
    return f"{value if abs(value) >= 0.05 else 0.0:6.1f}"


def _meter_position(level_dbfs: float, width: int) -> int:
    fraction = (level_dbfs - METER_MIN_DBFS) / -METER_MIN_DBFS
    return min(max(round(fraction * width), 0), width)


def render_meter(
    level_dbfs: float,
    hold_dbfs: float,
    *,
    clipped: bool = False,
    digital_silence: bool = False,
    width: int = METER_WIDTH,
) -> str:
    """One meter line: ``[#####     |   ]  -42.0 dBFS  peak -20.0`` plus CLIP/ZERO flags.

    The bar spans `METER_MIN_DBFS` to 0 dBFS; ``|`` marks the held peak.
    """
    cells = ["#"] * _meter_position(level_dbfs, width)
    cells += [" "] * (width - len(cells))
    hold = _meter_position(hold_dbfs, width)
    if hold > 0:
        cells[hold - 1] = "|"
    flags = ("  CLIP" if clipped else "") + ("  ZERO" if digital_silence else "")
    return f"[{''.join(cells)}] {_db(level_dbfs)} dBFS  peak {_db(hold_dbfs)}{flags}"
