#!/usr/bin/env bash
# The test command: installs what the tests need, then formatting, lints and
# every test of the workspace, the foreign bindings, spinel-quant and the
# forward pass on aarch64 under qemu, and the Android/iOS static libraries. Everything installed is cached (apt packages once;
# Python packages, the model and the peers under ~/.cache).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=$(cd .. && pwd)/shared
# Each step's start, with the time since the command began (CI's budget).
step() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

# apt-get as root, or through sudo; packages already there are left alone.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} == 0 ]] && return 0
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  echo "== install (apt): ${missing[*]}" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { "${sudo[@]}" apt-get update -qq \
         && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

# The web chat page test drives Debian's Chromium (with npm's playwright-core);
# the Kotlin bindings test needs JNA; the peers' build needs cmake.
apt_install chromium libjna-java cmake
# rustfmt and clippy ship with the toolchain; make sure they are there.
command -v rustup >/dev/null && { rustup component add rustfmt clippy >/dev/null 2>&1 || true; }
python3 -c 'import gguf, numpy, openai' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check 'gguf==0.19.0' numpy 'openai==3.57.0'
step "install what the tests need"
scripts/fetch-model.sh >/dev/null
# Peers the compatibility tests compare against: llama.cpp's tools (built from
# PyPI's llama-cpp-python sdist, ~10 min once) and its HF converter's Python
# environment (torch + transformers in a cached virtualenv).
../shared/peers/llama-cpp.sh >/dev/null
runtime/tests/convert/setup-llama-cpp-converter.sh >/dev/null
step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p spinel-cli --all-targets --features fault-injection -- -D warnings
cargo build -p spinel-quant --no-default-features
step "cargo test --workspace"
cargo test --workspace
# The kernel tests cover every ISA the CPU has by themselves; the forward
# pass (tiny models against transformers, SmolLM2 against llama.cpp) ran at
# the best one above, and runs again at each other x86 level (SPINEL_ISA).
for isa in $(target/debug/spinel isa --json | python3 -c \
    'import json, sys; d = json.load(sys.stdin); print(*[i for i in d["supported"] if i != d["selected"]])'); do
  step "the forward pass at SPINEL_ISA=$isa"
  SPINEL_ISA=$isa cargo test -q -p spinel-runtime --test forward
done
# The server's panic handling, with a panic injected by a test-only build
# (the `fault-injection` feature; the shipping binary has no such hook).
step "the server's fault injection"
cargo test -p spinel-cli --features fault-injection --test serve_faults
# spinel-ffi's foreign bindings, generated from the library just built:
# Python, Kotlin (JVM, with the Android wrapper) and Swift (the ios/ package
# with `swift test`, Debian 13's Swift in a trixie chroot made once under
# ~/.cache/spinel-swift: debootstrap, ~2 minutes and 3.2 GB, as root) against
# the real model. kotlinc comes from npm, JNA from Debian (installed above).
step "foreign bindings"
ffi/tests/run-bindings-tests.sh
# aarch64 (NEON, dotprod, i8mm) under qemu -cpu max; the script installs the
# cross toolchain (Debian rustc-web + arm64 std, gcc-aarch64-linux-gnu) and
# qemu-user first when they are missing (as root).
step "aarch64 (qemu -cpu max): spinel-quant"
"$SHARED/cross/aarch64.sh" test -p spinel-quant
# The forward pass on aarch64: the tiny models against transformers' logits
# at each NEON level, then the runtime suites that need no real model once
# (qemu runs the real-model suites 30-60x slower than native: they stay x86).
step "aarch64 (qemu -cpu max): the forward pass at each NEON level"
for isa in neon neon-dotprod neon-i8mm; do
  SPINEL_ISA=$isa "$SHARED/cross/aarch64.sh" test -p spinel-runtime --test forward -- matches_transformers
done
# Every NEON level against the scalar twin, every weight type (one process
# switches between the levels itself; ~4 minutes under qemu).
step "aarch64 (qemu -cpu max): every NEON level against the scalar twin"
"$SHARED/cross/aarch64.sh" test -p spinel-runtime --test isa_twins
step "aarch64 (qemu -cpu max): runtime suites"
"$SHARED/cross/aarch64.sh" test -p spinel-runtime --test grammar --test hostile \
  --test roundtrip --test chat --test convert --test residency --test mutation_fuzz \
  --test tokenizer_hf_random --test sampling_alloc
# The SDK's static libraries for Android (arm64 devices, x86_64 emulators)
# and iOS (arm64 devices), std built from source with Debian's rustc-web
# (no NDK or Xcode here: static libraries only); checks their object format
# and that the NEON kernels are in the ARM ones.
step "mobile static libraries"
scripts/build-mobile.sh
step "done"
