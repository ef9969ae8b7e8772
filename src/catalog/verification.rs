//! `livesync.verification_run` and `livesync.verification_difference`: one row per
//! verification of a table (written by its verify worker, `src/verify/`), and the rows it found
//! different, named by key.

use pgrx::prelude::*;

use super::spi_err;
use crate::error::Result;

/// A row found different: `kind` is `missing on target`, `extra on target` or `different`.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub kind: &'static str,
    /// The key as jsonb text; None for a table without a key (the row's text says which).
    pub key: Option<String>,
    pub source_row: Option<String>,
    pub target_row: Option<String>,
}

/// What a finished verification found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub state: &'static str,
    pub method: String,
    pub ranges: i32,
    pub ranges_differing: i32,
    pub rows_source: i64,
    pub rows_target: i64,
    pub differences: i64,
    pub pause_ms: Option<f64>,
    pub attempts: i32,
    pub error: Option<String>,
    pub note: Option<String>,
    pub cut_lsn: Option<String>,
    /// The differing rows named (at most `verify::MAX_NAMED`; `differences` counts them all).
    pub named: Vec<Difference>,
}

pub fn start(
    id: i64,
    connector_id: i32,
    table_id: i32,
    source_table: &str,
    target_table: &str,
) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO livesync.verification_run (id, connector_id, table_id, source_table, target_table, state, started_at)
         VALUES ($1, $2, $3, $4, $5, 'running', pg_catalog.clock_timestamp())",
        &[id.into(), connector_id.into(), table_id.into(), source_table.into(), target_table.into()],
    )
    .map_err(spi_err)
}

pub fn finish(id: i64, r: &Summary) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.verification_run SET state = $2, method = $3, ranges = $4, ranges_differing = $5,
                rows_source = $6, rows_target = $7, differences = $8, pause_ms = $9, attempts = $10,
                error = $11, note = $12, cut_lsn = $13::pg_lsn, finished_at = pg_catalog.clock_timestamp()
          WHERE id = $1",
        &[
            id.into(),
            r.state.into(),
            r.method.as_str().into(),
            r.ranges.into(),
            r.ranges_differing.into(),
            r.rows_source.into(),
            r.rows_target.into(),
            r.differences.into(),
            r.pause_ms.into(),
            r.attempts.into(),
            r.error.as_deref().into(),
            r.note.as_deref().into(),
            r.cut_lsn.as_deref().into(),
        ],
    )
    .map_err(spi_err)
}

pub fn insert_differences(id: i64, diffs: &[Difference]) -> Result<()> {
    if diffs.is_empty() {
        return Ok(());
    }
    let kinds: Vec<String> = diffs.iter().map(|d| d.kind.to_string()).collect();
    let keys: Vec<Option<String>> = diffs.iter().map(|d| d.key.clone()).collect();
    let src: Vec<Option<String>> = diffs.iter().map(|d| d.source_row.clone()).collect();
    let tgt: Vec<Option<String>> = diffs.iter().map(|d| d.target_row.clone()).collect();
    Spi::run_with_args(
        "INSERT INTO livesync.verification_difference (verification_id, n, kind, key, source_row, target_row)
         SELECT $1, u.n, u.kind, u.key::jsonb, u.s, u.t
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(kind, key, s, t, n)",
        &[id.into(), kinds.into(), keys.into(), src.into(), tgt.into()],
    )
    .map_err(spi_err)
}
