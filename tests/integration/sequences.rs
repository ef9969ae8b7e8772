//! Issue 13, items 4 and 5 (sequences, cutover): sequences owned by synced tables' columns
//! (serial, identity) and one added with `add_sequence` are created on the target, set at the
//! end of the copy, refreshed while streaming, brought up on demand by `sync_sequences`, and
//! never moved backwards; then the README's cutover steps, after which the application inserts
//! on the target without key collisions.

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

fn seq_row(db: &TestDb, source_sequence: &str) -> Row {
    db.tgt(&format!(
        "SELECT * FROM livesync.sequences WHERE source_sequence = {}",
        lit(source_sequence)
    ))
    .into_iter()
    .next()
    .unwrap_or_else(|| {
        panic!(
            "{source_sequence} not in livesync.sequences: {:?}",
            db.tgt("SELECT * FROM livesync.sequences")
        )
    })
}

/// What `nextval` would return next on the source.
fn source_next(db: &TestDb, seq: &str) -> i64 {
    db.src(&format!(
        "SELECT CASE WHEN is_called THEN last_value + (SELECT seqincrement FROM pg_sequence WHERE seqrelid = '{seq}'::regclass) ELSE last_value END AS n FROM {seq}"
    ))[0]
        .int("n")
}

fn target_next(db: &TestDb, seq: &str) -> i64 {
    db.tgt(&format!(
        "SELECT CASE WHEN is_called THEN last_value + (SELECT seqincrement FROM pg_sequence WHERE seqrelid = '{seq}'::regclass) ELSE last_value END AS n FROM {seq}"
    ))[0]
        .int("n")
}

#[test]
fn sequences_follow_the_source_and_the_cutover_has_no_collisions() {
    let target = Cluster::start_new(
        "seq-tgt",
        ClusterConfig::target().with_conf("livesync.sequence_sync_interval = 1"),
    );
    let db = TestDb::on(shared_source(), &target, "sequences");
    db.src(
        "CREATE TABLE s_serial (id serial PRIMARY KEY, v text);
         CREATE TABLE s_ident (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         CREATE SEQUENCE standalone INCREMENT BY 5 START 100;
         INSERT INTO s_serial (v) SELECT 'r' || g FROM generate_series(1, 1000) g;
         INSERT INTO s_ident (v) SELECT 'r' || g FROM generate_series(1, 700) g;
         SELECT nextval('standalone'), nextval('standalone'), nextval('standalone');",
    );
    db.add_su_connector("c");
    let out = db.add_table("s_serial", None, None);
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    out.ok("add s_serial");
    assert!(
        notices
            .iter()
            .any(|n| n.starts_with("created sequence") && n.contains("s_serial_id_seq")),
        "{notices:?}"
    );
    db.add_table_ok("s_ident");
    db.target_sql("SELECT livesync.add_sequence('public.standalone')")
        .ok("add_sequence");
    // A second time is a notice; an unknown sequence an error with its SQLSTATE.
    let again = db.target_sql("SELECT livesync.add_sequence('public.standalone')");
    assert!(
        again
            .notices
            .iter()
            .any(|n| n.message.contains("already kept in step")),
        "{:?}",
        again.notices
    );
    let e = db
        .target_sql("SELECT livesync.add_sequence('public.nope')")
        .err("unknown sequence");
    assert_sqlstate(&e, "42P01");
    assert_message_starts(&e, "sequence \"public.nope\" does not exist on the source");
    // A target name taken by something else, an owned sequence removed on its own, an unknown one.
    db.src("CREATE SEQUENCE other_seq");
    db.tgt("CREATE TABLE not_a_seq (x int)");
    let e = db
        .target_sql(
            "SELECT livesync.add_sequence('public.other_seq', target => 'public.not_a_seq')",
        )
        .err("target not a sequence");
    assert_sqlstate(&e, "42809");
    assert_message_eq(&e, "public.not_a_seq is not a sequence on the target");
    let e = db
        .target_sql("SELECT livesync.remove_sequence('public.s_serial_id_seq')")
        .err("owned sequence");
    assert_sqlstate(&e, "55000");
    assert_message_eq(
        &e,
        "sequence public.s_serial_id_seq is owned by a synced table's column",
    );
    let e = db
        .target_sql("SELECT livesync.remove_sequence('public.other_seq')")
        .err("sequence not kept in step");
    assert_sqlstate(&e, "42704");
    assert_message_eq(
        &e,
        "sequence public.other_seq is not kept in step by connector \"c\"",
    );
    db.wait_ready("public.s_serial");
    db.wait_ready("public.s_ident");

    // Set at the end of the copy (and refreshed): equal to the source's next values.
    for seq in [
        "public.s_serial_id_seq",
        "public.s_ident_id_seq",
        "public.standalone",
    ] {
        wait_until(&format!("{seq} in step"), WAIT, || {
            let (s, t) = (source_next(&db, seq), target_next(&db, seq));
            if s == t {
                Ok(())
            } else {
                Err(format!("source {s}, target {t}"))
            }
        });
    }
    assert_eq!(target_next(&db, "public.standalone"), 115);
    let row = seq_row(&db, "public.s_ident_id_seq");
    assert_eq!(row.text("owned_by_table"), "public.s_ident");
    assert_eq!(row.int("source_next"), 701);
    assert!(!row.is_null("synced_at"), "{row:?}");
    assert_eq!(
        seq_row(&db, "public.standalone").get("owned_by_table"),
        None
    );

    // Refreshed while streaming.
    db.src("INSERT INTO s_ident (v) SELECT 'more' FROM generate_series(1, 300) g");
    wait_until("s_ident's sequence refreshed while streaming", WAIT, || {
        let t = target_next(&db, "public.s_ident_id_seq");
        if t == 1001 {
            Ok(())
        } else {
            Err(format!("target next {t}"))
        }
    });

    // Never backwards: a target sequence used on the target stays ahead.
    db.tgt("SELECT nextval('s_serial_id_seq') FROM generate_series(1, 50)");
    let ahead = target_next(&db, "public.s_serial_id_seq");
    assert_eq!(ahead, 1051);
    db.src("INSERT INTO s_serial (v) VALUES ('one more')");
    db.wait_caught_up("c");
    let synced = db
        .target_sql("SELECT * FROM livesync.sync_sequences('c') ORDER BY source_sequence")
        .ok("sync_sequences");
    let serial = synced
        .iter()
        .find(|r| r.text("source_sequence") == "public.s_serial_id_seq")
        .expect("s_serial in sync_sequences");
    assert_eq!(serial.int("source_next"), 1002);
    assert_eq!(serial.int("target_next"), 1051, "{serial:?}");
    assert!(!serial.bool("moved"));
    assert_eq!(
        target_next(&db, "public.s_serial_id_seq"),
        1051,
        "moved backwards"
    );

    // On demand: a source nextval is on the target as sync_sequences returns.
    db.src("SELECT nextval('standalone') FROM generate_series(1, 10)");
    let synced = db
        .target_sql("SELECT * FROM livesync.sync_sequences()")
        .ok("sync_sequences");
    let st = synced
        .iter()
        .find(|r| r.text("source_sequence") == "public.standalone")
        .expect("standalone");
    assert_eq!(st.int("source_next"), 165);
    assert_eq!(target_next(&db, "public.standalone"), 165);

    // The cutover, as the README says: stop writes on the source (none run here), wait until the
    // lag is zero, sync_sequences, verify_tables, switch, drop_connector — then the application inserts on the
    // target without giving ids.
    db.src("INSERT INTO s_serial (v) SELECT 'last' FROM generate_series(1, 20) g; INSERT INTO s_ident (v) VALUES ('last')");
    db.wait_caught_up("c");
    db.target_sql("SELECT * FROM livesync.sync_sequences('c')")
        .ok("sync_sequences");
    let verified = db
        .target_sql("SELECT source_table, state FROM livesync.verify_tables('c')")
        .ok("verify_tables");
    assert_eq!(verified.len(), 2, "{verified:?}");
    assert!(
        verified.iter().all(|r| r.text("state") == "equal"),
        "{verified:?}"
    );
    db.assert_all_same(&[
        Compare::same("s_serial", "id"),
        Compare::same("s_ident", "id"),
    ]);
    db.call_ok("drop_connector", &["c"]);
    db.tgt("INSERT INTO s_serial (v) SELECT 'app' FROM generate_series(1, 100) g; INSERT INTO s_ident (v) SELECT 'app' FROM generate_series(1, 100) g");
    let dup = db.tgt("SELECT (SELECT count(*) - count(DISTINCT id) FROM s_serial) + (SELECT count(*) - count(DISTINCT id) FROM s_ident) AS n");
    assert_eq!(dup[0].int("n"), 0);
    let max_src = db.src("SELECT max(id) AS m FROM s_ident")[0].int("m");
    let min_app = db.tgt("SELECT min(id) AS m FROM s_ident WHERE v = 'app'")[0].int("m");
    assert!(
        min_app > max_src,
        "target rows {min_app} collide with the source's ids up to {max_src}"
    );
}
