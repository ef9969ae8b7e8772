//! Issue 12: the target never crashes, transient errors never break a table, a lost slot is
//! loud. Dedicated clusters where a scenario changes server settings or restarts a server.

use std::time::Duration;

use crate::support::*;

/// More connectors than replication origin slots (`max_replication_slots` on the target):
/// `add_connector` refuses the one too many with 53400 and a hint naming the setting; and when
/// another origin takes the last slot before a connector's worker sets its own up, the worker
/// reports it and retries, and the target server never restarts (it used to dereference NULL
/// after the failed set-up, taking the whole cluster down after every back-off).
#[test]
fn more_connectors_than_origin_slots_never_crash_the_target() {
    let source = dedicated_source("origins_src");
    let target = Cluster::start_new("origins_tgt", ClusterConfig::target().with_conf("max_replication_slots = 2"));
    let db = TestDb::on(&source, &target, "origins");
    db.src(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'x');
         CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b VALUES (1, 'y');",
    );
    db.add_su_connector("c1");
    db.add_table("a", None, Some("c1")).ok("add a");
    db.wait_ready("public.a");
    // c2 is added (one slot left for it) but paused before its worker runs.
    db.target_sql(&format!(
        "SELECT livesync.add_connector({}, 'c2'); SELECT livesync.pause_connector('c2');",
        lit(&db.su_conninfo())
    ))
    .ok("add c2 paused");
    db.add_table("b", None, Some("c2")).ok("add b");

    // A third is one too many.
    let e = db.add_connector(&db.su_conninfo(), Some("c3")).err("a third connector with two origin slots");
    assert_sqlstate(&e, "53400");
    assert_message_eq(&e, "no replication origin is free on the target for another connector");
    assert!(e.hint().contains("max_replication_slots"), "{e}");
    assert!(db.connector("c3").is_none());

    // Another origin takes c2's slot; c2 is resumed.
    db.tgt("SELECT pg_replication_origin_create('other'); SELECT pg_replication_origin_advance('other', '0/1')");
    let started = db.tgt("SELECT pg_postmaster_start_time()::text AS t")[0].text("t").to_string();
    db.call_ok("resume_connector", &["c2"]);
    wait_until("c2 reporting the missing origin slot", Duration::from_secs(60), || {
        let r = db.connector("c2").unwrap();
        if r.get("last_error").unwrap_or("").contains("replication state slot") {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    wait_until("c2's worker retried", Duration::from_secs(60), || {
        let n = target.log_contents().matches("could not find free replication state slot").count();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} attempts logged"))
        }
    });
    assert_eq!(db.tgt("SELECT pg_postmaster_start_time()::text AS t")[0].text("t"), started, "the target restarted");
    assert!(!target.log_contents().contains("terminated by signal"), "{}", log_excerpt(&target, 40));

    // c1 keeps streaming meanwhile.
    db.src("INSERT INTO a VALUES (2, 'z')");
    db.wait_same(&Compare::same("a", "id"), Duration::from_secs(30));

    // With the slot free again, c2 copies and streams.
    db.tgt("SELECT pg_replication_origin_drop('other')");
    db.wait_ready("public.b");
    db.src("INSERT INTO b VALUES (3, 'w')");
    db.wait_same(&Compare::same("b", "id"), Duration::from_secs(60));
}

/// A user holding a row lock on the target for longer than the workers' lock_timeout (2 s)
/// delays the table, never breaks it: it shows `retrying` with the reason and its SQLSTATE while
/// the stream backs off and retries, and catches up once the lock is gone. A data error (a
/// unique violation on the target) still stops only its table, with its SQLSTATE, DETAIL and
/// context stored.
#[test]
fn a_long_user_lock_delays_a_table_never_breaks_it() {
    let db = TestDb::new("lock_retry");
    db.src(
        "CREATE TABLE lk (id int PRIMARY KEY, v text);
         INSERT INTO lk SELECT g, 'v' || g FROM generate_series(1, 10) g;
         CREATE TABLE uq (id int PRIMARY KEY, email text);
         INSERT INTO uq VALUES (1, 'a@x');",
    );
    db.add_su_connector("c");
    db.add_table_ok("lk");
    db.add_table_ok("uq");
    db.wait_ready("public.lk");
    db.wait_ready("public.uq");

    let mut holder = db.target.connect(&db.name);
    holder.batch_execute("BEGIN; SELECT * FROM lk WHERE id = 5 FOR UPDATE").unwrap();
    let retries_before = db.target.log_contents().matches("rolled back after a transient error").count();
    db.src("UPDATE lk SET v = 'changed' WHERE id = 5");
    let row = db.wait_table_state("public.lk", "retrying", Duration::from_secs(30));
    let reason = row.get("retry_reason").unwrap_or("");
    assert!(reason.contains("lock timeout") && reason.contains("55P03"), "{row:?}");
    // Held for several lock timeouts: still retrying, never `error`.
    wait_until("three retries", Duration::from_secs(60), || {
        let n = db.target.log_contents().matches("rolled back after a transient error").count() - retries_before;
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} retries"))
        }
    });
    let row = db.progress("public.lk");
    assert_eq!(row.get("state"), Some("retrying"), "{row:?}");
    assert!(row.is_null("last_error"), "{row:?}");
    holder.batch_execute("COMMIT").unwrap();
    db.wait_same(&Compare::same("lk", "id"), Duration::from_secs(60));
    let row = db.wait_table_state("public.lk", "ready", Duration::from_secs(30));
    assert!(row.is_null("retry_reason"), "{row:?}");

    // A data error: a unique index the user made on the target.
    db.tgt("CREATE UNIQUE INDEX uq_email ON uq (email)");
    db.src("INSERT INTO uq VALUES (2, 'a@x'); INSERT INTO lk VALUES (11, 'after')");
    let row = db.wait_table_state("public.uq", "error", Duration::from_secs(30));
    assert_eq!(row.get("last_error_sqlstate"), Some("23505"), "{row:?}");
    assert!(row.text("last_error").contains("uq_email"), "{row:?}");
    assert!(row.text("last_error_detail").contains("a@x"), "{row:?}");
    assert!(row.text("last_error_context").contains("\"public\".\"uq\""), "{row:?}");
    db.wait_same(&Compare::same("lk", "id"), Duration::from_secs(30));
}
