#!/usr/bin/env bash
# livesync benchmark: initial copy and change apply, side by side with PostgreSQL's native logical
# replication and a raw COPY pipe, in one run on this machine. Not part of the test suite.
#
#   bash bench/run.sh                 # ~1.1 GB dataset (BENCH_GB=1)
#   BENCH_GB=0.2 bash bench/run.sh    # quicker, smaller
#   BENCH_SKIP_COPY=1 / BENCH_SKIP_APPLY=1 / BENCH_SKIP_HYPERTABLE=1 skip a part (the hypertable
#   copy runs only when TimescaleDB is installed)
#   BENCH_APPLY_CASES="a1 a2 b c"     # which apply workloads run (default: all four)
#   BENCH_PERF=<file>                 # record `perf` system-wide while livesync applies
#   BENCH_RUNS=3                      # runs of native and of livesync's default copy (medians compared)
#   BENCH_SKIP_LAG=1                  # skip the lag of a synced table while metrics is copied beside the stream
#   BENCH_SKIP_RESUME=1               # skip the crash halfway through metrics' copy and the snapshot-age runs
#   BENCH_SKIP_VERIFY=1               # skip verify_table on metrics against a full scan of it
#   BENCH_MAX_COPY_WORKERS=<n>        # livesync.max_copy_workers on the target (default: its own, half the CPUs)
#   BENCH_SKIP_CITUS=1                # skip the Citus copy and apply (they run only when Citus is installed)
#
# Clusters live under bench/work/ (gitignored), run by an unprivileged OS user, on ports
# 56432 (source) and 56433 (target). Results are printed as a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
W="$REPO/bench/work"
SP=56432
TP=56433
GB="${BENCH_GB:-1}"

if [ "$(id -u)" -eq 0 ]; then OSU=postgres; as_pg() { runuser -u postgres -- "$@"; }; else OSU="$(id -un)"; as_pg() { "$@"; }; fi
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
say() { printf '==> %s\n' "$*" >&2; }

bash scripts/setup.sh --release >&2

stop_all() { for n in source target; do [ -f "$W/$n/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$W/$n" -m fast -w stop >/dev/null 2>&1 || true; done; }
trap stop_all EXIT
stop_all
rm -rf "$W"; mkdir -p "$W"; [ "$(id -u)" -eq 0 ] && chown postgres: "$W"
SOCK="$(mktemp -d /tmp/livesync-bench.XXXXXX)"; [ "$(id -u)" -eq 0 ] && chown postgres: "$SOCK"

init() { # name port extra
  as_pg "$BIN/initdb" -D "$W/$1" -U "$OSU" -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  as_pg tee -a "$W/$1/postgresql.conf" >/dev/null <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
maintenance_work_mem = '512MB'
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
max_worker_processes = 32
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 2
$3
CONF
  as_pg "$BIN/pg_ctl" -D "$W/$1" -l "$W/$1.log" -w start >/dev/null
}
init source $SP ""
init target $TP "shared_preload_libraries = 'livesync'
${BENCH_MAX_COPY_WORKERS:+livesync.max_copy_workers = $BENCH_MAX_COPY_WORKERS}"
src() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p $SP -U "$OSU" "$@"; }
tgt() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p $TP -U "$OSU" "$@"; }
now() { date +%s.%N; }
SRC_CONNINFO="host=127.0.0.1 port=$SP dbname=bench user=$OSU"

src -d postgres -c "CREATE DATABASE bench"
SCHEMA="
CREATE TABLE metrics (device_id int NOT NULL, time timestamptz NOT NULL, cpu float8, mem float8, disk float8,
                      net_in int8, net_out int8, status text, PRIMARY KEY (device_id, time));
CREATE TABLE devices (id int PRIMARY KEY, name text, tags text[], meta jsonb, added date, active bool);
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, kind text, amount numeric(12,2), ip inet, uid uuid);
CREATE TABLE documents (id int PRIMARY KEY, title text, body text);
"
src -d bench -c "$SCHEMA"

# ---- data -------------------------------------------------------------------------------------
ROWS=$(python3 -c "print(int(float('$GB') * 9_000_000))")
say "generating ~${GB} GB on the source ($ROWS metrics rows, 2000 devices, events, 200 MB of TOASTed documents x $GB)"
src -d bench <<SQL
INSERT INTO metrics
SELECT d, timestamptz '2026-01-01' + (i * interval '10 s'), random() * 100, random() * 100, random() * 100,
       (random() * 1e9)::int8, (random() * 1e9)::int8, (ARRAY['ok','warn','crit'])[1 + (i % 3)]
  FROM generate_series(1, 2000) d, generate_series(1, ($ROWS / 2000)) i;
INSERT INTO devices SELECT i, 'device-' || i, ARRAY['rack' || (i % 40), 'dc' || (i % 3)],
       jsonb_build_object('model', 'x' || (i % 17), 'fw', i % 5), date '2020-01-01' + i, i % 7 <> 0
  FROM generate_series(1, 2000) i;
INSERT INTO events SELECT i, timestamptz '2026-01-01' + i * interval '1 s', (ARRAY['buy','sell','hold'])[1 + i % 3],
       round((random() * 10000)::numeric, 2), ('10.0.' || (i % 250) || '.' || (i % 200))::inet, gen_random_uuid()
  FROM generate_series(1, ($ROWS / 10)) i;
INSERT INTO documents SELECT i, 'doc ' || i, repeat(md5(i::text), 3200) FROM generate_series(1, (2000 * $GB)::int) i;
VACUUM ANALYZE;
SQL
BYTES=$(src -d bench -At -c "SELECT sum(pg_total_relation_size(c.oid) - coalesce((SELECT sum(pg_relation_size(i.indexrelid)) FROM pg_index i WHERE i.indrelid = c.oid), 0))::int8 FROM pg_class c WHERE relname IN ('metrics','devices','events','documents')")
MB=$(python3 -c "print(round($BYTES / 1e6))")
say "source tables: $MB MB (heap + TOAST, without indexes)"
TABLES="metrics devices events documents"

results=()
row() { # label seconds
  results+=("$(python3 -c "
b=$BYTES; s=$2
print(f'| $1 | {s:.1f} | {b/1e6/s:.0f} | {b/1e9/s*3600:.1f} |')")")
}
fresh_target() { tgt -d postgres -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench"; }
# Waiting for a result polls from one session, every 50 ms (COMMIT: a fresh snapshot, no xmin
# held). Starting a psql (and a backend) per poll costs a noticeable share of these 2 cores and
# slowed every CPU-bound method it was waiting for.
poll_loop() { # condition (a scalar boolean query) -> DO block that returns once it is true
  echo "DO \$\$ BEGIN WHILE NOT coalesce(($1), false) LOOP COMMIT; PERFORM pg_sleep(0.05); END LOOP; END \$\$"
}
wait_sql() { # db sql  (returns once sql returns t)
  tgt -d "$1" -c "$(poll_loop "$2")"
}
# Every timed method starts from the same quiet machine: dirty pages of the previous one written.
settle() { sync; sleep 1; }
# livesync's phases of one table copy, in seconds: add_table to the copy's start (connector, snapshot,
# plan) / loading the ranges / from the last range to copied (the key built).
PHASES_SQL="SELECT format('%s/%s/%s', round(extract(epoch FROM t.started_at - t.added_at)::numeric, 1), round(extract(epoch FROM max(r.finished_at) - t.started_at)::numeric, 1), round(extract(epoch FROM t.finished_at - max(r.finished_at))::numeric, 1)) FROM livesync.sync_table t JOIN livesync.copy_range r ON r.table_id = t.id GROUP BY t.id"

if [ -z "${BENCH_SKIP_COPY:-}" ]; then
  # ---- 1. raw COPY pipe, one table after another, then the primary keys ------------------------
  for fmt in text binary; do
    fresh_target
    tgt -d bench -c "$(echo "$SCHEMA" | sed 's/, PRIMARY KEY (device_id, time)//; s/ PRIMARY KEY//')"
    say "raw pipe ($fmt)"
    settle; t0=$(now)
    for t in $TABLES; do
      src -d bench -c "COPY $t TO STDOUT (FORMAT $fmt)" | tgt -d bench -c "COPY $t FROM STDIN (FORMAT $fmt)"
    done
    t1=$(now)
    tgt -d bench -c "ALTER TABLE metrics ADD PRIMARY KEY (device_id, time)" -c "ALTER TABLE devices ADD PRIMARY KEY (id)" \
        -c "ALTER TABLE events ADD PRIMARY KEY (id)" -c "ALTER TABLE documents ADD PRIMARY KEY (id)"
    t2=$(now)
    row "raw \`COPY … TO STDOUT | COPY … FROM STDIN\` ($fmt), data only" "$(python3 -c "print($t1-$t0)")"
    row "raw pipe ($fmt) + building the primary keys" "$(python3 -c "print($t2-$t0)")"
    [ $fmt = binary ] && RAW_BIN_KEYS=$(python3 -c "print($t2-$t0)")
  done

  # ---- 1b. the practical limit: one raw binary pipe per table, all at once, each table's key --
  # built as soon as its data is in (what livesync does, with the copy itself in the target)
  fresh_target
  tgt -d bench -c "$(echo "$SCHEMA" | sed 's/, PRIMARY KEY (device_id, time)//; s/ PRIMARY KEY//')"
  say "raw binary pipes in parallel, keys after each"
  settle; t0=$(now)
  for t in $TABLES; do
    case $t in metrics) key="device_id, time";; *) key=id;; esac
    ( src -d bench -c "COPY $t TO STDOUT (FORMAT binary)" | tgt -d bench -c "COPY $t FROM STDIN (FORMAT binary)"
      tgt -d bench -c "ALTER TABLE $t ADD PRIMARY KEY ($key)" ) &
  done
  wait
  t1=$(now)
  RAW_PAR=$(python3 -c "print($t1-$t0)")
  row "raw binary pipes in parallel (one per table), each primary key built after its data" "$RAW_PAR"

  # The two headline methods run BENCH_RUNS times each (default 3), alternating, and are compared
  # by their medians: a single native run here varies by ~20% (25-30 s).
  RUNS="${BENCH_RUNS:-3}"
  median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
  runs_note() { python3 -c "import sys; print('median of ' + str(len(sys.argv) - 1) + ': ' + ', '.join(f'{float(x):.1f}' for x in sys.argv[1:]) + ' s')" "$@"; }

  # ---- 2. native subscription (target schema with its keys, as pg_dump -s gives it) ------------
  native_copy() { # -> prints seconds
    fresh_target
    tgt -d bench -c "$SCHEMA"
    src -d bench -c "CREATE PUBLICATION bench_native FOR TABLE $(echo $TABLES | sed 's/ /, /g')"
    local t0 t1
    settle; t0=$(now)
    tgt -d bench -c "CREATE SUBSCRIPTION bench_native CONNECTION '$SRC_CONNINFO' PUBLICATION bench_native" 2>/dev/null
    wait_sql bench "SELECT count(*) = 4 AND bool_and(srsubstate = 'r') FROM pg_subscription_rel"
    t1=$(now)
    tgt -d bench -c "DROP SUBSCRIPTION bench_native" 2>/dev/null
    src -d bench -c "DROP PUBLICATION bench_native"
    python3 -c "print($t1-$t0)"
  }

  # ---- 3. livesync, then livesync as one stream (one copy worker, no ranges) ------------------
  livesync_copy() { # -> prints seconds
    fresh_target
    tgt -d bench -c "CREATE EXTENSION livesync"
    local t0 t1
    settle; t0=$(now)
    tgt -d bench -c "SELECT livesync.add_connector('$SRC_CONNINFO')" >/dev/null
    for t in $TABLES; do tgt -d bench -c "SELECT livesync.add_table('public.$t')" >/dev/null; done
    wait_sql bench "SELECT count(*) = 4 AND bool_and(state IN ('ready', 'catching up')) FROM livesync.table_progress"
    t1=$(now)
    tgt -d bench -c "SELECT livesync.drop_connector(name) FROM livesync.connectors" >/dev/null
    python3 -c "print($t1-$t0)"
  }
  NATIVE_RUNS=(); LS_RUNS=()
  for i in $(seq "$RUNS"); do
    say "native CREATE SUBSCRIPTION (run $i of $RUNS)"
    NATIVE_RUNS+=("$(native_copy)")
    say "livesync add_connector + add_table x4 (run $i of $RUNS)"
    LS_RUNS+=("$(livesync_copy)")
  done
  # Native with one sync worker per table, as a user would set it (max_sync_workers_per_subscription
  # = the number of tables), BENCH_RUNS times too.
  tgt -d postgres -c "ALTER SYSTEM SET max_sync_workers_per_subscription = 4" -c "SELECT pg_reload_conf()" >/dev/null
  NATIVE4_RUNS=()
  for i in $(seq "$RUNS"); do
    say "native CREATE SUBSCRIPTION, four sync workers (run $i of $RUNS)"
    NATIVE4_RUNS+=("$(native_copy)")
  done
  tgt -d postgres -c "ALTER SYSTEM RESET max_sync_workers_per_subscription" -c "SELECT pg_reload_conf()" >/dev/null
  NATIVE4_COPY=$(median "${NATIVE4_RUNS[@]}")
  NATIVE_COPY=$(median "${NATIVE_RUNS[@]}")
  LS_COPY=$(median "${LS_RUNS[@]}")
  AUTO_WORKERS=$(( $(nproc) / 2 )); [ $AUTO_WORKERS -lt 1 ] && AUTO_WORKERS=1; [ $AUTO_WORKERS -gt 8 ] && AUTO_WORKERS=8
  row "native subscription (tables with keys) until all \`r\` ($(runs_note "${NATIVE_RUNS[@]}"))" "$NATIVE_COPY"
  row "native subscription with max_sync_workers_per_subscription = 4 (one per table) ($(runs_note "${NATIVE4_RUNS[@]}"))" "$NATIVE4_COPY"
  row "livesync, default settings ($AUTO_WORKERS copy worker(s) = half the CPUs; creates tables, keys built after load) until all copied ($(runs_note "${LS_RUNS[@]}"))" "$LS_COPY"
  say "livesync, four copy workers"
  tgt -d postgres -c "ALTER SYSTEM SET livesync.max_copy_workers = 4" -c "SELECT pg_reload_conf()" >/dev/null
  LS_FOUR=$(livesync_copy)
  row "livesync with four copy workers (tables and 256 MB ranges in parallel)" "$LS_FOUR"
  say "livesync, one copy worker"
  tgt -d postgres -c "ALTER SYSTEM SET livesync.max_copy_workers = 1" -c "ALTER SYSTEM SET livesync.copy_range_mb = 1048576" -c "SELECT pg_reload_conf()" >/dev/null
  LS_ONE=$(livesync_copy)
  row "livesync with one copy worker and no ranges (binary COPY, keys after load)" "$LS_ONE"
  tgt -d postgres -c "ALTER SYSTEM RESET livesync.max_copy_workers" -c "ALTER SYSTEM RESET livesync.copy_range_mb" -c "SELECT pg_reload_conf()" >/dev/null

  echo
  echo "### Initial copy — $MB MB ($(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB RAM, PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'))"
  echo
  echo "| method | seconds | MB/s | GB/hour |"
  echo "| --- | ---: | ---: | ---: |"
  printf '%s\n' "${results[@]}"
  echo
  echo "livesync vs native (medians): $(python3 -c "print(f'{$NATIVE_COPY/$LS_COPY:.2f}x')") faster; slowest livesync run vs fastest native run: $(python3 -c "import sys; n, l = sys.argv[1].split(), sys.argv[2].split(); print('%.2fx' % (min(map(float, n)) / max(map(float, l))))" "${NATIVE_RUNS[*]}" "${LS_RUNS[*]}")"
  echo "livesync vs native with one sync worker per table (medians): $(python3 -c "print(f'{$NATIVE4_COPY/$LS_COPY:.2f}x')") faster; slowest livesync run vs fastest such native run: $(python3 -c "import sys; n, l = sys.argv[1].split(), sys.argv[2].split(); print('%.2fx' % (min(map(float, n)) / max(map(float, l))))" "${NATIVE4_RUNS[*]}" "${LS_RUNS[*]}")"
  echo "livesync (add_table to ready, median) vs the practical limit (parallel binary pipes + keys): $(python3 -c "print(f'{$LS_COPY/$RAW_PAR:.2f}x')") the limit's time"
  echo "livesync with one copy worker vs the raw binary pipe + keys (one stream each): $(python3 -c "print(f'{$RAW_BIN_KEYS/$LS_ONE:.2f}x')")"
  results=()
fi

# ---- hypertables (only with TimescaleDB installed): into a hypertable, livesync vs a raw pipe ------
# Native subscriptions cannot write into hypertables (rows vanish into the root), so the reference
# is a raw binary COPY pipe into the same hypertable (TimescaleDB's own COPY path), keys after.
if [ -z "${BENCH_SKIP_HYPERTABLE:-}" ] && [ -f "$("$PG_CONFIG" --pkglibdir)/timescaledb.so" ]; then
  tgt -d postgres -c "ALTER SYSTEM SET shared_preload_libraries = livesync, timescaledb"
  as_pg "$BIN/pg_ctl" -D "$W/target" -l "$W/target.log" -m fast -w restart >/dev/null
  HT_BYTES=$(src -d bench -At -c "SELECT pg_relation_size('metrics')")
  HT_DDL="CREATE EXTENSION timescaledb; $(echo "$SCHEMA" | sed -n '/CREATE TABLE metrics/,/PRIMARY KEY/p' | sed 's/, PRIMARY KEY (device_id, time)//');
          SELECT create_hypertable('metrics', by_range('time', interval '1 hour'), create_default_indexes => false);"
  # BENCH_RUNS runs of each (default 3), alternating, so that a drift of the machine (page cache,
  # another process) touches both alike; medians compared, the spread of both shown. livesync's
  # time is split where its phases meet: ranges all loaded (the copy) and the table ready (its
  # primary key built and the stream caught up).
  HT_RUNS_N="${BENCH_RUNS:-3}"
  HT_RAW_RUNS=(); HT_LS_RUNS=(); HT_LS_COPY_RUNS=(); HT_RAW_COPY_RUNS=(); HT_PHASES=()
  for run in $(seq 1 "$HT_RUNS_N"); do
    fresh_target
    tgt -d bench -c "$HT_DDL" >/dev/null
    say "hypertable: raw binary pipe (run $run)"
    settle; t0=$(now)
    src -d bench -c "COPY metrics TO STDOUT (FORMAT binary)" | tgt -d bench -c "COPY metrics FROM STDIN (FORMAT binary)"
    tc=$(now)
    tgt -d bench -c "ALTER TABLE metrics ADD PRIMARY KEY (device_id, time)"
    t1=$(now)
    HT_RAW_RUNS+=("$(python3 -c "print($t1-$t0)")"); HT_RAW_COPY_RUNS+=("$(python3 -c "print($tc-$t0)")")
    HT_ROOT_RAW=$(tgt -d bench -At -c "SELECT count(*) FROM ONLY metrics")
    say "hypertable: livesync (run $run)"
    fresh_target
    tgt -d bench -c "CREATE EXTENSION timescaledb" -c "CREATE EXTENSION livesync" >/dev/null
    settle; t0=$(now)
    tgt -d bench -c "SELECT livesync.add_connector('$SRC_CONNINFO')" >/dev/null
    tgt -d bench -c "SELECT livesync.add_table('public.metrics', hypertable => true, chunk_interval => '1 hour')" >/dev/null 2>&1
    wait_sql bench "SELECT bool_and(ranges_done = ranges_total AND ranges_total > 0) FROM livesync.table_progress"
    tc=$(now)
    wait_sql bench "SELECT bool_and(state IN ('ready', 'catching up')) FROM livesync.table_progress"
    t1=$(now)
    HT_LS_RUNS+=("$(python3 -c "print($t1-$t0)")"); HT_LS_COPY_RUNS+=("$(python3 -c "print($tc-$t0)")")
    HT_ROOT_LS=$(tgt -d bench -At -c "SELECT count(*) FROM ONLY metrics")
    HT_ROWS_LS=$(tgt -d bench -At -c "SELECT count(*) FROM metrics")
    HT_CHUNKS=$(tgt -d bench -At -c "SELECT count(*) FROM show_chunks('metrics')")
    HT_RANGES=$(tgt -d bench -At -c "SELECT ranges_total FROM livesync.table_progress")
    HT_PHASES+=("$(tgt -d bench -At -c "$PHASES_SQL")")
    HT_WORKERS=$(tgt -d bench -At -c "SHOW livesync.max_copy_workers" 2>/dev/null || echo "?")
    tgt -d bench -c "SELECT livesync.drop_connector(name) FROM livesync.connectors" >/dev/null
  done
  tgt -d postgres -c "ALTER SYSTEM RESET shared_preload_libraries"
  as_pg "$BIN/pg_ctl" -D "$W/target" -l "$W/target.log" -m fast -w restart >/dev/null
  stats() { python3 -c "import statistics, sys; v = list(map(float, sys.argv[1:])); print(f'{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})')" "$@"; }
  HT_RAW=$(python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "${HT_RAW_RUNS[@]}")
  HT_LS=$(python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "${HT_LS_RUNS[@]}")
  echo
  echo "### Initial copy into a TimescaleDB hypertable — metrics only, $(python3 -c "print(round($HT_BYTES/1e6))") MB, $HT_CHUNKS chunks of 1 hour, $HT_RUNS_N runs each"
  echo
  echo "| method | seconds: median (min–max) | data loaded, s: median (min–max) | MB/s (median) | rows left in the root |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  echo "| raw binary \`COPY\` pipe into the hypertable + primary key | $(stats "${HT_RAW_RUNS[@]}") | $(stats "${HT_RAW_COPY_RUNS[@]}") | $(python3 -c "print(f'{$HT_BYTES/1e6/$HT_RAW:.0f}')") | $HT_ROOT_RAW |"
  echo "| livesync \`add_table(hypertable => true)\` ($HT_RANGES ranges, max_copy_workers = $HT_WORKERS) until copied | $(stats "${HT_LS_RUNS[@]}") | $(stats "${HT_LS_COPY_RUNS[@]}") | $(python3 -c "print(f'{$HT_BYTES/1e6/$HT_LS:.0f}')") | $HT_ROOT_LS |"
  echo
  echo "livesync into a hypertable vs the raw binary pipe into it (medians): $(python3 -c "print(f'{$HT_RAW/$HT_LS:.2f}x')"); run by run (raw_i / livesync_i): $(python3 -c "import sys; r, l = sys.argv[1].split(), sys.argv[2].split(); print(', '.join(f'{float(a)/float(b):.2f}x' for a, b in zip(r, l)))" "${HT_RAW_RUNS[*]}" "${HT_LS_RUNS[*]}"); rows on the target: $HT_ROWS_LS"
  echo "livesync's phases per run, s (add_table to copy start / loading the ranges / last range to copied, key built): ${HT_PHASES[*]}"
fi

# ---- Citus (only with Citus installed): a coordinator (the target) and 2 worker nodes ----------
# Copy: metrics into a table distributed by device_id, livesync vs a raw binary COPY pipe into the
# same distributed table (Citus's own COPY, fanned out to the shards), each with its primary key;
# BENCH_RUNS runs each, alternating. Apply: a table distributed by id, kept by livesync, and the
# same table kept by a native subscription in a plain table of the coordinator (native cannot
# write into a distributed table: its rows land in the coordinator's shell), each paused while
# the source runs a workload, then timed until its slot confirms the workload's end.
if [ -z "${BENCH_SKIP_CITUS:-}" ] && [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
  CW1=56434; CW2=56435
  init citus-w1 $CW1 "shared_preload_libraries = 'citus'
max_prepared_transactions = 50"
  init citus-w2 $CW2 "shared_preload_libraries = 'citus'
max_prepared_transactions = 50"
  cw() { local port=$1; shift; as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -U "$OSU" "$@"; }
  tgt -d postgres -c "ALTER SYSTEM SET shared_preload_libraries = citus, livesync" -c "ALTER SYSTEM SET max_prepared_transactions = 50"
  as_pg "$BIN/pg_ctl" -D "$W/target" -l "$W/target.log" -m fast -w restart >/dev/null
  citus_db() { # db: a fresh database on the coordinator and both worker nodes, nodes added
    for p in $CW1 $CW2; do cw $p -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; cw $p -d "$1" -c "CREATE EXTENSION citus" >/dev/null; done
    tgt -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
    tgt -d "$1" -c "CREATE EXTENSION citus" -c "SELECT citus_set_coordinator_host('127.0.0.1', $TP)" \
        -c "SELECT citus_add_node('127.0.0.1', $CW1)" -c "SELECT citus_add_node('127.0.0.1', $CW2)" \
        -c "SET citus.enable_ddl_propagation = off" -c "CREATE EXTENSION livesync" >/dev/null
  }
  CT_BYTES=$(src -d bench -At -c "SELECT pg_relation_size('metrics')")
  CT_DDL="$(echo "$SCHEMA" | sed -n '/CREATE TABLE metrics/,/PRIMARY KEY/p' | sed 's/, PRIMARY KEY (device_id, time)//');
          SELECT create_distributed_table('metrics', 'device_id');"
  CT_RAW_RUNS=(); CT_LS_RUNS=(); CT_RAW_COPY_RUNS=(); CT_LS_COPY_RUNS=(); CT_PHASES=()
  for run in $(seq 1 "${BENCH_RUNS:-3}"); do
    citus_db cbench
    tgt -d cbench -c "$CT_DDL" >/dev/null
    say "citus: raw binary pipe into the distributed table (run $run)"
    settle; t0=$(now)
    src -d bench -c "COPY metrics TO STDOUT (FORMAT binary)" | tgt -d cbench -c "COPY metrics FROM STDIN (FORMAT binary)"
    tc=$(now)
    tgt -d cbench -c "ALTER TABLE metrics ADD PRIMARY KEY (device_id, time)"
    t1=$(now)
    CT_RAW_RUNS+=("$(python3 -c "print($t1-$t0)")"); CT_RAW_COPY_RUNS+=("$(python3 -c "print($tc-$t0)")")
    say "citus: livesync add_table(distributed_by => 'device_id') (run $run)"
    citus_db cbench
    settle; t0=$(now)
    tgt -d cbench -c "SELECT livesync.add_connector('$SRC_CONNINFO')" >/dev/null
    tgt -d cbench -c "SELECT livesync.add_table('public.metrics', distributed_by => 'device_id')" >/dev/null 2>&1
    wait_sql cbench "SELECT bool_and(ranges_done = ranges_total AND ranges_total > 0) FROM livesync.table_progress"
    tc=$(now)
    wait_sql cbench "SELECT bool_and(state IN ('ready', 'catching up')) FROM livesync.table_progress"
    t1=$(now)
    CT_LS_RUNS+=("$(python3 -c "print($t1-$t0)")"); CT_LS_COPY_RUNS+=("$(python3 -c "print($tc-$t0)")")
    CT_ROWS_LS=$(tgt -d cbench -At -c "SELECT count(*) FROM metrics")
    # The coordinator's shell table must stay empty (its own file: a query would go to the shards).
    CT_SHELL_LS=$(tgt -d cbench -At -c "SELECT pg_relation_size('metrics')")
    CT_RANGES=$(tgt -d cbench -At -c "SELECT ranges_total FROM livesync.table_progress")
    CT_PHASES+=("$(tgt -d cbench -At -c "$PHASES_SQL")")
    CT_SHARDS=$(tgt -d cbench -At -c "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'metrics'::regclass")
    tgt -d cbench -c "SELECT livesync.drop_connector(name) FROM livesync.connectors" >/dev/null
  done

  # Apply: `readings`, 100,000 rows, on the source; distributed by id through livesync, a plain
  # table through a native subscription, both in database capply of the coordinator.
  src -d bench -c "DROP TABLE IF EXISTS readings" \
      -c "CREATE TABLE readings (id bigint PRIMARY KEY, device int NOT NULL, at timestamptz NOT NULL, v float8)" \
      -c "INSERT INTO readings SELECT i, i % 500, timestamptz '2026-01-01' + i * interval '1 s', random() FROM generate_series(1, 100000) i" \
      -c "DROP PUBLICATION IF EXISTS citus_native" -c "CREATE PUBLICATION citus_native FOR TABLE readings"
  citus_db capply
  tgt -d capply -c "CREATE TABLE readings (id bigint PRIMARY KEY, device int NOT NULL, at timestamptz NOT NULL, v float8)" \
      -c "SELECT create_distributed_table('readings', 'id')" -c "CREATE SCHEMA plain" \
      -c "CREATE TABLE plain.readings (id bigint PRIMARY KEY, device int NOT NULL, at timestamptz NOT NULL, v float8)" >/dev/null
  tgt -d capply -c "SELECT livesync.add_connector('$SRC_CONNINFO', 'citus')" -c "SELECT livesync.add_table('public.readings')" >/dev/null
  # The native subscription writes plain.readings: the publication's table is public.readings,
  # so the plain copy lives in its own database where public.readings is a plain table.
  tgt -d postgres -c "DROP DATABASE IF EXISTS cnative WITH (FORCE)" -c "CREATE DATABASE cnative"
  tgt -d cnative -c "CREATE TABLE readings (id bigint PRIMARY KEY, device int NOT NULL, at timestamptz NOT NULL, v float8)" \
      -c "CREATE SUBSCRIPTION citus_native CONNECTION 'host=127.0.0.1 port=$SP dbname=bench user=$OSU' PUBLICATION citus_native"
  wait_sql cnative "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"
  wait_sql capply "SELECT bool_and(state = 'ready') FROM livesync.table_progress"
  CT_SLOT=$(tgt -d capply -At -c "SELECT slot_name FROM livesync.connectors")
  citus_apply() { # label changes workload-function
    local label="$1" changes="$2"; shift 2
    tgt -d cnative -c "ALTER SUBSCRIPTION citus_native DISABLE"
    tgt -d capply -c "SELECT livesync.pause_connector('citus')" >/dev/null
    sleep 2
    "$@"
    local lsn; lsn=$(src -d bench -At -c "SELECT pg_current_wal_insert_lsn()")
    settle; local t0; t0=$(now); tgt -d cnative -c "ALTER SUBSCRIPTION citus_native ENABLE"
    src -d bench -c "$(poll_loop "SELECT confirmed_flush_lsn >= '$lsn' FROM pg_replication_slots WHERE slot_name = 'citus_native'")"
    local tn; tn=$(python3 -c "print($(now)-$t0)")
    settle; t0=$(now); tgt -d capply -c "SELECT livesync.resume_connector('citus')" >/dev/null
    src -d bench -c "$(poll_loop "SELECT confirmed_flush_lsn >= '$lsn' FROM pg_replication_slots WHERE slot_name = '$CT_SLOT'")"
    local tl; tl=$(python3 -c "print($(now)-$t0)")
    results+=("$(python3 -c "n=$changes; tn=$tn; tl=$tl; print(f'| $label | {n:,} | {tn:.1f} | {n/tn:,.0f} | {tl:.1f} | {n/tl:,.0f} | {tn/tl:.2f}x |')")")
  }
  w_citus_updates() {
    printf '\\set id random(1, 100000)\nUPDATE readings SET v = random() WHERE id = :id;\n' > "$W/cupd.sql"; chmod a+r "$W/cupd.sql"
    as_pg "$BIN/pgbench" -h "$SOCK" -p $SP -U "$OSU" -n -c 4 -t 5000 -f "$W/cupd.sql" bench >/dev/null 2>&1
  }
  w_citus_inserts() { src -d bench -c "INSERT INTO readings SELECT i, i % 500, timestamptz '2026-03-01' + i * interval '1 s', random() FROM generate_series(100001, 600000) i"; }
  results=()
  say "citus apply: 20,000 single-row UPDATE transactions"
  citus_apply "20,000 single-row UPDATE transactions (4 clients)" 20000 w_citus_updates
  say "citus apply: one 500,000-row INSERT transaction"
  citus_apply "one 500,000-row INSERT transaction" 500000 w_citus_inserts
  a=$(src -d bench -At -c "SELECT md5(string_agg(x::text, ',' ORDER BY x.id)) FROM readings x")
  b=$(tgt -d capply -At -c "SELECT md5(string_agg(x::text, ',' ORDER BY x.id)) FROM readings x")
  c=$(tgt -d cnative -At -c "SELECT md5(string_agg(x::text, ',' ORDER BY x.id)) FROM readings x")
  [ "$a" = "$b" ] && CT_APPLY_EQ="equal to the source" || CT_APPLY_EQ="DIFFERENT from the source"
  [ "$a" = "$c" ] || echo "WARNING: the native subscriber's readings differs from the source" >&2
  tgt -d capply -c "SELECT livesync.drop_connector(name) FROM livesync.connectors" >/dev/null
  tgt -d cnative -c "DROP SUBSCRIPTION citus_native"
  src -d bench -c "DROP PUBLICATION citus_native" -c "DROP TABLE readings"
  tgt -d postgres -c "ALTER SYSTEM RESET shared_preload_libraries" -c "ALTER SYSTEM RESET max_prepared_transactions"
  as_pg "$BIN/pg_ctl" -D "$W/target" -l "$W/target.log" -m fast -w restart >/dev/null
  for n in citus-w1 citus-w2; do as_pg "$BIN/pg_ctl" -D "$W/$n" -m fast -w stop >/dev/null; done

  stats() { python3 -c "import statistics, sys; v = list(map(float, sys.argv[1:])); print(f'{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})')" "$@"; }
  med() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
  CT_RAW=$(med "${CT_RAW_RUNS[@]}"); CT_LS=$(med "${CT_LS_RUNS[@]}")
  echo
  echo "### Citus: initial copy into a distributed table — metrics, $(python3 -c "print(round($CT_BYTES/1e6))") MB, $CT_SHARDS shards on 2 worker nodes, ${BENCH_RUNS:-3} runs each"
  echo
  echo "| method | seconds: median (min–max) | data loaded, s: median (min–max) | MB/s (median) |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| raw binary \`COPY\` pipe into the distributed table + primary key | $(stats "${CT_RAW_RUNS[@]}") | $(stats "${CT_RAW_COPY_RUNS[@]}") | $(python3 -c "print(f'{$CT_BYTES/1e6/$CT_RAW:.0f}')") |"
  echo "| livesync \`add_table(distributed_by => 'device_id')\` ($CT_RANGES ranges) until copied | $(stats "${CT_LS_RUNS[@]}") | $(stats "${CT_LS_COPY_RUNS[@]}") | $(python3 -c "print(f'{$CT_BYTES/1e6/$CT_LS:.0f}')") |"
  echo
  echo "livesync into a distributed table vs the raw binary pipe into it (medians): $(python3 -c "print(f'{$CT_RAW/$CT_LS:.2f}x')"); run by run: $(python3 -c "import sys; r, l = sys.argv[1].split(), sys.argv[2].split(); print(', '.join(f'{float(a)/float(b):.2f}x' for a, b in zip(r, l)))" "${CT_RAW_RUNS[*]}" "${CT_LS_RUNS[*]}"); rows through the distributed table: $CT_ROWS_LS; bytes in the coordinator's shell table: $CT_SHELL_LS"
  echo "livesync's phases per run, s (add_table to copy start / loading the ranges / last range to copied, key built): ${CT_PHASES[*]}"
  echo
  echo "### Citus: change apply into a distributed table (from resuming until the source slot confirms the workload's end)"
  echo
  echo "| workload | changes | native into a plain table, s | changes/s | livesync into the distributed table, s | changes/s | livesync vs native |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${results[@]}"
  echo
  echo "livesync's distributed readings after both workloads: $CT_APPLY_EQ"
  results=()
fi

if [ -z "${BENCH_SKIP_APPLY:-}" ]; then
  # ---- apply: both replicas synced on the same tables, paused, workload, resumed ---------------
  src -d postgres -c "DROP DATABASE IF EXISTS apply" -c "CREATE DATABASE apply"
  as_pg "$BIN/pgbench" -h "$SOCK" -p $SP -U "$OSU" -i -s 10 -q apply >/dev/null 2>&1
  src -d apply -c "CREATE TABLE ts (device_id int, time timestamptz, v float8, PRIMARY KEY (device_id, time))" \
               -c "CREATE TABLE big (id int8 PRIMARY KEY, v text)"
  APPLY_TABLES="ts big pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
  for d in native ls; do tgt -d postgres -c "DROP DATABASE IF EXISTS a_$d WITH (FORCE)" -c "CREATE DATABASE a_$d"; done
  as_pg "$BIN/pg_dump" -h "$SOCK" -p $SP -U "$OSU" -s apply | tgt -d a_native >/dev/null
  tgt -d a_native -c "TRUNCATE $(echo $APPLY_TABLES | sed 's/ /, /g')"
  src -d apply -c "CREATE PUBLICATION apply_native FOR TABLE $(echo $APPLY_TABLES | sed 's/ /, /g')"
  tgt -d a_native -c "CREATE SUBSCRIPTION apply_native CONNECTION 'host=127.0.0.1 port=$SP dbname=apply user=$OSU' PUBLICATION apply_native"
  tgt -d a_ls -c "CREATE EXTENSION livesync" -c "SELECT livesync.add_connector('host=127.0.0.1 port=$SP dbname=apply user=$OSU', 'apply')" >/dev/null
  for t in $APPLY_TABLES; do tgt -d a_ls -c "SELECT livesync.add_table('public.$t')" >/dev/null; done
  wait_sql a_native "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"
  wait_sql a_ls "SELECT count(*) = 6 AND bool_and(state = 'ready') FROM livesync.table_progress"
  LS_SLOT=$(tgt -d a_ls -At -c "SELECT slot_name FROM livesync.connectors")

  rss_sampler() { # pgrep pattern, file: peak RssAnon (kB) of the matching processes, every 0.2 s
    local peak=0 kb pid
    echo 0 > "$2"
    while :; do
      for pid in $(pgrep -f "$1"); do
        kb=$(awk '/RssAnon/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
        if [ "${kb:-0}" -gt "$peak" ]; then peak=$kb; echo "$peak" > "$2"; fi
      done
      sleep 0.2
    done
  }
  apply_case() { # label, workload (SQL file or pgbench args via function)
    local label="$1"; shift
    local label_short="$1"
    tgt -d a_native -c "ALTER SUBSCRIPTION apply_native DISABLE"
    tgt -d a_ls -c "SELECT livesync.pause_connector('apply')" >/dev/null
    sleep 2
    "$@"
    local lsn changes
    lsn=$(src -d apply -At -c "SELECT pg_current_wal_insert_lsn()")
    changes="$CHANGES"
    for who in native ls; do
      local slot t0 t1 pattern
      if [ $who = native ]; then
        slot=apply_native; pattern='logical replication worker for subscription [0-9]+ *$'
        settle; t0=$(now); tgt -d a_native -c "ALTER SUBSCRIPTION apply_native ENABLE"
      else
        slot=$LS_SLOT; pattern='livesync connector'
        settle
        [ -n "${BENCH_PERF:-}" ] && { perf record -a -g -o "$BENCH_PERF.$label_short" >/dev/null 2>&1 & perf_pid=$!; }
        t0=$(now); tgt -d a_ls -c "SELECT livesync.resume_connector('apply')" >/dev/null
      fi
      rss_sampler "$pattern" "$W/rss.$who" & local sampler=$!
      src -d apply -c "$(poll_loop "SELECT confirmed_flush_lsn >= '$lsn' FROM pg_replication_slots WHERE slot_name = '$slot'")"
      t1=$(now)
      kill $sampler; wait $sampler 2>/dev/null || true
      local peak; peak=$(cat "$W/rss.$who")
      eval "T_$who=$(python3 -c "print($t1-$t0)")"
      eval "RSS_$who=$peak"
      [ $who = native ] && tgt -d a_native -c "ALTER SUBSCRIPTION apply_native DISABLE"
      [ $who = ls ] && [ -n "${BENCH_PERF:-}" ] && { kill -INT $perf_pid; wait $perf_pid || true; }
    done
    tgt -d a_native -c "ALTER SUBSCRIPTION apply_native ENABLE"
    results+=("$(python3 -c "
n=$changes; tn=$T_native; tl=$T_ls
print(f'| $label | {n} | {tn:.1f} | {n/tn:,.0f} | {$RSS_native/1024:.0f} | {tl:.1f} | {n/tl:,.0f} | {$RSS_ls/1024:.0f} | {tn/tl:.2f}x |')")")
  }
  w_ts_multi() { CHANGES=1000000; src -d apply -c "INSERT INTO ts SELECT d, timestamptz '2026-01-01' + i * interval '1 s', random() FROM generate_series(1, 1000) d, generate_series(1, 1000) i" ; }
  w_ts_single() {
    CHANGES=200000
    printf 'INSERT INTO ts VALUES (:client_id + 5000, now() + random() * interval %s, random());\n' "'1000 days'" > "$W/single.sql"
    chmod a+r "$W/single.sql"
    as_pg "$BIN/pgbench" -h "$SOCK" -p $SP -U "$OSU" -n -c 4 -t 50000 -f "$W/single.sql" apply >/dev/null 2>&1
  }
  w_tpcb() { CHANGES=$((80000 * 4)); as_pg "$BIN/pgbench" -h "$SOCK" -p $SP -U "$OSU" -n -c 4 -t 20000 apply >/dev/null 2>&1; }
  w_big() { CHANGES=2000000; src -d apply -c "INSERT INTO big SELECT i, md5(i::text) FROM generate_series(1, 2000000) i"; }

  CASES=" ${BENCH_APPLY_CASES:-a1 a2 b c} "
  case "$CASES" in *" a1 "*) say "apply (a) insert-only time series, multi-row transactions"; apply_case "(a) time series, 1000-row transactions" w_ts_multi;; esac
  case "$CASES" in *" a2 "*) say "apply (a) insert-only time series, single-row transactions"; apply_case "(a) time series, single-row transactions (4 clients)" w_ts_single;; esac
  case "$CASES" in *" b "*) say "apply (b) pgbench TPC-B"; apply_case "(b) pgbench TPC-B-like (4 changes/txn, 4 clients)" w_tpcb;; esac
  case "$CASES" in *" c "*) say "apply (c) one 2-million-row transaction"; apply_case "(c) one 2,000,000-row transaction" w_big;; esac

  # equality check: livesync's copy of every table equals the source
  for t in $APPLY_TABLES; do
    a=$(src -d apply -At -c "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM $t x")
    b=$(tgt -d a_ls -At -c "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM $t x")
    [ "$a" = "$b" ] || echo "WARNING: livesync's $t differs from the source" >&2
  done

  echo
  echo "### Change apply (from enabling the stream until the source slot confirms the workload's end LSN)"
  echo
  echo "| workload | changes | native s | native changes/s | native peak private RSS MB | livesync s | livesync changes/s | livesync peak private RSS MB | livesync vs native |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${results[@]}"
fi

# The oldest snapshot held on the source, in seconds: a transaction's (copy sessions) or, for a
# walsender exporting one, its connection's age (each export is a connection of its own).
SNAPAGE_SQL="SELECT coalesce(extract(epoch FROM max(now() - coalesce(xact_start, backend_start))), 0)::int FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()"

if [ -z "${BENCH_SKIP_LAG:-}" ]; then
  # ---- lag: a synced table receiving 200 single-row transactions/s while metrics is copied ------
  # beside the connector's stream (issue 11, case (a)). Each row carries its source commit-ish time
  # (clock_timestamp() at insert); the target's own column `arrived` defaults to clock_timestamp()
  # when the row is applied (within the apply transaction, before its commit). Same machine, same
  # clock. Also samples the oldest transaction holding a snapshot on the source (case (c)).
  say "lag of a synced table while metrics is copied beside the stream"
  src -d bench -c "DROP TABLE IF EXISTS ticks" -c "CREATE TABLE ticks (id bigserial PRIMARY KEY, created timestamptz NOT NULL DEFAULT clock_timestamp())"
  tgt -d postgres -c "DROP DATABASE IF EXISTS lag WITH (FORCE)" -c "CREATE DATABASE lag"
  tgt -d lag -c "CREATE EXTENSION livesync" \
             -c "CREATE TABLE ticks (id bigint PRIMARY KEY, created timestamptz NOT NULL, arrived timestamptz DEFAULT clock_timestamp())" \
             -c "SELECT livesync.add_connector('$SRC_CONNINFO', 'lag')" -c "SELECT livesync.add_table('public.ticks')" >/dev/null
  wait_sql lag "SELECT bool_and(state = 'ready') FROM livesync.table_progress"
  printf 'INSERT INTO ticks DEFAULT VALUES;\n' > "$W/tick.sql"; chmod a+r "$W/tick.sql"
  as_pg "$BIN/pgbench" -h "$SOCK" -p $SP -U "$OSU" -n -c 1 -R 200 -T 600 -f "$W/tick.sql" bench >/dev/null 2>&1 & tick_pid=$!
  ( peak=0; while :; do
      a=$(src -d bench -At -c "$SNAPAGE_SQL" 2>/dev/null || echo 0)
      [ "${a:-0}" -gt "$peak" ] && peak=$a && echo "$peak" > "$W/snapage"; sleep 1; done ) & age_pid=$!
  echo 0 > "$W/snapage"
  sleep 10
  t_add=$(tgt -d lag -At -c "SELECT clock_timestamp()")
  t0=$(now)
  tgt -d lag -c "SELECT livesync.add_table('public.metrics')" >/dev/null
  wait_sql lag "SELECT state = 'ready' FROM livesync.table_progress WHERE source_table = 'public.metrics'"
  t1=$(now)
  t_ready=$(tgt -d lag -At -c "SELECT clock_timestamp()")
  sleep 5
  kill $tick_pid $age_pid 2>/dev/null || true; wait $tick_pid $age_pid 2>/dev/null || true
  wait_sql lag "SELECT count(*) > 0 FROM ticks"
  lagq() { # where -> "p99 max n"
    tgt -d lag -At -F ' ' -c "SELECT round((extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY arrived - created)) * 1000)::numeric), round((extract(epoch FROM max(arrived - created)) * 1000)::numeric), count(*) FROM ticks WHERE $1"
  }
  read -r B99 BMAX BN <<< "$(lagq "created < '$t_add'")"
  read -r D99 DMAX DN <<< "$(lagq "created >= '$t_add' AND created < '$t_ready'")"
  echo
  echo "### Lag of a synced table (200 single-row transactions/s) while metrics is copied beside the stream"
  echo
  echo "| window | rows | p99 lag ms | worst lag ms |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| before the copy (10 s) | $BN | $B99 | $BMAX |"
  echo "| during the copy of metrics ($(python3 -c "print(f'{$t1-$t0:.1f}')") s, add_table until ready) | $DN | $D99 | $DMAX |"
  echo
  echo "Oldest transaction holding a snapshot on the source during the copy: $(cat "$W/snapage") s"
fi

if [ -z "${BENCH_SKIP_RESUME:-}" ]; then
  # ---- (b) a target crash halfway through metrics' copy: what is copied again -------------------
  # Just before the crash (`pg_ctl stop -m immediate`), the COPYs in flight report the bytes they
  # have loaded (pg_stat_progress_copy): those are lost with the crash and read again; the ranges
  # committed before it are kept. Reported against one range per copy worker (the goal).
  say "a target crash halfway through metrics' copy"
  MET=$(src -d bench -At -c "SELECT pg_relation_size('metrics')")
  tgt -d postgres -c "DROP DATABASE IF EXISTS crash WITH (FORCE)" -c "CREATE DATABASE crash"
  tgt -d crash -c "CREATE EXTENSION livesync" -c "SELECT livesync.add_connector('$SRC_CONNINFO', 'crash')" >/dev/null
  RANGE_MB=$(tgt -d crash -At -c "SHOW livesync.copy_range_mb" | tr -dc 0-9)
  settle; t0=$(now)
  tgt -d crash -c "SELECT livesync.add_table('public.metrics')" >/dev/null
  # Crash at 60% of the table's bytes (loaded or in flight): a moment unrelated to range ends.
  wait_sql crash "SELECT coalesce((SELECT sum(bytes) FROM livesync.copy_range WHERE done), 0) + coalesce((SELECT sum(bytes_processed) FROM pg_stat_progress_copy), 0) >= $MET * 0.6"
  read -r INFLIGHT WORKERS <<< "$(tgt -d crash -At -F ' ' -c "SELECT coalesce(sum(p.bytes_processed), 0), count(*) FROM pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'livesync copy'")"
  as_pg "$BIN/pg_ctl" -D "$W/target" -m immediate -w stop >/dev/null
  t_crash=$(now)
  as_pg "$BIN/pg_ctl" -D "$W/target" -l "$W/target.log" -w start >/dev/null
  KEPT=$(tgt -d crash -At -c "SELECT coalesce(sum(bytes), 0) FROM livesync.copy_range WHERE done")
  wait_sql crash "SELECT state = 'ready' FROM livesync.table_progress WHERE source_table = 'public.metrics'"
  t1=$(now)
  a=$(src -d bench -At -c "SELECT count(*), md5(string_agg(x::text, ',' ORDER BY device_id, time)) FROM metrics x")
  b=$(tgt -d crash -At -c "SELECT count(*), md5(string_agg(x::text, ',' ORDER BY device_id, time)) FROM metrics x")
  [ "$a" = "$b" ] || echo "WARNING: metrics differs from the source after the crash" >&2
  echo
  echo "### A target crash halfway through the copy of metrics ($(python3 -c "print(round($MET/1e6))") MB)"
  echo
  echo "| copy range | copy workers in flight | kept at the crash MB | in flight (copied again) MB | copied again / (workers × range) | add_table to crash s | crash to ready s | rows equal |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  echo "| ${RANGE_MB} MB | $WORKERS | $(python3 -c "print(round($KEPT/1e6))") | $(python3 -c "print(round($INFLIGHT/1e6))") | $(python3 -c "print(f'{$INFLIGHT/(max($WORKERS,1)*$RANGE_MB*1048576):.2f}')") | $(python3 -c "print(f'{$t_crash-$t0:.1f}')") | $(python3 -c "print(f'{$t1-$t_crash:.1f}')") | $([ "$a" = "$b" ] && echo yes || echo NO) |"

  # ---- (c) the oldest source snapshot during a copy, with and without a short max age -----------
  # metrics copied in 32 MB ranges: with livesync.max_snapshot_age = 5 s the ranges not started
  # yet move to a fresh snapshot every 5 s; a range being read keeps its own to its end.
  echo
  echo "### The oldest snapshot on the source while metrics is copied (32 MB ranges)"
  echo
  echo "| livesync.max_snapshot_age | copy s (add_table to ready) | oldest snapshot s | snapshots exported |"
  echo "| ---: | ---: | ---: | ---: |"
  for age in 300 5; do
    tgt -d postgres -c "ALTER SYSTEM SET livesync.max_snapshot_age = $age" -c "ALTER SYSTEM SET livesync.copy_range_mb = 32" -c "SELECT pg_reload_conf()" >/dev/null
    tgt -d postgres -c "DROP DATABASE IF EXISTS age WITH (FORCE)" -c "CREATE DATABASE age"
    tgt -d age -c "CREATE EXTENSION livesync" -c "SELECT livesync.add_connector('$SRC_CONNINFO', 'age')" >/dev/null
    echo 0 > "$W/snapage"
    ( peak=0; while :; do
        a=$(src -d bench -At -c "$SNAPAGE_SQL" 2>/dev/null || echo 0)
        [ "${a:-0}" -gt "$peak" ] && peak=$a && echo "$peak" > "$W/snapage"; sleep 0.5; done ) & age_pid=$!
    settle; t0=$(now)
    tgt -d age -c "SELECT livesync.add_table('public.metrics')" >/dev/null
    wait_sql age "SELECT state = 'ready' FROM livesync.table_progress WHERE source_table = 'public.metrics'"
    t1=$(now)
    kill $age_pid 2>/dev/null || true; wait $age_pid 2>/dev/null || true
    SNAPS=$(grep -c "move to a fresh snapshot" "$W/target.log" || true)
    echo "| $age s | $(python3 -c "print(f'{$t1-$t0:.1f}')") | $(cat "$W/snapage") | $((SNAPS + 1)) |"
    : > "$W/target.log"
  done
  tgt -d postgres -c "ALTER SYSTEM RESET livesync.max_snapshot_age" -c "ALTER SYSTEM RESET livesync.copy_range_mb" -c "SELECT pg_reload_conf()" >/dev/null
fi

if [ -z "${BENCH_SKIP_VERIFY:-}" ]; then
  # ---- verify_table (issue 13, item 3): metrics verified while a synced table takes 200 single-
  # row transactions/s, against one full scan of metrics on the source that hashes every row's
  # text (the reference). BENCH_RUNS runs of each, alternating. Then three rows changed on the
  # target behind livesync's back, verified once more (the differing ranges read row by row).
  say "verify_table on metrics against one full scan of it on the source"
  MET=$(src -d bench -At -c "SELECT pg_relation_size('metrics')")
  src -d bench -c "DROP TABLE IF EXISTS ticks" -c "CREATE TABLE ticks (id bigserial PRIMARY KEY, created timestamptz NOT NULL DEFAULT clock_timestamp())"
  tgt -d postgres -c "DROP DATABASE IF EXISTS verify WITH (FORCE)" -c "CREATE DATABASE verify"
  tgt -d verify -c "CREATE EXTENSION livesync" -c "SELECT livesync.add_connector('$SRC_CONNINFO', 'verify')" \
                -c "SELECT livesync.add_table('public.ticks')" -c "SELECT livesync.add_table('public.metrics')" >/dev/null
  wait_sql verify "SELECT bool_and(state = 'ready') AND count(*) = 2 FROM livesync.table_progress"
  tgt -d verify -c "VACUUM ANALYZE metrics" >/dev/null
  printf 'INSERT INTO ticks DEFAULT VALUES;\n' > "$W/tick.sql"; chmod a+r "$W/tick.sql"
  as_pg "$BIN/pgbench" -h "$SOCK" -p $SP -U "$OSU" -n -c 1 -R 200 -T 3600 -f "$W/tick.sql" bench >/dev/null 2>&1 & tick_pid=$!
  RUNS="${BENCH_RUNS:-3}"
  vrows=()
  for i in $(seq 1 "$RUNS"); do
    settle; t0=$(now)
    src -d bench -At -c "SELECT sum(hashtext(t::text)) FROM metrics t" >/dev/null
    t1=$(now)
    settle
    v=$(tgt -d verify -At -F ' ' -c "SELECT state, duration_ms, pause_ms, ranges, rows_source, differences FROM livesync.verify_table('public.metrics')")
    read -r VSTATE VMS VPAUSE VRANGES VROWS VDIFF <<< "$v"
    vrows+=("$(python3 -c "print(f'| {$i} | {$t1-$t0:.1f} | {$VMS/1000:.1f} | {$VMS/1000/($t1-$t0):.2f} | {$VPAUSE:.2f} | $VRANGES | $VROWS | $VSTATE, $VDIFF differences |')")")
    echo "$(python3 -c "print($VMS/1000/($t1-$t0))")" >> "$W/vratios"
  done
  tgt -d verify -c "SET session_replication_role = replica" \
      -c "UPDATE metrics SET cpu = -1 WHERE (device_id, time) = (SELECT device_id, time FROM metrics WHERE device_id = 7 LIMIT 1)" \
      -c "DELETE FROM metrics WHERE (device_id, time) = (SELECT device_id, time FROM metrics WHERE device_id = 1500 LIMIT 1)" \
      -c "INSERT INTO metrics (device_id, time, cpu) VALUES (99999, now(), 1)" >/dev/null
  settle
  v=$(tgt -d verify -At -F ' ' -c "SELECT state, duration_ms, pause_ms, ranges, rows_source, differences FROM livesync.verify_table('public.metrics')")
  read -r VSTATE VMS VPAUSE VRANGES VROWS VDIFF <<< "$v"
  vrows+=("$(python3 -c "print(f'| 3 rows changed on the target | — | {$VMS/1000:.1f} | — | {$VPAUSE:.2f} | $VRANGES | $VROWS | $VSTATE, $VDIFF differences |')")")
  kill $tick_pid 2>/dev/null || true; wait $tick_pid 2>/dev/null || true
  echo
  echo "### verify_table on metrics ($(python3 -c "print(round($MET/1e6))") MB) while a synced table takes 200 transactions/s"
  echo
  echo "| run | full scan on the source s | verify_table s | verify / scan | stream pause ms | ranges | rows | result |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for r in "${vrows[@]}"; do echo "$r"; done
  echo
  echo "verify / scan, median of $RUNS: $(python3 -c "
import statistics; v=[float(x) for x in open('$W/vratios')]; print(f'{statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})')")"
  rm -f "$W/vratios"
fi
