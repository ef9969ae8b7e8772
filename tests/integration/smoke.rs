//! The harness itself (needs no extension).

use std::time::Duration;

use crate::support::*;

#[test]
fn harness_smoke_cluster_lifecycle() {
    let c = Cluster::start_new("smoke", ClusterConfig::source());
    assert!(c.port() > 0);
    let mut client = c.connect("postgres");
    assert_eq!(query_value(&mut client, "SELECT 1").as_deref(), Some("1"));
    assert_eq!(
        query_value(&mut client, "SHOW wal_level").as_deref(),
        Some("logical")
    );
    assert_eq!(
        query_value(&mut client, "SHOW fsync").as_deref(),
        Some("off")
    );
    assert_eq!(
        query_value(&mut client, "SHOW password_encryption").as_deref(),
        Some("scram-sha-256")
    );
    assert_eq!(
        query_value(
            &mut client,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"
        )
        .as_deref(),
        Some("true")
    );
    assert_eq!(
        c.connstr("x"),
        format!(
            "host=127.0.0.1 port={} dbname=x user={}",
            c.port(),
            os_superuser()
        )
    );

    c.create_database("smoke_db");
    let mut db = c.connect("smoke_db");
    assert_eq!(
        query_value(&mut db, "SELECT current_database()").as_deref(),
        Some("smoke_db")
    );
    drop(db);
    drop(client);

    // scram-sha-256 for sync_pw over TCP, trust for everyone else.
    query(
        &mut c.connect("postgres"),
        "CREATE ROLE sync_pw LOGIN PASSWORD 'right'; CREATE ROLE other LOGIN",
    );
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(c.port())
        .dbname("postgres")
        .user("sync_pw")
        .password("wrong");
    let err = cfg
        .connect(postgres::NoTls)
        .err()
        .expect("sync_pw must need its password");
    assert_eq!(db_error(&err).code, "28P01", "{}", db_error(&err));
    cfg.password("right");
    cfg.connect(postgres::NoTls)
        .expect("sync_pw with its password");
    c.connect_as("postgres", "other");

    let error = try_query(&mut c.connect("postgres"), "SELECT 1/0").unwrap_err();
    assert_eq!(error.code, "22012");

    c.restart();
    assert_eq!(
        query_value(&mut c.connect("postgres"), "SELECT 2").as_deref(),
        Some("2")
    );
    c.stop();
    assert!(!c.is_running());
    c.start();
    assert_eq!(
        query_value(&mut c.connect("postgres"), "SELECT 3").as_deref(),
        Some("3")
    );
    assert!(c
        .log_contents()
        .contains("database system is ready to accept connections"));

    let dir = c.datadir().to_path_buf();
    drop(c);
    if !keep_clusters() {
        assert!(!dir.exists(), "{} should be removed on drop", dir.display());
    }
}

#[test]
fn harness_smoke_run_sql_collects_warnings_and_errors() {
    let c = shared_source();
    let out = run_sql(
        c,
        "postgres",
        os_superuser(),
        "DO $$ BEGIN RAISE WARNING 'careful' USING DETAIL = 'd', HINT = 'h'; END $$",
        Duration::from_secs(10),
    );
    assert!(out.result.is_ok(), "{:?}", out.result);
    let w = out.warnings();
    assert_eq!(w.len(), 1, "{:?}", out.notices);
    assert_eq!(w[0].message, "careful");
    assert_eq!(w[0].detail.as_deref(), Some("d"));
    assert_eq!(w[0].hint.as_deref(), Some("h"));

    let e = run_sql(
        c,
        "postgres",
        os_superuser(),
        "SELECT pg_sleep(5)",
        Duration::from_millis(300),
    )
    .result
    .unwrap_err();
    assert_eq!(e.code, "TIMEOUT", "{e}");

    let e = run_sql(
        c,
        "postgres",
        os_superuser(),
        "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '55000', HINT = 'fix it'; END $$",
        Duration::from_secs(10),
    )
    .err("raise");
    assert_sqlstate(&e, "55000");
    assert_message_eq(&e, "boom");
    assert_eq!(e.hint(), "fix it");
}

#[test]
#[should_panic(expected = "last observed: 3")]
fn harness_smoke_wait_until_reports_last_value() {
    let mut n = 0;
    wait_until("n to reach 1000", Duration::from_millis(250), || {
        n += 1;
        if n >= 1000 {
            Ok(())
        } else {
            Err(format!("{}", n.min(3)))
        }
    });
}

#[test]
fn harness_smoke_quoting() {
    assert_eq!(lit("a'b"), "'a''b'");
    assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(conninfo_value("t_db"), "t_db");
    assert_eq!(conninfo_value(r"it's;x\y"), r"'it\'s;x\\y'");
    assert_eq!(conninfo_value(""), "''");
}
