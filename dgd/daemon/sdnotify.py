"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING, RELOADING datagrams.

Written against the socket directly (sd_notify(3) is one datagram to ``$NOTIFY_SOCKET``) so
the same code works with abstract addresses and without systemd-python's helpers, and so a
missing or refusing socket is reported once instead of raising into the daemon. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger("dgd.notify")


class Notifier:
    """Sends sd_notify datagrams; remembers the last STATUS so repeats cost nothing.

    Args:
        environ: the process environment (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``).
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        else:
            self._address = address or None
        self._socket: socket.socket | None = None
        self._last_status = ""
        self._failed = False
        self.watchdog_interval_s = _watchdog_interval_s(environ)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram (best effort; failures are logged once)."""
        if self._address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify systemd at NOTIFY_SOCKET: %s",
                    exc,
                    extra={"DGD_EVENT": "notify_failed"},
                )
        else:
            self._failed = False

    def ready(self, status: str) -> None:
        """Tell systemd start-up is complete."""
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Update the status line shown by ``systemctl status`` (only when it changed)."""
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Pet systemd's watchdog."""
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        """Tell systemd the daemon is shutting down."""
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> None:
        """Tell systemd a reload started (``READY=1`` follows when it is done)."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds when the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    if not usec.isdecimal() or int(usec) == 0:
        return None
    if pid and (not pid.isdecimal() or int(pid) != os.getpid()):
        return None  # meant for another process (or unreadable, as sd_watchdog_enabled says)
    return int(usec) / 2_000_000
