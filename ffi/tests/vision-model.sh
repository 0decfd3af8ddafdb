#!/usr/bin/env bash
# The vision model of the bindings tests: the shared test data's tiny Llama
# 3.2 Vision (mllama) checkpoint, converted to F32 by `spinel convert` into
# OUT_DIR (its chat template comes with it). Prints the text model's path;
# the vision tower is beside it, X.mmproj.gguf for X.gguf.
#
#   ffi/tests/vision-model.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# == 1 ]] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out=$1
testdata=${SPINEL_TESTDATA:-$(cd .. && pwd)/shared/testdata}
src=$testdata/vision/dev/mllama
[[ -f $src/config.json ]] || { echo "no mllama dev model at $src" >&2; exit 1; }
# The test profile, as the bindings' library: the runtime is built once.
cargo build -q --profile test -p spinel-cli >&2
mkdir -p "$out"
"${CARGO_TARGET_DIR:-target}/debug/spinel" convert "$src" -o "$out/mllama.gguf" --outtype f32 >&2
[[ -s $out/mllama.gguf && -s $out/mllama.mmproj.gguf ]] \
  || { echo "spinel convert wrote no model and mmproj in $out" >&2; exit 1; }
echo "$out/mllama.gguf"
