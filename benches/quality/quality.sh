#!/usr/bin/env bash
# The quality table of README.md ("Quality at 4.5 bits per weight and
# below"), from scratch: SmolLM2-135M-Instruct, f32 base made from the Q4_1
# demo model, KLD of each quantized file against the f32 base's logits on the
# Jargon File (scripts/fetch-eval-text.sh).
#
#   benches/quality/quality.sh [WORK_DIR]     # default /tmp/spinel-quality
#
# Text ranges (bytes of jargon-4.4.7.txt): evaluation [0, 200000), scored
# in CHUNKS chunks of 512 tokens; calibration of every importance matrix
# [700000, 800000), 16 chunks of 512 tokens. Needs a release `spinel`
# (cargo build --release -p spinel-cli) and llama.cpp's tools
# ($LLAMA_BIN, default ~/.cache/spinel-peers/llama.cpp-0.3.36-native/bin).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${1:-/tmp/spinel-quality}
S=${SPINEL:-$ROOT/target/release/spinel}
B=${LLAMA_BIN:-$HOME/.cache/spinel-peers/llama.cpp-0.3.36-native/bin}
T=${THREADS:-2}
CHUNKS=${CHUNKS:-16}
mkdir -p "$W"; cd "$W"
TEXT=$("$ROOT/scripts/fetch-eval-text.sh")
MODEL=${SPINEL_TEST_MODEL:-$HOME/.cache/spinel/models/SmolLM2-135M-Instruct.Q4_1.gguf}
head -c 200000 "$TEXT" | iconv -c -f utf-8 -t utf-8 > eval.txt
head -c 800000 "$TEXT" | tail -c 100000 | iconv -c -f utf-8 -t utf-8 > calib.txt

[[ -f base.f32.gguf ]] || "$S" quantize "$MODEL" base.f32.gguf --type f32 -t "$T" 2>/dev/null
[[ -f llama.imatrix.gguf ]] || "$B/llama-imatrix" -m base.f32.gguf -f calib.txt -o llama.imatrix.gguf \
  -c 512 --chunks 16 -t "$T" > llama-imatrix.log 2>&1

# llama.cpp's files (NAME TYPE IMATRIX?)
ROWS=("q4_0 q4_0 -" "q4_k_m q4_k_m -" "iq4_xs iq4_xs -" "iq4_xs+imx iq4_xs imx"
      "iq3_m+imx iq3_m imx" "iq2_m+imx iq2_m imx")
for r in "${ROWS[@]}"; do
  set -- $r
  [[ -f "llama.$1.gguf" ]] && continue
  im=(); [[ $3 == imx ]] && im=(--imatrix llama.imatrix.gguf)
  "$B/llama-quantize" "${im[@]}" base.f32.gguf "llama.$1.gguf" "$2" "$T" > "llama.$1.log" 2>&1
  "$S" quantize base.f32.gguf "spinel.$1.gguf" --type "$2" -t "$T" "${im[@]}" 2> "spinel.$1.log"
  if cmp -s "llama.$1.gguf" "spinel.$1.gguf"; then echo "$1: spinel quantize = llama-quantize, byte for byte"
  else echo "$1: spinel quantize differs from llama-quantize"; fi
done

# Spinel's own: rotation (R1/R2, outlier channels kept) with an importance
# matrix computed on the rotated f32 model, then iq4_xs; and the same with
# the online rotations (R4/R3).
for v in rotate rotate-online; do
  [[ -f "spinel.$v.f32.gguf" ]] || "$S" quantize base.f32.gguf "spinel.$v.f32.gguf" --type f32 "--$v" -t "$T" 2>/dev/null
  [[ -f "spinel.$v.imatrix.gguf" ]] || "$S" imatrix -m "spinel.$v.f32.gguf" -f calib.txt \
    -o "spinel.$v.imatrix.gguf" -c 512 --chunks 16 -t "$T" > /dev/null 2>&1
  [[ -f "spinel.$v+imx.iq4_xs.gguf" ]] || "$S" quantize "spinel.$v.f32.gguf" "spinel.$v+imx.iq4_xs.gguf" \
    --type iq4_xs --imatrix "spinel.$v.imatrix.gguf" -t "$T" 2>/dev/null
done

# Spinel's iq4_xs_m mix (5-bit tied embeddings, Q8_0 attention values,
# 5-bit attention q/k/output and ffn_down, IQ4_NL gate/up): with the same
# importance matrix as llama.cpp's iq4_xs + imatrix row, and with `spinel
# imatrix --process-output`'s (same text; it adds the output layer, whose
# importance then weights the tied embeddings).
[[ -f spinel.iq4_xs_m+imx.gguf ]] || "$S" quantize base.f32.gguf spinel.iq4_xs_m+imx.gguf \
  --type iq4_xs_m --imatrix llama.imatrix.gguf -t "$T" 2>/dev/null
[[ -f spinel.imatrix-out.gguf ]] || "$S" imatrix -m base.f32.gguf -f calib.txt -o spinel.imatrix-out.gguf \
  -c 512 --chunks 16 -t "$T" --process-output > /dev/null 2>&1
[[ -f spinel.iq4_xs_m+simx.gguf ]] || "$S" quantize base.f32.gguf spinel.iq4_xs_m+simx.gguf \
  --type iq4_xs_m --imatrix spinel.imatrix-out.gguf -t "$T" 2>/dev/null

# Reference logits of the f32 base, then every file against them.
[[ -f base.spinel.kld ]] || "$S" perplexity -m base.f32.gguf -f eval.txt --chunks "$CHUNKS" -t "$T" \
  --kl-divergence-base base.spinel.kld --json > base.json
printf '| file | type | bpw | size (MiB) | PPL | KLD | same top-1 |\n|---|---|---|---|---|---|---|\n'
row() { # LABEL FILE
  local j bytes params
  j=$("$S" perplexity -m "$2" -f eval.txt --chunks "$CHUNKS" -t "$T" --kl-divergence-base base.spinel.kld --kl-divergence --json)
  bytes=$(stat -c %s "$2")
  params=134515008
  python3 -c "import json,sys; j=json.loads(sys.argv[1]); b=int(sys.argv[2]); print(f'| {sys.argv[3]} | {sys.argv[4]} | {8*b/$params:.2f} | {b/2**20:.1f} | {j[\"ppl\"]:.3f} | {j[\"kld\"]:.4f} | {100*j[\"top1\"]:.1f}% |')" "$j" "$bytes" "$1" "$3"
}
row "f32 base" base.f32.gguf f32
for r in "${ROWS[@]}"; do set -- $r; row "llama.cpp $1" "llama.$1.gguf" "$2"; done
for v in rotate rotate-online; do row "Spinel --$v + imatrix (rotated)" "spinel.$v+imx.iq4_xs.gguf" iq4_xs; done
row "Spinel iq4_xs_m + imatrix" spinel.iq4_xs_m+imx.gguf iq4_xs_m
row "Spinel iq4_xs_m + imatrix with output" spinel.iq4_xs_m+simx.gguf iq4_xs_m

# llama-perplexity on the same files, same text and chunks (its own base logits).
[[ -f base.llama.kld ]] || "$B/llama-perplexity" -m base.f32.gguf -f eval.txt -c 512 --chunks "$CHUNKS" -t "$T" \
  --kl-divergence-base base.llama.kld > llama-base.log 2>&1
for f in llama.q4_0.gguf llama.iq4_xs+imx.gguf spinel.rotate+imx.iq4_xs.gguf spinel.iq4_xs_m+simx.gguf; do
  "$B/llama-perplexity" -m "$f" -f eval.txt -c 512 --chunks "$CHUNKS" -t "$T" \
    --kl-divergence-base base.llama.kld --kl-divergence > "lp.$f.log" 2>&1 || true
  echo "llama-perplexity $f: $(grep -E '^Mean    KLD|^Same top p|^Mean PPL\(Q\)' "lp.$f.log" | tr -s ' ' | tr '\n' ' ')"
done
