#!/usr/bin/env bash
# The test command: formatting, lints and every test of the workspace.
# Fetches what the tests need first (the gguf Python package, the demo model).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import gguf, numpy, openai' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check 'gguf==0.19.0' numpy 'openai==3.57.0'
scripts/fetch-model.sh >/dev/null
# Peers the compatibility tests compare against: llama.cpp's tools (built from
# PyPI's llama-cpp-python sdist, ~10 min once) and its HF converter's Python
# environment (torch + transformers in a cached virtualenv).
../shared/peers/llama-cpp.sh >/dev/null
runtime/tests/convert/setup-llama-cpp-converter.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build -p spinel-quant --no-default-features
cargo test --workspace
# spinel-ffi's foreign bindings, generated from the library just built:
# Python and Kotlin (JVM, with the Android wrapper) against the real model,
# Swift generated (no Swift toolchain here). Needs kotlinc (fetched from npm)
# and JNA (Debian libjna-java); fails if either is missing.
ffi/tests/run-bindings-tests.sh
