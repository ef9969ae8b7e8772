//! Scenarios that stop or restart a server; each gets its own cluster for the
//! server it disturbs.

use std::time::Duration;

use crate::support::*;

#[test]
fn target_restart_brings_connectors_back() {
    let target = dedicated_target("tgt-restart");
    let db = TestDb::on(shared_source(), &target, "restart_target");
    db.add_ok(&db.sync_conninfo(), Some("live"));
    db.add_ok(&db.sync_conninfo(), Some("sleeping"));
    let before = db.wait_running("live");
    db.wait_running("sleeping");
    db.call_ok("pause_connector", &["sleeping"]);
    db.wait_state("sleeping", "paused");
    db.wait_source_sessions(1);
    let old_pid = before.text("worker_pid").to_string();

    target.restart();

    // Comes back by itself, with a new worker.
    let after = db.wait_running_except("live", Some(&old_pid), TIMEOUT);
    assert_eq!(
        after.get("publication_name"),
        before.get("publication_name")
    );
    // A paused connector stays paused.
    let sleeping = db.connector("sleeping").unwrap();
    assert_eq!(sleeping.get("state"), Some("paused"), "{sleeping:?}");
    assert!(sleeping.is_null("worker_pid"), "{sleeping:?}");
    let rows = db.target_rows(
        "SELECT backend_type, count(*) AS n FROM pg_stat_activity
          WHERE backend_type LIKE 'livesync%' GROUP BY 1 ORDER BY 1",
    );
    let n = |t: &str| {
        rows.iter()
            .find(|r| r.get("backend_type") == Some(t))
            .map(|r| r.int("n"))
            .unwrap_or(0)
    };
    assert_eq!(n("livesync launcher"), 1, "{rows:?}");
    assert_eq!(n("livesync manager"), 1, "{rows:?}");
    assert_eq!(n("livesync connector"), 1, "{rows:?}");
    db.wait_source_sessions(1);
}

#[test]
fn source_restart_reconnects() {
    let source = dedicated_source("src-restart");
    let db = TestDb::on(&source, shared_target(), "restart_source");
    db.add_ok(&db.sync_conninfo(), Some("c"));
    db.wait_running("c");
    let old = db.wait_source_sessions(1);
    let old_backend = old[0].text("pid").to_string();

    source.restart();

    // It may go through `error`; it must end up running with a new connection.
    let sessions = wait_until(
        "the connector to reconnect to the restarted source",
        Duration::from_secs(35),
        || {
            let row = db.try_connector("c")?.ok_or("connector row gone")?;
            if row.get("state") != Some("running") {
                return Err(format!("{row:?}"));
            }
            let s = db.try_source_livesync_sessions()?;
            if s.len() == 1 && s[0].get("pid") != Some(old_backend.as_str()) {
                Ok(s)
            } else {
                Err(format!("state running, source sessions: {s:?}"))
            }
        },
    );
    assert_ne!(sessions[0].text("pid"), old_backend);
    db.wait_running("c");
}

#[test]
fn drop_while_source_is_down_warns_about_leftovers() {
    let source = dedicated_source("src-down");
    let db = TestDb::on(&source, shared_target(), "drop_source_down");
    db.add_ok(&db.sync_conninfo(), Some("c"));
    let row = db.wait_running("c");
    db.wait_source_sessions(1);
    let pid = row.text("worker_pid").to_string();
    let publication = row.text("publication_name").to_string();
    let slot = row.get("slot_name").map(str::to_string);

    source.stop();

    let out = db.call("drop_connector", &["c"]);
    if let Err(e) = &out.result {
        panic!("drop_connector must succeed locally when the source is down:\n{e}");
    }
    let warnings = out.warnings();
    assert!(
        !warnings.is_empty(),
        "expected a WARNING about what is left on the source; notices: {:?}",
        out.notices
    );
    let text: String = warnings
        .iter()
        .map(|w| w.all_text())
        .collect::<Vec<_>>()
        .join("\n");
    assert_contains(&text, &publication, "the WARNING");
    assert_contains(&text, "DROP PUBLICATION", "the WARNING");
    if let Some(slot) = &slot {
        assert_contains(&text, slot, "the WARNING");
        assert_contains(&text, "pg_drop_replication_slot", "the WARNING");
    }

    assert!(db.connector("c").is_none(), "row must be gone");
    wait_until("the dropped connector's worker to exit", TIMEOUT, || {
        if db.is_pid_alive_on_target(&pid) {
            Err(format!("worker {pid} still in pg_stat_activity"))
        } else {
            Ok(())
        }
    });

    // What the warning names really is left behind, and its SQL removes it.
    source.start();
    let append = format!("{publication}_append");
    assert_eq!(
        db.source_publications(),
        vec![publication.clone(), append.clone()]
    );
    assert_contains(&text, &append, "the WARNING");
    db.source_sql(&format!(
        "DROP PUBLICATION {}, {}",
        ident(&publication),
        ident(&append)
    ))
    .ok("DROP PUBLICATION from the warning");
    // Nothing reconnects to the source for a dropped connector.
    std::thread::sleep(Duration::from_secs(1));
    assert!(db.source_livesync_sessions().is_empty());
}
