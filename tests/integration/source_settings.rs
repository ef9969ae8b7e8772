//! Issue 12, item 5: copied values never depend on the source's session settings or on the
//! databases' encodings, and a password file works for every source connection.

use std::time::Duration;

use crate::support::*;

/// A source database whose sessions default to `DateStyle = 'SQL, DMY'`, `IntervalStyle =
/// 'sql_standard'` and `extra_float_digits = -3`: dates, intervals and floats inside a composite
/// column (copied in text format) arrive exactly.
#[test]
fn source_output_settings_do_not_change_copied_values() {
    let db = TestDb::new("src_settings");
    db.src(&format!(
        "ALTER DATABASE {n} SET DateStyle = 'SQL, DMY';
         ALTER DATABASE {n} SET IntervalStyle = 'sql_standard';
         ALTER DATABASE {n} SET extra_float_digits = -3;",
        n = ident(&db.name)
    ));
    db.src(
        "CREATE TYPE stamp AS (d date, i interval, f float8, t timestamp);
         CREATE DOMAIN day AS date CHECK (VALUE > '2000-01-01');
         CREATE TABLE st (id int PRIMARY KEY, s stamp, d day, f float8, i interval);
         INSERT INTO st VALUES
           (1, ROW('2026-01-02', '1 year 2 mons -3 days 04:05:06.789', 0.1 + 0.2, '2026-03-04 05:06:07.123456'),
               '2026-01-02', 1.0 / 3, '-1 year 2 mons 3 days -04:05:06'),
           (2, ROW('1999-12-31', '-2 days', 1e-300, '1999-12-31 23:59:59'), '2026-12-11', pi(), '7 days');",
    );
    db.add_su_connector("c");
    db.add_table_ok("st");
    db.wait_ready("public.st");
    assert_eq!(db.progress("public.st").text("copy_format"), "text");
    let cmp = Compare::same("st", "id");
    db.assert_same(&cmp);
    db.src(
        "INSERT INTO st VALUES (3, ROW('2026-05-06', '3 mons', 2.5, '2026-05-06 07:08:09'), '2026-05-06', 1e300, '1 day')",
    );
    db.wait_same(&cmp, Duration::from_secs(30));
}

/// A UTF8 source and a LATIN1 target database: rows of the binary copy, of the text copy and
/// of the stream are converted ("Motörhead" stays "Motörhead"); a character LATIN1 lacks stops
/// that table's copy with SQLSTATE 22P05, not silently.
#[test]
fn utf8_source_into_latin1_target() {
    let db = TestDb::new("latin1_target");
    {
        let mut t = db.target.connect("postgres");
        let n = ident(&db.name);
        query(&mut t, &format!("DROP DATABASE {n} WITH (FORCE)"));
        query(&mut t, &format!("CREATE DATABASE {n} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"));
    }
    db.tgt("CREATE EXTENSION livesync");
    assert_eq!(
        db.tgt("SELECT getdatabaseencoding() AS e")[0].text("e"),
        "LATIN1"
    );
    db.src(
        "CREATE TYPE tag AS (label text);
         CREATE TABLE bands (id int PRIMARY KEY, name text);
         INSERT INTO bands VALUES (1, 'Motörhead'), (2, 'Mötley Crüe');
         CREATE TABLE tagged (id int PRIMARY KEY, name text, tg tag);
         INSERT INTO tagged VALUES (1, 'Motörhead', ROW('Blue Öyster Cult'));
         CREATE TABLE euro (id int PRIMARY KEY, name text);
         INSERT INTO euro VALUES (1, 'costs 5 €');",
    );
    db.add_su_connector("c");
    db.add_table_ok("bands");
    db.add_table_ok("tagged");
    db.add_table_ok("euro");
    db.wait_ready("public.bands");
    db.wait_ready("public.tagged");
    assert_eq!(db.progress("public.bands").text("copy_format"), "binary");
    assert_eq!(db.progress("public.tagged").text("copy_format"), "text");
    assert_eq!(
        db.tgt("SELECT name FROM bands WHERE id = 1")[0].text("name"),
        "Motörhead"
    );
    // Row by row as text (the harness's md5 digests hash each database's own bytes).
    let same_text = |t: &str| {
        wait_until(
            &format!("{t} equal row by row"),
            Duration::from_secs(30),
            || {
                let s = db.rows_text(Side::Source, t, "id").unwrap();
                let g = db.rows_text(Side::Target, t, "id").unwrap();
                if s == g {
                    Ok(())
                } else {
                    Err(format!("source {s:?}, target {g:?}"))
                }
            },
        )
    };
    same_text("bands");
    same_text("tagged");
    db.src("INSERT INTO bands VALUES (3, 'Björk'); UPDATE tagged SET tg = ROW('Mägo de Oz') WHERE id = 1;");
    same_text("bands");
    same_text("tagged");
    assert_eq!(
        db.tgt("SELECT name FROM bands WHERE id = 3")[0].text("name"),
        "Björk"
    );

    let row = db.wait_table_state("public.euro", "error", Duration::from_secs(60));
    assert_eq!(row.get("last_error_sqlstate"), Some("22P05"), "{row:?}");
    assert!(row.text("last_error").contains("LATIN1"), "{row:?}");
}

/// A conninfo without a password but with `passfile=`: add_connector's checks, add_table, the
/// copy and the stream all authenticate with the file's password (scram-sha-256).
#[test]
fn passfile_serves_every_source_connection() {
    let db = TestDb::new("passfile");
    db.src(&format!(
        "GRANT CREATE ON SCHEMA public TO {u};
         SET ROLE {u};
         CREATE TABLE pf (id int PRIMARY KEY, v text);
         INSERT INTO pf SELECT g, 'v' || g FROM generate_series(1, 100) g;
         RESET ROLE;",
        u = SCRAM_USER
    ));
    let dir = base_dir().join(format!("passfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    chown_to_postgres(&dir);
    let file = dir.join("pgpass");
    std::fs::write(
        &file,
        format!(
            "127.0.0.1:{}:{}:{}:{}\n",
            db.source.port(),
            db.name,
            SCRAM_USER,
            SCRAM_PASSWORD
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown_to_postgres(&file);

    let conninfo = format!(
        "{} passfile={}",
        db.source_conninfo(SCRAM_USER),
        conninfo_value(&file.display().to_string())
    );
    assert!(!conninfo.contains("password="), "{conninfo}");
    db.add_ok(&conninfo, Some("c"));
    db.wait_running("c");
    db.add_table_ok("pf");
    db.wait_ready("public.pf");
    let cmp = Compare::same("pf", "id");
    db.assert_same(&cmp);
    db.src("INSERT INTO pf VALUES (101, 'streamed')");
    db.wait_same(&cmp, Duration::from_secs(30));
}
