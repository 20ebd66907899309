"""sd_notify datagrams (dgd.daemon.sdnotify) against a real AF_UNIX datagram socket.

Datagrams on a local socket are queued by the time ``sendto`` returns, so every expected
datagram is read without waiting; "nothing was sent" is shown by the next datagram read
being the one sent after it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from dgd.daemon.sdnotify import Notifier

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Receiver:
    """The systemd side: a bound datagram socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def assert_empty(self) -> None:
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    path = str(tmp_path / "notify.sock")
    assert len(path.encode()) < 108, "AF_UNIX path too long for this tmp_path"
    return path


@pytest.fixture
def receiver(socket_path: str) -> Iterator[Receiver]:
    r = Receiver(socket_path)
    yield r
    r.close()


@pytest.fixture
def notifier(socket_path: str, receiver: Receiver) -> Iterator[Notifier]:
    n = Notifier({"NOTIFY_SOCKET": socket_path})
    yield n
    n.close()


# --- datagrams ---------------------------------------------------------------------------


def test_ready(notifier: Notifier, receiver: Receiver) -> None:
    assert notifier.enabled
    notifier.ready("streaming")
    assert receiver.recv() == b"READY=1\nSTATUS=streaming"
    receiver.assert_empty()


def test_status_is_sent_only_when_it_changes(notifier: Notifier, receiver: Receiver) -> None:
    notifier.ready("streaming")
    notifier.status("streaming")  # what ready() said already: not sent
    notifier.status("gated: silence")
    notifier.status("gated: silence")
    notifier.status("reconnecting in 3.2 s (attempt 4)")
    notifier.status("streaming")
    assert [receiver.recv() for _ in range(4)] == [
        b"READY=1\nSTATUS=streaming",
        b"STATUS=gated: silence",
        b"STATUS=reconnecting in 3.2 s (attempt 4)",
        b"STATUS=streaming",
    ]
    receiver.assert_empty()


def test_first_status_is_sent(notifier: Notifier, receiver: Receiver) -> None:
    notifier.status('waiting for audio device "plughw:1,0"')
    assert receiver.recv() == b'STATUS=waiting for audio device "plughw:1,0"'


def test_utf8_status(notifier: Notifier, receiver: Receiver) -> None:
    notifier.status("über → ok")
    assert receiver.recv() == "STATUS=über → ok".encode()


def test_watchdog_is_never_deduplicated(notifier: Notifier, receiver: Receiver) -> None:
    notifier.watchdog()
    notifier.watchdog()
    assert [receiver.recv(), receiver.recv()] == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_stopping(notifier: Notifier, receiver: Receiver) -> None:
    notifier.status("streaming")
    notifier.stopping("stopping: sending the last audio")
    notifier.status("stopping: sending the last audio")  # the same: not sent again
    notifier.watchdog()
    assert [receiver.recv() for _ in range(3)] == [
        b"STATUS=streaming",
        b"STOPPING=1\nSTATUS=stopping: sending the last audio",
        b"WATCHDOG=1",
    ]


@pytest.mark.parametrize(
    ("needs_s", "expected_usec"),
    [
        (20.5, b"20500000"),  # close_timeout_s 15 + the release and exit margin
        (0.1, b"100000"),  # float 0.1 * 10**6 is 100000.00000000001: rounded, not truncated
        (0.0000004, b"1"),  # never 0, which systemd reads as "the time is up now"
        (3600, b"3600000000"),
    ],
)
def test_stopping_extends_the_stop_timeout(
    notifier: Notifier, receiver: Receiver, needs_s: float, expected_usec: bytes
) -> None:
    notifier.stopping("stopping: sending the last audio", needs_s=needs_s)
    assert receiver.recv() == (
        b"STOPPING=1\nSTATUS=stopping: sending the last audio\nEXTEND_TIMEOUT_USEC=" + expected_usec
    )


def test_extend_timeout(notifier: Notifier, receiver: Receiver) -> None:
    notifier.extend_timeout(7.25)
    notifier.watchdog()
    assert [receiver.recv(), receiver.recv()] == [b"EXTEND_TIMEOUT_USEC=7250000", b"WATCHDOG=1"]


@pytest.mark.parametrize("needs_s", [0.0, -1.0])
def test_extend_timeout_refuses_a_time_that_is_not_positive(
    notifier: Notifier, receiver: Receiver, needs_s: float
) -> None:
    # A time that is up already is a caller's bug, not a request to send.
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(needs_s)
    receiver.assert_empty()


def test_refused_reload_ends_the_cycle_with_ready_and_the_reason(
    notifier: Notifier, receiver: Receiver
) -> None:
    refused = "reload refused: gate.mode: must be one of auto, fixed, shadow"
    notifier.ready("streaming")
    notifier.reloading()
    notifier.reload_refused("streaming", refused)
    notifier.status("streaming")  # unchanged: not sent again
    notifier.status("gated: silence")  # the reason stays until a reload succeeds
    notifier.reloading()
    notifier.ready("gated: silence")
    notifier.status("streaming")
    assert receiver.recv() == b"READY=1\nSTATUS=streaming"
    assert receiver.recv().startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert receiver.recv() == f"READY=1\nSTATUS=streaming; {refused}".encode()
    assert receiver.recv() == f"STATUS=gated: silence; {refused}".encode()
    assert receiver.recv().startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert receiver.recv() == b"READY=1\nSTATUS=gated: silence"
    assert receiver.recv() == b"STATUS=streaming"


def test_reloading_carries_monotonic_usec(notifier: Notifier, receiver: Receiver) -> None:
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = receiver.recv().decode().split("\n")
    assert fields[0] == "RELOADING=1"
    assert fields[2] == "STATUS=reloading"
    key, _, value = fields[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert before_us <= int(value) <= after_us
    assert len(fields) == 3


def test_reload_cycle(notifier: Notifier, receiver: Receiver) -> None:
    notifier.ready("streaming")
    notifier.reloading()
    notifier.ready("streaming")  # ready always sends, so STATUS is restored after a reload
    assert receiver.recv() == b"READY=1\nSTATUS=streaming"
    assert receiver.recv().startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert receiver.recv() == b"READY=1\nSTATUS=streaming"


def test_send_joins_fields_in_one_datagram(notifier: Notifier, receiver: Receiver) -> None:
    notifier.send("STATUS=x", "WATCHDOG=1", "EXTEND_TIMEOUT_USEC=5000000")
    assert receiver.recv() == b"STATUS=x\nWATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000"


def test_abstract_address() -> None:
    name = f"dgd-test-{uuid.uuid4().hex}"
    receiver = Receiver(b"\0" + name.encode())
    notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
    try:
        notifier.ready("streaming")
        notifier.watchdog()
        assert receiver.recv() == b"READY=1\nSTATUS=streaming"
        assert receiver.recv() == b"WATCHDOG=1"
    finally:
        notifier.close()
        receiver.close()


# --- without systemd, and with a broken socket -------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "30000000"}])
def test_no_notify_socket_is_a_no_op(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dgd")
    notifier = Notifier(environ)
    assert not notifier.enabled
    notifier.ready("streaming")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping("bye")
    notifier.reloading()
    notifier.close()
    assert caplog.records == []


def test_missing_socket_is_logged_once_not_raised(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dgd")
    notifier = Notifier({"NOTIFY_SOCKET": socket_path})  # nothing bound there yet
    try:
        notifier.ready("streaming")
        notifier.watchdog()
        notifier.status("gated: silence")
        warnings = [r for r in caplog.records if r.name == "dgd.notify"]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        assert warnings[0].getMessage().startswith("cannot notify systemd at NOTIFY_SOCKET: ")
        assert "No such file or directory" in warnings[0].getMessage()

        # systemd comes back: datagrams flow again.
        receiver = Receiver(socket_path)
        notifier.watchdog()
        assert receiver.recv() == b"WATCHDOG=1"
        # ... and goes away again: a new failure is reported again, once.
        receiver.close()
        os.unlink(socket_path)
        notifier.watchdog()
        notifier.watchdog()
        warnings = [r for r in caplog.records if r.name == "dgd.notify"]
        assert len(warnings) == 2
    finally:
        notifier.close()


def test_refused_socket_is_logged_not_raised(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A socket file whose receiver is gone: ECONNREFUSED.
    receiver = Receiver(socket_path)
    receiver.close()
    caplog.set_level(logging.DEBUG, logger="dgd")
    notifier = Notifier({"NOTIFY_SOCKET": socket_path})
    try:
        notifier.watchdog()
        (warning,) = [r for r in caplog.records if r.name == "dgd.notify"]
        assert "Connection refused" in warning.getMessage()
    finally:
        notifier.close()


def test_close_then_send_reopens(notifier: Notifier, receiver: Receiver) -> None:
    notifier.watchdog()
    notifier.close()
    notifier.close()
    notifier.watchdog()
    assert [receiver.recv(), receiver.recv()] == [b"WATCHDOG=1", b"WATCHDOG=1"]


# --- watchdog interval -------------------------------------------------------------------

OWN_PID = str(os.getpid())
OTHER_PID = str(os.getpid() + 1)

WATCHDOG_CASES = [
    pytest.param({}, None, id="unset"),
    pytest.param({"WATCHDOG_USEC": "30000000"}, 15.0, id="30s"),
    pytest.param({"WATCHDOG_USEC": "1000000"}, 0.5, id="1s"),
    pytest.param({"WATCHDOG_USEC": "1"}, 5e-7, id="1us"),
    pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
    pytest.param({"WATCHDOG_USEC": ""}, None, id="empty"),
    pytest.param({"WATCHDOG_USEC": "abc"}, None, id="not-a-number"),
    pytest.param({"WATCHDOG_USEC": "-5"}, None, id="negative"),
    pytest.param({"WATCHDOG_USEC": "1.5"}, None, id="fraction"),
    pytest.param({"WATCHDOG_USEC": " 30000000"}, None, id="whitespace"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": OWN_PID}, 15.0, id="own-pid"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": OTHER_PID}, None, id="other-pid"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0, id="empty-pid"),
    pytest.param({"WATCHDOG_PID": OWN_PID}, None, id="pid-without-usec"),
]


@pytest.mark.parametrize(("environ", "expected"), WATCHDOG_CASES)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    notifier = Notifier(environ)
    assert notifier.watchdog_interval_s == expected
    notifier.close()


def test_watchdog_interval_with_undecodable_digits_is_none() -> None:
    # str.isdigit() is True for "²", which int() refuses: the value must count as unset.
    notifier = Notifier({"WATCHDOG_USEC": "²"})
    assert notifier.watchdog_interval_s is None
