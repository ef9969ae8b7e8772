//! CREATE EXTENSION and the background processes it brings.

use crate::support::*;
use std::sync::{Arc, Barrier};

/// The extension creates cluster-wide objects (role livesync_admin); creating
/// it in several databases at the same time, on a cluster that has never had
/// it, must work.
#[test]
fn concurrent_create_extension() {
    let fresh = dedicated_target("ext-race");
    let target = &fresh;
    let dbs: Vec<String> = (1..=4).map(|i| format!("t_ext_concurrent_{i}")).collect();
    let mut admin = target.connect("postgres");
    for db in &dbs {
        query(
            &mut admin,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
        query(&mut admin, &format!("CREATE DATABASE {db}"));
    }
    let barrier = Arc::new(Barrier::new(dbs.len()));
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = dbs
            .iter()
            .map(|db| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    let mut c = target.connect(db);
                    barrier.wait();
                    c.batch_execute("CREATE EXTENSION livesync")
                        .map_err(|e| format!("{db}: {}", db_error(&e)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Each database gets its manager.
    let managers_ok = results.iter().all(|r| r.is_ok()) && {
        wait_until("a livesync manager per database", TIMEOUT, || {
            let rows = query(
                &mut target.connect("postgres"),
                "SELECT datname FROM pg_stat_activity WHERE backend_type = 'livesync manager'
                  AND datname LIKE 't_ext_concurrent_%' ORDER BY 1",
            );
            let names: Vec<String> = rows.iter().map(|r| r.text("datname").to_string()).collect();
            if names == dbs {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        });
        true
    };

    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "concurrent CREATE EXTENSION livesync failed:\n{failures:#?}"
    );
    assert!(managers_ok);
}

/// One launcher per cluster, one manager per database with the extension;
/// DROP EXTENSION stops the database's workers.
#[test]
fn launcher_and_managers() {
    let db = TestDb::new("ext_workers");
    let count = |sql: &str| query_count(&mut db.target.connect("postgres"), sql);
    wait_until("the manager of the new database", TIMEOUT, || {
        let n = count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'livesync manager' AND datname = {}",
            lit(&db.name)
        ));
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} managers"))
        }
    });
    assert_eq!(
        count("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'livesync launcher'"),
        1
    );

    db.add_ok(&db.sync_conninfo(), Some("c"));
    let row = db.wait_running("c");
    let pid = row.text("worker_pid").to_string();

    db.target_sql("DROP EXTENSION livesync")
        .ok("DROP EXTENSION livesync");
    wait_until(
        "the database's livesync workers to exit after DROP EXTENSION",
        TIMEOUT,
        || {
            let n = count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'livesync%' AND datname = {}",
            lit(&db.name)
        ));
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} livesync workers still in {}", db.name))
            }
        },
    );
    assert!(!db.is_pid_alive_on_target(&pid));
    assert_eq!(
        count("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'livesync launcher'"),
        1,
        "the launcher stays"
    );
}

/// Between a server restart that loaded a new library and `ALTER EXTENSION livesync UPDATE` (or
/// after an UPDATE run before the restart) the library and the catalog are of different versions:
/// no connector runs, and the log says what to do; once they match, the connectors start again.
/// (tests/upgrade.rs walks the real upgrade; here the catalog's version is changed by hand.)
#[test]
fn connectors_wait_while_the_library_and_the_catalog_versions_differ() {
    let db = TestDb::new("version_mismatch");
    db.add_ok(&db.sync_conninfo(), Some("c"));
    let pid = db.wait_running("c").text("worker_pid").to_string();
    let version = db.target_rows("SELECT extversion FROM pg_extension WHERE extname = 'livesync'")
        [0]
    .text("extversion")
    .to_string();
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "the installed livesync is not this tree's"
    );

    db.tgt("UPDATE pg_extension SET extversion = '0.0.0-mismatch-test' WHERE extname = 'livesync'");
    let message = format!("livesync library version {version} does not match the extension's version 0.0.0-mismatch-test");
    wait_until(
        "the connector to stop and the manager to say why",
        TIMEOUT,
        || {
            let running = db.target_rows(&format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'livesync connector' AND datname = {}",
            lit(&db.name)
        ))[0]
            .int("n");
            let logged = db.target.log_contents().contains(&message);
            if running == 0 && logged {
                Ok(())
            } else {
                Err(format!(
                    "{running} connector process(es); {message:?} logged: {logged}"
                ))
            }
        },
    );
    assert!(!db.is_pid_alive_on_target(&pid));
    let log = db.target.log_contents();
    assert_contains(
        &log,
        "run ALTER EXTENSION livesync UPDATE",
        "the target's log",
    );

    db.tgt(&format!(
        "UPDATE pg_extension SET extversion = {} WHERE extname = 'livesync'",
        lit(&version)
    ));
    db.wait_running_except("c", Some(&pid), TIMEOUT);
}
