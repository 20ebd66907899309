"""`dgd devices` and the capture-format check: the pure naming, reporting, comparison and
advice, and the command through real alsa-lib with PCMs defined by an ALSA config (``type
file`` PCMs as in dgd/testing/fifomic.py, and a ``type mulaw`` PCM that refuses S16_LE);
there is no sound card here (the snd-aloop test runs only where that module is loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import alsaaudio
import pytest
import trio

from dgd.core.backoff import DEVICE_MISCONFIGURED_RETRY_S, DeviceRetry
from dgd.core.config import Config
from dgd.core.pcm import PcmFormat
from dgd.core.pipeline import make_pipeline
from dgd.core.status import StatusBoard
from dgd.daemon.alsadevice import (
    DeviceError,
    DeviceProblem,
    Negotiated,
    Offers,
    format_mismatch,
    open_pcm,
    open_pcm_unchecked,
)
from dgd.daemon.microphone import Microphone
from dgd.tools.devices import (
    CaptureFormat,
    Card,
    DeviceReport,
    ProbeStatus,
    candidate_names,
    describe_default,
    format_table,
    probe_hw,
    to_json,
    unusable,
    usable_formats,
)

if TYPE_CHECKING:
    from dgd.daemon.capture import SourceSpec

MAIN = Path(__file__).resolve().parent.parent
ALL_FORMATS = tuple(
    CaptureFormat(rate, channels) for channels in (1, 2) for rate in (8000, 16000, 44100, 48000)
)


@pytest.mark.parametrize(
    ("hinted", "cards", "expected"),
    [
        ([], [], ["default"]),
        (["null"], [], ["default"]),
        (["null", "testcap", "default"], [], ["default", "testcap"]),
        (
            ["null", "default", "sysdefault:CARD=Device", "hw:CARD=Device,DEV=0"],
            ["Device"],
            [
                "default",
                "sysdefault:CARD=Device",
                "hw:CARD=Device,DEV=0",
                "plughw:CARD=Device,DEV=0",
            ],
        ),
        (
            [],
            ["Device", "Headphones"],
            [
                "default",
                "plughw:CARD=Device,DEV=0",
                "hw:CARD=Device,DEV=0",
                "plughw:CARD=Headphones,DEV=0",
                "hw:CARD=Headphones,DEV=0",
            ],
        ),
    ],
)
def test_candidate_names(hinted: list[str], cards: list[str], expected: list[str]) -> None:
    assert candidate_names(hinted, cards) == expected


USB = Card(1, "Device", "USB PnP Sound Device")


@pytest.mark.parametrize(
    ("default", "cards", "expected"),
    [
        (
            DeviceReport("default", ProbeStatus.OPENS, ALL_FORMATS, "", 1, 0),
            [USB],
            'default: opens, on card 1 "Device" (USB PnP Sound Device), device 0; the stable '
            "name for it is plughw:CARD=Device,DEV=0",
        ),
        (
            DeviceReport("default", ProbeStatus.OPENS, ALL_FORMATS, "", 2, 3),
            [USB],
            "default: opens, on card 2, device 3",
        ),
        (
            DeviceReport("default", ProbeStatus.OPENS, ALL_FORMATS),
            [],
            "default: opens; it is a software PCM (a plugin chain), not one sound card",
        ),
        (
            DeviceReport("default", ProbeStatus.FAILED, (), "no such device"),
            [],
            "default: does not open (no such device)",
        ),
        (None, [], "default: does not open (not probed)"),
    ],
)
def test_describe_default(default: DeviceReport | None, cards: list[Card], expected: str) -> None:
    others = [DeviceReport("mic", ProbeStatus.OPENS, ALL_FORMATS)]
    reports = others if default is None else [default, *others]
    assert describe_default(reports, cards) == expected


def test_format_table() -> None:
    reports = [
        DeviceReport("default", ProbeStatus.FAILED, (), "nope"),
        DeviceReport(
            "plughw:CARD=Device,DEV=0",
            ProbeStatus.OPENS,
            (CaptureFormat(16000, 1), CaptureFormat(48000, 1), CaptureFormat(48000, 2)),
        ),
        DeviceReport("fifo", ProbeStatus.NO_ANSWER, (), "it did not answer"),
    ]
    assert format_table(reports, [USB]).splitlines() == [
        "DEVICE                    STATUS          MONO RATES (Hz)  STEREO RATES (Hz)",
        "default                   fails           -                -",
        "plughw:CARD=Device,DEV=0  opens           16000 48000      48000",
        "fifo                      did not answer  -                -",
        "",
        'sound cards: 1 "Device" (USB PnP Sound Device)',
        "default: does not open (nope)",
        "",
        "fifo: it did not answer",
    ]


# --------------------------------------------------------------- the capture-format check

FMT = PcmFormat(16000, 1, 20)
HW = "hw:CARD=Mic,DEV=0"
S16 = Negotiated("S16_LE", 16000, 1)
I2S = Offers(("S32_LE",), (48000,), False, (2,))
USB48 = Offers(("S16_LE", "S24_3LE"), (44100, 48000), False, (1, 2))
TAIL = " (`dgd devices` lists what each device offers))"


@pytest.mark.parametrize(
    ("device", "got", "offers", "expected"),
    [
        (HW, S16, None, None),
        (
            HW,
            Negotiated("S32_LE", 48000, 2),
            I2S,
            f'audio device "{HW}": it does not deliver the audio format the configuration '
            "declares (dgd declares S16_LE, 16000 Hz, 1 channel(s) (audio.rate, audio.channels);"
            " it delivers S32_LE, 48000 Hz, 2 channel(s); it offers formats S32_LE; rates "
            '48000 Hz; channels 2: use "plughw:CARD=Mic,DEV=0" (ALSA converts)' + TAIL,
        ),
        (
            HW,
            Negotiated("S16_LE", 48000, 1),
            USB48,
            f'audio device "{HW}": it does not deliver the audio format the configuration '
            "declares (dgd declares S16_LE, 16000 Hz, 1 channel(s) (audio.rate, audio.channels);"
            " it delivers S16_LE, 48000 Hz, 1 channel(s); it offers formats S16_LE S24_3LE; "
            'rates 44100 48000 Hz; channels 1 2: use "plughw:CARD=Mic,DEV=0" (ALSA converts), '
            "or set audio.rate = 48000" + TAIL,
        ),
        (
            "dsnoop:Mic",
            Negotiated("S16_LE", 16000, 2),
            None,
            'audio device "dsnoop:Mic": it does not deliver the audio format the configuration '
            "declares (dgd declares S16_LE, 16000 Hz, 1 channel(s) (audio.rate, audio.channels);"
            ' it delivers S16_LE, 16000 Hz, 2 channel(s): use a "plughw:" name (ALSA converts),'
            " or set audio.channels = 2" + TAIL,
        ),
        (
            # the device fell back to S24_3LE at 48 kHz but offers S16_LE: both keys can change
            HW,
            Negotiated("S24_3LE", 48000, 2),
            USB48,
            f'audio device "{HW}": it does not deliver the audio format the configuration '
            "declares (dgd declares S16_LE, 16000 Hz, 1 channel(s) (audio.rate, audio.channels);"
            " it delivers S24_3LE, 48000 Hz, 2 channel(s); it offers formats S16_LE S24_3LE; "
            'rates 44100 48000 Hz; channels 1 2: use "plughw:CARD=Mic,DEV=0" (ALSA converts), '
            "or set audio.rate = 48000 and audio.channels = 2" + TAIL,
        ),
        (
            # no S16_LE at all: changing audio.rate would not help, only conversion does
            "mulawmic",
            Negotiated("MU_LAW", 8000, 1),
            Offers(("MU_LAW",), (4000, 192000), True),
            'audio device "mulawmic": it does not deliver the audio format the configuration '
            "declares (dgd declares S16_LE, 16000 Hz, 1 channel(s) (audio.rate, audio.channels);"
            " it delivers MU_LAW, 8000 Hz, 1 channel(s); it offers formats MU_LAW; rates "
            '4000-192000 Hz: use a "plughw:" name (ALSA converts)' + TAIL,
        ),
    ],
)
def test_format_mismatch(
    device: str, got: Negotiated, offers: Offers | None, expected: str | None
) -> None:
    error = format_mismatch(device, FMT, got, offers)
    if expected is None:
        assert error is None
        return
    assert error is not None
    assert error.problem is DeviceProblem.FORMAT
    assert error.device == device
    assert str(error) == expected


@pytest.mark.parametrize(
    ("offers", "rate_hz", "takes", "text"),
    [
        (I2S, 48000, True, "formats S32_LE; rates 48000 Hz; channels 2"),
        (I2S, 16000, False, "formats S32_LE; rates 48000 Hz; channels 2"),
        (
            Offers(("S16_LE",), (8000, 48000), True),
            16000,
            True,
            "formats S16_LE; rates 8000-48000 Hz",
        ),
        (
            Offers(("S16_LE",), (8000, 48000), True),
            96000,
            False,
            "formats S16_LE; rates 8000-48000 Hz",
        ),
        (Offers((), ()), 16000, False, ""),
    ],
)
def test_offers(offers: Offers, rate_hz: int, takes: bool, text: str) -> None:
    assert offers.takes_rate(rate_hz) is takes
    assert offers.describe() == text


@pytest.mark.parametrize(
    ("offers", "expected"),
    [
        (I2S, ()),  # no S16_LE
        (USB48, tuple(CaptureFormat(r, c) for c in (1, 2) for r in (44100, 48000))),
        (
            Offers(("S16_LE", "S32_LE"), (8000, 96000), True, (2, 4)),
            tuple(CaptureFormat(r, 2) for r in (8000, 16000, 44100, 48000)),
        ),
        (Offers(("S16_LE",), (16000,), False, ()), ()),  # channels unknown: nothing usable
    ],
)
def test_usable_formats_of_a_hw_device(offers: Offers, expected: tuple[CaptureFormat, ...]) -> None:
    assert usable_formats(offers) == expected


def test_unusable_hw_device_advice() -> None:
    assert unusable(HW, I2S) == (
        f'audio device "{HW}": offers none of the formats dgd captures (S16_LE at 8000 16000 '
        "44100 48000 Hz, 1 or 2 channels); it offers formats S32_LE; rates 48000 Hz; channels "
        '2: use "plughw:CARD=Mic,DEV=0" (ALSA converts)'
    )


def test_offers_in_table_and_json() -> None:
    reports = [DeviceReport(HW, ProbeStatus.FAILED, (), unusable(HW, I2S), 1, 0, I2S)]
    lines = format_table(reports, [USB]).splitlines()
    assert f"{HW} offers: formats S32_LE; rates 48000 Hz; channels 2" in lines
    assert f"{HW}: {unusable(HW, I2S)}" in lines
    device = json.loads(to_json(reports, [USB]))["devices"][0]
    assert device["offers"] == {
        "formats": ["S32_LE"],
        "rates_hz": [48000],
        "rate_range": False,
        "channels": [2],
    }


def test_device_retry_is_slow_for_a_misconfigured_device() -> None:
    retry = DeviceRetry(0.5, 10.0)
    assert [retry.failed() for _ in range(3)] == [0.5, 1.0, 2.0]
    # a wrong format does not fix itself: slow, and it does not disturb the doubling
    assert retry.failed(misconfigured=True) == DEVICE_MISCONFIGURED_RETRY_S == 60.0
    assert retry.failed() == 4.0


class _WrongFormatSource:
    """An opening of a device that always delivers the wrong format."""

    def __init__(self, spec: SourceSpec, openings: list[float]) -> None:
        self.device = spec.device
        self.released = trio.Event()
        openings.append(trio.current_time())

    async def capture(self) -> None:
        self.released.set()
        raise DeviceError(self.device, DeviceProblem.FORMAT, "it delivers S32_LE")

    def stop(self) -> None:
        pass


async def test_the_daemon_retries_a_wrong_format_slowly_and_a_reload_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    openings: list[float] = []
    config = Config()
    status = StatusBoard()
    stopping = trio.Event()
    mic = Microphone(
        config=lambda: config,
        pipeline=make_pipeline(config),
        deliver=lambda _output: None,
        status=status,
        publish_status=lambda: None,
        open_source=lambda spec: _WrongFormatSource(spec, openings),
        clock=trio.current_time,
        stopping=stopping,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mic.run)
        await trio.sleep(150)
        assert openings == [0, 60, 120]  # not the 0.5 s doubling to 10 s of a missing device
        assert status.device == 'audio device "default" does not deliver the configured format'
        assert not status.device_ok
        assert mic.check()  # waiting on the configuration is not a hang: the watchdog is fed
        await trio.sleep(5)
        await mic.reopen()  # SIGHUP after fixing the config: try again now, not in 55 s
        await trio.sleep(1)
        assert openings[3:] == [155]
        stopping.set()


# --------------------------------------------------------------------------- real ALSA


def _pcm(name: str, infile: Path) -> str:
    return (
        f'pcm.{name} {{ type file; slave.pcm "null"; file "/dev/null"; '
        f'infile "{infile}"; format "raw" }}\n'
    )


def _env(conf: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}", PYTHONPATH=str(MAIN))
    return env


def devices(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dgd", "devices", *args],
        cwd=MAIN,
        env=_env(conf),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A mic over a real raw file, one whose infile is missing, and a plug wrapper."""
    (tmp_path / "mic.raw").write_bytes(bytes(64000))
    path = tmp_path / "test.conf"
    path.write_text(
        _pcm("testmic", tmp_path / "mic.raw")
        + _pcm("gonemic", tmp_path / "missing.raw")
        + 'pcm.plugmic { type plug; slave.pcm "testmic" }\n'
    )
    return path


def test_lists_devices_with_rates_and_channels(conf: Path) -> None:
    done = devices(conf)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:] if line}
    every = ["8000", "16000", "44100", "48000"]
    assert rows["testmic"] == ["testmic", "opens", *every, *every]
    assert rows["plugmic"] == ["plugmic", "opens", *every, *every]
    assert rows["gonemic"] == ["gonemic", "fails", "-", "-"]
    assert rows["default"] == ["default", "fails", "-", "-"]
    assert "null" not in rows  # always opens, returns garbage: not a microphone
    assert "sound cards: none" in done.stdout
    assert "default: does not open (" in done.stdout
    assert 'gonemic: audio device "gonemic": no such device' in done.stdout
    # alsa-lib's own chatter about the failed opens is kept off the terminal
    assert "ALSA lib" not in done.stderr


def test_json(conf: Path) -> None:
    done = devices(conf, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_name = {d["name"]: d for d in report["devices"]}
    assert list(by_name) == ["default", "testmic", "gonemic", "plugmic"]
    assert by_name["testmic"]["status"] == "opens"
    assert by_name["testmic"]["opens"] is True
    assert by_name["testmic"]["formats"] == [
        {"rate_hz": rate, "channels": channels}
        for channels in (1, 2)
        for rate in (8000, 16000, 44100, 48000)
    ]
    assert by_name["gonemic"]["opens"] is False
    assert "plug the microphone in" in by_name["gonemic"]["error"]
    assert report["cards"] == []
    assert report["default"].startswith("default: does not open")


def test_default_defined_by_config_is_reported(conf: Path) -> None:
    conf.write_text(conf.read_text() + 'pcm.!default { type plug; slave.pcm "testmic" }\n')
    done = devices(conf)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:2] == ["default", "opens"]
    assert "default: opens; it is a software PCM (a plugin chain), not one sound card" in (
        done.stdout
    )


def test_nothing_opens_exits_1_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "test.conf"
    path.write_text(_pcm("gonemic", tmp_path / "missing.raw"))
    done = devices(path)
    assert done.returncode == 1
    assert "gonemic  fails" in done.stdout
    assert "no capture device opens" in done.stderr
    for hint in ("plugged in", "arecord -l", "`audio` group"):
        assert hint in done.stderr
    assert "ALSA lib" not in done.stderr
    loud = devices(path, "--alsa-messages")
    assert loud.returncode == 1
    assert "ALSA lib pcm_file.c" in loud.stderr


def test_a_device_that_blocks_on_open_did_not_answer(tmp_path: Path, conf: Path) -> None:
    """A FIFO infile with no writer blocks alsa-lib's open: the probe gives up on it."""
    os.mkfifo(tmp_path / "mic.fifo")
    conf.write_text(_pcm("fifomic", tmp_path / "mic.fifo") + conf.read_text())
    done = devices(conf, "--timeout-s", "0.3", "--json")
    assert done.returncode == 0, done.stderr
    by_name = {d["name"]: d for d in json.loads(done.stdout)["devices"]}
    assert by_name["fifomic"]["status"] == "did not answer"
    assert 'audio device "fifomic" did not answer within 0.3 s' in by_name["fifomic"]["error"]
    # the devices probed after it still answer
    assert list(by_name).index("fifomic") < list(by_name).index("testmic")
    assert by_name["testmic"]["status"] == "opens"


@pytest.mark.parametrize("args", [["--timeout-s", "0"], ["--bogus"]])
def test_bad_usage_exits_2(conf: Path, args: list[str]) -> None:
    assert devices(conf, *args).returncode == 2


# ------------------------------------------------- real ALSA: a device in another format

#: A capture PCM that cannot deliver S16_LE: alsa-lib's mu-law plugin over a 16-bit slave
#: offers only MU_LAW to its client. pyalsaaudio opens it without an error, as MU_LAW.
MULAW = 'pcm.mulawmic { type mulaw; slave { pcm "null"; format S16_LE } }\n'


@pytest.fixture
def mulaw_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mulaw.conf"
    path.write_text(MULAW + 'pcm.plugmulaw { type plug; slave.pcm "mulawmic" }\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{path}")
    return path


def test_pyalsaaudio_silently_opens_in_another_format(mulaw_env: Path) -> None:
    # Why the check exists: the open "succeeds", in a format dgd did not ask for.
    pcm = open_pcm_unchecked("mulawmic", FMT)
    try:
        info = pcm.info()
        assert (info["format_name"], info["rate"], info["channels"]) == ("MU_LAW", 16000, 1)
        assert list(pcm.getformats()) == ["MU_LAW"]
    finally:
        pcm.close()


def test_open_pcm_refuses_a_device_in_another_format(mulaw_env: Path) -> None:
    with pytest.raises(DeviceError) as caught:
        open_pcm("mulawmic", FMT)
    assert caught.value.problem is DeviceProblem.FORMAT
    text = str(caught.value)
    assert "it delivers MU_LAW, 16000 Hz, 1 channel(s); it offers formats MU_LAW;" in text
    assert 'use a "plughw:" name (ALSA converts)' in text
    # the same device through a converting plug opens, as S16_LE
    pcm = open_pcm("plugmulaw", FMT)
    try:
        assert pcm.info()["format_name"] == "S16_LE"
    finally:
        pcm.close()


def test_devices_and_check_config_report_a_device_in_another_format(
    tmp_path: Path, conf: Path
) -> None:
    conf.write_text(conf.read_text() + MULAW)
    done = devices(conf, "--json")
    assert done.returncode == 0, done.stderr
    by_name = {d["name"]: d for d in json.loads(done.stdout)["devices"]}
    assert by_name["mulawmic"]["status"] == "fails"
    assert "it delivers MU_LAW" in by_name["mulawmic"]["error"]
    assert by_name["testmic"]["status"] == "opens"
    config = tmp_path / "dgd.toml"
    config.write_text('[audio]\ndevice = "mulawmic"\n', "utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "dgd", "check-config", "-c", str(config)],
        cwd=MAIN,
        env={**_env(conf), "DEEPGRAM_API_KEY": "0123456789abcdef0123456789abcdef01234567"},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert checked.returncode == 78, checked.stderr
    assert 'error: audio.device: audio device "mulawmic": it does not deliver' in checked.stderr
    assert "it delivers MU_LAW" in checked.stderr
    assert "warning: audio.device" not in checked.stderr  # not "absent": an error


LOOPBACK = Path("/proc/asound/Loopback")


@pytest.mark.skipif(not LOOPBACK.exists(), reason="snd-aloop is not loaded (modprobe snd-aloop)")
def test_a_hw_device_restricted_by_its_hardware(tmp_path: Path) -> None:
    """snd-aloop: once the playback side runs at S32_LE, 48 kHz, stereo, its capture side
    offers only that (a real hw device with restricted parameters)."""
    player = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        device="hw:CARD=Loopback,DEV=0",
        rate=48000,
        channels=2,
        format=alsaaudio.PCM_FORMAT_S32_LE,
        periodsize=960,
        periods=4,
    )
    try:
        player.write(bytes(960 * 8))
        report = probe_hw("hw:CARD=Loopback,DEV=1")
        assert report.offers is not None
        assert report.offers.sample_formats == ("S32_LE",)
        assert report.offers.takes_rate(48000)
        assert not report.offers.takes_rate(16000)
        assert report.offers.channels == (2,)
        assert report.status is ProbeStatus.FAILED
        with pytest.raises(DeviceError) as caught:
            open_pcm("hw:CARD=Loopback,DEV=1", FMT)
        assert caught.value.problem is DeviceProblem.FORMAT
        assert "it delivers S32_LE, 48000 Hz, 2 channel(s)" in str(caught.value)
        assert '"plughw:CARD=Loopback,DEV=1"' in str(caught.value)
    finally:
        player.close()
