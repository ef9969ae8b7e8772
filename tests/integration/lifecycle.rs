//! add → running → pause → resume → rename → drop, as a user sees it in
//! livesync.connectors and in both servers' pg_stat_activity.

use crate::support::*;

const VIEW_COLUMNS: &[&str] = &[
    "name",
    "state",
    "enabled",
    "worker_pid",
    "source_host",
    "source_port",
    "source_dbname",
    "source_user",
    "publication_name",
    "slot_name",
    "created_at",
    "last_connected_at",
    "last_error",
    "last_error_at",
];

fn is_livesync_publication_name(s: &str) -> bool {
    match s.strip_prefix("livesync_") {
        Some(hex) => {
            hex.len() == 16
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        }
        None => false,
    }
}

fn count_backends(db: &TestDb, backend_type: &str, datname: Option<&str>) -> i64 {
    let filter = match datname {
        Some(d) => format!(" AND datname = {}", lit(d)),
        None => String::new(),
    };
    db.target_rows(&format!(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = {}{filter}",
        lit(backend_type)
    ))[0]
        .int("n")
}

#[test]
fn add_connector_runs_worker_and_connects_to_source() {
    let db = TestDb::new("life_add");
    // Default name: the conninfo's dbname.
    let name = db.add_ok(&db.sync_conninfo(), None);
    assert_eq!(name, db.name);

    let row = db.wait_running(&name);

    // The view has the documented columns (later features may add more).
    let missing: Vec<&str> = VIEW_COLUMNS
        .iter()
        .copied()
        .filter(|c| !row.has(c))
        .collect();
    assert!(
        missing.is_empty(),
        "livesync.connectors lacks columns {missing:?}: {row:?}"
    );

    assert!(row.bool("enabled"), "{row:?}");
    assert_eq!(row.get("source_host"), Some("127.0.0.1"));
    assert_eq!(
        row.get("source_port"),
        Some(db.source.port().to_string().as_str())
    );
    assert_eq!(row.get("source_dbname"), Some(db.name.as_str()));
    assert_eq!(row.get("source_user"), Some(SYNC_USER));
    assert!(!row.is_null("created_at"), "{row:?}");
    assert!(
        !row.is_null("last_connected_at"),
        "a running connector has connected: {row:?}"
    );
    assert!(row.is_null("last_error"), "{row:?}");
    let publication = row.text("publication_name").to_string();
    assert!(
        is_livesync_publication_name(&publication),
        "publication_name {publication:?}"
    );
    // Its publication and the append-only one (add_table(append_only => true)).
    assert_eq!(
        db.source_publications(),
        vec![publication.clone(), format!("{publication}_append")]
    );

    // The worker is a `livesync connector` background worker of this database.
    let pid = row.text("worker_pid");
    let w = db.target_rows(&format!(
        "SELECT backend_type, datname FROM pg_stat_activity WHERE pid = {pid}"
    ));
    assert_eq!(w.len(), 1, "worker {pid} not in pg_stat_activity");
    assert_eq!(w[0].get("backend_type"), Some("livesync connector"));
    assert_eq!(w[0].get("datname"), Some(db.name.as_str()));

    // One launcher, one manager for this database.
    assert_eq!(
        count_backends(&db, "livesync launcher", None),
        1,
        "launchers"
    );
    assert_eq!(
        count_backends(&db, "livesync manager", Some(&db.name)),
        1,
        "managers of {}",
        db.name
    );
    assert_eq!(
        count_backends(&db, "livesync connector", Some(&db.name)),
        1,
        "connectors of {}",
        db.name
    );

    // The source sees exactly one livesync connection to this database.
    let sessions = db.wait_source_sessions(1);
    assert_eq!(sessions[0].get("usename"), Some(SYNC_USER));
    assert!(sessions[0].text("application_name").starts_with("livesync"));

    // It stays that way (no reconnect loop).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let again = db.connector(&name).unwrap();
    assert_eq!(again.get("state"), Some("running"), "{again:?}");
    assert_eq!(again.get("worker_pid"), Some(pid));
    let pids = |rows: &[Row]| {
        rows.iter()
            .map(|r| r.text("pid").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pids(&db.source_livesync_sessions()),
        pids(&sessions),
        "the source connection should be stable"
    );
}

#[test]
fn pause_and_resume() {
    let db = TestDb::new("life_pause");
    db.add_ok(&db.sync_conninfo(), Some("c"));
    let row = db.wait_running("c");
    let old_pid = row.text("worker_pid").to_string();
    db.wait_source_sessions(1);

    db.call_ok("pause_connector", &["c"]);
    let row = db.wait_state("c", "paused");
    assert!(!row.bool("enabled"), "{row:?}");
    wait_until("the connector worker to exit after pause", TIMEOUT, || {
        if db.is_pid_alive_on_target(&old_pid) {
            Err(format!("worker {old_pid} still in pg_stat_activity"))
        } else {
            Ok(())
        }
    });
    let row = db.connector("c").unwrap();
    assert_eq!(row.get("state"), Some("paused"));
    assert!(
        row.is_null("worker_pid"),
        "a paused connector has no worker: {row:?}"
    );
    db.wait_source_sessions(0);
    // The publication stays while paused.
    let publication = row.text("publication_name").to_string();
    assert_eq!(
        db.source_publications(),
        vec![publication.clone(), format!("{publication}_append")]
    );

    db.call_ok("resume_connector", &["c"]);
    let row = db.wait_running("c");
    assert!(row.bool("enabled"), "{row:?}");
    db.wait_source_sessions(1);
}

#[test]
fn rename_keeps_running() {
    let db = TestDb::new("life_rename");
    db.add_ok(&db.sync_conninfo(), Some("old"));
    let before = db.wait_running("old");
    db.wait_source_sessions(1);

    db.call_ok("rename_connector", &["old", "new"]);
    assert_eq!(db.connector_names(), vec!["new".to_string()]);
    let after = db.wait_running("new");
    assert_eq!(
        after.get("publication_name"),
        before.get("publication_name")
    );
    assert_eq!(after.get("created_at"), before.get("created_at"));
    db.wait_source_sessions(1);

    // The new name is the one the API knows.
    assert_sqlstate(&db.call_err("pause_connector", &["old"]), "42704");
    db.call_ok("pause_connector", &["new"]);
    db.wait_state("new", "paused");
}

#[test]
fn drop_removes_worker_and_source_objects() {
    let db = TestDb::new("life_drop");
    db.add_ok(&db.sync_conninfo(), Some("c"));
    db.add_ok(&db.sync_conninfo(), Some("keep"));
    let row = db.wait_running("c");
    db.wait_running("keep");
    db.wait_source_sessions(2);
    let pid = row.text("worker_pid").to_string();
    let publication = row.text("publication_name").to_string();
    assert!(db.source_publications().contains(&publication));

    let out = db.call_ok("drop_connector", &["c"]);
    assert!(
        out.warnings().is_empty(),
        "no warning expected when the source is up: {:?}",
        out.notices
    );
    assert_eq!(db.connector_names(), vec!["keep".to_string()]);
    // Removed on the source by the time drop_connector returns.
    let pubs = db.source_publications();
    assert!(
        !pubs.contains(&publication),
        "publication {publication} still on the source: {pubs:?}"
    );
    if let Some(slot) = row.get("slot_name") {
        assert!(
            !db.source_slots().contains(&slot.to_string()),
            "slot {slot} still on the source"
        );
    }
    wait_until("the dropped connector's worker to exit", TIMEOUT, || {
        if db.is_pid_alive_on_target(&pid) {
            Err(format!("worker {pid} still in pg_stat_activity"))
        } else {
            Ok(())
        }
    });
    db.wait_source_sessions(1);
    // The other connector is untouched.
    db.wait_running("keep");

    db.call_ok("drop_connector", &["keep"]);
    assert!(db.connector_names().is_empty());
    assert!(
        db.source_publications().is_empty(),
        "{:?}",
        db.source_publications()
    );
    assert!(db.source_slots().is_empty(), "{:?}", db.source_slots());
    db.wait_source_sessions(0);
}
