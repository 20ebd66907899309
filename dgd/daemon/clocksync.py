"""Is the system clock synchronised? A certificate refused as "not yet valid" or "expired"
is usually a clock problem on a device without a battery-backed clock.

``systemd-timesyncd`` creates ``/run/systemd/timesync/synchronized`` once it has set the clock;
otherwise the kernel's view comes from ``adjtimex(2)`` with no modes (read only):
``TIME_ERROR`` means not synchronised (chrony and ntpd keep it up to date). Under
``ProtectClock=yes`` the system call may be refused: then the answer is unknown (None).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

#: Created by systemd-timesyncd once the clock has been synchronised.
TIMESYNC_FLAG: Final = "/run/systemd/timesync/synchronized"
#: ``adjtimex`` return value: the clock is not synchronised.
TIME_ERROR: Final = 5


class _Timex(ctypes.Structure):
    # struct timex (Linux, <sys/timex.h>): modes, then fields this module does not read, and
    # padding. Only its size matters beyond ``modes``: the kernel writes the whole struct.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("_rest", ctypes.c_char * 256),
    )


def _adjtimex() -> int | None:
    """The clock state from ``adjtimex`` (modes 0: read only), or None when unavailable."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.adjtimex
    except (OSError, AttributeError):
        return None
    timex = _Timex()
    state = int(function(ctypes.byref(timex)))
    if state < 0:
        # EPERM under ProtectClock=yes (a seccomp filter), ENOSYS elsewhere: unknown.
        return None
    return state


def clock_synchronized(flag_path: str = TIMESYNC_FLAG) -> bool | None:
    """True when the clock is synchronised, False when the kernel says it is not, None when
    this cannot be told (no timesyncd flag and ``adjtimex`` refused)."""
    if os.path.exists(flag_path):
        return True
    state = _adjtimex()
    if state is None:
        return None
    return state != TIME_ERROR
