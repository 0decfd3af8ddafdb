#!/usr/bin/env bash
# Builds libspinel_ffi.so for the Android ABIs into spinel/src/main/jniLibs
# (cargo-ndk) and generates the Kotlin bindings from that exact library into
# spinel/build/generated/uniffi/kotlin.
#
# Needs: the Android NDK (ANDROID_NDK_HOME), cargo-ndk (cargo install
# cargo-ndk), and the Rust targets:
#   rustup target add aarch64-linux-android x86_64-linux-android
#
#   android/build-native.sh            # release
#   PROFILE=dev android/build-native.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
profile=${PROFILE:-release}
profile_dir=$([[ $profile == dev ]] && echo debug || echo "$profile")

cargo ndk -t arm64-v8a -t x86_64 -o "$here/spinel/src/main/jniLibs" \
  build --profile "$profile" -p spinel-ffi
# The static libraries too (for apps that link Spinel into their own native
# code), by the script CI runs without an NDK.
if [[ $profile == release ]]; then
  SPINEL_MOBILE_TOOLCHAIN=rustup scripts/build-mobile.sh aarch64-linux-android x86_64-linux-android
fi

# The bindings come from one of the libraries just built (all ABIs export the
# same API; the checksums the bindings check at load are the same).
cargo build -p uniffi-bindgen
rm -rf "$here/spinel/build/generated/uniffi/kotlin"
target/debug/uniffi-bindgen generate \
  --library "target/aarch64-linux-android/$profile_dir/libspinel_ffi.so" \
  --language kotlin --out-dir "$here/spinel/build/generated/uniffi/kotlin"
echo "jniLibs: $(cd "$here/spinel/src/main/jniLibs" && ls -d */)" >&2
