//! Passwords never reach the target's server log, whether add_connector
//! fails or succeeds, and whether the conninfo is a literal (as typed in
//! psql) or a bind parameter.

use crate::support::*;

#[test]
fn password_not_in_target_log() {
    let db = TestDb::new("secrets_log");

    // 1. Wrong password, typed as a literal (simple protocol, like psql).
    let wrong_literal = "Wr0ng-literal-c41d07";
    let e = db.add_err(
        &format!(
            "{} password={wrong_literal}",
            db.source_conninfo(SCRAM_USER)
        ),
        Some("c"),
    );
    assert_sqlstate(&e, "08004");
    assert_not_contains(&e.all_text(), "c41d07", "the error");

    // 2. Wrong password as a bind parameter (extended protocol).
    let wrong_param = "Wr0ng-param-e92f55";
    let mut client = db.target.connect(&db.name);
    let err = client
        .query(
            "SELECT livesync.add_connector($1, $2)",
            &[
                &format!("{} password={wrong_param}", db.source_conninfo(SCRAM_USER)),
                &"c",
            ],
        )
        .expect_err("wrong password must fail");
    let e = db_error(&err);
    assert_sqlstate(&e, "08004");
    assert_not_contains(&e.all_text(), "e92f55", "the error");
    drop(client);

    // 3. The right password: works, and stays secret through pause/resume.
    let name = db.add_ok(
        &format!(
            "{} password={SCRAM_PASSWORD}",
            db.source_conninfo(SCRAM_USER)
        ),
        Some("c"),
    );
    db.wait_running(&name);
    db.call_ok("pause_connector", &["c"]);
    db.wait_state("c", "paused");
    db.call_ok("resume_connector", &["c"]);
    db.wait_running("c");
    for row in db.connectors() {
        assert_eq!(
            row.any_contains(SCRAM_PASSWORD_TOKEN),
            None,
            "password visible in {row:?}"
        );
    }

    let log = db.target.log_contents_flushed();
    assert_not_contains(
        &log,
        "c41d07",
        "the target's server log (wrong password, literal)",
    );
    assert_not_contains(
        &log,
        "e92f55",
        "the target's server log (wrong password, parameter)",
    );
    assert_not_contains(
        &log,
        SCRAM_PASSWORD_TOKEN,
        "the target's server log (right password)",
    );
}
