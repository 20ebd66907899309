"""The command line as an operator meets it: `dgd check-config` and `dgd run` exit codes and
messages, with the device opened through real alsa-lib (an ALSA ``file`` PCM over a FIFO)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dgd.testing.fifomic import FifoMic, alsa_config_path, write_alsa_conf

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
SECRET = "clitestkey0123456789"


def dgd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dgd", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def mic_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    conf, fifo = tmp_path / "alsa.conf", tmp_path / "mic.fifo"
    write_alsa_conf(conf, "dgdcli", fifo)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")},
        "ALSA_CONFIG_PATH": alsa_config_path(conf),
        "PYTHONPATH": str(REPO),
        "DEEPGRAM_API_KEY": SECRET,
    }
    with FifoMic(fifo):
        yield env


def test_check_config_prints_the_effective_config_with_the_key_redacted(
    tmp_path: Path, mic_env: dict[str, str]
) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text('[audio]\ndevice = "dgdcli"\n[gate]\nhangover_ms = 900\n', "utf-8")
    result = dgd("check-config", "-c", str(config), env=mic_env)
    assert result.returncode == 0, result.stderr
    assert "# API key: <redacted>, from environment DEEPGRAM_API_KEY" in result.stdout
    assert "hangover_ms = 900" in result.stdout
    assert 'device = "dgdcli"' in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_check_config_names_every_bad_key_and_exits_78(
    tmp_path: Path, mic_env: dict[str, str]
) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text("[gate]\nhangover_ms = -5\n[stream]\nkeepalive_interval_s = 12\n", "utf-8")
    result = dgd("check-config", "-c", str(config), env=mic_env)
    assert result.returncode == 78
    assert "gate.hangover_ms: must be >= 0 (got -5)" in result.stderr
    assert "stream.keepalive_interval_s" in result.stderr


def test_check_config_reports_a_missing_device(tmp_path: Path, mic_env: dict[str, str]) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text('[audio]\ndevice = "nosuchmic"\n', "utf-8")
    result = dgd("check-config", "-c", str(config), env=mic_env)
    assert result.returncode == 78
    assert 'audio.device: audio device "nosuchmic": no such device' in result.stderr


def test_check_config_warns_about_a_readable_key_file(
    tmp_path: Path, mic_env: dict[str, str]
) -> None:
    key = tmp_path / "api-key"
    key.write_text(SECRET + "\n", "utf-8")
    key.chmod(0o644)
    config = tmp_path / "dgd.toml"
    config.write_text(f'[deepgram]\napi_key_file = "{key}"\n[audio]\ndevice = "dgdcli"\n', "utf-8")
    result = dgd("check-config", "-c", str(config), env=mic_env)
    assert result.returncode == 0, result.stderr
    assert f"chmod 600 {key}" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_run_exits_78_on_a_bad_config_and_says_why(tmp_path: Path, mic_env: dict[str, str]) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text("[audio]\nrate = 44100\nperiod_ms = 25\n", "utf-8")
    result = dgd("run", "-c", str(config), "--log-target", "stderr", env=mic_env)
    assert result.returncode == 78
    assert "audio.period_ms" in result.stderr
    assert "invalid configuration, not starting" in result.stderr


def test_bad_usage_exits_2(mic_env: dict[str, str]) -> None:
    assert dgd("frobnicate", env=mic_env).returncode == 2
