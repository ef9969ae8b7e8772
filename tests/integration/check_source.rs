//! livesync.check_source: a report, never an error, never a side effect.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

const CHECKS: &[&str] = &[
    "connection",
    "server_version",
    "wal_level",
    "replication_slots",
    "wal_senders",
    "replication_privilege",
    "create_publication",
    "encoding",
];

fn check_source(db: &TestDb, conninfo: &str) -> BTreeMap<String, Row> {
    let rows = db
        .target_sql(&format!(
            "SELECT * FROM livesync.check_source({})",
            lit(conninfo)
        ))
        .ok("livesync.check_source");
    let mut map = BTreeMap::new();
    for r in rows {
        let cols: Vec<&str> = r.0.keys().map(String::as_str).collect();
        assert_eq!(
            cols,
            vec!["check", "detail", "hint", "ok"],
            "columns of check_source"
        );
        let name = r.text("check").to_string();
        assert!(
            map.insert(name.clone(), r).is_none(),
            "check {name:?} reported twice"
        );
    }
    map
}

fn names(map: &BTreeMap<String, Row>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

fn all_checks() -> Vec<&'static str> {
    let mut v = CHECKS.to_vec();
    v.sort();
    v
}

#[test]
fn check_source_good() {
    let db = TestDb::new("check_good");
    let checks = check_source(&db, &db.sync_conninfo());
    assert_eq!(names(&checks), all_checks());
    for (name, row) in &checks {
        assert!(
            row.bool("ok"),
            "check {name} should pass on a good source: {row:?}"
        );
    }

    // It creates nothing and leaves no connection behind.
    assert!(db.connector_names().is_empty());
    assert!(
        db.source_publications().is_empty(),
        "{:?}",
        db.source_publications()
    );
    assert!(db.source_slots().is_empty(), "{:?}", db.source_slots());
    wait_until(
        "check_source's connection to close",
        Duration::from_secs(10),
        || {
            let s = db.source_sessions_of(SYNC_USER);
            if s.is_empty() {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    );
}

#[test]
fn check_source_bad() {
    let bad = shared_bad_source();
    let db = TestDb::new("check_bad");
    let checks = check_source(&db, &bad.conninfo(BAD_SOURCE_DB, BAD_SOURCE_USER));
    assert_eq!(names(&checks), all_checks());
    for name in ["connection", "server_version"] {
        assert!(
            checks[name].bool("ok"),
            "{name} should pass: {:?}",
            checks[name]
        );
    }
    for name in [
        "wal_level",
        "replication_slots",
        "wal_senders",
        "replication_privilege",
        "create_publication",
    ] {
        let row = &checks[name];
        assert!(
            !row.bool("ok"),
            "{name} should fail on the bad source: {row:?}"
        );
        assert!(
            row.get("hint").is_some_and(|h| !h.trim().is_empty()),
            "failing check {name} needs a hint: {row:?}"
        );
    }
    assert_contains(
        checks["wal_level"].text("hint"),
        "wal_level = logical",
        "wal_level hint",
    );
    assert!(db.connector_names().is_empty());
    let mut b = bad.connect(BAD_SOURCE_DB);
    assert_eq!(
        query_count(&mut b, "SELECT count(*) FROM pg_publication"),
        0
    );
}

#[test]
fn check_source_unreachable() {
    let db = TestDb::new("check_unreachable");
    let port = free_port();
    let checks = check_source(
        &db,
        &format!("host=127.0.0.1 port={port} dbname=app user=sync"),
    );
    assert_eq!(
        names(&checks),
        vec!["connection"],
        "only the connection check when unreachable"
    );
    let row = &checks["connection"];
    assert!(!row.bool("ok"), "{row:?}");
    assert!(
        row.get("detail").is_some_and(|d| !d.trim().is_empty()),
        "say why: {row:?}"
    );
    assert!(db.connector_names().is_empty());
}
