//! Every error of the foundation API: SQLSTATE, message, detail/hint, and
//! nothing half-created afterwards.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn create_extension_without_shared_preload_libraries_fails() {
    // The shared source has no shared_preload_libraries.
    let source = shared_source();
    let db = "t_err_no_preload";
    let mut admin = source.connect("postgres");
    query(&mut admin, &format!("DROP DATABASE IF EXISTS {db}"));
    query(&mut admin, &format!("CREATE DATABASE {db}"));

    let e = run_sql(
        source,
        db,
        os_superuser(),
        "CREATE EXTENSION livesync",
        Duration::from_secs(60),
    )
    .err("CREATE EXTENSION livesync without shared_preload_libraries");
    assert_sqlstate(&e, "55000");
    assert_contains(&e.message, "shared_preload_libraries", "message");
    assert_contains(e.hint(), "shared_preload_libraries = 'livesync'", "hint");

    let mut c = source.connect(db);
    assert_eq!(
        query_count(
            &mut c,
            "SELECT count(*) FROM pg_extension WHERE extname = 'livesync'"
        ),
        0
    );
    assert_eq!(
        query_count(
            &mut c,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'livesync'"
        ),
        0,
        "a failed CREATE EXTENSION must leave no schema behind"
    );
    drop(c);
    let _ = try_query(
        &mut admin,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[test]
fn add_connector_connection_refused() {
    let db = TestDb::new("err_refused");
    let before = db.snapshot();
    let port = free_port(); // nobody listens there
    let e = db.add_err(
        &format!("host=127.0.0.1 port={port} dbname={} user=sync", db.name),
        Some("c"),
    );
    assert_sqlstate(&e, "08001");
    assert_message_starts(
        &e,
        &format!("could not connect to the source at \"127.0.0.1:{port}\""),
    );
    assert_contains(&e.message.to_lowercase(), "connection refused", "message");
    db.assert_unchanged(&before, "a refused connection");
}

/// The spec's example is `host=192.0.2.1 connect_timeout=2`. Tests here must
/// not send traffic off loopback, so the unreachable server is a loopback port
/// whose TCP handshakes are dropped (see `syn_blackhole`): the same situation,
/// a connect that never completes.
#[test]
fn add_connector_connect_timeout() {
    let hole = syn_blackhole();
    assert_connect_times_out(
        "err_timeout",
        hole.port,
        "add_connector to an unreachable source",
    );
}

/// add_connector against a source on `port` that never completes the connection fails with
/// 08001 "could not connect … timed out/unreachable" within connect_timeout=2, creating nothing.
#[track_caller]
fn assert_connect_times_out(test: &str, port: u16, what: &str) {
    let db = TestDb::new(test);
    let before = db.snapshot();
    let started = Instant::now();
    let e = db
        .target_sql_within(
            &format!(
                "SELECT livesync.add_connector({}, 'c')",
                lit(&format!(
                    "host=127.0.0.1 port={port} dbname={} user=sync connect_timeout=2",
                    db.name
                ))
            ),
            Duration::from_secs(25),
        )
        .err(what);
    let took = started.elapsed();
    assert_sqlstate(&e, "08001");
    assert_message_starts(
        &e,
        &format!("could not connect to the source at \"127.0.0.1:{port}\""),
    );
    let m = e.message.to_lowercase();
    assert!(
        m.contains("timed out") || m.contains("unreachable"),
        "message should say `timed out` or `unreachable`:\n{e}"
    );
    assert!(
        took < Duration::from_secs(15),
        "connect_timeout=2 took {took:?}"
    );
    db.assert_unchanged(&before, "a connection timeout");
}

/// A server that accepts the TCP connection and then never answers: as with
/// libpq, connect_timeout bounds the whole connection attempt (TCP connect +
/// startup/authentication), so add_connector must not hang.
#[test]
fn add_connector_connect_timeout_silent_server() {
    let silent = silent_server();
    let port = silent.local_addr().unwrap().port();
    assert_connect_times_out(
        "err_silent",
        port,
        "add_connector to a server that never answers",
    );
    drop(silent);
}

#[test]
fn add_connector_unresolvable_host() {
    let db = TestDb::new("err_dns");
    let before = db.snapshot();
    let e = db.add_err(
        "host=no-such-host.invalid port=5432 dbname=app user=sync",
        Some("c"),
    );
    assert_sqlstate(&e, "08001");
    assert_message_eq(
        &e,
        "could not resolve the source host \"no-such-host.invalid\"",
    );
    db.assert_unchanged(&before, "an unresolvable host");
}

#[test]
fn add_connector_wrong_password() {
    let db = TestDb::new("err_password");
    let before = db.snapshot();
    let wrong = "Wr0ng-pw-77d2e0";
    let conninfo = format!("{} password={wrong}", db.source_conninfo(SCRAM_USER));
    let e = db.add_err(&conninfo, Some("c"));
    assert_sqlstate(&e, "08004");
    assert_message_eq(
        &e,
        &format!("the source rejected the credentials of role \"{SCRAM_USER}\""),
    );
    assert_not_contains(&e.all_text(), "77d2e0", "the error (message, detail, hint)");
    db.assert_unchanged(&before, "a rejected password");

    assert_not_contains(
        &db.target.log_contents_flushed(),
        "77d2e0",
        "the target's server log",
    );
}

#[test]
fn add_connector_missing_database() {
    let db = TestDb::new("err_nodb");
    let before = db.snapshot();
    let e = db.add_err(&db.source.conninfo("nope", SYNC_USER), Some("c"));
    assert_sqlstate(&e, "08004");
    assert_message_eq(
        &e,
        &format!(
            "database \"nope\" does not exist on the source at \"127.0.0.1:{}\"",
            db.source.port()
        ),
    );
    db.assert_unchanged(&before, "a missing source database");
}

#[test]
fn add_connector_malformed_conninfo() {
    let db = TestDb::new("err_malformed");
    let before = db.snapshot();
    for bad in [
        "host=127.0.0.1 port=notaport".to_string(),
        format!("host=127.0.0.1 dbname='{}", db.name), // unterminated quote
        "this is not a connection string".to_string(),
    ] {
        let e = db.add_err(&bad, Some("c"));
        assert_sqlstate(&e, "22023");
        assert_message_starts(&e, "invalid connection string");
    }
    db.assert_unchanged(&before, "malformed connection strings");
}

/// `DETAIL` must list each unmet prerequisite on its own line.
fn assert_each_on_own_line(detail: &str, items: &[(&str, &dyn Fn(&str) -> bool)]) {
    let lines: Vec<&str> = detail.lines().filter(|l| !l.trim().is_empty()).collect();
    // Find an assignment of distinct lines to items (tiny backtracking).
    fn assign(
        i: usize,
        items: &[(&str, &dyn Fn(&str) -> bool)],
        lines: &[&str],
        used: &mut Vec<bool>,
    ) -> bool {
        if i == items.len() {
            return true;
        }
        for (j, l) in lines.iter().enumerate() {
            if !used[j] && (items[i].1)(l) {
                used[j] = true;
                if assign(i + 1, items, lines, used) {
                    return true;
                }
                used[j] = false;
            }
        }
        false
    }
    for (name, pred) in items {
        assert!(
            lines.iter().any(|l| pred(l)),
            "DETAIL does not mention the unmet prerequisite `{name}`:\n{detail}"
        );
    }
    let mut used = vec![false; lines.len()];
    assert!(
        assign(0, items, &lines, &mut used),
        "DETAIL should list each unmet prerequisite ({}) on its own line:\n{detail}",
        items.iter().map(|i| i.0).collect::<Vec<_>>().join(", ")
    );
}

#[test]
fn add_connector_unmet_prerequisites() {
    let bad = shared_bad_source();
    let db = TestDb::new("err_prereq");
    let before = db.snapshot();
    let conninfo = bad.conninfo(BAD_SOURCE_DB, BAD_SOURCE_USER);
    let e = db.add_err(&conninfo, Some("c"));
    eprintln!("{e}"); // shown with --nocapture or on failure
    assert_sqlstate(&e, "55000");
    assert_message_starts(
        &e,
        &format!(
            "the source at \"127.0.0.1:{}/{BAD_SOURCE_DB}\" does not meet livesync's prerequisites",
            bad.port()
        ),
    );
    let lc = |l: &str| l.to_lowercase();
    assert_each_on_own_line(
        e.detail(),
        &[
            ("wal_level", &|l: &str| lc(l).contains("wal_level")),
            ("replication slots", &|l: &str| {
                lc(l).contains("max_replication_slots") || lc(l).contains("replication slot")
            }),
            ("wal senders", &|l: &str| {
                lc(l).contains("max_wal_senders") || lc(l).contains("wal sender")
            }),
            ("replication privilege", &|l: &str| {
                l.contains("REPLICATION")
                    || lc(l).contains("replication privilege")
                    || lc(l).contains("replication attribute")
            }),
            ("create publication", &|l: &str| {
                lc(l).contains("create")
                    && (lc(l).contains("publication") || lc(l).contains("database"))
            }),
        ],
    );
    let hint = e.hint();
    assert_contains(hint, "ALTER SYSTEM SET wal_level = logical", "HINT");
    assert_contains(hint, "ALTER ROLE", "HINT");
    assert_contains(hint, "REPLICATION", "HINT");
    assert_contains(hint, "max_replication_slots", "HINT");
    assert_contains(hint, "max_wal_senders", "HINT");
    assert_contains(&hint.to_lowercase(), "grant create on database", "HINT");

    db.assert_unchanged(&before, "unmet prerequisites");
    let mut b = bad.connect(BAD_SOURCE_DB);
    assert_eq!(
        query_count(&mut b, "SELECT count(*) FROM pg_publication"),
        0
    );
}

#[test]
fn add_connector_duplicate_name() {
    let db = TestDb::new("err_duplicate");
    assert_eq!(db.add_ok(&db.sync_conninfo(), Some("dup")), "dup");
    db.wait_running("dup");
    let before = db.snapshot();
    assert_eq!(
        before.publications.len(),
        2,
        "its publication and the append-only one: {before:?}"
    );

    let e = db.add_err(&db.sync_conninfo(), Some("dup"));
    assert_sqlstate(&e, "42710");
    assert_message_eq(&e, "connector \"dup\" already exists");
    db.assert_unchanged(&before, "a duplicate add_connector");

    // Renaming onto an existing name is a duplicate too.
    assert_eq!(db.add_ok(&db.sync_conninfo(), Some("other")), "other");
    db.wait_running("other");
    let before = db.snapshot();
    let e = db.call_err("rename_connector", &["other", "dup"]);
    assert_sqlstate(&e, "42710");
    assert_message_eq(&e, "connector \"dup\" already exists");
    db.assert_unchanged(&before, "renaming onto an existing name");
}

#[test]
fn unknown_connector() {
    let db = TestDb::new("err_unknown");
    db.add_ok(&db.sync_conninfo(), Some("real"));
    db.wait_running("real");
    let before = db.snapshot();
    for (func, args) in [
        ("pause_connector", vec!["ghost"]),
        ("resume_connector", vec!["ghost"]),
        ("rename_connector", vec!["ghost", "spirit"]),
        ("drop_connector", vec!["ghost"]),
    ] {
        let e = db.call_err(func, &args);
        assert_sqlstate(&e, "42704");
        assert_message_eq(&e, "connector \"ghost\" does not exist");
    }
    db.assert_unchanged(&before, "calls on an unknown connector");
}

#[test]
fn empty_connector_name() {
    let db = TestDb::new("err_empty_name");
    let before = db.snapshot();
    let e = db.add_err(&db.sync_conninfo(), Some(""));
    assert_sqlstate(&e, "22023");
    db.assert_unchanged(&before, "add_connector with an empty name");

    db.add_ok(&db.sync_conninfo(), Some("c"));
    db.wait_running("c");
    let before = db.snapshot();
    let e = db.call_err("rename_connector", &["c", ""]);
    assert_sqlstate(&e, "22023");
    db.assert_unchanged(&before, "rename_connector to an empty name");
}
