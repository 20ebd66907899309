"""The architecture is a rule: ``dgd.core`` is pure.

Every module of ``dgd/core`` is parsed (not imported) and checked: it may import only
``dgd.core`` and a short allow-list of pure standard-library modules, and it may not read a
clock, open a file or print. The checker is shown to fail on planted violations, so a pass
means something. README's "How it is built" describes the layers this keeps apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "dgd" / "core"

#: Standard-library modules with no I/O and no clock, which the core may use.
PURE_STDLIB = frozenset(
    {
        "__future__",
        "array",
        "audioop",  # C arithmetic on bytes (audioop-lts on Python >= 3.13)
        "bisect",
        "collections",
        "collections.abc",
        "dataclasses",
        "difflib",
        "enum",
        "http",  # HTTPStatus phrases only
        "ipaddress",  # parsing addresses (deepgram.url's IPv6 literal)
        "json",
        "math",
        "operator",
        "random",  # the Random type: instances are injected, never seeded from the clock here
        "re",
        "sys",  # byteorder
        "tomllib",  # tomllib.loads on text the shell read
        "types",
        "typing",
        "urllib.parse",
        "warnings",
    }
)
#: Calls that read a clock, do I/O or print, by their dotted name.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "breakpoint", "exec", "eval"})
FORBIDDEN_PREFIXES = ("time.", "datetime.", "os.", "socket.", "subprocess.", "pathlib.")
FORBIDDEN_METHODS = frozenset(
    {"read_text", "read_bytes", "write_text", "write_bytes", "now", "utcnow", "today"}
)


def dotted(node: ast.expr) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def violations(source: str) -> list[str]:
    """What in ``source`` (one core module) breaks the rule, as ``line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                names = [node.module or ""] if node.level == 0 else []
            for name in names:
                if not (name == "dgd.core" or name.startswith("dgd.core.") or name in PURE_STDLIB):
                    found.append(f"{node.lineno}: imports {name}")
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if (
                name in FORBIDDEN_CALLS
                or name.startswith(FORBIDDEN_PREFIXES)
                or method in FORBIDDEN_METHODS
            ):
                found.append(f"{node.lineno}: calls {name or method}")
    return found


def core_modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def test_there_is_a_core() -> None:
    assert {p.stem for p in core_modules()} >= {"gate", "pipeline", "session", "config"}


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.stem)
def test_core_module_is_pure(path: Path) -> None:
    assert violations(path.read_text()) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("import trio", ["1: imports trio"]),
        ("from dgd.daemon import link", ["1: imports dgd.daemon"]),
        ("import socket", ["1: imports socket"]),
        ("import alsaaudio", ["1: imports alsaaudio"]),
        ("from systemd import journal", ["1: imports systemd"]),
        ("import time\nnow = time.monotonic()", ["1: imports time", "2: calls time.monotonic"]),
        ("data = open('/etc/dgd.toml').read()", ["1: calls open"]),
        ("text = path.read_text()", ["1: calls path.read_text"]),
        ("stamp = datetime.now()", ["1: calls datetime.now"]),
        ("import os\nos.stat('/x')", ["1: imports os", "2: calls os.stat"]),
        ("print('hello')", ["1: calls print"]),
    ],
)
def test_the_rule_fails_on_a_planted_violation(planted: str, expected: list[str]) -> None:
    assert violations(planted) == expected


def test_pure_code_passes() -> None:
    source = "from __future__ import annotations\nimport math\nfrom dgd.core.pcm import x\n"
    assert violations(source + "y = math.sqrt(2.0)\n") == []
