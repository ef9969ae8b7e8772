//! Issue 13, items 1–2: `verify_table` compares a synced table with its source at one
//! consistent cut while both run. Under concurrent writes on the source every table verifies
//! equal (no false positives); rows changed on the target behind livesync's back — an UPDATE, an
//! INSERT and a DELETE made with `session_replication_role = replica` — are each found and named
//! by key with what each side has (no misses), for a table keyed by ranges (bigint key), one by
//! key hash (text key), one without a key (REPLICA IDENTITY FULL), and a partitioned one.

use std::time::Duration;

use crate::support::*;

fn verify(db: &TestDb, table: &str) -> Row {
    let out = db.target_sql(&format!(
        "SELECT * FROM livesync.verify_table({})",
        lit(table)
    ));
    let rows = out.ok(&format!("verify_table({table})"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

fn differences(db: &TestDb, id: &str) -> Vec<(String, String, String, String)> {
    db.tgt(&format!(
        "SELECT kind, coalesce(key::text, '-') AS key, coalesce(source_row, '-') AS s, coalesce(target_row, '-') AS t
           FROM livesync.verification_differences WHERE verification_id = {id} ORDER BY kind, key::text, source_row, target_row"
    ))
    .into_iter()
    .map(|r| (r.text("kind").to_string(), r.text("key").to_string(), r.text("s").to_string(), r.text("t").to_string()))
    .collect()
}

#[test]
fn verify_finds_exactly_the_rows_changed_behind_livesyncs_back() {
    let db = TestDb::new("verify");
    db.src(&load_table_ddl("busy", &LoadKind::Mixed));
    db.src(
        "CREATE TABLE v_int (id bigint PRIMARY KEY, ts timestamptz, d date, n numeric(12,3), f float8, t text, b bytea,
                             j jsonb, iv interval, arr int[], flag bool);
         INSERT INTO v_int SELECT g, '2026-01-01 00:00:00+00'::timestamptz + g * interval '37 s', '2020-01-01'::date + g % 900,
                g * 1.125, g / 7.0, 'row ' || g, decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 'odd', g % 2 = 1),
                g * interval '1 min', ARRAY[g, g + 1], g % 3 = 0
           FROM generate_series(1, 20000) g;
         CREATE TABLE v_text (code text PRIMARY KEY, v int, pt point DEFAULT point(1, 2));
         INSERT INTO v_text SELECT 'c-' || md5(g::text), g FROM generate_series(1, 5000) g;
         CREATE TABLE v_full (a int, b text);
         ALTER TABLE v_full REPLICA IDENTITY FULL;
         INSERT INTO v_full SELECT g % 500, 'x' || (g % 500) FROM generate_series(1, 3000) g;
         CREATE TABLE v_part (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE v_part_eu PARTITION OF v_part FOR VALUES IN ('eu');
         CREATE TABLE v_part_us PARTITION OF v_part FOR VALUES IN ('us');
         INSERT INTO v_part SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'p' || g FROM generate_series(1, 6000) g;",
    );
    db.add_su_connector("c");
    for t in ["busy", "v_int", "v_text", "v_full", "v_part"] {
        db.add_table_ok(t);
    }
    let load = Load::start(
        db.source,
        &db.name,
        &[("busy", LoadKind::Mixed)],
        2,
        Duration::from_millis(2),
    );
    for t in [
        "public.busy",
        "public.v_int",
        "public.v_text",
        "public.v_full",
        "public.v_part",
    ] {
        db.wait_ready(t);
    }
    load.wait_ops(200, Duration::from_secs(60));

    // Equal under load: no false positives, while the source changes all the time.
    for t in ["busy", "v_int", "v_text", "v_full", "v_part"] {
        let r = verify(&db, t);
        assert_eq!(r.text("state"), "equal", "{t}: {r:?}");
        assert_eq!(r.int("differences"), 0, "{t}: {r:?}");
        assert!(
            r.int("rows_source") > 0 && r.int("rows_source") == r.int("rows_target"),
            "{t}: {r:?}"
        );
        assert!(!r.text("cut_lsn").is_empty(), "{r:?}");
    }
    // The tables keyed by a bigint are bucketed by key ranges, the others by hash.
    let r = verify(&db, "v_int");
    assert!(r.text("method").starts_with("ranges of"), "{r:?}");
    assert!(r.int("ranges") >= 8, "{r:?}");
    assert!(r.float("pause_ms") < 1000.0, "{r:?}");
    assert!(r.text("method").ends_with("typed hashes"), "{r:?}");
    // A point has no hash function: that table's rows are hashed by their text.
    assert_eq!(
        verify(&db, "v_text").text("method"),
        "key hash buckets, row text hashes"
    );
    let full = verify(&db, "v_full");
    assert!(
        full.text("method").starts_with("row hash buckets"),
        "{full:?}"
    );
    assert!(full.text("note").contains("no primary key"), "{full:?}");

    // Behind livesync's back, on the target: one UPDATE, one INSERT, one DELETE per table.
    db.tgt(
        "SET session_replication_role = replica;
         UPDATE v_int SET t = 'changed' WHERE id = 15001;
         INSERT INTO v_int (id, t) VALUES (900001, 'stray');
         DELETE FROM v_int WHERE id = 17777;
         UPDATE v_text SET v = -1 WHERE code = 'c-' || md5('42');
         INSERT INTO v_text VALUES ('zz-stray', 7);
         DELETE FROM v_text WHERE code = 'c-' || md5('4242');
         UPDATE v_full SET b = 'changed' WHERE ctid = (SELECT ctid FROM v_full WHERE a = 10 LIMIT 1);
         INSERT INTO v_full VALUES (-5, 'stray');
         DELETE FROM v_full WHERE ctid = (SELECT ctid FROM v_full WHERE a = 20 LIMIT 1);
         UPDATE v_part SET v = 'changed' WHERE id = 10 AND region = 'eu';
         INSERT INTO v_part VALUES (999999, 'us', 'stray');
         DELETE FROM v_part WHERE id = 11 AND region = 'us';",
    );

    let r = verify(&db, "v_int");
    assert_eq!(
        (r.text("state"), r.int("differences")),
        ("different", 3),
        "{r:?}"
    );
    let d = differences(&db, r.text("verification_id"));
    assert_eq!(d.len(), 3, "{d:?}");
    assert_eq!(
        (d[0].0.as_str(), d[0].1.as_str()),
        ("different", "{\"id\": 15001}"),
        "{d:?}"
    );
    assert!(
        d[0].2.contains("\"row 15001\"") || d[0].2.contains("row 15001"),
        "{d:?}"
    );
    assert!(d[0].3.contains("changed"), "{d:?}");
    assert_eq!(
        (d[1].0.as_str(), d[1].1.as_str(), d[1].2.as_str()),
        ("extra on target", "{\"id\": 900001}", "-"),
        "{d:?}"
    );
    assert!(d[1].3.contains("stray"), "{d:?}");
    assert_eq!(
        (d[2].0.as_str(), d[2].1.as_str(), d[2].3.as_str()),
        ("missing on target", "{\"id\": 17777}", "-"),
        "{d:?}"
    );

    // The same differences when asked to compare the rows' text.
    let r = db
        .target_sql("SELECT * FROM livesync.verify_table('public.v_int', by_text => true)")
        .ok("by_text");
    assert_eq!(
        (r[0].text("state"), r[0].int("differences")),
        ("different", 3),
        "{r:?}"
    );
    assert!(r[0].text("method").ends_with("row text hashes"), "{r:?}");
    assert_eq!(differences(&db, r[0].text("verification_id")), d);

    let r = verify(&db, "v_text");
    assert_eq!(
        (r.text("state"), r.int("differences")),
        ("different", 3),
        "{r:?}"
    );
    let d = differences(&db, r.text("verification_id"));
    let kinds: Vec<(&str, &str)> = d.iter().map(|x| (x.0.as_str(), x.1.as_str())).collect();
    let k42 = db.src("SELECT jsonb_build_object('code', 'c-' || md5('42'))::text AS k")[0]
        .text("k")
        .to_string();
    let k4242 = db.src("SELECT jsonb_build_object('code', 'c-' || md5('4242'))::text AS k")[0]
        .text("k")
        .to_string();
    assert_eq!(
        kinds,
        vec![
            ("different", k42.as_str()),
            ("extra on target", "{\"code\": \"zz-stray\"}"),
            ("missing on target", k4242.as_str())
        ],
        "{d:?}"
    );

    // No key: rows are named by their text; an UPDATE is a missing and an extra row.
    let r = verify(&db, "v_full");
    assert_eq!(r.text("state"), "different", "{r:?}");
    let d = differences(&db, r.text("verification_id"));
    let got: Vec<(&str, &str, &str)> = d
        .iter()
        .map(|x| (x.0.as_str(), x.2.as_str(), x.3.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("extra on target", "-", "(-5,stray)"),
            ("extra on target", "-", "(10,changed)"),
            ("missing on target", "(10,x10)", "-"),
            ("missing on target", "(20,x20)", "-"),
        ],
        "{d:?}"
    );

    let r = verify(&db, "v_part");
    assert_eq!(
        (r.text("state"), r.int("differences")),
        ("different", 3),
        "{r:?}"
    );
    let d = differences(&db, r.text("verification_id"));
    let kinds: Vec<(&str, &str)> = d.iter().map(|x| (x.0.as_str(), x.1.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            ("different", "{\"id\": 10, \"region\": \"eu\"}"),
            ("extra on target", "{\"id\": 999999, \"region\": \"us\"}"),
            ("missing on target", "{\"id\": 11, \"region\": \"us\"}"),
        ],
        "{d:?}"
    );

    // All of a connector's tables at once; the busy one still equal under load.
    let all = db
        .target_sql(
            "SELECT source_table, state, differences FROM livesync.verify_tables('c') ORDER BY 1",
        )
        .ok("verify_tables");
    let states: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.text("source_table"), r.text("state")))
        .collect();
    assert_eq!(
        states,
        vec![
            ("public.busy", "equal"),
            ("public.v_full", "different"),
            ("public.v_int", "different"),
            ("public.v_part", "different"),
            ("public.v_text", "different"),
        ],
        "{all:?}"
    );
    let stats = load.stop();
    assert!(stats.commits > 100, "{stats:?}");

    // The view: one row per verification, the latest first, for everyone.
    let v = db.tgt("SELECT * FROM livesync.verification ORDER BY id DESC LIMIT 1");
    assert_eq!(v[0].text("state"), "different");
    assert!(
        !v[0].text("duration").is_empty() && !v[0].text("cut_lsn").is_empty(),
        "{v:?}"
    );

    // Errors: an unsynced table, a REPEATABLE READ transaction.
    let e = db
        .target_sql("SELECT * FROM livesync.verify_table('public.nope')")
        .err("unknown table");
    assert_sqlstate(&e, "42P01");
    assert_message_starts(&e, "table \"public.nope\" is not synced by connector \"c\"");
    let e = db
        .target_sql("SELECT * FROM livesync.verify_table('public.v_int', connector => 'nope')")
        .err("unknown connector");
    assert_sqlstate(&e, "42704");
    assert_message_starts(&e, "connector \"nope\" does not exist");
    let e = db
        .target_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM livesync.verify_table('public.v_int'); COMMIT")
        .err("repeatable read");
    assert_sqlstate(&e, "25000");
}
