# shellcheck shell=bash disable=SC2034 # (variables are used by the scripts that source this)
# Shared library for the mpanel local stack (scripts/stack.sh, up.sh, down.sh, test.sh).
#
# Source it; it defines variables and functions only and has no side effects on load (apart from
# computing paths). Everything runs as root on loopback, with non-default ports:
#
#   PostgreSQL 15  127.0.0.1:55432   superuser postgres / mpanel-dev-pg, dbs mpanel + mpanel_test
#   Redis 7        127.0.0.1:56379
#   PowerDNS auth  127.0.0.1:55353 (DNS), 127.0.0.1:58081 (HTTP API)
#   OpenSSH sshd   127.0.0.1:52222   root, key only
#   Dovecot IMAP   127.0.0.1:51143   passwd-file, SHA512-CRYPT, Maildir owned by 5000:5000
#   mpanel         127.0.0.1:2271    (started by up.sh only)
#
# State lives in $REPO_ROOT/.stack; data the postgres/dovecot users must reach lives in
# /var/tmp/mpanel-stack-<hash> (the checkout may sit under a 0700 home), linked as .stack/data.

# ---------------------------------------------------------------------------------------------
# Layout and contract
# ---------------------------------------------------------------------------------------------

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STACK_DIR="$REPO_ROOT/.stack"
STACK_HASH="$(printf '%s' "$REPO_ROOT" | sha1sum | cut -c1-8)"
DATA_DIR="/var/tmp/mpanel-stack-$STACK_HASH"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"
SECRETS_DIR="$STACK_DIR/secrets"
STACK_ENV_FILE="$STACK_DIR/stack.env"
DEMO_ENV_FILE="$STACK_DIR/demo.env"

PG_BIN="/usr/lib/postgresql/15/bin"
PG_PORT=55432
PG_PASSWORD="mpanel-dev-pg"
PG_DATA="$DATA_DIR/pgdata"
PG_SOCKET_DIR="$DATA_DIR/pgsock"
PG_LOG="$LOG_DIR/postgres.log"

REDIS_PORT=56379
REDIS_DIR="$STACK_DIR/redis"
REDIS_CONF="$REDIS_DIR/redis.conf"
REDIS_PID="$RUN_DIR/redis.pid"
REDIS_LOG="$LOG_DIR/redis.log"

PDNS_DNS_PORT=55353
PDNS_API_PORT=58081
PDNS_DIR="$STACK_DIR/pdns"
PDNS_DB="$PDNS_DIR/pdns.sqlite3"
PDNS_PID="$RUN_DIR/pdns.pid"
PDNS_LOG="$LOG_DIR/pdns.log"

SSH_PORT_=52222
SSH_DIR="$STACK_DIR/ssh"
SSHD_CONF="$SSH_DIR/sshd_config"
SSHD_HOST_KEY="$SSH_DIR/ssh_host_ed25519_key"
SSH_CLIENT_KEY="$SSH_DIR/id_ed25519"
SSH_AUTHORIZED_KEYS="$SSH_DIR/authorized_keys"
SSH_KNOWN_HOSTS_FILE="$SSH_DIR/known_hosts"
SSHD_PID="$RUN_DIR/sshd.pid"
SSHD_LOG="$LOG_DIR/sshd.log"

IMAP_PORT=51143
VMAIL_ID=5000
DOVECOT_DIR="$DATA_DIR/dovecot"
DOVECOT_BASE_DIR="$DOVECOT_DIR/run"
DOVECOT_STATE_DIR="$DOVECOT_DIR/state"
DOVECOT_PASSWD="$DOVECOT_DIR/passwd"
DOVECOT_SELFCHECK_PASSWD="$DOVECOT_DIR/selfcheck.passwd"
DOVECOT_CONF="$STACK_DIR/dovecot/dovecot.conf"
DOVECOT_PID="$DOVECOT_BASE_DIR/master.pid"
DOVECOT_LOG="$LOG_DIR/dovecot.log"
MAIL_ROOT_DIR="$DATA_DIR/mail"
HOSTING_ROOT_DIR="$DATA_DIR/hosting"

MPANEL_HOST=127.0.0.1
MPANEL_PORT=2271
MPANEL_PID="$STACK_DIR/mpanel.pid"
MPANEL_LOG="$LOG_DIR/mpanel.log"

ADMIN_EMAIL_DEFAULT="admin@migrahosting.test"

# Start order; stop runs it backwards.
STACK_SERVICES=(postgres redis pdns sshd dovecot)

# Debian packages the stack needs (postgresql only when initdb is missing, see ensure_packages).
STACK_PACKAGES=(
  curl openssl ca-certificates sqlite3 pkg-config libssl-dev
  redis-server redis-tools
  pdns-server pdns-backend-sqlite3
  openssh-server openssh-client
  dovecot-core dovecot-imapd
  bind9-dnsutils
  # flock (the mail script's lock) and chattr (the fault tier's unwritable passwd-file): part of
  # every Debian base system, named so a trimmed image fails here rather than in a test.
  util-linux e2fsprogs
)

# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------

log() { printf '[stack] %s\n' "$*" >&2; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[stack] ERROR: %s\n' "$*" >&2
  exit 1
}

# show_log_tail FILE [LINES] — print the end of a log to stderr, for error reports.
show_log_tail() {
  local file=$1 lines=${2:-30}
  if [[ -r $file ]]; then
    printf '[stack] --- last %s lines of %s ---\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2 || true
    printf '[stack] --- end of %s ---\n' "$file" >&2
  else
    printf '[stack] (no log at %s)\n' "$file" >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------------------------

# pid_alive PID [COMM] — true when PID exists, is not a zombie, and (if given) its command name
# is COMM (guards against pid reuse after a reboot or a crash).
pid_alive() {
  local pid=${1:-} comm=${2:-} stat name
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  stat=${stat//[[:space:]]/}
  [[ -n $stat && $stat != Z* ]] || return 1
  if [[ -n $comm ]]; then
    name=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
    name=${name//[[:space:]]/}
    [[ $name == "$comm" ]] || return 1
  fi
  return 0
}

# read_pid FILE — first line of a pid file, digits only ("" when missing).
read_pid() {
  local file=$1 line=""
  if [[ -s $file ]]; then
    IFS= read -r line <"$file" || true
  fi
  printf '%s' "${line//[!0-9]/}"
}

# pidfile_alive FILE [COMM] — the pid recorded in FILE is alive.
pidfile_alive() {
  local pid
  pid=$(read_pid "$1")
  pid_alive "$pid" "${2:-}"
}

# wait_gone PID TIMEOUT_SECONDS — wait until PID is gone (zombie counts as gone).
wait_gone() {
  local pid=$1 timeout=$2 i
  for ((i = 0; i < timeout * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  ! pid_alive "$pid"
}

# stop_pid NAME PID [COMM] — SIGTERM, wait up to 20 s, then SIGKILL; waits until gone.
stop_pid() {
  local name=$1 pid=$2 comm=${3:-}
  if ! pid_alive "$pid" "$comm"; then
    return 0
  fi
  log "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 20; then
    warn "$name: pid $pid ignored SIGTERM for 20 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "$name: pid $pid does not go away"
  fi
}

# wait_until TIMEOUT DESCRIPTION LOGFILE COMMAND... — poll COMMAND every 0.2 s until it succeeds;
# on timeout print the log tail and return 1.
wait_until() {
  local timeout=$1 desc=$2 logfile=$3 i
  shift 3
  for ((i = 0; i < timeout * 5; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  printf '[stack] ERROR: timed out after %ss waiting for %s\n' "$timeout" "$desc" >&2
  show_log_tail "$logfile"
  return 1
}

# ---------------------------------------------------------------------------------------------
# Packages, users, directories, secrets
# ---------------------------------------------------------------------------------------------

ensure_root() {
  [[ $(id -u) -eq 0 ]] || die "the local stack must run as root (it starts sshd, dovecot, and initdb via runuser)"
}

# ensure_packages — apt-get install whatever is missing (apt-get update at most once).
ensure_packages() {
  local -a wanted=("${STACK_PACKAGES[@]}") missing=()
  local pkg status
  if [[ ! -x $PG_BIN/initdb ]]; then
    # Only when PostgreSQL 15 is absent: naming it otherwise would upgrade it in place.
    wanted+=(postgresql)
  fi
  for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  log "installing missing packages: ${missing[*]}"
  mkdir -p "$LOG_DIR"
  if ! {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  } </dev/null >>"$LOG_DIR/apt.log" 2>&1; then
    show_log_tail "$LOG_DIR/apt.log"
    die "apt-get failed (see $LOG_DIR/apt.log)"
  fi
  [[ -x $PG_BIN/initdb ]] || die "PostgreSQL 15 binaries still missing at $PG_BIN"
}

# ensure_vmail_user — uid/gid 5000 owns the Maildir tree (Dovecot's static userdb).
ensure_vmail_user() {
  if ! getent group "$VMAIL_ID" >/dev/null; then
    groupadd -g "$VMAIL_ID" vmail
  fi
  if ! getent passwd "$VMAIL_ID" >/dev/null; then
    useradd -u "$VMAIL_ID" -g "$VMAIL_ID" -M -d /nonexistent -s /usr/sbin/nologin vmail
  fi
}

# ensure_dirs — .stack layout plus the traversable data dir under /var/tmp.
ensure_dirs() {
  mkdir -p "$STACK_DIR" "$LOG_DIR" "$RUN_DIR" "$REDIS_DIR" "$PDNS_DIR" "$SSH_DIR" \
    "$STACK_DIR/dovecot"
  install -d -m 0700 "$SECRETS_DIR"
  chmod 0700 "$SSH_DIR"

  if [[ -L $DATA_DIR ]]; then
    die "$DATA_DIR is a symlink; refusing to use it"
  fi
  if [[ -e $DATA_DIR ]]; then
    [[ -d $DATA_DIR ]] || die "$DATA_DIR exists and is not a directory"
    [[ $(stat -c %u "$DATA_DIR") == 0 ]] || die "$DATA_DIR is not owned by root; refusing to use it"
  fi
  # 0755: postgres and dovecot must traverse it.
  install -d -m 0755 -o root -g root "$DATA_DIR"
  ln -sfn "$DATA_DIR" "$STACK_DIR/data"
  install -d -m 0755 "$HOSTING_ROOT_DIR"
  # Where terminated accounts and Maildirs go (siblings: same filesystem, a rename); the
  # provisioning scripts would create them too.
  install -d -m 0700 "$HOSTING_ROOT_DIR-archive" "$MAIL_ROOT_DIR-archive"
}

# secret NAME — print the secret stored in .stack/secrets/NAME, generating it once.
secret() {
  local file="$SECRETS_DIR/$1" tmp
  if [[ ! -s $file ]]; then
    install -d -m 0700 "$SECRETS_DIR"
    tmp=$(mktemp "$SECRETS_DIR/.tmp.XXXXXX")
    openssl rand -hex 32 >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$file"
  fi
  tr -d '[:space:]' <"$file"
}

# write_private FILE — write stdin to FILE atomically with mode 0600.
write_private() {
  local file=$1 tmp
  tmp=$(mktemp "$(dirname "$file")/.tmp.XXXXXX")
  cat >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$file"
}

# ---------------------------------------------------------------------------------------------
# Env file
# ---------------------------------------------------------------------------------------------

# stack_env — the test/dev environment as `export VAR=value` lines.
stack_env() {
  local -a vars=(
    DATABASE_URL "postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/mpanel"
    REDIS_URL "redis://127.0.0.1:$REDIS_PORT"
    POWERDNS_API_URL "http://127.0.0.1:$PDNS_API_PORT"
    POWERDNS_API_KEY "$(secret pdns-api-key)"
    POWERDNS_DNS_PORT "$PDNS_DNS_PORT"
    SSH_HOST 127.0.0.1
    SSH_PORT "$SSH_PORT_"
    SSH_USER root
    SSH_KEY_PATH "$SSH_CLIENT_KEY"
    SSH_KNOWN_HOSTS "$SSH_KNOWN_HOSTS_FILE"
    MAIL_IMAP_PORT "$IMAP_PORT"
    MAIL_PASSWD_FILE "$DOVECOT_PASSWD"
    MAIL_ROOT "$MAIL_ROOT_DIR"
    MAIL_ARCHIVE_DIR "$MAIL_ROOT_DIR-archive"
    HOSTING_ROOT "$HOSTING_ROOT_DIR"
    HOSTING_ARCHIVE_DIR "$HOSTING_ROOT_DIR-archive"
    JWT_SECRET "$(secret jwt-secret)"
    MARKETING_WEBHOOK_SECRET "$(secret marketing-webhook-secret)"
    STRIPE_WEBHOOK_SECRET "$(secret stripe-webhook-secret)"
    ADMIN_EMAIL "$ADMIN_EMAIL_DEFAULT"
    ADMIN_PASSWORD "$(secret admin-password)"
  )
  local i
  printf '# mpanel local stack environment (generated by scripts/stack.sh; do not edit)\n'
  for ((i = 0; i < ${#vars[@]}; i += 2)); do
    printf 'export %s=%q\n' "${vars[i]}" "${vars[i + 1]}"
  done
}

write_stack_env() {
  stack_env | write_private "$STACK_ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL 15
# ---------------------------------------------------------------------------------------------

pg_as_postgres() { runuser -u postgres -- "$@"; }

pg_running() {
  [[ -s $PG_DATA/PG_VERSION ]] || return 1
  # pg_ctl status copes with a stale postmaster.pid (exit 3 = not running); a killed postmaster
  # stays a zombie for a moment, which pg_ctl still counts as running, hence pid_alive too.
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1 && pid_alive "$(pg_pid)" postgres
}

pg_pid() { read_pid "$PG_DATA/postmaster.pid"; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

pg_psql() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_init() {
  if [[ -s $PG_DATA/PG_VERSION ]]; then
    return 0
  fi
  log "postgres: initdb in $PG_DATA"
  rm -rf "$PG_DATA" # a half-made cluster from an interrupted run
  install -d -m 0700 -o postgres -g postgres "$PG_DATA"
  local pwfile="$DATA_DIR/.pgpass-init"
  (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$pwfile")
  chown postgres:postgres "$pwfile"
  if ! pg_as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
    --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pwfile" \
    -E UTF8 --locale=C.UTF-8 </dev/null >>"$PG_LOG" 2>&1; then
    rm -f "$pwfile"
    show_log_tail "$PG_LOG"
    die "postgres: initdb failed"
  fi
  rm -f "$pwfile"
}

pg_configure() {
  local conf="$PG_DATA/mpanel-stack.conf"
  cat >"$conf" <<EOF
# Written by scripts/lib/stack.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
# #[sqlx::test] and the black-box tests open many pools at once.
max_connections = 300
# DEV/TEST STACK ONLY: durability is switched off for speed (a crash may lose or corrupt data).
# Never copy these three settings to a real server.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  chown postgres:postgres "$conf"
  chmod 0600 "$conf"
  if ! grep -qx "include_if_exists = 'mpanel-stack.conf'" "$PG_DATA/postgresql.conf"; then
    printf "\ninclude_if_exists = 'mpanel-stack.conf'\n" >>"$PG_DATA/postgresql.conf"
  fi
}

pg_create_databases() {
  local db
  # Keep the password in step with the contract even if the cluster predates it.
  pg_psql -c "ALTER ROLE postgres WITH PASSWORD '$PG_PASSWORD'" >/dev/null
  for db in mpanel mpanel_test; do
    if [[ -z $(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
      log "postgres: creating database $db"
      pg_psql -c "CREATE DATABASE $db" >/dev/null
    fi
  done
}

pg_start() {
  if pg_running; then
    wait_until 15 "postgres to answer on 127.0.0.1:$PG_PORT" "$PG_LOG" pg_ready || return 1
    log "postgres: already running (pid $(pg_pid))"
    pg_create_databases
    return 0
  fi
  pg_init
  pg_configure
  install -d -m 0755 -o postgres -g postgres "$PG_SOCKET_DIR"
  log "postgres: starting on 127.0.0.1:$PG_PORT"
  # pg_ctl runs as postgres; its stdout/stderr (and the server's) is our log, opened by root, so
  # the log can live under a 0700 tree. pg_ctl removes a stale postmaster.pid itself.
  # After a crash the old postmaster may linger as a zombie for a moment, and postgres itself
  # refuses to start while the pid in postmaster.pid exists at all: wait for it to vanish.
  local old_pid i
  old_pid=$(pg_pid)
  if [[ -n $old_pid ]]; then
    for ((i = 0; i < 100; i++)); do
      ps -p "$old_pid" >/dev/null 2>&1 || break
      sleep 0.1
    done
  fi
  # Orphaned backends of a killed postmaster may still hold the shared memory for a moment:
  # retry a few times before giving up.
  for ((i = 1; ; i++)); do
    if pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t 60 start </dev/null >>"$PG_LOG" 2>&1 9>&-; then
      break
    fi
    if ((i >= 3)); then
      show_log_tail "$PG_LOG"
      die "postgres: failed to start"
    fi
    warn "postgres: start attempt $i failed, retrying"
    sleep 2
  done
  wait_until 30 "postgres to answer on 127.0.0.1:$PG_PORT" "$PG_LOG" pg_ready || die "postgres: not ready"
  pg_create_databases
  log "postgres: ready (pid $(pg_pid))"
}

pg_stop() {
  if ! pg_running; then
    return 0
  fi
  local pid
  pid=$(pg_pid)
  log "postgres: stopping (pid $pid)"
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop </dev/null >>"$PG_LOG" 2>&1 ||
    stop_pid postgres "$pid" postgres
  wait_gone "$pid" 10 || die "postgres: pid $pid does not go away"
}

# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------

redis_running() { pidfile_alive "$REDIS_PID" redis-server; }

redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]]; }

redis_start() {
  if redis_running; then
    wait_until 10 "redis to answer on 127.0.0.1:$REDIS_PORT" "$REDIS_LOG" redis_ready || return 1
    log "redis: already running (pid $(read_pid "$REDIS_PID"))"
    return 0
  fi
  cat >"$REDIS_CONF" <<EOF
# Written by scripts/lib/stack.sh on every start; edits are overwritten.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile "$REDIS_PID"
logfile "$REDIS_LOG"
dir "$REDIS_DIR"
save ""
appendonly no
EOF
  rm -f "$REDIS_PID"
  log "redis: starting on 127.0.0.1:$REDIS_PORT"
  redis-server "$REDIS_CONF" </dev/null >>"$REDIS_LOG" 2>&1 9>&- || {
    show_log_tail "$REDIS_LOG"
    die "redis: failed to start"
  }
  # Our own pid must be alive (someone else answering on the port does not count).
  wait_until 15 "redis to answer on 127.0.0.1:$REDIS_PORT" "$REDIS_LOG" \
    eval 'redis_running && redis_ready' || die "redis: not ready"
  log "redis: ready (pid $(read_pid "$REDIS_PID"))"
}

redis_stop() {
  stop_pid redis "$(read_pid "$REDIS_PID")" redis-server
  rm -f "$REDIS_PID"
}

# ---------------------------------------------------------------------------------------------
# PowerDNS Authoritative (gsqlite3)
# ---------------------------------------------------------------------------------------------

pdns_running() { pidfile_alive "$PDNS_PID" pdns_server; }

pdns_ready() {
  curl -fsS -o /dev/null --max-time 2 -H "X-API-Key: $(secret pdns-api-key)" \
    "http://127.0.0.1:$PDNS_API_PORT/api/v1/servers/localhost"
}

pdns_start() {
  if pdns_running; then
    wait_until 10 "PowerDNS API on 127.0.0.1:$PDNS_API_PORT" "$PDNS_LOG" pdns_ready || return 1
    log "pdns: already running (pid $(read_pid "$PDNS_PID"))"
    return 0
  fi
  local schema=/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql
  if [[ ! -s $PDNS_DB ]]; then
    log "pdns: creating $PDNS_DB"
    [[ -r $schema ]] || die "pdns: schema $schema missing (pdns-backend-sqlite3 installed?)"
    rm -f "$PDNS_DB.tmp"
    sqlite3 "$PDNS_DB.tmp" <"$schema"
    mv -f "$PDNS_DB.tmp" "$PDNS_DB"
  fi
  install -d -m 0755 "$PDNS_DIR/run"
  # The API key is a secret: config file is 0600.
  write_private "$PDNS_DIR/pdns.conf" <<EOF
# Written by scripts/lib/stack.sh on every start; edits are overwritten.
launch=gsqlite3
gsqlite3-database=$PDNS_DB
local-address=127.0.0.1
local-port=$PDNS_DNS_PORT
socket-dir=$PDNS_DIR/run
guardian=no
daemon=no
write-pid=yes
disable-syslog=yes
# Empty: otherwise pdns queries the internet for security status.
security-poll-suffix=
api=yes
api-key=$(secret pdns-api-key)
webserver=yes
webserver-address=127.0.0.1
webserver-port=$PDNS_API_PORT
webserver-allow-from=127.0.0.1/32,::1/128
# Test stack: no caches, so every answer reflects the database immediately; few threads.
cache-ttl=0
negquery-cache-ttl=0
query-cache-ttl=0
receiver-threads=1
distributor-threads=1
EOF
  rm -f "$PDNS_PID"
  log "pdns: starting (DNS 127.0.0.1:$PDNS_DNS_PORT, API 127.0.0.1:$PDNS_API_PORT)"
  # setsid: pdns runs in the foreground of its own session, so killing the caller's process
  # group (a timed-out shell, say) does not take it down.
  setsid pdns_server --config-dir="$PDNS_DIR" </dev/null >>"$PDNS_LOG" 2>&1 9>&- &
  local pid=$!
  printf '%s\n' "$pid" >"$PDNS_PID"
  wait_until 20 "PowerDNS API on 127.0.0.1:$PDNS_API_PORT" "$PDNS_LOG" \
    eval 'pdns_running && pdns_ready' || die "pdns: not ready"
  log "pdns: ready (pid $pid)"
}

pdns_stop() {
  stop_pid pdns "$(read_pid "$PDNS_PID")" pdns_server
  rm -f "$PDNS_PID"
}

# ---------------------------------------------------------------------------------------------
# OpenSSH sshd
# ---------------------------------------------------------------------------------------------

sshd_running() { pidfile_alive "$SSHD_PID" sshd; }

ssh_client() {
  ssh -F /dev/null -i "$SSH_CLIENT_KEY" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o UserKnownHostsFile="$SSH_KNOWN_HOSTS_FILE" -o StrictHostKeyChecking=yes \
    -o ConnectTimeout=3 -o LogLevel=ERROR -p "$SSH_PORT_" root@127.0.0.1 "$@"
}

sshd_ready() { ssh_client true </dev/null; }

sshd_keys() {
  if [[ ! -s $SSHD_HOST_KEY ]]; then
    rm -f "$SSHD_HOST_KEY" "$SSHD_HOST_KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C mpanel-stack-host -f "$SSHD_HOST_KEY" </dev/null
  fi
  if [[ ! -s $SSH_CLIENT_KEY ]]; then
    rm -f "$SSH_CLIENT_KEY" "$SSH_CLIENT_KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C mpanel-stack-client -f "$SSH_CLIENT_KEY" </dev/null
  fi
  chmod 0600 "$SSHD_HOST_KEY" "$SSH_CLIENT_KEY"
  install -m 0600 "$SSH_CLIENT_KEY.pub" "$SSH_AUTHORIZED_KEYS"
  local keytype key _
  read -r keytype key _ <"$SSHD_HOST_KEY.pub"
  printf '[127.0.0.1]:%s %s %s\n' "$SSH_PORT_" "$keytype" "$key" >"$SSH_KNOWN_HOSTS_FILE"
  chmod 0644 "$SSH_KNOWN_HOSTS_FILE"
}

# sshd_config — the stack's sshd configuration, on standard output.
sshd_config() {
  cat <<EOF
# Written by scripts/lib/stack.sh on every start; edits are overwritten.
ListenAddress 127.0.0.1:$SSH_PORT_
HostKey "$SSHD_HOST_KEY"
PidFile "$SSHD_PID"
AuthorizedKeysFile "$SSH_AUTHORIZED_KEYS"
AllowUsers root
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# Keys may sit under world-writable parents (/tmp) in other checkouts.
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitUserEnvironment no
# Tests open many connections at once.
MaxStartups 200:30:400
MaxSessions 100
LoginGraceTime 30
Subsystem sftp internal-sftp
# Every provisioning job is one command, run by root's login shell. Debian's bash reads
# ~/.bashrc for a command sent over SSH unless SHLVL says it is not a top-level shell, and
# root's ~/.bashrc on these machines runs pyenv's start-up: ~100 processes and ~80 ms per
# command (docs/adr/0023). A web or mail server's shell start-up is not what mpanel is
# measured or tested on.
SetEnv SHLVL=1
EOF
}

sshd_start() {
  sshd_keys
  local changed=0
  if [[ ! -f $SSHD_CONF ]] || ! cmp -s <(sshd_config) "$SSHD_CONF"; then
    sshd_config >"$SSHD_CONF"
    changed=1
  fi
  install -d -m 0755 /run/sshd
  if ! /usr/sbin/sshd -t -f "$SSHD_CONF" >>"$SSHD_LOG" 2>&1; then
    show_log_tail "$SSHD_LOG"
    die "sshd: config test failed"
  fi
  if sshd_running; then
    if ((changed)); then
      # SIGHUP: sshd re-executes itself with the new configuration; open sessions stay.
      log "sshd: configuration changed; reloading"
      kill -HUP "$(read_pid "$SSHD_PID")"
    fi
    wait_until 10 "sshd on 127.0.0.1:$SSH_PORT_" "$SSHD_LOG" sshd_ready || return 1
    log "sshd: already running (pid $(read_pid "$SSHD_PID"))"
    return 0
  fi
  rm -f "$SSHD_PID"
  log "sshd: starting on 127.0.0.1:$SSH_PORT_"
  # sshd daemonizes itself and writes PidFile.
  # shellcheck disable=SC2094 # -E appends to the same log; nothing reads it here
  /usr/sbin/sshd -f "$SSHD_CONF" -E "$SSHD_LOG" </dev/null >>"$SSHD_LOG" 2>&1 9>&- || {
    show_log_tail "$SSHD_LOG"
    die "sshd: failed to start"
  }
  wait_until 15 "sshd on 127.0.0.1:$SSH_PORT_ (ssh root@127.0.0.1 true)" "$SSHD_LOG" \
    eval 'sshd_running && sshd_ready' || die "sshd: not ready"
  log "sshd: ready (pid $(read_pid "$SSHD_PID"))"
}

sshd_stop() {
  stop_pid sshd "$(read_pid "$SSHD_PID")" sshd
  rm -f "$SSHD_PID"
}

# ---------------------------------------------------------------------------------------------
# Dovecot (IMAP)
# ---------------------------------------------------------------------------------------------

dovecot_running() { pidfile_alive "$DOVECOT_PID" dovecot; }

imap_banner() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 3 line <&3 && [[ $line == "* OK"* ]]' \
    _ "$IMAP_PORT" 2>/dev/null
}

# imap_selfcheck — log in as a throwaway user kept in a separate passwd-file (so
# MAIL_PASSWD_FILE stays untouched) whose mail lives outside MAIL_ROOT.
imap_selfcheck() {
  curl -fsS --max-time 5 --user "selfcheck@stack.test:$(secret dovecot-selfcheck-password)" \
    -X NOOP "imap://127.0.0.1:$IMAP_PORT/" -o /dev/null
}

dovecot_files() {
  ensure_vmail_user
  getent group dovecot >/dev/null || die "dovecot: group 'dovecot' missing (dovecot-core installed?)"
  install -d -m 0755 "$DOVECOT_DIR" "$DOVECOT_STATE_DIR"
  install -d -m 0770 -o "$VMAIL_ID" -g "$VMAIL_ID" "$MAIL_ROOT_DIR" "$DOVECOT_DIR/selfcheck-mail"
  # The passwd-file must be readable by the dovecot user (the auth process), else
  # "Temporary authentication failure". mpanel edits it; it keeps it 640 root:dovecot.
  if [[ ! -e $DOVECOT_PASSWD ]]; then
    : >"$DOVECOT_PASSWD"
  fi
  chown root:dovecot "$DOVECOT_PASSWD"
  chmod 0640 "$DOVECOT_PASSWD"
  local hash
  hash=$(secret dovecot-selfcheck-password | openssl passwd -6 -stdin)
  (umask 027 && printf 'selfcheck@stack.test:{SHA512-CRYPT}%s::::::userdb_mail=maildir:%s\n' \
    "$hash" "$DOVECOT_DIR/selfcheck-mail" >"$DOVECOT_SELFCHECK_PASSWD.tmp")
  chown root:dovecot "$DOVECOT_SELFCHECK_PASSWD.tmp"
  chmod 0640 "$DOVECOT_SELFCHECK_PASSWD.tmp"
  mv -f "$DOVECOT_SELFCHECK_PASSWD.tmp" "$DOVECOT_SELFCHECK_PASSWD"

  cat >"$DOVECOT_CONF" <<EOF
# Written by scripts/lib/stack.sh on every start; edits are overwritten.
base_dir = $DOVECOT_BASE_DIR
state_dir = $DOVECOT_STATE_DIR
log_path = "$DOVECOT_LOG"
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests log in with wrong passwords on purpose: no delay, no anvil penalty (see service anvil).
auth_failure_delay = 0
auth_verbose = yes
mail_location = maildir:$MAIL_ROOT_DIR/%d/%n
first_valid_uid = $VMAIL_ID
last_valid_uid = $VMAIL_ID
first_valid_gid = $VMAIL_ID
last_valid_gid = $VMAIL_ID

passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u $DOVECOT_PASSWD
}
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u $DOVECOT_SELFCHECK_PASSWD
}
userdb {
  driver = static
  args = uid=$VMAIL_ID gid=$VMAIL_ID home=$MAIL_ROOT_DIR/%d/%n
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
EOF
}

dovecot_start() {
  dovecot_files
  if dovecot_running; then
    wait_until 10 "Dovecot IMAP banner on 127.0.0.1:$IMAP_PORT" "$DOVECOT_LOG" imap_banner || return 1
    log "dovecot: already running (pid $(read_pid "$DOVECOT_PID"))"
    return 0
  fi
  # A stale anvil penalty socket (or master.pid) from an earlier run costs 5 s per login.
  rm -rf "$DOVECOT_BASE_DIR"
  log "dovecot: starting IMAP on 127.0.0.1:$IMAP_PORT"
  # dovecot forks into the background and keeps the caller's stderr open: never a pipe.
  dovecot -c "$DOVECOT_CONF" </dev/null >>"$DOVECOT_LOG" 2>&1 9>&- || {
    show_log_tail "$DOVECOT_LOG"
    die "dovecot: failed to start"
  }
  wait_until 15 "Dovecot IMAP banner on 127.0.0.1:$IMAP_PORT" "$DOVECOT_LOG" \
    eval 'dovecot_running && imap_banner' || die "dovecot: not ready"
  wait_until 10 "an IMAP login (selfcheck user)" "$DOVECOT_LOG" imap_selfcheck ||
    die "dovecot: IMAP login self-check failed"
  log "dovecot: ready (pid $(read_pid "$DOVECOT_PID"))"
}

dovecot_stop() {
  stop_pid dovecot "$(read_pid "$DOVECOT_PID")" dovecot
}

# ---------------------------------------------------------------------------------------------
# Whole stack
# ---------------------------------------------------------------------------------------------

# Serialise concurrent start/stop runs (e.g. two test.sh at once) on one lock file (fd 9).
# Every daemon is started with 9>&- so it does not inherit (and hold) the lock forever.
stack_lock() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/.lock"
  flock -w 300 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

stack_unlock() {
  exec 9>&-
}

stack_start() {
  ensure_root
  stack_lock
  ensure_packages
  ensure_dirs
  local svc
  for svc in "${STACK_SERVICES[@]}"; do
    case $svc in
      postgres) pg_start ;;
      redis) redis_start ;;
      pdns) pdns_start ;;
      sshd) sshd_start ;;
      dovecot) dovecot_start ;;
    esac
  done
  write_stack_env
  stack_unlock
  log "all services up; environment in $STACK_ENV_FILE"
}

stack_stop() {
  ensure_root
  stack_lock
  local i
  for ((i = ${#STACK_SERVICES[@]} - 1; i >= 0; i--)); do
    case ${STACK_SERVICES[i]} in
      postgres) pg_stop ;;
      redis) redis_stop ;;
      pdns) pdns_stop ;;
      sshd) sshd_stop ;;
      dovecot) dovecot_stop ;;
    esac
  done
  stack_unlock
  log "all stack services stopped"
}

# stack_status — one line per service; returns 1 if any is down.
stack_status() {
  local rc=0 state pid
  _status_line() {
    local pid=$3
    [[ $2 == up || $2 == starting || $1 == SERVICE ]] || pid=-
    printf '%-9s %-8s %-8s %s\n' "$1" "$2" "${pid:--}" "$4"
  }
  _status_line SERVICE STATE PID ADDRESS
  if pg_running && pg_ready; then state=up; else state=down rc=1; fi
  pid=$(pg_pid)
  _status_line postgres "$state" "${pid:--}" "127.0.0.1:$PG_PORT"
  if redis_running && redis_ready; then state=up; else state=down rc=1; fi
  pid=$(read_pid "$REDIS_PID")
  _status_line redis "$state" "${pid:--}" "127.0.0.1:$REDIS_PORT"
  if pdns_running && pdns_ready; then state=up; else state=down rc=1; fi
  pid=$(read_pid "$PDNS_PID")
  _status_line pdns "$state" "${pid:--}" "dns 127.0.0.1:$PDNS_DNS_PORT api 127.0.0.1:$PDNS_API_PORT"
  if sshd_running && sshd_ready </dev/null; then state=up; else state=down rc=1; fi
  pid=$(read_pid "$SSHD_PID")
  _status_line sshd "$state" "${pid:--}" "127.0.0.1:$SSH_PORT_"
  if dovecot_running && imap_banner; then state=up; else state=down rc=1; fi
  pid=$(read_pid "$DOVECOT_PID")
  _status_line dovecot "$state" "${pid:--}" "imap 127.0.0.1:$IMAP_PORT"
  if pidfile_alive "$MPANEL_PID" mpanel; then
    pid=$(read_pid "$MPANEL_PID")
    if mpanel_ready; then state=up; else state=starting; fi
    _status_line mpanel "$state" "$pid" "http://$MPANEL_HOST:$MPANEL_PORT"
  else
    _status_line mpanel "-" "-" "(not started; scripts/up.sh)"
  fi
  return "$rc"
}

mpanel_ready() { curl -fsS -o /dev/null --max-time 2 "http://$MPANEL_HOST:$MPANEL_PORT/api/ready"; }
