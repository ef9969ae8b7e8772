//! livesync.add_table: every bad input (SQLSTATE, message, hint, and nothing
//! half-created), warnings and notices, quoted names.

use std::time::Duration;

use crate::support::*;

/// Nothing of a failed add_table is left: no table_progress row, nothing in
/// the publication, and (when livesync would have created it) no target table.
#[track_caller]
fn assert_nothing_added(db: &TestDb, publication: &str, target_table: Option<&str>) {
    let rows = db.tgt("SELECT source_table FROM livesync.table_progress");
    assert!(
        rows.is_empty(),
        "table_progress after a failed add_table: {rows:?}"
    );
    let rels = db.publication_rels(publication);
    assert!(
        rels.is_empty(),
        "publication after a failed add_table: {rels:?}"
    );
    if let Some(t) = target_table {
        let n = db.tgt(&format!(
            "SELECT count(*) AS n FROM pg_class WHERE relname = {}",
            lit(t)
        ))[0]
            .int("n");
        assert_eq!(n, 0, "target table {t} left behind by a failed add_table");
    }
}

#[test]
fn add_table_without_connector_or_ambiguous() {
    let db = TestDb::new("addt_connector");
    db.src("CREATE TABLE t (id int PRIMARY KEY)");

    let e = db
        .add_table("t", None, None)
        .err("add_table without any connector");
    assert_sqlstate(&e, "42704");
    assert_message_eq(&e, "no connector exists");

    db.add_su_connector("c1");
    db.add_su_connector("c2");
    let ambiguous = db
        .add_table("t", None, None)
        .err("add_table with two connectors");
    assert_message_eq(&ambiguous, "more than one connector exists");
    assert!(
        db.tgt("SELECT 1 FROM pg_class WHERE relname = 't'")
            .is_empty(),
        "no target table after the ambiguous call"
    );

    let e = db
        .add_table("t", None, Some("nosuch"))
        .err("add_table with an unknown connector");
    assert_sqlstate(&e, "42704");

    // Naming the connector resolves it.
    let out = db.add_table("t", None, Some("c2"));
    if let Err(e) = &out.result {
        panic!("add_table(connector => 'c2') failed:\n{e}");
    }
    let row = db.wait_ready("public.t");
    assert_eq!(row.get("connector"), Some("c2"), "{row:?}");
    // (Checked last so that a wrong code does not hide the checks above.)
    assert_sqlstate(&ambiguous, "42P08");
}

#[test]
fn add_table_rejects_what_is_not_a_table() {
    let db = TestDb::new("addt_not_table");
    db.src(
        "CREATE TABLE base (id int PRIMARY KEY, v text);
         CREATE VIEW v AS SELECT * FROM base;
         CREATE MATERIALIZED VIEW mv AS SELECT * FROM base;
         CREATE FOREIGN DATA WRAPPER dummy;
         CREATE SERVER s FOREIGN DATA WRAPPER dummy;
         CREATE FOREIGN TABLE ft (id int) SERVER s;
         CREATE SEQUENCE seq;",
    );
    let publication = db
        .add_su_connector("c")
        .text("publication_name")
        .to_string();

    let e = db
        .add_table("nosuch", None, None)
        .err("add_table('nosuch')");
    assert_sqlstate(&e, "42P01");
    assert_message_eq(
        &e,
        &format!(
            "relation \"nosuch\" does not exist on the source at \"127.0.0.1:{}/{}\"",
            db.source.port(),
            db.name
        ),
    );
    let e = db
        .add_table("public.nosuch", None, None)
        .err("add_table('public.nosuch')");
    assert_sqlstate(&e, "42P01");

    for (rel, what) in [
        ("v", "a view"),
        ("mv", "a materialized view"),
        ("ft", "a foreign table"),
    ] {
        let e = db
            .add_table(rel, None, None)
            .err(&format!("add_table({rel:?})"));
        assert_sqlstate(&e, "42809");
        assert_message_eq(&e, &format!("\"public\".\"{rel}\" is {what} on the source"));
        assert_nothing_added(&db, &publication, Some(rel));
    }
    let e = db.add_table("seq", None, None).err("add_table('seq')");
    assert_sqlstate(&e, "42809");
    assert_nothing_added(&db, &publication, Some("seq"));
}

#[test]
fn add_table_rejects_unfit_targets() {
    let db = TestDb::new("addt_bad_target");
    db.src(
        "CREATE EXTENSION citext;
         CREATE TABLE t_missing (id int PRIMARY KEY, x int, y text);
         CREATE TABLE t_type (id int PRIMARY KEY, x int);
         CREATE TABLE t_full (id int PRIMARY KEY, v text);
         CREATE TABLE t_ext (id int PRIMARY KEY, c citext);",
    );
    db.tgt(
        "CREATE TABLE t_missing (id int PRIMARY KEY, y text);
         CREATE TABLE t_type (id int PRIMARY KEY, x text);
         CREATE TABLE t_full (id int PRIMARY KEY, v text);
         INSERT INTO t_full VALUES (1, 'already here');",
    );
    let publication = db
        .add_su_connector("c")
        .text("publication_name")
        .to_string();

    let e = db
        .add_table("t_missing", None, None)
        .err("add_table('t_missing')");
    assert_sqlstate(&e, "42703");
    assert_message_starts(
        &e,
        "column \"x\" of source table \"public\".\"t_missing\" does not exist in target table ",
    );
    assert_contains(&e.message, "t_missing", "message");
    assert_message_starts_hint(&e, "ALTER TABLE ");
    assert_contains(e.hint(), "ADD COLUMN x integer", "hint");

    let e = db
        .add_table("t_type", None, None)
        .err("add_table('t_type')");
    assert_sqlstate(&e, "42804");
    assert_contains(&e.message, "\"x\"", "message");
    assert_contains(&e.message, "integer", "message");
    assert_contains(&e.message, "text", "message");

    let e = db
        .add_table("t_full", None, None)
        .err("add_table('t_full')");
    assert_sqlstate(&e, "55000");
    assert_message_starts(&e, "target table ");
    assert!(e.message.ends_with(" is not empty"), "{e}");
    assert_contains(&e.message, "t_full", "message");

    // A type from an extension the target lacks.
    let e = db.add_table("t_ext", None, None).err("add_table('t_ext')");
    assert_sqlstate(&e, "42704");
    assert_message_eq(
        &e,
        "type \"citext\" of column \"c\" does not exist on the target",
    );
    assert_contains(e.hint(), "CREATE EXTENSION", "hint");
    assert_contains(e.hint(), "citext", "hint");
    assert_contains(e.hint(), "on the target first", "hint");

    assert_nothing_added(&db, &publication, Some("t_ext"));
    // The existing targets are untouched.
    assert_eq!(
        db.tgt("SELECT count(*) AS n FROM t_full")[0].int("n"),
        1,
        "t_full's row must stay"
    );
}

/// Enums, domains and composite types missing on the target are created
/// from the source's definitions (also in another schema, and types built on
/// other user types).
#[test]
fn add_table_creates_missing_types() {
    let db = TestDb::new("addt_types");
    db.src(
        "CREATE SCHEMA kinds;
         CREATE TYPE kinds.mood AS ENUM ('sad', 'ok', 'it''s \"odd\"');
         CREATE DOMAIN posint AS int DEFAULT 1 NOT NULL CONSTRAINT positive CHECK (VALUE > 0);
         CREATE TYPE pair AS (a int, b text);
         CREATE TABLE t_types (id int PRIMARY KEY, m kinds.mood, ms kinds.mood[], d posint, p pair, ps pair[]);
         INSERT INTO t_types VALUES (1, 'ok', '{sad,\"it''s \\\"odd\\\"\"}', 5, ROW(1, 'x'), ARRAY[ROW(2, 'y')::pair]),
                                    (2, NULL, NULL, 7, NULL, NULL);",
    );
    db.add_su_connector("c");
    let out = db.add_table_ok("t_types");
    let msgs: Vec<&str> = out.notices.iter().map(|n| n.message.as_str()).collect();
    for ty in ["mood", "posint", "pair"] {
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("created type") && m.contains(ty)),
            "a NOTICE about creating type {ty} expected: {msgs:?}"
        );
    }
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("created schema") && m.contains("kinds")),
        "a NOTICE about creating schema kinds expected: {msgs:?}"
    );
    for q in [
        "SELECT enum_range(NULL::kinds.mood)::text AS d",
        "SELECT typnotnull::text AS nn, typdefault AS def,
                (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ') FROM pg_constraint WHERE contypid = t.oid) AS c
           FROM pg_type t WHERE oid = 'posint'::regtype",
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) AS d
           FROM pg_attribute WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = 'pair'::regtype)",
    ] {
        assert_eq!(db.src(q), db.tgt(q), "type definitions differ: {q}");
    }
    db.wait_ready("public.t_types");
    let cmp = Compare::same("t_types", "id");
    db.assert_same(&cmp);
    db.src("INSERT INTO t_types VALUES (3, 'it''s \"odd\"', '{ok}', 9, ROW(3, NULL), '{}')");
    db.wait_same(&cmp, Duration::from_secs(30));
}

/// A domain over an enum and a composite with an enum field, when none of
/// them exists on the target: the types they are built on are created first.
#[test]
fn add_table_creates_nested_user_types() {
    let db = TestDb::new("addt_nested_types");
    db.src(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN happy_mood AS mood CHECK (VALUE <> 'sad');
         CREATE TYPE feeling AS (m mood, strength int);
         CREATE TABLE t_nested (id int PRIMARY KEY, h happy_mood, f feeling);
         INSERT INTO t_nested VALUES (1, 'happy', ROW('sad', 3));",
    );
    db.add_su_connector("c");
    let out = db.add_table("t_nested", None, None);
    if let Err(e) = &out.result {
        panic!(
            "add_table of a table whose domain and composite type use an enum missing on the target failed:\n{e}\nnotices: {:?}",
            out.notices
        );
    }
    db.wait_ready("public.t_nested");
    db.assert_same(&Compare::same("t_nested", "id"));
}

#[track_caller]
fn assert_message_starts_hint(e: &SqlError, prefix: &str) {
    assert!(
        e.hint().starts_with(prefix),
        "hint should start with {prefix:?}; the error was:\n{e}"
    );
}

/// A table without primary key or replica identity is refused by default: in the connector's
/// publication, which publishes UPDATE and DELETE, the source would reject its own
/// application's UPDATEs and DELETEs of it. `append_only => true` syncs it through the
/// connector's insert-only publication, and the source's application keeps working.
#[test]
fn add_table_without_key_is_refused_unless_append_only() {
    let db = TestDb::new("addt_nokey");
    db.src(
        "CREATE TABLE nokey (id int, v text);
         INSERT INTO nokey SELECT g % 50, 'v' || g FROM generate_series(1, 200) g;",
    );
    let c = db.add_su_connector("c");
    let publication = c.text("publication_name").to_string();
    let e = db
        .add_table("nokey", None, None)
        .err("add_table of a table without replica identity");
    assert_sqlstate(&e, "55000");
    assert_message_eq(
        &e,
        "source table \"public\".\"nokey\" has no primary key or replica identity",
    );
    assert!(e.detail().contains("reject every UPDATE and DELETE"), "{e}");
    assert!(
        e.hint().contains("REPLICA IDENTITY FULL") && e.hint().contains("append_only => true"),
        "{e}"
    );
    assert_nothing_added(&db, &publication, Some("nokey"));
    // The source's application is unaffected.
    db.src("UPDATE nokey SET v = 'updated' WHERE id = 1; DELETE FROM nokey WHERE id = 2;");

    let out = db.target_sql("SELECT livesync.add_table('nokey', append_only => true)");
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    out.ok("add_table(append_only => true)");
    assert!(
        notices.iter().any(|n| n.contains("append-only")),
        "{notices:?}"
    );
    db.wait_ready("public.nokey");
    let cmp = Compare::by_row("nokey");
    let n = db.assert_same(&cmp);
    assert_eq!(db.progress("public.nokey").text("append_only"), "t");
    assert_eq!(
        db.publication_rels(&format!("{publication}_append")),
        vec!["nokey".to_string()]
    );
    assert!(db.publication_rels(&publication).is_empty());

    // The source's application keeps working: UPDATE and DELETE succeed there; inserts stream.
    db.src("INSERT INTO nokey VALUES (1000, 'streamed'); UPDATE nokey SET v = 'again' WHERE id = 3; DELETE FROM nokey WHERE id = 4;");
    wait_until("the insert to arrive", Duration::from_secs(30), || {
        let r = db.tgt("SELECT count(*) AS n FROM nokey WHERE id = 1000");
        if r[0].int("n") == 1 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    db.wait_caught_up("c");
    assert_eq!(
        db.tgt("SELECT count(*) AS n FROM nokey")[0].int("n"),
        n + 1,
        "append-only: deletes are not replicated"
    );
    assert_eq!(db.progress("public.nokey").text("state"), "ready");

    // Adding it again: a NOTICE, no error, nothing changes.
    let out = db.add_table_ok("nokey");
    let notices: Vec<&SqlError> = out
        .notices
        .iter()
        .filter(|n| n.severity == "NOTICE")
        .collect();
    assert_eq!(notices.len(), 1, "{:?}", out.notices);
    let m = &notices[0].message;
    assert!(
        m.starts_with("table \"public\".\"nokey\" is already synced by connector \"c\" (into ")
            && m.ends_with("), skipping")
            && (m.contains("(into public.nokey)") || m.contains("(into \"public\".\"nokey\")")),
        "unexpected NOTICE: {m}"
    );
    let rows = db.tgt("SELECT source_table, state FROM livesync.table_progress");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].get("state"), Some("ready"), "{rows:?}");
}

#[test]
fn add_table_creates_target_schema() {
    let db = TestDb::new("addt_schema");
    db.src(
        "CREATE TABLE t (id int PRIMARY KEY, v text DEFAULT 'd', n int NOT NULL DEFAULT 7);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 10) g;",
    );
    db.add_su_connector("c");
    let out = db.add_table("t", Some("other.t_copy"), None);
    if let Err(e) = &out.result {
        panic!("add_table('t', target => 'other.t_copy') failed:\n{e}");
    }
    db.wait_ready("public.t");
    db.assert_same(&Compare {
        source: "public.t".into(),
        target: "other.t_copy".into(),
        order_by: "id".into(),
    });
    // NOT NULL and self-contained defaults came along.
    let def = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull
                                 || ' ' || coalesce(pg_get_expr(adbin, adrelid), '-'), ', ' ORDER BY attnum) AS d
                 FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
                WHERE attrelid = '%s'::regclass AND attnum > 0 AND NOT attisdropped";
    assert_eq!(
        db.src(&def.replace("%s", "public.t")),
        db.tgt(&def.replace("%s", "other.t_copy"))
    );
    let msgs: Vec<&str> = out.notices.iter().map(|n| n.message.as_str()).collect();
    assert!(
        msgs.contains(&"created schema \"other\" on the target"),
        "expected NOTICE `created schema \"other\" on the target`, got {msgs:?}"
    );
}

#[test]
fn add_table_quoted_names() {
    let db = TestDb::new("addt_quoted");
    db.src(
        r#"CREATE SCHEMA "Odd Schema";
           CREATE TABLE "Weird ""Name""" ("Col ""1""" int PRIMARY KEY, "select" text, "MiXed" int);
           CREATE TABLE "Odd Schema"."Tab.le" (id int PRIMARY KEY, "v v" text);
           INSERT INTO "Weird ""Name""" SELECT g, 'v' || g, g FROM generate_series(1, 20) g;
           INSERT INTO "Odd Schema"."Tab.le" SELECT g, 'w' || g FROM generate_series(1, 20) g;"#,
    );
    db.add_su_connector("c");
    db.add_table_ok(r#""Weird ""Name""""#);
    let out = db.add_table_ok(r#""Odd Schema"."Tab.le""#);
    let msgs: Vec<&str> = out.notices.iter().map(|n| n.message.as_str()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("created schema") && m.contains("Odd Schema")),
        "a NOTICE about creating \"Odd Schema\" expected: {msgs:?}"
    );
    let weird = r#"public."Weird ""Name""""#;
    let odd = r#""Odd Schema"."Tab.le""#;
    db.wait_ready(weird);
    db.wait_ready(odd);
    let c1 = Compare::same(r#""Weird ""Name""""#, r#""Col ""1""""#);
    let c2 = Compare::same(odd, "id");
    db.assert_same(&c1);
    db.assert_same(&c2);
    db.src(
        r#"INSERT INTO "Weird ""Name""" VALUES (100, 'streamed', 1);
           UPDATE "Weird ""Name""" SET "select" = 'upd', "Col ""1""" = "Col ""1""" + 1000 WHERE "Col ""1""" <= 5;
           DELETE FROM "Odd Schema"."Tab.le" WHERE id > 15;
           UPDATE "Odd Schema"."Tab.le" SET "v v" = 'upd' WHERE id < 3;"#,
    );
    db.wait_same(&c1, Duration::from_secs(30));
    db.wait_same(&c2, Duration::from_secs(30));
    // remove_table takes the same spelling.
    db.call_ok("remove_table", &[r#""Weird ""Name""""#]);
    assert!(db.try_progress(weird).is_err());
}

/// remove_table and resync_table of a table the connector does not sync: a clear error, and
/// nothing touched (the target table of the same name keeps its rows).
#[test]
fn remove_or_resync_unsynced_table() {
    let db = TestDb::new("unsynced_table");
    db.src("CREATE TABLE synced (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)");
    db.add_su_connector("c");
    db.add_table_ok("synced");
    db.wait_ready("public.synced");
    db.tgt("CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1), (2)");
    for f in ["remove_table", "resync_table"] {
        let e = db.call_err(f, &["other"]);
        assert_sqlstate(&e, "42704");
        assert_message_eq(&e, "table public.other is not synced by connector \"c\"");
    }
    let e = db.call_err("remove_table", &["no.such.name.here"]);
    assert_sqlstate(&e, "22023");
    assert_eq!(
        db.tgt("SELECT count(*) AS n FROM other")[0].int("n"),
        2,
        "resync_table must not truncate an unsynced table"
    );
    assert_eq!(db.progress("public.synced").text("state"), "ready");
}

/// indexes => 'all' builds the source's other indexes after the load; 'none' builds not even
/// the key (with a WARNING); a bad value is an error.
#[test]
fn add_table_indexes_option() {
    let db = TestDb::new("indexes_option");
    db.src(
        "CREATE TABLE ia (id int PRIMARY KEY, email text, v int, note text);
         CREATE UNIQUE INDEX ia_email ON ia (lower(email));
         CREATE INDEX ia_v_partial ON ia (v DESC) WHERE v > 10;
         CREATE INDEX ia_note_hash ON ia USING hash (note);
         INSERT INTO ia SELECT g, 'u' || g || '@x', g % 100, 'n' || g FROM generate_series(1, 1000) g;
         CREATE TABLE inone (id int PRIMARY KEY, v int);
         INSERT INTO inone SELECT g, g FROM generate_series(1, 10) g;",
    );
    db.add_su_connector("c");
    let e = db
        .target_sql("SELECT livesync.add_table('ia', indexes => 'some')")
        .err("indexes => 'some'");
    assert_sqlstate(&e, "22023");
    assert!(e.hint().contains("'all'"), "{e}");
    db.target_sql("SELECT livesync.add_table('ia', indexes => 'all')")
        .ok("indexes => 'all'");
    let out = db.target_sql("SELECT livesync.add_table('inone', indexes => 'none')");
    let warned = out
        .warnings()
        .iter()
        .any(|w| w.message.contains("gets no index"));
    out.ok("indexes => 'none'");
    assert!(warned, "a WARNING about the missing index");
    db.wait_ready("public.ia");
    db.wait_ready("public.inone");
    let idx: Vec<String> = db
        .tgt("SELECT indexname || ': ' || regexp_replace(indexdef, '^.* USING ', '') AS d FROM pg_indexes WHERE tablename = 'ia' ORDER BY 1")
        .iter()
        .map(|r| r.text("d").to_string())
        .collect();
    assert_eq!(
        idx,
        vec![
            "ia_email: btree (lower(email))".to_string(),
            "ia_note_hash: hash (note)".to_string(),
            "ia_pkey: btree (id)".to_string(),
            "ia_v_partial: btree (v DESC) WHERE (v > 10)".to_string(),
        ]
    );
    assert_eq!(
        db.tgt("SELECT count(*) AS n FROM pg_indexes WHERE tablename = 'inone'")[0].int("n"),
        0
    );
    db.src("UPDATE ia SET v = -v WHERE id < 50; UPDATE inone SET v = 0 WHERE id = 3");
    db.wait_same(&Compare::same("ia", "id"), Duration::from_secs(30));
    db.wait_same(&Compare::same("inone", "id"), Duration::from_secs(30));
}

/// add_table checks at once that the connector's role owns the source table (putting it into the
/// publication, which the worker does after commit, requires it): 42501 with the fix as a hint,
/// and nothing added.
#[test]
fn add_table_of_a_table_the_role_does_not_own() {
    let db = TestDb::new("addt_not_owner");
    db.src("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let conninfo = format!(
        "{} password={}",
        db.source_conninfo(SCRAM_USER),
        conninfo_value(SCRAM_PASSWORD)
    );
    let c = db.add_ok(&conninfo, Some("c"));
    let publication = db
        .connector(&c)
        .unwrap()
        .text("publication_name")
        .to_string();
    let e = db
        .add_table("t", None, None)
        .err("add_table of a table owned by another role");
    assert_sqlstate(&e, "42501");
    assert_message_eq(
        &e,
        &format!("role \"{SCRAM_USER}\" does not own source table \"public\".\"t\""),
    );
    assert!(e.hint().contains("OWNER TO"), "{e}");
    assert_nothing_added(&db, &publication, Some("t"));
}
