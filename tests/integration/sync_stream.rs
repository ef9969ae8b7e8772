//! The change stream after the initial copy: keys, replica identities, TOAST,
//! TRUNCATE, big transactions, tables added or removed while streaming,
//! per-table errors and resync, and copy + stream under a concurrent load.

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn update_primary_key() {
    let db = TestDb::new("update_pk");
    db.src(
        "CREATE TABLE k (id int PRIMARY KEY, v text);
         INSERT INTO k SELECT g, 'v' || g FROM generate_series(1, 100) g;
         CREATE TABLE k2 (a int, b text, v int, PRIMARY KEY (a, b));
         INSERT INTO k2 SELECT g % 10, 'b' || (g / 10), g FROM generate_series(1, 100) g;",
    );
    db.add_su_connector("c");
    db.add_table_ok("k");
    db.add_table_ok("k2");
    db.wait_ready("public.k");
    db.wait_ready("public.k2");

    db.src(
        "UPDATE k SET id = id + 1000 WHERE id BETWEEN 1 AND 10;
         UPDATE k SET id = 1, v = 'moved from 50' WHERE id = 50;
         BEGIN;
           UPDATE k SET id = 50 WHERE id = 51;
           UPDATE k SET id = 51 WHERE id = 52;
           UPDATE k SET id = 52, v = 'chain' WHERE id = 1001;
         COMMIT;
         INSERT INTO k VALUES (2, 'reused key 2');
         DELETE FROM k WHERE id = 1002;
         UPDATE k SET v = 'not the key' WHERE id = 60;
         UPDATE k2 SET b = b || '-x' WHERE a = 3;
         UPDATE k2 SET a = a + 100, v = -v WHERE b = 'b5';
         DELETE FROM k2 WHERE a = 104;",
    );
    db.wait_all_same(
        &[Compare::same("k", "id"), Compare::same("k2", "a, b")],
        WAIT,
    );
}

#[test]
fn replica_identity_full_and_default() {
    let db = TestDb::new("replica_identity");
    db.src(
        "CREATE TABLE ri_default (id int PRIMARY KEY, v text, n int);
         CREATE TABLE ri_index (a int NOT NULL, b text NOT NULL, v text, n int);
         CREATE UNIQUE INDEX ri_index_ab ON ri_index (a, b);
         ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_ab;
         CREATE TABLE ri_full (a int, b text, v numeric, j jsonb, d timestamptz);
         ALTER TABLE ri_full REPLICA IDENTITY FULL;
         CREATE TABLE ri_full_pk (id int PRIMARY KEY, v text);
         ALTER TABLE ri_full_pk REPLICA IDENTITY FULL;
         INSERT INTO ri_default SELECT g, 'v' || g, g FROM generate_series(1, 50) g;
         INSERT INTO ri_index SELECT g, 'b' || g, 'v' || g, g FROM generate_series(1, 50) g;
         INSERT INTO ri_full SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE 'b' || g END, g / 3.0,
                                    jsonb_build_object('g', g), timestamptz '2021-01-01 00:00:00+00' + g * interval '1 hour'
           FROM generate_series(1, 50) g;
         INSERT INTO ri_full_pk SELECT g, 'v' || g FROM generate_series(1, 50) g;",
    );
    db.add_su_connector("c");
    for t in ["ri_default", "ri_index", "ri_full", "ri_full_pk"] {
        let out = db.add_table_ok(t);
        assert!(
            out.warnings().is_empty(),
            "{t} has a replica identity; no warning expected: {:?}",
            out.notices
        );
    }
    for t in ["ri_default", "ri_index", "ri_full", "ri_full_pk"] {
        db.wait_ready(&format!("public.{t}"));
    }
    // The replica identity index became a unique index on the target.
    let idx = db.tgt(
        "SELECT indisunique::text AS u, indisprimary::text AS p FROM pg_index WHERE indrelid = 'ri_index'::regclass",
    );
    assert_eq!(
        idx.len(),
        1,
        "one unique index on ri_index expected: {idx:?}"
    );
    assert_eq!(idx[0].get("u"), Some("true"), "{idx:?}");

    db.src(
        "UPDATE ri_default SET v = 'u' || id, n = NULL WHERE id % 3 = 0;
         DELETE FROM ri_default WHERE id % 7 = 0;
         UPDATE ri_index SET v = 'u', n = n * 10 WHERE a % 3 = 0;
         UPDATE ri_index SET b = b || '-moved' WHERE a % 4 = 0;
         DELETE FROM ri_index WHERE a % 7 = 0;
         UPDATE ri_full SET v = v * 2 WHERE a % 3 = 0;
         UPDATE ri_full SET b = 'was null' WHERE b IS NULL AND a < 30;
         UPDATE ri_full SET j = j || '{\"x\": 1}' WHERE a % 4 = 0;
         DELETE FROM ri_full WHERE a % 7 = 0;
         DELETE FROM ri_full WHERE b IS NULL AND a > 40;
         INSERT INTO ri_full VALUES (NULL, NULL, NULL, NULL, NULL), (1000, 'new', 1, '{}', now());
         UPDATE ri_full_pk SET v = v || '!' WHERE id % 2 = 0;
         UPDATE ri_full_pk SET id = id + 100 WHERE id % 5 = 0;
         DELETE FROM ri_full_pk WHERE id % 9 = 0;",
    );
    db.wait_all_same(
        &[
            Compare::same("ri_default", "id"),
            Compare::same("ri_index", "a, b"),
            Compare::by_row("ri_full"),
            Compare::same("ri_full_pk", "id"),
        ],
        WAIT,
    );
}

/// REPLICA IDENTITY FULL with identical rows: an UPDATE or DELETE of one of
/// them on the source must change exactly one row on the target.
#[test]
fn replica_identity_full_duplicate_rows() {
    let db = TestDb::new("replica_identity_dups");
    db.src(
        "CREATE TABLE dup (a int, b text);
         ALTER TABLE dup REPLICA IDENTITY FULL;
         INSERT INTO dup VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, NULL), (2, NULL), (3, 'y');",
    );
    db.add_su_connector("c");
    db.add_table_ok("dup");
    db.wait_ready("public.dup");
    let cmp = Compare::by_row("dup");
    db.assert_same(&cmp);
    db.src(
        "DELETE FROM dup WHERE ctid = (SELECT min(ctid) FROM dup WHERE a = 1);
         UPDATE dup SET b = 'one of two' WHERE ctid = (SELECT min(ctid) FROM dup WHERE a = 2);
         INSERT INTO dup VALUES (3, 'y');",
    );
    // Barrier: the last change has arrived once (3,'y') is there twice.
    let arrived = wait_until("the INSERT after the UPDATE/DELETE to arrive", WAIT, || {
        let n = db.tgt("SELECT count(*) AS n FROM dup WHERE a = 3")[0].int("n");
        if n >= 2 {
            Ok(n)
        } else {
            Err(format!("{n} rows with a = 3"))
        }
    });
    assert_eq!(arrived, 2);
    db.assert_same(&cmp);
}

#[test]
fn toast_unchanged() {
    let db = TestDb::new("toast_unchanged");
    // Values of ~1.3 MB that do not compress: stored out of line.
    let big = "(SELECT string_agg(md5(i::text || seed), '') FROM generate_series(1, 40000) i)";
    db.src(&format!(
        "CREATE TABLE tt (id int PRIMARY KEY, small int, big text, other text);
         CREATE TABLE tt_full (id int, small int, big text);
         ALTER TABLE tt_full REPLICA IDENTITY FULL;
         INSERT INTO tt SELECT s, s, {big}, 'o' FROM generate_series(1, 3) AS s(seed);
         INSERT INTO tt_full SELECT s, s, {big} FROM generate_series(1, 2) AS s(seed);"
    ));
    let stored = db.src("SELECT pg_column_size(big) AS s FROM tt WHERE id = 1")[0].int("s");
    assert!(
        stored > 1_000_000,
        "big should stay big when stored: {stored}"
    );
    db.add_su_connector("c");
    db.add_table_ok("tt");
    db.add_table_ok("tt_full");
    db.wait_ready("public.tt");
    db.wait_ready("public.tt_full");

    // Copied rows: only the small column changes.
    db.src("UPDATE tt SET small = small + 100 WHERE id IN (1, 2)");
    db.src("UPDATE tt SET other = 'changed' WHERE id = 3");
    db.src("UPDATE tt_full SET small = small + 100 WHERE id = 1");
    // A streamed row, then an update of its small column only.
    db.src(&format!(
        "INSERT INTO tt SELECT 10, 10, {big}, 'streamed' FROM (SELECT 10) AS s(seed);
         UPDATE tt SET small = 11 WHERE id = 10;"
    ));
    // Both columns in one transaction: the big one changes, then only the small one.
    db.src(&format!(
        "BEGIN;
         UPDATE tt SET big = {big} FROM (SELECT 99) AS s(seed) WHERE id = 2;
         UPDATE tt SET small = 22 WHERE id = 2;
         COMMIT;"
    ));
    let check = "SELECT id, small, md5(big) AS h, length(big) AS len, other FROM tt ORDER BY id";
    let check_full = "SELECT id, small, md5(big) AS h, length(big) AS len FROM tt_full ORDER BY id";
    let mut failures = Vec::new();
    for (cmp, q) in [
        (Compare::same("tt", "id"), check),
        (Compare::by_row("tt_full"), check_full),
    ] {
        if let Err(r) = db.try_wait_same(&cmp, WAIT) {
            failures.push(format!(
                "{r}\nsource: {:?}\ntarget: {:?}",
                db.src(q),
                db.tgt(q)
            ));
        }
    }
    db.fail_if_any(&failures);
    let t = db.tgt("SELECT count(*) AS n FROM tt WHERE big IS NULL OR length(big) < 1000000");
    assert_eq!(t[0].int("n"), 0, "a large value was lost on the target");
}

#[test]
fn truncate() {
    let db = TestDb::new("truncate");
    db.src(
        "CREATE TABLE tr1 (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         CREATE TABLE tr2 (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
         CREATE TABLE tr3 (id int PRIMARY KEY, v text);
         INSERT INTO tr1 (v) SELECT 'a' || g FROM generate_series(1, 100) g;
         INSERT INTO tr2 (v) SELECT 'b' || g FROM generate_series(1, 100) g;
         INSERT INTO tr3 SELECT g, 'c' || g FROM generate_series(1, 100) g;",
    );
    // tr2's target is made by hand, with an identity column of its own.
    db.tgt("CREATE TABLE tr2 (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text)");
    db.add_su_connector("c");
    for t in ["tr1", "tr2", "tr3"] {
        db.add_table_ok(t);
    }
    for t in ["tr1", "tr2", "tr3"] {
        db.wait_ready(&format!("public.{t}"));
    }
    // Advance the target's own sequence so RESTART IDENTITY is observable.
    db.tgt("SELECT setval(pg_get_serial_sequence('tr2', 'id'), 500)");

    // TRUNCATE alone, then inside a transaction between inserts.
    db.src("TRUNCATE tr1");
    db.src(
        "INSERT INTO tr1 (v) VALUES ('after truncate');
         BEGIN;
         INSERT INTO tr3 VALUES (1000, 'gone soon');
         TRUNCATE tr3;
         INSERT INTO tr3 VALUES (1, 'only row');
         COMMIT;",
    );
    db.wait_all_same(&["tr1", "tr3"].map(|t| Compare::same(t, "id")), WAIT);

    // Two tables at once, RESTART IDENTITY; the source's identities restart.
    db.src("TRUNCATE tr1, tr2 RESTART IDENTITY");
    db.src("INSERT INTO tr1 (v) VALUES ('x'), ('y'); INSERT INTO tr2 (v) VALUES ('z')");
    db.wait_all_same(&["tr1", "tr2", "tr3"].map(|t| Compare::same(t, "id")), WAIT);
    assert_eq!(
        db.tgt("SELECT string_agg(id::text, ',' ORDER BY id) AS ids FROM tr1")[0].get("ids"),
        Some("1,2")
    );
    // RESTART IDENTITY reached the target's own sequence of tr2.
    let next = db.tgt("SELECT nextval(pg_get_serial_sequence('tr2', 'id')) AS n")[0].int("n");
    assert_eq!(
        next, 1,
        "TRUNCATE … RESTART IDENTITY should restart tr2's sequence on the target"
    );
    for t in ["tr1", "tr2", "tr3"] {
        let row = db.progress(&format!("public.{t}"));
        assert_eq!(row.get("state"), Some("ready"), "{row:?}");
    }
}

#[test]
fn big_transaction() {
    let db = TestDb::new("big_transaction");
    db.src("CREATE TABLE bt (id int PRIMARY KEY, v int NOT NULL); INSERT INTO bt VALUES (0, 0)");
    db.add_su_connector("c");
    db.add_table_ok("bt");
    db.wait_ready("public.bt");
    db.src("INSERT INTO bt SELECT g, g % 1000 FROM generate_series(1, 1000000) g");
    let sum = "SELECT count(*) AS n, sum(id::int8) AS s, sum(hashint4(v)::int8) AS h FROM bt";
    let expected = db.src(sum);
    assert_eq!(expected[0].int("n"), 1_000_001);
    let started = std::time::Instant::now();
    wait_until(
        "the 1,000,000-row transaction to arrive",
        Duration::from_secs(240),
        || {
            let got = db.tgt(sum);
            if got == expected {
                Ok(())
            } else {
                Err(format!(
                    "source {expected:?}, target {got:?}; progress {:?}",
                    db.table_progress_all()
                ))
            }
        },
    );
    eprintln!(
        "big_transaction: applied 1,000,000 rows in {:?}",
        started.elapsed()
    );
    db.assert_same(&Compare::same("bt", "id"));
    let row = db.progress_when("public.bt", |r| r.int("changes_applied") >= 1_000_000);
    assert_eq!(row.int("changes_applied"), 1_000_000, "{row:?}");
}

#[test]
fn table_added_while_streaming() {
    let db = TestDb::new("added_while_streaming");
    let tables = ["la", "lb"];
    for t in tables {
        db.src(&load_table_ddl(t, &LoadKind::Mixed));
        db.src(&format!(
            "INSERT INTO {t} SELECT g, g % 10, g, 'seed' FROM generate_series(1, 5000) g"
        ));
    }
    db.add_su_connector("c");
    db.add_table_ok("la");
    db.wait_ready("public.la");

    let load = Load::start(
        db.source,
        &db.name,
        &[("la", LoadKind::Mixed), ("lb", LoadKind::Mixed)],
        2,
        Duration::from_millis(5),
    );
    load.wait_ops(300, WAIT);
    db.add_table_ok("lb");
    db.wait_ready("public.lb");
    load.wait_ops(300, WAIT);
    let stats = load.stop();
    assert!(stats.commits > 100, "{stats:?}");
    db.wait_caught_up("c");
    db.assert_all_same(
        &tables
            .iter()
            .map(|t| Compare::same(t, "id"))
            .collect::<Vec<_>>(),
    );
    let lb = db.progress_when("public.lb", |r| r.int("changes_applied") > 0);
    assert!(
        lb.int("changes_applied") > 0,
        "lb got no streamed changes: {lb:?}"
    );
}

#[test]
fn remove_table() {
    let db = TestDb::new("remove_table");
    db.src(
        "CREATE TABLE r1 (id int PRIMARY KEY, v text);
         CREATE TABLE r2 (id int PRIMARY KEY, v text);
         INSERT INTO r1 SELECT g, 'a' FROM generate_series(1, 100) g;
         INSERT INTO r2 SELECT g, 'b' FROM generate_series(1, 100) g;",
    );
    let conn = db.add_su_connector("c");
    let publication = conn.text("publication_name").to_string();
    db.add_table_ok("r1");
    db.add_table_ok("r2");
    db.wait_ready("public.r1");
    db.wait_ready("public.r2");
    db.src("INSERT INTO r1 VALUES (101, 'streamed before removal')");
    db.wait_same(&Compare::same("r1", "id"), WAIT);
    assert_eq!(
        db.publication_rels(&publication),
        vec!["r1".to_string(), "r2".to_string()]
    );

    db.call_ok("remove_table", &["r1", "c"]);
    // The worker drops it from the publication once remove_table has committed.
    wait_for(
        "r1 to leave the source publication",
        WAIT,
        || db.publication_rels(&publication),
        |rels| rels == &vec!["r2".to_string()],
    );
    assert!(
        db.try_progress("public.r1").is_err(),
        "r1 must leave table_progress: {:?}",
        db.table_progress_all()
    );
    let before =
        db.tgt("SELECT count(*) AS n, md5(string_agg(t::text, ',' ORDER BY id)) AS h FROM r1 t");
    assert_eq!(before[0].int("n"), 101, "target data stays");

    // Later changes to r1 do not arrive; r2's do (and serve as a barrier).
    db.src(
        "INSERT INTO r1 VALUES (102, 'after removal');
         UPDATE r1 SET v = 'changed after removal' WHERE id <= 10;
         DELETE FROM r1 WHERE id > 90;
         INSERT INTO r2 VALUES (101, 'barrier');",
    );
    db.wait_same(&Compare::same("r2", "id"), WAIT);
    db.wait_caught_up("c");
    let after =
        db.tgt("SELECT count(*) AS n, md5(string_agg(t::text, ',' ORDER BY id)) AS h FROM r1 t");
    assert_eq!(after, before, "r1 changed on the target after remove_table");
    assert_eq!(
        db.call_err("remove_table", &["r1", "c"]).code,
        "42704",
        "removing it again"
    );
}

#[test]
fn error_isolation_and_resync() {
    let db = TestDb::new("error_isolation");
    db.src(
        "CREATE TABLE e1 (id int PRIMARY KEY, v text);
         CREATE TABLE e2 (id int PRIMARY KEY, v text);
         INSERT INTO e1 SELECT g, 'a' FROM generate_series(1, 100) g;
         INSERT INTO e2 SELECT g, 'b' FROM generate_series(1, 100) g;",
    );
    db.add_su_connector("c");
    db.add_table_ok("e1");
    db.add_table_ok("e2");
    db.wait_ready("public.e1");
    db.wait_ready("public.e2");

    // In one source transaction: a change e1's target cannot take, and e2's.
    db.src(
        "ALTER TABLE e1 ADD COLUMN extra int;
         BEGIN;
         INSERT INTO e2 VALUES (101, 'same transaction');
         INSERT INTO e1 VALUES (101, 'with extra', 7);
         INSERT INTO e2 VALUES (102, 'same transaction, after');
         COMMIT;",
    );
    let row = db.wait_table_state("public.e1", "error", WAIT);
    assert_eq!(
        row.get("last_error"),
        Some("column \"extra\" of source table \"public\".\"e1\" does not exist in target table \"public\".\"e1\""),
        "{row:?}"
    );
    assert_contains(
        row.get("last_error_hint").unwrap_or(""),
        "resync_table",
        "hint",
    );
    assert_eq!(row.get("last_error_sqlstate"), Some("42703"), "{row:?}");
    assert_contains(
        row.get("last_error_context").unwrap_or(""),
        "\"public\".\"e1\"",
        "context",
    );
    db.wait_same(&Compare::same("e2", "id"), WAIT);

    // e1 stays in error and counts what it skips; e2 keeps flowing.
    let skipped_before = db.progress("public.e1").int("changes_skipped");
    db.src(
        "INSERT INTO e1 VALUES (102, 'skipped', 1), (103, 'skipped', 2);
         UPDATE e1 SET v = 'skipped too' WHERE id = 1;
         INSERT INTO e2 SELECT g, 'more' FROM generate_series(103, 150) g;",
    );
    db.wait_same(&Compare::same("e2", "id"), WAIT);
    let e1 = wait_until("e1's skipped changes to be counted", WAIT, || {
        let r = db.progress("public.e1");
        if r.int("changes_skipped") >= skipped_before + 3 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_eq!(e1.get("state"), Some("error"), "{e1:?}");
    let e2 = db.progress("public.e2");
    assert_eq!(e2.get("state"), Some("ready"), "{e2:?}");
    assert_eq!(e2.int("changes_skipped"), 0, "{e2:?}");

    // Fix the target, resync: e1 is copied again and streams.
    db.tgt("ALTER TABLE e1 ADD COLUMN extra int");
    db.call_ok("resync_table", &["e1"]);
    db.wait_ready("public.e1");
    db.assert_same(&Compare::same("e1", "id"));
    db.src(
        "INSERT INTO e1 VALUES (200, 'after resync', 200); UPDATE e1 SET extra = -1 WHERE id <= 5",
    );
    db.wait_same(&Compare::same("e1", "id"), WAIT);
    db.assert_same(&Compare::same("e2", "id"));
}

#[test]
fn copy_and_stream_under_load() {
    let db = TestDb::new("under_load");
    let tables = ["ul1", "ul2", "ul3"];
    for t in tables {
        db.src(&load_table_ddl(t, &LoadKind::Mixed));
        db.src(&format!(
            "INSERT INTO {t} SELECT g, g % 10, g, repeat('seed', g % 20) FROM generate_series(1, 20000) g"
        ));
    }
    db.add_su_connector("c");
    let load = Load::start(
        db.source,
        &db.name,
        &[
            ("ul1", LoadKind::Mixed),
            ("ul2", LoadKind::Mixed),
            ("ul3", LoadKind::Mixed),
        ],
        3,
        Duration::from_millis(3),
    );
    load.wait_ops(200, WAIT);
    // ul1 and ul2 in one statement: one batch, one snapshot.
    db.tgt("SELECT livesync.add_table('ul1'), livesync.add_table('ul2')");
    let r1 = db.wait_ready("public.ul1");
    let r2 = db.wait_ready("public.ul2");
    assert_eq!(
        r1.get("snapshot_lsn"),
        r2.get("snapshot_lsn"),
        "tables added together share one snapshot"
    );
    load.wait_ops(500, WAIT);
    db.add_table_ok("ul3");
    db.wait_ready("public.ul3");
    load.wait_ops(1000, Duration::from_secs(60));
    // Commits keep coming after this position until the load stops.
    let lsn_before_stop = db.source_lsn();
    load.wait_ops(100, WAIT);
    let stats = load.stop();
    assert!(stats.commits > 500, "{stats:?}");

    let caught_up = db.wait_caught_up("c");
    db.assert_all_same(
        &tables
            .iter()
            .map(|t| Compare::same(t, "id"))
            .collect::<Vec<_>>(),
    );
    let lag = caught_up.int("lag_bytes");
    assert!(lag >= 0, "{caught_up:?}");
    for col in ["received_lsn", "flushed_lsn", "source_wal_end", "apply_lag"] {
        assert!(!caught_up.is_null(col), "{col} is NULL: {caught_up:?}");
    }
    // applied_lsn covers the last applied commit; last_commit_time is set.
    wait_until(
        "applied_lsn to pass the position taken before the load stopped",
        WAIT,
        || {
            let r = db.tgt(&format!(
                "SELECT coalesce(applied_lsn >= {}::pg_lsn, false) AS ok, last_commit_time IS NOT NULL AS t,
                        applied_lsn, flushed_lsn, last_commit_time
                   FROM livesync.connectors WHERE name = 'c'",
                lit(&lsn_before_stop)
            ));
            if r[0].bool("ok") && r[0].bool("t") {
                Ok(())
            } else {
                Err(format!("{r:?} (position before stop: {lsn_before_stop})"))
            }
        },
    );
    for t in tables {
        let r = db.progress_when(&format!("public.{t}"), |r| r.int("changes_applied") > 0);
        assert_eq!(r.get("state"), Some("ready"), "{r:?}");
        assert!(r.int("changes_applied") > 0, "{r:?}");
        assert_eq!(r.int("changes_skipped"), 0, "{r:?}");
    }
}

/// The connector's publication dropped on the source (by mistake): livesync does not read the
/// vanished publication as "every table left it" — the tables stay synced, the publication is
/// recreated with them — and the connector reports what the source says. (Up to PostgreSQL 17
/// the walsender cannot decode past changes made while the publication was missing: the
/// connector stays in error until the tables are re-added; see the README's limits. An 18
/// source streams on without sending them: the table is in error until resync_table.)
#[test]
fn publication_dropped_on_source_keeps_tables_and_reports() {
    let db = TestDb::new("pub_dropped");
    db.src(
        "CREATE TABLE pd (id int PRIMARY KEY, v text);
         INSERT INTO pd SELECT g, 'a' FROM generate_series(1, 50) g;",
    );
    let conn = db.add_su_connector("c");
    let publication = conn.text("publication_name").to_string();
    db.add_table_ok("pd");
    db.wait_ready("public.pd");
    db.src(&format!("DROP PUBLICATION \"{publication}\""));
    db.src("INSERT INTO pd VALUES (51, 'after the drop')");
    wait_for(
        "the publication to be recreated with its table",
        Duration::from_secs(30),
        || db.publication_rels(&publication),
        |rels| rels == &vec!["pd".to_string()],
    );
    wait_until(
        "the connector to report the dropped publication",
        Duration::from_secs(30),
        || {
            let rows = db.tgt("SELECT coalesce(last_error, '') AS e FROM livesync.connectors");
            if rows[0]
                .text("e")
                .contains(&format!("publication \"{publication}\" does not exist"))
            {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
    assert!(
        db.try_progress("public.pd").is_ok(),
        "pd must still be synced: {:?}",
        db.table_progress_all()
    );
    let rows = db.tgt("SELECT state, coalesce(last_error, '') AS e FROM livesync.connectors");
    assert!(
        rows[0]
            .text("e")
            .contains(&format!("publication \"{publication}\" does not exist")),
        "the connector must say why it stopped: {:?}",
        rows[0].text("e")
    );
    if pg_major() >= 18 {
        // The source went on without sending pd's changes: loud, and resync_table mends it.
        let row = db.wait_table_state("public.pd", "error", Duration::from_secs(30));
        assert!(
            row.text("last_error").contains("did not send the changes"),
            "{row:?}"
        );
        assert!(
            row.text("last_error_hint").contains("resync_table"),
            "{row:?}"
        );
        db.call_ok("resync_table", &["pd"]);
        db.wait_ready("public.pd");
        db.src("INSERT INTO pd VALUES (52, 'after the resync')");
        assert_eq!(
            db.wait_same(&Compare::same("pd", "id"), Duration::from_secs(30)),
            52
        );
    }
}

/// Changes are batched per table (inserts through COPY, updates coalesced by key, deletes by
/// key) while other tables' changes go by: the order of changes to one table must survive —
/// repeated updates of a row, delete then re-insert of a key, update after insert, unchanged
/// TOAST values next to changed ones, a column set to NULL and back.
#[test]
fn batched_changes_keep_per_table_order() {
    let db = TestDb::new("batched_order");
    db.src(
        "CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL, note text, big text);
         CREATE TABLE tel (id int PRIMARY KEY, bal int NOT NULL);
         CREATE TABLE hist (id bigserial PRIMARY KEY, acc int, delta int);
         CREATE TABLE pair (a int, b text, v int, PRIMARY KEY (a, b));
         INSERT INTO acc SELECT g, 0, 'n' || g, CASE WHEN g % 5 = 0 THEN repeat(md5(g::text), 5000) END FROM generate_series(1, 200) g;
         INSERT INTO tel SELECT g, 0 FROM generate_series(1, 5) g;
         INSERT INTO pair SELECT g % 7, 'b' || g, g FROM generate_series(1, 100) g;",
    );
    db.add_su_connector("c");
    for t in ["acc", "tel", "hist", "pair"] {
        db.add_table_ok(t);
    }
    for t in ["acc", "tel", "hist", "pair"] {
        db.wait_ready(&format!("public.{t}"));
    }
    // A pgbench-like interleaving, many times per transaction and over many transactions.
    let mut script = String::new();
    for round in 0..20 {
        script.push_str("BEGIN;");
        for i in 0..25 {
            let a = (round * 37 + i * 11) % 200 + 1;
            let t = i % 5 + 1;
            script.push_str(&format!(
                "UPDATE acc SET bal = bal + {i} WHERE id = {a};
                 UPDATE tel SET bal = bal - {i} WHERE id = {t};
                 INSERT INTO hist (acc, delta) VALUES ({a}, {i});"
            ));
        }
        script.push_str(&format!(
            "UPDATE acc SET note = NULL WHERE id % 9 = {m};
             UPDATE acc SET note = 'back ' || id WHERE id % 18 = {m};
             DELETE FROM acc WHERE id % 23 = {m};
             INSERT INTO acc SELECT g, -1, 'reborn', NULL FROM generate_series(1, 200) g WHERE g % 23 = {m};
             UPDATE acc SET bal = bal * 2 WHERE id % 23 = {m};
             UPDATE pair SET v = v + 1 WHERE a = {m7};
             DELETE FROM pair WHERE a = {m7} AND v % 2 = 0;
             INSERT INTO pair VALUES ({m7}, 'new{round}', {round});
             UPDATE pair SET v = -v WHERE a = {m7};
             COMMIT;",
            m = round % 9,
            m7 = round % 7
        ));
    }
    db.src(&script);
    db.wait_all_same(
        &[
            Compare::same("acc", "id"),
            Compare::same("tel", "id"),
            Compare::same("hist", "id"),
            Compare::same("pair", "a, b"),
        ],
        WAIT,
    );
}

/// Large transactions are streamed by a PostgreSQL 14+ source while they run (protocol 2; here
/// beyond `logical_decoding_work_mem = 64kB`) and spooled on the target until their commit:
/// savepoints rolled back, released and nested, other transactions committing meanwhile, and a
/// streamed transaction that aborts. The target ends equal and keeps no spool file.
#[test]
fn streamed_transactions_with_subtransaction_aborts() {
    let source = Cluster::start_new(
        "stream_source",
        source_config().with_conf("logical_decoding_work_mem = '64kB'"),
    );
    prepare_source(&source);
    let target = Cluster::start_new(
        "stream_target",
        ClusterConfig::target().with_conf("livesync.stream_in_progress = on"),
    );
    let db = TestDb::on(&source, &target, "streamed_txns");
    db.src(
        "CREATE TABLE big (id int PRIMARY KEY, v text, pad text);
         CREATE TABLE small (id int PRIMARY KEY, v text);
         INSERT INTO big VALUES (-1, 'before', '');",
    );
    db.add_su_connector("c");
    db.add_table_ok("big");
    db.add_table_ok("small");
    db.wait_ready("public.big");
    db.wait_ready("public.small");

    let mut session = source.connect(&db.name);
    session
        .batch_execute(
            "BEGIN;
             INSERT INTO big SELECT g, 'v' || g, repeat('x', 200) FROM generate_series(1, 20000) g;
             SAVEPOINT a;
               INSERT INTO big SELECT g, 'rolled back', repeat('r', 200) FROM generate_series(20001, 30000) g;
               UPDATE big SET v = 'rolled back too' WHERE id < 100;
             ROLLBACK TO SAVEPOINT a;
             SAVEPOINT b;
               UPDATE big SET v = 'kept' WHERE id % 10 = 0;
               SAVEPOINT c;
                 DELETE FROM big WHERE id % 3 = 0;
               RELEASE SAVEPOINT c;
               SAVEPOINT d;
                 UPDATE big SET pad = 'nested, rolled back' WHERE id % 7 = 0;
               ROLLBACK TO SAVEPOINT d;",
        )
        .expect("the big transaction, first part");
    // Committed (and applied) while the big transaction is still open.
    db.src("INSERT INTO small VALUES (1, 'committed while big runs'); UPDATE big SET v = 'outside' WHERE id = -1;");
    session
        .batch_execute(
            "INSERT INTO big SELECT g, 'after', repeat('z', 200) FROM generate_series(40001, 45000) g;
             COMMIT;
             BEGIN;
             INSERT INTO big SELECT g, 'aborted', repeat('y', 200) FROM generate_series(50001, 70000) g;",
        )
        .expect("the big transaction, end; the start of one that aborts");
    // Aborted only once the source streams it: a PostgreSQL 18 source drops a transaction that
    // has already aborted when decoding reaches it, instead of streaming it.
    wait_until(
        "the source to stream the open transaction",
        Duration::from_secs(30),
        || {
            let rows = db.src("SELECT coalesce(sum(stream_txns), 0)::int8 AS n FROM pg_stat_replication_slots WHERE slot_name LIKE 'livesync%'");
            if rows[0].int("n") >= 2 {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
    session
        .batch_execute("ROLLBACK")
        .expect("abort the streamed transaction");
    db.src("INSERT INTO small VALUES (2, 'last')");
    db.wait_all_same(
        &[Compare::same("big", "id"), Compare::same("small", "id")],
        Duration::from_secs(60),
    );
    // The source really streamed them.
    wait_until(
        "the source to count streamed transactions",
        Duration::from_secs(15),
        || {
            let rows = db.src("SELECT coalesce(sum(stream_txns), 0)::int8 AS n FROM pg_stat_replication_slots WHERE slot_name LIKE 'livesync%'");
            if rows[0].int("n") >= 2 {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
    let tmp = target.datadir().join("base/pgsql_tmp");
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains("livesync"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "spool files left on the target: {left:?}");
}
