"""The capture health policy (dgd.core.health): facts and ``now`` in, an exact verdict out."""

from __future__ import annotations

from typing import cast

import pytest

from dgd.core.health import (
    REOPEN_AFTER_S,
    CaptureFacts,
    CaptureHealth,
    CaptureState,
    Verdict,
)

HEALTH = CaptureHealth(stall_s=1.0, reopen_after_s=10.0, release_grace_s=2.0)
OPENED = 100.0  # the device was opened at t = 100 s


def open_device(last_audio_at: float) -> CaptureFacts:
    return CaptureFacts(device_open=True, opened_at=OPENED, last_audio_at=last_audio_at)


@pytest.mark.parametrize(
    ("facts", "now", "expected"),
    [
        pytest.param(
            open_device(150.0), 150.5, Verdict(CaptureState.FLOWING, True), id="audio-flowing"
        ),
        pytest.param(
            open_device(0.0), 100.5, Verdict(CaptureState.STARTING, False), id="just-opened"
        ),
        pytest.param(
            open_device(0.0),
            101.0,
            Verdict(CaptureState.STALLED, False, stalled_s=1.0),
            id="opened-but-no-audio-ever",
        ),
        pytest.param(
            # Audio from before a reopen does not count for the new opening.
            open_device(99.9),
            100.2,
            Verdict(CaptureState.STARTING, False),
            id="audio-before-the-open",
        ),
        pytest.param(
            open_device(150.0),
            151.0,
            Verdict(CaptureState.STALLED, False, stalled_s=1.0),
            id="stall-starts",
        ),
        pytest.param(
            open_device(150.0),
            159.9,
            Verdict(CaptureState.STALLED, False, stalled_s=cast("float", pytest.approx(9.9))),
            id="stalled-not-yet-reopened",
        ),
        pytest.param(
            open_device(150.0),
            160.0,
            Verdict(CaptureState.STALLED, False, stalled_s=10.0, reopen=True),
            id="stalled-long-enough-to-reopen",
        ),
        pytest.param(
            CaptureFacts(True, OPENED, 150.0, stop_requested_at=160.0),
            161.0,
            Verdict(CaptureState.STALLED, False),
            id="reopen-asked-thread-ending",
        ),
        pytest.param(
            CaptureFacts(True, OPENED, 150.0, stop_requested_at=160.0),
            162.0,
            Verdict(CaptureState.STUCK, False, abandon=True),
            id="thread-does-not-end",
        ),
        pytest.param(
            # The defect of issue 8: dgd's own abandoned thread holds the device and the
            # reopen fails as busy. Waiting for a device is normally petted; not here.
            CaptureFacts(False, OPENED, 150.0, waiting_for_device=True, thread_stuck=True),
            200.0,
            Verdict(CaptureState.STUCK, False),
            id="own-stuck-thread-is-never-waiting-for-device",
        ),
        pytest.param(
            CaptureFacts(False, OPENED, 150.0, waiting_for_device=True),
            200.0,
            Verdict(CaptureState.WAITING, True),
            id="device-absent-waiting",
        ),
        pytest.param(
            CaptureFacts(False, 0.0, 0.0),
            5.0,
            Verdict(CaptureState.STARTING, False),
            id="first-open-in-progress",
        ),
    ],
)
def test_verdicts(facts: CaptureFacts, now: float, expected: Verdict) -> None:
    assert HEALTH.assess(facts, now) == expected


def test_a_stall_that_never_ends_stops_the_watchdog_for_good() -> None:
    """Whatever the reopen does (the device opens and stays silent, or the thread sticks),
    no verdict after the first stalled second pets the watchdog."""
    last_audio = 150.0
    opened = OPENED
    stop_requested_at: float | None = None
    stuck = False
    pets: list[float] = []
    for tenth in range(1500, 2500):  # 100 s in 0.1 s steps
        now = tenth / 10
        facts = CaptureFacts(
            device_open=not stuck,
            opened_at=opened,
            last_audio_at=last_audio,
            stop_requested_at=stop_requested_at,
            thread_stuck=stuck,
        )
        verdict = HEALTH.assess(facts, now)
        if verdict.pet_watchdog:
            pets.append(now)
        if verdict.reopen:
            stop_requested_at = now
        if verdict.abandon:
            stop_requested_at, stuck = None, True
    assert pets == [150.0 + k / 10 for k in range(10)]


def test_the_default_reopen_comes_before_the_shipped_watchdog() -> None:
    assert REOPEN_AFTER_S < 30.0  # systemd/dgd.service: WatchdogSec=30s
