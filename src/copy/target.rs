//! Target tables: checked, or created from the source's definition.
//!
//! Used by `add_table` (so mistakes are reported to the caller at once) and again by the copy,
//! inside the transaction that loads the table (for tables that appear in the connector's
//! publication without `add_table`, and so a target dropped meanwhile is recreated). A target
//! that exists must have every source column, with the same type, and be empty; one that does
//! not exist is created — schema included, with a NOTICE — with the source's columns, types,
//! NOT NULL and self-contained defaults, and its key is built after the load.

use pgrx::prelude::*;

use crate::catalog;
use crate::error::{LivesyncError, Result};
use crate::source::table::TableDef;
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
        t.map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())))
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
                    format!("column \"{}\" of source table {} does not exist in target table {target}", sc.name, def.qualified()),
                )
                .hint(format!("ALTER TABLE {target} ADD COLUMN {} {};", spi::quote_identifier(&sc.name), sc.type_name)))
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

fn type_exists(type_name: &str) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>("SELECT pg_catalog.to_regtype($1) IS NOT NULL", &[type_name.into()])
        .map_err(catalog::spi_err)?
        .unwrap_or(false))
}

fn ensure_schema(schema: &str) -> Result<()> {
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        &[schema.into()],
    )
    .map_err(catalog::spi_err)?
    .unwrap_or(false);
    if !exists {
        Spi::run(&format!("CREATE SCHEMA {}", spi::quote_identifier(schema))).map_err(catalog::spi_err)?;
        pgrx::notice!("created schema \"{schema}\" on the target");
    }
    Ok(())
}

/// Every column type must exist on the target before the table can be created there. Enums,
/// domains and composite types that are missing are created from the source's definition; a
/// type from an extension (or any other missing type) is an error saying what to install.
pub fn check_types_exist(def: &TableDef) -> Result<()> {
    for c in &def.columns {
        if type_exists(&c.type_name)? {
            continue;
        }
        if !c.type_ddl.is_empty() {
            for ty in &c.type_ddl {
                if type_exists(&ty.qualified)? {
                    continue;
                }
                ensure_schema(&ty.schema)?;
                Spi::run(&ty.create).map_err(|e| {
                    LivesyncError::new(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                        format!("could not create type {} of column \"{}\" on the target: {e}", ty.qualified, c.name),
                    )
                    .detail(format!("Statement: {}", ty.create))
                    .hint("Create the type on the target yourself (pg_dump --schema-only of the source has it), then add the table again.")
                })?;
                pgrx::notice!("created type {} on the target", ty.qualified);
            }
            if type_exists(&c.type_name)? {
                continue;
            }
        }
        let base = c.type_name.trim_end_matches("[]");
        let hint = match (&c.type_extension, c.type_kind.as_str()) {
            (Some(ext), _) => format!("CREATE EXTENSION {} on the target first.", spi::quote_identifier(ext)),
            _ => "Create the type on the target first (pg_dump --schema-only of the source has its definition).".to_string(),
        };
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("type \"{base}\" of column \"{}\" does not exist on the target", c.name),
        )
        .hint(hint));
    }
    Ok(())
}

/// `"schema"."name"` quoted for the target.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", spi::quote_identifier(schema), spi::quote_identifier(name))
}

/// Check or create target `schema.name` for source table `def` — as a hypertable when
/// `hypertable` says so (an existing empty plain table is converted). Returns the key to build
/// after the load when the table was created here; a hypertable's key includes its time column,
/// as TimescaleDB requires of every unique index.
pub fn prepare(def: &TableDef, schema: &str, name: &str, hypertable: Option<&HypertableSpec>) -> Result<Option<Vec<String>>> {
    let target_q = qualified(schema, name);
    let relid = Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::oid", &[target_q.as_str().into()])
        .map_err(catalog::spi_err)?;
    if let Some(relid) = relid {
        check_existing_target(def, &target_q)?;
        if let Some(spec) = hypertable {
            if crate::timescale::time_column(relid).is_none() {
                crate::timescale::create_hypertable(&target_q, spec)?;
            }
        }
        return Ok(None);
    }
    check_types_exist(def)?;
    ensure_schema(schema)?;
    Spi::run(&def.create_table_sql(&target_q)).map_err(catalog::spi_err)?;
    let mut key = def.key.clone();
    if let Some(spec) = hypertable {
        crate::timescale::create_hypertable(&target_q, spec)?;
        if !key.is_empty() && !key.contains(&spec.time_column) {
            key.push(spec.time_column.clone());
        }
    }
    Ok((!key.is_empty()).then_some(key))
}
