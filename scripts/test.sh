#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh [extra args for the integration run]
# Installs what is missing, builds and installs the extension (debug), then
# runs the unit tests, the integration tests (real PostgreSQL clusters) and the
# upgrade test (scripts/upgrade-test.sh: the previous release upgraded in place).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

bash scripts/setup.sh
bash scripts/source-versions.sh
bash scripts/monitoring-tools.sh

echo "==> unit tests"
cargo test --lib

echo "==> integration tests"
cargo test --test integration -- --test-threads 4 "$@"

echo "==> upgrade test (the previous release upgraded in place, on a private copy of PostgreSQL)"
bash scripts/upgrade-test.sh
