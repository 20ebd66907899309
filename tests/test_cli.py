"""The command line as an operator meets it: `dgd check-config` and `dgd run` exit codes and
messages, with the device opened through real alsa-lib (an ALSA ``file`` PCM over a FIFO)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dgd.cli import config_error_in
from dgd.core.config import ConfigError
from dgd.testing.fifomic import FifoMic, alsa_config_path, write_alsa_conf

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
SECRET = "clitestkey0123456789"


def dgd(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dgd", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
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


#: Nothing listens on port 1: a daemon that gets as far as connecting fails there, and retries.
UNREACHABLE_URL = "ws://127.0.0.1:1/v1/listen"
MISSING_DEVICE = 'audio.device: audio device "nosuchmic": no such device'
WAITING_FOR_DEVICE = 'device_unavailable: audio device "nosuchmic": no such device'


def test_check_config_warns_about_an_absent_device(tmp_path: Path, mic_env: dict[str, str]) -> None:
    # `dgd run` waits for an absent microphone, so check-config does not call the config bad.
    config = tmp_path / "dgd.toml"
    config.write_text('[audio]\ndevice = "nosuchmic"\n', "utf-8")
    result = dgd("check-config", "-c", str(config), env=mic_env)
    assert result.returncode == 0, result.stderr
    assert f"warning: {MISSING_DEVICE}" in result.stderr
    assert "`dgd run` waits for it (--require-device makes this an error)" in result.stderr
    assert 'device = "nosuchmic"' in result.stdout


def test_check_config_require_device_makes_an_absent_device_an_error(
    tmp_path: Path, mic_env: dict[str, str]
) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text('[audio]\ndevice = "nosuchmic"\n', "utf-8")
    result = dgd("check-config", "--require-device", "-c", str(config), env=mic_env)
    assert result.returncode == 78
    assert f"error: {MISSING_DEVICE}" in result.stderr
    assert "warning:" not in result.stderr


def test_check_config_require_device_passes_with_the_device_present(
    tmp_path: Path, mic_env: dict[str, str]
) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text('[audio]\ndevice = "dgdcli"\n', "utf-8")
    result = dgd("check-config", "--require-device", "-c", str(config), env=mic_env)
    assert result.returncode == 0, result.stderr
    assert "audio.device" not in result.stderr


def test_check_config_no_device_and_require_device_conflict(mic_env: dict[str, str]) -> None:
    assert dgd("check-config", "--no-device", "--require-device", env=mic_env).returncode == 2


def test_run_waits_for_the_absent_device_check_config_warned_about(
    tmp_path: Path, mic_env: dict[str, str]
) -> None:
    config = tmp_path / "dgd.toml"
    config.write_text(
        f'[deepgram]\nurl = "{UNREACHABLE_URL}"\n[audio]\ndevice = "nosuchmic"\n', "utf-8"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "dgd", "run", "-c", str(config), "--log-target", "stderr"],
        env=mic_env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        seen: list[str] = []
        guard = threading.Timer(20, proc.kill)  # never hang the suite on a missing line
        guard.start()
        try:
            for line in proc.stderr:
                seen.append(line)
                if WAITING_FOR_DEVICE in line:
                    break
            assert proc.poll() is None, "".join(seen)  # still running: waiting for the device
        finally:
            proc.send_signal(signal.SIGTERM)
            _, rest = proc.communicate(timeout=30)
            guard.cancel()
    assert WAITING_FOR_DEVICE in "".join(seen), "".join(seen) + rest
    assert proc.returncode == 0, "".join(seen) + rest


#: (name, config text, key file content or None for $DEEPGRAM_API_KEY, $DEEPGRAM_API_KEY,
#: the problem line): each was passed by check-config and then made `dgd run` crash (exit 1,
#: a restart loop) or run with an absurd setting. Both must now refuse it, naming the key.
MUST_REFUSE: list[tuple[str, str, str | None, str, str]] = [
    (
        "CA file missing",
        '[deepgram]\nca_file = "/nonexistent/ca.pem"\n',
        None,
        SECRET,
        "deepgram.ca_file: cannot read /nonexistent/ca.pem: No such file or directory",
    ),
    (
        "token command missing",
        '[deepgram]\nauth = "command"\ntoken_command = ["/nonexistent/dg-token", "-q"]\n',
        None,
        "",
        "deepgram.token_command: /nonexistent/dg-token does not exist",
    ),
    (
        "region and another url",
        '[deepgram]\nregion = "eu"\nurl = "ws://127.0.0.1:1/v1/listen"\n',
        None,
        SECRET,
        "deepgram.region: sets the endpoint to wss://api.eu.deepgram.com/v1/listen, but"
        ' deepgram.url says ws://127.0.0.1:1/v1/listen; keep one (got "eu")',
    ),
    (
        "port out of range",
        '[deepgram]\nurl = "ws://127.0.0.1:99999/v1/listen"\n',
        None,
        SECRET,
        "deepgram.url: the port must be a whole number between 1 and 65535, not 99999"
        ' (got "ws://127.0.0.1:99999/v1/listen")',
    ),
    (
        "unbalanced bracket",
        '[deepgram]\nurl = "ws://[::1/v1/listen"\n',
        None,
        SECRET,
        "deepgram.url: unbalanced [ ]: an IPv6 address is written in brackets,"
        ' e.g. ws://[::1]:8765/v1/listen (got "ws://[::1/v1/listen")',
    ),
    (
        "typographic quote in the key file",
        "",
        SECRET[:5] + "\u2019" + SECRET[5:],
        "",
        'character 6 of the key is "\u2019" (U+2019), RIGHT SINGLE QUOTATION MARK, which an'
        " HTTP header cannot carry",
    ),
    (
        "typographic quote in $DEEPGRAM_API_KEY",
        "",
        None,
        SECRET + "\u2019",
        '$DEEPGRAM_API_KEY: character 21 of the key is "\u2019" (U+2019), RIGHT SINGLE'
        " QUOTATION MARK, which an HTTP header cannot carry",
    ),
    (
        "replay buffer of 10 GiB",
        "[audio]\nrate = 192000\nchannels = 8\n[stream]\nreplay_buffer_s = 3600\n",
        None,
        SECRET,
        "stream.replay_buffer_s: would take 11059.2 MB of memory (audio.rate 192000 Hz x"
        " audio.channels 8 x 2 bytes x 3600 s); at most 64 MB is allowed, 20.8 s at this format"
        " (got 3600)",
    ),
    (
        "close timeout beyond the unit's stop timeout",
        "[stream]\nclose_timeout_s = 60\n",
        None,
        SECRET,
        "stream.close_timeout_s: must be <= 15.0; the shipped unit stops dgd after"
        " TimeoutStopSec=20s, which must also cover releasing the device and exiting (got 60)",
    ),
]


def refuse_case(
    tmp_path: Path, mic_env: dict[str, str], case: tuple[str, str, str | None, str, str]
) -> tuple[Path, dict[str, str], str]:
    _, text, key_file_content, env_key, problem = case
    config = tmp_path / "dgd.toml"
    if key_file_content is not None:
        key = tmp_path / "api-key"
        key.write_text(key_file_content + "\n", "utf-8")
        key.chmod(0o600)
        text = f'[deepgram]\napi_key_file = "{key}"\n' + text
        problem = f"deepgram.api_key_file: {key}: {problem}"
    if "[audio]" in text:
        text = text.replace("[audio]\n", '[audio]\ndevice = "dgdcli"\n', 1)
    else:
        text += '[audio]\ndevice = "dgdcli"\n'
    config.write_text(text, "utf-8")
    env = {**mic_env, "DEEPGRAM_API_KEY": env_key}
    if not env_key:
        del env["DEEPGRAM_API_KEY"]
    return config, env, problem


@pytest.mark.parametrize("case", MUST_REFUSE, ids=[case[0] for case in MUST_REFUSE])
def test_check_config_refuses_what_run_would_fail_on(
    tmp_path: Path, mic_env: dict[str, str], case: tuple[str, str, str | None, str, str]
) -> None:
    config, env, problem = refuse_case(tmp_path, mic_env, case)
    result = dgd("check-config", "-c", str(config), env=env)
    assert result.returncode == 78, result.stderr
    assert problem in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("case", MUST_REFUSE, ids=[case[0] for case in MUST_REFUSE])
def test_run_refuses_it_too_with_exit_78_and_the_same_message(
    tmp_path: Path, mic_env: dict[str, str], case: tuple[str, str, str | None, str, str]
) -> None:
    config, env, problem = refuse_case(tmp_path, mic_env, case)
    result = dgd("run", "-c", str(config), "--log-target", "stderr", env=env, timeout=20)
    assert result.returncode == 78, result.stderr
    assert "invalid configuration, not starting" in result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_config_error_from_inside_the_daemon_is_exit_78_material() -> None:
    # trio hands run() what a task raised wrapped in an ExceptionGroup.
    inner = ConfigError(["deepgram.url: one", "stream.x: two"])
    group = ExceptionGroup("tasks", [ExceptionGroup("nursery", [inner])])
    found = config_error_in(group)
    assert found is not None
    assert found.problems == ("deepgram.url: one", "stream.x: two")
    assert config_error_in(inner) is inner
    assert config_error_in(ValueError("x")) is None
    assert config_error_in(ExceptionGroup("tasks", [inner, ValueError("x")])) is None


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
