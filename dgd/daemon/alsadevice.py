"""The ALSA device: opening a PCM as dgd needs it, checking what it delivers, reading it.

- ``open_pcm`` opens a non-blocking capture PCM with a ring buffer of ``ALSA_BUFFER_MS``
  and reads back what was negotiated (pyalsaaudio silently takes the nearest rate and ignores
  a refused format or channel count): anything but S16_LE at the configured rate and channels
  is refused with a ``DeviceError`` saying what the device offers and what to do.
- ``read_stream`` is the one read loop, of the daemon's capture thread and of ``dgd levels``:
  read, wait in ``poll`` for at most two reads' time, classify errors, report overruns.
- ``classify_alsa_error`` turns alsa-lib's error text into a ``DeviceProblem`` with advice.

``dgd.daemon.capture`` runs this in a thread for the daemon.
"""

from __future__ import annotations

import enum
import select
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import alsaaudio

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from dgd.core.pcm import PcmFormat

#: ALSA ring buffer of at least this long: it absorbs the capture thread waiting for trio
#: (a TLS handshake, a burst of journal writes) without an overrun.
ALSA_BUFFER_MS: Final = 500
#: -EPIPE, what pyalsaaudio's read() returns as the size after an overrun (it re-prepares).
EPIPE: Final = 32


class DeviceProblem(enum.Enum):
    """Why the audio device cannot be used, each with its own advice."""

    MISSING = "missing"
    BUSY = "busy"
    PERMISSION = "permission"
    UNPLUGGED = "unplugged"
    #: It opens, but not in the format dgd declares to Deepgram: a configuration problem
    #: that does not fix itself (the daemon retries slowly, `DeviceRetry`).
    FORMAT = "format"
    OTHER = "error"


_ADVICE: Final = {
    DeviceProblem.MISSING: "no such device: plug the microphone in or check audio.device "
    "(`dgd devices` lists the names)",
    DeviceProblem.BUSY: "the device is busy: another program is using it (`fuser -v /dev/snd/*`)",
    DeviceProblem.PERMISSION: "permission denied: the service user needs the `audio` group",
    DeviceProblem.UNPLUGGED: "the device went away (unplugged?): waiting for it to return",
    DeviceProblem.FORMAT: "it does not deliver the audio format the configuration declares",
    DeviceProblem.OTHER: "the device failed",
}


class DeviceError(Exception):
    """The audio device could not be opened or stopped working."""

    def __init__(self, device: str, problem: DeviceProblem, detail: str) -> None:
        super().__init__(f'audio device "{device}": {_ADVICE[problem]} ({detail})')
        self.device = device
        self.problem = problem
        self.detail = detail


#: Error texts of a device that went away: ENODEV ("No such device"), a PCM alsa-lib has
#: closed, and EIO ("Input/output error"), which a USB device pulled mid-read gives.
_GONE_TEXTS: Final = ("no such device", "closed", "i/o error", "input/output error")


def classify_alsa_error(device: str, exc: Exception) -> DeviceError:
    """Turn an ``alsaaudio.ALSAAudioError`` (``"<strerror> [<device>]"``) into advice."""
    text = str(exc)
    lowered = text.lower()
    if "no such file" in lowered or "unknown pcm" in lowered:
        problem = DeviceProblem.MISSING
    elif "busy" in lowered:
        problem = DeviceProblem.BUSY
    elif "permission" in lowered or "not permitted" in lowered:
        problem = DeviceProblem.PERMISSION
    elif any(gone in lowered for gone in _GONE_TEXTS):
        problem = DeviceProblem.UNPLUGGED
    else:
        problem = DeviceProblem.OTHER
    return DeviceError(device, problem, text)


def poller_for(pcm: Any) -> select.poll | None:
    """A poll object over the PCM's descriptors (None if the PCM offers none)."""
    try:
        descriptors = pcm.polldescriptors()
    except alsaaudio.ALSAAudioError:
        return None
    if not descriptors:
        return None
    poller = select.poll()
    for fd, mask in descriptors:
        poller.register(fd, mask)
    return poller


#: The longest ALSA period (one read) dgd asks for. Reading a whole frame (stream.frame_ms)
#: at a time cuts the capture thread's wake-ups from 50 to 10 a second at the default; capture
#: hardware does not all accept very long periods, and 100 ms is where the gain flattens.
MAX_READ_MS: Final = 100


def read_periods(fmt: PcmFormat, frame_ms: int) -> int:
    """Gate periods per ALSA read: as many as fit in one frame, within ``MAX_READ_MS``."""
    return max(1, min(frame_ms, MAX_READ_MS) // fmt.period_ms)


#: The one sample format dgd captures and declares to Deepgram (``encoding=linear16``).
SAMPLE_FORMAT: Final = "S16_LE"


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What an open PCM actually delivers, read back after opening: pyalsaaudio ignores a
    refused format or channel count and takes the nearest rate, without an error."""

    sample_format: str  # alsa-lib's name, e.g. "S16_LE", "S32_LE"
    rate_hz: int
    channels: int


@dataclass(frozen=True, slots=True)
class Offers:
    """What a device offers, from its hardware parameters (pyalsaaudio ``getformats`` and
    ``getrates``; channels only where they are bounded, see `offers_of`).

    Attributes:
        sample_formats: alsa-lib's format names.
        rates_hz: the discrete rates, or ``(min, max)`` when ``rate_range`` is set.
        rate_range: the device takes any rate between the two in ``rates_hz``.
        channels: the channel counts, or ``()`` when not probed.
    """

    sample_formats: tuple[str, ...]
    rates_hz: tuple[int, ...]
    rate_range: bool = False
    channels: tuple[int, ...] = ()

    def takes_rate(self, rate_hz: int) -> bool:
        if self.rate_range:
            return self.rates_hz[0] <= rate_hz <= self.rates_hz[1]
        return rate_hz in self.rates_hz

    def describe(self) -> str:
        """``formats S32_LE; rates 48000; channels 2`` (parts not known are left out)."""
        parts = []
        if self.sample_formats:
            parts.append("formats " + " ".join(self.sample_formats))
        if self.rates_hz:
            rates = (
                f"{self.rates_hz[0]}-{self.rates_hz[1]} Hz"
                if self.rate_range
                else " ".join(str(r) for r in self.rates_hz) + " Hz"
            )
            parts.append("rates " + rates)
        if self.channels:
            parts.append("channels " + " ".join(str(c) for c in self.channels))
        return "; ".join(parts)


def negotiated_of(pcm: Any) -> Negotiated:
    """Read back what an open PCM delivers (``PCM.info()``, pyalsaaudio 0.10 and newer)."""
    info = pcm.info()
    return Negotiated(str(info["format_name"]), int(info["rate"]), int(info["channels"]))


def offers_of(pcm: Any, *, with_channels: bool) -> Offers:
    """What an open PCM's device offers, from its hardware parameters.

    ``with_channels`` only for ``hw:`` devices: pyalsaaudio's ``getchannels()`` tests every
    count from the minimum to the maximum, and software PCMs (``null``, plugin chains) have
    no maximum (2**32 - 1: it would run for hours).
    """
    try:
        sample_formats = tuple(pcm.getformats())
        rates = pcm.getrates()  # one rate, a (min, max) range, or a list of rates
        channels = tuple(int(c) for c in pcm.getchannels()) if with_channels else ()
    except alsaaudio.ALSAAudioError:
        return Offers((), ())
    if isinstance(rates, int):
        return Offers(sample_formats, (rates,), False, channels)
    if isinstance(rates, tuple):
        return Offers(sample_formats, (int(rates[0]), int(rates[1])), True, channels)
    return Offers(sample_formats, tuple(int(r) for r in rates), False, channels)


def _converting_name(device: str) -> str:
    """The ``plughw:`` name for a ``hw:`` device, else a generic hint."""
    if device.startswith("hw:"):
        return f'"plug{device}"'
    return 'a "plughw:" name'


def format_mismatch(
    device: str, fmt: PcmFormat, got: Negotiated, offers: Offers | None = None
) -> DeviceError | None:
    """The error for a device that opened in another format than dgd declares, or None.

    Audio in another sample format, rate or channel count than the handshake declares would
    reach Deepgram as noise, with wrong times: such a device is refused, with what it
    delivers, what it offers, and what to do (a ``plughw:`` name converts; or set the
    ``[audio]`` keys to what it offers).
    """
    want = Negotiated(SAMPLE_FORMAT, fmt.rate_hz, fmt.channels)
    if got == want:
        return None
    fixes = [f"use {_converting_name(device)} (ALSA converts)"]
    settings = []
    if got.sample_format == SAMPLE_FORMAT or (
        offers is not None and SAMPLE_FORMAT in offers.sample_formats
    ):
        if got.rate_hz != fmt.rate_hz:
            settings.append(f"audio.rate = {got.rate_hz}")
        if got.channels != fmt.channels:
            settings.append(f"audio.channels = {got.channels}")
    if settings:
        fixes.append("set " + " and ".join(settings))
    offered = f"; it offers {offers.describe()}" if offers is not None and offers.describe() else ""
    detail = (
        f"dgd declares {SAMPLE_FORMAT}, {fmt.rate_hz} Hz, {fmt.channels} channel(s) "
        f"(audio.rate, audio.channels); it delivers {got.sample_format}, {got.rate_hz} Hz, "
        f"{got.channels} channel(s){offered}: {', or '.join(fixes)} (`dgd devices` lists what "
        "each device offers)"
    )
    return DeviceError(device, DeviceProblem.FORMAT, detail)


def open_pcm_unchecked(device: str, fmt: PcmFormat, periods_per_read: int = 1) -> Any:
    """`open_pcm` without the check of what the device delivers (for probing its offers).

    Raises:
        DeviceError: the device is missing, busy, not permitted, or fails to open.
    """
    read_ms = fmt.period_ms * periods_per_read
    periods = max(4, -(-ALSA_BUFFER_MS // read_ms))
    try:
        return alsaaudio.PCM(
            type=alsaaudio.PCM_CAPTURE,
            mode=alsaaudio.PCM_NONBLOCK,
            device=device,
            rate=fmt.rate_hz,
            channels=fmt.channels,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=fmt.period_frames * periods_per_read,
            periods=periods,
        )
    except alsaaudio.ALSAAudioError as exc:
        raise classify_alsa_error(device, exc) from exc


def open_pcm(device: str, fmt: PcmFormat, periods_per_read: int = 1) -> Any:
    """Open ``device`` for capture as S16_LE at the configured rate and channels, with an
    ALSA period (the size of one read) of ``periods_per_read`` gate periods, and make sure
    that is what it delivers.

    The PCM is opened non-blocking: pyalsaaudio holds the GIL inside ``snd_pcm_open``, and a
    blocking open of a busy ``hw:`` device waits in the kernel until it is free, which would
    freeze the whole daemon. Non-blocking, a busy device fails at once with EBUSY, and reads
    that find no period ready return nothing and are waited for with ``poll``.

    pyalsaaudio does not fail when the device refuses the format or channel count (it keeps
    what the device has) and takes the nearest rate it offers: what was negotiated is read
    back (``PCM.info()``), and a device that would deliver anything but what dgd declares
    to Deepgram is closed and refused (`format_mismatch`).

    Needs pyalsaaudio 0.10 or newer (constructor keywords, ``info()`` and ``getformats()``;
    0.8's setters are deprecated and its ``read()`` fails on Python 3.11).

    Raises:
        DeviceError: the device is missing, busy, not permitted, fails to open, or delivers
            another format (``DeviceProblem.FORMAT``).
    """
    pcm = open_pcm_unchecked(device, fmt, periods_per_read)
    try:
        got = negotiated_of(pcm)
        mismatch = None
        if got != Negotiated(SAMPLE_FORMAT, fmt.rate_hz, fmt.channels):
            mismatch = format_mismatch(
                device, fmt, got, offers_of(pcm, with_channels=device.startswith("hw:"))
            )
    except BaseException:
        pcm.close()
        raise
    if mismatch is not None:
        pcm.close()
        raise mismatch
    return pcm


def read_stream(
    pcm: Any,
    device: str,
    read_s: float,
    stop: threading.Event,
    on_read: Callable[[bytes, float], None],
    on_overrun: Callable[[float], None],
) -> None:
    """The read loop of a non-blocking capture PCM (the daemon's and ``dgd levels``'), until
    ``stop`` is set.

    Each read that returns audio is handed to ``on_read(data, read_done_s)``, ``read_done_s``
    being ``time.monotonic()`` as it returned; ``data`` is whatever the device had ready, not
    always whole periods (``CapturePipeline.feed`` joins them, in the daemon and in
    ``dgd levels``). An overrun (-EPIPE: the kernel lost audio, pyalsaaudio has re-prepared
    the PCM) is reported to ``on_overrun(at_s)`` instead, and reading goes on. When nothing
    is ready the loop waits in ``poll`` (which releases the GIL) for at most two reads' time,
    so that a stop request is seen soon. Both callbacks run in the calling thread.

    Args:
        pcm: the PCM from `open_pcm`; the caller owns it (and closes it).
        device: the ALSA PCM name, for errors.
        read_s: the duration of one read (one ALSA period).

    Raises:
        DeviceError: a read failed (`classify_alsa_error`), or returned an error other than
            an overrun.
    """
    poller = poller_for(pcm)
    wait_ms = round(read_s * 2000)
    while not stop.is_set():
        try:
            n_frames, data = pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            raise classify_alsa_error(device, exc) from exc
        if n_frames == 0 and not data:
            if poller is None or not poller.poll(wait_ms):
                time.sleep(read_s / 4)
            continue
        read_done_s = time.monotonic()  # the capture timeline; the wall clock only labels
        if n_frames < 0:
            if -n_frames != EPIPE:
                raise DeviceError(device, DeviceProblem.OTHER, f"read failed with error {n_frames}")
            on_overrun(read_done_s)
            continue
        on_read(data, read_done_s)
