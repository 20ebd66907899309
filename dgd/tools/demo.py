"""`dgd demo`: the real daemon on the bundled sample, through real ALSA, against the fake server.

``run_demo`` wires the FIFO microphone (``dgd.testing.fifomic``) to the fake Deepgram server
and a real ``dgd run`` process, plays the bundled sample and prints the transcripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO

from dgd.core.config import AudioConfig, Config, DeepgramConfig, GateConfig, OutputConfig, dump
from dgd.core.gate import GateMode
from dgd.testing.fifomic import SAMPLE_WIDTH_BYTES, FifoMic, alsa_config_path, write_alsa_conf

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: Demo timings. The daemon needs a moment to import and open the device; 20 s is generous
#: for a Pi Zero 2 W. Shutdown waits stream.close_timeout_s (5 s default) for the finals.
_SERVER_START_TIMEOUT_S: Final = 20.0
_DAEMON_OPEN_TIMEOUT_S: Final = 20.0
_DAEMON_STOP_TIMEOUT_S: Final = 15.0
_LISTENING_RE: Final = re.compile(r"listening on (ws://\S+)")
DEMO_API_KEY: Final = "demo-key"
DEMO_PCM_NAME: Final = "dgddemo"


@dataclass(frozen=True, slots=True)
class SampleUtterance:
    """One spoken sentence of the bundled sample: bytes ``[start_byte, end_byte)``."""

    index: int
    text: str
    start_byte: int
    end_byte: int


def load_sample() -> tuple[bytes, list[SampleUtterance]]:
    """The bundled sample (16 kHz mono S16_LE) and its ground-truth utterances."""
    data = resources.files("dgd").joinpath("data/sample.raw").read_bytes()
    meta = json.loads(resources.files("dgd").joinpath("data/sample.json").read_text("utf-8"))
    utterances = [
        SampleUtterance(int(u["index"]), str(u["text"]), int(u["start_byte"]), int(u["end_byte"]))
        for u in meta["utterances"]
    ]
    return data, utterances


class FakeServerProcess:
    """``python -m dgd fake-server`` as a subprocess, bound to 127.0.0.1 on a free port.

    Args:
        record_dir: where the server records each connection (``conn-NNNN.raw``/``.jsonl``).
        api_key: the key the server accepts (None: the server's default policy).
        faults: optional fault script passed as ``--faults``.
        env: environment for the server process.
    """

    def __init__(
        self,
        record_dir: Path,
        *,
        api_key: str | None = None,
        faults: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.record_dir: Final = record_dir
        record_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dgd", "fake-server", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--record-dir", str(record_dir)]
        if api_key is not None:
            argv += ["--api-key", api_key]
        if faults is not None:
            argv += ["--faults", str(faults)]
        self.process: Final = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env=env if env is not None else package_env()
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []  # everything the server printed on stdout
        threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True).start()
        self.url: Final = self._wait_listening(_SERVER_START_TIMEOUT_S)
        self.port: Final = int(self.url.split(":")[2].split("/")[0])

    def _drain(self, stream: IO[str] | None) -> None:
        # Keep reading so the server never blocks on a full stdout pipe.
        if stream is None:
            self._lines.put(None)
            return
        for line in stream:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_listening(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if match := _LISTENING_RE.search(line):
                return match.group(1)
        self.stop()
        raise RuntimeError(
            f"`dgd fake-server` did not print 'listening on ws://...' within {timeout_s:.0f} s "
            f"(exit code {self.process.poll()}; its stderr is above); check that `python -m dgd "
            "fake-server` runs"
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

    def records(self) -> list[dict[str, Any]]:
        """Every record the server wrote so far; see `server_records`."""
        return server_records(self.record_dir)

    def received_audio(self) -> bytes:
        """All audio the server received so far; see `server_audio`."""
        return server_audio(self.record_dir)


def server_records(record_dir: Path) -> list[dict[str, Any]]:
    """The fake server's records (``conn-NNNN.jsonl``), connection by connection, in order.

    Each record gets ``"conn"``: the 1-based position of its connection's file.
    """
    out: list[dict[str, Any]] = []
    for n, path in enumerate(sorted(record_dir.glob("conn-*.jsonl")), start=1):
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                out.append({**json.loads(line), "conn": n})
    return out


def server_audio(record_dir: Path) -> bytes:
    """Every binary payload the fake server received (``conn-NNNN.raw``), concatenated in order."""
    return b"".join(path.read_bytes() for path in sorted(record_dir.glob("conn-*.raw")))


def package_env(**extra: str) -> dict[str, str]:
    """This environment plus ``extra``, with dgd importable by a ``python -m dgd`` child."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds dgd/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def demo_config(*, url: str, device: str, jsonl: Path) -> Config:
    """The daemon config of the demo: the fake server, the FIFO mic, a JSONL transcript file."""
    return Config(
        deepgram=DeepgramConfig(url=url),
        audio=AudioConfig(device=device, rate=16000, channels=1, period_ms=20),
        # The sample's pauses are digital silence: a fixed threshold gates them at once.
        gate=GateConfig(mode=GateMode.ENERGY, threshold_dbfs=-50.0),
        output=OutputConfig(journald=False, jsonl=str(jsonl)),
    )


def write_demo_config(path: Path, *, url: str, device: str, jsonl: Path) -> None:
    """Write `demo_config` to ``path``."""
    config = demo_config(url=url, device=device, jsonl=jsonl)
    path.write_text("# Written by `dgd demo`.\n" + dump(config), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _stop_daemon(daemon: subprocess.Popen[bytes], timeout_s: float) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout_s)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return daemon.returncode


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="dgd-demo-") as tmp:
        yield Path(tmp)


def run_demo(
    seconds: float | None = None, keep: Path | None = None, out: TextIO = sys.stdout
) -> int:
    """Run the daemon against the fake server on the bundled sample; print what it wrote.

    Args:
        seconds: play only the first ``seconds`` of the sample (None: all of it).
        keep: keep every file (configs, FIFO recordings, transcripts) in this directory.
        out: where the transcripts and the summary go (the daemon logs to stderr).

    Returns:
        0 if the daemon exited 0 and at least one final transcript arrived, else 1.
    """
    sample, utterances = load_sample()
    if seconds is not None:
        bps = 16000 * SAMPLE_WIDTH_BYTES
        sample = sample[: max(0, int(seconds * bps)) // SAMPLE_WIDTH_BYTES * SAMPLE_WIDTH_BYTES]
        utterances = [u for u in utterances if u.end_byte <= len(sample)]
    with _workdir(keep) as work:
        conf, fifo, jsonl = work / "alsa.conf", work / "mic.fifo", work / "transcripts.jsonl"
        for stale in (fifo, jsonl):
            stale.unlink(missing_ok=True)
        write_alsa_conf(conf, DEMO_PCM_NAME, fifo)
        server = FakeServerProcess(work / "server", api_key=DEMO_API_KEY)
        mic = FifoMic(fifo)
        try:
            write_demo_config(work / "demo.toml", url=server.url, device=DEMO_PCM_NAME, jsonl=jsonl)
            env = package_env(
                ALSA_CONFIG_PATH=alsa_config_path(conf), DEEPGRAM_API_KEY=DEMO_API_KEY
            )
            argv = [sys.executable, "-m", "dgd", "run", "-c", str(work / "demo.toml")]
            daemon = subprocess.Popen([*argv, "--log-target", "stderr"], env=env)
            try:
                _play(daemon, mic, sample, out)
            finally:
                exit_code = _stop_daemon(daemon, _DAEMON_STOP_TIMEOUT_S)
        finally:
            mic.close()
            server.stop()
        transcripts = [t for t in read_jsonl(jsonl) if t.get("is_final")]
        for t in transcripts:
            out.write(f"{t.get('start')}  {t.get('text')!s}  (confidence {t.get('confidence')})\n")
        keepalives = sum(
            1
            for r in server_records(server.record_dir)
            if r.get("kind") == "text" and "KeepAlive" in str(r.get("text"))
        )
        out.write(
            f"dgd demo: {len(utterances)} utterances in the sample, {len(transcripts)} final "
            f"transcripts received, {keepalives} KeepAlives seen by the server, "
            f"daemon exit code {exit_code}"
            + (f"; files kept in {work}" if keep is not None else "")
            + "\n"
        )
        return 0 if exit_code == 0 and transcripts else 1


def _play(daemon: subprocess.Popen[bytes], mic: FifoMic, sample: bytes, out: TextIO) -> None:
    """Play ``sample`` once the daemon has opened the mic; return early if the daemon dies."""
    deadline = time.monotonic() + _DAEMON_OPEN_TIMEOUT_S
    while not mic.wait_reader(0.1):
        if daemon.poll() is not None or time.monotonic() > deadline:
            out.write(
                "dgd demo: the daemon did not open the audio device "
                f"(exit code {daemon.poll()}); see its log above\n"
            )
            return
    end = mic.play(sample) + len(sample)
    out.write(f"dgd demo: playing {len(sample) / 32000:.1f} s of speech and silence...\n")
    out.flush()
    while not mic.wait_written(end, 0.1):
        if daemon.poll() is not None:
            out.write(f"dgd demo: the daemon exited early with code {daemon.poll()}\n")
            return


def main(argv: Sequence[str] | None = None) -> int:
    """``dgd demo [--seconds N] [--keep DIR]``: see `run_demo`. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="dgd demo",
        description="Run dgd against a local fake Deepgram server on a bundled spoken sample "
        "(no microphone, no network, no API key needed).",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="play only the first N seconds of the sample"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep all files of the run in DIR")
    args = parser.parse_args(argv)
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be > 0")
    return run_demo(seconds=args.seconds, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
