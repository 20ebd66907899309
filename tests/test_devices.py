"""`dgd devices`: the pure naming and reporting, and the command through real alsa-lib with
``type file`` PCMs defined by an ALSA config (dgd/testing/fifomic.py); there is no sound card
here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dgd.tools.devices import (
    CaptureFormat,
    Card,
    DeviceReport,
    ProbeStatus,
    candidate_names,
    describe_default,
    format_table,
)

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
