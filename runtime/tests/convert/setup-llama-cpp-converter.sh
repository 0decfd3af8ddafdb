#!/usr/bin/env bash
# Prepares llama.cpp's own HF converter (convert_hf_to_gguf.py) for the
# comparison tests, once per machine, and prints two lines:
#   the Python interpreter that has its dependencies,
#   llama.cpp's source folder (with convert_hf_to_gguf.py).
#
# The source is the one ../shared/peers/llama-cpp.sh unpacks (that script also
# builds the llama.cpp binaries; run it first, or this runs it). The converter
# imports torch and transformers: they go into a virtualenv under
# ${SPINEL_PEERS:-~/.cache/spinel-peers}/convert-venv (about 4 GB with the
# CUDA wheels PyPI's Linux torch depends on; a few minutes to install).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
ROOT=${SPINEL_PEERS:-$HOME/.cache/spinel-peers}
VER=0.3.36   # as ../shared/peers/llama-cpp.sh
SRC=$ROOT/src/llama_cpp_python-$VER/vendor/llama.cpp
VENV=$ROOT/convert-venv
PY=$VENV/bin/python
PKGS=(torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 numpy sentencepiece protobuf)

mkdir -p "$ROOT"
exec 9>"$ROOT/convert-venv.lock"
flock 9
if [[ ! -f $SRC/convert_hf_to_gguf.py ]]; then
  "$REPO/../shared/peers/llama-cpp.sh" >&2
fi
if ! "$PY" -c 'import torch, transformers, numpy, sentencepiece' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check "${PKGS[@]}" >&2
fi
echo "$PY"
echo "$SRC"
