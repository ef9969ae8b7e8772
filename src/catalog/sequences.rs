//! `livesync.sync_sequence`: the sequences a connector keeps in step with the source — those
//! owned by its synced tables' columns (`table_id` set; they go with the table) and those added
//! with `livesync.add_sequence` — and what the last sync saw on each side.

use pgrx::prelude::*;

use super::{as_owner, first_value_rw, spi_err};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct SyncSequence {
    pub id: i32,
    pub table_id: Option<i32>,
    pub source_schema: String,
    pub source_name: String,
    pub target_schema: String,
    pub target_name: String,
}

fn select(where_sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<Vec<SyncSequence>> {
    Spi::connect(|c| {
        let q = format!(
            "SELECT q.id, q.table_id, q.source_schema, q.source_name, q.target_schema, q.target_name
               FROM livesync.sync_sequence q WHERE {where_sql} ORDER BY q.id"
        );
        let t = c.select(&q, None, args)?;
        t.map(|r| {
            Ok(SyncSequence {
                id: r.get::<i32>(1)?.unwrap_or_default(),
                table_id: r.get::<i32>(2)?,
                source_schema: r.get::<String>(3)?.unwrap_or_default(),
                source_name: r.get::<String>(4)?.unwrap_or_default(),
                target_schema: r.get::<String>(5)?.unwrap_or_default(),
                target_name: r.get::<String>(6)?.unwrap_or_default(),
            })
        })
        .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

/// The connector's sequence `schema.name` of the source, if it keeps it in step.
pub fn find(connector_id: i32, schema: &str, name: &str) -> Result<Option<SyncSequence>> {
    Ok(select(
        "q.connector_id = $1 AND q.source_schema = $2 AND q.source_name = $3",
        &[connector_id.into(), schema.into(), name.into()],
    )?
    .into_iter()
    .next())
}

/// The sequence that keeps target sequence `schema.name` in step, of any connector.
pub fn find_by_target(schema: &str, name: &str) -> Result<Option<SyncSequence>> {
    Ok(select(
        "q.target_schema = $1 AND q.target_name = $2",
        &[schema.into(), name.into()],
    )?
    .into_iter()
    .next())
}

/// The connector's sequences to bring up to the source now: those added by hand, and those of
/// tables whose copy is done (a table still copying gets its sequences set as it finishes).
pub fn due(connector_id: i32) -> Result<Vec<SyncSequence>> {
    select(
        "q.connector_id = $1 AND (q.table_id IS NULL OR EXISTS (
             SELECT 1 FROM livesync.sync_table t WHERE t.id = q.table_id AND t.state = 'copied'))",
        &[connector_id.into()],
    )
}

pub fn insert(
    connector_id: i32,
    table_id: Option<i32>,
    source: (&str, &str),
    target: (&str, &str),
) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO livesync.sync_sequence (connector_id, table_id, source_schema, source_name, target_schema, target_name)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (connector_id, source_schema, source_name) DO NOTHING",
            &[connector_id.into(), table_id.into(), source.0.into(), source.1.into(), target.0.into(), target.1.into()],
        )
        .map_err(spi_err)
    })
}

pub fn delete(id: i32) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "DELETE FROM livesync.sync_sequence WHERE id = $1",
            &[id.into()],
        )
        .map_err(spi_err)
    })
}

/// What a sync saw: the next values on each side (after it), or why it could not.
pub fn record(id: i32, outcome: &std::result::Result<(i64, i64), String>) -> Result<()> {
    as_owner(|| {
        match outcome {
            Ok((source_next, target_next)) => first_value_rw::<i32>(
                "UPDATE livesync.sync_sequence SET source_next = $2, target_next = $3, synced_at = now(),
                        last_error = NULL, last_error_at = NULL
                  WHERE id = $1 RETURNING id",
                &[id.into(), (*source_next).into(), (*target_next).into()],
            ),
            Err(e) => first_value_rw::<i32>(
                "UPDATE livesync.sync_sequence SET last_error = $2, last_error_at = now() WHERE id = $1 RETURNING id",
                &[id.into(), e.as_str().into()],
            ),
        }
        .map(|_| ())
    })
}
