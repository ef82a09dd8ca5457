#!/usr/bin/env bash
# Every test of weir, as CI runs it on a fresh clone:
#   1. cargo test: unit tests, the protocol-fixture replay, store and socket tests;
#   2. the real client SDKs against the built binary (compat-tests/run.sh);
#   3. the fixture sessions re-run by the real SDKs against weir and compared
#      with protocol-fixtures/ (recorder.py --cross-check).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo test --locked
cargo build --locked
WEIR_BIN="$root/target/debug/weir" compat-tests/run.sh
WEIR_BIN="$root/target/debug/weir" python3 compat-tests/recorder.py --cross-check
echo "test-all: everything passed"
