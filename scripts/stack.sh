#!/usr/bin/env bash
# Local service stack for mpanel: PostgreSQL, Redis, PowerDNS, sshd, Dovecot on loopback.
#
#   scripts/stack.sh start    install what is missing, start what is not running, write .stack/stack.env
#   scripts/stack.sh stop     stop every stack service (not the mpanel server: scripts/down.sh does both)
#   scripts/stack.sh status   one line per service; exit 1 if any is down
#   scripts/stack.sh env      print the `export VAR=...` lines for tests and development
set -euo pipefail

# shellcheck source=scripts/lib/stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/stack.sh"

usage() {
  sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

cmd=${1:-}
case $cmd in
  start) stack_start ;;
  stop) stack_stop ;;
  status) stack_status ;;
  env)
    ensure_root
    ensure_dirs
    stack_env
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
