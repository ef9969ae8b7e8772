//! TimescaleDB targets: hypertables created by `add_table`, rows landing in chunks (never in the
//! root) through the initial copy and the stream, UPDATEs that move rows between chunks,
//! compressed chunks, continuous aggregates after backfills, the time-column suggestion, and
//! source hypertables.
//!
//! TimescaleDB is in no package registry here: these tests need it installed in the PostgreSQL
//! under test and print a SKIPPED banner (and pass) when it is not. Tested with 2.28.3.

use std::io::Write;
use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A test database on the TimescaleDB clusters, or None (with a loud banner) without TimescaleDB.
fn ts_db(test: &str) -> Option<TestDb<'static>> {
    if !timescaledb_installed() {
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n**********************************************************************\n\
             SKIPPED timescale::{test}: TimescaleDB is not installed in this PostgreSQL\n\
             (no timescaledb.so in pg_config --pkglibdir). Install TimescaleDB 2.28\n\
             for PostgreSQL 15 to run the hypertable tests.\n\
             **********************************************************************\n"
        );
        return None;
    }
    let db = TestDb::on(timescale_source(), timescale_target(), test);
    db.tgt("CREATE EXTENSION timescaledb");
    Some(db)
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.tgt(sql)[0].int("n")
}

/// The hypertable's root holds no rows of its own (they all went to chunks).
fn assert_root_empty(db: &TestDb, rel: &str) {
    let n = count(db, &format!("SELECT count(*) AS n FROM ONLY {rel}"));
    assert_eq!(
        n, 0,
        "{n} rows of {rel} landed in the hypertable's root instead of its chunks"
    );
}

fn chunks(db: &TestDb, rel: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) AS n FROM show_chunks('{rel}')"),
    )
}

const METRICS: &str = "
    CREATE TABLE metrics (device int NOT NULL, time timestamptz NOT NULL, v float8, note text,
                          PRIMARY KEY (device, time));
    INSERT INTO metrics
    SELECT g % 20, timestamptz '2026-01-01 00:00+00' + g * interval '1 minute', g / 7.0,
           repeat('n', 40) || g
      FROM generate_series(1, 80000) g;
    ANALYZE metrics;";

#[test]
fn hypertable_copy_and_stream_land_in_chunks() {
    let Some(db) = ts_db("ht_copy_stream") else {
        return;
    };
    db.src(METRICS);
    db.src(
        "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, payload text);
         INSERT INTO events SELECT g, timestamptz '2026-03-01 00:00+00' + g * interval '10 minutes', 'p' || g
           FROM generate_series(1, 5000) g;
         ANALYZE events;",
    );
    db.add_su_connector("c");
    let out = db.target_sql(
        "SELECT livesync.add_table('metrics', hypertable => true, chunk_interval => '7 days')",
    );
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    out.ok("add_table(metrics, hypertable => true)");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("hypertable partitioned by \"time\" in chunks of 7 days")),
        "{notices:?}"
    );
    // No time column given: the suggestion ("at") is used; the source key lacks it, so the
    // target's key gets it, and the user is told.
    let out = db.target_sql("SELECT livesync.add_table('events', hypertable => true)");
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    out.ok("add_table(events, hypertable => true)");
    assert!(
        notices.iter().any(|n| n.contains("partitioned by \"at\"")),
        "{notices:?}"
    );
    assert!(
        notices.iter().any(|n| n.contains("will be (id, at)")),
        "{notices:?}"
    );

    let p = db.wait_ready("public.metrics");
    assert!(
        p.int("ranges_total") > 1,
        "metrics should be copied as several ranges: {p:?}"
    );
    db.wait_ready("public.events");
    for rel in ["metrics", "events"] {
        assert_root_empty(&db, rel);
    }
    assert!(
        chunks(&db, "metrics") >= 8,
        "80000 minutes over 7-day chunks"
    );
    db.assert_same(&Compare::same("metrics", "device, time"));
    db.assert_same(&Compare::same("events", "id"));
    let key = db.tgt(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'p'",
    );
    assert_eq!(key[0].text("def"), "PRIMARY KEY (id, at)");

    // The stream: new chunks (future and past), plain updates, updates that move rows to
    // other chunks, key changes, deletes, inside and across transactions.
    db.src(
        "INSERT INTO metrics SELECT g % 20, timestamptz '2027-06-01 00:00+00' + g * interval '1 hour', -g, 'future'
           FROM generate_series(1, 500) g;
         INSERT INTO metrics SELECT g % 20, timestamptz '2025-01-01 00:00+00' + g * interval '1 hour', -g, 'past'
           FROM generate_series(1, 500) g;
         UPDATE metrics SET v = v * 2 WHERE time < '2026-01-03';
         UPDATE metrics SET time = time + interval '90 days' WHERE time >= '2026-01-10' AND time < '2026-01-10 02:00';
         UPDATE metrics SET device = device + 100 WHERE time >= '2026-01-11' AND time < '2026-01-11 01:00';
         BEGIN;
           DELETE FROM metrics WHERE time >= '2026-01-12' AND time < '2026-01-12 03:00';
           UPDATE metrics SET time = time - interval '1 year', note = 'moved back' WHERE time >= '2026-01-13' AND time < '2026-01-13 00:30';
           INSERT INTO metrics VALUES (7, '2026-01-12 01:00+00', 1, 'reinserted');
         COMMIT;
         UPDATE events SET at = at + interval '30 days', payload = 'later' WHERE id % 10 = 0;
         DELETE FROM events WHERE id % 7 = 0;",
    );
    db.wait_all_same(
        &[
            Compare::same("metrics", "device, time"),
            Compare::same("events", "id"),
        ],
        WAIT,
    );
    for rel in ["metrics", "events"] {
        assert_root_empty(&db, rel);
    }
    let p = db.progress_when("public.metrics", |r| r.int("changes_applied") > 1000);
    assert_eq!(p.text("state"), "ready", "{p:?}");
    assert!(p.int("changes_applied") > 1000, "{p:?}");
    // verify_table reads a hypertable through its root, chunks and all (issue 13).
    for t in ["metrics", "events"] {
        let v = db
            .target_sql(&format!(
                "SELECT * FROM livesync.verify_table('public.{t}')"
            ))
            .ok("verify_table");
        assert_eq!(v[0].text("state"), "equal", "{v:?}");
        assert!(
            v[0].int("rows_source") > 0 && v[0].int("rows_source") == v[0].int("rows_target"),
            "{v:?}"
        );
    }
}

#[test]
fn compressed_chunks_and_continuous_aggregates_stay_correct() {
    let Some(db) = ts_db("ht_columnstore_cagg") else {
        return;
    };
    db.src(METRICS);
    db.add_su_connector("c");
    db.target_sql(
        "SELECT livesync.add_table('metrics', hypertable => true, chunk_interval => '7 days')",
    )
    .ok("add_table");
    db.wait_ready("public.metrics");

    // Columnstore on the target, every chunk compressed; a continuous aggregate over it.
    db.tgt(
        "ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device')",
    );
    let compressed = count(
        &db,
        "SELECT count(compress_chunk(c)) AS n FROM show_chunks('metrics') c",
    );
    assert!(compressed >= 8, "{compressed} chunks compressed");
    db.tgt(
        "CREATE MATERIALIZED VIEW daily WITH (timescaledb.continuous) AS
           SELECT time_bucket('1 day', time) AS day, device, count(*) AS n, sum(v::numeric) AS s, max(note) AS m
             FROM metrics GROUP BY 1, 2 WITH NO DATA",
    );
    db.tgt("CALL refresh_continuous_aggregate('daily', NULL, NULL)");
    let source_daily =
        "(SELECT date_bin('1 day', time, timestamptz '2000-01-01 00:00+00') AS day, device,
                                count(*) AS n, sum(v::numeric) AS s, max(note) AS m
                           FROM metrics GROUP BY 1, 2)";
    let cmp = Compare {
        source: source_daily.into(),
        target: "daily".into(),
        order_by: "day, device".into(),
    };
    db.assert_same(&cmp);

    // Backfill into compressed chunks: inserts, updates (values, keys, times), deletes.
    db.src(
        "INSERT INTO metrics SELECT g % 20, timestamptz '2026-01-05 00:00:30+00' + g * interval '1 minute', 1000 + g, 'backfill'
           FROM generate_series(1, 3000) g;
         UPDATE metrics SET v = 42, note = 'updated' WHERE time >= '2026-01-20' AND time < '2026-01-20 02:00';
         UPDATE metrics SET device = device + 100 WHERE time >= '2026-01-21' AND time < '2026-01-21 00:30';
         UPDATE metrics SET time = time + interval '15 days 15 seconds' WHERE time >= '2026-01-22' AND time < '2026-01-22 00:30';
         DELETE FROM metrics WHERE time >= '2026-01-25' AND time < '2026-01-25 05:00';",
    );
    db.wait_same(&Compare::same("metrics", "device, time"), WAIT);
    assert_root_empty(&db, "metrics");
    let p = db.progress("public.metrics");
    assert_eq!(p.text("state"), "ready", "{p:?}");

    // The backfilled changes invalidated the aggregate's buckets: a refresh makes it equal the
    // same aggregate computed on the source.
    db.tgt("CALL refresh_continuous_aggregate('daily', NULL, NULL)");
    db.assert_same(&cmp);
}

#[test]
fn time_column_suggestion_and_hypertable_errors() {
    let Some(db) = ts_db("ht_suggest_errors") else {
        return;
    };
    db.src(
        "CREATE TABLE m (id bigint, created timestamp NOT NULL, time timestamptz NOT NULL, v int, PRIMARY KEY (id, time));
         INSERT INTO m SELECT g, timestamp '2026-01-01' + random() * interval '30 days',
                              timestamptz '2026-01-01 00:00+00' + g * interval '1 second', g
           FROM generate_series(1, 2000) g;
         ANALYZE m;
         CREATE TABLE no_time (id int PRIMARY KEY, name text, n int);
         CREATE TABLE nullable_time (id int PRIMARY KEY, seen timestamptz);
         CREATE TABLE by_int (id int PRIMARY KEY, epoch_ms bigint NOT NULL);
         INSERT INTO by_int SELECT g, 1700000000000 + g * 1000 FROM generate_series(1, 100) g;",
    );
    db.add_su_connector("c");

    let s = db.tgt("SELECT * FROM livesync.suggest_time_column('m')");
    assert_eq!(s[0].text("time_column"), "time", "{s:?}");
    assert!(s[0].text("reason").contains("in the primary key"), "{s:?}");
    assert!(!s[0].is_null("chunk_interval"), "{s:?}");
    let s = db.tgt("SELECT * FROM livesync.suggest_time_column('no_time')");
    assert!(s[0].is_null("time_column"), "{s:?}");
    assert!(
        s[0].text("reason")
            .contains("no column of type timestamptz"),
        "{s:?}"
    );
    let s = db.tgt("SELECT * FROM livesync.suggest_time_column('nullable_time')");
    assert!(
        s[0].text("reason").contains("\"seen\" can be NULL"),
        "{s:?}"
    );

    let e = db
        .target_sql("SELECT livesync.add_table('no_time', hypertable => true)")
        .err("no time column");
    assert_sqlstate(&e, "42703");
    assert_message_eq(
        &e,
        "source table \"public\".\"no_time\" has no column to partition a hypertable by",
    );
    assert!(e.hint().contains("time_column =>"), "{e}");
    let e = db
        .target_sql("SELECT livesync.add_table('nullable_time', time_column => 'seen')")
        .err("nullable time column");
    assert_sqlstate(&e, "55000");
    assert!(e.hint().contains("SET NOT NULL"), "{e}");
    let e = db
        .target_sql("SELECT livesync.add_table('no_time', time_column => 'name')")
        .err("text time column");
    assert_sqlstate(&e, "42804");
    let e = db
        .target_sql("SELECT livesync.add_table('m', hypertable => false, time_column => 'time')")
        .err("time_column without hypertable");
    assert_sqlstate(&e, "22023");
    let e = db
        .target_sql(
            "SELECT livesync.add_table('m', hypertable => true, chunk_interval => 'fortnight')",
        )
        .err("bad interval");
    assert_sqlstate(&e, "22023");
    // Nothing of the failed calls stayed behind.
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM livesync.table_progress"),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM pg_class WHERE relname IN ('m', 'no_time', 'nullable_time')"
        ),
        0
    );

    // TimescaleDB refuses to make a published table a hypertable: said before anything happens.
    db.tgt("CREATE PUBLICATION everything FOR ALL TABLES");
    let e = db
        .target_sql("SELECT livesync.add_table('m', hypertable => true)")
        .err("FOR ALL TABLES publication");
    assert_sqlstate(&e, "55000");
    assert!(e.detail().contains("\"everything\""), "{e}");
    db.tgt("DROP PUBLICATION everything");

    // Without hypertable => …, TimescaleDB on the target earns a suggestion, not a hypertable.
    let out = db.target_sql("SELECT livesync.add_table('m')");
    let notice = out
        .notices
        .iter()
        .find(|n| n.message.contains("would suit a hypertable"))
        .cloned();
    out.ok("add_table(m)");
    let notice = notice.expect("a NOTICE suggesting a hypertable");
    assert!(notice.message.contains("\"time\""), "{notice}");
    assert!(notice.hint().contains("hypertable => true"), "{notice}");
    db.wait_ready("public.m");
    assert_eq!(chunks_or_zero(&db, "m"), 0);

    // Integer time: the width is in the column's units, not an interval.
    let e = db
        .target_sql("SELECT livesync.add_table('by_int', time_column => 'epoch_ms', chunk_interval => '1 day')")
        .err("interval width for an integer time column");
    assert_sqlstate(&e, "22023");
    assert_message_eq(
        &e,
        "chunk_interval \"1 day\" is not an integer, but time column \"epoch_ms\" is",
    );
    db.target_sql("SELECT livesync.add_table('by_int', time_column => 'epoch_ms', chunk_interval => '86400000')")
        .ok("integer time column");
    db.wait_ready("public.by_int");
    assert_root_empty(&db, "by_int");
    db.assert_same(&Compare::same("by_int", "id"));
}

fn chunks_or_zero(db: &TestDb, rel: &str) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) AS n FROM timescaledb_information.chunks WHERE hypertable_name = '{rel}'"
        ),
    )
}

/// Without TimescaleDB on the target, `hypertable => true` is a clear error (runs everywhere).
#[test]
fn hypertable_without_timescaledb_is_an_error() {
    let db = TestDb::new("ht_without_tsdb");
    db.src("CREATE TABLE m (id int PRIMARY KEY, time timestamptz NOT NULL)");
    db.add_su_connector("c");
    let e = db
        .target_sql("SELECT livesync.add_table('m', hypertable => true)")
        .err("no timescaledb");
    assert_sqlstate(&e, "55000");
    assert_message_eq(
        &e,
        "hypertable => true needs the timescaledb extension on the target",
    );
    assert!(e.hint().contains("CREATE EXTENSION timescaledb"), "{e}");
    // Plain tables keep working.
    db.add_table_ok("m");
    db.wait_ready("public.m");
}

/// A hypertable on the source (TimescaleDB on both sides): its chunks — existing ones and those
/// created later — are published without the user naming any, their changes land in the one
/// target table, decompression on the source does not duplicate rows, and other hypertables'
/// chunks (published through the same schema) are ignored.
#[test]
fn source_hypertable_chunks_are_followed() {
    let Some(db) = ts_db("ht_source") else { return };
    db.src(
        "CREATE EXTENSION timescaledb;
         CREATE TABLE sm (device int NOT NULL, time timestamptz NOT NULL, v float8, note text, PRIMARY KEY (device, time));
         SELECT create_hypertable('sm', by_range('time', interval '7 days'));
         INSERT INTO sm SELECT g % 10, timestamptz '2026-01-01 00:00+00' + g * interval '1 minute', g, 'n' || g
           FROM generate_series(1, 30000) g;
         CREATE TABLE other (time timestamptz NOT NULL, v int);
         SELECT create_hypertable('other', by_range('time', interval '1 day'));
         INSERT INTO other SELECT timestamptz '2026-01-01 00:00+00' + g * interval '1 hour', g FROM generate_series(1, 100) g;
         ANALYZE sm;",
    );
    db.add_su_connector("c");
    let out = db.target_sql("SELECT livesync.add_table('sm', hypertable => true)");
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    out.ok("add_table(sm)");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("partitioned by \"time\"")),
        "{notices:?}"
    );
    let s = db.tgt("SELECT * FROM livesync.suggest_time_column('sm')");
    assert!(
        s[0].text("reason")
            .contains("time dimension of the source hypertable"),
        "{s:?}"
    );
    db.wait_ready("public.sm");
    assert_root_empty(&db, "sm");
    db.assert_same(&Compare::same("sm", "device, time"));

    // New chunks (past and future), changes in existing ones, moves between chunks; the other
    // hypertable's changes reach the stream too and must be ignored.
    db.src(
        "INSERT INTO sm SELECT g % 10, timestamptz '2027-01-01 00:00+00' + g * interval '1 hour', -g, 'future'
           FROM generate_series(1, 400) g;
         INSERT INTO sm SELECT g % 10, timestamptz '2025-06-01 00:00+00' + g * interval '1 hour', -g, 'past'
           FROM generate_series(1, 400) g;
         UPDATE sm SET v = 0, note = 'zeroed' WHERE time < '2026-01-02';
         UPDATE sm SET time = time + interval '30 seconds' WHERE time >= '2026-01-05' AND time < '2026-01-05 01:00';
         DELETE FROM sm WHERE time >= '2026-01-06' AND time < '2026-01-06 02:00';
         INSERT INTO other SELECT timestamptz '2026-05-01 00:00+00' + g * interval '1 hour', g FROM generate_series(1, 100) g;",
    );
    db.wait_same(&Compare::same("sm", "device, time"), WAIT);

    // Compression on the source: changes to compressed data make TimescaleDB re-insert the
    // compressed rows; the target must not see them twice (nor fail on its key).
    db.src(
        "ALTER TABLE sm SET (timescaledb.compress, timescaledb.compress_segmentby = 'device');
         SELECT count(compress_chunk(c)) FROM show_chunks('sm', older_than => timestamptz '2026-01-20 00:00+00') c;",
    );
    db.src(
        "UPDATE sm SET v = 4242 WHERE device = 3 AND time >= '2026-01-08' AND time < '2026-01-08 03:00';
         DELETE FROM sm WHERE device = 4 AND time >= '2026-01-09' AND time < '2026-01-09 03:00';
         INSERT INTO sm VALUES (5, '2026-01-10 00:00:30+00', 1, 'into compressed');",
    );
    db.wait_same(&Compare::same("sm", "device, time"), WAIT);
    assert_root_empty(&db, "sm");
    let tables = db.tgt("SELECT source_table, state, last_error FROM livesync.table_progress");
    assert_eq!(
        tables.len(),
        1,
        "chunks must not be synced as tables of their own: {tables:?}"
    );
    assert_eq!(tables[0].text("state"), "ready", "{tables:?}");
    assert!(
        db.tgt("SELECT 1 FROM pg_class WHERE relname = 'other'")
            .is_empty(),
        "the unsynced hypertable stays on the source"
    );
}

/// Rows whose values are ~960 kB of text each, barely compressible: a table of few heap pages
/// (one copy range) whose COPY stream is `rows` MB.
fn wide_rows(table: &str, rows: i64, bad_id: Option<i64>) -> String {
    format!(
        "CREATE TABLE {table} (id bigint, time timestamptz NOT NULL, v float8, pad text, PRIMARY KEY (id, time));
         ALTER TABLE {table} ALTER COLUMN pad SET STORAGE EXTERNAL;
         INSERT INTO {table}
         SELECT g, timestamptz '2026-01-01 00:00+00' + g * interval '1 minute',
                CASE WHEN g = {bad} THEN -1 ELSE g END,
                (SELECT string_agg(md5(g::text || '.' || i::text), '') FROM generate_series(1, 30000) i)
           FROM generate_series(1, {rows}) g;
         ANALYZE {table};",
        bad = bad_id.unwrap_or(-1)
    )
}

/// The initial copy of a hypertable goes through TimescaleDB's own COPY, fed from a pipe by a
/// thread (src/copy/pipe.rs). A row the hypertable refuses stops that table alone, with the
/// COPY's own error and none of the range's rows committed, while the feeder is blocked on a
/// full pipe (the range's 40 MB are far more than the pipe holds) — and the copy worker goes on
/// to the next table. A source session killed in the middle of a range gives the range back; it
/// is loaded again, every row once.
#[test]
fn hypertable_copy_through_timescaledb_copy_fails_and_resumes_cleanly() {
    let Some(db) = ts_db("ht_copy_pipe") else {
        return;
    };
    db.src(&wide_rows("refused", 40, Some(2)));
    db.tgt(
        "CREATE TABLE refused (id bigint, time timestamptz NOT NULL,
                               v float8 CONSTRAINT v_not_negative CHECK (v >= 0), pad text, PRIMARY KEY (id, time));
         SELECT create_hypertable('refused', by_range('time', interval '1 day'));",
    );
    db.src("CREATE TABLE later (id int PRIMARY KEY, time timestamptz NOT NULL);
            INSERT INTO later SELECT g, timestamptz '2026-01-01' + g * interval '1 hour' FROM generate_series(1, 1000) g;");
    db.add_su_connector("c");
    db.add_table_ok("refused");
    let row = db.wait_table_state("public.refused", "error", WAIT);
    assert_eq!(row.get("last_error_sqlstate"), Some("23514"), "{row:?}");
    assert!(row.text("last_error").contains("v_not_negative"), "{row:?}");
    assert!(
        row.text("last_error_context").contains("refused"),
        "{row:?}"
    );
    // Row 1 came before the refused row in the same COPY: rolled back with it.
    assert_eq!(count(&db, "SELECT count(*) AS n FROM refused"), 0);
    assert_root_empty(&db, "refused");

    // The copy worker is not stuck behind its feeder: the next table is copied.
    db.target_sql("SELECT livesync.add_table('later', hypertable => true, time_column => 'time')")
        .ok("add_table(later)");
    db.wait_ready("public.later");
    db.assert_same(&Compare::same("later", "id"));

    // Put right on the target and copied again: every row, once.
    db.tgt("ALTER TABLE refused DROP CONSTRAINT v_not_negative");
    db.src("UPDATE refused SET v = 2 WHERE id = 2");
    db.call_ok("resync_table", &["refused"]);
    db.wait_ready("public.refused");
    db.assert_same(&Compare::same("refused", "id, time"));
    assert_root_empty(&db, "refused");

    // The source's COPY session killed mid-range: the feeder sees the stream break, the range
    // is rolled back and loaded again under a newer snapshot.
    db.src(&wide_rows("cut", 80, None));
    db.target_sql("SELECT livesync.add_table('cut', hypertable => true, time_column => 'time')")
        .ok("add_table(cut)");
    // It shows in pg_stat_progress_copy as the COPY of a file (the pipe), and is killed then,
    // within its first 20 of 80 MB (so that the source is still sending).
    let killed = wait_until("a livesync COPY of cut on the source to kill", WAIT, || {
        let on_target = count(
            &db,
            "SELECT count(*) AS n FROM pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid)
              WHERE a.backend_type = 'livesync copy' AND p.relid = to_regclass('cut') AND p.type = 'FILE'
                AND p.bytes_processed BETWEEN 1 AND 20000000",
        );
        if on_target == 0 {
            return Err("no COPY of cut from a pipe on the target yet".to_string());
        }
        let r = db.src(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
              WHERE application_name LIKE 'livesync copy%' AND state = 'active' AND query LIKE 'COPY%cut%'",
        );
        if r[0].int("n") > 0 {
            Ok(r[0].int("n"))
        } else {
            Err("no COPY running yet".to_string())
        }
    });
    assert!(killed > 0);
    db.wait_ready("public.cut");
    db.assert_same(&Compare::same("cut", "id, time"));
    assert_root_empty(&db, "cut");
    assert!(
        db.target
            .log_contents()
            .contains("went away while copying a range"),
        "the range should have been given back after the source session was killed"
    );
}
