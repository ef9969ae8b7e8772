//! TLS to the source, with libpq's `sslmode` semantics on both kinds of connections livesync
//! opens (its SQL connections: checks, add_table, copies; and the replication connection of the
//! stream): verify-full checks the host name, verify-ca only the chain, require nothing, and a
//! failed verification is a clear class-08 error. A source with `ssl = on` and a certificate
//! from a test CA (generated with the `openssl` command) that names `localhost` only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for DNS name `localhost` signed by it, and an unrelated CA.
fn make_certs() -> PathBuf {
    let dir = base_dir().join(format!("tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=livesync test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=livesync-test-server",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    for f in ["server.key", "server.crt", "ca.crt", "other.crt"] {
        chown_to_postgres(&dir.join(f));
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    chown_to_postgres(&dir);
    dir
}

#[test]
fn tls_verify_modes_on_sql_and_replication_connections() {
    if !server_has_ssl() {
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n**********************************************************************\n\
             SKIPPED tls: this PostgreSQL (server and libpq) was built without OpenSSL\n\
             (pg_config --configure).\n\
             **********************************************************************\n"
        );
        return;
    }
    let certs = make_certs();
    let source = Cluster::start_new(
        "tls_source",
        source_config()
            .with_conf("ssl = on")
            .with_conf(&format!(
                "ssl_cert_file = '{}'",
                certs.join("server.crt").display()
            ))
            .with_conf(&format!(
                "ssl_key_file = '{}'",
                certs.join("server.key").display()
            )),
    );
    prepare_source(&source);
    let db = TestDb::on(&source, shared_target(), "tls");
    let port = source.port();
    let base = format!(
        "port={port} dbname={} user={}",
        conninfo_value(&db.name),
        conninfo_value(os_superuser())
    );
    let ca = conninfo_value(&certs.join("ca.crt").display().to_string());
    let other = conninfo_value(&certs.join("other.crt").display().to_string());

    let all_ok = |conninfo: &str| {
        let rows = db.tgt(&format!(
            "SELECT \"check\", ok, detail FROM livesync.check_source({})",
            lit(conninfo)
        ));
        assert!(
            rows.iter().all(|r| r.bool("ok")),
            "check_source({conninfo}): {rows:?}"
        );
    };
    // verify-full: the certificate names localhost; verify-ca: any name, the right CA; require:
    // encrypted, nothing verified.
    all_ok(&format!(
        "host=localhost {base} sslmode=verify-full sslrootcert={ca}"
    ));
    all_ok(&format!(
        "host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={ca}"
    ));
    all_ok(&format!("host=127.0.0.1 {base} sslmode=require"));

    // verify-full against a name the certificate does not carry; verify-ca with the wrong CA.
    let e = db.add_err(
        &format!("host=127.0.0.1 {base} sslmode=verify-full sslrootcert={ca}"),
        Some("wrong_name"),
    );
    assert_sqlstate(&e, "08001");
    assert_message_starts(
        &e,
        &format!("could not establish a TLS connection to the source at \"127.0.0.1:{port}\""),
    );
    let e = db.add_err(
        &format!("host=localhost {base} sslmode=verify-ca sslrootcert={other}"),
        Some("wrong_ca"),
    );
    assert_sqlstate(&e, "08001");
    assert!(e.message.contains("certificate verify failed"), "{e}");
    assert!(
        db.connector_names().is_empty(),
        "failed add_connector calls leave nothing"
    );

    // A connector that verifies everything copies and streams, every connection encrypted.
    db.add_ok(
        &format!("host=localhost {base} sslmode=verify-full sslrootcert={ca}"),
        Some("tls"),
    );
    db.wait_running("tls");
    db.src("CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 500) g;");
    db.add_table_ok("s");
    db.wait_ready("public.s");
    db.src("UPDATE s SET v = 'tls' WHERE id % 7 = 0; INSERT INTO s VALUES (501, 'new'); DELETE FROM s WHERE id = 3;");
    db.wait_same(&Compare::same("s", "id"), Duration::from_secs(30));
    let sessions = db.src(
        "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name LIKE 'livesync %'",
    );
    assert!(
        sessions
            .iter()
            .any(|r| r.text("backend_type") == "walsender"),
        "the stream's walsender: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|r| r.bool("ssl")),
        "every livesync session on the source uses TLS: {sessions:?}"
    );
}
