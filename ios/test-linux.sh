#!/usr/bin/env bash
# Builds the Swift package (the generated bindings over libspinel_ffi.so, the
# wrapper Sources/Spinel/Spinel.swift) and runs its XCTest suite against the
# real demo model, on Linux: Debian 13's swiftlang (Swift 6.0.3) in a trixie
# chroot, made once under ${SPINEL_SWIFT_ROOT:-~/.cache/spinel-swift/root}
# (debootstrap + apt, ~2 minutes and 3.2 GB; needs root).
#
#   ios/test-linux.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${SPINEL_SWIFT_ROOT:-$HOME/.cache/spinel-swift/root}
out=${CARGO_TARGET_DIR:-target}/bindings
model=${SPINEL_TEST_MODEL:-$(scripts/fetch-model.sh)}
# The tiny vision model (converted unless given) and the PNG sent to it.
vision=${SPINEL_TEST_VISION_MODEL:-$(ffi/tests/vision-model.sh "$out/vision")}
mmproj=${SPINEL_TEST_VISION_MMPROJ:-${vision%.gguf}.mmproj.gguf}
image=${SPINEL_TEST_IMAGE:-$(cd .. && pwd)/shared/testdata/vision/images/landscape_300x200.png}
for f in "$model" "$vision" "$mmproj" "$image"; do
  [[ -s $f ]] || { echo "missing $f" >&2; exit 1; }
done

# A marker written once the toolchain is in (/usr/bin/swift is an absolute
# symlink: tested from outside the chroot it points at the host).
if [[ ! -f $ROOT/.spinel-swift-ready ]]; then
  command -v debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  echo "== swift: making a Debian trixie chroot with swiftlang at $ROOT" >&2
  # Never delete through a mounted /proc.
  if mountpoint -q "$ROOT/proc"; then umount "$ROOT/proc"; fi
  rm -rf "$ROOT"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase trixie "$ROOT" >/dev/null
  chroot "$ROOT" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swiftlang libc6-dev >/dev/null'
  touch "$ROOT/.spinel-swift-ready"
fi
# swift finds libswiftCore through /proc/self/exe.
mounted=0
if ! mountpoint -q "$ROOT/proc"; then
  mount -t proc proc "$ROOT/proc"
  mounted=1
fi
trap '[[ $mounted == 1 ]] && umount "$ROOT/proc"' EXIT

# The bindings from the library just built (test profile: fast generation).
CARGO_PROFILE=test ffi/generate-bindings.sh "$out" swift
pkg=$ROOT/spinel/ios
mkdir -p "$pkg" "$ROOT/spinel/lib"
# The package's sources (its .build cache in the chroot is kept).
rm -rf "$pkg/Sources" "$pkg/Tests"
cp -r ios/Package.swift ios/Sources ios/Tests "$pkg/"
mkdir -p "$pkg/Sources/Spinel/Generated"
cp "$out/swift/SpinelFFI.swift" "$pkg/Sources/Spinel/Generated/"
cp "$out/swift/SpinelFFIC.h" "$pkg/Sources/SpinelFFIC/"
cp "$out"/lib/libspinel_ffi.so "$ROOT/spinel/lib/"
cmp -s "$model" "$ROOT/spinel/model.gguf" || cp "$model" "$ROOT/spinel/model.gguf"
mkdir -p "$ROOT/spinel/vision"
cp "$vision" "$ROOT/spinel/vision/model.gguf"
cp "$mmproj" "$ROOT/spinel/vision/model.mmproj.gguf"
cp "$image" "$ROOT/spinel/vision/image.png"

# A local HTTP server for the download test: the chroot shares the host's
# network, so it reaches 127.0.0.1.
serve_dir=$ROOT/spinel/serve
mkdir -p "$serve_dir"
head -c 3000000 "$model" > "$serve_dir/file.bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$serve_dir" >/dev/null 2>&1 &
server=$!
trap '[[ $mounted == 1 ]] && umount "$ROOT/proc"; kill $server 2>/dev/null' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/file.bin').read(1)" 2>/dev/null && break
  sleep 0.1
done

echo "== swift: swift build + swift test (Swift $(chroot "$ROOT" swift --version 2>/dev/null | grep -o 'version [0-9.]*' | head -1))"
chroot "$ROOT" env HOME=/root LIBRARY_PATH=/spinel/lib LD_LIBRARY_PATH=/spinel/lib \
  SPINEL_TEST_MODEL=/spinel/model.gguf \
  SPINEL_TEST_VISION_MODEL=/spinel/vision/model.gguf \
  SPINEL_TEST_VISION_MMPROJ=/spinel/vision/model.mmproj.gguf \
  SPINEL_TEST_IMAGE=/spinel/vision/image.png \
  SPINEL_TEST_DOWNLOAD_URL="http://127.0.0.1:$port/file.bin" \
  SPINEL_TEST_DOWNLOAD_SHA256="$(sha256sum "$serve_dir/file.bin" | cut -d' ' -f1)" \
  bash -c 'cd /spinel/ios && swift build --build-tests -Xlinker -L/spinel/lib && swift test --skip-build'
