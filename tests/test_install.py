"""Runs systemd/install.sh for real into a temporary root (--root) and checks what it leaves.

The --debian path is used with --no-apt: the venv is made from Debian's /usr/bin/python3 with
--system-site-packages and dgd is installed with --no-deps --no-index --no-build-isolation, so
nothing is fetched from the network and nothing is compiled. The --venv path needs PyPI and is
not run here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parent.parent
INSTALL_SH: Final = REPO / "systemd" / "install.sh"
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
NEXT_COMMANDS: Final = [
    "sudoedit /etc/dgd/api-key",
    "systemctl enable --now dgd",
    "journalctl -u dgd -f",
]
# Used only when the checkout does not ship etc/dgd.toml yet (see test_example_config_shipped).
STUB_CONFIG: Final = '[audio]\ndevice = "default"\n'


def _can_build_venvs(python: Path) -> bool:
    """True if `python` has venv, ensurepip, setuptools and wheel (Debian: python3-venv,
    python3-setuptools, python3-wheel), which the offline --debian install needs."""
    if not python.exists():
        return False
    probe = "import ensurepip, setuptools, venv, wheel"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(
    not _can_build_venvs(SYSTEM_PYTHON),
    reason="/usr/bin/python3 lacks venv/setuptools/wheel: "
    "apt-get install python3-venv python3-setuptools python3-wheel",
)


def run_install(source: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(source / "systemd" / "install.sh"), "--no-apt", "--root", str(root), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout: pip builds in-tree and would leave build/ and *.egg-info in it."""
    copy = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".git", "tests", "bench")
    for name in ["pyproject.toml", "README.md", "LICENSE", "dgd", "etc", "systemd"]:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, copy / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, copy / name)
    example = copy / "etc" / "dgd.toml"
    if not example.exists():
        example.parent.mkdir(exist_ok=True)
        example.write_text(STUB_CONFIG)
    return copy


@dataclass(frozen=True, slots=True)
class Installed:
    root: Path
    runs: tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]
    first_key: bytes  # /etc/dgd/api-key as the first run left it


@pytest.fixture(scope="module")
def installed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Install twice into one root; the operator edits the key and the config in between."""
    root = tmp_path_factory.mktemp("root")
    first = run_install(source, root, "--systemd-version", "252")
    assert first.returncode == 0, first.stdout + first.stderr
    first_key = (root / "etc" / "dgd" / "api-key").read_bytes()
    (root / "etc" / "dgd" / "api-key").write_text("operator-key\n")
    (root / "etc" / "dgd" / "api-key").chmod(0o644)  # a careless edit; the rerun tightens it
    with (root / "etc" / "dgd.toml").open("a") as config:
        config.write("# edited by the operator\n")
    second = run_install(source, root, "--systemd-version", "252")
    assert second.returncode == 0, second.stdout + second.stderr
    return Installed(root, (first, second), first_key)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("relative", "expected_mode"),
    [
        ("etc/systemd/system/dgd.service", 0o644),
        ("etc/dgd.toml", 0o644),
        ("etc/logrotate.d/dgd", 0o644),
        ("etc/dgd", 0o755),
        ("etc/dgd/api-key", 0o600),
    ],
)
def test_file_modes(installed: Installed, relative: str, expected_mode: int) -> None:
    root = installed.root
    assert oct(mode(root / relative)) == oct(expected_mode)


def test_unit_is_the_shipped_one(installed: Installed) -> None:
    root = installed.root
    shipped = (REPO / "systemd" / "dgd.service").read_bytes()
    assert (root / "etc" / "systemd" / "system" / "dgd.service").read_bytes() == shipped


DROP_IN: Final = Path("etc/systemd/system/dgd.service.d/notify-reload.conf")


def test_no_drop_in_for_systemd_252(installed: Installed) -> None:
    # 252 cannot parse Type=notify-reload but would honour the drop-in's empty ExecReload=.
    assert not (installed.root / DROP_IN).exists()
    assert not (installed.root / DROP_IN).parent.exists()
    assert (
        "systemd 252: Type=notify, reload by ExecReload=/bin/kill -HUP" in installed.runs[0].stdout
    )


def test_drop_in_follows_the_systemd_version(source: Path, tmp_path: Path) -> None:
    """253+ gets the drop-in; installing again for an older systemd removes it, and only it."""
    root = tmp_path / "root"
    new = run_install(source, root, "--systemd-version", "257")
    assert new.returncode == 0, new.stdout + new.stderr
    assert "systemd 257: Type=notify-reload" in new.stdout
    shipped = (REPO / "systemd" / "notify-reload.conf").read_bytes()
    assert (root / DROP_IN).read_bytes() == shipped
    assert oct(mode(root / DROP_IN)) == oct(0o644)
    admins = root / DROP_IN.parent / "override.conf"  # what `systemctl edit dgd` writes
    admins.write_text("[Service]\nWatchdogSec=60s\n")

    old = run_install(source, root, "--systemd-version", "252")
    assert old.returncode == 0, old.stdout + old.stderr
    assert not (root / DROP_IN).exists()
    assert admins.read_text() == "[Service]\nWatchdogSec=60s\n"


@pytest.mark.parametrize("value", ["257.13", "abc", "-1"])
def test_rejects_a_systemd_version_that_is_not_a_number(tmp_path: Path, value: str) -> None:
    result = run_install(REPO, tmp_path, "--systemd-version", value)
    assert result.returncode == 1
    assert f"--systemd-version must be a number like 257, not '{value}'" in result.stderr
    assert not (tmp_path / "opt").exists()


def test_first_run_creates_config_and_empty_key(installed: Installed) -> None:
    first = installed.runs[0]
    assert "installed the example config as /etc/dgd.toml" in first.stdout
    assert "created an empty /etc/dgd/api-key (mode 0600)" in first.stdout
    assert installed.first_key == b""


def test_second_run_keeps_config_and_key(source: Path, installed: Installed) -> None:
    root, second = installed.root, installed.runs[1]
    assert "kept existing /etc/dgd.toml" in second.stdout
    assert "kept existing /etc/dgd/api-key" in second.stdout
    assert (root / "etc" / "dgd" / "api-key").read_text() == "operator-key\n"
    example = (source / "etc" / "dgd.toml").read_text()
    assert (root / "etc" / "dgd.toml").read_text() == example + "# edited by the operator\n"


@pytest.mark.parametrize("run", [0, 1])
def test_output_ends_with_the_three_commands(installed: Installed, run: int) -> None:
    result = installed.runs[run]
    tail = [line.strip() for line in result.stdout.strip().splitlines()[-3:]]
    assert tail == NEXT_COMMANDS


def test_venv_runs_dgd(installed: Installed) -> None:
    venv = installed.root / "opt" / "dgd"
    assert os.access(venv / "bin" / "dgd", os.X_OK)
    result = subprocess.run(
        [venv / "bin" / "python", "-c", "import dgd; print(dgd.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The installed copy, not the checkout: the venv must work once the checkout is deleted.
    assert Path(result.stdout.strip()).is_relative_to(venv)


def test_venv_sees_debian_packages(installed: Installed) -> None:
    probe = "import trio, trio_websocket, alsaaudio, systemd.journal; print(trio.__file__)"
    system = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, check=False)
    if system.returncode != 0:
        pytest.skip("Debian's python3-trio & co. are missing (.ci/debian-venv.sh installs them)")
    venv_python = installed.root / "opt" / "dgd" / "bin" / "python"
    result = subprocess.run([venv_python, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("/usr/lib/python3/dist-packages/")


HAS_CLI: Final = importlib.util.find_spec("dgd.cli") is not None


def check_config(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `dgd check-config` on the installed config (no sound card here)."""
    clean = {
        k: v for k, v in os.environ.items() if k not in {"CREDENTIALS_DIRECTORY", "DGD_CONFIG"}
    }
    clean.pop("DEEPGRAM_API_KEY", None)
    return subprocess.run(
        [root / "opt/dgd/bin/dgd", "check-config", "--no-device", "-c", root / "etc/dgd.toml"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd="/",
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(not HAS_CLI, reason="dgd/cli.py is not written yet")
def test_installed_config_passes_check_config(installed: Installed) -> None:
    result = check_config(installed.root, DEEPGRAM_API_KEY="test-key")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not HAS_CLI, reason="dgd/cli.py is not written yet")
def test_empty_key_placeholder_is_a_config_error(tmp_path: Path, installed: Installed) -> None:
    # What the service sees before the operator ran `sudoedit /etc/dgd/api-key`: the empty
    # placeholder handed over by LoadCredential=. Exit 78 stops the restart loop.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "deepgram-api-key").write_bytes(installed.first_key)
    result = check_config(installed.root, CREDENTIALS_DIRECTORY=str(credentials))
    assert result.returncode == 78, result.stdout + result.stderr
    assert "deepgram-api-key" in result.stderr
    assert "empty" in result.stderr


def test_example_config_shipped() -> None:
    if not (REPO / "etc" / "dgd.toml").exists():
        pytest.skip("etc/dgd.toml is not written yet; install.sh refuses to run without it")
    assert (REPO / "etc" / "dgd.toml").read_text().strip()


def test_refuses_a_tree_without_example_config(source: Path, tmp_path: Path) -> None:
    broken = tmp_path / "src"
    shutil.copytree(source, broken, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    (broken / "etc" / "dgd.toml").unlink()
    result = run_install(broken, tmp_path / "root")
    assert result.returncode == 1
    assert "example config" in result.stderr
    assert "etc/dgd.toml is missing" in result.stderr
    assert not (tmp_path / "root" / "opt").exists()


def test_rejects_unknown_option(tmp_path: Path) -> None:
    result = run_install(REPO, tmp_path, "--bogus")
    assert result.returncode == 1
    assert "unknown option --bogus" in result.stderr
    assert "Usage: install.sh" in result.stderr


def test_reports_a_missing_or_broken_pyalsaaudio(installed: Installed) -> None:
    # Debian 12's python3-alsaaudio 0.8.4 raises SystemError on every PCM.read() under
    # Python 3.11; with --no-apt the installer must say so rather than build anything.
    probe = (
        "import importlib.metadata as m, sys\n"
        "sys.exit(tuple(map(int, m.version('pyalsaaudio').split('.')[:2])) < (0, 10))"
    )
    usable = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, check=False)
    warned = "pyalsaaudio >= 0.10 is missing" in installed.runs[0].stderr
    assert warned == (usable.returncode != 0)
