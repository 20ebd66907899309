"""Benchmark: what the silence gate costs per period, side by side on several Pythons (issue 8).

Python 3.13 (Debian 13, Raspberry Pi OS 13) has no ``audioop``, so ``dgd.core.pcm.level_dbfs``
takes another path there. This measures, in each interpreter, on the same audio:

- ``level_dbfs``: one 20 ms period (640 B, 16 kHz mono) through ``dgd.core.pcm.level_dbfs``;
- ``level, math.hypot path``: ``dgd.core.pcm._level_hypot``, what ``level_dbfs`` runs where there
  is no audioop, measured on every interpreter;
- ``level via math.sumprod``: the same with ``math.sumprod(a, a)`` (Python >= 3.12 only);
- ``level, old fallback``: the same with the fallback dgd had before (``sum(map(mul, a, a))``),
  for reference;
- ``feed, speech`` / ``feed, silence``: the whole capture-thread path per period,
  ``dgd.core.pipeline.CapturePipeline.feed`` on 100 ms reads (5 periods each; validate, stamp,
  digital-silence check, level, ``Gate.feed`` with the default auto threshold, framing), over
  the bundled 39 s sample with a noise floor (speech: the gate opens and closes; silence: the
  noise floor alone, the gate stays closed).

Every figure is CPU time of the measuring thread (``time.thread_time_ns``: time the VM or
the kernel gives to others is not counted) per 20 ms period, the median over repetitions (each
repetition runs the whole 39 s of audio, with the garbage collector off, like ``timeit``).
Each interpreter is a child process, and rounds are interleaved (the order rotated every
round) so that a noisy neighbour hits all interpreters alike. Ratios are taken within a round
against the first interpreter (the same measure), and their median over rounds is reported
with the range. The levels ``level_dbfs`` computed on each interpreter are compared as well:
the table says how far apart they are (in dB) over the ~1950 periods.

Usage (from the repository root)::

    .venv/bin/python bench/level_cost.py                           # this interpreter vs itself
    .venv/bin/python bench/level_cost.py --python '3.11=/usr/bin/python3' \\
        --python '3.13=chroot /srv/trixie /usr/bin/python3' --rounds 9
    python bench/level_cost.py --child                             # one interpreter, JSON out

A chroot's interpreter needs the checkout at the same path inside the chroot (the child is
given this file's absolute path). ``.ci/test-trixie --bench`` runs it with the host's Python
3.11 (``.venv``, and ``/usr/bin/python3`` again as a check of the noise) against Debian 13's
Python 3.13 in a chroot, without and with audioop-lts (which brings ``audioop`` back). Results:
``bench/results/level-cost-<date>.json`` (``--out`` to change) and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import operator
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE_HZ: Final = 16000
PERIOD_MS: Final = 20
PERIOD_BYTES: Final = RATE_HZ * 2 * PERIOD_MS // 1000
READ_PERIODS: Final = 5  # 100 ms reads, as dgd reads with stream.frame_ms = 100
#: Gaussian noise floor added to every sample (about -61 dBFS), as bench/perf.py does.
NOISE_SIGMA: Final = 30.0
NOISE_SEED: Final = 5
#: Seconds of each kind of audio (speech, noise floor) the callgrind runs use.
CALLGRIND_S: Final = 20
MEASURES: Final = (
    "level_dbfs",
    "level_hypot",
    "level_sumprod",
    "level_old_fallback",
    "feed_speech",
    "feed_silence",
)
LABELS: Final = {
    "level_dbfs": "level_dbfs, per 20 ms period",
    "level_hypot": "level, math.hypot path (3.13's), per period",
    "level_sumprod": "level via math.sumprod(a, a) (Python ≥ 3.12), per period",
    "level_old_fallback": "level, old fallback sum(map(mul)), per period",
    "feed_speech": "CapturePipeline.feed, speech, per period",
    "feed_silence": "CapturePipeline.feed, noise floor only, per period",
}


# --------------------------------------------------------------------------- child


def _with_noise(pcm: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    decoded = array("h", pcm)
    for i, s in enumerate(decoded):
        decoded[i] = max(-32768, min(32767, round(s + rng.gauss(0.0, NOISE_SIGMA))))
    return decoded.tobytes()


def _audio() -> tuple[bytes, bytes]:
    """(speech, silence): the bundled sample with a noise floor, and the noise floor alone."""
    sample = (ROOT / "dgd" / "data" / "sample.raw").read_bytes()
    usable = len(sample) // (READ_PERIODS * PERIOD_BYTES) * READ_PERIODS * PERIOD_BYTES
    sample = sample[:usable]
    return _with_noise(sample, NOISE_SEED), _with_noise(bytes(usable), NOISE_SEED + 1)


def _old_fallback(data: bytes) -> float:
    """dgd.core.pcm.level_dbfs's fallback before issue 8 (a Python-level multiply per sample)."""
    decoded = array("h")
    decoded.frombytes(data)
    energy = sum(map(operator.mul, decoded, decoded))
    if energy == 0:
        return -120.0
    return max(-120.0, 20.0 * math.log10(math.sqrt(energy / len(decoded)) / 32768.0))


def _sumprod_level(data: bytes) -> float:
    """The same level with ``math.sumprod`` (Python >= 3.12) for the sum of squares."""
    decoded = array("h")
    decoded.frombytes(data)
    energy = math.sumprod(decoded, decoded)  # type: ignore[attr-defined]
    if energy == 0:
        return -120.0
    return max(-120.0, 20.0 * math.log10(math.sqrt(energy / len(decoded)) / 32768.0))


def _time_levels(level: Any, periods: list[bytes]) -> float:
    start = time.thread_time_ns()
    for p in periods:
        level(p)
    return (time.thread_time_ns() - start) / len(periods)


def _time_feed(audio: bytes) -> float:
    from dgd.core.gate import Gate, GateMode
    from dgd.core.pcm import PcmFormat
    from dgd.core.pipeline import CapturePipeline

    fmt = PcmFormat(rate_hz=RATE_HZ, channels=1, period_ms=PERIOD_MS)
    gate = Gate(
        mode=GateMode.ENERGY, threshold_dbfs=None, preroll_ms=300, hangover_ms=1500, period_ms=20
    )
    pipeline = CapturePipeline(fmt, gate, frame_ms=100)
    read_bytes = READ_PERIODS * PERIOD_BYTES
    reads = [audio[i : i + read_bytes] for i in range(0, len(audio), read_bytes)]
    t = 1_000_000.0
    start = time.thread_time_ns()
    for r in reads:
        t += 0.1
        pipeline.feed(r, t)
    return (time.thread_time_ns() - start) / (len(reads) * READ_PERIODS)


def child(repetitions: int, audio: bytes, only: str | None = None) -> dict[str, Any]:
    """Measure this interpreter on ``audio`` (speech, then as much noise floor): per-period
    nanoseconds (CPU time of this thread) of every measure, per repetition."""
    import dgd.core.pcm as pcm

    speech, silence = audio[: len(audio) // 2], audio[len(audio) // 2 :]
    periods = [speech[i : i + PERIOD_BYTES] for i in range(0, len(speech), PERIOD_BYTES)]
    levels = [pcm.level_dbfs(p) for p in periods]
    runs: dict[str, list[float]] = {}
    gc.collect()
    gc.disable()
    try:
        for rep in range(repetitions + 1):  # the first round warms up and is discarded
            measures: dict[str, Any] = {
                "level_dbfs": lambda: _time_levels(pcm.level_dbfs, periods),
                "level_hypot": lambda: _time_levels(pcm._level_hypot, periods),
                "level_old_fallback": lambda: _time_levels(_old_fallback, periods),
                "feed_speech": lambda: _time_feed(speech),
                "feed_silence": lambda: _time_feed(silence),
            }
            if hasattr(math, "sumprod"):
                measures["level_sumprod"] = lambda: _time_levels(_sumprod_level, periods)
            figures = {m: run() for m, run in measures.items() if only in (None, m)}
            if rep:
                for m, ns in figures.items():
                    runs.setdefault(m, []).append(ns)
    finally:
        gc.enable()
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "level_path": getattr(pcm, "LEVEL_PATH", "?"),
        "periods": len(periods),
        "levels": levels,
        "runs_ns": runs,
    }


# --------------------------------------------------------------------------- driver


def _run_child(command: list[str], repetitions: int, audio: bytes) -> dict[str, Any]:
    argv = [*command, str(Path(__file__).resolve()), "--child", "--repetitions", str(repetitions)]
    out = subprocess.run(argv, cwd=ROOT, input=audio, capture_output=True, check=False)
    if out.returncode != 0:
        sys.exit(
            f"level_cost: {shlex.join(argv)} failed ({out.returncode}):\n{out.stderr.decode()}"
        )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _instructions(
    command: list[str], valgrind: str, measure: str, reps: int, audio: bytes
) -> int | None:
    """Instructions (callgrind's Ir, user space) of a child measuring only ``measure``, or
    None if this interpreter lacks that measure."""
    tool = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv = [*command[:-1], *tool, command[-1], str(Path(__file__).resolve()), "--child"]
    argv += ["--only", measure, "--repetitions", str(reps)]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    out = subprocess.run(argv, cwd=ROOT, env=env, input=audio, capture_output=True, check=False)
    refs = [ln for ln in out.stderr.decode().splitlines() if "Collected :" in ln]
    if out.returncode != 0 or not refs:
        sys.exit(f"level_cost: {shlex.join(argv)} failed ({out.returncode}):\n{out.stderr!r}")
    if measure not in json.loads(out.stdout)["runs_ns"] and reps:
        return None
    return int(refs[-1].rsplit(":", 1)[1])


def count_instructions(
    pythons: list[tuple[str, list[str]]], valgrind: str
) -> dict[str, dict[str, float]]:
    """Instructions per period of every measure on every interpreter, under callgrind: the
    difference between a child that runs the measure 3 times and one that runs it once, so
    start-up and set-up cancel out. Deterministic, unlike times on a shared machine. Uses
    the first ``CALLGRIND_S`` of each kind of audio (valgrind is ~50 times slower)."""
    speech, silence = _audio()
    cut = CALLGRIND_S * RATE_HZ * 2
    audio = speech[:cut] + silence[:cut]
    periods = cut // PERIOD_BYTES
    table: dict[str, dict[str, float]] = {}
    for m in MEASURES:
        for label, command in pythons:
            thrice = _instructions(command, valgrind, m, 2, audio)
            if thrice is None:
                continue
            once = _instructions(command, valgrind, m, 0, audio)
            assert once is not None
            table.setdefault(m, {})[label] = (thrice - once) / (2 * periods)
        print(f"  callgrind: {m} done", file=sys.stderr)
    return table


def render_instructions(result: dict[str, Any]) -> str:
    labels = list(result["interpreters"])
    base = result["baseline"]
    head = [f"measure (instructions per period; ratio to {base})", *labels]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in MEASURES:
        row = result["instructions_per_period"].get(m, {})
        cells = [LABELS[m]]
        for label in labels:
            ir = row.get(label)
            if ir is None:
                cells.append("–")
            elif label == base or base not in row:
                cells.append(f"{ir:,.0f}")
            else:
                cells.append(f"{ir:,.0f}; {ir / row[base]:.2f} ×")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"valgrind --tool=callgrind, user-space instructions, {result['instructions_audio_s']} s "
        "of each kind of audio, (3 runs - 1 run) / 2"
    )
    return "\n".join(lines)


def _fmt_ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} × ({min(values):.2f}–{max(values):.2f})"


def drive(pythons: list[tuple[str, list[str]]], rounds: int, repetitions: int) -> dict[str, Any]:
    """Run every interpreter ``rounds`` times, interleaved; return medians and ratios."""
    per_round: dict[str, list[dict[str, float]]] = {label: [] for label, _ in pythons}
    info: dict[str, dict[str, Any]] = {}
    levels: dict[str, list[float]] = {}
    speech, silence = _audio()
    audio = speech + silence  # made once, handed to every child on stdin
    for r in range(rounds):
        order = pythons[r % len(pythons) :] + pythons[: r % len(pythons)]
        for label, command in order:
            result = _run_child(command, repetitions, audio)
            per_round[label].append(
                {m: statistics.median(ns) / 1000 for m, ns in result["runs_ns"].items()}
            )
            levels.setdefault(label, result["levels"])
            info[label] = {k: result[k] for k in ("python", "executable", "level_path", "periods")}
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    base = pythons[0][0]
    table: dict[str, dict[str, Any]] = {}
    for m in MEASURES:
        row: dict[str, Any] = {}
        for label, _ in pythons:
            rounds_us = [fig.get(m) for fig in per_round[label]]
            us = [u for u in rounds_us if u is not None]
            if not us:
                continue  # e.g. math.sumprod before Python 3.12
            ratios = [
                u / b[m]
                for u, b in zip(rounds_us, per_round[base], strict=True)
                if u is not None and m in b
            ]
            row[label] = {"median_us": statistics.median(us), "rounds_us": us, "ratios": ratios}
        table[m] = row
    agreement = {
        label: max(abs(a - b) for a, b in zip(levels[base], lv, strict=True))
        for label, lv in levels.items()
    }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": rounds,
        "repetitions": repetitions,
        "baseline": base,
        "interpreters": info,
        "max_level_difference_db": agreement,
        "table": table,
    }


def render(result: dict[str, Any]) -> str:
    labels = list(result["interpreters"])
    base = result["baseline"]
    head = ["measure (µs per period: median; ratio to " + base + ": median (min–max))"]
    for label in labels:
        i = result["interpreters"][label]
        head.append(f"{label}: Python {i['python']}, {i['level_path']}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in MEASURES:
        cells = [LABELS[m]]
        for label in labels:
            cell = result["table"][m].get(label)
            if cell is None:
                cells.append("–")
                continue
            text = f"{cell['median_us']:.2f}"
            if label != base and cell["ratios"]:
                text += f"; {_fmt_ratio(cell['ratios'])}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    diffs = ", ".join(
        f"{label} {d:.4f} dB"
        for label, d in result["max_level_difference_db"].items()
        if label != base
    )
    lines.append("")
    lines.append(
        f"{result['rounds']} interleaved rounds × {result['repetitions']} repetitions of "
        f"{result['interpreters'][base]['periods']} periods; largest level difference "
        f"to {base}: {diffs or '-'}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", action="store_true", help="measure this interpreter only")
    parser.add_argument("--repetitions", type=int, default=15, help="per child (default 15)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="LABEL=COMMAND",
        help="an interpreter (a shell-quoted command); the first is the baseline",
    )
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/...)")
    parser.add_argument("--only", choices=MEASURES, help="(--child) run just this measure")
    parser.add_argument(
        "--callgrind",
        metavar="VALGRIND",
        help="also count instructions per period with this valgrind binary (inserted before "
        "the interpreter, the last word of each --python command)",
    )
    args = parser.parse_args()
    if args.child:
        json.dump(child(args.repetitions, sys.stdin.buffer.read(), args.only), sys.stdout)
        return
    specs = args.python or [f"this={shlex.quote(sys.executable)}"]
    pythons = []
    for spec in specs:
        label, sep, command = spec.partition("=")
        if not sep or not command:
            parser.error(f"--python wants LABEL=COMMAND, got {spec!r}")
        pythons.append((label, shlex.split(command)))
    result = drive(pythons, args.rounds, args.repetitions)
    if args.callgrind:
        result["instructions_per_period"] = count_instructions(pythons, args.callgrind)
        result["instructions_audio_s"] = CALLGRIND_S
    out = args.out or ROOT / "bench" / "results" / f"level-cost-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    if "instructions_per_period" in result:
        print()
        print(render_instructions(result))
    print(f"\n(results: {out})")


if __name__ == "__main__":
    main()
