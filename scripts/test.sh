#!/usr/bin/env bash
# Run the whole mpanel test suite against the real local services (not the mpanel server):
#   cargo fmt --all --check; cargo clippy --workspace --all-targets -- -D warnings;
#   cargo test --workspace [ARGS...]
#
#   scripts/test.sh                       everything
#   scripts/test.sh -- --nocapture        extra args go to `cargo test --workspace`
#   SKIP_LINT=1 scripts/test.sh           skip fmt and clippy (fast local loop)
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

# Black-box tests create one database per app (mpanel_bb_*); drop what earlier runs left.
pg_psql -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'mpanel\_bb\_%'" |
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
  results+=("fmt skipped" "clippy skipped")
else
  step fmt cargo fmt --all --check
  step clippy cargo clippy --workspace --all-targets -- -D warnings
fi
step test cargo test --workspace "$@"

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
