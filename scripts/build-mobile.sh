#!/usr/bin/env bash
# Builds the SDK's static library, libspinel_ffi.a, for phones:
#   aarch64-linux-android (devices), x86_64-linux-android (emulators),
#   aarch64-apple-ios (devices)
# and leaves each under target/<triple>/release/.
#
# rustup cannot fetch those standard libraries here, so std is built from
# source (-Zbuild-std) with Debian's rustc-web/cargo-web and rust-web-src (the
# same release). Without an NDK or Xcode nothing can be linked, so this
# builds the static library only (the iOS one is a Mach-O arm64 archive); C
# code in dependencies (ring, rustls' crypto) is compiled by clang for the
# target. Then it checks that the ARM kernel entry points are in the ARM
# archives.
#
#   scripts/build-mobile.sh [TRIPLE ...]     # default: all three
#
# android/build-native.sh and ios/build-xcframework.sh call it for real NDK
# and Xcode builds (SPINEL_MOBILE_TOOLCHAIN=rustup: rustup's std, no
# build-std).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(aarch64-linux-android x86_64-linux-android aarch64-apple-ios)

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
need=()
[[ -x /usr/bin/cargo && -x /usr/bin/rustc ]] || need+=(rustc-web cargo-web)
[[ -d /usr/lib/rustlib/src/rust/library ]] || need+=(rust-web-src)
command -v rust-clang >/dev/null || command -v clang >/dev/null || need+=(clang)
command -v llvm-ar >/dev/null || need+=(llvm)
if [[ ${#need[@]} -gt 0 ]]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
clang=$(command -v rust-clang || command -v clang-22 || command -v clang)

toolchain=${SPINEL_MOBILE_TOOLCHAIN:-debian}
# Kept apart from the host build's target/: another compiler.
export CARGO_TARGET_DIR=${SPINEL_MOBILE_TARGET_DIR:-target/mobile}
# Without an NDK or SDK: C code compiled freestanding by clang for the target.
# There are no target C library headers; ring's C has a mode for that (its
# own memcpy/memset, only the compiler's stddef.h/stdint.h). On Apple targets
# cc-rs asks xcrun for the SDK unless SDKROOT is set: a stand-in SDK holds the
# one header ring includes there, with an iOS device's values.
freestanding_c() {
  local t=$1 var=${1//-/_} cflags
  case $t in
    *-linux-android) cflags="--target=${t}24" ;;
    aarch64-apple-ios)
      cflags="--target=arm64-apple-ios13.0"
      export SDKROOT IPHONEOS_DEPLOYMENT_TARGET=13.0
      SDKROOT=$(realpath -m "$CARGO_TARGET_DIR/no-sdk")
      mkdir -p "$SDKROOT/usr/include"
      printf '%s\n' '/* Stand-in for the iOS SDK header (compile-only builds, no Xcode). */' \
        '#define TARGET_OS_MAC 1' '#define TARGET_OS_OSX 0' '#define TARGET_OS_IPHONE 1' \
        '#define TARGET_OS_IOS 1' '#define TARGET_OS_TV 0' '#define TARGET_OS_WATCH 0' \
        '#define TARGET_OS_VISION 0' '#define TARGET_OS_SIMULATOR 0' \
        >"$SDKROOT/usr/include/TargetConditionals.h"
      ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  export "CC_$var=$clang" "AR_$var=llvm-ar" \
    "CFLAGS_$var=$cflags -ffreestanding -DRING_CORE_NOSTDLIBINC=1"
}

for t in "${targets[@]}"; do
  echo "== $t" >&2
  if [[ $toolchain == debian ]]; then
    freestanding_c "$t"
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo rustc --release -p spinel-ffi --lib \
      --crate-type staticlib --target "$t" -Zbuild-std=std,panic_unwind
  else
    # The NDK's or Xcode's compilers, as cargo-ndk or Xcode set them up.
    cargo rustc --release -p spinel-ffi --lib --crate-type staticlib --target "$t"
  fi
  lib=$CARGO_TARGET_DIR/$t/release/libspinel_ffi.a
  mkdir -p "target/$t/release"
  [[ $lib -ef target/$t/release/libspinel_ffi.a ]] || cp "$lib" "target/$t/release/"
  lib=target/$t/release/libspinel_ffi.a
  # The right object format, the uniffi entry points, and on ARM the NEON
  # kernels.
  want=$(case $t in aarch64-apple-ios) echo "Mach-O arm64" ;; aarch64-*) echo elf64-littleaarch64 ;;
    *) echo elf64-x86-64 ;; esac)
  header=$(llvm-readobj --file-header "$lib" 2>/dev/null || true)
  grep -q "Format: $want" <<<"$header" || { echo "$lib: not $want objects" >&2; exit 1; }
  syms=$(llvm-nm --defined-only "$lib" 2>/dev/null || true)
  grep -q "uniffi_spinel_ffi_fn_constructor_model_load" <<<"$syms" \
    || { echo "$lib: no uniffi entry points" >&2; exit 1; }
  if [[ $t == aarch64-* ]]; then
    n=$(grep -c "kernels.*aarch64" <<<"$syms" || true)
    [[ $n -gt 0 ]] || { echo "$lib: no aarch64 kernel symbols" >&2; exit 1; }
    echo "$lib: $(du -h "$lib" | cut -f1), $n aarch64 kernel symbols" >&2
  else
    echo "$lib: $(du -h "$lib" | cut -f1)" >&2
  fi
done
