# mpanel hosting account script (docs/adr/0011-hosting-account-layout.md).
#
# Sent by adapters/src/provisioners/hosting.rs over SSH and run as
#   sh -c SCRIPT mpanel-script ACTION ARGS...
#
#   ensure ROOT_DIR SYSTEM_USER DOMAIN WEB_IPV4 CREATE_SYSTEM_USER(0|1)
#       Converges the account: ROOT_DIR/DOMAIN/{home,public_html}, a placeholder
#       public_html/index.html only when there is none, ROOT_DIR/vhosts/DOMAIN.conf, and the
#       system user when enabled. A suspended account (its vhost carries the suspended marker)
#       stays suspended: provisioning repairs, it does not put a site back in service.
#       Safe to re-run after a success or a crash at any point.
#       Last line: OK <web_root> <vhost_path>
#   suspend ROOT_DIR DOMAIN WEB_IPV4
#       Takes the site out of service and keeps every file: writes the placeholder
#       ROOT_DIR/DOMAIN/suspended/index.html and points the vhost's root at that directory
#       (the vhost is marked "# mpanel: suspended"). public_html is never touched. Converges
#       from any state (parts missing, a crashed run's temp files).
#       Last line: SUSPENDED <suspended_dir> <vhost_path>
#   unsuspend ROOT_DIR SYSTEM_USER DOMAIN WEB_IPV4 CREATE_SYSTEM_USER(0|1)
#       Converges as ensure does, but with the normal vhost (root public_html), then removes the
#       suspended placeholder directory. Safe to re-run.
#       Last line: UNSUSPENDED <web_root> <vhost_path>
#   remove ROOT_DIR DOMAIN ARCHIVE_DIR
#       Removes the vhost, then moves ROOT_DIR/DOMAIN to ARCHIVE_DIR/DOMAIN.<UTC time>.
#       Safe to re-run. Last line: REMOVED <archived_path or ->
#
# The first line is always MPANEL_HOSTING_SCRIPT_VERSION=<n>. Exit 64: the arguments are
# invalid (retrying cannot help). Any other non-zero status: the host failed.
#
# Every argument was validated by the caller; it is checked again here because this script
# writes as root. Every expansion is quoted.

set -eu
umask 022
LC_ALL=C
export LC_ALL

MPANEL_HOSTING_SCRIPT_VERSION=2
printf 'MPANEL_HOSTING_SCRIPT_VERSION=%s\n' "$MPANEL_HOSTING_SCRIPT_VERSION"

die_usage() {
  printf 'mpanel-hosting: %s\n' "$*" >&2
  exit 64
}

die() {
  printf 'mpanel-hosting: %s\n' "$*" >&2
  exit 1
}

# check_dir NAME VALUE: absolute, not /, only [A-Za-z0-9._/-], no . or .. components.
check_dir() {
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

# check_user VALUE: [a-z][a-z0-9]*, at most 32 chars (what useradd accepts everywhere).
check_user() {
  case "$1" in
    '' | [!a-z]* | *[!a-z0-9]*) die_usage "system user must match [a-z][a-z0-9]*" ;;
  esac
  [ "${#1}" -le 32 ] || die_usage "system user is longer than 32 characters"
}

# check_ipv4 VALUE: dotted quad, each part 0-255.
check_ipv4() {
  case "$1" in
    '' | *[!0-9.]* | .* | *. | *..*) die_usage "web address is not an IPv4 address" ;;
  esac
  rest="$1."
  parts=0
  while [ -n "$rest" ]; do
    part="${rest%%.*}"
    rest="${rest#*.}"
    parts=$((parts + 1))
    if [ "${#part}" -gt 3 ] || [ "$part" -gt 255 ]; then
      die_usage "web address is not an IPv4 address"
    fi
  done
  [ "$parts" -eq 4 ] || die_usage "web address is not an IPv4 address"
}

# The vhost line that marks a suspended account; ensure keeps such an account suspended.
SUSPENDED_MARKER='# mpanel: suspended'

# render_vhost DOMAIN IPV4 DOC_ROOT [suspended]: the desired vhost file (nginx server block).
render_vhost() {
  printf '# Managed by mpanel (hosting script v%s); rewritten on every provisioning run.\n' \
    "$MPANEL_HOSTING_SCRIPT_VERSION"
  if [ "${4:-}" = suspended ]; then
    printf '%s\n' "$SUSPENDED_MARKER"
  fi
  printf 'server {\n'
  printf '    listen %s:80;\n' "$2"
  printf '    server_name %s www.%s;\n' "$1" "$1"
  printf '    root %s;\n' "$3"
  printf '    index index.html index.htm;\n'
  printf '    location / {\n'
  # shellcheck disable=SC2016 # nginx variables, not shell ones
  printf '        try_files $uri $uri/ =404;\n'
  printf '    }\n'
  printf '}\n'
}

# render_placeholder DOMAIN: the first index.html of a new account.
render_placeholder() {
  printf '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>%s</title></head>\n' "$1"
  printf '<body><h1>%s</h1><p>This site is hosted by mpanel and has no content yet.</p></body>\n</html>\n' "$1"
}

# render_suspended DOMAIN: the page a suspended site serves instead of its content.
render_suspended() {
  printf '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>%s</title></head>\n' "$1"
  printf '<body><h1>%s</h1><p>This site is suspended.</p></body>\n</html>\n' "$1"
}

# set_paths ROOT DOMAIN: the account's paths (ROOT without a trailing slash).
set_paths() {
  account="$1/$2"
  home="$account/home"
  web_root="$account/public_html"
  suspended_dir="$account/suspended"
  vhost_dir="$1/vhosts"
  vhost="$vhost_dir/$2.conf"
}

# vhost_is_suspended: whether the current vhost carries the suspended marker.
vhost_is_suspended() {
  [ -f "$vhost" ] && grep -qxF "$SUSPENDED_MARKER" "$vhost"
}

# install_vhost DOMAIN IPV4 DOC_ROOT [suspended]: renders to a temp file (removing ones a
# crashed run left), replaces atomically only when the content differs, so an unchanged vhost
# keeps its mtime and a reader never sees half a file.
install_vhost() {
  mkdir -p "$vhost_dir"
  [ ! -d "$vhost" ] || die "$vhost is a directory"
  rm -f "$vhost_dir/.$1.conf.tmp."*
  vhost_tmp="$vhost_dir/.$1.conf.tmp.$$"
  render_vhost "$@" >"$vhost_tmp"
  chmod 0644 "$vhost_tmp"
  if [ -f "$vhost" ] && cmp -s "$vhost_tmp" "$vhost"; then
    rm -f "$vhost_tmp"
  else
    mv -f "$vhost_tmp" "$vhost"
  fi
}

# install_suspended_page DOMAIN: ROOT/DOMAIN/suspended/index.html, ours alone (root-owned,
# nothing of the customer's), so it is replaced whenever it differs; written beside the
# directory and renamed in, so a crash never serves half a page.
install_suspended_page() {
  mkdir -p "$account"
  if [ -L "$suspended_dir" ] || { [ -e "$suspended_dir" ] && [ ! -d "$suspended_dir" ]; }; then
    rm -f "$suspended_dir"
  fi
  mkdir -p "$suspended_dir"
  chmod 0755 "$account" "$suspended_dir"
  page="$suspended_dir/index.html"
  [ ! -d "$page" ] || die "$page is a directory"
  rm -f "$account/.suspended-index.html.tmp."*
  page_tmp="$account/.suspended-index.html.tmp.$$"
  render_suspended "$1" >"$page_tmp"
  chmod 0644 "$page_tmp"
  if [ -f "$page" ] && [ ! -L "$page" ] && cmp -s "$page_tmp" "$page"; then
    rm -f "$page_tmp"
  else
    mv -f "$page_tmp" "$page"
  fi
}

# converge_account ROOT USER DOMAIN IPV4 CREATE_USER: checks the arguments, then the system
# user, home, web root and first placeholder page (not the vhost).
converge_account() {
  root="$1"
  user="$2"
  domain="$3"
  ipv4="$4"
  create_user="$5"
  check_dir root_dir "$root"
  check_user "$user"
  check_domain "$domain"
  check_ipv4 "$ipv4"
  case "$create_user" in
    0 | 1) ;;
    *) die_usage "create_system_user must be 0 or 1" ;;
  esac
  root="${root%/}"
  set_paths "$root" "$domain"
  index="$web_root/index.html"

  if [ "$create_user" = 1 ] && ! id -u "$user" >/dev/null 2>&1; then
    # A concurrent run may have created it in between: only a still-missing user is an error.
    useradd --home-dir "$home" --no-create-home --shell /usr/sbin/nologin --user-group \
      "$user" || id -u "$user" >/dev/null 2>&1 || die "useradd failed"
  fi

  mkdir -p "$home" "$web_root" "$vhost_dir"
  chmod 0755 "$account" "$web_root"
  chmod 0750 "$home"
  if [ "$create_user" = 1 ]; then
    group="$(id -g "$user")"
    chown "$user:$group" "$home" "$web_root"
  fi

  # Placeholder only when there is no index.html at all (customer content is never touched).
  # Written beside the web root, then hard-linked in: link() never replaces an existing file,
  # so a customer upload racing with us wins, and a crash never leaves half a page online.
  if [ ! -e "$index" ] && [ ! -L "$index" ]; then
    rm -f "$account/.index.html.tmp."*
    index_tmp="$account/.index.html.tmp.$$"
    render_placeholder "$domain" >"$index_tmp"
    chmod 0644 "$index_tmp"
    if [ "$create_user" = 1 ]; then
      chown "$user:$group" "$index_tmp"
    fi
    ln "$index_tmp" "$index" 2>/dev/null || :
    rm -f "$index_tmp"
    [ -e "$index" ] || die "could not create $index"
  fi
}

ensure() {
  [ "$#" -eq 5 ] || die_usage "ensure takes 5 arguments, got $#"
  converge_account "$@"
  if vhost_is_suspended; then
    # Repair the suspension too, rather than putting the site back in service by accident.
    install_suspended_page "$domain"
    install_vhost "$domain" "$ipv4" "$suspended_dir" suspended
  else
    install_vhost "$domain" "$ipv4" "$web_root"
  fi
  printf 'OK %s %s\n' "$web_root" "$vhost"
}

suspend_site() {
  [ "$#" -eq 3 ] || die_usage "suspend takes 3 arguments, got $#"
  root="$1"
  domain="$2"
  ipv4="$3"
  check_dir root_dir "$root"
  check_domain "$domain"
  check_ipv4 "$ipv4"
  root="${root%/}"
  set_paths "$root" "$domain"

  # The page first, so the vhost never points at a directory without it.
  install_suspended_page "$domain"
  install_vhost "$domain" "$ipv4" "$suspended_dir" suspended
  printf 'SUSPENDED %s %s\n' "$suspended_dir" "$vhost"
}

unsuspend_site() {
  [ "$#" -eq 5 ] || die_usage "unsuspend takes 5 arguments, got $#"
  converge_account "$@"
  # The vhost first, so it never points at the placeholder directory once that is gone.
  install_vhost "$domain" "$ipv4" "$web_root"
  rm -rf "$suspended_dir" "$account/.suspended-index.html.tmp."*
  printf 'UNSUSPENDED %s %s\n' "$web_root" "$vhost"
}

remove() {
  [ "$#" -eq 3 ] || die_usage "remove takes 3 arguments, got $#"
  root="$1"
  domain="$2"
  archive="$3"
  check_dir root_dir "$root"
  check_domain "$domain"
  check_dir archive_dir "$archive"
  root="${root%/}"
  archive="${archive%/}"

  account="$root/$domain"
  vhost_dir="$root/vhosts"
  case "$archive/" in
    "$account"/*) die_usage "archive_dir must not be inside the account" ;;
  esac

  # The vhost goes first so the site stops being served before its files move.
  rm -f "$vhost_dir/$domain.conf" "$vhost_dir/.$domain.conf.tmp."*

  archived=-
  if [ -e "$account" ] || [ -L "$account" ]; then
    mkdir -p "$archive"
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    target="$archive/$domain.$stamp"
    n=0
    while [ -e "$target" ] || [ -L "$target" ]; do
      n=$((n + 1))
      target="$archive/$domain.$stamp.$n"
    done
    mv "$account" "$target"
    archived="$target"
  fi
  printf 'REMOVED %s\n' "$archived"
}

[ "$#" -ge 1 ] || die_usage "missing action (ensure, suspend, unsuspend or remove)"
action="$1"
shift
case "$action" in
  ensure) ensure "$@" ;;
  suspend) suspend_site "$@" ;;
  unsuspend) unsuspend_site "$@" ;;
  remove) remove "$@" ;;
  *) die_usage "unknown action (want ensure, suspend, unsuspend or remove)" ;;
esac
