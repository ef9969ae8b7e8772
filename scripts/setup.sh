#!/usr/bin/env bash
# Installs everything livesync needs to build and test on Debian 12, then
# builds and installs the extension into the system PostgreSQL 15.
# Idempotent: steps whose result is already there are skipped.
#
#   bash scripts/setup.sh            # debug build
#   bash scripts/setup.sh --release  # release build
#
# Works as root and as a normal user (then apt and the install use sudo).
# Environment: PG_CONFIG (path of PostgreSQL 15's pg_config), PGRX_HOME.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PGRX_VERSION=0.18.1
PG_MAJOR=15
APT_PACKAGES=(
  "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}"
  libclang-dev clang pkg-config libssl-dev openssl python3 sudo
)

release=0
for arg in "$@"; do
  case "$arg" in
    --release) release=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
else
  as_root() { sudo "$@"; }
fi

# --- 1. Debian packages ------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "setup.sh: missing packages (${missing[*]}) and no sudo to install them; run as root" >&2
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# --- 2. pg_config of PostgreSQL 15 ----------------------------------------------
if [ -z "${PG_CONFIG:-}" ]; then
  if [ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config" ]; then
    PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
  else
    PG_CONFIG="$(command -v pg_config || true)"
  fi
fi
if [ -z "$PG_CONFIG" ] || ! "$PG_CONFIG" --version | grep -q "PostgreSQL ${PG_MAJOR}\."; then
  echo "setup.sh: no pg_config for PostgreSQL ${PG_MAJOR} found (set PG_CONFIG)" >&2
  exit 1
fi
say "using $PG_CONFIG ($("$PG_CONFIG" --version))"

# --- 3. Rust toolchain and cargo-pgrx ---------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo not found; install Rust first" >&2
  exit 1
fi

if cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  say "cargo-pgrx ${PGRX_VERSION} present"
else
  say "installing cargo-pgrx ${PGRX_VERSION} (takes a few minutes)"
  cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

pgrx_home="${PGRX_HOME:-$HOME/.pgrx}"
if [ -f "$pgrx_home/config.toml" ] && grep -Eq "^[[:space:]]*pg${PG_MAJOR}[[:space:]]*=" "$pgrx_home/config.toml"; then
  say "cargo pgrx already initialised for pg${PG_MAJOR} ($pgrx_home)"
else
  say "cargo pgrx init --pg${PG_MAJOR} $PG_CONFIG"
  cargo pgrx init "--pg${PG_MAJOR}" "$PG_CONFIG"
fi

# --- 4. Build and install the extension ------------------------------------------
install_args=(--pg-config "$PG_CONFIG")
profile=debug
if [ "$(id -u)" -ne 0 ]; then install_args+=(--sudo); fi
if [ "$release" -eq 1 ]; then install_args+=(--release); profile=release; fi
say "building and installing livesync ($profile build)"
cargo pgrx install "${install_args[@]}"
say "installed: $(ls "$("$PG_CONFIG" --sharedir)"/extension/livesync.control 2>/dev/null || echo '??')"
