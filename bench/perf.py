"""Benchmark: the real ``dgd run`` against Deepgram's SDK and a bare trio loop (issue 5).

Every client is a real process capturing through real alsa-lib (a ``type file`` PCM fed by
a FifoMic at real-time pace, each write one of the client's ALSA reads) and streaming to a
real ``dgd fake-server`` on 127.0.0.1. Runs are interleaved round-robin, one process at a
time. Measured per run:

- CPU % of one core: utime+stime of all threads (/proc/PID/stat) over the audio window (the
  user-space and kernel parts are kept too, ``user_pct`` and ``system_pct``);
- wake-ups/s: voluntary + involuntary context switches summed over /proc/PID/task/*/status
  (a proxy: every time a thread blocks or is preempted; threads that exit lose their count);
- WebSocket messages/s: binary + text messages in the server's recording within the window
  (pings, pongs and close frames are not recorded);
- peak RSS: VmHWM at the end of the window;
- ready: process start (just before exec) to the ``READY=1`` datagram on $NOTIFY_SOCKET;
- added latency, per 20 ms period: the server's receive time of the message holding it minus
  the time the FifoMic wrote it (the end of its capture); messages are located in the played
  stream by content, so gating does not confuse the mapping;
- instructions per audio second under ``valgrind --tool=callgrind`` (counters zeroed and
  dumped around a window of audio with ``callgrind_control``; all threads are counted);
- catch-up: dgd started with no server, fed a backlog, then the server started: time until
  the backlog is on the server.

The ``tls`` part runs every client over ``ws://`` and over ``wss://`` (the fake server with a
certificate from a throwaway CA made with the openssl CLI), each pair back to back, and
reports the TLS overhead of each client as a ratio and as CPU time per WebSocket message. dgd
trusts the CA through ``deepgram.ca_file``; the baselines through ``SSL_CERT_FILE`` (the SDK's
live client takes no SSL context: its ``websockets`` client, like trio-websocket, builds
``ssl.create_default_context()``, which reads that variable). ``tlscallgrind`` counts
instructions per audio second over both transports.

Usage (from the repository root, daemon venv; baselines run in the bench venv):
    .venv/bin/python bench/perf.py            # full run, about 60 min
    .venv/bin/python bench/perf.py --quick    # smoke run, about 10 min
    .venv/bin/python bench/perf.py --tls      # the TLS parts alone, about 30 min
Results: a table on stdout and ``bench/results/perf-<date>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgd.core.config import (  # noqa: E402
    AudioConfig,
    Config,
    DeepgramConfig,
    GateConfig,
    OutputConfig,
    StreamConfig,
    dump,
)
from dgd.core.gate import GateMode  # noqa: E402
from dgd.daemon.alsadevice import MAX_READ_MS  # noqa: E402
from dgd.testing.fifomic import FifoMic, alsa_config_path, write_alsa_conf  # noqa: E402
from dgd.tools.demo import FakeServerProcess, load_sample, package_env, server_records  # noqa: E402

RATE_HZ: Final = 16000
BYTES_PER_S: Final = RATE_HZ * 2
PERIOD_MS: Final = 20
PERIOD_BYTES: Final = BYTES_PER_S * PERIOD_MS // 1000
#: Played audio is a whole number of these (200 ms): a multiple of every FifoMic chunk the
#: clients use (20, 40 and 100 ms), so no write is ever a partial ALSA read (docs/TESTING.md).
ALIGN_BYTES: Final = 10 * PERIOD_BYTES
API_KEY: Final = "bench-key"
PCM_NAME: Final = "benchmic"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: Noise floor added to every sample (about -61 dBFS): real microphones are never digitally
#: silent, and unique noise lets messages be located in the played stream by content.
NOISE_SIGMA: Final = 30.0
NOISE_SEED: Final = 5
#: dgd's gate threshold in the benchmark config: well above the noise, below the speech.
GATE_THRESHOLD_DBFS: Final = -45.0
#: Silence played after the client is ready, before the measured window (connects, warms up).
WARMUP_S: Final = 2.0
#: After the window, time for the last messages to reach the server.
TAIL_S: Final = 1.0
READY_TIMEOUT_S: Final = 30.0
VALGRIND_READY_TIMEOUT_S: Final = 300.0
#: The venv bench/setup builds (Deepgram's SDK lives there, never in dgd's venv).
DEFAULT_BENCH_PYTHON: Final = str(Path(__file__).resolve().parent / ".venv" / "bin" / "python")
HERE: Final = Path(__file__).resolve().parent
#: Proxy variables are dropped from every client's environment: dgd (``deepgram.proxy = ""``)
#: and the SDK's ``websockets`` client both honour them, and the bench talks to 127.0.0.1.
PROXY_VARIABLES: Final = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
SERVER_START_TIMEOUT_S: Final = 20.0
_LISTENING_RE: Final = re.compile(r"listening on (wss?://\S+)")


# --------------------------------------------------------------------------- audio


def _utterances() -> list[bytes]:
    sample, utterances = load_sample()
    return [sample[u.start_byte : u.end_byte] for u in utterances]


def _with_noise(pcm: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    samples = array.array("h", pcm)
    for i, s in enumerate(samples):
        samples[i] = max(-32768, min(32767, round(s + rng.gauss(0.0, NOISE_SIGMA))))
    return samples.tobytes()


def continuous_speech(seconds: float, seed: int = NOISE_SEED) -> bytes:
    """``seconds`` of the sample's sentences back to back (250 ms gaps: the gate stays open)."""
    gap = bytes(BYTES_PER_S // 4)
    want = int(seconds * BYTES_PER_S) // ALIGN_BYTES * ALIGN_BYTES
    out = bytearray()
    while len(out) < want:
        for utterance in _utterances():
            out += utterance + gap
    return _with_noise(bytes(out[:want]), seed)


def mostly_silence(seconds: float, seed: int = NOISE_SEED) -> tuple[bytes, float]:
    """``seconds`` of noise floor with one sentence every 12 s; returns (audio, speech share)."""
    block = 12 * BYTES_PER_S
    want = int(seconds * BYTES_PER_S) // ALIGN_BYTES * ALIGN_BYTES
    out = bytearray()
    speech = 0
    utterances = _utterances()
    k = 0
    while len(out) < want:
        u = utterances[k % len(utterances)]
        k += 1
        lead = BYTES_PER_S // 2
        speech += min(len(u), max(0, want - len(out) - lead))
        out += bytes(lead) + u + bytes(max(0, block - lead - len(u)))
    return _with_noise(bytes(out[:want]), seed), speech / want


def pure_silence(seconds: float, seed: int = NOISE_SEED) -> bytes:
    """``seconds`` of the noise floor alone: dgd's gate stays closed throughout."""
    want = int(seconds * BYTES_PER_S) // ALIGN_BYTES * ALIGN_BYTES
    return _with_noise(bytes(want), seed)


# --------------------------------------------------------------------------- process probes


def cpu_ticks_split(pid: int) -> tuple[int, int]:
    """(utime, stime) of every thread of ``pid``, in clock ticks: user space, kernel."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def thread_switches(pid: int) -> dict[str, int]:
    """Voluntary + involuntary context switches of each live thread of ``pid``, by
    ``TID:name`` (the name the thread gave the kernel, /proc/PID/task/TID/comm)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            name = (task / "comm").read_text().strip()
            total = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
            out[f"{task.name}:{name}"] = total
    return out


def switch_rates(before: dict[str, int], after: dict[str, int], span_s: float) -> dict[str, float]:
    """Per-thread context switches per second over a window (threads alive at its end)."""
    return {k: round((v - before.get(k, 0)) / span_s, 1) for k, v in sorted(after.items())}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class NotifyListener:
    """A NOTIFY_SOCKET datagram socket that timestamps the first ``READY=1`` it receives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.ready_at: float | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"READY=1" in data.split(b"\n") and self.ready_at is None:
                self.ready_at = time.monotonic()
                self._ready.set()

    def wait(self, timeout_s: float) -> float | None:
        self._ready.wait(timeout_s)
        return self.ready_at

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed (PEM files), for 127.0.0.1."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Make a CA and a server certificate for ``127.0.0.1``/``localhost`` with the openssl CLI.

    ECDSA P-256 keys, valid for two days; the extensions (key usage, key identifiers) satisfy
    the strict verification Python 3.13 turns on (``VERIFY_X509_STRICT``)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n",
        encoding="ascii",
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_subject = ["-subj", "/CN=dgd bench throwaway CA"]
    ca_ext = ["-addext", "basicConstraints = critical, CA:TRUE"]
    ca_ext += ["-addext", "keyUsage = critical, keyCertSign, cRLSign"]
    sign = ["-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial", "-extfile", ext]
    steps = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, *ca_subject, *ca_ext],
        ["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, *sign, "-out", cert, "-days", "2"],
    ]
    for argv in steps:
        proc = subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(str(a) for a in argv[:3])} failed ({proc.returncode}): "
                f"{proc.stderr.strip()}; is the openssl CLI installed (Debian: openssl)?"
            )
    return TlsFiles(ca_pem, cert, key)


class TlsServerProcess:
    """``python -m dgd fake-server --tls-cert --tls-key`` on 127.0.0.1, a free port.

    The same recording as ``FakeServerProcess`` (``record_dir``, ``url``, ``stop``), over
    ``wss://``."""

    def __init__(self, record_dir: Path, tls: TlsFiles, *, api_key: str) -> None:
        self.record_dir: Final = record_dir
        record_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dgd", "fake-server", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--record-dir", str(record_dir), "--api-key", api_key]
        argv += ["--tls-cert", str(tls.cert_pem), "--tls-key", str(tls.key_pem)]
        self.process: Final = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env=package_env()
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.url: Final = self._wait_listening()

    def _drain(self) -> None:
        # Keep reading so the server never blocks on a full stdout pipe.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if match := _LISTENING_RE.search(line):
                return "wss://" + match.group(1).split("://", 1)[1]
        self.stop()
        raise RuntimeError(
            "`dgd fake-server --tls-cert --tls-key` did not print 'listening on ...' within "
            f"{SERVER_START_TIMEOUT_S:.0f} s (exit code {self.process.poll()}; its stderr is "
            "above): does this checkout's fake server have --tls-cert?"
        )

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM the server and wait; SIGKILL if it does not stop. Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(record_dir: Path, tls: TlsFiles | None) -> FakeServerProcess | TlsServerProcess:
    """The fake server over ``ws://`` (``tls`` None) or ``wss://`` with ``tls``'s certificate."""
    if tls is None:
        return FakeServerProcess(record_dir, api_key=API_KEY)
    return TlsServerProcess(record_dir, tls, api_key=API_KEY)


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class Client:
    """One client under test: ``kind`` is dgd, sdk or trio; ``frame_ms`` audio per message."""

    kind: str
    frame_ms: int

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.frame_ms}ms"

    @property
    def read_periods(self) -> int:
        """20 ms periods per ALSA read: dgd reads a frame, up to ``alsadevice.MAX_READ_MS``
        (mirrors ``dgd.daemon.alsadevice.read_periods``); the baselines read one period at a time.

        The FifoMic writes this much per write, as a sound card with that period size would
        wake its reader, and because a write that is not whole reads corrupts the stream."""
        if self.kind in DGD_KINDS:
            return max(1, min(self.frame_ms, MAX_READ_MS) // PERIOD_MS)
        return 1


def write_dgd_config(
    path: Path, url: str, frame_ms: int, jsonl: Path, ca_file: str = "", **stream: Any
) -> None:
    """The daemon's config; ``ca_file`` is ``deepgram.ca_file`` (the throwaway CA of a
    ``wss://`` run); ``stream`` sets other ``[stream]`` keys (a typo is a TypeError)."""
    deepgram = DeepgramConfig(url=url, ca_file=ca_file) if ca_file else DeepgramConfig(url=url)
    config = Config(
        deepgram=deepgram,
        audio=AudioConfig(device=PCM_NAME, rate=RATE_HZ, channels=1, period_ms=PERIOD_MS),
        gate=GateConfig(mode=GateMode.ENERGY, threshold_dbfs=GATE_THRESHOLD_DBFS),
        stream=replace(StreamConfig(frame_ms=frame_ms), **stream),
        output=OutputConfig(journald=False, jsonl=str(jsonl)),
    )
    path.write_text(dump(config), encoding="utf-8")


def client_argv(
    client: Client,
    work: Path,
    url: str,
    bench_python: str,
    tls: TlsFiles | None = None,
    **stream: float,
) -> list[str]:
    """The client's command line; a dgd client gets its config written into ``work``.

    Over ``wss://`` (``tls``), dgd trusts the CA through ``deepgram.ca_file``; the baselines
    through ``SSL_CERT_FILE`` (see `Harness.env`)."""
    if client.kind in DGD_KINDS:
        conf = work / "dgd.toml"
        ca_file = str(tls.ca_pem) if tls is not None else ""
        write_dgd_config(conf, url, client.frame_ms, work / "transcripts.jsonl", ca_file, **stream)
        return [sys.executable, "-m", "dgd", "run", "-c", str(conf), "--log-target", "stderr"]
    script = {"sdk": "baseline_sdk.py", "trio": "baseline_trio.py"}[client.kind]
    return [
        bench_python,
        str(HERE / script),
        "--device",
        PCM_NAME,
        "--url",
        url,
        "--period-ms",
        str(PERIOD_MS),
        "--frame-ms",
        str(client.frame_ms),
    ]


@dataclass(slots=True)
class RunResult:
    """The figures of one run (see the module docstring for what each one means)."""

    client: str
    scenario: str
    round: int
    window_s: float
    cpu_pct: float = float("nan")
    user_pct: float = float("nan")  # the user-space part of cpu_pct (utime)
    system_pct: float = float("nan")  # the kernel part of cpu_pct (stime)
    wakeups_per_s: float = float("nan")
    messages_per_s: float = float("nan")
    binary_per_s: float = float("nan")
    peak_rss_mb: float = float("nan")
    ready_ms: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    latency_max_ms: float = float("nan")
    sent_share: float = float("nan")  # audio bytes on the server / audio bytes played
    threads_wakeups_per_s: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(slots=True)
class Harness:
    """A fake server, a FifoMic and a NOTIFY_SOCKET in one scratch directory."""

    work: Path
    server: FakeServerProcess | TlsServerProcess | None = None
    mic: FifoMic | None = None
    notify: NotifyListener | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_mic(self, chunk_periods: int, speed: float = 1.0) -> FifoMic:
        fifo = self.work / "mic.fifo"
        write_alsa_conf(self.work / "alsa.conf", PCM_NAME, fifo)
        self.mic = FifoMic(fifo, speed=speed, chunk_periods=chunk_periods)
        return self.mic

    def env(self, client: Client | None = None, tls: TlsFiles | None = None) -> dict[str, str]:
        """The client's environment (and a NOTIFY_SOCKET listener), without proxy variables.

        A baseline over ``wss://`` trusts the throwaway CA through ``SSL_CERT_FILE`` (OpenSSL's
        default verify file, which ``ssl.create_default_context()`` loads): the SDK's live
        client takes no SSL context. dgd never gets it: it must trust the CA by ``ca_file``."""
        self.notify = NotifyListener(self.work / "notify.sock")
        env = package_env(
            ALSA_CONFIG_PATH=alsa_config_path(self.work / "alsa.conf"),
            DEEPGRAM_API_KEY=API_KEY,
            NOTIFY_SOCKET=str(self.notify.path),
        )
        for name in [*PROXY_VARIABLES, *(v.upper() for v in PROXY_VARIABLES)]:
            env.pop(name, None)
        env.pop("SSL_CERT_FILE", None)
        env.pop("SSL_CERT_DIR", None)
        if tls is not None and client is not None and client.kind not in DGD_KINDS:
            env["SSL_CERT_FILE"] = str(tls.ca_pem)
        return env

    def spawn(self, argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
        self.log = (self.work / "client.log").open("wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        return self.proc, started

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in self.extra:
            if p.poll() is None:
                p.terminate()
                p.wait()
        if self.mic is not None:
            with contextlib.suppress(OSError):
                self.mic.close()
        if self.server is not None:
            self.server.stop()
        if self.notify is not None:
            self.notify.close()
        if self.log is not None:
            self.log.close()

    def client_log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "client.log").read_text(errors="replace")[-2000:]
        return ""


def wait_ready(
    h: Harness, proc: subprocess.Popen[bytes], started: float, timeout_s: float
) -> float:
    assert h.notify is not None
    assert h.mic is not None
    deadline = time.monotonic() + timeout_s
    while h.notify.wait(0.1) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"client exited ({proc.poll()}) or sent no READY=1 in {timeout_s:.0f} s; its "
                f"output (also in {h.work}/client.log):\n{h.client_log_tail()}"
            )
    ready = h.notify.ready_at
    assert ready is not None
    if not h.mic.wait_reader(timeout_s):
        raise RuntimeError(f"client never opened the FIFO mic; log:\n{h.client_log_tail()}")
    return (ready - started) * 1000


def wait_written(h: Harness, proc: subprocess.Popen[bytes], offset: int) -> None:
    assert h.mic is not None
    while not h.mic.wait_written(offset, 0.2):
        if proc.poll() is not None:
            raise RuntimeError(f"client exited early ({proc.poll()}):\n{h.client_log_tail()}")


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class Received:
    """One binary message as the server recorded it."""

    t: float
    data: bytes


def received_messages(record_dir: Path) -> tuple[list[Received], list[dict[str, Any]]]:
    """Binary messages (with payload, in order) and every record of every connection."""
    binaries: list[Received] = []
    for jsonl in sorted(record_dir.glob("conn-*.jsonl")):
        raw = jsonl.with_suffix(".raw").read_bytes()
        pos = 0
        for line in jsonl.read_text("utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "binary":
                n = int(rec["len"])
                binaries.append(Received(float(rec["t"]), raw[pos : pos + n]))
                pos += n
    return binaries, server_records(record_dir)


def locate(binaries: list[Received], audio: bytes, audio_offset: int) -> list[tuple[Received, int]]:
    """Each message found in the played ``audio`` with the stream offset where it ends.

    Messages are matched by their last period (the noise floor makes every period unique);
    messages of stream silence from before or after the audio are not found and skipped.
    """
    out: list[tuple[Received, int]] = []
    cursor = 0
    for msg in binaries:
        if len(msg.data) < PERIOD_BYTES:
            continue
        tail = msg.data[-PERIOD_BYTES:]
        pos = audio.find(tail, cursor)
        if pos < 0:
            pos = audio.find(tail)  # a replayed or reordered message: search everywhere
            if pos < 0:
                continue
        else:
            cursor = pos + PERIOD_BYTES
        out.append((msg, audio_offset + pos + PERIOD_BYTES))
    return out


def period_ends(timeline: list[tuple[int, float]], chunk_bytes: int) -> dict[int, float]:
    """Capture end (wall clock) of every period the FifoMic wrote, by its stream offset.

    A chunk is written when its last sample has happened (real-time pace), so period ``i`` of
    an ``n``-period chunk ended ``(n - 1 - i)`` periods before the write."""
    period_s = PERIOD_BYTES / BYTES_PER_S
    n = chunk_bytes // PERIOD_BYTES
    out: dict[int, float] = {}
    for offset, t in timeline:
        for i in range(n):
            out[offset + i * PERIOD_BYTES] = t - (n - 1 - i) * period_s
    return out


def period_latencies_ms(located: list[tuple[Received, int]], ends: dict[int, float]) -> list[float]:
    """For every period of every located message: receive time minus capture end."""
    out: list[float] = []
    for msg, end in located:
        for start in range(end - len(msg.data), end, PERIOD_BYTES):
            t = ends.get(start)
            if t is not None:
                out.append((msg.t - t) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# --------------------------------------------------------------------------- one run


def run_once(
    client: Client,
    scenario: str,
    audio: bytes,
    round_no: int,
    bench_python: str,
    profile: dict[str, Any] | None = None,
    tls: TlsFiles | None = None,
) -> RunResult:
    """Start the server, the mic and the client; play ``audio``; measure the window.

    With ``profile`` (a dict to fill), py-spy samples the client over the window (which
    perturbs the figures of this run: profile runs are reported separately). With ``tls``,
    the server listens on ``wss://`` with its certificate and the client trusts its CA.
    """
    window_s = len(audio) / BYTES_PER_S
    result = RunResult(client.label, scenario, round_no, window_s)
    with tempfile.TemporaryDirectory(prefix="dgd-perf-") as tmp:
        h = Harness(Path(tmp))
        try:
            h.server = start_server(h.work / "server", tls)
            mic = h.start_mic(client.read_periods)
            env = h.env(client, tls)
            if client.kind == "dgd-before":
                # The dgd of another source tree (--before-tree) shadows the installed one.
                env["PYTHONPATH"] = os.pathsep.join((BEFORE_TREE[0], env["PYTHONPATH"]))
            argv = client_argv(client, h.work, h.server.url, bench_python, tls)
            proc, started = h.spawn(argv, env)
            result.ready_ms = wait_ready(h, proc, started, READY_TIMEOUT_S)
            warm_end = mic.bytes_written + int(WARMUP_S * BYTES_PER_S)
            start = mic.play(audio)
            wait_written(h, proc, max(start, warm_end) - PERIOD_BYTES)
            wait_written(h, proc, start)  # the first chunk of the window is out
            t0, cpu0, cs0 = time.time(), cpu_ticks_split(proc.pid), thread_switches(proc.pid)
            spy = None
            if profile is not None:
                spy = start_py_spy(bench_python, proc.pid, window_s - 0.5, h.work / "spy.txt")
            wait_written(h, proc, start + len(audio))
            t1, cpu1, cs1 = time.time(), cpu_ticks_split(proc.pid), thread_switches(proc.pid)
            result.peak_rss_mb = peak_rss_mb(proc.pid)
            if spy is not None and profile is not None:
                spy.wait(30)
                profile.update(summarize_py_spy(h.work / "spy.txt"))
            time.sleep(TAIL_S)
            timeline = mic.timeline
            span = t1 - t0
            result.user_pct = (cpu1[0] - cpu0[0]) / CLK_TCK / span * 100
            result.system_pct = (cpu1[1] - cpu0[1]) / CLK_TCK / span * 100
            result.cpu_pct = result.user_pct + result.system_pct
            result.threads_wakeups_per_s = switch_rates(cs0, cs1, span)
            result.wakeups_per_s = sum(result.threads_wakeups_per_s.values())
            binaries, records = received_messages(h.server.record_dir)
            in_window = [
                r for r in records if r.get("kind") in ("binary", "text") and t0 <= r["t"] <= t1
            ]
            result.messages_per_s = len(in_window) / span
            result.binary_per_s = sum(r["kind"] == "binary" for r in in_window) / span
            located = locate(binaries, audio, start)
            result.sent_share = sum(len(m.data) for m, _ in located) / len(audio)
            lat = period_latencies_ms(located, period_ends(timeline, mic.chunk_bytes))
            result.latency_p50_ms = percentile(lat, 50)
            result.latency_p99_ms = percentile(lat, 99)
            result.latency_max_ms = max(lat) if lat else float("nan")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result.error = str(exc)[-3000:]
        finally:
            h.close()
    return result


# --------------------------------------------------------------------------- py-spy


def start_py_spy(bench_python: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` for ``seconds`` into ``out`` (collapsed stacks, no idle)."""
    spy = str(Path(bench_python).parent / "py-spy")
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "1000",
        "--nonblocking",
        "--threads",
        "--function",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_py_spy(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares by function, and samples by thread."""
    if not path.exists():
        return {"error": f"py-spy wrote no {path.name} (is ptrace allowed? run as root)"}
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        total += n
        threads[frames[0]] = threads.get(frames[0], 0) + n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames[1:]):
            incl_n[f] = incl_n.get(f, 0) + n

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [(k, round(100 * v / total, 1)) for k, v in ranked]

    return {
        "samples": total,
        "by_thread_pct": share(threads),
        "self_pct": share(self_n),
        "inclusive_pct": share(incl_n),
    }


# --------------------------------------------------------------------------- callgrind


def callgrind_run(
    client: Client, audio: bytes, speed: float, bench_python: str, tls: TlsFiles | None = None
) -> dict[str, Any]:
    """Instructions per audio second for ``audio`` played at ``speed`` under callgrind
    (over ``wss://`` with ``tls``), and the WebSocket messages per audio second."""
    out: dict[str, Any] = {
        "client": client.label,
        "transport": "wss" if tls is not None else "ws",
        "audio_s": len(audio) / BYTES_PER_S,
    }
    with tempfile.TemporaryDirectory(prefix="dgd-perf-cg-") as tmp:
        h = Harness(Path(tmp))
        try:
            h.server = start_server(h.work / "server", tls)
            mic = h.start_mic(client.read_periods, speed=speed)
            env = h.env(client, tls)
            argv = client_argv(client, h.work, h.server.url, bench_python, tls)
            cg_out = h.work / "callgrind.out"
            vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}.%p"]
            proc, started = h.spawn([*vg, *argv], env)
            out["ready_ms_under_valgrind"] = wait_ready(h, proc, started, VALGRIND_READY_TIMEOUT_S)
            warm_end = mic.bytes_written + int(WARMUP_S * speed * BYTES_PER_S * 2)
            start = mic.play(audio)
            wait_written(h, proc, max(start, warm_end) - PERIOD_BYTES)
            wait_written(h, proc, start)
            _callgrind_control(["-z", str(proc.pid)])
            t0 = time.time()
            wait_written(h, proc, start + len(audio))
            _callgrind_control(["-d", "window", str(proc.pid)])
            t1 = time.time()
            dumps = sorted(h.work.glob(f"callgrind.out.{proc.pid}*"))
            # The dump asked for by -d is callgrind.out.PID.N; callgrind.out.PID is the one
            # written at exit (start-up and shutdown included), which is not used.
            window = [d for d in dumps if d.name != f"callgrind.out.{proc.pid}"]
            if not window:
                raise RuntimeError(f"no callgrind dump for the window in {[d.name for d in dumps]}")
            ir = sum(_dump_total_ir(d) for d in window)
            out["ir_total"] = ir
            # Audio the client actually handled in the window: what reached the server between
            # zeroing and dumping. (The FIFO holds up to 64 KiB, 2 s, so the writer's progress
            # can run ahead of a client slowed by valgrind.)
            in_window = [
                r
                for r in server_records(h.server.record_dir)
                if r.get("kind") in ("binary", "text") and t0 <= r["t"] <= t1
            ]
            sent = sum(int(r["len"]) for r in in_window if r["kind"] == "binary")
            out["audio_s_sent"] = sent / BYTES_PER_S
            if sent == 0:
                raise RuntimeError("the client sent no audio during the callgrind window")
            out["ir_per_audio_s"] = ir / out["audio_s_sent"]
            out["messages_per_audio_s"] = len(in_window) / out["audio_s_sent"]
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            out["error"] = str(exc)[-3000:]
        finally:
            h.close()
    return out


def _callgrind_control(args: list[str]) -> None:
    proc = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed: {proc.stdout}{proc.stderr}")


def _dump_total_ir(path: Path) -> int:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: no summary line")


# --------------------------------------------------------------------------- catch-up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def catchup_run(backlog_s: float, frame_ms: int) -> dict[str, Any]:
    """dgd captures ``backlog_s`` with no server; then the server starts. How fast is it sent?"""
    out: dict[str, Any] = {"backlog_s": backlog_s, "frame_ms": frame_ms}
    live_s = backlog_s + 10.0  # audio still playing while the backlog goes out
    audio = continuous_speech(backlog_s + live_s, seed=NOISE_SEED + 1)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/listen"
    with tempfile.TemporaryDirectory(prefix="dgd-perf-cu-") as tmp:
        h = Harness(Path(tmp))
        try:
            mic = h.start_mic(Client("dgd", frame_ms).read_periods)
            env = h.env()
            argv = client_argv(
                Client("dgd", frame_ms), h.work, url, "", backoff_initial_s=0.5, backoff_max_s=1.0
            )
            proc, started = h.spawn(argv, env)
            wait_ready(h, proc, started, READY_TIMEOUT_S)
            start = mic.play(audio)
            wait_written(h, proc, start + int(backlog_s * BYTES_PER_S))
            record = h.work / "server"
            record.mkdir()
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dgd",
                    "fake-server",
                    "--port",
                    str(port),
                    "--api-key",
                    API_KEY,
                    "--record-dir",
                    str(record),
                ],
                env=package_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            h.extra.append(server)
            server_started = time.time()
            mic_at_start = mic.bytes_written
            deadline = time.monotonic() + backlog_s / 1.2 + 30
            connected_at: float | None = None
            delivered_at: float | None = None
            while time.monotonic() < deadline and delivered_at is None:
                time.sleep(0.5)
                binaries, records = received_messages(record)
                if connected_at is None:
                    opened = [
                        r["t"]
                        for r in records
                        if r.get("kind") == "handshake" and r.get("status") == 101
                    ]
                    connected_at = min(opened) if opened else None
                for msg, end in locate(binaries, audio, start):
                    if end >= mic_at_start:
                        delivered_at = msg.t
                        break
            out["backlog_on_connect_s"] = (mic_at_start - start) / BYTES_PER_S
            if connected_at is not None:
                out["connect_after_server_start_s"] = connected_at - server_started
            if connected_at is not None and delivered_at is not None:
                out["backlog_delivered_s"] = delivered_at - connected_at
            else:
                out["error"] = "the backlog was not delivered in time"
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            out["error"] = str(exc)[-3000:]
        finally:
            h.close()
    return out


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    window_s: float
    dgd_frame_ms: int
    baseline_frame_ms: int
    baseline_silence_rounds: int
    sweep_frame_ms: tuple[int, ...]
    sweep_window_s: float
    sweep_baseline_frame_ms: int
    callgrind_audio_s: float
    callgrind_speed: float
    catchup_backlog_s: float
    profile_s: float
    #: dgd's frame sizes in the ``tls`` parts (the baselines send 20 ms frames): 100 ms is
    #: the default, 20 ms sends as many messages as the baselines.
    tls_frame_ms: tuple[int, ...] = (100, 20)


FULL: Final = Plan(3, 60.0, 100, 20, 1, (20, 40, 100, 200), 30.0, 100, 10.0, 0.5, 60.0, 30.0)
QUICK: Final = Plan(1, 12.0, 100, 20, 1, (20, 200), 8.0, 100, 3.0, 0.5, 10.0, 8.0, (100, 20))


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Client kinds that are dgd: this checkout, and the tree given with --before-tree.
DGD_KINDS: Final = ("dgd", "dgd-before")
#: The source tree of "dgd-before" (set by main).
BEFORE_TREE: list[str] = [""]


def run_plan(
    plan: Plan, bench_python: str, parts: set[str], only: set[str] | None = None
) -> dict[str, Any]:
    speech = continuous_speech(plan.window_s)
    silence, speech_share = mostly_silence(plan.window_s)
    quiet = pure_silence(plan.window_s, seed=NOISE_SEED + 5)
    dgd = Client("dgd", plan.dgd_frame_ms)
    sdk = Client("sdk", plan.baseline_frame_ms)
    bare = Client("trio", plan.baseline_frame_ms)
    runs: list[RunResult] = []

    def one(
        client: Client, scenario: str, audio: bytes, r: int, tls: TlsFiles | None = None
    ) -> None:
        if only is not None and client.kind not in only:
            return
        log(f"[round {r}] {client.label} {scenario} ({len(audio) / BYTES_PER_S:.0f} s)...")
        res = run_once(client, scenario, audio, r, bench_python, tls=tls)
        log(f"    {_brief(res)}")
        runs.append(res)

    if "before" in parts:
        # This checkout against another tree of dgd (--before-tree), same audio, interleaved:
        # does a change cost anything at run time?
        before = Client("dgd-before", plan.dgd_frame_ms)
        for r in range(1, plan.rounds + 1):
            order = [dgd, before] if r % 2 else [before, dgd]
            for scenario, audio in (("speech", speech), ("silence", quiet)):
                for c in order:
                    one(c, scenario, audio, r)
    if "main" in parts:
        for r in range(1, plan.rounds + 1):
            # Round-robin, rotating the order so no client always runs first.
            order = [dgd, sdk, bare][r - 1 :] + [dgd, sdk, bare][: r - 1]
            for c in order:
                one(c, "speech", speech, r)
            one(dgd, "silence80", silence, r)
            one(dgd, "silence", quiet, r)
            if r <= plan.baseline_silence_rounds:
                for c in (sdk, bare):
                    one(c, "silence80", silence, r)
    tls_dir = Path(tempfile.mkdtemp(prefix="dgd-perf-tls-"))
    tls = make_tls_files(tls_dir) if parts & {"tls", "tlscallgrind"} else None
    tls_clients = [Client("dgd", f) for f in plan.tls_frame_ms] + [sdk, bare]
    if "tls" in parts and tls is not None:
        # Each client over ws:// and over wss:// back to back (the order of the two
        # alternating by round), the clients' order rotating by round: the wss/ws ratio of a
        # client compares two adjacent runs, so slow drift in the machine's load cancels.
        for r in range(1, plan.rounds + 1):
            k = (r - 1) % len(tls_clients)
            for c in tls_clients[k:] + tls_clients[:k]:
                for transport in (None, tls) if r % 2 else (tls, None):
                    scenario = "speech-ws" if transport is None else "speech-wss"
                    one(c, scenario, speech, r, transport)
    sweep: list[RunResult] = []
    if "sweep" in parts:
        sweep_audio = continuous_speech(plan.sweep_window_s, seed=NOISE_SEED + 2)
        clients = [Client("dgd", f) for f in plan.sweep_frame_ms]
        clients += [Client("sdk", plan.sweep_baseline_frame_ms)]
        clients += [Client("trio", plan.sweep_baseline_frame_ms)]
        for c in clients:
            if only is not None and c.kind not in only:
                continue
            log(f"[sweep] {c.label} speech ({plan.sweep_window_s:.0f} s)...")
            res = run_once(c, "speech", sweep_audio, 0, bench_python)
            log(f"    {_brief(res)}")
            sweep.append(res)
    callgrind: list[dict[str, Any]] = []
    if "callgrind" in parts:
        cg_audio = continuous_speech(plan.callgrind_audio_s, seed=NOISE_SEED + 3)
        for c in (dgd, sdk, bare):
            log(
                f"[callgrind] {c.label} ({plan.callgrind_audio_s:.0f} s at {plan.callgrind_speed}x)"
            )
            res_cg = callgrind_run(c, cg_audio, plan.callgrind_speed, bench_python)
            log(f"    {res_cg}")
            callgrind.append(res_cg)
    tls_callgrind: list[dict[str, Any]] = []
    if "tlscallgrind" in parts and tls is not None:
        cg_audio = continuous_speech(plan.callgrind_audio_s, seed=NOISE_SEED + 3)
        for c in tls_clients:
            if only is not None and c.kind not in only:
                continue
            for transport in (None, tls):
                name = "ws" if transport is None else "wss"
                log(f"[tls callgrind] {c.label} over {name} ({plan.callgrind_audio_s:.0f} s)")
                res_cg = callgrind_run(c, cg_audio, plan.callgrind_speed, bench_python, transport)
                log(f"    {res_cg}")
                tls_callgrind.append(res_cg)
    shutil.rmtree(tls_dir, ignore_errors=True)
    align: list[RunResult] = []
    if "align" in parts:
        # Where the gate opens within dgd's 100 ms read decides whether its frames end with a
        # read (docs/PERFORMANCE.md). The speech follows 2 s of noise floor, longer than the
        # pre-roll: right after start-up the pre-roll is cut short at the first captured period
        # and the frames happen to line up with the reads, which hides the effect. Shifting
        # the onset by 0..4 periods covers every phase.
        base = continuous_speech(plan.sweep_window_s, seed=NOISE_SEED + 6)
        for shift in range(dgd.read_periods):
            lead_bytes = int(WARMUP_S * BYTES_PER_S) + shift * PERIOD_BYTES
            lead = _with_noise(bytes(lead_bytes), NOISE_SEED + 7)
            audio = lead + base[: len(base) - len(lead)]
            log(f"[align] {dgd.label} speech onset shifted by {shift} periods...")
            res = run_once(dgd, f"speech+{shift * PERIOD_MS}ms", audio, 0, bench_python)
            log(f"    {_brief(res)}")
            align.append(res)
    profiles: dict[str, Any] = {}
    if "profile" in parts:
        prof_audio = continuous_speech(plan.profile_s, seed=NOISE_SEED + 4)
        for scenario, audio in (("speech", prof_audio), ("silence80", silence)):
            log(f"[profile] {dgd.label} {scenario} under py-spy ({len(audio) / BYTES_PER_S:.0f} s)")
            prof: dict[str, Any] = {}
            res = run_once(dgd, scenario, audio, 0, bench_python, profile=prof)
            prof["run"] = asdict(res)
            log(f"    {_brief(res)}\n    {json.dumps(prof.get('self_pct', prof))[:1500]}")
            profiles[scenario] = prof
    catchup: dict[str, Any] = {}
    if "catchup" in parts:
        log(f"[catch-up] dgd, {plan.catchup_backlog_s:.0f} s backlog...")
        catchup = catchup_run(plan.catchup_backlog_s, plan.dgd_frame_ms)
        log(f"    {catchup}")
    return {
        "plan": asdict(plan),
        "silence80_speech_share": speech_share,
        "runs": [asdict(r) for r in runs],
        "sweep": [asdict(r) for r in sweep],
        "callgrind": callgrind,
        "catchup": catchup,
        "profiles": profiles,
        "align": [asdict(r) for r in align],
        "tls_callgrind": tls_callgrind,
    }


def _brief(r: RunResult) -> str:
    if r.error:
        return f"ERROR: {r.error}"
    return (
        f"cpu {r.cpu_pct:.2f} %, wake-ups {r.wakeups_per_s:.0f}/s, msgs {r.messages_per_s:.1f}/s, "
        f"rss {r.peak_rss_mb:.1f} MB, ready {r.ready_ms:.0f} ms, latency p50/p99 "
        f"{r.latency_p50_ms:.1f}/{r.latency_p99_ms:.1f} ms, sent {r.sent_share:.2f}; "
        f"wake-ups by thread {r.threads_wakeups_per_s}"
    )


# --------------------------------------------------------------------------- report


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Medians per client and scenario, per-round ratios and the targets, met or missed."""
    plan = data["plan"]
    runs = [r for r in data["runs"] if not r["error"]]
    dgd = f"dgd@{plan['dgd_frame_ms']}ms"
    sdk = f"sdk@{plan['baseline_frame_ms']}ms"
    bare = f"trio@{plan['baseline_frame_ms']}ms"
    metrics = (
        "cpu_pct",
        "wakeups_per_s",
        "messages_per_s",
        "peak_rss_mb",
        "ready_ms",
        "latency_p50_ms",
        "latency_p99_ms",
        "sent_share",
    )
    medians: dict[str, dict[str, float]] = {}
    for r in runs:
        key = f"{r['client']} {r['scenario']}"
        medians.setdefault(key, {})
    for key in medians:
        client, scenario = key.split(" ")
        sel = [r for r in runs if r["client"] == client and r["scenario"] == scenario]
        medians[key] = {m: median([r[m] for r in sel]) for m in metrics}
        medians[key]["runs"] = len(sel)

    def by_round(client: str, scenario: str, metric: str) -> dict[int, float]:
        return {
            r["round"]: r[metric]
            for r in runs
            if r["client"] == client and r["scenario"] == scenario
        }

    def ratios(a: dict[int, float], b: dict[int, float]) -> list[float]:
        return [a[k] / b[k] for k in sorted(a) if b.get(k)]

    cpu_d = by_round(dgd, "speech", "cpu_pct")
    targets: list[dict[str, Any]] = []

    def target(name: str, values: list[float], limit: float, unit: str = "x") -> None:
        med = median(values)
        targets.append(
            {
                "target": name,
                "per_round": values,
                "median": med,
                "limit": limit,
                "unit": unit,
                "met": bool(values) and all(v <= limit for v in values),
                "margin": (limit - med) if med == med else float("nan"),
            }
        )

    target("speech CPU dgd/SDK <= 1.0", ratios(cpu_d, by_round(sdk, "speech", "cpu_pct")), 1.0)
    target(
        "speech CPU dgd/bare trio <= 0.5", ratios(cpu_d, by_round(bare, "speech", "cpu_pct")), 0.5
    )
    target(
        "80% silence CPU / dgd speech CPU <= 0.3",
        ratios(by_round(dgd, "silence80", "cpu_pct"), cpu_d),
        0.3,
    )
    target(
        "info: pure silence (gate closed) CPU / dgd speech CPU <= 0.3",
        ratios(by_round(dgd, "silence", "cpu_pct"), cpu_d),
        0.3,
    )
    target(
        "peak RSS dgd/SDK <= 0.8",
        ratios(by_round(dgd, "speech", "peak_rss_mb"), by_round(sdk, "speech", "peak_rss_mb")),
        0.8,
    )
    target(
        "READY dgd / bare-loop ready <= 1.5",
        ratios(by_round(dgd, "speech", "ready_ms"), by_round(bare, "speech", "ready_ms")),
        1.5,
    )
    target(
        f"p99 added latency <= frame ({plan['dgd_frame_ms']} ms) + 5 ms",
        list(by_round(dgd, "speech", "latency_p99_ms").values()),
        plan["dgd_frame_ms"] + 5.0,
        "ms",
    )
    before = f"dgd-before@{plan['dgd_frame_ms']}ms"
    for scenario in ("speech", "silence"):
        for metric in ("cpu_pct", "wakeups_per_s", "peak_rss_mb", "ready_ms"):
            values = ratios(by_round(dgd, scenario, metric), by_round(before, scenario, metric))
            if values:
                # Run-to-run noise on a shared machine is a few percent; 1.1 flags a real cost.
                target(f"info: {scenario} {metric} dgd / dgd before <= 1.1", values, 1.1)
    return {
        "medians": medians,
        "targets": targets,
        "tls": summarize_tls(runs, sdk),
        "tls_callgrind": summarize_tls_callgrind(data.get("tls_callgrind", [])),
    }


def summarize_tls(runs: list[dict[str, Any]], sdk: str) -> dict[str, Any]:
    """The ``tls`` part: per client, ws:// and wss:// medians, the per-round wss/ws ratios,
    the CPU time TLS adds per WebSocket message, and dgd / SDK per transport.

    Added CPU per message = (CPU over wss - CPU over ws, same round) / messages per second
    over wss (both directions: audio out, results in), in microseconds of CPU."""

    def by_round(client: str, scenario: str, metric: str) -> dict[int, float]:
        return {
            r["round"]: r.get(metric, float("nan"))  # user/system_pct: not in older results
            for r in runs
            if r["client"] == client and r["scenario"] == scenario
        }

    clients = sorted(
        {r["client"] for r in runs if r["scenario"] == "speech-wss"},
        key=lambda c: (c.split("@")[0] != "dgd", c.split("@")[0], -int(c.split("@")[1][:-2])),
    )
    out: dict[str, Any] = {"clients": {}, "vs_sdk": {}}
    for c in clients:
        row: dict[str, Any] = {}
        metrics = ("cpu_pct", "user_pct", "system_pct", "peak_rss_mb", "messages_per_s")
        for metric in (*metrics, "latency_p99_ms"):
            ws, wss = by_round(c, "speech-ws", metric), by_round(c, "speech-wss", metric)
            row[metric] = {"ws": median(list(ws.values())), "wss": median(list(wss.values()))}
            row[metric]["wss_over_ws"] = [wss[k] / ws[k] for k in sorted(wss) if ws.get(k)]
            row[metric]["ratio_median"] = median(row[metric]["wss_over_ws"])
        cpu_ws, cpu_wss = by_round(c, "speech-ws", "cpu_pct"), by_round(c, "speech-wss", "cpu_pct")
        msgs = by_round(c, "speech-wss", "messages_per_s")
        added = [
            (cpu_wss[k] - cpu_ws[k]) / 100 / msgs[k] * 1e6
            for k in sorted(cpu_wss)
            if k in cpu_ws and msgs.get(k)
        ]
        row["added_cpu_us_per_message"] = {"per_round": added, "median": median(added)}
        row["runs"] = len(cpu_wss)
        out["clients"][c] = row
    for c in clients:
        if c == sdk or not c.startswith("dgd@"):
            continue
        entry: dict[str, Any] = {}
        for metric in ("cpu_pct", "peak_rss_mb"):
            for scenario in ("speech-ws", "speech-wss"):
                a, b = by_round(c, scenario, metric), by_round(sdk, scenario, metric)
                values = [a[k] / b[k] for k in sorted(a) if b.get(k)]
                entry[f"{metric} {scenario[7:]}"] = {"per_round": values, "median": median(values)}
        out["vs_sdk"][c] = entry
    return out


def summarize_tls_callgrind(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Instructions per audio second over ws:// and wss:// per client, and what TLS adds per
    WebSocket message (instructions, both directions)."""
    out: dict[str, Any] = {}
    for r in results:
        if "ir_per_audio_s" in r:
            out.setdefault(r["client"], {})[r["transport"]] = r
    rows: dict[str, Any] = {}
    for client, by_transport in out.items():
        ws, wss = by_transport.get("ws"), by_transport.get("wss")
        if ws is None or wss is None:
            continue
        rows[client] = {
            "ir_per_audio_s_ws": ws["ir_per_audio_s"],
            "ir_per_audio_s_wss": wss["ir_per_audio_s"],
            "wss_over_ws": wss["ir_per_audio_s"] / ws["ir_per_audio_s"],
            "messages_per_audio_s": wss["messages_per_audio_s"],
            "added_ir_per_message": (wss["ir_per_audio_s"] - ws["ir_per_audio_s"])
            / wss["messages_per_audio_s"],
        }
    return rows


def render(data: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = [
        "| client, scenario | runs | CPU % | wake-ups/s | msgs/s | peak RSS MB | ready ms "
        "| latency p50 / p99 ms | audio sent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, m in summary["medians"].items():
        lines.append(
            f"| {key} | {m['runs']} | {m['cpu_pct']:.2f} | {m['wakeups_per_s']:.0f} | "
            f"{m['messages_per_s']:.1f} | {m['peak_rss_mb']:.1f} | {m['ready_ms']:.0f} | "
            f"{m['latency_p50_ms']:.1f} / {m['latency_p99_ms']:.1f} | {m['sent_share']:.0%} |"
        )
    if any(t["per_round"] for t in summary["targets"]):
        lines += ["", "| target | per round | median | met |", "| --- | --- | --- | --- |"]
    for t in summary["targets"] if summary["medians"] else []:
        if not t["per_round"]:
            continue  # a part that did not run (e.g. --tls alone)
        per = ", ".join(f"{v:.2f}" for v in t["per_round"])
        lines.append(
            f"| {t['target']} | {per} | {t['median']:.2f} {t['unit']} | "
            f"{'yes' if t['met'] else 'NO'} (margin {t['margin']:+.2f} {t['unit']}) |"
        )
    if data["sweep"]:
        lines += [
            "",
            "| frame sweep (continuous speech) | CPU % | wake-ups/s | msgs/s | "
            "latency p50 / p99 / max ms |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in data["sweep"]:
            if r["error"]:
                lines.append(f"| {r['client']} | error: {r['error'][:80]} | | | |")
                continue
            lines.append(
                f"| {r['client']} | {r['cpu_pct']:.2f} | {r['wakeups_per_s']:.0f} | "
                f"{r['messages_per_s']:.1f} | {r['latency_p50_ms']:.1f} / "
                f"{r['latency_p99_ms']:.1f} / {r['latency_max_ms']:.1f} |"
            )
    if data.get("align"):
        lines += [
            "",
            "| speech onset within a read (dgd, continuous speech) | CPU % | "
            "latency p50 / p99 / max ms |",
            "| --- | --- | --- |",
        ]
        for r in data["align"]:
            if r["error"]:
                lines.append(f"| {r['scenario']} | error: {r['error'][:80]} | |")
                continue
            lines.append(
                f"| {r['client']} {r['scenario']} | {r['cpu_pct']:.2f} | "
                f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} / "
                f"{r['latency_max_ms']:.1f} |"
            )
    if data["callgrind"]:
        lines += [
            "",
            "| callgrind (continuous speech) | instructions per audio second |",
            "| --- | --- |",
        ]
        for c in data["callgrind"]:
            value = (
                f"{c['ir_per_audio_s'] / 1e6:.1f} M"
                if "ir_per_audio_s" in c
                else c.get("error", "")[:80]
            )
            lines.append(f"| {c['client']} | {value} |")
    cu = data["catchup"]
    if cu:
        lines += ["", f"catch-up: {cu}"]
    lines += render_tls(summary)
    return "\n".join(lines)


def render_tls(summary: dict[str, Any]) -> list[str]:
    """The ``tls`` and ``tlscallgrind`` tables (empty when those parts did not run)."""
    lines: list[str] = []
    tls = summary.get("tls", {})
    if tls.get("clients"):
        lines += [
            "",
            "| TLS: client, continuous speech | runs | CPU % ws / wss | wss/ws CPU (per round) "
            "| peak RSS MB ws / wss | wss/ws RSS | msgs/s | CPU added per message µs "
            "| latency p99 ms ws / wss |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for client, row in tls["clients"].items():
            cpu, rss = row["cpu_pct"], row["peak_rss_mb"]
            per = ", ".join(f"{v:.2f}" for v in cpu["wss_over_ws"])
            lat = row["latency_p99_ms"]
            lines.append(
                f"| {client} | {row['runs']} | {cpu['ws']:.2f} / {cpu['wss']:.2f} | "
                f"{cpu['ratio_median']:.2f} ({per}) | {rss['ws']:.1f} / {rss['wss']:.1f} | "
                f"{rss['ratio_median']:.2f} | {row['messages_per_s']['wss']:.1f} | "
                f"{row['added_cpu_us_per_message']['median']:.0f} | "
                f"{lat['ws']:.1f} / {lat['wss']:.1f} |"
            )
        if tls.get("vs_sdk"):
            lines += [
                "",
                "| TLS: ratio to the SDK, per round | CPU ws | CPU wss | peak RSS ws "
                "| peak RSS wss |",
                "| --- | --- | --- | --- | --- |",
            ]
            for client, entry in tls["vs_sdk"].items():
                cells = []
                for key in ("cpu_pct ws", "cpu_pct wss", "peak_rss_mb ws", "peak_rss_mb wss"):
                    per = ", ".join(f"{v:.2f}" for v in entry[key]["per_round"])
                    cells.append(f"{entry[key]['median']:.2f} ({per})")
                lines.append(f"| {client} / SDK | {' | '.join(cells)} |")
    cg = summary.get("tls_callgrind", {})
    if cg:
        lines += [
            "",
            "| TLS: callgrind, continuous speech | instructions per audio s ws / wss | wss/ws "
            "| msgs per audio s | instructions added per message |",
            "| --- | --- | --- | --- | --- |",
        ]
        for client, row in cg.items():
            lines.append(
                f"| {client} | {row['ir_per_audio_s_ws'] / 1e6:.1f} M / "
                f"{row['ir_per_audio_s_wss'] / 1e6:.1f} M | {row['wss_over_ws']:.2f} | "
                f"{row['messages_per_audio_s']:.1f} | {row['added_ir_per_message'] / 1e3:.0f} k |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 10-minute smoke run")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--window-s", type=float, help="override the audio window per run")
    parser.add_argument(
        "--parts",
        default="main,sweep,align,callgrind,profile,catchup,tls,tlscallgrind",
        help="comma list of parts to run (tls, tlscallgrind: every client over ws:// and wss://)",
    )
    parser.add_argument(
        "--bench-python",
        default=DEFAULT_BENCH_PYTHON,
        help="python of the venv with deepgram-sdk (see bench/README.md)",
    )
    parser.add_argument("--out", type=Path, help="JSON results path")
    parser.add_argument(
        "--before-tree",
        help="a source tree of dgd (e.g. `git archive <commit> | tar -x -C DIR`) to compare "
        "with this checkout: the part 'before' runs both, interleaved",
    )
    parser.add_argument("--only", help="comma list of clients to run (dgd,sdk,trio)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="only the TLS parts (same as --parts tls,tlscallgrind)",
    )
    parser.add_argument("--sweep-frame-ms", help="comma list of dgd frame sizes for the sweep")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: merge these results files (rounds renumbered in order) into --out "
        "and print their tables",
    )
    args = parser.parse_args()
    if args.merge:
        if args.out is None:
            parser.error("--merge needs --out")
        write_results(
            merge_results([json.loads(f.read_text("utf-8")) for f in args.merge]), args.out
        )
        return 0
    plan = QUICK if args.quick else FULL
    if args.sweep_frame_ms:
        sweep = tuple(int(f) for f in args.sweep_frame_ms.split(","))
        plan = Plan(**{**asdict(plan), "sweep_frame_ms": sweep})
    if args.rounds is not None or args.window_s is not None:
        fields = asdict(plan)
        fields["rounds"] = args.rounds or plan.rounds
        fields["window_s"] = args.window_s or plan.window_s
        plan = Plan(**fields)
    parts = {"tls", "tlscallgrind"} if args.tls else set(args.parts.split(","))
    if args.before_tree:
        BEFORE_TREE[0] = str(Path(args.before_tree).resolve())
    elif "before" in parts:
        print("bench/perf.py: the part 'before' needs --before-tree", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    needs_baselines = only is None or bool(only & {"sdk", "trio"})
    if needs_baselines and not Path(args.bench_python).exists():
        print(
            f"bench/perf.py: no bench venv python at {args.bench_python}; create it as "
            "bench/README.md says, or pass --bench-python",
            file=sys.stderr,
        )
        return 2
    if shutil.which("valgrind") is None:
        log("valgrind not found: skipping the callgrind part")
    if shutil.which("valgrind") is None:
        parts.discard("callgrind")
        parts.discard("tlscallgrind")
    began = time.monotonic()
    data = run_plan(plan, args.bench_python, parts, only)
    data["machine"] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "elapsed_s": round(time.monotonic() - began),
    }
    out = (
        args.out
        or HERE
        / "results"
        / f"perf-{dt.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    )
    write_results(data, out)
    log(f"in {time.monotonic() - began:.0f} s")
    return 0


def write_results(data: dict[str, Any], out: Path) -> None:
    """Summarize ``data``, print its tables, write it to ``out`` (JSON) and the tables to
    ``out`` with the suffix ``.md``."""
    summary = summarize(data)
    data["summary"] = summary
    table = render(data, summary)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    (out.with_suffix(".md")).write_text(table + "\n", encoding="utf-8")
    log(f"wrote {out} and {out.with_suffix('.md')}")


def merge_results(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results of the same plan as one: the runs of each file after the previous
    file's, their rounds renumbered (round r of the second of two 3-round files is 3 + r); the
    other parts' lists concatenated; the machine records kept as a list."""
    merged: dict[str, Any] = {**files[0], "runs": [], "machine": [], "merged_from": len(files)}
    list_parts = ("sweep", "callgrind", "align", "tls_callgrind")
    for part in list_parts:
        merged[part] = []
    offset = 0
    for data in files:
        merged["runs"] += [{**r, "round": r["round"] + offset} for r in data["runs"]]
        offset += max((r["round"] for r in data["runs"]), default=0)
        for part in list_parts:
            merged[part] += data.get(part, [])
        merged["machine"].append(data.get("machine", {}))
    merged.pop("summary", None)
    return merged


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
