#!/usr/bin/env bash
# The upgrade test (tests/upgrade.rs): the previous release, installed into a private copy of
# PostgreSQL, syncs tables under load and is upgraded in place to this tree.
#
#   bash scripts/upgrade-test.sh [extra args for the test binary]   # after scripts/setup.sh
#
# The previous release is the version the newest upgrade script to this tree's version starts from
# (sql/livesync--<previous>--<this>.sql). It is built from its git tag v<previous>, or in a clone
# without tags from the commit listed in RELEASE_COMMITS below. All of it goes under target/upgrade/:
#   src/, build/  the previous release's source (git archive) and its cargo target dir, seeded with
#                 copies of this tree's compiled dependencies (target/debug stays as it is);
#                 both removed once from/ is made
#   from/         `cargo pgrx package --debug` output of the previous release, kept and reused
#                 while from.commit names its commit
#   to/           the same for this tree (reuses the debug build scripts/setup.sh made)
#   pg/           a copy of the system's PostgreSQL installation (bin, lib, share) without livesync
# The system's PostgreSQL is only read: the test installs both releases into pg/.
# Environment: PG_CONFIG (PostgreSQL 15's pg_config).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

# Released versions' commits, for clones without tags. Add each release here when it is tagged.
declare -A RELEASE_COMMITS=(
  [0.1.0]=e52330056664218fa61859e162fafe59368eb6df
)

say() { printf '==> %s\n' "$*"; }
die() { printf 'upgrade-test.sh: %s\n' "$*" >&2; exit 1; }

if [ -z "${PG_CONFIG:-}" ]; then
  if [ -x /usr/lib/postgresql/15/bin/pg_config ]; then PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config; else PG_CONFIG="$(command -v pg_config)"; fi
fi
ROOT="$PWD"
OUT="$ROOT/target/upgrade"
mkdir -p "$OUT"

# --- the previous release -------------------------------------------------------------------
CURRENT="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
FROM="$(ls sql | sed -n "s/^livesync--\(.*\)--${CURRENT//./\\.}\.sql\$/\1/p" | sort -V | tail -1)"
[ -n "$FROM" ] || die "no upgrade script sql/livesync--<previous>--$CURRENT.sql: every version after the first release needs one"
# The commit of release $1: its tag's, else the one in RELEASE_COMMITS if this clone has it.
release_commit() {
  local c
  if c="$(git rev-parse -q --verify "refs/tags/v$1^{commit}" 2>/dev/null)"; then echo "$c"; return 0; fi
  c="${RELEASE_COMMITS[$1]:-}"
  if [ -n "$c" ] && git cat-file -e "$c^{commit}" 2>/dev/null; then echo "$c"; return 0; fi
  return 1
}
if ! COMMIT="$(release_commit "$FROM")"; then
  # A shallow clone: fetch the tag (best effort; fails fast without a network).
  timeout 60 git fetch -q --depth=1 origin "refs/tags/v$FROM:refs/tags/v$FROM" 2>/dev/null || true
  COMMIT="$(release_commit "$FROM")" || die "neither tag v$FROM nor its commit (RELEASE_COMMITS) is in this clone; git fetch --tags"
fi
say "upgrade test: livesync $FROM (commit ${COMMIT:0:12}) -> $CURRENT"

started=$SECONDS
if [ "$(cat "$OUT/from.commit" 2>/dev/null)" = "$COMMIT" ]; then
  say "previous release $FROM already built (target/upgrade/from)"
else
  rm -rf "$OUT/src" "$OUT/from" "$OUT/from.commit"
  mkdir -p "$OUT/src"
  git archive "$COMMIT" | tar -x -C "$OUT/src"
  want_pgrx="$(grep -A1 '^name = "pgrx"$' "$OUT/src/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
  have_pgrx="$(cargo pgrx --version | awk '{print $2}')"
  [ "$want_pgrx" = "$have_pgrx" ] || die "livesync $FROM uses pgrx $want_pgrx but cargo-pgrx is $have_pgrx; \
build it with cargo-pgrx $want_pgrx (cargo install cargo-pgrx --version $want_pgrx --locked --root <dir>, then put <dir>/bin first in PATH)"
  # Seed its target dir with this tree's compiled dependencies (copies: this tree's build stays as it is).
  if [ ! -d "$OUT/build/debug" ] && [ -d target/debug/deps ]; then
    mkdir -p "$OUT/build/debug/deps"
    cp -a --reflink=auto target/debug/build target/debug/.fingerprint "$OUT/build/debug/"
    find target/debug/deps -maxdepth 1 -type f ! -name '*livesync*' ! -name 'integration-*' ! -name 'upgrade-*' \
      -exec cp -a --reflink=auto -t "$OUT/build/debug/deps" {} +
  fi
  say "building livesync $FROM (cargo pgrx package --debug)"
  (cd "$OUT/src" && CARGO_TARGET_DIR="$OUT/build" cargo pgrx package --debug --pg-config "$PG_CONFIG" --out-dir "$OUT/from" >&2)
  echo "$COMMIT" > "$OUT/from.commit"
  # The package is all the test needs; the build's copy of the dependencies is large.
  rm -rf "$OUT/build" "$OUT/src"
fi
say "previous release ready in $((SECONDS - started)) s"

# --- this tree ----------------------------------------------------------------------------------
started=$SECONDS
rm -rf "$OUT/to"
cargo pgrx package --debug --pg-config "$PG_CONFIG" --out-dir "$OUT/to" >&2
say "this tree packaged in $((SECONDS - started)) s"

# --- a private PostgreSQL installation ---------------------------------------------------------------
# PostgreSQL finds its lib and share directories relative to its binaries, so a copy under any
# prefix is a complete installation of its own.
bindir="$("$PG_CONFIG" --bindir)"; sharedir="$("$PG_CONFIG" --sharedir)"; pkglibdir="$("$PG_CONFIG" --pkglibdir)"
libroot="$(dirname "$bindir")"
case "$pkglibdir" in "$libroot"/*) ;; *) die "pkglibdir $pkglibdir is not under $libroot" ;; esac
rm -rf "$OUT/pg"
mkdir -p "$OUT/pg$(dirname "$libroot")" "$OUT/pg$(dirname "$sharedir")"
tar -C "$(dirname "$libroot")" -cf - --exclude="$(basename "$libroot")/${pkglibdir#"$libroot"/}/livesync*" "$(basename "$libroot")" \
  | tar -C "$OUT/pg$(dirname "$libroot")" -xf -
tar -C "$(dirname "$sharedir")" -cf - --exclude="$(basename "$sharedir")/extension/livesync*" "$(basename "$sharedir")" \
  | tar -C "$OUT/pg$(dirname "$sharedir")" -xf -
PRIVATE_PG_CONFIG="$OUT/pg$bindir/pg_config"
[ "$("$PRIVATE_PG_CONFIG" --sharedir)" = "$OUT/pg$sharedir" ] && [ "$("$PRIVATE_PG_CONFIG" --pkglibdir)" = "$OUT/pg$pkglibdir" ] \
  || die "the copy of PostgreSQL in $OUT/pg does not find its own directories (pg_config says $("$PRIVATE_PG_CONFIG" --sharedir))"

# --- the test -----------------------------------------------------------------------------------------
started=$SECONDS
LIVESYNC_UPGRADE_PG_CONFIG="$PRIVATE_PG_CONFIG" LIVESYNC_UPGRADE_FROM="$OUT/from" LIVESYNC_UPGRADE_TO="$OUT/to" \
  cargo test --test upgrade -- "$@"
say "upgrade test ran in $((SECONDS - started)) s"
