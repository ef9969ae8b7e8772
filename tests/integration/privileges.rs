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

/// Members of livesync_admin use every function but cannot write livesync's catalog directly: a
/// row edited by hand could point the workers (which run as the bootstrap superuser) at another
/// table to copy into or truncate. The functions write it as the catalog's owner.
#[test]
fn admins_use_the_functions_but_cannot_edit_the_catalog() {
    let db = TestDb::new("priv_catalog");
    let admin = "ls_priv_catalog_admin";
    let _roles = Roles::create(db.target, &[admin]);
    db.tgt(&format!(
        "GRANT livesync_admin TO {admin}; GRANT CREATE ON SCHEMA public TO {admin};
         CREATE TABLE victim (i int); INSERT INTO victim VALUES (1);"
    ));
    db.src("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');");
    db.target_sql_as(
        admin,
        &format!(
            "SELECT livesync.add_connector({}, 'c')",
            lit(&db.su_conninfo())
        ),
    )
    .ok("add_connector as a livesync_admin member");
    db.wait_running("c");
    db.target_sql_as(admin, "SELECT livesync.add_table('t')")
        .ok("add_table as a livesync_admin member");
    db.wait_ready("public.t");
    for (what, sql) in [
        (
            "UPDATE sync_table",
            "UPDATE livesync.sync_table SET target_name = 'victim'",
        ),
        ("DELETE connector", "DELETE FROM livesync.connector"),
        (
            "INSERT unpublish",
            "INSERT INTO livesync.unpublish VALUES (1, 'public', 't')",
        ),
        (
            "UPDATE copy_range",
            "UPDATE livesync.copy_range SET done = false",
        ),
        (
            "UPDATE connector_secret",
            "UPDATE livesync.connector_secret SET conninfo = 'host=evil'",
        ),
    ] {
        let e = db.target_sql_as(admin, sql).err(what);
        assert_sqlstate(&e, "42501");
    }
    for sql in [
        "SELECT livesync.pause_connector('c')",
        "SELECT livesync.resume_connector('c')",
        "SELECT livesync.rename_connector('c', 'c2')",
        "SELECT livesync.resync_table('t', connector => 'c2')",
    ] {
        db.target_sql_as(admin, sql).ok(sql);
    }
    db.wait_ready("public.t");
    db.target_sql_as(
        admin,
        "SELECT livesync.remove_table('t', connector => 'c2')",
    )
    .ok("remove_table");
    db.target_sql_as(admin, "SELECT livesync.drop_connector('c2')")
        .ok("drop_connector");
    assert_eq!(db.tgt("SELECT count(*) AS n FROM victim")[0].int("n"), 1);
}
