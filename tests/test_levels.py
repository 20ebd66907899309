"""`dgd levels`: the pure measuring (table-driven, exact values) and the command through real
alsa-lib, reading known audio from ``type file`` PCMs (dgd/testing/fifomic.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import alsaaudio
import pytest

from dgd.core.pcm import SILENCE_DBFS, PcmFormat
from dgd.daemon.alsadevice import DeviceError, classify_alsa_error
from dgd.tools.levels import Meter, _Reader
from dgd.tools.levelstats import (
    LevelStats,
    LevelSummary,
    PeakHold,
    PeriodLevel,
    Suggestion,
    advice,
    percentile,
    render_meter,
    round_db,
    suggest_threshold,
)

MAIN = Path(__file__).resolve().parent.parent
RATE_HZ = 16000
PERIOD_SAMPLES = 320  # 20 ms at 16 kHz mono, dgd's default period
FMT = PcmFormat(RATE_HZ, 1, 20)


def db(amplitude: float) -> float:
    """The dBFS of an alternating ±amplitude square (its RMS is the amplitude)."""
    return 20.0 * math.log10(amplitude / 32768.0)


def square(amplitude: int, n: int = PERIOD_SAMPLES, high: int | None = None) -> bytes:
    """One period alternating ``high`` (default +amplitude) and -amplitude."""
    top = amplitude if high is None else high
    return array("h", [top if i % 2 else -amplitude for i in range(n)]).tobytes()


# --------------------------------------------------------------------------- pure: helpers


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 10, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90, 9.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 100, 10.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0], 50, 2.0),
        ([7.5], 10, 7.5),
        ([7.5], 90, 7.5),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], percent: float, expected: float) -> None:
    assert percentile(values, percent) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-41.4, -41.0), (-41.5, -42.0), (-41.6, -42.0), (-40.5, -41.0), (2.5, 3.0), (0.4, 0.0)],
)
def test_round_db_rounds_halves_away_from_zero(value: float, expected: float) -> None:
    assert round_db(value) == expected


@pytest.mark.parametrize(
    ("floor", "speech", "expected"),
    [
        # floor + 9 dB, well below speech: auto opens at the same place and does fine
        (-50.0, -20.0, Suggestion(-41.0, True, -41.0, True)),
        # auto's boundary: speech - 6 dB is exactly where auto opens
        (-50.0, -35.0, Suggestion(-41.0, True, -41.0, True)),
        # low contrast: capped at speech - 6 dB, below where auto would open
        (-50.0, -38.0, Suggestion(-44.0, True, -41.0, False)),
        # exactly 6 dB of contrast still counts as speech; the cap puts it on the floor
        (-50.0, -44.0, Suggestion(-50.0, True, -41.0, False)),
        # no speech heard: the cap does not apply
        (-50.0, -46.0, Suggestion(-41.0, False, -41.0, False)),
        # very quiet room: auto's tracker clamps its floor at -80 dBFS
        (-90.0, -40.0, Suggestion(-81.0, True, -71.0, True)),
        # rounding to whole dB, halves away from zero
        (-60.4, -30.0, Suggestion(-51.0, True, -51.4, True)),
        (-60.5, -30.0, Suggestion(-52.0, True, -51.5, True)),
        # kept within the range the config accepts
        (-5.0, 0.0, Suggestion(0.0, False, 4.0, False)),
        (-112.0, -111.0, Suggestion(-100.0, False, -71.0, False)),
    ],
)
def test_suggest_threshold(floor: float, speech: float, expected: Suggestion) -> None:
    assert suggest_threshold(floor, speech) == expected


# --------------------------------------------------------------------------- pure: LevelStats


def _summary(*periods: bytes) -> LevelSummary:
    stats = LevelStats(FMT)
    for period in periods:
        stats.feed(period)
    return stats.summary()


@pytest.mark.parametrize(
    ("periods", "expected"),
    [
        pytest.param(
            [],
            LevelSummary(0, 0.0, None, None, SILENCE_DBFS, 0, 0, 0, None),
            id="nothing",
        ),
        pytest.param(
            [square(32)] * 9 + [square(8192)],
            # 10 periods: the 10th percentile is the 1st of them, the 90th the 9th
            LevelSummary(
                10, 0.2, db(32), db(32), db(8192), 0, 0, 0, suggest_threshold(db(32), db(32))
            ),
            id="one-loud-period-is-not-the-speech-level",
        ),
        pytest.param(
            [square(32)] * 5 + [square(8192)] * 5,
            LevelSummary(
                10,
                0.2,
                db(32),
                db(8192),
                db(8192),
                0,
                0,
                0,
                Suggestion(-51.0, True, db(32) + 9.0, True),
            ),
            id="floor-and-speech",
        ),
        pytest.param(
            [bytes(640)] * 3 + [square(1024)] * 2,
            # digital silence is counted but is not a noise floor
            LevelSummary(
                5, 0.1, db(1024), db(1024), db(1024), 3, 0, 0, suggest_threshold(db(1024), db(1024))
            ),
            id="zeros-do-not-drag-the-floor",
        ),
        pytest.param(
            [bytes(640)] * 4,
            LevelSummary(4, 0.08, None, None, SILENCE_DBFS, 4, 0, 0, None),
            id="all-digital-silence",
        ),
        pytest.param(
            [square(32768, high=32767)] * 2 + [square(100, high=32767)] + [square(100)],
            # full-scale square: 320 clipped samples a period; the third period has 160
            LevelSummary(
                4,
                0.08,
                percentile(
                    sorted(
                        [
                            db(math.sqrt((32768**2 + 32767**2) / 2)),
                            db(math.sqrt((32768**2 + 32767**2) / 2)),
                            db(math.sqrt((100**2 + 32767**2) / 2)),
                            db(100),
                        ]
                    ),
                    10,
                ),
                db(math.sqrt((32768**2 + 32767**2) / 2)),
                0.0,
                0,
                800,
                3,
                suggest_threshold(db(100), db(math.sqrt((32768**2 + 32767**2) / 2))),
            ),
            id="clipping",
        ),
    ],
)
def test_level_stats_summary(periods: list[bytes], expected: LevelSummary) -> None:
    assert_close(_summary(*periods), expected)


#: dgd.core.pcm.level_dbfs may use audioop, whose RMS is truncated to a whole LSB: a level can be
#: a few thousandths of a dB off the exact formula.
LEVEL_TOLERANCE_DB = 0.005


def assert_close(actual: object, expected: object) -> None:
    """Equal, except that floats (in dataclasses and tuples, recursively) may differ by
    LEVEL_TOLERANCE_DB."""
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected)
        for f in dataclasses.fields(expected):
            assert_close(getattr(actual, f.name), getattr(expected, f.name))
    elif isinstance(expected, tuple):
        assert isinstance(actual, tuple)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=LEVEL_TOLERANCE_DB)
    else:
        assert actual == expected


def test_level_stats_feed_reports_each_period() -> None:
    stats = LevelStats(FMT)
    loud = stats.feed(square(16384, high=32767))
    silent = stats.feed(bytes(640))
    assert_close(
        (loud.level_dbfs, loud.peak_dbfs, loud.clipped_samples, loud.digital_silence),
        (db(math.sqrt((16384**2 + 32767**2) / 2)), db(32767), 160, False),
    )
    assert (silent.level_dbfs, silent.peak_dbfs, silent.clipped_samples) == (SILENCE_DBFS,) * 2 + (
        0,
    )
    assert silent.digital_silence
    assert (stats.periods, stats.seconds) == (2, 0.04)


@pytest.mark.parametrize(
    ("silent", "periods", "expected"), [(0, 0, False), (3, 3, True), (2, 3, False)]
)
def test_all_digital_silence(silent: int, periods: int, expected: bool) -> None:
    summary = LevelSummary(periods, 0.0, None, None, SILENCE_DBFS, silent, 0, 0, None)
    assert summary.all_digital_silence is expected


# --------------------------------------------------------------------------- pure: meter


def test_peak_hold_holds_then_follows() -> None:
    hold = PeakHold()
    steps = [(-40.0, 0.0), (-20.0, 0.25), (-50.0, 0.5), (-30.0, 1.75), (-45.0, 2.0), (-10.0, 2.25)]
    shown = [hold.update(level, now) for level, now in steps]
    # -20 is held for 1.5 s (still at 1.75 s), then the marker drops to the current level
    assert shown == [-40.0, -20.0, -20.0, -20.0, -45.0, -10.0]


@pytest.mark.parametrize(
    ("level", "hold", "flags", "expected"),
    [
        (-40.0, -16.0, {}, "[#####  |  ]  -40.0 dBFS  peak  -16.0"),
        (-80.0, -80.0, {}, "[          ]  -80.0 dBFS  peak  -80.0"),
        (
            SILENCE_DBFS,
            SILENCE_DBFS,
            {"digital_silence": True},
            "[          ] -120.0 dBFS  peak -120.0  ZERO",
        ),
        (-0.0001, -0.0001, {"clipped": True}, "[#########|]    0.0 dBFS  peak    0.0  CLIP"),
        (
            -8.0,
            -8.0,
            {"clipped": True, "digital_silence": True},
            "[########| ]   -8.0 dBFS  peak   -8.0  CLIP  ZERO",
        ),
    ],
)
def test_render_meter(level: float, hold: float, flags: dict[str, bool], expected: str) -> None:
    assert render_meter(level, hold, width=10, **flags) == expected


def _draw(tty: bool, levels_dbfs: list[float]) -> str:
    out = io.StringIO()
    meter = Meter(out, tty=tty)
    for i, level in enumerate(levels_dbfs, start=1):
        period = PeriodLevel(level, level + 3.0, 1 if level > -1.0 else 0, level == SILENCE_DBFS)
        meter.show(period, FMT.seconds(i * FMT.period_bytes))
    meter.finish()
    return out.getvalue()


def test_meter_plain_lines_show_the_loudest_period_of_each_half_second() -> None:
    drawn = _draw(False, [-60.0] * 20 + [-30.0] + [-60.0] * 29 + [SILENCE_DBFS] * 10)
    assert drawn == (
        f"   0.5 s {render_meter(-30.0, -30.0)}\n"
        f"   1.0 s {render_meter(-60.0, -30.0)}\n"  # the peak marker holds -30 for 1.5 s
    )


def test_meter_redraws_one_line_on_a_tty() -> None:
    drawn = _draw(True, [-60.0] * 5 + [-0.5] + [SILENCE_DBFS] * 4)
    assert drawn == (
        f"\r{render_meter(-60.0, -60.0)}\x1b[K"
        f"\r{render_meter(-0.5, -0.5, clipped=True, digital_silence=True)}\x1b[K\n"
    )


def test_meter_on_a_tty_without_a_draw_prints_nothing() -> None:
    assert _draw(True, [-60.0] * 4) == ""


# --------------------------------------------------------------------------- pure: advice


def _advice_summary(
    floor: float | None = -50.0,
    speech: float | None = -20.0,
    silent: int = 0,
    clipped: int = 0,
    periods: int = 100,
) -> LevelSummary:
    suggestion = None if floor is None or speech is None else suggest_threshold(floor, speech)
    return LevelSummary(
        periods, 2.0, floor, speech, -10.0, silent, clipped, min(clipped, 1), suggestion
    )


@pytest.mark.parametrize(
    ("summary", "configured", "expected_starts"),
    [
        (_advice_summary(), None, ['"auto" should do fine here: it opens near -41 dBFS, 21 dB']),
        (
            _advice_summary(floor=None, speech=None, silent=100),
            None,
            ["DIGITAL SILENCE: every sample was exactly zero"],
        ),
        (
            _advice_summary(silent=7),
            None,
            ["digital silence in 7 of 100 periods", '"auto" should do fine'],
        ),
        (
            _advice_summary(clipped=12),
            None,
            ["CLIPPING: 12 samples in 1 periods", '"auto" should do fine'],
        ),
        (
            _advice_summary(speech=-47.0),
            None,
            ["no speech heard: the level hardly changed (3.0 dB"],
        ),
        (
            _advice_summary(speech=-40.0),
            None,
            ["speech is only 10.0 dB above the noise floor", 'prefer the fixed value to "auto"'],
        ),
        (
            _advice_summary(),
            -48.0,
            ['"auto" should do fine', "the configured gate.threshold_dbfs = -48.0 is at or near"],
        ),
        (
            _advice_summary(),
            -15.0,
            ['"auto" should do fine', "the configured gate.threshold_dbfs = -15.0 is above"],
        ),
        (_advice_summary(), -41.0, ['"auto" should do fine']),
    ],
)
def test_advice(
    summary: LevelSummary, configured: float | None, expected_starts: list[str]
) -> None:
    lines = advice(summary, configured)
    assert len(lines) == len(expected_starts)
    for line, start in zip(lines, expected_starts, strict=True):
        assert line.startswith(start)


# --------------------------------------------------------------------------- real ALSA

FLOOR_DBFS = -50.0
TONE_DBFS = -20.0


def _noise_then_tone(noise_s: float, tone_s: float) -> bytes:
    """Gaussian noise at FLOOR_DBFS RMS, then a 440 Hz sine at TONE_DBFS RMS."""
    rng = random.Random(4)
    sigma = 32768.0 * 10 ** (FLOOR_DBFS / 20)
    noise = [round(rng.gauss(0.0, sigma)) for _ in range(int(noise_s * RATE_HZ))]
    amplitude = 32768.0 * 10 ** (TONE_DBFS / 20) * math.sqrt(2)
    tone = [
        round(amplitude * math.sin(2 * math.pi * 440 * i / RATE_HZ))
        for i in range(int(tone_s * RATE_HZ))
    ]
    return array("h", noise + tone).tobytes()


@pytest.fixture(scope="module")
def alsa(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An ALSA config with file PCMs over known audio; returns the subprocess environment.

    Every file holds 3 s more than the 3 s the tests read, because the reader thread reads
    ahead of the meter and reading past the end of an alsa-lib ``file`` infile yields garbage.
    """
    base = tmp_path_factory.mktemp("alsa")
    files = {
        "speech": _noise_then_tone(2.0, 4.0),
        "zeros": bytes(6 * RATE_HZ * 2),
        "clip": array(
            "h", [32767 if (i // 20) % 2 else -32768 for i in range(6 * RATE_HZ)]
        ).tobytes(),
    }
    conf = []
    for name, data in files.items():
        (base / f"{name}.raw").write_bytes(data)
        conf.append(
            f'pcm.{name} {{ type file; slave.pcm "null"; file "/dev/null"; '
            f'infile "{base / name}.raw"; format "raw" }}'
        )
    os.mkfifo(base / "stall.fifo")
    conf.append(
        f'pcm.stall {{ type file; slave.pcm "null"; file "/dev/null"; '
        f'infile "{base / "stall.fifo"}"; format "raw" }}'
    )
    (base / "test.conf").write_text("\n".join(conf) + "\n")
    (base / "dgd.toml").write_text('[audio]\ndevice = "speech"\n[gate]\nthreshold_dbfs = -48.0\n')
    (base / "bad.toml").write_text("[audio]\nrate = 12345\n")
    env = {k: v for k, v in os.environ.items() if k != "DGD_CONFIG"}
    env.update(
        ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{base / 'test.conf'}",
        PYTHONPATH=str(MAIN),
        BASE=str(base),
    )
    return env


def levels(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dgd", "levels", "-c", f"{env['BASE']}/dgd.toml", *args],
        cwd=MAIN,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def figure(output: str, label: str) -> float:
    match = re.search(rf"^  {label}\s+(-?\d+\.\d) dBFS", output, re.MULTILINE)
    assert match, output
    return float(match.group(1))


def test_levels_measures_floor_and_speech(alsa: dict[str, str]) -> None:
    done = levels(alsa, "--seconds", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert figure(out, "noise floor") == pytest.approx(FLOOR_DBFS, abs=1.0)
    assert figure(out, "speech level") == pytest.approx(TONE_DBFS, abs=0.5)
    assert figure(out, "loudest sample") == pytest.approx(TONE_DBFS + 3.0, abs=0.5)
    assert 'from "speech" at 16000 Hz, 1 channel, 20 ms periods' in out
    assert "3.0 s (150 periods)" in out
    suggested = re.search(r"suggested gate.threshold_dbfs = (-?\d+\.\d)", out)
    assert suggested, out
    # floor + 9 dB (speech - 6 dB is far higher), in whole dB
    assert float(suggested.group(1)) in (-42.0, -41.0, -40.0)
    assert "configured: -48.0" in out
    assert '"auto" should do fine here' in out
    # the configured -48 is within 3 dB of the measured floor
    assert "the configured gate.threshold_dbfs = -48.0 is at or near the noise floor" in out
    # not a TTY: one plain meter line per 0.5 s of audio, quiet then loud
    meter = [line for line in out.splitlines() if re.match(r"^\s+\d+\.\d s \[", line)]
    assert len(meter) == 6
    shown = [float(line.split("]")[1].split()[0]) for line in meter]
    # each line shows the loudest period of its 0.5 s: noise (a little above its RMS), then tone
    assert shown[0] == pytest.approx(FLOOR_DBFS, abs=1.5)
    assert shown[-1] == pytest.approx(TONE_DBFS, abs=0.5)


def test_levels_json_and_device_option(alsa: dict[str, str]) -> None:
    done = levels(alsa, "--seconds", "2.5", "--device", "speech", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["device"], report["rate_hz"], report["channels"], report["periods"]) == (
        "speech",
        16000,
        1,
        125,
    )
    assert report["floor_dbfs"] == pytest.approx(FLOOR_DBFS, abs=1.0)
    assert report["speech_dbfs"] == pytest.approx(TONE_DBFS, abs=0.5)
    assert report["suggested_threshold_dbfs"] in (-42.0, -41.0, -40.0)
    assert report["suggestion"]["auto_ok"] is True
    assert (report["digital_silence_periods"], report["clipped_samples"]) == (0, 0)
    assert report["all_digital_silence"] is False


def test_levels_flags_digital_silence(alsa: dict[str, str]) -> None:
    done = levels(alsa, "--seconds", "1", "--device", "zeros")
    assert done.returncode == 1
    assert "digital silence  50 periods" in done.stdout
    assert "DIGITAL SILENCE: every sample was exactly zero" in done.stdout
    assert "ZERO" in done.stdout
    assert "no suggested gate.threshold_dbfs" in done.stdout


def test_levels_flags_clipping(alsa: dict[str, str]) -> None:
    done = levels(alsa, "--seconds", "1", "--device", "clip", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["clipped_samples"], report["clipped_periods"]) == (16000, 50)
    assert report["peak_dbfs"] == 0.0
    assert report["suggestion"]["speech_heard"] is False
    human = levels(alsa, "--seconds", "1", "--device", "clip")
    assert "CLIPPING: 16000 samples in 50 periods" in human.stdout
    assert "CLIP" in human.stdout.splitlines()[1]


def test_levels_unknown_device_exits_1_with_advice(alsa: dict[str, str]) -> None:
    done = levels(alsa, "--seconds", "1", "--device", "nosuchmic")
    assert done.returncode == 1
    assert 'audio device "nosuchmic": no such device: plug the microphone in' in done.stderr
    assert done.stdout == ""


def test_levels_invalid_config_exits_78(alsa: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dgd", "levels", "-c", f"{alsa['BASE']}/bad.toml"],
        cwd=MAIN,
        env=alsa,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 78
    assert "audio.rate" in done.stderr


@pytest.mark.parametrize("args", [["--seconds", "-1"], ["--seconds", "nan"], ["--bogus"]])
def test_levels_bad_usage_exits_2(alsa: dict[str, str], args: list[str]) -> None:
    assert levels(alsa, *args).returncode == 2


def test_levels_reports_a_stalled_device(alsa: dict[str, str]) -> None:
    """A FIFO "microphone" delivers 10 periods and then nothing: levels gives up after 2 s."""
    fifo = Path(alsa["BASE"]) / "stall.fifo"
    release = threading.Event()

    def writer() -> None:
        deadline = time.monotonic() + 15.0
        while True:  # wait for the reader without blocking forever if it never comes
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
        os.set_blocking(fd, True)
        for _ in range(2):  # whole periods per write, at most PIPE_BUF (4096 B): atomic
            os.write(fd, square(1024) * 5)
        release.wait(15.0)
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        done = levels(alsa, "--seconds", "5", "--device", "stall")
    finally:
        release.set()
        thread.join(5.0)
    assert done.returncode == 1
    assert 'audio device "stall" delivered no audio for 2 s' in done.stderr
    assert "(10 periods)" in done.stdout
    assert figure(done.stdout, "noise floor") == pytest.approx(db(1024), abs=0.05)


class ScriptedPcm:
    """Returns scripted reads like a non-blocking kernel PCM: nothing ready, partial periods,
    an overrun; then nothing. Stands in for the device only, to drive the reader's logic."""

    def __init__(self, reads: list[tuple[int, bytes]]) -> None:
        self._reads = list(reads)
        self.closed = False

    def polldescriptors(self) -> list[tuple[int, int]]:
        raise alsaaudio.ALSAAudioError("no descriptors")

    def read(self) -> tuple[int, bytes]:
        return self._reads.pop(0) if self._reads else (0, b"")

    def close(self) -> None:
        self.closed = True


def test_levels_reader_hands_over_whole_periods_from_partial_reads() -> None:
    fmt = PcmFormat(16000, 1, 20)  # 640-byte periods
    stream = bytes(range(256)) * 10  # 2560 bytes = 4 periods
    reads = [(0, b""), (64, stream[:128]), (0, b""), (736, stream[128:1600])]
    reads += [(-32, b""), (320, stream[1920:2560]), (320, stream[1920:2560])]
    pcm = ScriptedPcm(reads)
    reader = _Reader(pcm, "scripted", fmt)
    got = [reader.items.get(timeout=5) for _ in range(4)]
    reader.stop()
    # Before the overrun: two whole periods, and half of one that the overrun discards.
    assert got[:2] == [stream[:640], stream[640:1280]]
    # After it: two reads of one period each.
    assert got[2:] == [stream[1920:2560], stream[1920:2560]]
    assert pcm.closed


def test_levels_reader_reads_real_alsa_with_the_daemons_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through real alsa-lib, the reader is the daemon's read loop (`read_stream`).

    A ``type file`` PCM opened with reads of 1.5 periods (960 B, as a kernel device returns
    partial periods) reads known bytes; its output file is /dev/full, so once alsa-lib flushes
    what it read (after four reads), the read fails with EIO. The reader hands over whole
    640-B periods, in order, joined across reads, and then the error as the daemon classifies
    it (levels' own loop called every ALSA error "unplugged").
    """
    stream = random.Random(7).randbytes(64000)  # 100 periods, no two alike
    (tmp_path / "in.raw").write_bytes(stream)
    conf = tmp_path / "alsa.conf"
    conf.write_text(
        f'pcm.fullout {{ type file; slave.pcm "null"; file "/dev/full"; '
        f'infile "{tmp_path / "in.raw"}"; format "raw" }}\n'
    )
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{conf}")
    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_CAPTURE,
        mode=alsaaudio.PCM_NONBLOCK,
        device="fullout",
        rate=RATE_HZ,
        channels=1,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=PERIOD_SAMPLES * 3 // 2,
        periods=4,
    )
    reader = _Reader(pcm, "fullout", FMT)
    items: list[bytes | DeviceError] = []
    try:
        while not items or not isinstance(items[-1], DeviceError):
            items.append(reader.items.get(timeout=5))
    finally:
        reader.stop()
    *periods, error = items
    assert len(periods) >= 3  # at least two reads of 1.5 periods, joined
    assert periods == [stream[i * 640 : (i + 1) * 640] for i in range(len(periods))]
    assert isinstance(error, DeviceError)
    assert error.detail == "Input/output error [fullout]"
    daemon = classify_alsa_error("fullout", alsaaudio.ALSAAudioError(error.detail))
    assert (error.problem, str(error)) == (daemon.problem, str(daemon))
