#!/usr/bin/env bash
# Build dgd/data/sample.raw (16 kHz mono S16_LE) and dgd/data/sample.json (ground truth).
#
# The sample is what `dgd demo` plays and what tests/test_e2e.py cuts utterances from:
# five short spoken sentences separated by exact digital silence, with one 16 s pause so
# a run shows KeepAlive frames (Deepgram closes an idle stream after 10 s). Deterministic:
# espeak-ng output is identical run to run, and `sox -D` turns dither off so silence is
# exact zeros (docs/TESTING.md). Needs espeak-ng, sox and python3.
#
# Usage: bench/make_sample.sh [OUT_DIR]   (default: dgd/data next to this script)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/../dgd/data"}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Sentence texts and the digital silence (seconds) that FOLLOWS each one. The first
# utterance is preceded by LEAD_S of silence; the 16 s pause follows sentence 2.
LEAD_S=1
texts=(
  "Please turn on the kitchen lights."
  "What will the weather be like in Berlin tomorrow?"
  "Set a timer for ten minutes."
  "The quick brown fox jumps over the lazy dog."
  "Thank you, that is all for now."
)
gaps_s=(3 16 2.5 3 2)

for i in "${!texts[@]}"; do
  espeak-ng -v en-us -s 150 -w "$work/u$i.wav" "${texts[$i]}"
  sox -D "$work/u$i.wav" -r 16000 -c 1 -b 16 -e signed-integer -t raw -L "$work/u$i.raw"
done

texts_joined=$(printf '%s\n' "${texts[@]}")
python3 - "$work" "$out" "$LEAD_S" "${gaps_s[*]}" "$texts_joined" <<'PY'
import json, sys
from array import array

work, out, lead_s, gaps, texts = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
gaps_s = [float(g) for g in gaps.split()]
texts = texts.strip("\n").split("\n")
RATE, WIDTH = 16000, 2
BPS = RATE * WIDTH

def silence(seconds: float) -> bytes:
    return bytes(int(round(seconds * RATE)) * WIDTH)

stream = bytearray(silence(lead_s))
utterances = []
for i, (text, gap_s) in enumerate(zip(texts, gaps_s, strict=True)):
    pcm = array("h")
    with open(f"{work}/u{i}.raw", "rb") as fh:
        pcm.frombytes(fh.read())
    # Trim espeak's own lead-in/lead-out to the first and last non-zero sample, so the
    # ground truth interval is exactly where the signal is and the gaps are exact zeros.
    nz = [k for k, s in enumerate(pcm) if s != 0]
    speech = pcm[nz[0] : nz[-1] + 1].tobytes()
    start = len(stream)
    stream += speech
    end = len(stream)
    utterances.append({
        "index": i, "text": text,
        "start_byte": start, "end_byte": end,
        "start_s": round(start / BPS, 6), "end_s": round(end / BPS, 6),
        "silence_after_s": gap_s,
    })
    stream += silence(gap_s)

with open(f"{out}/sample.raw", "wb") as fh:
    fh.write(stream)
meta = {
    "format": {"encoding": "S16_LE", "rate_hz": RATE, "channels": 1},
    "bytes": len(stream),
    "duration_s": round(len(stream) / BPS, 6),
    "generator": "bench/make_sample.sh (espeak-ng -v en-us -s 150; sox -D)",
    "utterances": utterances,
}
with open(f"{out}/sample.json", "w") as fh:
    json.dump(meta, fh, indent=2)
    fh.write("\n")
print(f"wrote {out}/sample.raw: {len(stream)} bytes, {len(stream) / BPS:.2f} s, "
      f"{len(utterances)} utterances")
PY
