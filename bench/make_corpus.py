"""Generate the labelled silence-gate corpus in ``bench/corpus/`` (deterministic; no downloads).

Each condition is one 16 kHz mono S16_LE raw file (``<name>.raw``) with a JSON file beside it
(``<name>.json``) that holds the ground truth: the position of every utterance and the speech
intervals inside it, in samples. Speech comes from espeak-ng (several voices and speeds), noise
beds from sox with ``-R`` (fixed seeds) and ``-D`` (no dither), hum and clicks from a seeded
``random.Random``; so two runs give byte-identical files on the same package versions.

Ground truth is taken from the clean utterance before it is scaled and mixed: a 5 ms window is
speech when its RMS is within ``LABEL_RANGE_DB`` of the utterance's loudest window, and gaps
shorter than ``LABEL_MERGE_GAP_MS`` are merged (stop closures inside a word are not pauses).

Usage: ``python bench/make_corpus.py [--out DIR]``  (about 20 s on one core).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Final

RATE_HZ: Final = 16000
FULL_SCALE: Final = 32768.0
LABEL_WINDOW_MS: Final = 5
LABEL_RANGE_DB: Final = 40.0
LABEL_MERGE_GAP_MS: Final = 60
LEAD_IN_S: Final = 2.0
TAIL_S: Final = 2.0

# (voice, words per minute, text). espeak-ng's own voices only (the mbrola ones need mbrola).
UTTERANCES: Final = (
    ("en-us", 150, "Please turn on the kitchen lights."),
    ("en-gb", 175, "What is the weather going to be like tomorrow morning?"),
    ("en-us+f3", 130, "Set a timer for twelve minutes."),
    ("en-gb-scotland", 160, "Start the coffee machine, and play some quiet music."),
    ("en-029", 190, "Stop."),
    ("en-us+m3", 120, "Remind me to call the workshop at four."),
    ("en-gb-x-rp", 200, "The quick brown fox jumps over the lazy dog."),
    ("en-us+f2", 165, "Yes."),
    ("en-gb+f4", 145, "Send a message to Sam saying I will be late, about twenty minutes."),
    ("en-us", 185, "How much power is the solar array producing right now?"),
    ("en-gb-x-gbcwmd", 140, "Open the garage door."),
    ("en-us+f4", 155, "Six, seven, eight, nine, ten."),
)

# Pause lengths (s) cycled through in each condition; 20 s pauses are added where listed.
PAUSES_S: Final = (0.2, 1.5, 0.5, 4.0, 0.8, 2.5, 6.0, 0.3, 3.0, 1.0)
# Per-utterance level offsets (dB) above the condition's nominal level: the nominal SNR is a
# lower bound for every utterance, so "at SNR >= 10 dB" means what it says.
LEVEL_OFFSETS_DB: Final = (0.0, 2.0, 4.0, 1.0, 3.0, 0.0, 5.0, 2.0)


@dataclass(frozen=True, slots=True)
class Condition:
    """One corpus file: a noise bed, a speech level and the utterances laid over it."""

    name: str
    noise: str  # "none" | "white" | "pink" | "brown" | "hum" | "fan" | "step"
    speech_dbfs: float  # nominal active speech level; utterances are at this + LEVEL_OFFSETS_DB
    snr_db: float | None  # None: digital silence between utterances
    n_utterances: int = 8
    long_pause: bool = False  # insert one 20 s pause
    clicks: bool = False  # clicks and pops in the pauses
    spread_levels: bool = False  # speech from -40 to -6 dBFS instead of nominal + offsets
    pause_s: float | None = None  # every pause this long (else PAUSES_S cycled)


CONDITIONS: Final = (
    Condition(
        "quiet_digital", "none", -20.0, None, n_utterances=8, long_pause=True, spread_levels=True
    ),
    Condition("quiet_selfnoise", "white", -40.0, 35.0, n_utterances=8, spread_levels=True),
    Condition("pink_snr30", "pink", -30.0, 30.0),
    Condition("pink_snr20", "pink", -28.0, 20.0),
    Condition("pink_snr15", "pink", -24.0, 15.0),
    Condition("pink_snr10", "pink", -20.0, 10.0, long_pause=True),
    Condition("pink_snr5", "pink", -20.0, 5.0),
    Condition("white_snr20", "white", -30.0, 20.0),
    Condition("white_snr10", "white", -26.0, 10.0),
    Condition("white_snr5", "white", -26.0, 5.0),
    Condition("brown_snr20", "brown", -26.0, 20.0),
    Condition("brown_snr10", "brown", -22.0, 10.0),
    Condition("hum_snr20", "hum", -30.0, 20.0),
    Condition("hum_snr10", "hum", -30.0, 10.0),
    Condition("fan_snr20", "fan", -26.0, 20.0),
    Condition("fan_snr10", "fan", -22.0, 10.0),
    Condition("fan_snr5", "fan", -22.0, 5.0),
    Condition("clicks_quiet", "pink", -32.0, 30.0, clicks=True),
    Condition("clicks_snr10", "fan", -20.0, 10.0, clicks=True),
    # Someone talking on and on: 12 utterances 0.2 s apart (about 35 s of speech) in pink
    # noise; tests that the noise floor does not learn speech as noise.
    Condition("long_talk_pink_snr10", "pink", -22.0, 10.0, n_utterances=12, pause_s=0.2),
    Condition("workshop_loud", "white", -10.0, 10.0),
    # Quiet room, then a machine switches on (the noise rises by 30 dB); the SNR is that of
    # the loud half. Tests that the adaptive floor follows a rise without hand-tuning.
    Condition("step_quiet_to_workshop", "step", -22.0, 10.0, n_utterances=10, long_pause=True),
)


def run(cmd: list[str]) -> bytes:
    """Run a command and return its stdout; fail loudly (a missing tool is a setup error)."""
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def to_array(data: bytes) -> array[int]:
    out = array("h")
    out.frombytes(data)
    if sys.byteorder != "little":
        out.byteswap()
    return out


def rms_dbfs(x: array[int] | list[float], start: int = 0, stop: int | None = None) -> float:
    stop = len(x) if stop is None else stop
    n = stop - start
    if n <= 0:
        return -120.0
    energy = math.fsum(v * v for v in x[start:stop])
    if energy == 0:
        return -120.0
    return 20.0 * math.log10(math.sqrt(energy / n) / FULL_SCALE)


def synth_utterance(voice: str, wpm: int, text: str) -> array[int]:
    """espeak-ng -> 16 kHz mono S16_LE via sox (no dither, so silence stays exactly zero)."""
    wav = run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text])
    cmd = [
        "sox",
        "-D",
        "-t",
        "wav",
        "-",
        "-r",
        str(RATE_HZ),
        "-c",
        "1",
        "-b",
        "16",
        "-e",
        "signed-integer",
        "-t",
        "raw",
        "-L",
        "-",
    ]
    raw = subprocess.run(cmd, input=wav, check=True, capture_output=True).stdout
    return to_array(raw)


def label(x: array[int]) -> tuple[list[tuple[int, int]], float]:
    """Speech intervals (sample offsets, half-open) and the active level of a clean utterance.

    The active level is the power mean over the labelled windows, so scaling an utterance to
    "-30 dBFS" means its speech (not its pauses) is at -30 dBFS RMS.
    """
    win = RATE_HZ * LABEL_WINDOW_MS // 1000
    levels = [rms_dbfs(x, i, min(i + win, len(x))) for i in range(0, len(x), win)]
    peak = max(levels)
    spans: list[tuple[int, int]] = []
    for k, lvl in enumerate(levels):
        if lvl >= peak - LABEL_RANGE_DB:
            s, e = k * win, min((k + 1) * win, len(x))
            if spans and s - spans[-1][1] <= RATE_HZ * LABEL_MERGE_GAP_MS // 1000:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
    energy = math.fsum(math.fsum(v * v for v in x[s:e]) for s, e in spans)
    n = sum(e - s for s, e in spans)
    active = 20.0 * math.log10(math.sqrt(energy / n) / FULL_SCALE)
    return spans, active


def sox_noise(kind: str, n: int, seed_tag: str) -> list[float]:
    """``n`` samples of a sox noise bed at an arbitrary level (the caller rescales it).

    sox's ``-R`` fixes the generator seed; to get different but reproducible beds per
    condition we skip a condition-specific number of samples from a longer stream.
    """
    skip = (sum(map(ord, seed_tag)) * 97) % RATE_HZ
    dur_s = (n + skip) / RATE_HZ + 0.1
    effects = {
        "white": ["synth", f"{dur_s:.3f}", "whitenoise", "vol", "0.3"],
        "pink": ["synth", f"{dur_s:.3f}", "pinknoise", "vol", "0.3"],
        "brown": ["synth", f"{dur_s:.3f}", "brownnoise", "vol", "0.3"],
        # A fan: band-limited noise with a slow beat from the blades.
        "fan": [
            "synth",
            f"{dur_s:.3f}",
            "pinknoise",
            "vol",
            "0.5",
            "sinc",
            "120-1500",
            "tremolo",
            "7",
            "30",
        ],
    }[kind]
    raw = run(
        [
            "sox",
            "-R",
            "-D",
            "-n",
            "-r",
            str(RATE_HZ),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
            "-L",
            "-",
            *effects,
        ]
    )
    x = to_array(raw)
    return [float(v) for v in x[skip : skip + n]]


def hum(n: int, rng: random.Random) -> list[float]:
    """Mains hum: 50 Hz and odd harmonics (as from a ground loop), with a faint hiss."""
    parts = ((50.0, 1.0), (150.0, 0.5), (250.0, 0.25), (350.0, 0.12))
    w = [2.0 * math.pi * f / RATE_HZ for f, _ in parts]
    return [
        sum(a * math.sin(wk * i) for (_, a), wk in zip(parts, w, strict=True)) * 8000.0
        + rng.gauss(0.0, 80.0)
        for i in range(n)
    ]


def scale_to(x: list[float], target_dbfs: float) -> list[float]:
    level = rms_dbfs(x)
    g = 10.0 ** ((target_dbfs - level) / 20.0)
    return [v * g for v in x]


def click_track(n: int, pauses: list[tuple[int, int]], rng: random.Random) -> list[float]:
    """Clicks (1–3 ms impulses) and pops (10–40 ms decaying thumps) placed in the pauses."""
    out = [0.0] * n
    for s, e in pauses:
        if e - s < RATE_HZ // 2:
            continue
        for _ in range(max(1, (e - s) // (2 * RATE_HZ))):
            at = rng.randrange(s + RATE_HZ // 10, e - RATE_HZ // 10)
            if rng.random() < 0.5:
                length = rng.randint(RATE_HZ // 1000, 3 * RATE_HZ // 1000)
                amp = rng.uniform(8000.0, 20000.0)
                for i in range(length):
                    out[at + i] += amp * (1.0 if i % 2 == 0 else -0.8)
            else:
                length = rng.randint(RATE_HZ // 100, RATE_HZ // 25)
                amp = rng.uniform(3000.0, 12000.0)
                f = rng.uniform(40.0, 120.0)
                for i in range(length):
                    decay = math.exp(-5.0 * i / length)
                    out[at + i] += amp * decay * math.sin(2.0 * math.pi * f * i / RATE_HZ)
    return out


def build(
    cond: Condition, utts: list[tuple[array[int], list[tuple[int, int]], float]], index: int
) -> tuple[array[int], dict[str, object]]:
    rng = random.Random(1000 + index)
    pauses = [
        PAUSES_S[(index * 3 + k) % len(PAUSES_S)] if cond.pause_s is None else cond.pause_s
        for k in range(cond.n_utterances - 1)
    ]
    if cond.long_pause:
        pauses[len(pauses) // 2] = 20.0
    spread = [-40.0, -6.0, -30.0, -14.0, -35.0, -20.0, -10.0, -25.0, -18.0, -8.0]
    pos = int(LEAD_IN_S * RATE_HZ)
    placed: list[dict[str, object]] = []
    segments: list[tuple[int, list[float]]] = []
    for k in range(cond.n_utterances):
        u = (index * 5 + k) % len(utts)
        x, spans, active = utts[u]
        if cond.spread_levels:
            target = spread[k % len(spread)]
        else:
            target = cond.speech_dbfs + LEVEL_OFFSETS_DB[k % len(LEVEL_OFFSETS_DB)]
        g = 10.0 ** ((target - active) / 20.0)
        segments.append((pos, [v * g for v in x]))
        voice, wpm, text = UTTERANCES[u]
        placed.append(
            {
                "start": pos,
                "end": pos + len(x),
                "level_dbfs": round(target, 2),
                "voice": voice,
                "wpm": wpm,
                "text": text,
                "speech": [[pos + s, pos + e] for s, e in spans],
            }
        )
        pos += len(x)
        if k < len(pauses):
            pos += int(pauses[k] * RATE_HZ)
    n = pos + int(TAIL_S * RATE_HZ)

    mix = [0.0] * n
    for at, seg in segments:
        for i, v in enumerate(seg):
            mix[at + i] += v
    noise_dbfs: float | None = None
    if cond.snr_db is not None:
        noise_dbfs = cond.speech_dbfs - cond.snr_db
        if cond.noise == "hum":
            bed = scale_to(hum(n, rng), noise_dbfs)
        elif cond.noise == "step":
            # Quiet room (-30 dB below the loud part) for the first 40 %, then the machine.
            bed = scale_to(sox_noise("pink", n, cond.name), noise_dbfs)
            cut = int(n * 0.4)
            bed[:cut] = [v * 10.0 ** (-30.0 / 20.0) for v in bed[:cut]]
        else:
            bed = scale_to(sox_noise(cond.noise, n, cond.name), noise_dbfs)
        for i, v in enumerate(bed):
            mix[i] += v
    if cond.clicks:
        gaps: list[tuple[int, int]] = []
        prev = 0
        for p in placed:
            gaps.append((prev, int(str(p["start"]))))
            prev = int(str(p["end"]))
        gaps.append((prev, n))
        for i, v in enumerate(click_track(n, gaps, rng)):
            mix[i] += v
    out = array("h", (max(-32768, min(32767, round(v))) for v in mix))
    meta: dict[str, object] = {
        "condition": cond.name,
        "noise": cond.noise,
        "snr_db": cond.snr_db,
        "noise_dbfs": noise_dbfs,
        "clicks": cond.clicks,
        "rate_hz": RATE_HZ,
        "format": "S16_LE mono",
        "samples": n,
        "utterances": placed,
    }
    return out, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "corpus")
    args = parser.parse_args()
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            print(
                f"make_corpus: {tool} not found; install it (apt-get install {tool})",
                file=sys.stderr,
            )
            return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    utts = []
    for voice, wpm, text in UTTERANCES:
        x = synth_utterance(voice, wpm, text)
        spans, active = label(x)
        utts.append((x, spans, active))
    total_s = 0.0
    for index, cond in enumerate(CONDITIONS):
        pcm, meta = build(cond, utts, index)
        if sys.byteorder != "little":
            pcm.byteswap()
        (out / f"{cond.name}.raw").write_bytes(pcm.tobytes())
        (out / f"{cond.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        total_s += len(pcm) / RATE_HZ
        print(f"{cond.name:24s} {len(pcm) / RATE_HZ:6.1f} s")
    print(f"{len(CONDITIONS)} conditions, {total_s / 60:.1f} min in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
