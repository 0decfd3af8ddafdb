#!/usr/bin/env bash
# Fetch the evaluation text for `spinel perplexity` into Spinel's cache, once:
# the Jargon File 4.4.7 (public domain), the English text that Debian's
# dict-jargon package ships (usr/share/dictd/jargon.dict.dz, ~1.4 MB, ~350k
# SmolLM2 tokens). Prints the text file's path.
#
#   scripts/fetch-eval-text.sh        # -> $SPINEL_CACHE/eval/jargon-4.4.7.txt
#
# SPINEL_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/spinel. Needs apt
# (Debian/Ubuntu); the text is checked against its SHA-256.
set -euo pipefail
CACHE=${SPINEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spinel}
OUT=$CACHE/eval/jargon-4.4.7.txt
SHA=6c8118c277d0b00736d406d4941b77b69932d6ab125f7179ff88fe12939cc19e
if [[ -f $OUT ]] && echo "$SHA  $OUT" | sha256sum -c --status; then echo "$OUT"; exit 0; fi
mkdir -p "$CACHE/eval"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
chmod 755 "$TMP"
if ! (cd "$TMP" && apt-get download dict-jargon >&2 2>/dev/null); then
  apt-get update -qq >&2
  (cd "$TMP" && apt-get download dict-jargon >&2)
fi
dpkg-deb -x "$TMP"/dict-jargon_*.deb "$TMP/x"
zcat "$TMP/x/usr/share/dictd/jargon.dict.dz" > "$OUT.part"
echo "$SHA  $OUT.part" | sha256sum -c --status || { echo "jargon text: SHA-256 mismatch" >&2; exit 1; }
mv "$OUT.part" "$OUT"
echo "$OUT"
