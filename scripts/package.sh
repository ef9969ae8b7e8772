#!/usr/bin/env bash
# Builds a Debian package of livesync for one PostgreSQL server version:
#
#   bash scripts/package.sh                      # for the pg_config found (PostgreSQL 15 here)
#   PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config bash scripts/package.sh
#   PG_CONFIG=<PostgreSQL 18's pg_config> bash scripts/package.sh   # postgresql-18-livesync
#
# `cargo pgrx package` lays out the release build's files as they install (the library in
# pkglibdir, control and SQL in sharedir/extension); this wraps that tree with a DEBIAN/control
# into target/debian/livesync_<version>-pg<major>_<arch>.deb, installable with
#   apt install ./target/debian/livesync_<version>-pg<major>_<arch>.deb
# It depends on the matching server package (postgresql-<major>); the server still needs
# shared_preload_libraries = 'livesync' and a restart (see the README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
PG_CONFIG="${PG_CONFIG:-$(command -v pg_config || echo /usr/lib/postgresql/15/bin/pg_config)}"
MAJOR="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
ARCH="$(dpkg --print-architecture)"
OUT="target/debian/livesync-pg$MAJOR"
rm -rf "$OUT"; mkdir -p "$OUT"
echo "==> cargo pgrx package for PostgreSQL $MAJOR ($PG_CONFIG)"
FEATURES=()
[ "$MAJOR" != 15 ] && FEATURES=(--no-default-features --features "pg$MAJOR")
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$OUT" "${FEATURES[@]}" >&2
# Lay the files out where Debian's postgresql-<major> looks for them, whatever installation built
# them (PostgreSQL 18 here comes from a relocatable build, not from a Debian package).
LIB="$OUT/usr/lib/postgresql/$MAJOR/lib"; EXT="$OUT/usr/share/postgresql/$MAJOR/extension"
if [ ! -f "$LIB/livesync.so" ]; then
  STAGE="$(mktemp -d)"; mv "$OUT" "$STAGE/tree"; mkdir -p "$LIB" "$EXT"
  find "$STAGE/tree" -name 'livesync*.so' -exec mv {} "$LIB/" \;
  find "$STAGE/tree" \( -name 'livesync.control' -o -name 'livesync--*.sql' \) -exec mv {} "$EXT/" \;
  rm -rf "$STAGE"
fi
[ -f "$LIB/livesync.so" ] && [ -f "$EXT/livesync.control" ] || { echo "package.sh: no livesync.so/livesync.control in the package output" >&2; exit 1; }
mkdir -p "$OUT/DEBIAN"
SIZE="$(du -sk "$OUT" | cut -f1)"
cat > "$OUT/DEBIAN/control" <<CONTROL
Package: postgresql-$MAJOR-livesync
Version: $VERSION
Architecture: $ARCH
Maintainer: livesync developers
Depends: postgresql-$MAJOR
Installed-Size: $SIZE
Section: database
Priority: optional
Description: keep PostgreSQL tables in sync with a source through logical replication
 livesync runs inside a target PostgreSQL $MAJOR database and keeps chosen tables in sync with a
 source PostgreSQL (13 or later): a consistent, parallel, resumable initial copy, then every
 change streamed through the target's executor, crash-exact. Needs
 shared_preload_libraries = 'livesync'.
CONTROL
DEB="target/debian/livesync_${VERSION}-pg${MAJOR}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$OUT" "$DEB" >&2
echo "$DEB"
