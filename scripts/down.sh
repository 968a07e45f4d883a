#!/usr/bin/env bash
# Stop the mpanel server started by scripts/up.sh (if any) and every service of the local stack
# (by pid files), waiting until each is gone. Data under .stack/ and .stack/data is kept.
set -euo pipefail

# shellcheck source=scripts/lib/stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/stack.sh"

ensure_root
if [[ -e $MPANEL_PID ]]; then
  # SIGTERM = graceful shutdown (finish or release leases); stop_pid escalates after 20 s.
  stop_pid mpanel "$(read_pid "$MPANEL_PID")" mpanel
  rm -f "$MPANEL_PID"
fi
stack_stop
