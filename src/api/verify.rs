//! `livesync.verify_table` and `livesync.verify_tables`: compare a synced table (or all of a
//! connector's) with its source at one consistent cut, while both keep running (`src/verify/`).
//! Each table is verified by a background worker of its own; these functions start it, wait for
//! it, and return what it recorded in `livesync.verification`.

use pgrx::prelude::*;

use super::tables::{connector_name, parse_qualified};
use crate::catalog::{self, tables};
use crate::error::{LivesyncError, OrRaise, Result};

type Row = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<String>,
);

/// The connector named `name` (not locked: a verification takes long and must not hold up the
/// connector's own catalog updates), or the only one when `name` is NULL.
fn connector(name: Option<&str>) -> Result<catalog::Connector> {
    let name = connector_name(
        name,
        "livesync.verify_table('schema.table', connector => 'name')",
    )?;
    catalog::connector_by_name(&name)?.ok_or_else(|| LivesyncError::connector_not_found(&name))
}

fn check_isolation() {
    // SAFETY: XactIsoLevel is a backend-local global; a plain read on the process's only thread.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "livesync.verify_table cannot run in a REPEATABLE READ or SERIALIZABLE transaction",
        )
        .detail("The verification runs in a background worker; its result would not be visible in this transaction's snapshot.")
        .hint("Call it outside a transaction block, or in a READ COMMITTED one.")
        .raise();
    }
}

/// Verify one table: start its worker, wait, read the result.
fn verify(t: &tables::SyncTable, by_text: bool) -> Row {
    let id = catalog::as_owner(|| {
        catalog::first_value_rw::<i64>(
            "SELECT pg_catalog.nextval('livesync.verification_run_id_seq')",
            &[],
        )
    })
    .or_raise()
    .unwrap_or_default();
    let Some(handle) = crate::verify::launch(id, t.id, by_text) else {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "could not start a verify worker: no free background worker slot",
        )
        .hint("Raise max_worker_processes (a restart), or try again when copies have finished.")
        .raise();
    };
    // A cancel here leaves the worker running to its end; its result lands in livesync.verification.
    let _ = handle.wait_for_shutdown();
    let r = Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT source_table, state, cut_lsn::text, method, ranges, ranges_differing, rows_source, rows_target, differences,
                    (extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at) * 1000)::float8,
                    pause_ms, error, note
               FROM livesync.verification_run WHERE id = $1",
            Some(1),
            &[id.into()],
        )?;
        match rows.next() {
            None => Ok(None),
            Some(r) => Ok(Some((
                id,
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?,
                r.get::<String>(4)?,
                r.get::<i32>(5)?,
                r.get::<i32>(6)?,
                r.get::<i64>(7)?,
                r.get::<i64>(8)?,
                r.get::<i64>(9)?,
                r.get::<f64>(10)?,
                r.get::<f64>(11)?,
                r.get::<String>(12)?,
                r.get::<String>(13)?,
            ))),
        }
    })
    .map_err(catalog::spi_err)
    .or_raise();
    r.unwrap_or_else(|| {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "the verify worker ended without recording a result",
        )
        .hint("See the server log for what stopped it.")
        .raise()
    })
}

/// Compare `source_table` on the source with its target table at one consistent cut; the rows
/// that differ are in `livesync.verification_differences`. Rows are compared by their columns'
/// own equality (typed hashes), or by their text with `by_text`.
#[pg_extern]
fn verify_table(
    source_table: &str,
    connector: default!(Option<&str>, "NULL"),
    by_text: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(verification_id, i64),
        name!(source_table, String),
        name!(state, String),
        name!(cut_lsn, Option<String>),
        name!(method, Option<String>),
        name!(ranges, Option<i32>),
        name!(ranges_differing, Option<i32>),
        name!(rows_source, Option<i64>),
        name!(rows_target, Option<i64>),
        name!(differences, Option<i64>),
        name!(duration_ms, Option<f64>),
        name!(pause_ms, Option<f64>),
        name!(error, Option<String>),
        name!(note, Option<String>),
    ),
> {
    check_isolation();
    let c = self::connector(connector).or_raise();
    let (schema, name) = parse_qualified(source_table, "public").or_raise();
    let t = tables::find(c.id, &schema, &name)
        .or_raise()
        .unwrap_or_else(|| {
            LivesyncError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "table \"{schema}.{name}\" is not synced by connector \"{}\"",
                    c.name
                ),
            )
            .hint("SELECT source_table FROM livesync.table_progress lists the synced tables.")
            .raise()
        });
    TableIterator::new(vec![verify(&t, by_text)])
}

/// [`verify_table`] for every table of the connector, one after the other.
#[pg_extern]
fn verify_tables(
    connector: default!(Option<&str>, "NULL"),
    by_text: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(verification_id, i64),
        name!(source_table, String),
        name!(state, String),
        name!(cut_lsn, Option<String>),
        name!(method, Option<String>),
        name!(ranges, Option<i32>),
        name!(ranges_differing, Option<i32>),
        name!(rows_source, Option<i64>),
        name!(rows_target, Option<i64>),
        name!(differences, Option<i64>),
        name!(duration_ms, Option<f64>),
        name!(pause_ms, Option<f64>),
        name!(error, Option<String>),
        name!(note, Option<String>),
    ),
> {
    check_isolation();
    let c = self::connector(connector).or_raise();
    let ids = Spi::connect(|cl| {
        cl.select("SELECT id FROM livesync.sync_table WHERE connector_id = $1 ORDER BY source_schema, source_name", None, &[c.id.into()])?
            .map(|r| r.get::<i32>(1).map(|v| v.unwrap_or_default()))
            .collect::<std::result::Result<Vec<i32>, _>>()
    })
    .map_err(catalog::spi_err)
    .or_raise();
    let rows: Vec<Row> = ids
        .into_iter()
        .filter_map(|id| tables::by_id(id).or_raise())
        .map(|t| verify(&t, by_text))
        .collect();
    TableIterator::new(rows)
}
