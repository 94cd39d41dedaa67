#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (real UDP on
# 127.0.0.1, webrtc-rs interop), then the headless-Chromium browser test.
# Installs what it needs (Debian packages, npm packages) itself.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
echo "== cargo build (release)"
cargo build --release --workspace --all-targets

echo "== cargo test (release)"
cargo test --release --workspace 2>&1 | tee target/cargo-test.log
grep -q "test result: FAILED" target/cargo-test.log && exit 1

if [ -x tests/browser/run.sh ]; then
  echo "== browser test (headless Chromium in a loopback-only network namespace)"
  MERIDIAN_BIN="$PWD/target/release/meridian" tests/browser/run.sh
fi
