//! A hostile source (issue 12, item 1): names, enum labels, constraint names and expressions
//! crafted to break out of the statements livesync builds on the target. Nothing the source
//! sends may become code on the target; expressions are carried over only as single
//! expressions calling built-in functions (unless `livesync.trust_source_functions`).

use std::time::Duration;

use crate::support::*;

const EVIL: &str = "); DROP TABLE public.victim; --";

fn victim_intact(db: &TestDb) {
    let n = db.tgt("SELECT count(*) AS n FROM public.victim")[0].int("n");
    assert_eq!(n, 1, "the target's other table was changed");
}

/// Every hostile name and expression of a source table, its types and indexes with
/// `indexes => 'all'`: the table syncs, the target's other tables are untouched, the indexes
/// that can be built are built exactly as on the source, and what calls a function that is not
/// built in is left out with a WARNING.
#[test]
fn hostile_source_definitions_run_nothing_on_the_target() {
    let db = TestDb::new("hostile_src");
    db.tgt(
        "CREATE TABLE victim (i int); INSERT INTO victim VALUES (1);
         CREATE FUNCTION public.side_effect(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';",
    );
    let col = ident(&format!("x{EVIL}"));
    let schema = ident(&format!("s{EVIL}"));
    let enum_ty = format!("{schema}.{}", ident(&format!("e'{EVIL}")));
    let domain = ident(&format!("d{EVIL}"));
    let comp = ident(&format!("comp{EVIL}"));
    let label = format!("a'{EVIL}");
    db.src(&format!(
        "CREATE SCHEMA {schema};
         CREATE TYPE {enum_ty} AS ENUM ({}, 'b');
         CREATE DOMAIN {domain} AS int CONSTRAINT {} CHECK (VALUE > 0);
         CREATE TYPE {comp} AS ({} int);
         CREATE FUNCTION public.side_effect(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
         CREATE TABLE h (
             id int PRIMARY KEY,
             {col} text DEFAULT {},
             e {enum_ty} DEFAULT 'b',
             d {domain},
             c {comp},
             f int DEFAULT public.side_effect(1)
         );
         CREATE INDEX {} ON h (id);
         CREATE INDEX h_fn ON h (public.side_effect(id));
         CREATE INDEX h_lower ON h (lower({col}) DESC NULLS LAST) WHERE id > 0;
         INSERT INTO h VALUES (1, 'v', {}, 5, ROW(3), 7), (2, NULL, 'b', NULL, NULL, NULL);",
        lit(&label),
        ident(&format!("c CHECK (true){EVIL}")),
        ident(&format!("f{EVIL}")),
        lit(&format!("y'{EVIL}")),
        ident("x USING btree (id); DROP TABLE public.victim; --"),
        lit(&label),
    ));
    db.add_su_connector("c");
    let out = db.target_sql("SELECT livesync.add_table('h', indexes => 'all')");
    let warnings: Vec<String> = out.warnings().iter().map(|w| w.message.clone()).collect();
    victim_intact(&db);
    out.ok("add_table of the hostile table");
    assert!(
        warnings.iter().any(|w| w.contains("\"h_fn\"")
            && w.contains("side_effect(integer)")
            && w.contains("not built in")),
        "a WARNING that index h_fn calls a function that is not built in: {warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("default of column \"f\"") && w.contains("side_effect(integer)")),
        "a WARNING that the default of f was left out: {warnings:?}"
    );

    db.wait_ready("public.h");
    victim_intact(&db);
    let cmp = Compare::same("h", "id");
    db.assert_same(&cmp);
    db.src(&format!(
        "INSERT INTO h (id, e, d) VALUES (3, {}, 9); UPDATE h SET {col} = 'w' WHERE id = 2",
        lit(&label)
    ));
    db.wait_same(&cmp, Duration::from_secs(30));
    victim_intact(&db);

    // The indexes: the ones that can be built, as on the source; not the one calling side_effect.
    let idx = "SELECT string_agg(indexname || ': ' || regexp_replace(indexdef, '^.* USING ', ''), E'\\n' ORDER BY indexname) AS d
                 FROM pg_indexes WHERE tablename = 'h' AND indexname <> 'h_fn'";
    assert_eq!(db.src(idx), db.tgt(idx), "index definitions differ");
    assert!(db
        .tgt("SELECT 1 FROM pg_indexes WHERE tablename = 'h' AND indexname = 'h_fn'")
        .is_empty());

    // Column defaults and types: as on the source, but f's default left out.
    let defaults = "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), E'\\n' ORDER BY a.attnum) AS d
                      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                     WHERE a.attrelid = 'public.h'::regclass AND a.attnum > 0 AND a.attname <> 'f'";
    assert_eq!(
        db.src(defaults),
        db.tgt(defaults),
        "column definitions differ"
    );
    assert!(db
        .tgt("SELECT 1 FROM pg_attrdef WHERE adrelid = 'public.h'::regclass AND adnum = 6")
        .is_empty());

    // The types, with their hostile labels, constraint and attribute names, as on the source.
    let types = format!(
        "SELECT enum_range(NULL::{enum_ty})::text AS labels,
                (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ') FROM pg_constraint
                  WHERE contypid = {}::regtype) AS checks,
                (SELECT string_agg(attname, ', ') FROM pg_attribute
                  WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = {}::regtype)) AS attrs",
        lit(&domain),
        lit(&comp)
    );
    assert_eq!(db.src(&types), db.tgt(&types), "type definitions differ");
    victim_intact(&db);
}

/// Generated columns are created on the target as generated columns (computed there) and
/// defaults of a user-defined type are kept; a generated column calling a function that is not
/// built in is refused unless the superuser opts in.
#[test]
fn generated_columns_and_enum_defaults_are_carried_over() {
    let db = TestDb::new("generated_cols");
    let fdef = "CREATE FUNCTION public.twice(numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';";
    db.tgt(fdef);
    db.src(&format!(
        "{fdef}
         CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'R');
         CREATE TABLE film (id int PRIMARY KEY, price numeric, qty int,
                            total numeric GENERATED ALWAYS AS (price * qty) STORED,
                            rating mpaa_rating DEFAULT 'G', note text);
         INSERT INTO film (id, price, qty, note) SELECT g, g / 10.0, g % 7, 'n' || g FROM generate_series(1, 500) g;
         CREATE TABLE film2 (id int PRIMARY KEY, price numeric, dbl numeric GENERATED ALWAYS AS (public.twice(price)) STORED);
         INSERT INTO film2 (id, price) VALUES (1, 1.5);"
    ));
    db.add_su_connector("c");
    db.add_table_ok("film");
    let shape = "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attgenerated::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), E'\\n' ORDER BY a.attnum) AS d
                   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = 'public.film'::regclass AND a.attnum > 0";
    assert_eq!(
        db.src(shape),
        db.tgt(shape),
        "the target's columns differ from the source's"
    );
    db.wait_ready("public.film");
    let cmp = Compare::same("film", "id");
    assert_eq!(db.assert_same(&cmp), 500);
    db.src("UPDATE film SET price = price + 1 WHERE id % 3 = 0; INSERT INTO film (id, price, qty) VALUES (1000, 2, 3); DELETE FROM film WHERE id = 4");
    db.wait_same(&cmp, Duration::from_secs(30));

    let e = db
        .add_table("film2", None, None)
        .err("a generated column calling a user function");
    assert_sqlstate(&e, "42501");
    assert!(
        e.message.contains("\"dbl\"") && e.message.contains("twice(numeric)"),
        "{e}"
    );
    assert!(e.hint().contains("livesync.trust_source_functions"), "{e}");
    assert!(
        db.tgt("SELECT 1 FROM pg_class WHERE relname = 'film2'")
            .is_empty(),
        "nothing created"
    );

    // Opting in (superuser): the function exists on the target, so the column is created.
    db.target_sql("SET livesync.trust_source_functions = on; SELECT livesync.add_table('film2')")
        .ok("add_table with trust_source_functions");
    db.wait_ready("public.film2");
    db.assert_same(&Compare::same("film2", "id"));
}
