//! The one path by which text that came from the source may become part of a statement run on
//! the target.
//!
//! The source is another trust domain: its owner, or a man in the middle under the default
//! `sslmode=prefer`, controls every string livesync reads from it. Names are always quoted, and
//! types are looked up on the target by their catalog fields, so neither ever needs this path.
//! What cannot be rebuilt from fields are *expressions* — column defaults, generated columns,
//! index expressions and predicates, domain defaults and CHECK constraints — which come as the
//! source's deparsed text. They pass three gates, in this order:
//!
//! 1. **One expression, nothing else** ([`single_expression`]): the text is parsed on the target
//!    by PostgreSQL's own raw parser as `SELECT (<text>)`, which must give exactly one statement,
//!    a plain SELECT of exactly one unnamed target and no other clause. Text that closes the
//!    parenthesis early, adds a clause, a second statement or a comment swallowing the rest is
//!    refused. The statement it is then embedded in keeps it in parentheses, where the same
//!    tokens parse to the same expression.
//! 2. **One statement per execution** ([`run_one`]): every statement built from source data is
//!    run as a prepared statement, which PostgreSQL refuses to build from more than one command.
//! 3. **Built-in functions only** ([`non_builtin_calls`]): once the object using the expression
//!    exists (on an empty table, inside a subtransaction the caller rolls back on refusal), its
//!    dependencies on functions and operators are read from the target's `pg_depend`; any that
//!    is not built in (OID ≥ 16384: user-defined or from an extension) is refused unless the
//!    superuser-only setting `livesync.trust_source_functions` is on. Nothing is evaluated before
//!    this check: defaults and generated columns are only computed when rows arrive, and indexes
//!    are probed on the still-empty target.

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::PgList;

/// Why a source expression was refused.
pub type Refusal = String;

/// Check that `text` is exactly one SQL expression; returns it in parentheses, ready to embed.
pub fn single_expression(text: &str) -> Result<String, Refusal> {
    // SAFETY (of the closure): `node` is the statement node `parse_one` checked to be a
    // SelectStmt; its lists and pointers are NIL/NULL or point into the parse tree.
    let shape = parse_one(
        &format!("SELECT ({text})"),
        pg_sys::NodeTag::T_SelectStmt,
        |node| unsafe { is_plain_select(&*(node as *mut pg_sys::SelectStmt)) },
    );
    match shape {
        Ok(true) => Ok(format!("({text})")),
        Ok(false) => Err("it is not a single expression".into()),
        Err(e) => Err(format!("it does not parse as an expression: {e}")),
    }
}

/// Parse `sql` with PostgreSQL's raw parser on the target (nothing is analyzed or run) and call
/// `check` on its statement when it is exactly one statement of kind `tag`; false otherwise. A
/// syntax error (or a NUL byte) is Err.
fn parse_one(
    sql: &str,
    tag: pg_sys::NodeTag,
    check: impl FnOnce(*mut pg_sys::Node) -> bool,
) -> Result<bool, String> {
    let c = CString::new(sql).map_err(|_| "it contains a NUL byte".to_string())?;
    crate::error::catch(|| {
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call; raw_parser only
        // reads it and returns a List allocated in the current memory context (freed with it).
        // A syntax error is an ereport, which `catch` turns into Err.
        let list =
            unsafe { pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT) };
        // SAFETY: raw_parser returns NIL or a List of RawStmt nodes, each with a statement node.
        let node = unsafe {
            let stmts = PgList::<pg_sys::RawStmt>::from_pg(list);
            match (stmts.len(), stmts.get_ptr(0)) {
                (1, Some(raw)) => (*raw).stmt,
                _ => std::ptr::null_mut(),
            }
        };
        // SAFETY: a non-null node of the parse tree has a valid tag.
        !node.is_null() && unsafe { (*node).type_ } == tag && check(node)
    })
    .map_err(|e| e.message)
}

/// Whether `s` is a `SELECT <one unnamed target>` with no other clause.
fn is_plain_select(s: &pg_sys::SelectStmt) -> bool {
    let empty = |l: *mut pg_sys::List| l.is_null();
    if !(empty(s.distinctClause)
        && s.intoClause.is_null()
        && empty(s.fromClause)
        && s.whereClause.is_null()
        && empty(s.groupClause)
        && s.havingClause.is_null()
        && empty(s.windowClause)
        && empty(s.valuesLists)
        && empty(s.sortClause)
        && s.limitOffset.is_null()
        && s.limitCount.is_null()
        && empty(s.lockingClause)
        && s.withClause.is_null()
        && s.op == pg_sys::SetOperation::SETOP_NONE)
    {
        return false;
    }
    // SAFETY: targetList is NIL or a List of ResTarget nodes of the parse tree.
    let targets = unsafe { PgList::<pg_sys::ResTarget>::from_pg(s.targetList) };
    if targets.len() != 1 {
        return false;
    }
    let Some(t) = targets.get_ptr(0) else {
        return false;
    };
    // SAFETY: a ResTarget pointer from the list above.
    unsafe { (*t).name.is_null() && (*t).indirection.is_null() && !(*t).val.is_null() }
}

/// Whether `sql` is exactly one `CREATE INDEX` statement on table `schema.name`.
pub fn is_index_on(sql: &str, schema: &str, name: &str) -> bool {
    // SAFETY (of the closure): `node` is an IndexStmt (checked by `parse_one`); its relation is a
    // RangeVar whose name fields are NULL or NUL-terminated strings.
    parse_one(sql, pg_sys::NodeTag::T_IndexStmt, |node| unsafe {
        let rel = (*(node as *mut pg_sys::IndexStmt)).relation;
        !rel.is_null()
            && !(*rel).schemaname.is_null()
            && !(*rel).relname.is_null()
            && std::ffi::CStr::from_ptr((*rel).schemaname).to_str() == Ok(schema)
            && std::ffi::CStr::from_ptr((*rel).relname).to_str() == Ok(name)
    })
    .unwrap_or(false)
}

/// Run one statement built from source data as a prepared statement: PostgreSQL refuses to
/// prepare more than one command, so nothing can ride along after a statement's end.
pub fn run_one(sql: &str) -> Result<(), pgrx::spi::SpiError> {
    Spi::connect_mut(|client| {
        let stmt = client.prepare_mut(sql, &[])?;
        client.update(&stmt, None, &[])?;
        Ok(())
    })
}

/// The functions and operators that are not built in (user-defined or from an extension) among
/// what object `objid` of catalog `classid` (e.g. `pg_attrdef`) depends on, as the target
/// spells them (`f(integer)`).
pub fn non_builtin_calls(classid: &str, objid: pg_sys::Oid) -> Vec<String> {
    // Read-write: its snapshot sees the object created just before.
    crate::catalog::first_value_rw::<Vec<String>>(
        "SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM (
           SELECT DISTINCT CASE d.refclassid
                    WHEN 'pg_catalog.pg_proc'::regclass THEN d.refobjid::regprocedure::text
                    ELSE 'operator ' || d.refobjid::regoperator::text END AS x
             FROM pg_catalog.pg_depend d
            WHERE d.classid = $1::regclass AND d.objid = $2
              AND d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_operator'::regclass)
              AND d.refobjid >= 16384) s",
        &[classid.into(), objid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Whether expressions from the source may call functions beyond the built-in ones
/// (`livesync.trust_source_functions`, superuser-only).
pub fn trust_source_functions() -> bool {
    crate::guc::TRUST_SOURCE_FUNCTIONS.get()
}

/// Refuse (as a PostgreSQL ERROR, so the caller's subtransaction rolls back) when `calls` is not
/// empty and the user has not opted in.
pub fn refuse_foreign_calls(what: &str, calls: &[String]) {
    if !calls.is_empty() && !trust_source_functions() {
        pgrx::error!(
            "{what} calls {} that {} not built in",
            calls.join(", "),
            if calls.len() == 1 { "is" } else { "are" }
        );
    }
}
