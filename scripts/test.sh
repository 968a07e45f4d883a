#!/usr/bin/env bash
# Run the whole mpanel test suite against the real local services (not the mpanel server):
#   cargo fmt --all --check; cargo clippy --workspace --all-targets -- -D warnings;
#   cargo test --workspace [ARGS...]; then the fault tier (cargo test -p mpanel-tests --test
#   faults) and, when everything passed, docs/reliability.md regenerated from the ledger the fault
#   and attack tests wrote (scripts/reliability-report.sh)
#
#   scripts/test.sh                       everything
#   scripts/test.sh -- --nocapture        extra args go to `cargo test --workspace`
#   SKIP_LINT=1 scripts/test.sh           skip fmt and clippy (fast local loop)
#   FAULTS=0 scripts/test.sh              skip the fault tier (~2-4 min) locally; CI runs it
#
# All steps run even if an earlier one fails; exit status is non-zero if any failed.
set -euo pipefail

# shellcheck source=scripts/lib/stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/stack.sh"

cd "$REPO_ROOT"
started=$SECONDS
stack_start

set -a
# shellcheck source=/dev/null
source "$STACK_ENV_FILE"
set +a
# Tests use their own database; #[sqlx::test] makes throwaway databases next to it.
export DATABASE_URL="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/mpanel_test"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# The reliability ledger of this run only (tests/src/reliability.rs): every passing fault or
# attack test appends its scenario; docs/reliability.md is generated from it at the end.
export RELIABILITY_DIR="${RELIABILITY_DIR:-$REPO_ROOT/target/reliability}"
rm -rf "$RELIABILITY_DIR"

# Black-box, cluster and trace tests create a database each (mpanel_bb_*, mpanel_cl_*,
# mpanel_trace_*); drop what earlier runs left.
pg_psql -At -c "SELECT datname FROM pg_database WHERE datname ~ '^mpanel_(bb|cl|trace)_'" |
  while read -r db; do
    pg_psql -c "DROP DATABASE IF EXISTS \"$db\"" || true
  done

command -v cargo >/dev/null || die "cargo not found in PATH"

declare -a results=()
failed=0

# step NAME COMMAND... — run a step, record "NAME ok|FAILED (Ns)".
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  printf '\n[test] ==> %s: %s\n' "$name" "$*" >&2
  "$@" || rc=$?
  if ((rc == 0)); then
    results+=("$name ok ($((SECONDS - t0))s)")
  else
    results+=("$name FAILED rc=$rc ($((SECONDS - t0))s)")
    failed=1
  fi
}

if [[ ${SKIP_LINT:-0} == 1 ]]; then
  results+=("fmt skipped" "clippy skipped" "clippy-faults skipped")
else
  step fmt cargo fmt --all --check
  step clippy cargo clippy --workspace --all-targets -- -D warnings
  # --all-targets leaves out `test = false` targets: lint the fault tier explicitly.
  step clippy-faults cargo clippy -p mpanel-tests --test faults -- -D warnings
fi
step test cargo test --workspace "$@"
if [[ ${FAULTS:-1} == 0 ]]; then
  results+=("faults skipped")
else
  step faults cargo test -p mpanel-tests --test faults
  # Only a run where everything passed may rewrite the document: a failed test records nothing,
  # and a report of a partial run would understate what is proven.
  if ((failed == 0)); then
    step reliability-report scripts/reliability-report.sh
  else
    results+=("reliability-report skipped (an earlier step failed)")
  fi
fi

summary=$(
  IFS=,
  printf '%s' "${results[*]}"
)
summary=${summary//,/, }
if ((failed == 0)); then
  printf '\n[test] PASS: %s; total %ss\n' "$summary" "$((SECONDS - started))"
else
  printf '\n[test] FAIL: %s; total %ss\n' "$summary" "$((SECONDS - started))" >&2
  exit 1
fi
