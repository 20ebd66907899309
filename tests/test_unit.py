"""Checks of the shipped systemd unit, systemd/dgd.service, with the real systemd-analyze.

systemd-analyze needs no running systemd. Its `verify` exits 0 even on unknown
keys and unparsable values and only prints a warning, so every check here asserts on stderr too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parent.parent
UNIT_PATH: Final = REPO / "systemd" / "dgd.service"
SHIPPED_BINARY: Final = "/opt/dgd/bin/dgd"
# The exposure score `systemd-analyze security` gives the unit must stay at or below this.
MAX_EXPOSURE: Final = 2.0
# stream.close_timeout_s defaults to 5 s; TimeoutStopSec must leave room for the drain after it.
CLOSE_TIMEOUT_DEFAULT_S: Final = 5.0

ANALYZE: Final = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)"
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Parse unit-file text into {section: {key: [values in file order]}}.

    Comment and blank lines are skipped. Line continuations are not supported, and the
    shipped unit must not use them (asserted in test_unit_has_one_comment_per_option).
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = unit.setdefault(stripped[1:-1], {})
            continue
        key, sep, value = stripped.partition("=")
        assert sep == "=", f"not a key=value line: {line!r}"
        assert section is not None, f"option outside any section: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def write_testable_copy(tmp_path: Path, text: str, name: str = "dgd.service") -> Path:
    """Write `text` with ExecStart's binary swapped for one that exists on this machine.

    verify refuses a unit whose ExecStart binary is missing, and /opt/dgd is
    not installed here; every other byte stays as shipped.
    """
    rewritten = text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={sys.executable} ")
    old_lines, new_lines = text.splitlines(), rewritten.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert len(changed) == 1, f"the ExecStart rewrite changed lines {changed}, expected one"
    assert new_lines[changed[0]].startswith(f"ExecStart={sys.executable} ")
    path = tmp_path / name
    path.write_text(rewritten)
    return path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def unit_text() -> str:
    return UNIT_PATH.read_text()


@pytest.fixture
def unit(unit_text: str) -> Unit:
    return parse_unit(unit_text)


def test_verify_is_silent(tmp_path: Path, unit_text: str) -> None:
    # No --man=no: the unit has no Documentation=man:... entry for verify to look up.
    path = write_testable_copy(tmp_path, unit_text)
    result = analyze("verify", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@pytest.mark.parametrize(
    ("old", "new", "expected_stderr"),
    [
        ("ProtectSystem=strict", "ProtectSytem=strict", "Unknown key 'ProtectSytem'"),
        # systemd 252: "Failed to parse sec value, ignoring: thirty";
        # 257 (Debian 13): "Failed to parse WatchdogSec=thirty, ignoring: Invalid argument".
        ("WatchdogSec=30s", "WatchdogSec=thirty", "thirty"),
        ("RestrictAddressFamilies=AF_UNIX ", "RestrictAddressFamilies=AF_BOGUS ", "AF_BOGUS"),
        ("LimitCORE=0", "LimitCORE=lots", "lots"),
    ],
)
def test_verify_reports_a_broken_copy(
    tmp_path: Path, unit_text: str, old: str, new: str, expected_stderr: str
) -> None:
    # Proves test_verify_is_silent can fail: these mistakes exit 0 and only warn on stderr.
    assert unit_text.count(old) == 1
    path = write_testable_copy(tmp_path, unit_text.replace(old, new))
    result = analyze("verify", str(path), cwd=tmp_path)
    assert expected_stderr in result.stderr


def exposure_level(stdout: str) -> float:
    match = re.search(r"Overall exposure level for dgd\.service: (\d+\.\d+)", stdout)
    assert match is not None, f"no exposure level in:\n{stdout}"
    return float(match.group(1))


def test_security_exposure_is_low(tmp_path: Path, unit_text: str) -> None:
    path = write_testable_copy(tmp_path, unit_text)
    threshold = str(round(MAX_EXPOSURE * 10))  # --threshold compares against the score x10
    result = analyze(
        "security", "--offline=true", f"--threshold={threshold}", str(path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert exposure_level(result.stdout) <= MAX_EXPOSURE


def test_security_threshold_fails_a_weak_unit(tmp_path: Path) -> None:
    # Proves the threshold check can fail: a bare unit scores about 9.6.
    path = tmp_path / "dgd.service"
    path.write_text(f"[Service]\nExecStart={sys.executable} -c pass\n")
    result = analyze("security", "--offline=true", "--threshold=20", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert exposure_level(result.stdout) > MAX_EXPOSURE


REQUIRED: Final[list[tuple[str, str, list[str]]]] = [
    ("Unit", "After", ["network.target sound.target", "modprobe@snd.service"]),
    ("Unit", "Wants", ["modprobe@snd.service"]),
    ("Unit", "ConditionPathExists", ["/etc/dgd/api-key"]),
    ("Service", "Type", ["notify"]),
    ("Service", "NotifyAccess", ["main"]),
    ("Service", "ExecStart", [f"{SHIPPED_BINARY} run --config /etc/dgd.toml"]),
    ("Service", "ExecReload", ["/bin/kill -HUP $MAINPID"]),
    ("Service", "WatchdogSec", ["30s"]),
    ("Service", "Restart", ["on-failure"]),
    ("Service", "RestartSec", ["2s"]),
    ("Service", "RestartPreventExitStatus", ["78"]),
    ("Service", "LoadCredential", ["deepgram-api-key:/etc/dgd/api-key"]),
    ("Service", "LimitCORE", ["0"]),
    ("Service", "StateDirectory", ["dgd"]),
    ("Service", "SyslogIdentifier", ["dgd"]),
    ("Service", "Environment", ["PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"]),
    ("Service", "DynamicUser", ["yes"]),
    ("Service", "SupplementaryGroups", ["audio"]),
    ("Service", "NoNewPrivileges", ["yes"]),
    ("Service", "ProtectSystem", ["strict"]),
    ("Service", "ProtectHome", ["yes"]),
    ("Service", "PrivateTmp", ["yes"]),
    ("Service", "DevicePolicy", ["closed"]),
    ("Service", "DeviceAllow", ["char-alsa rw"]),
    ("Service", "PrivateDevices", ["no"]),
    ("Service", "PrivateUsers", ["no"]),
    ("Service", "RestrictAddressFamilies", ["AF_UNIX AF_INET AF_INET6"]),
    ("Service", "SystemCallFilter", ["@system-service", "~@privileged @resources"]),
    ("Install", "WantedBy", ["multi-user.target"]),
]


@pytest.mark.parametrize(("section", "key", "values"), REQUIRED)
def test_required_option(unit: Unit, section: str, key: str, values: list[str]) -> None:
    assert unit[section].get(key) == values


@pytest.mark.parametrize("key", ["Wants", "Requires", "BindsTo", "Requisite"])
def test_no_hard_dependency_on_network_or_sound(unit: Unit, key: str) -> None:
    # dgd waits for the network and the microphone itself; pulling targets in would only
    # delay boot (network-online.target) or tie dgd's life to them. The one thing pulled in
    # (Wants=, never Requires=) is loading the sound core, so DeviceAllow=char-alsa resolves.
    pulled = " ".join(unit["Unit"].get(key, [])).split()
    assert [name for name in pulled if name.endswith(".target")] == []
    assert set(pulled) <= ({"modprobe@snd.service"} if key == "Wants" else set())


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match is not None, f"unexpected time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_stop_timeout_leaves_room_for_the_graceful_close(unit: Unit) -> None:
    [stop] = unit["Service"]["TimeoutStopSec"]
    assert seconds(stop) >= 2 * CLOSE_TIMEOUT_DEFAULT_S


def test_watchdog_leaves_room_between_pings(unit: Unit) -> None:
    # dgd pings every WATCHDOG_USEC/2; a 30 s budget absorbs a slow Pi without false restarts.
    [watchdog] = unit["Service"]["WatchdogSec"]
    assert seconds(watchdog) >= 10


def test_unit_has_one_comment_per_option(unit_text: str) -> None:
    lines = unit_text.splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith(("#", ";")):
            assert not line.rstrip().endswith("\\"), f"line {number + 1}: no continuations"
            assert lines[number - 1].startswith("#"), f"line {number + 1} has no comment: {line}"


# ---- the notify-reload drop-in (systemd >= 253) ----------------------------------------------

DROP_IN_PATH: Final = REPO / "systemd" / "notify-reload.conf"
#: The first systemd with Type=notify-reload and ReloadSignal=.
NOTIFY_RELOAD_SINCE: Final = 253


def analyze_version() -> int:
    """The major version of this machine's systemd-analyze ("systemd 252 (252.39-1~deb12u2)")."""
    result = subprocess.run(
        [str(ANALYZE), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    match = re.match(r"systemd (\d+)", result.stdout)
    assert match is not None, result.stdout
    return int(match.group(1))


def test_drop_in_switches_to_notify_reload() -> None:
    text = DROP_IN_PATH.read_text()
    assert parse_unit(text) == {
        "Service": {"Type": ["notify-reload"], "ReloadSignal": ["SIGHUP"], "ExecReload": [""]}
    }
    test_unit_has_one_comment_per_option(text)


def test_the_unit_itself_stays_portable(unit: Unit) -> None:
    # systemd 252 (Debian 12) warns on Type=notify-reload and ReloadSignal=: the main unit must
    # work on every systemd, and the drop-in alone carries what needs 253.
    assert unit["Service"]["Type"] == ["notify"]
    assert "ReloadSignal" not in unit["Service"]


def test_verify_with_the_drop_in(tmp_path: Path, unit_text: str) -> None:
    """Silent where systemd has notify-reload; on older systemd (this Debian 12 host) verify
    names exactly why install.sh must not install the drop-in there."""
    path = write_testable_copy(tmp_path, unit_text)
    (tmp_path / "dgd.service.d").mkdir()
    shutil.copy(DROP_IN_PATH, tmp_path / "dgd.service.d" / "notify-reload.conf")
    result = analyze("verify", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if analyze_version() >= NOTIFY_RELOAD_SINCE:
        assert (result.stderr, result.stdout) == ("", "")
    else:
        assert "Failed to parse service type, ignoring: notify-reload" in result.stderr
        assert "Unknown key 'ReloadSignal'" in result.stderr


def test_verify_reads_the_drop_in(tmp_path: Path, unit_text: str) -> None:
    # Proves test_verify_with_the_drop_in can fail: verify reads dgd.service.d/ beside the unit.
    path = write_testable_copy(tmp_path, unit_text)
    (tmp_path / "dgd.service.d").mkdir()
    (tmp_path / "dgd.service.d" / "notify-reload.conf").write_text("[Service]\nReloadSignl=1\n")
    result = analyze("verify", str(path), cwd=tmp_path)
    assert "Unknown key 'ReloadSignl'" in result.stderr


# Runs in a child so that the prctl stays there. PR_SET_MDWE (Linux >= 6.3) is the kernel's
# own form of MemoryDenyWriteExecute=yes: no mapping may be writable and executable at once.
MDWE_PROBE: Final = textwrap.dedent(
    """
    import ctypes, mmap, ssl, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("unsupported", ctypes.get_errno()); sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("a writable+executable mapping was allowed: MDWE is not in force")
    except PermissionError:
        pass
    import alsaaudio, systemd.daemon, systemd.journal, tomllib, trio, trio_websocket
    import dgd

    async def handler(request):
        ws = await request.accept()
        try:
            await ws.send_message(await ws.get_message())
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    async def main():
        assert await trio.to_thread.run_sync(sum, [1, 2]) == 3
        ssl.create_default_context()
        async with trio.open_nursery() as nursery:
            serve = trio_websocket.serve_websocket
            server = await nursery.start(serve, handler, "127.0.0.1", 0, None)
            url = f"ws://127.0.0.1:{server.port}/"
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(b"pcm")
                assert await ws.get_message() == b"pcm"
            nursery.cancel_scope.cancel()

    trio.run(main)
    alsaaudio.pcms(alsaaudio.PCM_CAPTURE)
    print("ok")
    """
)


def test_dependency_stack_runs_without_writable_executable_memory() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", MDWE_PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.stdout.startswith("unsupported"):
        pytest.skip(f"this kernel has no PR_SET_MDWE (errno {result.stdout.split()[1]})")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
