//! Crash safety of copy and stream: the connector worker killed with SIGKILL
//! (PostgreSQL then restarts the whole target cluster), target and source
//! restarts, all under load. Afterwards the target must hold exactly the
//! source's rows: nothing lost, nothing applied twice. Each test gets a
//! dedicated cluster for the server it disturbs.

use std::time::Duration;

use crate::support::*;

const RECOVERY: Duration = Duration::from_secs(90);

/// A table with a key (mixed changes) and one without a key under REPLICA
/// IDENTITY FULL (inserts only: a change applied twice shows as a duplicate).
fn setup_two_tables(db: &TestDb) -> Vec<(&'static str, LoadKind)> {
    let tables = vec![("cpk", LoadKind::Mixed), ("cnopk", LoadKind::InsertOnly)];
    for (t, kind) in &tables {
        db.src(&load_table_ddl(t, kind));
    }
    db.src(
        "ALTER TABLE cnopk REPLICA IDENTITY FULL;
         INSERT INTO cpk SELECT g, g % 10, g, 'seed' FROM generate_series(1, 5000) g;
         INSERT INTO cnopk SELECT g, g, 'seed' FROM generate_series(1, 5000) g;",
    );
    tables
}

fn add_and_wait(db: &TestDb, tables: &[(&str, LoadKind)]) {
    for (t, _) in tables {
        db.add_table_ok(t);
    }
    for (t, _) in tables {
        db.wait_ready(&format!("public.{t}"));
    }
}

/// After the load stopped: caught up, and every row equal; no duplicates in
/// the keyless table.
fn assert_converged(db: &TestDb, connector: &str) {
    db.wait_caught_up(connector);
    let mut failures = Vec::new();
    for cmp in [Compare::same("cpk", "id"), Compare::by_row("cnopk")] {
        if let Err(r) = db.compare(&cmp) {
            failures.push(r);
        }
    }
    let dups = db.tgt("SELECT count(*) - count(DISTINCT id) AS d FROM cnopk")[0].int("d");
    if dups != 0 {
        failures.push(format!("{dups} duplicated row(s) in cnopk on the target"));
    }
    db.fail_if_any(&failures);
    for t in ["public.cpk", "public.cnopk"] {
        let r = db.progress(t);
        assert_eq!(r.get("state"), Some("ready"), "{r:?}");
    }
}

fn worker_pid(db: &TestDb, connector: &str) -> String {
    db.wait_running(connector).text("worker_pid").to_string()
}

/// SIGKILL of the connector worker while it streams under load, twice.
#[test]
fn crash_kill_worker_while_streaming() {
    let target = dedicated_target("crash-stream");
    let db = TestDb::on(shared_source(), &target, "crash_kill_stream");
    let tables = setup_two_tables(&db);
    db.add_su_connector("c");
    add_and_wait(&db, &tables);

    let load = Load::start(db.source, &db.name, &tables, 3, Duration::from_millis(2));
    for round in 1..=2 {
        load.wait_ops(400, Duration::from_secs(30));
        let pid = worker_pid(&db, "c");
        if round == 1 {
            // Most likely in the middle of applying this 50,000-row transaction.
            db.src("INSERT INTO cnopk SELECT g, g, 'bulk' FROM generate_series(500001, 550000) g");
            std::thread::sleep(Duration::from_millis(300));
        }
        kill9(&pid);
        let row = db.wait_running_except("c", Some(&pid), RECOVERY);
        assert_ne!(row.get("worker_pid"), Some(pid.as_str()), "round {round}");
    }
    load.wait_ops(400, Duration::from_secs(30));
    let stats = load.stop();
    assert!(stats.commits > 500, "{stats:?}");
    assert_contains(
        &target.log_contents(),
        "terminated by signal 9",
        "the target log (the worker was SIGKILLed)",
    );
    assert_converged(&db, "c");
}

/// `pg_ctl restart -m fast` of the target while streaming under load.
#[test]
fn crash_target_restart_while_streaming() {
    let target = dedicated_target("crash-restart");
    let db = TestDb::on(shared_source(), &target, "crash_target_restart");
    let tables = setup_two_tables(&db);
    db.add_su_connector("c");
    add_and_wait(&db, &tables);

    let load = Load::start(db.source, &db.name, &tables, 3, Duration::from_millis(2));
    load.wait_ops(400, Duration::from_secs(30));
    let pid = worker_pid(&db, "c");
    target.restart();
    db.wait_running_except("c", Some(&pid), RECOVERY);
    load.wait_ops(400, Duration::from_secs(30));
    let stats = load.stop();
    assert!(stats.commits > 500, "{stats:?}");
    assert_converged(&db, "c");
}

/// `pg_ctl restart -m fast` of the source while streaming under load (the
/// load's clients reconnect too).
#[test]
fn crash_source_restart_while_streaming() {
    let source = dedicated_source("crash-src");
    let db = TestDb::on(&source, shared_target(), "crash_source_restart");
    let tables = setup_two_tables(&db);
    db.add_su_connector("c");
    add_and_wait(&db, &tables);

    let load = Load::start(db.source, &db.name, &tables, 3, Duration::from_millis(2));
    load.wait_ops(400, Duration::from_secs(30));
    source.restart();
    load.wait_ops(400, Duration::from_secs(60));
    // The connector streams again: a change made now arrives.
    db.src("INSERT INTO cpk VALUES (1, 0, 0, 'after the restart') ON CONFLICT (id) DO UPDATE SET note = 'after the restart'");
    wait_until(
        "a change made after the source restart to arrive",
        RECOVERY,
        || {
            let r = db
                .target_sql("SELECT note FROM cpk WHERE id = 1")
                .result
                .map_err(|e| e.to_string())?;
            if r.first().and_then(|r| r.get("note")) == Some("after the restart") {
                Ok(())
            } else {
                Err(format!("{r:?}; connectors: {:?}", db.try_connectors()))
            }
        },
    );
    load.wait_ops(200, Duration::from_secs(30));
    let stats = load.stop();
    assert!(stats.commits > 500, "{stats:?}");
    assert_converged(&db, "c");
}

/// SIGKILL of the process running a table's initial copy (a copy worker; the
/// copy is split into ctid ranges, some already committed), with changes on
/// the source while the target recovers.
#[test]
fn crash_kill_worker_mid_copy() {
    const ROWS: i64 = 2_000_000;
    // A source of its own too: a slot's snapshot waits for every running
    // transaction of the source cluster, which other tests would prolong.
    let source = dedicated_source("crash-copy-src");
    // Small ranges, two copy workers: the copy takes several ranges in turn.
    let target = Cluster::start_new(
        "crash-copy",
        ClusterConfig::target()
            .with_conf("livesync.copy_range_mb = 4")
            .with_conf("livesync.max_copy_workers = 2"),
    );
    let db = TestDb::on(&source, &target, "crash_kill_copy");
    db.src(&format!(
        "CREATE TABLE big (id int NOT NULL, v int NOT NULL);
         INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g;
         ALTER TABLE big ADD PRIMARY KEY (id);
         ANALYZE big;"
    ));
    let connector_pid = db.add_su_connector("c").text("worker_pid").to_string();
    db.add_table_ok("big");
    let (copying, copy_pid) = wait_until(
        "big to be copying, some ranges done and others not, with a COPY running",
        Duration::from_secs(90),
        || {
            let r = db.try_progress("public.big")?;
            let done = r
                .get("ranges_done")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            let total = r
                .get("ranges_total")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            if r.get("state") != Some("copying")
                || r.int("rows_copied") == 0
                || done < 1
                || done >= total
            {
                return Err(format!("{r:?}"));
            }
            // The running COPY is a livesync copy worker's, in pg_stat_progress_copy.
            let p = db
                .target_sql(
                    "SELECT p.pid, p.command, p.tuples_processed FROM pg_stat_progress_copy p
                       JOIN pg_stat_activity a ON a.pid = p.pid AND a.backend_type = 'livesync copy'
                      WHERE p.relid = 'public.big'::regclass ORDER BY p.tuples_processed DESC",
                )
                .result
                .map_err(|e| e.to_string())?;
            match p.first() {
                Some(c) if c.get("command") == Some("COPY FROM") => {
                    Ok((r.clone(), c.text("pid").to_string()))
                }
                _ => Err(format!(
                    "pg_stat_progress_copy: {p:?}; table_progress: {r:?}"
                )),
            }
        },
    );
    let percent: f64 = copying.text("percent").parse().expect("percent");
    assert!(percent > 0.0 && percent < 100.0, "{copying:?}");
    assert_eq!(
        copying.get("est_rows"),
        Some(ROWS.to_string().as_str()),
        "{copying:?}"
    );
    kill9(&copy_pid);
    eprintln!("crash_kill_worker_mid_copy: killed copy worker {copy_pid} at {copying:?}");

    // Changes on the source while the target recovers and copies again: rows
    // appended, rows updated in every range (their new versions land at the
    // end of the table), rows deleted from the first range.
    db.src(
        "INSERT INTO big SELECT g, -1 FROM generate_series(3000001, 3001000) g;
         UPDATE big SET v = -2 WHERE id % 100000 = 0;
         DELETE FROM big WHERE id BETWEEN 1000 AND 1999;",
    );
    db.wait_running_except("c", Some(&connector_pid), RECOVERY);
    let started = std::time::Instant::now();
    let row = db.wait_table_state("public.big", "ready", Duration::from_secs(150));
    eprintln!(
        "crash_kill_worker_mid_copy: ready {:?} after recovery began: {row:?}",
        started.elapsed()
    );
    assert_contains(
        &target.log_contents(),
        "terminated by signal 9",
        "the target log (the copy worker was SIGKILLed)",
    );
    db.src("INSERT INTO big VALUES (0, 0); UPDATE big SET v = -3 WHERE id % 250000 = 1");
    db.wait_caught_up("c");
    let n = db.assert_same(&Compare::same("big", "id"));
    assert_eq!(n, ROWS + 1000 - 1000 + 1);
    let pk = db.tgt(
        "SELECT count(*) AS n FROM pg_index WHERE indrelid = 'big'::regclass AND indisprimary",
    );
    assert_eq!(pk[0].int("n"), 1, "the primary key is built after the copy");
    assert_eq!(row.int("rows_copied"), ROWS, "{row:?}");
}
