#!/usr/bin/env bash
# Builds build/SpinelFFI.xcframework (static libspinel_ffi.a for iOS devices,
# the arm64 and x86_64 simulators) and generates the Swift bindings from that
# exact library into Sources/Spinel/Generated. macOS with Xcode only.
#
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
#   ios/build-xcframework.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
profile=${PROFILE:-release}
profile_dir=$([[ $profile == dev ]] && echo debug || echo "$profile")
build=$here/build

# The device library by the script CI runs without Xcode (here with rustup's
# std and Xcode's SDK), then the simulators'.
if [[ $profile == release ]]; then
  SPINEL_MOBILE_TOOLCHAIN=rustup SPINEL_MOBILE_TARGET_DIR=target scripts/build-mobile.sh aarch64-apple-ios
else
  cargo build --profile "$profile" -p spinel-ffi --target aarch64-apple-ios
fi
for t in aarch64-apple-ios-sim x86_64-apple-ios; do
  cargo build --profile "$profile" -p spinel-ffi --target "$t"
done

# The Swift bindings, header and module map, from the device library.
cargo build -p uniffi-bindgen
rm -rf "$build/swift" && mkdir -p "$build/swift"
target/debug/uniffi-bindgen generate \
  --library "target/aarch64-apple-ios/$profile_dir/libspinel_ffi.a" \
  --language swift --out-dir "$build/swift"
mkdir -p "$here/Sources/Spinel/Generated"
cp "$build/swift/SpinelFFI.swift" "$here/Sources/Spinel/Generated/"
rm -rf "$build/headers" && mkdir -p "$build/headers"
cp "$build/swift/SpinelFFIC.h" "$build/headers/"
cp "$build/swift/SpinelFFIC.modulemap" "$build/headers/module.modulemap"

# One simulator library for both simulator architectures.
mkdir -p "$build/ios-sim"
lipo -create \
  "target/aarch64-apple-ios-sim/$profile_dir/libspinel_ffi.a" \
  "target/x86_64-apple-ios/$profile_dir/libspinel_ffi.a" \
  -output "$build/ios-sim/libspinel_ffi.a"

rm -rf "$build/SpinelFFI.xcframework"
xcodebuild -create-xcframework \
  -library "target/aarch64-apple-ios/$profile_dir/libspinel_ffi.a" -headers "$build/headers" \
  -library "$build/ios-sim/libspinel_ffi.a" -headers "$build/headers" \
  -output "$build/SpinelFFI.xcframework"
echo "built $build/SpinelFFI.xcframework" >&2
