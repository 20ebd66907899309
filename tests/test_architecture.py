"""The core is sans-I/O: importing it must not pull in trio, sockets or ALSA.

Each core module is imported in a fresh interpreter, and the modules it loaded are checked.
A core module that grew an I/O import fails here, which keeps the split of README's
"How it is built" true.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE_MODULES = [
    "dgd.pcm",
    "dgd.events",
    "dgd.gate",
    "dgd.pipeline",
    "dgd.health",
    "dgd.reload",
    "dgd.status",
    "dgd.stats",
    "dgd.timemap",
    "dgd.outbox",
    "dgd.messages",
    "dgd.session",
    "dgd.backoff",
    "dgd.config",
]
FORBIDDEN = {"trio", "trio_websocket", "alsaaudio", "socket", "systemd", "wsproto", "select"}


def imported_by(module: str) -> set[str]:
    code = (
        "import json, sys\n"
        f"before = set(sys.modules)\nimport {module}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out)}


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_no_io_imports(module: str) -> None:
    assert imported_by(module) & FORBIDDEN == set()


def test_the_check_can_fail() -> None:
    assert "trio" in imported_by("dgd.link")
