#!/usr/bin/env bash
# Regenerate docs/reliability.md from the reliability ledger that the fault and attack tests
# wrote during this run (target/reliability/ledger.jsonl, see tests/src/reliability.rs).
#
#   scripts/reliability-report.sh            after `cargo test` (scripts/test.sh runs it)
#
# Fails when the ledger is missing or empty, or when a recorded fault lost or duplicated an
# order. Honours CARGO_TARGET_DIR for the build and RELIABILITY_DIR for the ledger.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --quiet -p mpanel-tests --bin reliability-report -- "$@"
