#!/usr/bin/env bash
# Applies one CONFIG SET to every node of a Valkey Cluster, so that all nodes keep the same
# valkeyauth configuration (each node has its own; nothing replicates it).
#
#   scripts/cluster-config-set.sh [--rewrite] HOST:PORT NAME VALUE
#
# HOST:PORT is any node; the others are read from its CLUSTER NODES. With --rewrite each node
# also runs CONFIG REWRITE, so that the change survives a restart. Every node's answer is
# printed; the exit status is 0 only when every node took the change.
#
# valkey-cli: $VALKEY_CLI, or the one on PATH. To log in, set VALKEY_CLI_USER (an admin ACL
# user) and the password in REDISCLI_AUTH or VALKEYCLI_AUTH (valkey-cli reads them itself,
# so the password never shows in the process list).
set -euo pipefail

usage() { echo "usage: $0 [--rewrite] HOST:PORT NAME VALUE" >&2; exit 2; }

rewrite=""
if [ "${1:-}" = "--rewrite" ]; then rewrite=1; shift; fi
[ "$#" -eq 3 ] || usage
seed="$1" name="$2" value="$3"
[[ "$seed" == *:* ]] || usage

cli=("${VALKEY_CLI:-valkey-cli}" --no-auth-warning)
if [ -n "${VALKEY_CLI_USER:-}" ]; then cli+=(--user "$VALKEY_CLI_USER"); fi

# valkey-cli HOST PORT ARGS...: prints the reply, exits 0 even for an error reply.
call() { local host="$1" port="$2"; shift 2; "${cli[@]}" -h "$host" -p "$port" "$@"; }

nodes="$(call "${seed%:*}" "${seed##*:}" CLUSTER NODES)"
# A line: <id> <ip:port@cport[,hostname]> <flags> ...; a node with no address cannot be
# reached and counts as a failure.
addresses="$(awk '{ split($2, a, "@"); print a[1], $3 }' <<<"$nodes")"
case "$addresses" in
    *:*) ;;
    *) echo "$seed: CLUSTER NODES failed: $nodes" >&2; exit 1 ;;
esac

failed=0
while read -r addr flags; do
    host="${addr%:*}" port="${addr##*:}"
    if [[ "$flags" == *noaddr* || -z "$host" ]]; then
        echo "$addr ($flags): no address, not changed"; failed=1; continue
    fi
    reply="$(call "$host" "$port" CONFIG SET "$name" "$value" 2>&1 || true)"
    if [ "$reply" = "OK" ] && [ -n "$rewrite" ]; then
        reply="$(call "$host" "$port" CONFIG REWRITE 2>&1 || true)"
    fi
    echo "$addr: $reply"
    [ "$reply" = "OK" ] || failed=1
done <<<"$addresses"
exit "$failed"
