"""`dgd levels`: a live input level meter that ends with a suggested gate threshold.

This is the I/O shell: `main` opens the device with `dgd.daemon.alsadevice.open_pcm` (as the
daemon does), a worker thread reads it with the daemon's read loop
(`dgd.daemon.alsadevice.read_stream`) and joins the reads into whole periods, and the main
thread measures and draws. The measuring, the threshold rule, the report and the meter line
are pure and live in `dgd.tools.levelstats`.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any, Final, TextIO

from dgd.core.config import DEFAULT_CONFIG_PATH, Config, ConfigError, parse
from dgd.core.events import AudioFrame
from dgd.core.gate import Gate, GateMode
from dgd.core.pcm import SILENCE_DBFS, PcmFormat
from dgd.core.pipeline import CapturePipeline
from dgd.daemon.alsadevice import DeviceError, read_stream
from dgd.daemon.configfile import load
from dgd.tools.devices import DeviceTimeout, open_with_timeout
from dgd.tools.levelstats import (
    LevelStats,
    PeakHold,
    PeriodLevel,
    format_summary,
    render_meter,
    summary_json,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

#: A TTY is redrawn every 100 ms (10 per second is smooth; every 20 ms period is wasteful over
#: ssh); a pipe or log gets one line per 500 ms.
TTY_REFRESH_S: Final = 0.1
LINE_INTERVAL_S: Final = 0.5
#: Opening a present device takes milliseconds; see dgd.tools.devices.PROBE_TIMEOUT_S.
OPEN_TIMEOUT_S: Final = 2.0
#: A capture device delivers a period every period_ms; none for 2 s means it has stalled.
READ_TIMEOUT_S: Final = 2.0
#: Periods buffered between the reader thread and the meter: one second at 20 ms.
QUEUE_PERIODS: Final = 50
DEFAULT_SECONDS: Final = 10.0


class Meter:
    """Draws: a ``\\r``-redrawn line on a TTY, one plain line per interval otherwise."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self._out = out
        self._tty = tty
        self._interval_s = TTY_REFRESH_S if tty else LINE_INTERVAL_S
        self._hold = PeakHold()
        self._next_s = self._interval_s
        self._max_dbfs = SILENCE_DBFS
        self._clipped = False
        self._silent = False
        self._drawn = False

    def show(self, period: PeriodLevel, now_s: float) -> None:
        # The line shows the loudest period since the last draw, so no syllable is missed.
        self._max_dbfs = max(self._max_dbfs, period.level_dbfs)
        self._clipped |= period.clipped_samples > 0
        self._silent |= period.digital_silence
        hold = self._hold.update(period.level_dbfs, now_s)
        if now_s + 1e-9 < self._next_s:
            return
        line = render_meter(
            self._max_dbfs, hold, clipped=self._clipped, digital_silence=self._silent
        )
        if self._tty:
            self._out.write(f"\r{line}\x1b[K")
        else:
            self._out.write(f"{now_s:6.1f} s {line}\n")
        self._out.flush()
        self._drawn = True
        self._next_s += self._interval_s
        self._max_dbfs = SILENCE_DBFS
        self._clipped = self._silent = False

    def finish(self) -> None:
        if self._tty and self._drawn:
            self._out.write("\n")
            self._out.flush()


_Item = bytes | DeviceError


class _Reader:
    """The worker thread: the daemon's read loop (`read_stream`) feeding the daemon's capture
    pipeline with the gate off and one period per frame, so reads are joined into whole periods
    exactly as the daemon joins them; the periods are handed over in a queue, then the error
    that ended it.

    It owns the PCM from here on and closes it when it stops.
    """

    def __init__(self, pcm: Any, device: str, fmt: PcmFormat) -> None:
        self._pcm = pcm
        self._device = device
        self._read_s = fmt.period_ms / 1000
        self._pipeline = CapturePipeline(
            fmt,
            Gate(
                mode=GateMode.OFF,
                threshold_dbfs=None,
                preroll_ms=0,
                hangover_ms=0,
                period_ms=fmt.period_ms,
            ),
            frame_ms=fmt.period_ms,
        )
        self.items: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_PERIODS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dgd-levels-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            read_stream(
                self._pcm, self._device, self._read_s, self._stop, self._on_read, self._on_overrun
            )
        except DeviceError as exc:
            self._put(exc)
        finally:
            self._pcm.close()

    def _on_read(self, data: bytes, read_done_s: float) -> None:
        for item in self._pipeline.feed(data, read_done_s):
            if isinstance(item, AudioFrame):
                self._put(item.data)

    def _on_overrun(self, at_s: float) -> None:
        self._pipeline.overrun(at_s)

    def _put(self, item: _Item) -> None:
        while not self._stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
            except queue.Full:
                continue
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=0.5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgd levels",
        description="Live input level meter: measures the noise floor and speech level and "
        "suggests gate.threshold_dbfs (see docs/TOOLS.md). Talk normally during the run.",
    )
    parser.add_argument(
        "-c", "--config", default=None, help=f"config file (default {DEFAULT_CONFIG_PATH})"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"how much audio to measure; 0 = until Ctrl-C (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument("--device", default=None, help="ALSA device (default: audio.device)")
    parser.add_argument(
        "--json", action="store_true", help="no meter; print the summary as JSON at the end"
    )
    return parser


def _load_config(path_arg: str | None) -> tuple[Config, str]:
    """The config and a note on where it came from.

    A missing *default* config is not an error here: setting up the microphone comes before
    writing the config, so the defaults (``audio.device = "default"``) are used.

    Raises:
        ConfigError: the config named with -c or $DGD_CONFIG is missing or invalid.
    """
    explicit = path_arg or os.environ.get("DGD_CONFIG", "")
    path = explicit or DEFAULT_CONFIG_PATH
    if not explicit and not os.path.exists(path):
        return parse({}), f"no {path}: using the default [audio] settings"
    return load(path), f"config: {path}"


def main(argv: Sequence[str]) -> int:
    """``dgd levels [-c PATH] [--seconds N] [--device NAME] [--json]``.

    Returns 0 after a measurement, 1 when the device cannot be opened, stalls, fails, or gave
    nothing but digital silence, 2 on bad usage, 78 when the config is invalid.
    """
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if not (args.seconds >= 0 and math.isfinite(args.seconds)):
        print("dgd levels: --seconds must be a number >= 0 (0 = until Ctrl-C)", file=sys.stderr)
        return 2
    try:
        config, config_note = _load_config(args.config)
    except ConfigError as exc:
        print("dgd levels: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 78
    device = args.device or config.audio.device
    fmt = PcmFormat(config.audio.rate, config.audio.channels, config.audio.period_ms)
    try:
        pcm = open_with_timeout(device, fmt, OPEN_TIMEOUT_S)
    except (DeviceError, DeviceTimeout) as exc:
        print(f"dgd levels: {exc}", file=sys.stderr)
        return 1
    return _measure(pcm, device, fmt, config, config_note, args)


def _measure(
    pcm: Any, device: str, fmt: PcmFormat, config: Config, note: str, args: argparse.Namespace
) -> int:
    total_periods = math.ceil(args.seconds * 1000 / fmt.period_ms) if args.seconds else None
    stats = LevelStats(fmt)
    meter = Meter(sys.stdout, tty=sys.stdout.isatty()) if not args.json else None
    if meter is not None:
        print(f'dgd levels: {note}; reading "{device}" (Ctrl-C stops early)')
    reader = _Reader(pcm, device, fmt)
    failure = ""
    try:
        while total_periods is None or stats.periods < total_periods:
            try:
                item = reader.items.get(timeout=READ_TIMEOUT_S)
            except queue.Empty:
                failure = (
                    f'audio device "{device}" delivered no audio for {READ_TIMEOUT_S:g} s: it '
                    "has stalled (a USB microphone losing power? replug it; another program "
                    "holding it? `fuser -v /dev/snd/*`)"
                )
                break
            if isinstance(item, DeviceError):
                failure = str(item)
                break
            period = stats.feed(item)
            if meter is not None:
                meter.show(period, stats.seconds)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the measurement; the summary is the point
    finally:
        reader.stop()
        if meter is not None:
            meter.finish()
    summary = stats.summary()
    if summary.periods:
        if args.json:
            print(summary_json(summary, device, fmt))
        else:
            print(format_summary(summary, device, fmt, config.gate.threshold_dbfs))
    if failure:
        print(f"dgd levels: {failure}", file=sys.stderr)
        return 1
    if not summary.periods:
        print(f'dgd levels: nothing was read from audio device "{device}"', file=sys.stderr)
        return 1
    return 1 if summary.all_digital_silence else 0
