//! Who may see and do what on the target.

use crate::support::*;

/// Roles on the (shared) target, dropped at the end of the test.
struct Roles<'a> {
    target: &'a Cluster,
    names: Vec<String>,
}

impl<'a> Roles<'a> {
    fn create(target: &'a Cluster, names: &[&str]) -> Roles<'a> {
        let mut c = target.connect("postgres");
        for n in names {
            query(
                &mut c,
                &format!("DROP ROLE IF EXISTS {0}; CREATE ROLE {0} LOGIN", ident(n)),
            );
        }
        Roles {
            target,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Drop for Roles<'_> {
    fn drop(&mut self) {
        if keep_clusters() {
            return;
        }
        if let Ok((mut c, _)) = self.target.try_connect_as("postgres", os_superuser()) {
            for n in &self.names {
                let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(n)));
            }
        }
    }
}

#[test]
fn ordinary_role_sees_connectors_but_no_secrets() {
    let db = TestDb::new("priv");
    let ordinary = "ls_priv_ordinary";
    let admin = "ls_priv_admin";
    let _roles = Roles::create(db.target, &[ordinary, admin]);
    db.target_sql(&format!("GRANT livesync_admin TO {admin}"))
        .ok("GRANT livesync_admin");

    let conninfo = format!(
        "{} password={SCRAM_PASSWORD}",
        db.source_conninfo(SCRAM_USER)
    );
    db.add_ok(&conninfo, Some("c"));
    db.wait_running("c");

    // The secret table is off limits.
    let e = db
        .target_sql_as(ordinary, "SELECT * FROM livesync.connector_secret")
        .err("ordinary role reading livesync.connector_secret");
    assert_sqlstate(&e, "42501");
    assert_contains(&e.message, "permission denied", "message");

    // So is adding connectors (no password in this statement: a failed
    // statement's text goes to the server log).
    let e = db
        .target_sql_as(
            ordinary,
            &format!(
                "SELECT livesync.add_connector({})",
                lit(&db.sync_conninfo())
            ),
        )
        .err("ordinary role calling livesync.add_connector");
    assert_sqlstate(&e, "42501");
    assert_contains(&e.message, "permission denied", "message");

    // The view is readable and shows no password.
    let rows = db
        .target_sql_as(ordinary, "SELECT * FROM livesync.connectors")
        .ok("ordinary role reading livesync.connectors");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].get("name"), Some("c"));
    assert_eq!(rows[0].get("source_user"), Some(SCRAM_USER));
    assert_eq!(
        rows[0].any_contains(SCRAM_PASSWORD_TOKEN),
        None,
        "password visible: {:?}",
        rows[0]
    );

    // Members of livesync_admin can read the raw conninfo.
    let rows = db
        .target_sql_as(
            admin,
            "SELECT connector_id, conninfo FROM livesync.connector_secret",
        )
        .ok("livesync_admin member reading livesync.connector_secret");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_contains(
        rows[0].text("conninfo"),
        SCRAM_PASSWORD,
        "the stored conninfo",
    );
    assert_eq!(
        db.connector_names(),
        vec!["c".to_string()],
        "nothing changed"
    );
}
