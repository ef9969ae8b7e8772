//! Connector names and conninfo values full of quotes, semicolons and
//! backslashes must be stored and used verbatim, never interpreted.

use crate::support::*;

#[test]
fn hostile_names_and_conninfo_values() {
    let db = TestDb::new("hostile");
    db.target_sql("CREATE TABLE x (i int); INSERT INTO x VALUES (1)")
        .ok("create x");

    let name_a = "a'; DROP TABLE x; --";
    let name_b = "\"quoted\" name;";
    let app_name = r"it's;x \ y";

    // A: trusted role, application_name with a quote, a semicolon and a backslash.
    let conninfo_a = format!(
        "{} application_name={}",
        db.sync_conninfo(),
        conninfo_value(app_name)
    );
    // B: scram role whose password has quotes, a semicolon, a backslash, a space and `=`.
    let conninfo_b = format!(
        "{} password={} application_name={}",
        db.source_conninfo(HOSTILE_USER),
        conninfo_value(HOSTILE_PASSWORD),
        conninfo_value(app_name)
    );

    assert_eq!(db.add_ok(&conninfo_a, Some(name_a)), name_a);
    assert_eq!(db.add_ok(&conninfo_b, Some(name_b)), name_b);

    let a = db.wait_running(name_a);
    let b = db.wait_running(name_b);
    assert_eq!(a.get("source_user"), Some(SYNC_USER));
    assert_eq!(b.get("source_user"), Some(HOSTILE_USER));
    assert_eq!(b.get("source_dbname"), Some(db.name.as_str()));

    let mut names = db.connector_names();
    names.sort();
    let mut expected = vec![name_a.to_string(), name_b.to_string()];
    expected.sort();
    assert_eq!(names, expected);

    // Both are connected to the source, each with its own role.
    wait_until("one source session per role", TIMEOUT, || {
        let a = db.source_sessions_of(SYNC_USER).len();
        let b = db.source_sessions_of(HOSTILE_USER).len();
        if (a, b) == (1, 1) {
            Ok(())
        } else {
            Err(format!("sync: {a}, sync_q: {b}"))
        }
    });

    // No password anywhere in the view.
    for row in db.connectors() {
        assert_eq!(
            row.any_contains(HOSTILE_PASSWORD_TOKEN),
            None,
            "password visible in {row:?}"
        );
    }

    // Pause, resume and drop by their exact names.
    db.call_ok("pause_connector", &[name_a]);
    db.call_ok("pause_connector", &[name_b]);
    db.wait_state(name_a, "paused");
    db.wait_state(name_b, "paused");
    db.call_ok("resume_connector", &[name_b]);
    db.wait_running(name_b);
    assert_eq!(db.connector(name_a).unwrap().get("state"), Some("paused"));

    db.call_ok("drop_connector", &[name_a]);
    db.call_ok("drop_connector", &[name_b]);
    assert!(
        db.connector_names().is_empty(),
        "{:?}",
        db.connector_names()
    );
    assert!(
        db.source_publications().is_empty(),
        "{:?}",
        db.source_publications()
    );

    // Nothing was executed from the names.
    let rows = db
        .target_sql("SELECT count(*) AS n FROM x")
        .ok("table x still there");
    assert_eq!(rows[0].int("n"), 1);

    assert_not_contains(
        &db.target.log_contents_flushed(),
        HOSTILE_PASSWORD_TOKEN,
        "the target's server log",
    );
}
