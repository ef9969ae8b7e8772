//! Target tables: checked, or created from the source's definition.
//!
//! Used by `add_table` (so mistakes are reported to the caller at once) and again by the copy,
//! inside the transaction that loads the table (for tables that appear in the connector's
//! publication without `add_table`, and so a target dropped meanwhile is recreated). A target
//! that exists must have every source column, with the same type, and be empty; one that does
//! not exist is created — schema included, with a NOTICE — with the source's columns, types,
//! NOT NULL and self-contained defaults, and its key is built after the load.

use pgrx::prelude::*;
use pgrx::PgLogLevel;

use super::guard;
use crate::catalog;
use crate::error::{LivesyncError, Result};
use crate::source::table::{ColumnDef, IndexDef, TableDef, TypeRef, UserType, UserTypeKind};
use crate::timescale::HypertableSpec;

/// A target column: name and `format_type` of its type.
pub fn target_columns(target: &str) -> Result<Vec<(String, String)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod)
               FROM pg_catalog.pg_attribute
              WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            None,
            &[target.into()],
        )?;
        t.map(|r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ))
        })
        .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(catalog::spi_err)
}

/// An existing target must have every source column, with the same type, and be empty.
pub fn check_existing_target(def: &TableDef, target: &str) -> Result<()> {
    let cols = target_columns(target)?;
    for sc in &def.columns {
        match cols.iter().find(|(n, _)| n == &sc.name) {
            None => {
                return Err(LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!(
                        "column \"{}\" of source table {} does not exist in target table {target}",
                        sc.name,
                        def.qualified()
                    ),
                )
                .hint(format!(
                    "ALTER TABLE {target} ADD COLUMN {} {};",
                    spi::quote_identifier(&sc.name),
                    sc.type_name
                )))
            }
            Some((_, ty)) if ty != &sc.type_name => {
                return Err(LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!(
                        "column \"{}\" has type {} on the source but {ty} in target table {target}",
                        sc.name, sc.type_name
                    ),
                )
                .hint(format!(
                    "ALTER TABLE {target} ALTER COLUMN {} TYPE {};",
                    spi::quote_identifier(&sc.name),
                    sc.type_name
                )))
            }
            Some(_) => {}
        }
    }
    let has_rows = Spi::get_one::<bool>(&format!("SELECT EXISTS (SELECT 1 FROM {target})"))
        .map_err(catalog::spi_err)?
        .unwrap_or(false);
    if has_rows {
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("target table {target} is not empty"),
        )
        .detail("The initial copy loads every row of the source table; rows already there would be duplicated or conflict.")
        .hint(format!("TRUNCATE {target}; or pass another target => 'schema.table'.")));
    }
    Ok(())
}

/// The target's spelling (`format_type`) of a type named by catalog fields, looked up by schema
/// and `typname` (never by parsing a name the source spelled); a type owned by extension
/// `extension` may live in another schema on the target. None when the target lacks it.
fn resolve_type(t: &TypeRef, extension: Option<&str>) -> Result<Option<String>> {
    let found = catalog::first_value_rw::<String>(
        "SELECT pg_catalog.format_type(t.oid, $3)
           FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname = $1 AND t.typname = $2",
        &[
            t.schema.as_str().into(),
            t.name.as_str().into(),
            t.typmod.into(),
        ],
    )?;
    if found.is_some() {
        return Ok(found);
    }
    let Some(ext) = extension else {
        return Ok(None);
    };
    catalog::first_value_rw::<String>(
        "SELECT pg_catalog.format_type(t.oid, $3)
           FROM pg_catalog.pg_type t
           JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
           JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
          WHERE e.extname = $1 AND t.typname = $2
          LIMIT 1",
        &[ext.into(), t.name.as_str().into(), t.typmod.into()],
    )
}

fn type_oid(schema: &str, name: &str) -> Result<Option<pg_sys::Oid>> {
    catalog::first_value_rw::<pg_sys::Oid>(
        "SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname = $1 AND t.typname = $2",
        &[schema.into(), name.into()],
    )
}

fn ensure_schema(schema: &str) -> Result<()> {
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        &[schema.into()],
    )
    .map_err(catalog::spi_err)?
    .unwrap_or(false);
    if !exists {
        guard::run_one(&format!("CREATE SCHEMA {}", spi::quote_identifier(schema)))
            .map_err(catalog::spi_err)?;
        pgrx::notice!("created schema \"{schema}\" on the target");
    }
    Ok(())
}

/// Create user-defined type `ut` on the target from its fields (it is missing there). A domain's
/// CHECK constraint that cannot pass the guard is an error (the type would accept values the
/// source refuses); a domain default that cannot is left out with a WARNING.
fn create_user_type(ut: &UserType) -> std::result::Result<(), String> {
    let q = qualified(&ut.schema, &ut.name);
    let missing = |t: &TypeRef| {
        format!(
            "type {} does not exist on the target",
            qualified(&t.schema, &t.name)
        )
    };
    match &ut.kind {
        UserTypeKind::Enum { labels } => {
            let labels: Vec<String> = labels
                .iter()
                .map(|l| spi::quote_literal(l))
                .collect::<Vec<String>>();
            guard::run_one(&format!("CREATE TYPE {q} AS ENUM ({})", labels.join(", ")))
                .map_err(|e| e.to_string())
        }
        UserTypeKind::Composite { attributes } => {
            let mut fields = Vec::new();
            for (name, t) in attributes {
                let ty = resolve_type(t, None)
                    .map_err(|e| e.message)?
                    .ok_or_else(|| missing(t))?;
                fields.push(format!("{} {ty}", spi::quote_identifier(name)));
            }
            guard::run_one(&format!("CREATE TYPE {q} AS ({})", fields.join(", ")))
                .map_err(|e| e.to_string())
        }
        UserTypeKind::Domain {
            base,
            default,
            not_null,
            checks,
        } => {
            let base_ty = resolve_type(base, None)
                .map_err(|e| e.message)?
                .ok_or_else(|| missing(base))?;
            let nn = if *not_null { " NOT NULL" } else { "" };
            guard::run_one(&format!("CREATE DOMAIN {q} AS {base_ty}{nn}"))
                .map_err(|e| e.to_string())?;
            let oid = type_oid(&ut.schema, &ut.name)
                .map_err(|e| e.message)?
                .ok_or("the domain was not created")?;
            for (name, expr) in checks {
                let expr = guard::single_expression(expr)
                    .map_err(|r| format!("CHECK constraint \"{name}\" refused: {r}"))?;
                guard::run_one(&format!(
                    "ALTER DOMAIN {q} ADD CONSTRAINT {} CHECK {expr}",
                    spi::quote_identifier(name)
                ))
                .map_err(|e| format!("CHECK constraint \"{name}\": {e}"))?;
                let con = catalog::first_value_rw::<pg_sys::Oid>(
                    "SELECT oid FROM pg_catalog.pg_constraint WHERE contypid = $1 AND conname = $2",
                    &[oid.into(), name.as_str().into()],
                )
                .map_err(|e| e.message)?
                .ok_or("the constraint was not created")?;
                let calls = guard::non_builtin_calls("pg_catalog.pg_constraint", con);
                if !calls.is_empty() && !guard::trust_source_functions() {
                    return Err(format!(
                        "CHECK constraint \"{name}\" calls {}, not built in",
                        calls.join(", ")
                    ));
                }
            }
            if let Some(d) = default {
                let r = crate::error::in_subtransaction(|| {
                    let expr = guard::single_expression(d).unwrap_or_else(|r| pgrx::error!("{r}"));
                    guard::run_one(&format!("ALTER DOMAIN {q} SET DEFAULT {expr}"))
                        .unwrap_or_else(|e| pgrx::error!("{e}"));
                    guard::refuse_foreign_calls(
                        "the default",
                        &guard::non_builtin_calls("pg_catalog.pg_type", oid),
                    );
                });
                if let Err(e) = r {
                    pgrx::warning!("livesync: the default of type {q} was left out: {e}");
                }
            }
            Ok(())
        }
    }
}

/// Every column type must exist on the target before the table can be created there: enums,
/// domains and composite types that are missing are created from the source's definition (as
/// catalog fields, see [`create_user_type`]); a type from an extension (or any other missing
/// type) is an error saying what to install. Returns each column's type as the target spells it,
/// by column name.
pub fn resolve_column_types(def: &TableDef) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for c in def.columns.iter().chain(&def.generated) {
        if let Some(ty) = resolve_type(&c.type_ref, c.type_extension.as_deref())? {
            out.push((c.name.clone(), ty));
            continue;
        }
        for ut in &c.user_types {
            if type_oid(&ut.schema, &ut.name)?.is_some() {
                continue;
            }
            ensure_schema(&ut.schema)?;
            let q = qualified(&ut.schema, &ut.name);
            crate::error::in_subtransaction(|| create_user_type(ut))
                .map_err(String::from)
                .and_then(|r| r)
                .map_err(|e| {
                    LivesyncError::new(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                        format!("could not create type {q} of column \"{}\" on the target: {e}", c.name),
                    )
                    .hint("Create the type on the target yourself (pg_dump --schema-only of the source has it), then add the table again.")
                })?;
            pgrx::notice!("created type {q} on the target");
        }
        if let Some(ty) = resolve_type(&c.type_ref, c.type_extension.as_deref())? {
            out.push((c.name.clone(), ty));
            continue;
        }
        let base = c.type_name.trim_end_matches("[]");
        let hint = match (&c.type_extension, c.type_kind.as_str()) {
            (Some(ext), _) => format!("CREATE EXTENSION {} on the target first.", spi::quote_identifier(ext)),
            _ => "Create the type on the target first (pg_dump --schema-only of the source has its definition).".to_string(),
        };
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "type \"{base}\" of column \"{}\" does not exist on the target",
                c.name
            ),
        )
        .hint(hint));
    }
    Ok(out)
}

/// Create target `target_q` for source table `def`: columns in the source's order with the types
/// resolved on the target, NOT NULL, generated columns (computed on the target, as the source's
/// subscribers do) and the defaults that pass the guard. A generated column whose expression is
/// refused is an error (the table would differ from the source's); a default that is refused or
/// does not build on the target (e.g. `nextval` of a sequence the target lacks) is left out with
/// a NOTICE, or a WARNING when it calls functions that are not built in.
fn create_table(def: &TableDef, target_q: &str) -> Result<()> {
    let types = resolve_column_types(def)?;
    let type_of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    let mut all: Vec<&ColumnDef> = def.columns.iter().chain(&def.generated).collect();
    all.sort_by_key(|c| c.position);
    let mut cols = Vec::new();
    for c in &all {
        let mut s = format!("{} {}", spi::quote_identifier(&c.name), type_of(&c.name));
        if def.generated.iter().any(|g| g.name == c.name) {
            let text = c.default_expr.as_deref().unwrap_or_default();
            let expr = guard::single_expression(text).map_err(|r| generated_refused(def, c, &r))?;
            s.push_str(&format!(" GENERATED ALWAYS AS {expr} STORED"));
        }
        if c.not_null {
            s.push_str(" NOT NULL");
        }
        cols.push(s);
    }
    guard::run_one(&format!(
        "CREATE TABLE {target_q} (\n    {}\n)",
        cols.join(",\n    ")
    ))
    .map_err(|e| {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("could not create target table {target_q}: {e}"),
        )
        .hint("Create the target table yourself, then add the table again.")
    })?;
    for g in &def.generated {
        let calls =
            guard::non_builtin_calls("pg_catalog.pg_attrdef", attrdef_oid(target_q, &g.name)?);
        if !calls.is_empty() && !guard::trust_source_functions() {
            return Err(generated_refused(
                def,
                g,
                &format!("it calls {}, not built in", calls.join(", ")),
            ));
        }
    }
    for c in def.columns.iter().filter(|c| c.default_expr.is_some()) {
        let text = c.default_expr.as_deref().unwrap_or_default();
        let col = spi::quote_identifier(&c.name);
        let mut foreign = false;
        let r = crate::error::in_subtransaction(|| {
            let expr = guard::single_expression(text).unwrap_or_else(|r| pgrx::error!("{r}"));
            guard::run_one(&format!(
                "ALTER TABLE {target_q} ALTER COLUMN {col} SET DEFAULT {expr}"
            ))
            .unwrap_or_else(|e| pgrx::error!("{e}"));
            let calls = guard::non_builtin_calls(
                "pg_catalog.pg_attrdef",
                attrdef_oid(target_q, &c.name).unwrap_or_else(|e| pgrx::error!("{}", e.message)),
            );
            foreign = !calls.is_empty();
            guard::refuse_foreign_calls("it", &calls);
        });
        if let Err(e) = r {
            let msg = format!(
                "the default of column \"{}\" of {target_q} was left out: {e}",
                c.name
            );
            if foreign {
                LivesyncError::new(PgSqlErrorCode::ERRCODE_WARNING, msg)
                    .detail(format!("Source default: {text}"))
                    .hint("Set the default on the target yourself, or SET livesync.trust_source_functions = on (superuser) and add the table again.")
                    .report(PgLogLevel::WARNING);
            } else {
                pgrx::notice!("{msg}");
            }
        }
    }
    Ok(())
}

fn generated_refused(def: &TableDef, c: &ColumnDef, why: &str) -> LivesyncError {
    LivesyncError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("the generated column \"{}\" of source table {} cannot be created on the target: {why}", c.name, def.qualified()),
    )
    .detail(format!("Source expression: {}", c.default_expr.as_deref().unwrap_or_default()))
    .hint("Create the target table yourself, or SET livesync.trust_source_functions = on (superuser) if the functions it calls exist on the target and you trust the source.")
}

fn attrdef_oid(target_q: &str, column: &str) -> Result<pg_sys::Oid> {
    catalog::first_value_rw::<pg_sys::Oid>(
        "SELECT d.oid FROM pg_catalog.pg_attrdef d
           JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
          WHERE d.adrelid = $1::regclass AND a.attname = $2",
        &[target_q.into(), column.into()],
    )?
    .ok_or_else(|| {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("no default of column \"{column}\""),
        )
    })
}

/// The statements that build the source's other indexes (`indexes => 'all'`) on the new, still
/// empty target `target_q` in schema `schema`, from their catalog fields. Each is tried out on
/// the empty table in a subtransaction that is rolled back (nothing is evaluated: no rows), so
/// an index the target cannot build — an expression refused by the guard, a function, operator
/// class or collation the target lacks, a unique index a hypertable refuses — is left out now,
/// with a WARNING, rather than after the load. The rest are built after the load.
pub fn plan_indexes(target_q: &str, schema: &str, indexes: &[IndexDef]) -> Vec<String> {
    let mut out = Vec::new();
    for ix in indexes {
        let r = index_sql(target_q, schema, ix).and_then(|sql| {
            crate::error::probe_in_subtransaction(|| {
                guard::run_one(&sql).unwrap_or_else(|e| pgrx::error!("{e}"));
                let built = catalog::first_value_rw::<Vec<pg_sys::Oid>>(
                    "SELECT array_agg(indexrelid) FROM pg_catalog.pg_index WHERE indrelid = $1::regclass",
                    &[target_q.into()],
                )
                .ok()
                .flatten()
                .unwrap_or_default();
                for oid in built {
                    guard::refuse_foreign_calls("its definition", &guard::non_builtin_calls("pg_catalog.pg_class", oid));
                }
            })
            .map(|_| sql)
            .map_err(String::from)
        });
        match r {
            Ok(sql) => out.push(sql),
            Err(e) => LivesyncError::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "index \"{}\" of the source is not built on {target_q}: {e}",
                    ix.name
                ),
            )
            .hint("Create it on the target yourself if you need it.")
            .report(PgLogLevel::WARNING),
        }
    }
    out
}

/// `CREATE [UNIQUE] INDEX "name" ON target USING "am" (…) …` from an index's fields; expressions
/// through the guard. The source's name is kept when it is free in the target schema.
fn index_sql(target_q: &str, schema: &str, ix: &IndexDef) -> std::result::Result<String, String> {
    let mut cols = Vec::new();
    for c in &ix.columns {
        let mut s = match &c.column {
            Ok(name) => spi::quote_identifier(name),
            Err(expr) => guard::single_expression(expr)?,
        };
        if let Some((ns, coll)) = &c.collation {
            s.push_str(&format!(" COLLATE {}", qualified(ns, coll)));
        }
        if let Some((ns, opc)) = &c.opclass {
            s.push_str(&format!(" {}", qualified(ns, opc)));
        }
        if c.descending {
            s.push_str(" DESC");
        }
        match (c.descending, c.nulls_first) {
            (false, true) => s.push_str(" NULLS FIRST"),
            (true, false) => s.push_str(" NULLS LAST"),
            _ => {}
        }
        cols.push(s);
    }
    let name_free = catalog::first_value_rw::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NULL",
        &[qualified(schema, &ix.name).as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    let mut sql = format!(
        "CREATE {}INDEX {}ON {target_q} USING {} ({})",
        if ix.unique { "UNIQUE " } else { "" },
        if name_free {
            format!("{} ", spi::quote_identifier(&ix.name))
        } else {
            String::new()
        },
        spi::quote_identifier(&ix.access_method),
        cols.join(", ")
    );
    if !ix.include.is_empty() {
        let inc: Vec<String> = ix.include.iter().map(spi::quote_identifier).collect();
        sql.push_str(&format!(" INCLUDE ({})", inc.join(", ")));
    }
    if ix.nulls_not_distinct {
        sql.push_str(" NULLS NOT DISTINCT");
    }
    if let Some(p) = &ix.predicate {
        sql.push_str(&format!(" WHERE {}", guard::single_expression(p)?));
    }
    Ok(sql)
}

/// Empty target `target_q` before its copy starts over (its rows are loaded again), in a
/// transaction that may run with `session_replication_role = replica`: a Citus table's shards are
/// truncated too (see `citus::truncate`).
pub fn truncate(target_q: &str) -> Result<()> {
    let sql = format!("TRUNCATE {target_q}");
    let relid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[target_q.into()],
    )
    .map_err(catalog::spi_err)?;
    if relid.and_then(crate::citus::table).is_some() {
        crate::citus::prepare_writes().map_err(catalog::spi_err)?;
        return crate::citus::truncate(&sql).map_err(catalog::spi_err);
    }
    Spi::run(&sql).map_err(catalog::spi_err)
}

/// `"schema"."name"` quoted for the target.
pub fn qualified(schema: &str, name: &str) -> String {
    format!(
        "{}.{}",
        spi::quote_identifier(schema),
        spi::quote_identifier(name)
    )
}

/// Check or create target `schema.name` for source table `def` — as a hypertable when
/// `hypertable` says so, as a Citus table distributed by `distributed_by` when that is given (an
/// existing empty plain table is converted). Returns the key to build after the load when the
/// table was created here; a hypertable's key includes its time column, a distributed table's
/// its distribution column, as TimescaleDB and Citus require of every unique index.
pub fn prepare(
    def: &TableDef,
    schema: &str,
    name: &str,
    hypertable: Option<&HypertableSpec>,
    distributed_by: Option<&str>,
) -> Result<Option<Vec<String>>> {
    let target_q = qualified(schema, name);
    let relid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[target_q.as_str().into()],
    )
    .map_err(catalog::spi_err)?;
    if let Some(relid) = relid {
        let citus = crate::citus::table(relid);
        if let Some(t) = &citus {
            crate::citus::check_target(def, &target_q, t)?;
        }
        check_existing_target(def, &target_q)?;
        if let Some(spec) = hypertable {
            if crate::timescale::time_column(relid).is_none() {
                crate::timescale::create_hypertable(&target_q, spec)?;
            }
        }
        if let Some(column) = distributed_by {
            match &citus {
                None => {
                    crate::citus::key_for(def, &target_q, column)?;
                    crate::citus::distribute(&target_q, column)?;
                }
                Some(t) if t.distribution_column.as_deref() == Some(column) => {}
                Some(t) => return Err(crate::citus::already_citus(&target_q, t, column)),
            }
        }
        return Ok(None);
    }
    let mut key = def.key.clone();
    if let Some(column) = distributed_by {
        key = crate::citus::key_for(def, &target_q, column)?;
    }
    ensure_schema(schema)?;
    create_table(def, &target_q)?;
    if let Some(spec) = hypertable {
        crate::timescale::create_hypertable(&target_q, spec)?;
        if !key.is_empty() && !key.contains(&spec.time_column) {
            key.push(spec.time_column.clone());
        }
    }
    if let Some(column) = distributed_by {
        crate::citus::distribute(&target_q, column)?;
    }
    Ok((!key.is_empty()).then_some(key))
}
