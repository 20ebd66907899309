"""Evaluate the silence gate (the real ``dgd.core.gate.Gate``) on the labelled corpus.

For every condition of ``bench/corpus`` (made by ``bench/make_corpus.py``) the raw audio is cut
into 20 ms periods, each period's level is ``dgd.core.pcm.level_dbfs``, and the gate decides. The
ground truth says which samples are speech. Reported per condition and overall:

- recall: the fraction of speech samples that were sent;
- onset clipping: per utterance, the speech (ms) before the first sent sample of the
  utterance; max and 95th percentile;
- sent: the fraction of all audio sent, and sent / budget, where the budget is
  1.25 × the speech duration (first to last speech sample of each utterance) plus one
  hangover per utterance;
- finalize: how many times the gate closed (each close makes the caller send Finalize).

Targets (checked with ``--check`` on every condition at SNR >= 10 dB and on the quiet ones):
recall >= 99.5 %, no onset clipped by more than 20 ms, sent <= budget. SNR 5 dB conditions
are reported but not checked.

``--mode vad`` puts webrtcvad (``pip install webrtcvad-wheels``) in place of the level
detector: each period is fed to the same Gate as 0 dBFS (speech) or -120 dBFS (not), with a
fixed threshold, so pre-roll, attack and hangover are identical and only the detector differs.

Usage::

    python bench/gate_eval.py [--threshold auto --threshold -45 ...] [--mode energy|vad]
                              [--preroll-ms 300] [--hangover-ms 1500] [--json PATH] [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgd.core import gate as gate_module
from dgd.core.gate import Gate, GateMode
from dgd.core.pcm import level_dbfs

PERIOD_MS: Final = 20
RATE_HZ: Final = 16000
PERIOD_SAMPLES: Final = RATE_HZ * PERIOD_MS // 1000
PERIOD_BYTES: Final = PERIOD_SAMPLES * 2
TARGET_RECALL: Final = 0.995
TARGET_MAX_CLIP_MS: Final = 20.0
TARGET_BUDGET_FACTOR: Final = 1.25
CHECKED_MIN_SNR_DB: Final = 10.0


@dataclass(frozen=True, slots=True)
class Clip:
    """One corpus file, decoded once."""

    name: str
    snr_db: float | None
    n_periods: int
    levels_dbfs: list[float]
    vad: list[bool] | None
    speech: list[int]  # speech samples in each period
    utterances: list[tuple[int, int, int]]  # (first speech sample, last + 1, utterance end)
    spans: list[list[tuple[int, int]]]  # speech intervals per utterance


@dataclass(frozen=True, slots=True)
class Result:
    """The figures for one condition (or the overall row) under one gate configuration."""

    condition: str
    snr_db: float | None
    checked: bool
    audio_s: float
    speech_s: float
    recall: float
    clip_max_ms: float
    clip_p95_ms: float
    sent_fraction: float
    sent_s: float
    budget_s: float
    finalizes: int
    opens: int
    utterances: int
    passed: bool


def load(corpus: Path, with_vad: int | None) -> list[Clip]:
    """Read every ``*.json``/``*.raw`` pair; compute levels (and VAD decisions if asked)."""
    vad = None
    if with_vad is not None:
        import webrtcvad  # type: ignore[import-untyped, import-not-found, unused-ignore]

        vad = webrtcvad.Vad(with_vad)
    clips = []
    metas = sorted(corpus.glob("*.json"))
    if not metas:
        sys.exit(f"gate_eval: no corpus in {corpus}; run python bench/make_corpus.py first")
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        raw = meta_path.with_suffix(".raw").read_bytes()
        n = len(raw) // PERIOD_BYTES
        periods = [raw[i * PERIOD_BYTES : (i + 1) * PERIOD_BYTES] for i in range(n)]
        speech = [0] * n
        utts = []
        spans = []
        for u in meta["utterances"]:
            sp = [(int(s), int(e)) for s, e in u["speech"]]
            spans.append(sp)
            utts.append((sp[0][0], sp[-1][1], int(u["end"])))
            for s, e in sp:
                for p in range(s // PERIOD_SAMPLES, (e - 1) // PERIOD_SAMPLES + 1):
                    lo, hi = max(s, p * PERIOD_SAMPLES), min(e, (p + 1) * PERIOD_SAMPLES)
                    speech[p] += hi - lo
        clips.append(
            Clip(
                name=meta["condition"],
                snr_db=meta["snr_db"],
                n_periods=n,
                levels_dbfs=[level_dbfs(p) for p in periods],
                vad=[vad.is_speech(p, RATE_HZ) for p in periods] if vad is not None else None,
                speech=speech,
                utterances=utts,
                spans=spans,
            )
        )
    return clips


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def run_gate(
    clip: Clip, mode: str, threshold: float | None, preroll_ms: int, hangover_ms: int
) -> tuple[list[bool], int, int]:
    """Feed one clip through a fresh Gate; returns (period sent?, closes, opens)."""
    gate: Gate[int] = Gate(
        mode=GateMode.ENERGY if mode == "vad" else GateMode(mode),
        threshold_dbfs=-60.0 if mode == "vad" else threshold,
        preroll_ms=preroll_ms,
        hangover_ms=hangover_ms,
        period_ms=PERIOD_MS,
    )
    sent = [False] * clip.n_periods
    for i, level in enumerate(clip.levels_dbfs):
        if clip.vad is not None:
            level = 0.0 if clip.vad[i] else -120.0
        for j in gate.feed(i, level).forward:
            sent[j] = True
    stats = gate.statistics()
    return sent, stats.closes, stats.opens


def evaluate(
    clip: Clip, mode: str, threshold: float | None, preroll_ms: int, hangover_ms: int
) -> tuple[Result, list[float]]:
    sent, closes, opens = run_gate(clip, mode, threshold, preroll_ms, hangover_ms)
    total_speech = sum(clip.speech)
    got = sum(s for s, ok in zip(clip.speech, sent, strict=True) if ok)
    clips_ms = []
    for (onset, _last, end), spans in zip(clip.utterances, clip.spans, strict=True):
        first = next(
            (
                p * PERIOD_SAMPLES
                for p in range(onset // PERIOD_SAMPLES, (end - 1) // PERIOD_SAMPLES + 1)
                if sent[p]
            ),
            end,
        )
        lost = sum(max(0, min(e, first) - s) for s, e in spans)
        clips_ms.append(lost * 1000.0 / RATE_HZ)
    speech_s = sum(last - onset for onset, last, _ in clip.utterances) / RATE_HZ
    budget_s = TARGET_BUDGET_FACTOR * speech_s + len(clip.utterances) * hangover_ms / 1000.0
    sent_s = sum(sent) * PERIOD_MS / 1000.0
    recall = got / total_speech
    checked = clip.snr_db is None or clip.snr_db >= CHECKED_MIN_SNR_DB
    result = Result(
        condition=clip.name,
        snr_db=clip.snr_db,
        checked=checked,
        audio_s=clip.n_periods * PERIOD_MS / 1000.0,
        speech_s=speech_s,
        recall=recall,
        clip_max_ms=max(clips_ms),
        clip_p95_ms=pct(clips_ms, 95),
        sent_fraction=sum(sent) / clip.n_periods,
        sent_s=sent_s,
        budget_s=budget_s,
        finalizes=closes,
        opens=opens,
        utterances=len(clip.utterances),
        passed=meets(recall, max(clips_ms), sent_s, budget_s),
    )
    return result, clips_ms


def meets(recall: float, clip_max_ms: float, sent_s: float, budget_s: float) -> bool:
    return (
        recall >= TARGET_RECALL and clip_max_ms <= TARGET_MAX_CLIP_MS and sent_s <= budget_s + 1e-9
    )


def overall(name: str, rows: list[Result], clips_ms: list[float], speech_got: float) -> Result:
    speech_s = sum(r.speech_s for r in rows)
    sent_s = sum(r.sent_s for r in rows)
    budget_s = sum(r.budget_s for r in rows)
    audio_s = sum(r.audio_s for r in rows)
    return Result(
        condition=name,
        snr_db=None,
        checked=True,
        audio_s=audio_s,
        speech_s=speech_s,
        recall=speech_got,
        clip_max_ms=max(clips_ms),
        clip_p95_ms=pct(clips_ms, 95),
        sent_fraction=sent_s / audio_s,
        sent_s=sent_s,
        budget_s=budget_s,
        finalizes=sum(r.finalizes for r in rows),
        opens=sum(r.opens for r in rows),
        utterances=sum(r.utterances for r in rows),
        passed=meets(speech_got, max(clips_ms), sent_s, budget_s),
    )


def configuration(
    clips: list[Clip], mode: str, threshold: float | None, preroll_ms: int, hangover_ms: int
) -> list[Result]:
    rows: list[Result] = []
    all_clips: list[float] = []
    checked_clips: list[float] = []
    got = total = got_c = total_c = 0.0
    for clip in clips:
        row, clips_ms = evaluate(clip, mode, threshold, preroll_ms, hangover_ms)
        rows.append(row)
        speech = sum(clip.speech)
        all_clips += clips_ms
        got += row.recall * speech
        total += speech
        if row.checked:
            checked_clips += clips_ms
            got_c += row.recall * speech
            total_c += speech
    checked_rows = [r for r in rows if r.checked]
    rows.append(overall("overall (SNR >= 10 dB)", checked_rows, checked_clips, got_c / total_c))
    rows.append(overall("overall (all)", rows[:-1], all_clips, got / total))
    return rows


def label(mode: str, threshold: float | None, vad_mode: int) -> str:
    if mode == "vad":
        return f"vad (webrtcvad mode {vad_mode})"
    return f"{mode}, threshold {'auto' if threshold is None else f'{threshold:g} dBFS'}"


def print_table(title: str, rows: list[Result]) -> None:
    print(f"\n## {title}\n")
    print(
        "| condition | SNR dB | recall % | clip max ms | clip p95 ms | sent % | sent/budget "
        "| finalize | ok |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        snr = "–" if r.snr_db is None else f"{r.snr_db:g}"
        ok = ("yes" if r.passed else "**NO**") if r.checked else ("(yes)" if r.passed else "(no)")
        print(
            f"| {r.condition} | {snr} | {100 * r.recall:.2f} | {r.clip_max_ms:.0f} "
            f"| {r.clip_p95_ms:.0f} | {100 * r.sent_fraction:.1f} | {r.sent_s / r.budget_s:.2f} "
            f"| {r.finalizes} | {ok} |"
        )


def parse_threshold(text: str) -> float | None:
    return None if text == "auto" else float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).parent / "corpus")
    parser.add_argument("--mode", choices=("energy", "shadow", "off", "vad"), default="energy")
    parser.add_argument(
        "--threshold",
        type=parse_threshold,
        action="append",
        help='"auto" (default) or a fixed level in dBFS; repeat to compare',
    )
    parser.add_argument("--vad-mode", type=int, default=3, help="webrtcvad aggressiveness 0-3")
    parser.add_argument("--preroll-ms", type=int, default=300)
    parser.add_argument("--hangover-ms", type=int, default=1500)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print the overall rows only")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    thresholds: list[float | None] = args.threshold or [None]
    if args.mode == "vad":
        thresholds = [None]
    clips = load(args.corpus, args.vad_mode if args.mode == "vad" else None)
    print(
        f"gate defaults: open +{gate_module.AUTO_OPEN_MARGIN_DB:g} dB, close "
        f"+{gate_module.AUTO_CLOSE_MARGIN_DB:g} dB over the floor; preroll {args.preroll_ms} ms, "
        f"hangover {args.hangover_ms} ms, period {PERIOD_MS} ms"
    )
    report = []
    failed = False
    for threshold in thresholds:
        title = label(args.mode, threshold, args.vad_mode)
        rows = configuration(clips, args.mode, threshold, args.preroll_ms, args.hangover_ms)
        print_table(title, rows[-2:] if args.quiet else rows)
        failed |= any(r.checked and not r.passed for r in rows[:-1])
        report.append({"configuration": title, "rows": [asdict(r) for r in rows]})
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.check and failed:
        print("\ngate_eval: a target was missed (rows marked NO)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
