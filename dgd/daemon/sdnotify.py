"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING, RELOADING, EXTEND_TIMEOUT_USEC.

Written against the socket directly (sd_notify(3) is one datagram to ``$NOTIFY_SOCKET``) so
the same code works with abstract addresses and without systemd-python's helpers, and so a
missing or refusing socket is reported once instead of raising into the daemon. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op.

The reload cycle is the one ``Type=notify-reload`` (systemd >= 253) waits for: ``RELOADING=1``
with ``MONOTONIC_USEC=`` (systemd ignores a RELOADING=1 stamped before it sent SIGHUP), then
``READY=1`` when the reload is over, whether it was carried out or refused. systemd 257 has no
field that fails a reload job (an open proposal adds one: systemd pull request 39745), so a
refused reload is reported in ``STATUS=`` and the journal, and ``systemctl reload`` exits 0
once dgd has decided (docs/INSTALL.md). ``ERRNO=`` is not sent for it: systemd reads that as
the state of the whole service, which keeps running.
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
        self._refusal = ""  # why the last reload was refused; shown until one succeeds
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
        """Tell systemd start-up (or a reload) is complete."""
        status = self._with_refusal(status)
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Update the status line shown by ``systemctl status`` (only when it changed)."""
        status = self._with_refusal(status)
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Pet systemd's watchdog."""
        self.send("WATCHDOG=1")

    def stopping(self, status: str, *, needs_s: float | None = None) -> None:
        """Tell systemd the daemon is shutting down.

        Args:
            status: the STATUS line.
            needs_s: how long the shutdown may still take; sent as ``EXTEND_TIMEOUT_USEC=`` so
                that systemd does not kill a drain that is longer than ``TimeoutStopSec=``
                (it only ever extends the timeout, never shortens it).
        """
        self._last_status = status
        fields = ["STOPPING=1", f"STATUS={status}"]
        if needs_s is not None:
            fields.append(_extend_timeout_field(needs_s))
        self.send(*fields)

    def extend_timeout(self, needs_s: float) -> None:
        """Ask systemd for ``needs_s`` more seconds in the current state (start-up, reload or
        stop); it only matters once the unit's own timeout would have expired."""
        self.send(_extend_timeout_field(needs_s))

    def reloading(self) -> None:
        """Tell systemd a reload started (``READY=1`` follows when it is done)."""
        self._refusal = ""  # this reload's outcome replaces the last one's
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")

    def reload_refused(self, status: str, reason: str) -> None:
        """End a reload cycle that changed nothing: ``READY=1`` (systemd waits for it whatever
        the outcome). ``reason`` (one line) is appended to every STATUS= from now until a
        reload succeeds, so ``systemctl status`` still shows it after the status changed."""
        self._refusal = reason
        self.ready(status)

    def _with_refusal(self, status: str) -> str:
        return f"{status}; {self._refusal}" if self._refusal else status

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _extend_timeout_field(needs_s: float) -> str:
    """``EXTEND_TIMEOUT_USEC=`` for ``needs_s`` seconds, to the nearest microsecond (at least 1:
    systemd reads 0 as "the time is up now")."""
    if needs_s <= 0:
        raise ValueError(f"EXTEND_TIMEOUT_USEC needs a positive time, not {needs_s!r} s")
    return f"EXTEND_TIMEOUT_USEC={max(1, round(needs_s * 1_000_000))}"


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
