#!/usr/bin/env bash
# Benchmarks, each figure paired with a baseline measured in the same run on the same Postgres:
#
#   scripts/bench.sh            full run (~4 min on 2 cores, after the release build)
#   scripts/bench.sh --quick    smaller counts (< 5 min)
#   scripts/bench.sh --profile  only the intake at c16, under `perf record -a`: CPU by process
#                               and mpanel's hottest symbols (target/bench/profile.txt)
#
# Brings up the stack (not the dev server), builds release binaries, and measures:
#   raw_insert_tps_c1/c16       pgbench: one ~250-byte jsonb row per transaction (the raw limit)
#   intake_ops_c1/c16, intake_p99_ms_c16, intake_ratio_c16 = intake_ops_c16 / raw_insert_tps_c16
#   http_ceiling_ops_c16/_ratio_c16  the same load against mpanel-nullapi (parse and answer only)
#   activate_p50/p99_ms_stub    webhook accept → SubscriptionActivated at a steady rate, instant provisioners
#   activate_p50/p99_ms_real    the same against the real loopback PowerDNS / sshd / Dovecot (lower rate)
#   rebuild_events_per_s        `mpanel projections rebuild all` over generated events (+ 100k vs 1M scaling)
#   serve_peak_rss_mb           peak RSS of `mpanel serve` during the intake run
#   intake_ops_c16_1api/_2api   intake with one vs two `mpanel api` processes
# Writes target/bench/summary.json and prints a table. See docs/benchmarks.md.
set -euo pipefail

# shellcheck source=scripts/lib/stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/stack.sh"

quick=0
profile=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    --profile) profile=1 quick=1 ;;
    -h | --help)
      sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *) die "unknown argument: $arg (usage: scripts/bench.sh [--quick])" ;;
  esac
done

if ((quick)); then
  PGBENCH_SECS=8 INTAKE_C1=300 INTAKE_C16_API=10000 INTAKE_C16=3000 RATE=200 RATE_SECS=8 LOW_RATE=20
  REAL_RATE=4 REAL_SECS=8 REBUILD_SMALL=20000 REBUILD_LARGE=100000
else
  PGBENCH_SECS=20 INTAKE_C1=1000 INTAKE_C16_API=100000 INTAKE_C16=20000 RATE=200 RATE_SECS=30 LOW_RATE=20
  REAL_RATE=5 REAL_SECS=20 REBUILD_SMALL=100000 REBUILD_LARGE=1000000
fi

cd "$REPO_ROOT"
OUT="${MPANEL_BENCH_OUT:-$REPO_ROOT/target/bench}"
mkdir -p "$OUT"
stack_start
set -a
# shellcheck source=/dev/null
source "$STACK_ENV_FILE"
set +a

# MPANEL_BENCH_BIN: a directory of already built `mpanel`, `mpanel-loadgen`, `mpanel-eventgen`
# and `mpanel-nullapi` (e.g. a copy of the binaries of an older commit, to measure before and
# after on one machine).
if [[ -n ${MPANEL_BENCH_BIN:-} ]]; then
  BIN=$MPANEL_BENCH_BIN
else
  log "building release binaries"
  cargo build --release -q -p mpanel -p mpanel-bench
  BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
fi
BENCH_PORT=2291
BENCH_PORT2=2292
NULL_PORT=2293
DB=mpanel_bench
# Postgres runs on this host, so everything here — pgbench's baseline, mpanel, the polls —
# reaches it over its Unix socket, as a single-host install would be configured
# (docs/OPERATIONS.md): loopback TCP cost mpanel ~13 % more CPU per order (docs/benchmarks.md).
# MPANEL_BENCH_PG=tcp measures over 127.0.0.1 instead, baseline included.
if [[ ${MPANEL_BENCH_PG:-socket} == tcp ]]; then
  PG_HOST=127.0.0.1
  export DATABASE_URL="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/$DB"
else
  PG_HOST=$PG_SOCKET_DIR
  export DATABASE_URL="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/$DB?host=$PG_SOCKET_DIR"
fi
export REDIS_KEY_PREFIX="mpanel-bench-$$"
# The bench databases' admin (used to undo the real-server phase); a new one every run.
BENCH_ADMIN_PASSWORD=$(openssl rand -hex 16)
export RATE_LIMIT_MAX_REQUESTS=100000000 RATE_LIMIT_CREDENTIAL_MAX_REQUESTS=100000000
export RUST_LOG=warn
PSQL=("$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres)
export PGPASSWORD=$PG_PASSWORD

declare -A R=()
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

fresh_db() {
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  "$BIN/mpanel" migrate 2>/dev/null
  local seeded
  seeded=$(MPANEL_SEED_ADMIN_PASSWORD=$BENCH_ADMIN_PASSWORD "$BIN/mpanel" seed demo 2>/dev/null)
  PRICE=$(json_field priceId <<<"$seeded")
  PRODUCT=$(json_field productId <<<"$seeded")
  BENCH_ADMIN_EMAIL=$(json_field adminEmail <<<"$seeded")
  export DEMO_PRICE_ID=$PRICE
}

# wait_ready PORT [PATH] — waits for 200 from PATH (default /api/ready). An `api`-only process
# waits for /api/live instead: with no pipeline running, the orders a phase placed leave the
# feed subscribers behind, and /api/ready rightly answers 503 beyond READY_MAX_FEED_LAG_EVENTS.
wait_ready() {
  local port=$1 path=${2:-/api/ready} i
  for ((i = 0; i < 150; i++)); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port$path" 2>/dev/null && return 0
    sleep 0.2
  done
  die "mpanel on $port did not become ready"
}

# start ROLE PORT [ENV...] — starts an mpanel process in the background; its pid is in $LAST_PID.
LAST_PID=
start() {
  local role=$1 port=$2
  shift 2
  env "$@" PORT="$port" HOST=127.0.0.1 "$BIN/mpanel" "$role" </dev/null >>"$OUT/$role-$port.log" 2>&1 &
  LAST_PID=$!
  pids+=("$LAST_PID")
}

stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# ---- --profile: where the intake's time goes ---------------------------------------------------
# `perf record -a` over a c16 intake run against `mpanel api` alone: the share of CPU samples per
# process (mpanel, postgres backends, the load generator) and mpanel's hottest symbols, plus the
# statements Postgres ran per order (pg_stat_database deltas).
if ((profile)); then
  # Enough orders for a few seconds of samples at the group-committed intake's ~15 k/s.
  PROFILE_ORDERS=40000
  command -v perf >/dev/null || die "perf is missing: apt-get install linux-perf"
  fresh_db
  start api "$BENCH_PORT" MPANEL_PROVISIONERS=instant MPANEL_ALLOW_FAKE_PROVISIONERS=1
  api_pid=$LAST_PID
  wait_ready "$BENCH_PORT" /api/live
  "$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --concurrency 16 --count 500 --label warmup >/dev/null
  stats() { "${PSQL[@]}" -d postgres -F' ' -c "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted FROM pg_stat_database WHERE datname = '$DB'"; }
  sleep 11 # backends flush their statistics at most after 10 s idle
  read -r x0 r0 f0 i0 < <(stats)
  # Record only this run's processes: mpanel api and the Postgres backends serving it (the
  # machine is shared; a system-wide profile would mix in other people's work).
  backends=$("${PSQL[@]}" -d postgres -c "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE datname = '$DB'")
  "$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --concurrency 16 --count "$PROFILE_ORDERS" --label profile >"$OUT/profile-loadgen.json" 2>/dev/null &
  loadgen=$!
  perf record -F 999 -o "$OUT/perf.data" -p "$api_pid,$backends" 2>/dev/null &
  perf_pid=$!
  wait "$loadgen"
  kill -INT "$perf_pid"
  wait "$perf_pid" || true
  sleep 11
  read -r x1 r1 f1 i1 < <(stats)
  stop "$api_pid"
  {
    echo "== loadgen: $(cat "$OUT/profile-loadgen.json")"
    python3 -c "n=$PROFILE_ORDERS; print(f'== per order: {($x1-$x0)/n:.2f} transactions (statements outside BEGIN count one each), {($r1-$r0)/n:.1f} tuples returned, {($f1-$f0)/n:.1f} fetched, {($i1-$i0)/n:.2f} inserted')"
    echo "== CPU samples: mpanel api (tokio-rt-worker threads, the group-commit writer) vs its Postgres backends"
    perf report -i "$OUT/perf.data" --stdio --sort comm 2>/dev/null | grep -v '^#' | grep -v '^$'
    echo "== mpanel: hottest symbols (self), % of all samples"
    perf report -i "$OUT/perf.data" --stdio --comm tokio-rt-worker,mpanel,group-commit --sort dso,sym --percent-limit 0.4 2>/dev/null | grep -v '^#' | grep -v '^$' | head -50
    echo "== mpanel: by library (self)"
    perf report -i "$OUT/perf.data" --stdio --comm tokio-rt-worker,mpanel,group-commit --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
    echo "== postgres backends: hottest symbols (self)"
    perf report -i "$OUT/perf.data" --stdio --comm postgres --sort sym --percent-limit 0.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
  } >"$OUT/profile.txt"
  cat "$OUT/profile.txt"
  exit 0
fi

# ---- 1. the raw limit ----------------------------------------------------------------------------
fresh_db
"${PSQL[@]}" -d "$DB" -c "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, doc jsonb NOT NULL)"
cat >"$OUT/raw.sql" <<'SQL'
INSERT INTO bench_raw (doc) VALUES ('{"tenantSlug":"migrahosting","priceId":"16939e2b-09b1-5b6b-b5aa-e32069254221","customerEmail":"bench@example.com","stripePaymentIntentId":"pi_0123456789abcdefghijklmn","domain":"bench-example.com","note":"about two hundred and fifty bytes of json, like an order event"}');
SQL
for c in 1 16; do
  tps=$(pgbench -n -h "$PG_HOST" -p "$PG_PORT" -U postgres -f "$OUT/raw.sql" -c "$c" -j "$((c < 2 ? 1 : 2))" -T "$PGBENCH_SECS" "$DB" 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
  R[raw_insert_tps_c$c]=$tps
  log "raw insert c$c: $tps tps"
done

# ---- 2. intake (the webhook path alone), memory -------------------------------------------------
# `mpanel api` only: the saga, projectors and worker are stopped, so the figure is what the
# webhook path costs, not the whole pipeline competing for the same two cores. The c16 run is
# INTAKE_C16_API orders (~6 s in a full run; the raw baseline runs 20 s): a run of one second
# let a quiet or a busy second on this shared machine move the ratio by 10 %. Its database is
# a scratch one: the pipeline's below starts afresh, so its backlog does not grow with this.
fresh_db
fake=(MPANEL_PROVISIONERS=instant MPANEL_ALLOW_FAKE_PROVISIONERS=1)
start api "$BENCH_PORT" "${fake[@]}"
api_pid=$LAST_PID
wait_ready "$BENCH_PORT" /api/live
for c in 1 16; do
  count=$([[ $c == 1 ]] && echo "$INTAKE_C1" || echo "$INTAKE_C16_API")
  res=$("$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --concurrency "$c" --count "$count" --label "intake_c$c")
  echo "$res" >>"$OUT/loadgen.ndjson"
  R[intake_ops_c$c]=$(json_field opsPerSecond <<<"$res")
  [[ $c == 16 ]] && R[intake_p99_ms_c16]=$(json_field p99Ms <<<"$res")
  log "intake c$c (api only): $res"
done
stop "$api_pid"
R[intake_ratio_c16]=$(python3 -c "print(round(${R[intake_ops_c16]} / ${R[raw_insert_tps_c16]}, 3))")

# The HTTP ceiling: the same load generator against `mpanel-nullapi` (bench/src/bin/nullapi.rs),
# which parses each order and answers like the webhook but decides and stores nothing. On two
# shared cores the load generator and the HTTP exchange alone cap what the intake can reach.
"$BIN/mpanel-nullapi" --listen "127.0.0.1:$NULL_PORT" </dev/null >>"$OUT/nullapi.log" 2>&1 &
null_pid=$!
pids+=("$null_pid")
for ((i = 0; i < 50; i++)); do
  curl -fsS -o /dev/null -X POST -d '{}' "http://127.0.0.1:$NULL_PORT/api/orders" 2>/dev/null && break
  sleep 0.1
done
# Five times the intake's count: the ceiling is ~4-5x faster, and a run this short is noisy.
res=$("$BIN/mpanel-loadgen" --url "http://127.0.0.1:$NULL_PORT" --concurrency 16 --count "$((INTAKE_C16 * 5))" --label http_ceiling_c16)
echo "$res" >>"$OUT/loadgen.ndjson"
R[http_ceiling_ops_c16]=$(json_field opsPerSecond <<<"$res")
R[http_ceiling_ratio_c16]=$(python3 -c "print(round(${R[http_ceiling_ops_c16]} / ${R[raw_insert_tps_c16]}, 3))")
stop "$null_pid"
log "HTTP ceiling c16 (parse and answer, nothing stored): $res"

# The whole pipeline in one `mpanel serve`, on a fresh database: its throughput and peak memory
# while it takes INTAKE_C16 orders and provisions them (the backlog the activation runs wait
# out first).
fresh_db
start serve "$BENCH_PORT" "${fake[@]}"
serve_pid=$LAST_PID
wait_ready "$BENCH_PORT" /api/live
res=$("$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --concurrency 16 --count "$INTAKE_C16" --label intake_c16_serve)
echo "$res" >>"$OUT/loadgen.ndjson"
R[intake_ops_c16_serve]=$(json_field opsPerSecond <<<"$res")
R[serve_peak_rss_mb]=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$serve_pid/status")
log "intake c16 (serve, whole pipeline): $res; peak RSS ${R[serve_peak_rss_mb]} MB"

# ---- 3. order → ACTIVE latency, instant provisioners --------------------------------------------
activation_percentiles() { # MARK (global position before the phase) → "p50 p99" in ms
  "${PSQL[@]}" -d "$DB" -F' ' -c "
    WITH placed AS (SELECT aggregate_id AS order_id, recorded_at FROM events
                    WHERE event_type = 'OrderPlaced' AND global_position > $1),
         active AS (SELECT payload->'SubscriptionActivated'->>'orderId' AS order_id, recorded_at FROM events
                    WHERE event_type = 'SubscriptionActivated' AND global_position > $1),
         lat AS (SELECT extract(epoch FROM a.recorded_at - p.recorded_at) * 1000 AS ms
                 FROM placed p JOIN active a USING (order_id))
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), count(*) FROM lat"
}
# The poll walks the Order part of the events' primary key, not the whole log: it runs every
# 0.5 s while the pipeline drains, on the same two cores.
wait_all_active() { # every placed order's subscription ACTIVE (not just every projected one)
  local i
  for ((i = 0; i < 1200; i++)); do
    [[ $("${PSQL[@]}" -d "$DB" -c "SELECT (SELECT count(*) FROM events WHERE aggregate_type = 'Order' AND sequence = 1)
                                          - (SELECT count(*) FROM subscriptions WHERE status = 'ACTIVE')") == 0 ]] && return 0
    sleep 0.5
  done
  warn "not every subscription became ACTIVE"
}
# activation_run RATE SECONDS LABEL — orders at RATE/s for SECONDS, then waits until every one is
# ACTIVE; sets p50 and p99 (ms) and n (orders) from this run's events alone.
activation_run() {
  local mark
  mark=$("${PSQL[@]}" -d "$DB" -c "SELECT coalesce(max(global_position), 0) FROM events")
  "$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --rate "$1" --seconds "$2" --label "$3" >>"$OUT/loadgen.ndjson"
  wait_all_active
  read -r p50 p99 n < <(activation_percentiles "$mark")
}
wait_all_active
activation_run "$RATE" "$RATE_SECS" activate_stub
R[activate_p50_ms_stub]=$p50 R[activate_p99_ms_stub]=$p99
log "activation (instant provisioners, $RATE/s, $n orders): p50 $p50 ms, p99 $p99 ms"
# The same at a rate the pipeline sustains on this machine, to separate queueing from latency.
activation_run "$LOW_RATE" "$RATE_SECS" activate_stub_low
R[activate_p50_ms_stub_low_rate]=$p50 R[activate_p99_ms_stub_low_rate]=$p99 R[activate_low_rate]=$LOW_RATE
log "activation (instant provisioners, $LOW_RATE/s, $n orders): p50 $p50 ms, p99 $p99 ms"
stop "$serve_pid"

# ---- 4. order → ACTIVE latency, real servers -----------------------------------------------------
start serve "$BENCH_PORT"
serve_pid=$LAST_PID
wait_ready "$BENCH_PORT"
real_mark=$("${PSQL[@]}" -d "$DB" -c "SELECT coalesce(max(global_position), 0) FROM events")
activation_run "$REAL_RATE" "$REAL_SECS" activate_real
R[activate_p50_ms_real]=$p50 R[activate_p99_ms_real]=$p99
log "activation (real PowerDNS/sshd/Dovecot, $REAL_RATE/s, $n orders): p50 $p50 ms, p99 $p99 ms"
# Undo this phase on the servers through mpanel's own path, so repeated runs do not pile zones,
# accounts and mailboxes up on the stack (the mail script rewrites its whole passwd-file per
# job): an admin terminates each of its subscriptions (zone deleted, web root and Maildir moved
# to the archives, passwd-file line removed; ADR 0016), then the archives of these bench-only
# domains are deleted. The instant provisioners' orders never reached a server.
undo_real_phase() {
  local token domains subs id i left
  token=$(curl -fsS -X POST -H 'content-type: application/json' \
    -d "{\"email\":\"$BENCH_ADMIN_EMAIL\",\"password\":\"$BENCH_ADMIN_PASSWORD\"}" \
    "http://127.0.0.1:$BENCH_PORT/api/auth/login" | json_field accessToken) || {
    warn "clean-up: admin login failed; this phase's accounts stay on the stack"
    return 0
  }
  subs="SELECT o.subscription_id FROM orders o JOIN events e ON e.aggregate_type = 'Order'
          AND e.aggregate_id = o.id::text AND e.sequence = 1 WHERE e.global_position > $real_mark"
  for id in $("${PSQL[@]}" -d "$DB" -c "$subs"); do
    curl -fsS -o /dev/null -X POST -H "authorization: Bearer $token" -H 'content-type: application/json' \
      -d '{"reason":"bench clean-up"}' "http://127.0.0.1:$BENCH_PORT/api/subscriptions/$id/terminate" ||
      warn "clean-up: terminating $id failed"
  done
  for ((i = 0; i < 240; i++)); do
    left=$("${PSQL[@]}" -d "$DB" -c "SELECT count(*) FROM subscriptions WHERE id IN ($subs) AND status <> 'TERMINATED'")
    [[ $left == 0 ]] && break
    sleep 0.5
  done
  [[ $left == 0 ]] || warn "clean-up: $left subscriptions not terminated in 2 min"
  domains=$("${PSQL[@]}" -d "$DB" -c "SELECT s.domain FROM subscriptions s WHERE s.id IN ($subs) AND s.status = 'TERMINATED'")
  for domain in $domains; do
    # Bench domains only (the load generator's b<hex>.bench.example), never a glob of input.
    [[ $domain =~ ^b[0-9a-f]+\.bench\.example$ ]] || continue
    rm -rf -- "$HOSTING_ARCHIVE_DIR/$domain".* "$MAIL_ARCHIVE_DIR/postmaster@$domain".*
  done
}
undo_real_phase
stop "$serve_pid"

# ---- 5. scaling: one vs two API processes (API path alone, as in 2) -----------------------------
fresh_db
start api "$BENCH_PORT" "${fake[@]}"
api1=$LAST_PID
wait_ready "$BENCH_PORT" /api/live
res=$("$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --concurrency 16 --count "$INTAKE_C16" --label intake_1api)
R[intake_ops_c16_1api]=$(json_field opsPerSecond <<<"$res")
start api "$BENCH_PORT2" "${fake[@]}"
api2=$LAST_PID
wait_ready "$BENCH_PORT2" /api/live
res=$("$BIN/mpanel-loadgen" --url "http://127.0.0.1:$BENCH_PORT" --url "http://127.0.0.1:$BENCH_PORT2" --concurrency 16 --count "$INTAKE_C16" --label intake_2api)
R[intake_ops_c16_2api]=$(json_field opsPerSecond <<<"$res")
for p in "$api1" "$api2"; do stop "$p"; done

# ---- 6. rebuild ----------------------------------------------------------------------------------
rebuild() { # EVENTS → events/s of `projections rebuild all`
  fresh_db
  "$BIN/mpanel-eventgen" --events "$1" --price "$PRICE" --product "$PRODUCT" >/dev/null
  local total t0 t1
  total=$("${PSQL[@]}" -d "$DB" -c "SELECT count(*) FROM events")
  t0=$(date +%s.%N)
  "$BIN/mpanel" projections rebuild all >/dev/null 2>>"$OUT/rebuild.log"
  t1=$(date +%s.%N)
  python3 -c "print(round($total / ($t1 - $t0)), round($t1 - $t0, 2))"
}
read -r small_rate small_secs < <(rebuild "$REBUILD_SMALL")
read -r large_rate large_secs < <(rebuild "$REBUILD_LARGE")
R[rebuild_events_per_s]=$large_rate
R[rebuild_events_per_s_small]=$small_rate
R[rebuild_seconds_small]=$small_secs R[rebuild_seconds_large]=$large_secs
R[rebuild_events_small]=$REBUILD_SMALL R[rebuild_events_large]=$REBUILD_LARGE
R[rebuild_time_ratio]=$(python3 -c "print(round($large_secs / $small_secs, 2))")

# ---- summary -------------------------------------------------------------------------------------
{
  printf '{'
  first=1
  for k in $(printf '%s\n' "${!R[@]}" | sort); do
    ((first)) || printf ','
    first=0
    printf '"%s": %s' "$k" "${R[$k]:-null}"
  done
  printf ', "quick": %s, "cores": %s}\n' "$([[ $quick == 1 ]] && echo true || echo false)" "$(nproc)"
} >"$OUT/summary.json"
python3 - "$OUT/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
rows = [
  ("raw insert tps, c1 / c16", f"{s['raw_insert_tps_c1']:.0f} / {s['raw_insert_tps_c16']:.0f}", "baseline"),
  ("intake orders/s, c1 / c16 (api alone)", f"{s['intake_ops_c1']:.0f} / {s['intake_ops_c16']:.0f}", ""),
  ("intake orders/s, c16, whole serve", f"{s['intake_ops_c16_serve']:.0f}", "pipeline on 2 cores"),
  ("intake ratio c16", f"{s['intake_ratio_c16']:.2f}", "goal >= 0.5"),
  ("intake p99 ms, c16", f"{s['intake_p99_ms_c16']:.1f}", ""),
  ("HTTP ceiling orders/s c16 / ratio", f"{s['http_ceiling_ops_c16']:.0f} / {s['http_ceiling_ratio_c16']:.2f}", "nothing stored"),
  ("activation p50 / p99 ms, instant, 200/s", f"{s['activate_p50_ms_stub']} / {s['activate_p99_ms_stub']}", "goal p99 < 100"),
  (f"activation p50 / p99 ms, instant, {s['activate_low_rate']}/s", f"{s['activate_p50_ms_stub_low_rate']} / {s['activate_p99_ms_stub_low_rate']}", "below saturation"),
  ("activation p50 / p99 ms, real", f"{s['activate_p50_ms_real']} / {s['activate_p99_ms_real']}", "goal p99 < 1000"),
  ("rebuild events/s", f"{s['rebuild_events_per_s']}", "goal >= 100000"),
  ("rebuild time ratio large/small", f"{s['rebuild_time_ratio']} (events x{s['rebuild_events_large'] / s['rebuild_events_small']:.0f})", "linear ~ equal"),
  ("serve peak RSS MB", f"{s['serve_peak_rss_mb']}", "goal < 150"),
  ("intake c16, 1 API / 2 APIs", f"{s['intake_ops_c16_1api']:.0f} / {s['intake_ops_c16_2api']:.0f}", ""),
]
w = max(len(r[0]) for r in rows)
for name, value, note in rows:
    print(f"{name:<{w}}  {value:<24} {note}")
PY
log "summary: $OUT/summary.json"
