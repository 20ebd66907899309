"""What systemd hears from the real daemon (issue 11 part 7), end to end through ``dgd run``
with real ALSA capture, journald and a real NOTIFY_SOCKET:

- a refused reload (invalid new config) still ends its cycle with READY=1 (``Type=notify-reload``
  waits for it) and says why in STATUS= until a reload succeeds, since systemd 257 cannot fail
  the reload job;
- a stop asks for ``EXTEND_TIMEOUT_USEC`` covering ``stream.close_timeout_s`` plus the exit
  margin, in the STOPPING=1 datagram, so a drain longer than ``TimeoutStopSec=`` is not killed.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from dgd.daemon.app import STOP_EXIT_MARGIN_S
from tests.fault_harness import FAST_STREAM, fault_rig
from tests.harness import journald_fixture  # noqa: F401  (the fixture, by name)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fault_harness import FaultRig

#: Not the default (5 s), so the extension is seen to follow the config.
CLOSE_TIMEOUT_S = 7.5


def sighup_and_wait(rig: FaultRig) -> list[str]:
    """SIGHUP the daemon; return the assignments of the reload cycle it started, from
    RELOADING=1 to the READY=1 that ends it and that datagram's STATUS=."""
    before = len(rig.notify.assignments())
    os.kill(rig.daemon.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        sent = rig.notify.assignments()[before:]
        # A STATUS= change may come between ``before`` and the signal.
        sent = sent[sent.index("RELOADING=1") :] if "RELOADING=1" in sent else []
        if "READY=1" in sent:
            return sent[: sent.index("READY=1") + 2]  # READY=1 and its STATUS=
        time.sleep(0.05)
    raise AssertionError(f"no READY=1 after SIGHUP\n{rig.diagnostics()}")


@pytest.mark.e2e
def test_refused_reload_says_why_and_stop_extends_the_timeout(
    tmp_path: Path, journald: None
) -> None:
    stream = replace(FAST_STREAM, close_timeout_s=CLOSE_TIMEOUT_S)
    with fault_rig(tmp_path, [], stream=stream) as rig:
        rig.wait_ready()
        config = tmp_path / "dgd.toml"
        text = config.read_text(encoding="utf-8")
        assert text.count("\nhangover_ms = ") == 1, text
        lines = [
            "hangover_ms = -5" if line.startswith("hangover_ms = ") else line
            for line in text.splitlines()
        ]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")

        sent = sighup_and_wait(rig)
        assert sent[-2:-1] == ["READY=1"], sent
        status = sent[-1].removeprefix("STATUS=")
        refusal = "; reload refused, the previous configuration stays: gate.hangover_ms: "
        assert refusal + "must be >= 0 (got -5)" in status, sent
        assert "\n" not in status
        assert rig.events("reload_failed", 5.0, 1), rig.diagnostics()
        assert rig.daemon.poll() is None, rig.diagnostics()

        rig.stop()
        sent = rig.notify.assignments()
        at = sent.index("STOPPING=1")
        # One datagram, so systemd extends the stop timeout the moment it hears STOPPING=1.
        stopping = [n for n in rig.notify.notifications if n.t == rig.notify.notifications[at].t]
        expected_usec = round((CLOSE_TIMEOUT_S + STOP_EXIT_MARGIN_S) * 1_000_000)
        assert [n.assignment for n in stopping] == [
            "STOPPING=1",
            "STATUS=stopping: sending the last audio",
            f"EXTEND_TIMEOUT_USEC={expected_usec}",
        ], sent
