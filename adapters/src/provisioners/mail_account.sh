# mpanel mailbox script (docs/adr/0012-mail-first-credentials.md).
#
# Sent by adapters/src/provisioners/mail.rs over SSH and run as root on the mail host as
#   sh -c SCRIPT mpanel-script ACTION ARGS...
#
#   ensure PASSWD_FILE MAIL_ROOT DOMAIN LOCALPART VMAIL_UID VMAIL_GID
#       Converges the mailbox LOCALPART@DOMAIN: the Maildir MAIL_ROOT/DOMAIN/LOCALPART/
#       {cur,new,tmp} owned by VMAIL_UID:VMAIL_GID, and exactly one passwd-file line for the
#       address. A missing line is added with the SHA512-CRYPT hash of the password read from
#       standard input (one line); an existing line is kept as it is (the customer may have
#       changed the password). Safe to re-run after a success or a crash at any point.
#       Last line: OK <address> <maildir>
#   set-password PASSWD_FILE DOMAIN LOCALPART
#       Replaces the hash in the address's line with the hash of the password read from
#       standard input. The mailbox must exist (exit 67 otherwise). Last line: PASSWORD_SET <address>
#   suspend PASSWD_FILE DOMAIN LOCALPART
#       Refuses the address's logins and keeps its password hash and Maildir: adds Dovecot's
#       `nologin` and `reason=Mailbox-suspended` extra fields to its line (padding the empty
#       uid..shell fields; other extra fields are kept), then asks Dovecot to forget cached
#       credentials and close the address's sessions. The mailbox must exist (exit 67).
#       Safe to re-run. Last line: SUSPENDED <address>
#   unsuspend PASSWD_FILE DOMAIN LOCALPART
#       Removes exactly those two fields and the empty fields that padded them, so the line
#       returns to its form before the suspension. The mailbox must exist (exit 67).
#       Safe to re-run. Last line: UNSUSPENDED <address>
#   status PASSWD_FILE MAIL_ROOT DOMAIN LOCALPART
#       Last line: STATUS <address> <line: 0|1> <maildir: 0|1>
#   remove PASSWD_FILE MAIL_ROOT DOMAIN LOCALPART ARCHIVE_DIR
#       Deletes the address's line (logins stop), then moves the Maildir to
#       ARCHIVE_DIR/LOCALPART@DOMAIN.<UTC time>. Safe to re-run.
#       Last line: REMOVED <address> <archived_path or ->
#
# The first line is always MPANEL_MAIL_SCRIPT_VERSION=<n>. Exit statuses (sysexits):
#   64 arguments invalid, 65 no usable password on stdin, 67 no such mailbox,
#   69 no hashing tool (openssl or doveadm), 78 the mail host is not set up as configured
#   (passwd-file or mail root missing); these need an operator, retrying cannot help.
#   75 the passwd-file lock was not free in time; any other status: the host failed.
#
# The passwd-file is only ever replaced whole: the new content is written to a temp file in the
# same directory, given the old file's owner, group and mode (Dovecot must keep reading it,
# typically 0640 root:dovecot), and renamed over it, all under a lock, so a reader never sees
# half a file and two concurrent runs never lose each other's lines. The password never appears
# in an argument, a file or an output of this script: it goes from standard input straight into
# the hashing tool's standard input.
#
# Every argument was validated by the caller; it is checked again here because this script
# writes as root. Every expansion is quoted.

set -eu
umask 077
LC_ALL=C
export LC_ALL

MPANEL_MAIL_SCRIPT_VERSION=3
printf 'MPANEL_MAIL_SCRIPT_VERSION=%s\n' "$MPANEL_MAIL_SCRIPT_VERSION"

# What a failed or interrupted run leaves is removed on the way out: its temp file (the flock
# lock goes with the process).
tmp=
cleanup() {
  [ -z "$tmp" ] || rm -f "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# How long to wait for another run holding the passwd-file lock (seconds).
LOCK_WAIT=30

die_usage() {
  printf 'mpanel-mail: %s\n' "$*" >&2
  exit 64
}

die_config() {
  printf 'mpanel-mail: %s\n' "$*" >&2
  exit 78
}

die() {
  printf 'mpanel-mail: %s\n' "$*" >&2
  exit 1
}

# check_path NAME VALUE: absolute, not /, only [A-Za-z0-9._/-], no . or .. components.
check_path() {
  case "$2" in
    '') die_usage "$1 is empty" ;;
    /*) ;;
    *) die_usage "$1 must be an absolute path" ;;
  esac
  case "$2" in
    *[!A-Za-z0-9._/-]*) die_usage "$1 may contain only letters, digits, '.', '_', '-' and '/'" ;;
  esac
  case "/$2/" in
    */../* | */./*) die_usage "$1 must not contain . or .. components" ;;
  esac
  case "$2" in
    *[!/]*) ;;
    *) die_usage "$1 must not be the root directory" ;;
  esac
}

# check_domain VALUE: lowercase LDH labels, at least two, no empty label, at most 253 chars.
check_domain() {
  case "$1" in
    '' | *[!a-z0-9.-]* | .* | *. | -* | *- | *..* | *.-* | *-.*)
      die_usage "domain is not a lowercase domain name"
      ;;
    *.*) ;;
    *) die_usage "domain must have at least two labels" ;;
  esac
  [ "${#1}" -le 253 ] || die_usage "domain is longer than 253 characters"
}

# check_localpart VALUE: [a-z0-9] at both ends, [a-z0-9._-] inside, no "..", at most 64 chars.
check_localpart() {
  case "$1" in
    '' | *[!a-z0-9._-]* | [._-]* | *[._-] | *..*)
      die_usage "local part must be lowercase letters, digits, '.', '_' or '-'"
      ;;
  esac
  [ "${#1}" -le 64 ] || die_usage "local part is longer than 64 characters"
}

# check_id NAME VALUE: a numeric uid/gid other than 0.
check_id() {
  case "$2" in
    '' | *[!0-9]* | 0) die_usage "$1 must be a number other than 0" ;;
  esac
  [ "${#2}" -le 10 ] || die_usage "$1 is too large"
}

# check_passwd_file FILE: the passwd-file exists, is a regular file, and its directory is
# writable. It is never created here: a missing file means a wrong MAIL_PASSWD_FILE or a mail
# host that lost every mailbox, and an empty new file would hide either.
check_passwd_file() {
  passwd_dir="${1%/*}"
  [ -d "$passwd_dir" ] || die_config "passwd-file directory $passwd_dir does not exist"
  if [ ! -f "$1" ] || [ -L "$1" ]; then
    die_config "passwd-file $1 does not exist or is not a regular file"
  fi
  if [ ! -w "$passwd_dir" ] || [ ! -w "$1" ]; then
    die_config "passwd-file $1 or its directory is not writable"
  fi
}

# check_mail_root DIR: the mail root exists (it is set up with Dovecot's owner; creating it here
# would guess the owner and hide a wrong MAIL_ROOT).
check_mail_root() {
  [ -d "$1" ] || die_config "mail root $1 does not exist or is not a directory"
}

# Lock on PASSWD_FILE.lock with flock(1): the kernel releases it when the holder dies, so a
# crashed run never blocks the next one. flock is required (util-linux, on every Debian host): a
# pid-file style fallback cannot break a stale lock without racing a fresh holder.
lock_passwd_file() {
  lock="$1.lock"
  command -v flock >/dev/null 2>&1 || die_config "flock(1) is missing on the mail host (install util-linux)"
  exec 9>>"$lock"
  flock -w "$LOCK_WAIT" 9 || { printf 'mpanel-mail: %s is busy\n' "$lock" >&2; exit 75; }
}

# read_hash: reads one password line from standard input and prints its {SHA512-CRYPT} hash.
# The password only ever travels through pipes into the hashing tool.
read_hash() {
  IFS= read -r password || [ -n "${password:-}" ] || {
    printf 'mpanel-mail: no password on standard input\n' >&2
    exit 65
  }
  case "$password" in
    ????????*) ;;
    *) printf 'mpanel-mail: the password is too short\n' >&2; exit 65 ;;
  esac
  if command -v openssl >/dev/null 2>&1; then
    hash="$(printf '%s\n' "$password" | openssl passwd -6 -stdin)" || die "openssl passwd failed"
  elif command -v doveadm >/dev/null 2>&1; then
    # Without -p, doveadm pw asks twice; with no terminal it reads both from standard input.
    hash="$(printf '%s\n%s\n' "$password" "$password" | doveadm pw -s SHA512-CRYPT 2>/dev/null)" ||
      die "doveadm pw failed"
  else
    printf 'mpanel-mail: neither openssl nor doveadm is installed\n' >&2
    exit 69
  fi
  password=
  hash="${hash#\{SHA512-CRYPT\}}"
  case "$hash" in
    \$6\$*) ;;
    *) die "the hashing tool did not print a SHA512-CRYPT hash" ;;
  esac
  case "$hash" in
    *[!A-Za-z0-9./\$]*) die "the hashing tool printed an unexpected hash" ;;
  esac
  printf '{SHA512-CRYPT}%s\n' "$hash"
}

# count_lines FILE ADDRESS: how many lines of the passwd-file are for ADDRESS.
count_lines() {
  awk -F: -v u="$2" '$1 == u { n++ } END { print n + 0 }' "$1"
}

# start_rewrite FILE: sets $tmp to a fresh temp file beside FILE for its new content. Run under
# the lock, where no other run is writing one: any temp file left is from a crashed run.
start_rewrite() {
  rm -f "${1%/*}/.${1##*/}.tmp."*
  tmp="${1%/*}/.${1##*/}.tmp.$$"
  : >"$tmp"
}

# finish_rewrite FILE: gives $tmp FILE's owner, group and mode, and renames it over FILE (atomic:
# Dovecot reads either the old or the new file, never half of one). Dovecot notices a change by
# mtime (whole seconds) and size only; a new password hash has the old one's length, so a rewrite
# in the same second as the last one would go unseen. The new file's mtime is therefore always
# later than the old file's.
finish_rewrite() {
  chown --reference="$1" "$tmp" 2>/dev/null || chown "$(stat -c '%u:%g' "$1")" "$tmp"
  chmod --reference="$1" "$tmp" 2>/dev/null || chmod "$(stat -c '%a' "$1")" "$tmp"
  old_mtime="$(stat -c %Y "$1" 2>/dev/null || echo 0)"
  [ "$(stat -c %Y "$tmp")" -gt "$old_mtime" ] || touch -d "@$((old_mtime + 1))" "$tmp"
  sync "$tmp" 2>/dev/null || :
  mv -f "$tmp" "$1"
  tmp=
}

# ensure_dir DIR UID GID: DIR exists, is not a symlink, and is DIR 0700 UID:GID.
ensure_dir() {
  [ ! -L "$1" ] || die "$1 is a symbolic link; refusing to follow it"
  [ -d "$1" ] || mkdir "$1" 2>/dev/null || [ -d "$1" ] || die "cannot create $1"
  chown "$2:$3" "$1"
  chmod 0700 "$1"
}

ensure() {
  [ "$#" -eq 6 ] || die_usage "ensure takes 6 arguments, got $#"
  passwd="$1"
  root="$2"
  domain="$3"
  localpart="$4"
  uid="$5"
  gid="$6"
  check_path passwd_file "$passwd"
  check_path mail_root "$root"
  check_domain "$domain"
  check_localpart "$localpart"
  check_id vmail_uid "$uid"
  check_id vmail_gid "$gid"
  root="${root%/}"
  address="$localpart@$domain"
  maildir="$root/$domain/$localpart"

  # Preconditions first, so a misconfigured host fails before anything is written.
  check_passwd_file "$passwd"
  check_mail_root "$root"

  # The Maildir first: once the line exists a login may come, and it should find its mail
  # directory. Modes and owners are repaired on every run; mail files inside are Dovecot's.
  ensure_dir "$root/$domain" "$uid" "$gid"
  ensure_dir "$maildir" "$uid" "$gid"
  for sub in cur new tmp; do
    ensure_dir "$maildir/$sub" "$uid" "$gid"
  done

  lock_passwd_file "$passwd"
  count="$(count_lines "$passwd" "$address")"
  if [ "$count" -eq 0 ]; then
    line="$address:$(read_hash)"
    start_rewrite "$passwd"
    # awk also ends a last line that lacks its newline, so the new line stays a line of its own.
    awk '{ print }' "$passwd" >"$tmp"
    printf '%s\n' "$line" >>"$tmp"
    [ "$(count_lines "$tmp" "$address")" -eq 1 ] || die "the new passwd-file is not as expected"
    finish_rewrite "$passwd"
  elif [ "$count" -gt 1 ]; then
    # Drift (a hand edit): keep the first line, which is the one Dovecot uses.
    start_rewrite "$passwd"
    awk -F: -v u="$address" '$1 == u { if (seen) next; seen = 1 } { print }' "$passwd" >"$tmp"
    finish_rewrite "$passwd"
  else
    # Kept as it is (the customer may have changed the password); only temp files of a crashed
    # run go.
    rm -f "${passwd%/*}/.${passwd##*/}.tmp."*
  fi

  printf 'OK %s %s\n' "$address" "$maildir"
}

set_password() {
  [ "$#" -eq 3 ] || die_usage "set-password takes 3 arguments, got $#"
  passwd="$1"
  domain="$2"
  localpart="$3"
  check_path passwd_file "$passwd"
  check_domain "$domain"
  check_localpart "$localpart"
  address="$localpart@$domain"
  check_passwd_file "$passwd"

  lock_passwd_file "$passwd"
  if [ "$(count_lines "$passwd" "$address")" -eq 0 ]; then
    printf 'mpanel-mail: there is no mailbox %s\n' "$address" >&2
    exit 67
  fi
  hash="$(read_hash)"
  start_rewrite "$passwd"
  # Field 2 of the (first) line is the password; other fields are kept; duplicates go.
  awk -F: -v OFS=: -v u="$address" -v h="$hash" \
    '$1 == u { if (seen) next; seen = 1; $2 = h } { print }' "$passwd" >"$tmp"
  finish_rewrite "$passwd"
  printf 'PASSWORD_SET %s\n' "$address"
}

# The extra field that tells a suspended mailbox's user why the login failed. Dovecot splits
# extra fields at spaces and has no escape for them, hence the hyphen.
SUSPEND_REASON='reason=Mailbox-suspended'

# login_fields MODE ADDRESS FILE: FILE with the address's (first) line given (MODE suspend) or
# rid of (MODE unsuspend) the `nologin` and $SUSPEND_REASON extra fields; later duplicates of
# the line go, every other line is printed as it is.
# passwd-file lines are user:password:uid:gid:gecos:home:shell:extra_fields, and Dovecot joins
# whatever follows the seventh colon back into the extra fields (values may contain colons,
# e.g. userdb_mail=maildir:/path), so fields 8.. are one space-separated list here too.
login_fields() {
  awk -v mode="$1" -v u="$2" -v reason="$SUSPEND_REASON" '
    BEGIN { FS = ":" }
    $1 != u { print; next }
    seen { next }
    {
      seen = 1
      n = split($0, f, ":")
      extra = ""
      for (i = 8; i <= n; i++) extra = extra (i > 8 ? ":" : "") f[i]
      m = split(extra, t, " ")
      kept = ""
      for (i = 1; i <= m; i++)
        if (t[i] != "nologin" && t[i] != reason) kept = kept (kept == "" ? "" : " ") t[i]
      if (mode == "suspend") kept = kept (kept == "" ? "" : " ") "nologin " reason
      for (i = 1; i <= 7; i++) g[i] = (i <= n ? f[i] : "")
      g[8] = kept
      # Trailing empty fields are padding (they mean nothing to Dovecot): drop them, keeping
      # at least user:password.
      k = 8
      while (k > 2 && g[k] == "") k--
      line = g[1]
      for (i = 2; i <= k; i++) line = line ":" g[i]
      print line
    }
  ' "$3"
}

# notify_dovecot ADDRESS [kick]: asks the local Dovecot, when doveadm can reach it, to drop the
# address's cached credentials (an auth_cache would otherwise answer from the old line until its
# TTL) and, with `kick`, to close the address's open sessions (a suspended user keeps no IMAP
# session). Best effort and bounded: without a reachable Dovecot, or without auth caching, the
# passwd-file change alone takes effect at the next login, within a second.
notify_dovecot() {
  command -v doveadm >/dev/null 2>&1 || return 0
  bounded=
  command -v timeout >/dev/null 2>&1 && bounded=1
  for what in "auth cache flush" ${2:+kick}; do
    # shellcheck disable=SC2086 # $what is two or three fixed words
    if [ -n "$bounded" ]; then
      timeout 5 doveadm $what "$1" </dev/null >/dev/null 2>&1 || :
    else
      doveadm $what "$1" </dev/null >/dev/null 2>&1 || :
    fi
  done
}

# change_login MODE PASSWD_FILE DOMAIN LOCALPART: suspend or unsuspend, see the header.
change_login() {
  [ "$#" -eq 4 ] || die_usage "$1 takes 3 arguments, got $(($# - 1))"
  mode="$1"
  passwd="$2"
  domain="$3"
  localpart="$4"
  check_path passwd_file "$passwd"
  check_domain "$domain"
  check_localpart "$localpart"
  address="$localpart@$domain"
  check_passwd_file "$passwd"

  lock_passwd_file "$passwd"
  if [ "$(count_lines "$passwd" "$address")" -eq 0 ]; then
    printf 'mpanel-mail: there is no mailbox %s\n' "$address" >&2
    exit 67
  fi
  start_rewrite "$passwd"
  login_fields "$mode" "$address" "$passwd" >"$tmp"
  [ "$(count_lines "$tmp" "$address")" -eq 1 ] || die "the new passwd-file is not as expected"
  if cmp -s "$tmp" "$passwd"; then
    # Already in the desired state: the file (and its mtime) stay as they are.
    rm -f "$tmp"
    tmp=
  else
    finish_rewrite "$passwd"
  fi
  if [ "$mode" = suspend ]; then
    notify_dovecot "$address" kick
    printf 'SUSPENDED %s\n' "$address"
  else
    notify_dovecot "$address"
    printf 'UNSUSPENDED %s\n' "$address"
  fi
}

status() {
  [ "$#" -eq 4 ] || die_usage "status takes 4 arguments, got $#"
  passwd="$1"
  root="$2"
  domain="$3"
  localpart="$4"
  check_path passwd_file "$passwd"
  check_path mail_root "$root"
  check_domain "$domain"
  check_localpart "$localpart"
  root="${root%/}"
  address="$localpart@$domain"
  check_passwd_file "$passwd"
  # No lock: the file is only ever replaced by rename, so a read sees a whole version.
  has_line=0
  [ "$(count_lines "$passwd" "$address")" -eq 0 ] || has_line=1
  has_maildir=0
  [ ! -d "$root/$domain/$localpart" ] || has_maildir=1
  printf 'STATUS %s %s %s\n' "$address" "$has_line" "$has_maildir"
}

remove() {
  [ "$#" -eq 5 ] || die_usage "remove takes 5 arguments, got $#"
  passwd="$1"
  root="$2"
  domain="$3"
  localpart="$4"
  archive="$5"
  check_path passwd_file "$passwd"
  check_path mail_root "$root"
  check_domain "$domain"
  check_localpart "$localpart"
  check_path archive_dir "$archive"
  root="${root%/}"
  archive="${archive%/}"
  address="$localpart@$domain"
  maildir="$root/$domain/$localpart"
  case "$archive/" in
    "$root/$domain"/*) die_usage "archive_dir must not be inside the mail domain's directory" ;;
  esac
  check_passwd_file "$passwd"

  # The line goes first, so logins stop before the mail moves.
  lock_passwd_file "$passwd"
  if [ "$(count_lines "$passwd" "$address")" -gt 0 ]; then
    start_rewrite "$passwd"
    awk -F: -v u="$address" '$1 != u { print }' "$passwd" >"$tmp"
    finish_rewrite "$passwd"
  fi

  archived=-
  if [ -e "$maildir" ] || [ -L "$maildir" ]; then
    mkdir -p "$archive"
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    target="$archive/$address.$stamp"
    n=0
    while [ -e "$target" ] || [ -L "$target" ]; do
      n=$((n + 1))
      target="$archive/$address.$stamp.$n"
    done
    mv "$maildir" "$target"
    archived="$target"
  fi
  # The domain's directory goes when its last mailbox has gone (rmdir refuses otherwise).
  rmdir "$root/$domain" 2>/dev/null || :
  printf 'REMOVED %s %s\n' "$address" "$archived"
}

[ "$#" -ge 1 ] || die_usage "missing action (ensure, set-password, suspend, unsuspend, status or remove)"
action="$1"
shift
case "$action" in
  ensure) ensure "$@" ;;
  set-password) set_password "$@" ;;
  suspend) change_login suspend "$@" ;;
  unsuspend) change_login unsuspend "$@" ;;
  status) status "$@" ;;
  remove) remove "$@" ;;
  *) die_usage "unknown action (want ensure, set-password, suspend, unsuspend, status or remove)" ;;
esac
