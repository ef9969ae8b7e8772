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
    if text.contains('\0') {
        return Err("the expression contains a NUL byte".into());
    }
    let probe = format!("SELECT ({text})");
    let c = CString::new(probe).map_err(|_| "the expression contains a NUL byte".to_string())?;
    let shape = crate::error::catch(|| {
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call; raw_parser only
        // reads it and returns a List allocated in the current memory context (freed with it).
        // A syntax error is an ereport, which `catch` turns into Err.
        let list = unsafe { pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT) };
        // SAFETY: raw_parser returns NIL or a List of RawStmt nodes.
        unsafe { is_single_plain_select(list) }
    });
    match shape {
        Ok(true) => Ok(format!("({text})")),
        Ok(false) => Err("it is not a single expression".into()),
        Err(e) => Err(format!("it does not parse as an expression: {e}")),
    }
}

/// Whether `list` (raw_parser's output) is one `SELECT <one unnamed target>` with no other clause.
///
/// # Safety
/// `list` must be NIL or a List of `RawStmt` as returned by `raw_parser`.
unsafe fn is_single_plain_select(list: *mut pg_sys::List) -> bool {
    let stmts = PgList::<pg_sys::RawStmt>::from_pg(list);
    if stmts.len() != 1 {
        return false;
    }
    let Some(raw) = stmts.get_ptr(0) else { return false };
    let node = (*raw).stmt;
    if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_SelectStmt {
        return false;
    }
    let s = node as *mut pg_sys::SelectStmt;
    let s = &*s;
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
    let targets = PgList::<pg_sys::ResTarget>::from_pg(s.targetList);
    if targets.len() != 1 {
        return false;
    }
    let Some(t) = targets.get_ptr(0) else { return false };
    (*t).name.is_null() && (*t).indirection.is_null() && !(*t).val.is_null()
}

/// Whether `sql` is exactly one `CREATE INDEX` statement on table `schema.name`.
pub fn is_index_on(sql: &str, schema: &str, name: &str) -> bool {
    let Ok(c) = CString::new(sql) else { return false };
    crate::error::catch(|| {
        // SAFETY: as in `single_expression`.
        let list = unsafe { pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT) };
        // SAFETY: raw_parser returns NIL or a List of RawStmt nodes; an IndexStmt's relation is a
        // RangeVar whose name fields are NULL or NUL-terminated strings.
        unsafe {
            let stmts = PgList::<pg_sys::RawStmt>::from_pg(list);
            if stmts.len() != 1 {
                return false;
            }
            let Some(raw) = stmts.get_ptr(0) else { return false };
            let node = (*raw).stmt;
            if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_IndexStmt {
                return false;
            }
            let rel = (*(node as *mut pg_sys::IndexStmt)).relation;
            if rel.is_null() || (*rel).schemaname.is_null() || (*rel).relname.is_null() {
                return false;
            }
            std::ffi::CStr::from_ptr((*rel).schemaname).to_str() == Ok(schema)
                && std::ffi::CStr::from_ptr((*rel).relname).to_str() == Ok(name)
        }
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
    // Read-write SPI: its snapshot sees the object created just before (see target::lookup).
    Spi::connect_mut(|c| c.update(
        "SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM (
           SELECT DISTINCT CASE d.refclassid
                    WHEN 'pg_catalog.pg_proc'::regclass THEN d.refobjid::regprocedure::text
                    ELSE 'operator ' || d.refobjid::regoperator::text END AS x
             FROM pg_catalog.pg_depend d
            WHERE d.classid = $1::regclass AND d.objid = $2
              AND d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_operator'::regclass)
              AND d.refobjid >= 16384) s",
        Some(1),
        &[classid.into(), objid.into()],
    )?.first().get_one::<Vec<String>>())
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
