"""`dgd devices`: list the ALSA capture devices, by the names ``audio.device`` accepts.

Each candidate (``default``, every capture PCM alsa-lib's name hints list, and
``plughw:``/``hw:CARD=<id>,DEV=0`` for every sound card) is opened for capture and closed
again without reading: nothing is consumed or played.

- A ``hw:`` device (no conversion: what the hardware does) is opened once and its hardware
  parameters read: the sample formats, rates and channel counts it offers. dgd can use it at
  the probe rates and channel counts it offers, if it offers S16_LE.
- Any other PCM (``plughw:``, ``default``, plugin chains) is opened through
  `dgd.daemon.alsadevice.open_pcm`, exactly as the daemon opens it, at every probe rate and
  channel count; only an open that delivers exactly that (S16_LE, the rate, the channels)
  counts.

An open that blocks (a busy ``hw:`` device waits for its owner; a FIFO-fed ``file`` PCM waits
for a writer) is interrupted after `PROBE_TIMEOUT_S` and reported as "did not answer".

It is a little over the project's 400 lines: listing, probing and the table belong to one
command, and its pure parts (the format read-back) are in ``dgd.daemon.alsadevice``.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import alsaaudio

from dgd.core.pcm import PcmFormat
from dgd.daemon.alsadevice import (
    SAMPLE_FORMAT,
    DeviceError,
    DeviceProblem,
    Offers,
    offers_of,
    open_pcm,
    open_pcm_unchecked,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import FrameType

#: The rates a USB microphone or codec usually offers; 16000 is dgd's default (Deepgram's
#: models are trained on 16 kHz and up), 8000 is telephony, 44100/48000 are what hw: devices
#: without a resampler (the ``plug`` layer) typically accept.
PROBE_RATES_HZ: Final = (8000, 16000, 44100, 48000)
PROBE_CHANNELS: Final = (1, 2)
#: The probe's period: dgd's default ``audio.period_ms`` (and a whole number of frames at
#: every rate above, as `PcmFormat` requires).
PROBE_PERIOD_MS: Final = 20
#: An open of a present device takes milliseconds; one that is still blocked after a second
#: is waiting for something (the device's current owner, a FIFO writer) and would block the
#: daemon in the same way.
PROBE_TIMEOUT_S: Final = 1.0
#: alsa-lib's capture PCM that returns uninitialised memory (docs/TESTING.md): it always opens,
#: and it is not a microphone, so it is neither listed nor counted.
NOT_A_MICROPHONE: Final = frozenset({"null"})

_DEVICE_LEVEL_PROBLEMS: Final = frozenset(
    {DeviceProblem.MISSING, DeviceProblem.BUSY, DeviceProblem.PERMISSION}
)


class DeviceTimeout(Exception):
    """Opening the device blocked for longer than the timeout, and was interrupted."""

    def __init__(self, device: str, timeout_s: float) -> None:
        super().__init__(
            f'audio device "{device}" did not answer within {timeout_s:g} s: it is waiting for '
            "something (another program holding it? check `fuser -v /dev/snd/*`; a stalled "
            "USB device? replug it)"
        )
        self.device = device
        self.timeout_s = timeout_s


class ProbeStatus(enum.Enum):
    """What happened when a device was opened."""

    OPENS = "opens"
    FAILED = "fails"
    NO_ANSWER = "did not answer"


@dataclass(frozen=True, slots=True)
class CaptureFormat:
    """One rate and channel count a device opened at exactly (no silent substitution)."""

    rate_hz: int
    channels: int


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """The result of probing one capture device.

    Attributes:
        name: the ALSA PCM name, as ``audio.device`` takes it.
        status: whether it opened (at some format), failed, or did not answer.
        formats: the formats it opened at exactly, in probe order.
        error: why it failed or did not answer (``""`` when it opens).
        card_index: the sound card behind it, from the first successful open; -1 for a
            software PCM (a plugin chain not tied to one card) or when it did not open.
        card_device: the card's device number behind it (meaningful when ``card_index >= 0``).
        offers: what a ``hw:`` device offers, from its hardware parameters (None for other
            devices, and when it did not open).
    """

    name: str
    status: ProbeStatus
    formats: tuple[CaptureFormat, ...]
    error: str = ""
    card_index: int = -1
    card_device: int = 0
    offers: Offers | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """A sound card as alsa-lib knows it: index, short id (for ``CARD=<id>``) and long name."""

    index: int
    card_id: str
    name: str


def candidate_names(hinted: Sequence[str], card_ids: Sequence[str]) -> list[str]:
    """The device names to probe, ``default`` first, each once, in a stable order.

    Args:
        hinted: ``alsaaudio.pcms(PCM_CAPTURE)``: the capture PCMs alsa-lib's name hints list.
        card_ids: ``alsaaudio.cards()``: the short ids of the sound cards.

    Returns:
        ``default``, then the hinted names (without ``null``), then ``plughw:CARD=<id>,DEV=0``
        and ``hw:CARD=<id>,DEV=0`` for every card the hints did not already cover.
    """
    names = ["default", *hinted]
    for card_id in card_ids:
        names += [f"plughw:CARD={card_id},DEV=0", f"hw:CARD={card_id},DEV=0"]
    unique = dict.fromkeys(name for name in names if name not in NOT_A_MICROPHONE)
    return list(unique)


@contextlib.contextmanager
def _alarm(timeout_s: float) -> Iterator[list[bool]]:
    """Deliver SIGALRM after ``timeout_s``; the yielded list becomes non-empty once it fired.

    The signal interrupts a blocking ``open()`` inside alsa-lib with EINTR, which alsa-lib
    reports as an error. A watchdog thread would not do: pyalsaaudio holds the GIL while it
    opens, so no other Python thread runs until the open returns. Main thread only.
    """
    fired: list[bool] = []

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        fired.append(True)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def open_with_timeout(
    device: str,
    fmt: PcmFormat,
    timeout_s: float,
    periods_per_read: int = 1,
    *,
    check_format: bool = True,
) -> Any:
    """`dgd.daemon.alsadevice.open_pcm` (``open_pcm_unchecked`` without ``check_format``),
    interrupted if it blocks for longer than ``timeout_s``.

    Must be called from the main thread (it uses SIGALRM).

    Raises:
        DeviceTimeout: the open was still blocked after ``timeout_s``.
        DeviceError: the device is missing, busy, not permitted, or delivers another format.
    """
    opener = open_pcm if check_format else open_pcm_unchecked
    with _alarm(timeout_s) as fired:
        try:
            return opener(device, fmt, periods_per_read)
        except DeviceError as exc:
            if fired:
                raise DeviceTimeout(device, timeout_s) from exc
            raise


def is_hw(name: str) -> bool:
    """A ``hw:`` device: the hardware's own parameters, no conversion."""
    return name.startswith("hw:")


def usable_formats(offers: Offers) -> tuple[CaptureFormat, ...]:
    """The probe rates and channel counts dgd can capture at from what a ``hw:`` device
    offers: none unless it offers S16_LE."""
    if SAMPLE_FORMAT not in offers.sample_formats:
        return ()
    return tuple(
        CaptureFormat(rate_hz, channels)
        for channels in PROBE_CHANNELS
        if channels in offers.channels
        for rate_hz in PROBE_RATES_HZ
        if offers.takes_rate(rate_hz)
    )


def unusable(name: str, offers: Offers) -> str:
    """Why a ``hw:`` device that opens is of no use as it is, and what to do."""
    return (
        f'audio device "{name}": offers none of the formats dgd captures ({SAMPLE_FORMAT} at '
        f"{' '.join(str(r) for r in PROBE_RATES_HZ)} Hz, 1 or 2 channels); it offers "
        f'{offers.describe() or "nothing dgd can read"}: use "plug{name}" (ALSA converts)'
    )


def probe_hw(name: str, timeout_s: float = PROBE_TIMEOUT_S) -> DeviceReport:
    """Open a ``hw:`` device once and read what its hardware parameters offer."""
    base = PcmFormat(PROBE_RATES_HZ[1], PROBE_CHANNELS[0], PROBE_PERIOD_MS)
    try:
        pcm = open_with_timeout(name, base, timeout_s, check_format=False)
    except DeviceTimeout as exc:
        return DeviceReport(name, ProbeStatus.NO_ANSWER, (), str(exc))
    except DeviceError as exc:
        return DeviceReport(name, ProbeStatus.FAILED, (), str(exc))
    try:
        offers = offers_of(pcm, with_channels=True)
        info = pcm.info()
    finally:
        pcm.close()
    card_index, card_device = int(info.get("card_no", -1)), int(info.get("device_no", 0))
    formats = usable_formats(offers)
    if not formats:
        return DeviceReport(
            name, ProbeStatus.FAILED, (), unusable(name, offers), card_index, card_device, offers
        )
    return DeviceReport(name, ProbeStatus.OPENS, formats, "", card_index, card_device, offers)


def probe_device(name: str, timeout_s: float = PROBE_TIMEOUT_S) -> DeviceReport:
    """Probe ``name``: a ``hw:`` device by its hardware parameters (`probe_hw`), any other
    by opening it as the daemon does at every probe rate and channel count.

    Stops at the first error that concerns the device rather than the format (missing, busy,
    permission) and at the first open that does not answer.
    """
    if is_hw(name):
        return probe_hw(name, timeout_s)
    formats: list[CaptureFormat] = []
    errors: list[str] = []
    card_index, card_device = -1, 0
    for channels in PROBE_CHANNELS:
        for rate_hz in PROBE_RATES_HZ:
            try:
                # open_pcm refuses an open that would deliver another format, rate or channel
                # count (hw-backed PCMs may substitute the nearest): only exact matches count.
                pcm = open_with_timeout(
                    name, PcmFormat(rate_hz, channels, PROBE_PERIOD_MS), timeout_s
                )
            except DeviceTimeout as exc:
                return DeviceReport(name, ProbeStatus.NO_ANSWER, tuple(formats), str(exc))
            except DeviceError as exc:
                if exc.problem in _DEVICE_LEVEL_PROBLEMS and not formats:
                    return DeviceReport(name, ProbeStatus.FAILED, (), str(exc))
                errors.append(str(exc))
                continue
            try:
                info = pcm.info()
            finally:
                pcm.close()
            formats.append(CaptureFormat(rate_hz, channels))
            if card_index < 0:
                card_index = int(info.get("card_no", -1))
                card_device = int(info.get("device_no", 0))
    if not formats:
        error = errors[0] if errors else f'audio device "{name}": opens at none of the formats'
        return DeviceReport(name, ProbeStatus.FAILED, (), error)
    return DeviceReport(name, ProbeStatus.OPENS, tuple(formats), "", card_index, card_device)


def list_cards() -> list[Card]:
    """The sound cards alsa-lib sees (none on a machine without ``/dev/snd``)."""
    cards: list[Card] = []
    for index, card_id in zip(alsaaudio.card_indexes(), alsaaudio.cards(), strict=False):
        try:
            _short, long_name = alsaaudio.card_name(index)
        except alsaaudio.ALSAAudioError:
            long_name = card_id
        cards.append(Card(int(index), str(card_id), str(long_name)))
    return cards


@contextlib.contextmanager
def _quiet_stderr(enabled: bool) -> Iterator[None]:
    """Send fd 2 to /dev/null: alsa-lib prints a dozen internal lines for each failed open,
    and the report already says what failed and why."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def describe_default(reports: Sequence[DeviceReport], cards: Sequence[Card]) -> str:
    """One sentence: what ``default`` is, or that it does not open."""
    default = next((r for r in reports if r.name == "default"), None)
    if default is None or default.status is not ProbeStatus.OPENS:
        why = default.error if default is not None else "not probed"
        return f"default: does not open ({why})"
    card = next((c for c in cards if c.index == default.card_index), None)
    if card is not None:
        return (
            f'default: opens, on card {card.index} "{card.card_id}" ({card.name}), device '
            f"{default.card_device}; the stable name for it is "
            f"plughw:CARD={card.card_id},DEV={default.card_device}"
        )
    if default.card_index >= 0:
        return f"default: opens, on card {default.card_index}, device {default.card_device}"
    return "default: opens; it is a software PCM (a plugin chain), not one sound card"


def _rates(report: DeviceReport, channels: int) -> str:
    rates = [str(f.rate_hz) for f in report.formats if f.channels == channels]
    return " ".join(rates) if rates else "-"


def _offers_text(offers: Offers) -> str:
    return offers.describe() or "nothing (no hardware parameters)"


def _offers_json(offers: Offers | None) -> dict[str, object] | None:
    if offers is None:
        return None
    return {
        "formats": list(offers.sample_formats),
        "rates_hz": list(offers.rates_hz),
        "rate_range": offers.rate_range,
        "channels": list(offers.channels),
    }


def format_table(reports: Sequence[DeviceReport], cards: Sequence[Card]) -> str:
    """The human-readable report: one row per device, then what ``default`` is, then errors."""
    header = ("DEVICE", "STATUS", "MONO RATES (Hz)", "STEREO RATES (Hz)")
    rows = [header] + [(r.name, r.status.value, _rates(r, 1), _rates(r, 2)) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append("")
    if cards:
        lines.append(
            "sound cards: " + ", ".join(f'{c.index} "{c.card_id}" ({c.name})' for c in cards)
        )
    else:
        lines.append("sound cards: none (no /dev/snd, or no driver loaded)")
    lines.append(describe_default(reports, cards))
    offered = [r for r in reports if r.offers is not None]
    if offered:
        lines.append("")
        lines.extend(f"{r.name} offers: {_offers_text(r.offers)}" for r in offered if r.offers)
    problems = [r for r in reports if r.status is not ProbeStatus.OPENS and r.name != "default"]
    if problems:
        lines.append("")
        lines.extend(f"{r.name}: {r.error}" for r in problems)
    return "\n".join(lines)


def to_json(reports: Sequence[DeviceReport], cards: Sequence[Card]) -> str:
    """The report for machines: devices, cards and the ``default`` sentence."""
    document = {
        "devices": [
            {
                "name": r.name,
                "status": r.status.value,
                "opens": r.status is ProbeStatus.OPENS,
                "formats": [{"rate_hz": f.rate_hz, "channels": f.channels} for f in r.formats],
                "error": r.error,
                "card_index": r.card_index,
                "offers": _offers_json(r.offers),
            }
            for r in reports
        ],
        "cards": [{"index": c.index, "id": c.card_id, "name": c.name} for c in cards],
        "default": describe_default(reports, cards),
    }
    return json.dumps(document, indent=2)


NOTHING_OPENS: Final = (
    "dgd devices: no capture device opens. Check that the microphone is plugged in "
    "(`arecord -l` lists the cards the kernel sees; `lsusb` for a USB microphone), that the "
    "user running dgd is in the `audio` group (`id`), and that no other program holds the "
    "device (`fuser -v /dev/snd/*`)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgd devices",
        description="List ALSA capture devices by the names audio.device accepts, with the "
        "rates and channel counts each opens at (see docs/TOOLS.md).",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=PROBE_TIMEOUT_S,
        help=f"give up on a device whose open blocks this long (default {PROBE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--alsa-messages", action="store_true", help="show alsa-lib's own messages on stderr"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``dgd devices [--json] [--timeout-s S] [--alsa-messages]``.

    Returns 0 when at least one capture device opens, 1 when none does (with advice on
    stderr), 2 on bad usage.
    """
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if not args.timeout_s > 0:
        print("dgd devices: --timeout-s must be > 0", file=sys.stderr)
        return 2
    with _quiet_stderr(not args.alsa_messages):
        names = candidate_names(alsaaudio.pcms(alsaaudio.PCM_CAPTURE), alsaaudio.cards())
        cards = list_cards()
        reports = [probe_device(name, args.timeout_s) for name in names]
    print(to_json(reports, cards) if args.json else format_table(reports, cards))
    if any(r.status is ProbeStatus.OPENS for r in reports):
        return 0
    print(NOTHING_OPENS, file=sys.stderr)
    return 1
