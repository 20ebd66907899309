"""Capture health: is audio moving, and what to do when it is not.

The decisions behind the watchdog, given plain facts and ``now`` (seconds on the monotonic
clock). This module does no I/O.

The rule it implements (issue 8): within ``WatchdogSec`` of a stall that does not resolve,
either capture is flowing again or the watchdog has stopped being petted, so that systemd
restarts dgd. In detail:

- ``WatchdogSec`` is petted only while audio moves, or while the device is absent or held by
  *another* program and the capture task is retrying it: a restart would not bring a
  microphone back, and dgd says in ``STATUS=`` what it waits for.
- An open device that delivers nothing for ``stall_s`` is stalled: no more pets.
- After ``reopen_after_s`` of stall the capture thread is asked to stop, release the device
  and let it be opened again (a reopen can revive a hung USB device or a re-prepared stream).
- A thread that does not end within ``release_grace_s`` of that request is stuck inside
  alsa-lib or the driver and still holds the device: dgd cannot reopen it, so it is
  abandoned and the watchdog stays unpetted until the thread lets go by itself; systemd acts
  first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

#: No audio for this long from an open device is a stall: STATUS says so, the watchdog stops.
#: A read is at most 100 ms of audio, so 1 s is ten reads missing, far beyond jitter.
STALL_S: Final = 1.0
#: A stall this long gets the device reopened. Shorter than the shipped WatchdogSec (30 s),
#: so a reopen is tried before systemd restarts the whole daemon; longer than brief hiccups
#: that resume by themselves with the byte stream intact.
REOPEN_AFTER_S: Final = 10.0
#: A capture thread asked to stop ends within two reads' time (0.2 s at most) unless it is
#: stuck in alsa-lib; this much longer and it is declared stuck.
RELEASE_GRACE_S: Final = 2.0


class CaptureState(enum.Enum):
    """Where capture stands, as the monitor reports it."""

    STARTING = "starting"  # opening, or opened and the first audio not yet due
    FLOWING = "flowing"  # audio arrived within stall_s
    STALLED = "stalled"  # open, but no audio for stall_s
    WAITING = "waiting"  # the device is absent or busy; the capture task retries it
    STUCK = "stuck"  # dgd's own capture thread does not let go of the device


@dataclass(frozen=True, slots=True)
class CaptureFacts:
    """What the shell knows about capture at one moment (times on the monotonic clock).

    Attributes:
        device_open: a capture thread has the PCM open.
        opened_at: when the PCM was last opened.
        last_audio_at: when audio last arrived (0: never).
        waiting_for_device: the last open failed and the capture task is retrying it.
        stop_requested_at: when the thread was asked to stop for a reopen (None: not asked,
            or it has ended since).
        thread_stuck: a thread that was abandoned still holds the device.
    """

    device_open: bool
    opened_at: float
    last_audio_at: float
    waiting_for_device: bool = False
    stop_requested_at: float | None = None
    thread_stuck: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the monitor should do now.

    Attributes:
        state: the state to report.
        pet_watchdog: whether ``WATCHDOG=1`` may be sent.
        stalled_s: how long no audio has arrived from the open device (0 unless stalled).
        reopen: ask the capture thread to stop so that the device is opened again.
        abandon: stop waiting for the thread: it is stuck and holds the device.
    """

    state: CaptureState
    pet_watchdog: bool
    stalled_s: float = 0.0
    reopen: bool = False
    abandon: bool = False


@dataclass(frozen=True, slots=True)
class CaptureHealth:
    """The stall policy: ``assess(facts, now)`` turns facts into a verdict."""

    stall_s: float = STALL_S
    reopen_after_s: float = REOPEN_AFTER_S
    release_grace_s: float = RELEASE_GRACE_S

    def assess(self, facts: CaptureFacts, now: float) -> Verdict:
        """The verdict for ``facts`` at monotonic time ``now``."""
        if facts.thread_stuck:
            return Verdict(CaptureState.STUCK, pet_watchdog=False)
        if facts.stop_requested_at is not None:
            waited_s = now - facts.stop_requested_at
            if waited_s >= self.release_grace_s:
                return Verdict(CaptureState.STUCK, pet_watchdog=False, abandon=True)
            return Verdict(CaptureState.STALLED, pet_watchdog=False)
        if not facts.device_open:
            if facts.waiting_for_device:
                return Verdict(CaptureState.WAITING, pet_watchdog=True)
            return Verdict(CaptureState.STARTING, pet_watchdog=False)
        since_audio_s = now - facts.last_audio_at
        if facts.last_audio_at >= facts.opened_at and since_audio_s < self.stall_s:
            return Verdict(CaptureState.FLOWING, pet_watchdog=True)
        stale_s = now - max(facts.last_audio_at, facts.opened_at)
        if stale_s < self.stall_s:
            return Verdict(CaptureState.STARTING, pet_watchdog=False)
        return Verdict(
            CaptureState.STALLED,
            pet_watchdog=False,
            stalled_s=stale_s,
            reopen=stale_s >= self.reopen_after_s,
        )
