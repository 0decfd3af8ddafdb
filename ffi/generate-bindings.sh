#!/usr/bin/env bash
# Generates the foreign bindings of spinel-ffi from the exact library built
# now: never from an older build and never committed (bindings that do not
# match the library fail uniffi's contract and checksum check at load).
#
#   ffi/generate-bindings.sh OUT_DIR [kotlin|swift|python ...]   # default: all three
#
# Builds spinel-ffi and the workspace's uniffi-bindgen (the same uniffi
# version), then writes OUT_DIR/<language>/ and copies the library into
# OUT_DIR/lib/. CARGO_PROFILE picks the library's profile (dev by default;
# the tests use `test`, whose opt-level makes generation fast); the generator
# is always built with dev. CARGO_TARGET_DIR is honoured. Exits non-zero if
# anything is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { echo "usage: $0 OUT_DIR [kotlin|swift|python ...]" >&2; exit 2; }
out=$1; shift
langs=("$@"); [[ ${#langs[@]} -gt 0 ]] || langs=(kotlin swift python)
profile=${CARGO_PROFILE:-dev}
case $profile in dev | test) profile_dir=debug ;; bench) profile_dir=release ;; *) profile_dir=$profile ;; esac
target_dir=${CARGO_TARGET_DIR:-target}

cargo build --profile "$profile" -p spinel-ffi
cargo build -p uniffi-bindgen
case $(uname -s) in
  Darwin) lib=$target_dir/$profile_dir/libspinel_ffi.dylib ;;
  *) lib=$target_dir/$profile_dir/libspinel_ffi.so ;;
esac
[[ -f $lib ]] || { echo "no library at $lib" >&2; exit 1; }

mkdir -p "$out/lib"
cp "$lib" "$out/lib/"
for lang in "${langs[@]}"; do
  rm -rf "${out:?}/$lang"
  "$target_dir/debug/uniffi-bindgen" generate --library "$lib" \
    --language "$lang" --out-dir "$out/$lang" --no-format
  if [[ -z $(find "$out/$lang" -type f) ]]; then
    echo "uniffi-bindgen wrote no $lang bindings" >&2; exit 1
  fi
done
echo "bindings for ${langs[*]} in $out (library: $out/lib/$(basename "$lib"))" >&2
