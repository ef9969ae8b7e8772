#!/usr/bin/env bash
# A live demo on this machine: a source PostgreSQL on 127.0.0.1:55432 with
# sample data, a target on 127.0.0.1:55433 with livesync, and a connector
# between them.
#
#   bash scripts/demo.sh         # (re)create and start the demo
#   bash scripts/demo.sh stop    # stop both demo servers
#
# Everything lives in ./demo (git-ignored): data directories and log files.
# Each run starts from scratch. Servers run as the `postgres` OS user when
# this script runs as root, else as the current user.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
DEMO="$REPO/demo"
SOURCE_PORT=55432
TARGET_PORT=55433

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
  PGUSER_OS=postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  PGUSER_OS="$(id -un)"
  as_pg() { "$@"; }
fi

if [ -z "${PG_CONFIG:-}" ]; then
  if [ -x /usr/lib/postgresql/15/bin/pg_config ]; then
    PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
  else
    PG_CONFIG="$(command -v pg_config || true)"
  fi
fi

pgbin() {
  [ -n "$PG_CONFIG" ] || die "no pg_config found; run bash scripts/setup.sh"
  printf '%s/%s' "$("$PG_CONFIG" --bindir)" "$1"
}

stop_cluster() { # name
  local dir="$DEMO/$1"
  if [ -f "$dir/postmaster.pid" ]; then
    say "stopping the demo $1"
    as_pg "$(pgbin pg_ctl)" -D "$dir" -m fast -w -t 60 stop >/dev/null || true
  fi
}

stop_all() {
  stop_cluster target
  stop_cluster source
}

case "${1:-}" in
  stop)
    stop_all
    exit 0
    ;;
  "") ;;
  *) die "usage: bash scripts/demo.sh [stop]" ;;
esac

# --- build and install (release) ---------------------------------------------------
bash scripts/setup.sh --release

PSQL="$(pgbin psql)"

# --- fresh demo directory -------------------------------------------------------------
stop_all
# When ./demo was a link to a directory elsewhere (see below), clean that too.
if [ -L "$DEMO" ]; then
  real="$(readlink -f "$DEMO" || true)"
  if [ -n "$real" ] && [ -d "$real" ]; then
    rm -rf "${real:?}"/source "${real:?}"/target "${real:?}"/*.log
  fi
  rm -f "$DEMO"
fi
rm -rf "$DEMO"
mkdir -p "$DEMO"

# The server's OS user must be able to reach ./demo; when it can't (e.g. the
# repository is under /root), keep the files elsewhere and link ./demo there.
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$DEMO"
  if ! runuser -u postgres -- test -w "$DEMO" 2>/dev/null; then
    rmdir "$DEMO"
    real="/var/tmp/livesync-demo"
    rm -rf "$real"
    mkdir -p "$real"
    chown postgres: "$real"
    ln -s "$real" "$DEMO"
    say "postgres can't reach $REPO; demo files are in $real (linked from ./demo)"
  fi
fi
DEMO_REAL="$(readlink -f "$DEMO")"

# Unix socket paths are limited to ~107 bytes.
SOCKDIR="$DEMO_REAL"
if [ "${#SOCKDIR}" -gt 80 ]; then
  SOCKDIR="$(mktemp -d /tmp/livesync-demo-sock.XXXXXX)"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$SOCKDIR"; fi
fi

init_cluster() { # name port extra-conf hba
  local name="$1" port="$2" conf="$3" hba="$4" dir="$DEMO_REAL/$1"
  say "initdb $name (port $port)"
  as_pg "$(pgbin initdb)" -D "$dir" -U "$PGUSER_OS" -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  as_pg tee -a "$dir/postgresql.conf" >/dev/null <<EOF

# --- livesync demo ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKDIR'
password_encryption = 'scram-sha-256'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
$conf
EOF
  printf '%s\n' "$hba" | as_pg tee "$dir/pg_hba.conf" >/dev/null
}

start_cluster() { # name
  local name="$1"
  say "starting $name"
  if ! as_pg "$(pgbin pg_ctl)" -D "$DEMO_REAL/$name" -l "$DEMO_REAL/$name.log" -w -t 60 start >/dev/null; then
    tail -n 20 "$DEMO_REAL/$name.log" >&2 || true
    die "could not start the $name server (is port $([ "$name" = source ] && echo $SOURCE_PORT || echo $TARGET_PORT) in use?)"
  fi
}

init_cluster source "$SOURCE_PORT" "wal_level = logical
max_wal_senders = 10
max_replication_slots = 10" "# livesync demo source
local all all trust
host all sync 127.0.0.1/32 scram-sha-256
host replication sync 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 scram-sha-256"

init_cluster target "$TARGET_PORT" "shared_preload_libraries = 'livesync'" "# livesync demo target
local all all trust
host all all 127.0.0.1/32 scram-sha-256"

start_cluster source
start_cluster target

src_psql() { as_pg "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$SOURCE_PORT" -U "$PGUSER_OS" "$@"; }
tgt_psql() { as_pg "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$TARGET_PORT" -U "$PGUSER_OS" "$@"; }

# --- source: role, database, sample data ------------------------------------------------
say "source: role sync, database app, sample data"
src_psql -d postgres <<'SQL'
CREATE ROLE sync LOGIN REPLICATION PASSWORD 'sync';
CREATE DATABASE app;
SQL
src_psql -d app <<'SQL'
CREATE TABLE public.devices (id int PRIMARY KEY, name text);
INSERT INTO public.devices
SELECT i, 'device-' || i FROM generate_series(1, 12) AS i;

CREATE TABLE public.metrics (
    time   timestamptz,
    device int,
    value  float8,
    PRIMARY KEY (device, time)
);
INSERT INTO public.metrics
SELECT t, d, round((random() * 100)::numeric, 2)::float8
  FROM generate_series(now() - interval '1 day', now(), interval '10 seconds') AS t,
       generate_series(1, 12) AS d;
ANALYZE;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO sync;
GRANT CREATE ON DATABASE app TO sync;
-- Adding a table to a publication requires owning it.
ALTER TABLE public.devices OWNER TO sync;
ALTER TABLE public.metrics OWNER TO sync;
SQL
src_psql -d app -At -c "SELECT format('    public.metrics: %s rows, public.devices: %s rows', (SELECT count(*) FROM metrics), (SELECT count(*) FROM devices))"

# --- target: extension and connector --------------------------------------------------------
say "target: database app, CREATE EXTENSION livesync, add_connector"
tgt_psql -d postgres -c "CREATE DATABASE app"
tgt_psql -d app -c "CREATE EXTENSION livesync"
tgt_psql -d app -At -c "SELECT livesync.add_connector('host=127.0.0.1 port=$SOURCE_PORT dbname=app user=sync password=sync')" \
  | sed 's/^/    connector: /'

say "waiting for the connector to be running"
state=""
for _ in $(seq 1 60); do
  state="$(tgt_psql -d app -At -c "SELECT string_agg(state, ',') FROM livesync.connectors" || true)"
  [ "$state" = running ] && break
  sleep 0.5
done
if [ "$state" != running ]; then
  tgt_psql -d app -x -c "SELECT * FROM livesync.connectors" || true
  echo "--- target log (tail) ---" >&2
  tail -n 30 "$DEMO_REAL/target.log" >&2 || true
  die "the connector is not running after 30 s (state: ${state:-none})"
fi

echo
say "target: SELECT * FROM livesync.connectors"
tgt_psql -d app -x -c "SELECT * FROM livesync.connectors"

say "source: the connector's connection (pg_stat_activity)"
src_psql -d postgres -x -c "SELECT pid, usename, datname, application_name, client_addr, backend_type, state, backend_start
                              FROM pg_stat_activity WHERE application_name LIKE 'livesync%'"

say "target: add_table('public.metrics'), add_table('public.devices') — copied from one exported snapshot"
tgt_psql -d app -c "SELECT livesync.add_table('public.metrics')" -c "SELECT livesync.add_table('public.devices')" >/dev/null
for _ in $(seq 1 120); do
  ready="$(tgt_psql -d app -At -c "SELECT count(*) FILTER (WHERE state = 'ready') = count(*) FROM livesync.table_progress" || true)"
  [ "$ready" = t ] && break
  sleep 0.5
done
tgt_psql -d app -c "SELECT source_table, state, rows_copied, pg_size_pretty(bytes_copied) AS copied, percent, snapshot_lsn, finished_at - started_at AS took FROM livesync.table_progress"

say "source: INSERT a row, UPDATE a device, DELETE a metric; how long until the target has them?"
src_psql -d app -c "INSERT INTO metrics VALUES (now(), 99, 42.0); UPDATE devices SET name = 'renamed' WHERE id = 1; DELETE FROM metrics WHERE device = 2 AND time = (SELECT min(time) FROM metrics WHERE device = 2)"
start_ns=$(date +%s%N)
for _ in $(seq 1 200); do
  seen="$(tgt_psql -d app -At -c "SELECT (SELECT count(*) FROM metrics WHERE device = 99) = 1 AND (SELECT name FROM devices WHERE id = 1) = 'renamed'" || true)"
  [ "$seen" = t ] && break
  sleep 0.05
done
echo "    visible on the target after $(( ($(date +%s%N) - start_ns) / 1000000 )) ms (polling every 50 ms)"
echo "    source: $(src_psql -d app -At -c "SELECT count(*) || ' metrics rows, md5 ' || md5(string_agg(m::text, ',' ORDER BY device, time)) FROM metrics m")"
echo "    target: $(tgt_psql -d app -At -c "SELECT count(*) || ' metrics rows, md5 ' || md5(string_agg(m::text, ',' ORDER BY device, time)) FROM metrics m")"
sleep 1.5  # the worker reports positions once a second
tgt_psql -d app -c "SELECT name, state, received_lsn, flushed_lsn, lag_bytes, apply_lag FROM livesync.connectors" \
               -c "SELECT source_table, state, changes_applied FROM livesync.table_progress"

echo
cat <<EOF
The demo is running (files and logs in ./demo).

  Target (livesync):  $PSQL -h $SOCKDIR -p $TARGET_PORT -U $PGUSER_OS app
                        SELECT * FROM livesync.connectors;
                        SELECT * FROM livesync.table_progress;
  Source:             $PSQL -h $SOCKDIR -p $SOURCE_PORT -U $PGUSER_OS app
                      or, as the connector does:
                      psql 'host=127.0.0.1 port=$SOURCE_PORT dbname=app user=sync password=sync'
  Logs:               demo/source.log, demo/target.log

  Stop the demo:      bash scripts/demo.sh stop
EOF
