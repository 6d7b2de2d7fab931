#!/usr/bin/env bash
# Starts a sample directory (alice, bob, carol, with groups) and a Valkey that logs them in
# through ValkeyAUTH, on loopback ports, and shows one successful and one failed AUTH.
#
#   scripts/demo.sh           start, show, and leave both servers running (with instructions)
#   scripts/demo.sh --check   start, check the logins, stop everything; exit 0 when all is well
#   scripts/demo.sh --stop    stop the servers a previous run left running
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --check uses its own folder, so that it never stops a demo left running.
STATE="$ROOT/.tmp/demo"
[ "${1:-}" = "--check" ] && STATE="$ROOT/.tmp/demo-check"
VALKEY_SERVER="$ROOT/tools/valkey-9.1/valkey-server"
VALKEY_CLI="$ROOT/tools/valkey-8.1/valkey-cli"
MODULE="$ROOT/target/release/libvalkeyauth.so"
SUFFIX="dc=example,dc=test"

say() { printf '[demo] %s\n' "$*" >&2; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

stop_servers() {
    local pidfile pid
    for pidfile in "$STATE/valkey.pid" "$STATE/slapd.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    local what=$1; shift
    for _ in $(seq 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what did not start; see $STATE"
}

mode=${1:-}
case "$mode" in
    "" | --check) ;;
    --stop) stop_servers; say "stopped"; exit 0 ;;
    *) die "unknown option '$mode' (use --check or --stop)" ;;
esac

bash "$ROOT/scripts/install-deps.sh"
say "building the module"
(cd "$ROOT" && cargo build --release --quiet)

stop_servers
rm -rf "$STATE"
mkdir -p "$STATE/ldap-data"
LDAP_PORT=$(free_port)
VALKEY_PORT=$(free_port)

say "starting slapd on 127.0.0.1:$LDAP_PORT"
cat >"$STATE/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile $STATE/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "$SUFFIX"
rootdn "cn=admin,$SUFFIX"
rootpw admin-pw
directory $STATE/ldap-data
access to attrs=userPassword by anonymous auth by * none
access to * by * read
EOF
slapadd -q -f "$STATE/slapd.conf" -l "$ROOT/scripts/demo/directory.ldif"
/usr/sbin/slapd -f "$STATE/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/"
wait_for slapd ldapsearch -x -H "ldap://127.0.0.1:$LDAP_PORT" -b "" -s base

say "starting Valkey on 127.0.0.1:$VALKEY_PORT with ValkeyAUTH"
cat >"$STATE/valkey.conf" <<EOF
bind 127.0.0.1
port $VALKEY_PORT
dir $STATE
pidfile $STATE/valkey.pid
logfile $STATE/valkey.log
daemonize yes
save ""
loadmodule $MODULE
valkeyauth.servers "ldap://127.0.0.1:$LDAP_PORT"
valkeyauth.bind_dn_suffix ",ou=people,$SUFFIX"
valkeyauth.legacy_auth_separator ":"
EOF
"$VALKEY_SERVER" "$STATE/valkey.conf"
cli() { "$VALKEY_CLI" -p "$VALKEY_PORT" "$@"; }
wait_for valkey cli PING

# The directory decides who may log in; Valkey ACL users decide what they may do.
cli ACL SETUSER alice on '+@all' '~*' '&*' >/dev/null
cli ACL SETUSER bob on '+@read' '~*' >/dev/null
cli ACL SETUSER carol on '+@read' '+acl|whoami' '~*' >/dev/null

# Clients older than ACLs send AUTH <password>; Valkey hands that to modules only when the
# default user has a password.
cli ACL SETUSER default on '>demo-default-pw' >/dev/null

good=$(cli --no-auth-warning --user alice --pass alice-pw ACL WHOAMI 2>&1)
bad=$(cli AUTH alice not-her-password 2>&1 || true)
legacy=$(cli --no-auth-warning -a carol:carol-pw ACL WHOAMI 2>&1)
echo
echo "  AUTH alice alice-pw         -> ACL WHOAMI says: $good"
echo "  AUTH alice not-her-password -> $bad"
echo "  AUTH carol:carol-pw (legacy one-argument AUTH) -> ACL WHOAMI says: $legacy"
echo

ok=1
[ "$good" = "alice" ] || ok=0
[ "$legacy" = "carol" ] || ok=0
case "$bad" in *WRONGPASS*) ;; *) ok=0 ;; esac

if [ "$mode" = "--check" ]; then
    stop_servers
    if [ "$ok" = 1 ]; then say "check passed"; exit 0; fi
    say "check FAILED (see $STATE)"; exit 1
fi
[ "$ok" = 1 ] || die "the demo logins did not behave as expected (see $STATE/valkey.log)"

cat <<EOF
Both servers are running:
  directory  ldap://127.0.0.1:$LDAP_PORT   users alice/alice-pw, bob/bob-pw, carol/carol-pw
  (Valkey's default user has the password demo-default-pw)
  Valkey     127.0.0.1:$VALKEY_PORT         log: $STATE/valkey.log

Try:
  $VALKEY_CLI -p $VALKEY_PORT
  127.0.0.1:$VALKEY_PORT> AUTH carol:carol-pw      (a legacy client's one-argument AUTH)
  127.0.0.1:$VALKEY_PORT> AUTH alice alice-pw
  127.0.0.1:$VALKEY_PORT> INFO valkeyauth
  127.0.0.1:$VALKEY_PORT> AUTH bob bob-pw
  127.0.0.1:$VALKEY_PORT> GET greeting          (bob may read, not write)

Stop them with:  scripts/demo.sh --stop
EOF
