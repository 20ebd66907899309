"""Helpers and fixtures for the end-to-end tests: real ALSA (a FIFO-fed ``file`` PCM), real
journald (read back with ``journalctl -o json``), a real NOTIFY_SOCKET, the fake Deepgram server
and the daemon as subprocesses, and the ground truth of the bundled sample.

Import the fixtures you use explicitly (``from tests.harness import alsa_mic_fixture  # noqa: F401``
provides the fixture ``alsa_mic``); they live here rather than in conftest.py so that this file
has a single owner.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from dgd.core.config import (
    DEFAULT_QUERY,
    AudioConfig,
    Config,
    DeepgramConfig,
    GateConfig,
    OutputConfig,
    dump,
)
from dgd.core.gate import GateMode
from dgd.testing.fifomic import FifoMic, alsa_config_path, write_alsa_conf
from dgd.tools.demo import (
    FakeServerProcess,
    SampleUtterance,
    load_sample,
    package_env,
    server_audio,
    server_records,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "BYTES_PER_S",
    "E2E_API_KEY",
    "JOURNAL_SOCKET",
    "AlsaMic",
    "Clip",
    "ClipUtterance",
    "DaemonProcess",
    "FakeServerProcess",
    "FifoMic",
    "NotifyListener",
    "SampleUtterance",
    "alsa_mic_fixture",
    "client_message_gaps_s",
    "compose_clip",
    "daemon_env",
    "fake_server_fixture",
    "find_in_order",
    "journal_bool",
    "journal_entries",
    "journal_text",
    "journald_fixture",
    "journald_unavailable_reason",
    "load_sample",
    "notify_listener_fixture",
    "overlapping",
    "parse_rfc3339",
    "server_audio",
    "server_records",
    "write_daemon_config",
]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")
BYTES_PER_S: Final = 16000 * 2  # the sample's format: 16 kHz mono S16_LE
E2E_API_KEY: Final = "e2e-test-key"
PCM_NAME: Final = "dgdtest"


# ---- journald ------------------------------------------------------------------------------


def journald_unavailable_reason() -> str | None:
    """Why journald-backed tests cannot run here, or None if they can."""
    if os.environ.get("DGD_TEST_NO_JOURNALD") == "1":
        return (
            "journald not available: tests/with-journald.sh could not start a private journald "
            "(needs root and unshare); run `sudo tests/with-journald.sh pytest -m e2e`"
        )
    if shutil.which("journalctl") is None:
        return "journalctl not found: install systemd (journalctl) to run journald-backed tests"
    if not JOURNAL_SOCKET.is_socket():
        return (
            f"journald not available ({JOURNAL_SOCKET} missing): run the tests through "
            "`tests/with-journald.sh pytest ...` (as root) to get a private journald"
        )
    return None


def journal_entries(timeout: float, n: int, **match: str) -> list[dict[str, Any]]:
    """Entries matching ``FIELD=value`` pairs, polled until there are ``n`` or ``timeout`` passes.

    Returns whatever matched at the end (possibly fewer than ``n``), oldest first, as the
    dicts of ``journalctl -o json`` (every value a string unless it was not UTF-8).
    """
    deadline = time.monotonic() + timeout
    argv = ["journalctl", "--no-pager", "-o", "json", *(f"{k}={v}" for k, v in match.items())]
    while True:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(entries) >= n or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def journal_text(**match: str) -> str:
    """The matching entries as ``journalctl -o short-precise`` text (for failure messages)."""
    argv = [
        "journalctl",
        "--no-pager",
        "-o",
        "short-precise",
        *(f"{k}={v}" for k, v in match.items()),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def journal_bool(value: object) -> bool:
    """A boolean journal field (``"true"``/``"1"``/``"yes"`` and their opposites).

    Raises:
        ValueError: the value is not one of those spellings.
    """
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean journal value: {value!r}")


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 UTC timestamp (``2026-11-23T21:40:01.234Z``) as seconds since the epoch.

    Raises:
        ValueError: not RFC 3339, or no UTC offset.
    """
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {text!r}")
    return parsed.timestamp()


# ---- sd_notify -----------------------------------------------------------------------------


#: struct ucred {pid_t pid; uid_t uid; gid_t gid;}, the SCM_CREDENTIALS payload.
_UCRED: Final = struct.Struct("iII")


@dataclass(frozen=True, slots=True)
class Notification:
    """One ``KEY=VALUE`` assignment of an sd_notify datagram."""

    t: float  # time.time() when received
    pid: int  # the sender's pid (SCM_CREDENTIALS), 0 if unknown
    assignment: str  # e.g. "READY=1", "STATUS=streaming"


class NotifyListener:
    """A NOTIFY_SOCKET: an AF_UNIX datagram socket and a thread collecting what arrives.

    Like systemd it sets SO_PASSCRED, so every datagram carries the sender's pid (the test
    can emulate ``NotifyAccess=main``). Use as a context manager.

    Args:
        path: socket path; over 100 characters (AF_UNIX limit 108) an abstract address is used.
    """

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if len(str(path)) <= 100:
            self._sock.bind(str(path))
            address = str(path)
        else:
            name = f"dgd-test-{uuid.uuid4().hex}"
            self._sock.bind("\0" + name)
            address = "@" + name
        self.address: Final = address  # the value for NOTIFY_SOCKET
        self._sock.settimeout(0.05)
        self._lock = threading.Condition()
        self._items: list[Notification] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="NotifyListener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds_len = socket.CMSG_SPACE(_UCRED.size)
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(65536, creds_len)
            except TimeoutError:
                continue
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack_from(payload)[0]
            now = time.time()
            with self._lock:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if line:
                        self._items.append(Notification(now, pid, line))
                self._lock.notify_all()

    @property
    def notifications(self) -> list[Notification]:
        """Everything received so far, in order."""
        with self._lock:
            return list(self._items)

    def assignments(self) -> list[str]:
        """The ``KEY=VALUE`` strings received so far, in order."""
        return [n.assignment for n in self.notifications]

    def wait_for(self, assignment: str, timeout: float) -> bool:
        """Wait until exactly ``assignment`` (e.g. ``"READY=1"``) has arrived; True if so."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not any(n.assignment == assignment for n in self._items):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---- the daemon ----------------------------------------------------------------------------


def write_daemon_config(
    path: Path,
    *,
    url: str,
    device: str,
    jsonl: Path,
    threshold_dbfs: float | None = -50.0,
    journald: bool = True,
    query: tuple[tuple[str, str], ...] = DEFAULT_QUERY,
) -> Config:
    """Write a daemon config (docs/CONFIG.md) for the tests: 16 kHz mono, 20 ms periods, an
    energy gate (``threshold_dbfs`` None: "auto"), transcripts to ``jsonl``; return it."""
    config = Config(
        deepgram=DeepgramConfig(url=url, query=query),
        audio=AudioConfig(device=device, rate=16000, channels=1, period_ms=20),
        gate=GateConfig(mode=GateMode.ENERGY, threshold_dbfs=threshold_dbfs),
        output=OutputConfig(journald=journald, jsonl=str(jsonl)),
    )
    path.write_text(dump(config), encoding="utf-8")
    return config


def daemon_env(
    *, alsa_conf: Path, notify_socket: str | None, api_key: str = E2E_API_KEY
) -> dict[str, str]:
    """The daemon's environment: ours, minus any systemd variables, plus the test's."""
    env = package_env(ALSA_CONFIG_PATH=alsa_config_path(alsa_conf), DEEPGRAM_API_KEY=api_key)
    for name in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "INVOCATION_ID",
    ):
        env.pop(name, None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    return env


class DaemonProcess:
    """``python -m dgd run -c CONFIG --log-target TARGET`` as a subprocess.

    stdout and stderr go to files in ``log_dir`` (see `output`). Use as a context manager: on
    exit a still-running daemon is killed, so a failing test never leaves it behind.

    Args:
        config: the config file.
        env: the full environment (see `daemon_env`).
        log_dir: where ``daemon.stdout``/``daemon.stderr`` go.
        log_target: ``journal``, ``stderr`` or ``auto``.
        argv: replaces the whole command line (for testing this harness with a stand-in).
    """

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str],
        log_dir: Path,
        log_target: str = "journal",
        argv: Sequence[str] | None = None,
    ) -> None:
        if argv is None:
            argv = [sys.executable, "-m", "dgd", "run", "-c", str(config)]
            argv += ["--log-target", log_target]
        self.stdout_path: Final = log_dir / "daemon.stdout"
        self.stderr_path: Final = log_dir / "daemon.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process: Final = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=REPO_ROOT
            )
        self.pid: Final = self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        return self.process.poll()

    def terminate(self, timeout_s: float = 20.0) -> int:
        """Send SIGTERM and wait up to ``timeout_s`` for the exit; return the exit code.

        Raises:
            TimeoutError: it did not exit in time (it is then killed); the message has its log.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise TimeoutError(
                f"the daemon did not exit within {timeout_s} s of SIGTERM; killed it.\n"
                + self.output()
            ) from None

    def output(self) -> str:
        """The daemon's stdout and stderr so far (for failure messages)."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text("utf-8", "replace") if path.exists() else ""
            parts.append(f"--- {path.name} ---\n{text[-8000:]}")
        return "\n".join(parts)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---- server records ------------------------------------------------------------------------


def find_in_order(haystack: bytes, needles: Sequence[bytes]) -> list[int]:
    """Where each needle occurs in ``haystack``, each searched after the end of the previous.

    A needle that is not found gets -1 and the next one is searched from the same place.
    """
    positions = []
    pos = 0
    for needle in needles:
        found = haystack.find(needle, pos)
        positions.append(found)
        if found >= 0:
            pos = found + len(needle)
    return positions


#: What the client sends; the fake server records these kinds (plus handshake, sent, close).
_CLIENT_KINDS: Final = frozenset({"handshake", "binary", "text"})


def client_message_gaps_s(records: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Per connection, the longest time between two things the client sent (from the handshake).

    Deepgram closes a stream (1011 NET-0001) when this exceeds 10 s.
    """
    last: dict[int, float] = {}
    gaps: dict[int, float] = {}
    for record in records:
        if record.get("kind") not in _CLIENT_KINDS:
            continue
        conn, t = int(record["conn"]), float(record["t"])
        if conn in last:
            gaps[conn] = max(gaps.get(conn, 0.0), t - last[conn])
        else:
            gaps[conn] = 0.0
        last[conn] = t
    return gaps


def overlapping(
    interval: tuple[float, float], others: Sequence[tuple[float, float]], slack: float
) -> list[int]:
    """Indices of ``others`` that overlap ``interval`` widened by ``slack`` on both sides."""
    lo, hi = interval[0] - slack, interval[1] + slack
    return [i for i, (a, b) in enumerate(others) if a <= hi and b >= lo]


#: How close a transcript's first word must be to the true onset of its utterance (issue 3).
ONSET_TOLERANCE_S: Final = 0.25


def assert_one_final_per_utterance(
    where: str,
    spans: Sequence[tuple[float, float]],
    truth: Sequence[tuple[float, float]],
    diagnostics: str,
) -> list[int]:
    """Each final overlaps exactly one utterance and covers it (within the tolerance), and
    each utterance has exactly one final. Returns the utterance index of each final.

    A final's span is Deepgram's ``start``/``duration`` mapped to capture time; it covers the
    audio since the previous final on that connection, so it may start well before its
    utterance (the precise onset check is on the first word).
    """
    owners: list[int] = []
    for i, span in enumerate(spans):
        hits = overlapping(span, truth, slack=0.0)
        assert len(hits) == 1, (
            f"{where}: final {i} at {span} overlaps utterances {hits} of {truth}\n{diagnostics}"
        )
        owners.append(hits[0])
    counts = [owners.count(j) for j in range(len(truth))]
    assert counts == [1] * len(truth), (
        f"{where}: finals per utterance {counts} (want one each; spans {spans}, truth {truth})"
        f"\n{diagnostics}"
    )
    for (start, end), j in zip(spans, owners, strict=True):
        onset, offset = truth[j]
        uncovered = (
            f"{where}: final {start:.3f}..{end:.3f} does not cover utterance {j} "
            f"{onset:.3f}..{offset:.3f}\n{diagnostics}"
        )
        assert start <= onset + ONSET_TOLERANCE_S, uncovered
        assert end >= offset - ONSET_TOLERANCE_S, uncovered
    return owners


# ---- ground truth --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClipUtterance:
    """Where an utterance of the sample lies in a composed clip: bytes ``[start, end)``."""

    sample_index: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Clip:
    """Audio composed from pieces of the sample, with where each utterance went."""

    data: bytes
    utterances: tuple[ClipUtterance, ...]

    @property
    def duration_s(self) -> float:
        """Length of the clip in seconds."""
        return len(self.data) / BYTES_PER_S


def compose_clip(
    sample: bytes,
    layout: Sequence[tuple[float, SampleUtterance]],
    tail_s: float = 0.0,
) -> Clip:
    """Digital silence and utterances of the sample: ``[(silence_before_s, utterance), ...]``.

    Silences are rounded to whole samples; the utterances are copied byte for byte.
    """
    data = bytearray()
    placed = []
    for silence_s, utt in layout:
        data += bytes(round(silence_s * 16000) * 2)
        start = len(data)
        data += sample[utt.start_byte : utt.end_byte]
        placed.append(ClipUtterance(utt.index, start, len(data)))
    data += bytes(round(tail_s * 16000) * 2)
    return Clip(bytes(data), tuple(placed))


# ---- fixtures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlsaMic:
    """A capture PCM named ``pcm_name`` (in ``conf``) fed by ``mic`` through a FIFO."""

    pcm_name: str
    conf: Path
    mic: FifoMic


@pytest.fixture(name="journald")
def journald_fixture() -> None:
    """Skip the test, with the reason, unless a journald is listening."""
    reason = journald_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(name="notify_listener")
def notify_listener_fixture(tmp_path: Path) -> Iterator[NotifyListener]:
    """A NOTIFY_SOCKET in tmp_path; pass ``.address`` to the daemon as NOTIFY_SOCKET."""
    with NotifyListener(tmp_path / "notify.sock") as listener:
        yield listener


@pytest.fixture(name="alsa_mic")
def alsa_mic_fixture(tmp_path: Path) -> Iterator[AlsaMic]:
    """An ALSA config defining ``dgdtest`` over a FIFO, and the FifoMic writing into it.

    Point ``ALSA_CONFIG_PATH`` at ``alsa_config_path(conf)`` (`daemon_env` does). Stop the
    reader before this fixture is torn down: closing the FIFO makes the PCM read garbage.
    """
    conf = tmp_path / "alsa.conf"
    fifo = tmp_path / "mic.fifo"
    write_alsa_conf(conf, PCM_NAME, fifo)
    mic = FifoMic(fifo)
    try:
        yield AlsaMic(PCM_NAME, conf, mic)
    finally:
        mic.close()


@pytest.fixture(name="fake_server")
def fake_server_fixture(tmp_path: Path) -> Iterator[FakeServerProcess]:
    """``dgd fake-server`` on 127.0.0.1, accepting `E2E_API_KEY`, recording to tmp_path/server."""
    server = FakeServerProcess(tmp_path / "server", api_key=E2E_API_KEY)
    try:
        yield server
    finally:
        server.stop()


@functools.cache
def _bundled_sample() -> tuple[bytes, list[SampleUtterance]]:
    return load_sample()


def sample_utterance(index: int) -> bytes:
    """The bytes of utterance ``index`` of the bundled sample (16 kHz mono S16_LE): 0 "kitchen
    lights" 1.83 s, 1 "weather in Berlin" 2.54 s, 2 "timer" 1.85 s, 3 "quick brown fox"
    3.04 s, 4 "thank you" 2.16 s (dgd/data/sample.json)."""
    sample, utterances = _bundled_sample()
    u = utterances[index]
    return sample[u.start_byte : u.end_byte]
