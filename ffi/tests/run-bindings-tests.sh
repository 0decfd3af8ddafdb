#!/usr/bin/env bash
# The foreign-language tests of spinel-ffi, against the real demo model:
#   * Python: bindings generated from the library just built, ffi/tests/test_python.py;
#   * Kotlin on the JVM: the generated Kotlin + the Android wrapper
#     (android/spinel, pure Kotlin) + ffi/tests/kotlin/BindingsTest.kt, compiled
#     with kotlinc (npm package kotlin-compiler) against JNA (Debian libjna-java)
#     and kotlinx-coroutines (the jar kotlinc ships);
#   * Swift: the ios/ package (generated bindings over libspinel_ffi.so and
#     the wrapper) built and its XCTest suite run with Debian 13's Swift in a
#     trixie chroot (ios/test-linux.sh; made once, needs root).
# The vision tests load the shared test data's tiny mllama model, converted
# here once (ffi/tests/vision-model.sh), and send it one of its images.
# Everything it needs must be there: a missing tool fails the run, never skips.
#
#   ffi/tests/run-bindings-tests.sh [python|kotlin|swift ...]   # default: all
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=("$@"); [[ ${#steps[@]} -gt 0 ]] || steps=(python kotlin swift)
KOTLIN_HOME=${SPINEL_KOTLIN_HOME:-$HOME/.cache/spinel-kotlin}
KOTLIN_VERSION=2.4.20
JNA_JAR=${JNA_JAR:-/usr/share/java/jna.jar}

out=${CARGO_TARGET_DIR:-target}/bindings
export SPINEL_TEST_MODEL=${SPINEL_TEST_MODEL:-$(scripts/fetch-model.sh)}
export SPINEL_TEST_VISION_MODEL=${SPINEL_TEST_VISION_MODEL:-$(ffi/tests/vision-model.sh "$out/vision")}
export SPINEL_TEST_VISION_MMPROJ=${SPINEL_TEST_VISION_MMPROJ:-${SPINEL_TEST_VISION_MODEL%.gguf}.mmproj.gguf}
testdata=${SPINEL_TESTDATA:-$(cd .. && pwd)/shared/testdata}
export SPINEL_TEST_IMAGE=${SPINEL_TEST_IMAGE:-$testdata/vision/images/landscape_300x200.png}
for f in "$SPINEL_TEST_VISION_MODEL" "$SPINEL_TEST_VISION_MMPROJ" "$SPINEL_TEST_IMAGE"; do
  [[ -s $f ]] || { echo "missing $f" >&2; exit 1; }
done
# The test profile (opt-level 1, as `cargo test`): generation is ~100x faster
# than with dev's opt-level 0.
CARGO_PROFILE=test ffi/generate-bindings.sh "$out" "${steps[@]}"

for step in "${steps[@]}"; do
  case $step in
    python)
      echo "== ffi: Python bindings"
      cp "$out"/lib/libspinel_ffi.* "$out/python/"
      PYTHONPATH=$out/python python3 ffi/tests/test_python.py
      ;;
    kotlin)
      echo "== ffi: Kotlin bindings + Android wrapper on the JVM"
      kotlinc=$KOTLIN_HOME/node_modules/kotlin-compiler/bin/kotlinc
      if [[ ! -x $kotlinc ]]; then
        npm install --silent --prefix "$KOTLIN_HOME" "kotlin-compiler@$KOTLIN_VERSION" >&2
      fi
      [[ -f $JNA_JAR ]] || { echo "no JNA at $JNA_JAR (apt-get install libjna-java)" >&2; exit 1; }
      coroutines=$KOTLIN_HOME/node_modules/kotlin-compiler/lib/kotlinx-coroutines-core-jvm.jar
      [[ -f $coroutines ]] || { echo "no kotlinx-coroutines jar at $coroutines" >&2; exit 1; }
      cp_jars=$JNA_JAR:$coroutines
      "$kotlinc" -nowarn -jvm-target 17 -cp "$cp_jars" -d "$out/kotlin-test.jar" \
        $(find "$out/kotlin" -name '*.kt') \
        android/spinel/src/main/kotlin/dev/spinel/Spinel.kt \
        ffi/tests/kotlin/BindingsTest.kt
      stdlib=$KOTLIN_HOME/node_modules/kotlin-compiler/lib/kotlin-stdlib.jar
      java -Djna.library.path="$out/lib" -cp "$out/kotlin-test.jar:$cp_jars:$stdlib" BindingsTestKt
      ;;
    swift)
      echo "== ffi: Swift package (bindings + wrapper) built and tested on Linux"
      for f in SpinelFFI.swift SpinelFFIC.h SpinelFFIC.modulemap; do
        [[ -s $out/swift/$f ]] || { echo "missing $out/swift/$f" >&2; exit 1; }
      done
      # A chroot with Debian 13's Swift (made once): needs root.
      if [[ $(id -u) == 0 ]]; then ios/test-linux.sh; else sudo -E ios/test-linux.sh; fi
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
