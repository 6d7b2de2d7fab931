#!/usr/bin/env bash
# Installs what is missing, builds the module, runs every test.
#   bash scripts/test.sh [extra cargo test args...]   e.g.  bash scripts/test.sh --test harness
# The integration tests load target/release/libvalkeyauth.so, so the release build comes first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
report() {
    local rc=$? end
    end=$(date +%s)
    printf '[test.sh] total time: %ss (exit %s)\n' "$((end - start))" "$rc" >&2
}
trap report EXIT

bash scripts/install-deps.sh
echo "[test.sh] cargo build --release" >&2
cargo build --release
# --no-fail-fast: run every test binary, so one failure does not hide the others.
echo "[test.sh] cargo test --release --no-fail-fast $*" >&2
cargo test --release --no-fail-fast "$@"
# The README's demo must keep working too.
echo "[test.sh] scripts/demo.sh --check" >&2
bash scripts/demo.sh --check
