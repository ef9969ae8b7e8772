//! TimescaleDB on the target: the one place that knows about hypertables.
//!
//! Why livesync cares: PostgreSQL's own logical replication writes rows straight into a
//! relation's heap, and a hypertable's rows belong in its chunks — written into the root they
//! vanish silently (TimescaleDB hides the root's own rows). livesync therefore loads hypertables
//! through the executor (see `copy::load`, route `Executor`), where TimescaleDB routes rows into
//! chunks, handles compressed chunks and records continuous-aggregate invalidations; and it
//! applies an UPDATE that moves a row to another chunk (its time changed) as DELETE + INSERT,
//! which TimescaleDB does not do by itself (see `apply`).
//!
//! Everything here is asked through TimescaleDB's public API (`timescaledb_information` views,
//! `create_hypertable`, `by_range`), found in whatever schema the extension was installed in.

use pgrx::prelude::*;

use crate::catalog::spi_err;
use crate::error::{LivesyncError, Result};

/// How a target table is made a hypertable: partitioned by `time_column` in chunks
/// `chunk_interval` wide (an interval literal, or an integer for integer time columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypertableSpec {
    pub time_column: String,
    pub chunk_interval: String,
    pub integer: bool,
}

/// The schema TimescaleDB is installed in on the target, None when it is not installed.
pub fn schema() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'timescaledb'",
    )
    .ok()
    .flatten()
}

pub fn installed() -> bool {
    schema().is_some()
}

/// The time column of hypertable `relid`; None when it is not a hypertable (or TimescaleDB is
/// not installed). This is also how livesync tells a hypertable from a plain table.
pub fn time_column(relid: pg_sys::Oid) -> Option<String> {
    if !installed() {
        return None;
    }
    Spi::get_one_with_args::<String>(
        "SELECT d.column_name::text
           FROM timescaledb_information.dimensions d
           JOIN pg_catalog.pg_namespace n ON n.nspname = d.hypertable_schema
           JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = d.hypertable_name
          WHERE c.oid = $1 AND d.dimension_type = 'Time'
          ORDER BY d.dimension_number
          LIMIT 1",
        &[relid.into()],
    )
    .ok()
    .flatten()
}

/// Bytes a chunk should hold: TimescaleDB advises that the chunks being written fit in a quarter
/// of memory, which is what `shared_buffers` is usually set to; between 128 MB and 4 GB.
pub fn chunk_bytes() -> i64 {
    let shared = Spi::get_one::<i64>(
        "SELECT setting::int8 * pg_catalog.pg_size_bytes(coalesce(nullif(unit, ''), '1'))
           FROM pg_catalog.pg_settings WHERE name = 'shared_buffers'",
    )
    .ok()
    .flatten()
    .unwrap_or(128 << 20);
    shared.clamp(128 << 20, 4 << 30)
}

/// Whether `hypertable => true` can work here: TimescaleDB installed, and no `FOR ALL TABLES`
/// publication on the target (TimescaleDB refuses to make a published table a hypertable).
pub fn check_available() -> Result<String> {
    let Some(schema) = schema() else {
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "hypertable => true needs the timescaledb extension on the target",
        )
        .detail("The extension \"timescaledb\" is not installed in this database.")
        .hint("Add timescaledb to shared_preload_libraries, restart, and run CREATE EXTENSION timescaledb; or leave out hypertable => true for a plain table."));
    };
    let all_tables: Vec<String> = Spi::connect(|c| {
        c.select(
            "SELECT pubname::text FROM pg_catalog.pg_publication WHERE puballtables ORDER BY 1",
            None,
            &[],
        )?
        .map(|r| r.get::<String>(1).map(|v| v.unwrap_or_default()))
        .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)?;
    if !all_tables.is_empty() {
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot create a hypertable while a FOR ALL TABLES publication exists on the target",
        )
        .detail(format!(
            "Publication {} publishes every table, and TimescaleDB refuses to make a published table a hypertable.",
            all_tables.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ")
        ))
        .hint("Drop the publication or recreate it FOR TABLE …, then add the table again."));
    }
    Ok(schema)
}

/// Make the (empty) target table `target_q` a hypertable. TimescaleDB's default time index is
/// not created: the key livesync builds after the load includes the time column.
pub fn create_hypertable(target_q: &str, spec: &HypertableSpec) -> Result<()> {
    let schema = check_available()?;
    let ts = spi::quote_identifier(&schema);
    let width = if spec.integer {
        let n: i64 = spec.chunk_interval.trim().parse().map_err(|_| {
            LivesyncError::invalid_parameter(format!(
                "chunk_interval \"{}\" is not an integer, but time column \"{}\" is",
                spec.chunk_interval, spec.time_column
            ))
            .hint("Give the chunk width in the column's own units, e.g. chunk_interval => '86400000' for milliseconds per day.")
        })?;
        format!("{n}::int8")
    } else {
        let valid = crate::error::in_subtransaction(|| {
            Spi::get_one_with_args::<bool>(
                "SELECT $1::interval > '0'::interval",
                &[spec.chunk_interval.as_str().into()],
            )
        });
        if !matches!(valid, Ok(Ok(Some(true)))) {
            return Err(LivesyncError::invalid_parameter(format!(
                "invalid chunk_interval \"{}\"",
                spec.chunk_interval
            ))
            .hint("Write a positive interval, e.g. chunk_interval => '1 day'."));
        }
        format!("{}::interval", spi::quote_literal(&spec.chunk_interval))
    };
    let sql = format!(
        "SELECT {ts}.create_hypertable({}::regclass, {ts}.by_range({}, {width}), create_default_indexes => false)",
        spi::quote_literal(target_q),
        spi::quote_literal(&spec.time_column),
    );
    crate::error::in_subtransaction(|| Spi::run(&sql)).map_err(|m| {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("could not make {target_q} a hypertable: {m}"),
        )
        .hint("Check the time column and chunk interval, or create the hypertable yourself and add the table again.")
    })?
    .map_err(spi_err)?;
    pgrx::notice!(
        "created {target_q} as a hypertable partitioned by \"{}\" in chunks of {}",
        spec.time_column,
        spec.chunk_interval
    );
    Ok(())
}
