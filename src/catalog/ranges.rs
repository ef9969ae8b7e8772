//! `livesync.copy_range`: the units of work of a table's initial copy (see `src/copy/plan.rs`).
//! A range is claimed by one copy worker at a time and marked done in the transaction that loaded
//! it, with the position of the snapshot it was read under, so after a failure only unfinished
//! ranges are loaded again — under the same snapshot while it lives, else under a newer one
//! (ranges of one table read under different snapshots are put right at the end, see
//! `src/copy/resume.rs`).

use pgrx::prelude::*;

use super::{first_value, spi_err};
use crate::copy::plan::PageRange;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Claimed {
    pub table_id: i32,
    pub range_no: i32,
    pub start_page: i64,
    pub end_page: Option<i64>,
    pub whole_table: bool,
    pub snapshot: String,
    pub binary: bool,
}

/// Whether a previous attempt loaded any range of the table (its rows must go first).
pub fn any_done(table_id: i32) -> Result<bool> {
    Ok(first_value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM livesync.copy_range WHERE table_id = $1 AND done)",
        &[table_id.into()],
    )?
    .unwrap_or(false))
}

/// Replace the table's ranges by a new plan under `snapshot` (at `lsn`).
pub fn replace(
    table_id: i32,
    ranges: &[PageRange],
    snapshot: &str,
    lsn: &str,
    binary: bool,
) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM livesync.copy_range WHERE table_id = $1",
        &[table_id.into()],
    )
    .map_err(spi_err)?;
    for (i, r) in ranges.iter().enumerate() {
        Spi::run_with_args(
            "INSERT INTO livesync.copy_range (table_id, range_no, start_page, end_page, snapshot, snapshot_lsn, binary_format)
             VALUES ($1, $2, $3, $4, $5, $6::pg_lsn, $7)",
            &[table_id.into(), (i as i32).into(), r.start.into(), r.end.into(), snapshot.into(), lsn.into(), binary.into()],
        )
        .map_err(spi_err)?;
    }
    Ok(())
}

/// Whether the table's copy can go on from where it is: some range loaded, some not.
pub fn partly_done(table_id: i32) -> Result<bool> {
    Ok(first_value::<bool>(
        "SELECT bool_or(done) AND NOT bool_and(done) FROM livesync.copy_range WHERE table_id = $1",
        &[table_id.into()],
    )?
    .unwrap_or(false))
}

/// The predicate of a range no live copy worker is loading.
const UNCLAIMED: &str = "(r.claimed_by IS NULL OR NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = r.claimed_by AND a.backend_type = 'livesync copy'))";

/// Move the ranges still to load, nobody alive loading them, that `filter` selects — a condition
/// on `r` (copy_range) and `t` (their sync_table), with its own parameters from `$3` on — to
/// `snapshot` (at `lsn`). Returns how many moved.
fn move_ranges(
    snapshot: &str,
    lsn: &str,
    filter: &str,
    args: Vec<pgrx::datum::DatumWithOid>,
) -> Result<i64> {
    let mut all: Vec<pgrx::datum::DatumWithOid> = vec![snapshot.into(), lsn.into()];
    all.extend(args);
    Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "UPDATE livesync.copy_range r SET snapshot = $1, snapshot_lsn = $2::pg_lsn, claimed_by = NULL
                  FROM livesync.sync_table t
                 WHERE t.id = r.table_id AND NOT r.done AND {UNCLAIMED} AND ({filter})"
            ),
            None,
            &all,
        )?;
        Ok(t.len() as i64)
    })
    .map_err(spi_err)
}

/// Move the table's ranges still to load (and not being loaded) to `snapshot` (at `lsn`): its
/// copy goes on under a newer snapshot, keeping what is loaded. Returns how many moved.
pub fn resume(table_id: i32, snapshot: &str, lsn: &str) -> Result<i64> {
    move_ranges(snapshot, lsn, "r.table_id = $3", vec![table_id.into()])
}

/// A snapshot grew old (`livesync.max_snapshot_age`): move the ranges still to load under it,
/// of tables that can resume under a newer one (`resume_key`), to `snapshot` (at `lsn`).
/// Returns how many moved; ranges being loaded keep their snapshot to their end.
pub fn rotate(connector_id: i32, old: &str, snapshot: &str, lsn: &str) -> Result<i64> {
    move_ranges(
        snapshot,
        lsn,
        "t.connector_id = $3 AND t.state = 'copying' AND t.resume_key IS NOT NULL AND r.snapshot = $4",
        vec![connector_id.into(), old.into()],
    )
}

/// Ranges of resumable tables left under a snapshot that is gone (not one of `live`: a copy
/// worker found it could not import it, after the table's other ranges had moved on), nobody
/// loading them: moved to `snapshot` (at `lsn`). Returns how many moved.
pub fn adopt_orphans(connector_id: i32, live: &[String], snapshot: &str, lsn: &str) -> Result<i64> {
    move_ranges(
        snapshot,
        lsn,
        "t.connector_id = $3 AND t.state = 'copying' AND t.resume_key IS NOT NULL AND r.snapshot <> ALL ($4)
         AND EXISTS (SELECT 1 FROM livesync.copy_range o WHERE o.table_id = r.table_id AND o.snapshot = ANY ($4))",
        vec![connector_id.into(), live.to_vec().into()],
    )
}

/// The positions of the snapshots the table's ranges were read under: (oldest, newest) as
/// `pg_lsn` text.
pub fn snapshot_span(table_id: i32) -> Result<Option<(String, String)>> {
    Spi::connect(|c| {
        let mut t = c.select(
            "SELECT min(snapshot_lsn)::text, max(snapshot_lsn)::text FROM livesync.copy_range WHERE table_id = $1 HAVING count(*) > 0",
            None,
            &[table_id.into()],
        )?;
        match t.next() {
            Some(r) => Ok(r.get::<String>(1)?.zip(r.get::<String>(2)?)),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// Every range of the table now reads as of `lsn` (its copy was put right to that position,
/// which changed its row count by `rows_delta`: counted on its last range, so that the ranges'
/// rows add up to the table's).
pub fn settle_at(table_id: i32, lsn: &str, rows_delta: i64) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.copy_range SET snapshot_lsn = $2::pg_lsn,
                rows = rows + CASE WHEN range_no = (SELECT max(range_no) FROM livesync.copy_range WHERE table_id = $1) THEN $3 ELSE 0 END
          WHERE table_id = $1",
        &[table_id.into(), lsn.into(), rows_delta.into()],
    )
    .map_err(spi_err)
}

/// Claim the next range of connector `connector_id` nobody (alive) is loading, biggest tables
/// first: the coordinator builds a table's key once its last range is in, and that build then
/// overlaps the loading of the smaller tables instead of trailing the whole batch. Commits on
/// its own so other copy workers see the claim.
pub fn claim_next(connector_id: i32, dead: &[String]) -> Result<Option<Claimed>> {
    Spi::connect_mut(|c| {
        let mut t = c.update(
            "UPDATE livesync.copy_range r SET claimed_by = pg_catalog.pg_backend_pid()
              WHERE (r.table_id, r.range_no) = (
                    SELECT cr.table_id, cr.range_no
                      FROM livesync.copy_range cr
                      JOIN livesync.sync_table t ON t.id = cr.table_id
                     WHERE t.connector_id = $1 AND t.state = 'copying' AND NOT cr.done
                       AND (cr.claimed_by IS NULL OR NOT EXISTS (
                              SELECT 1 FROM pg_catalog.pg_stat_activity a
                               WHERE a.pid = cr.claimed_by AND a.backend_type = 'livesync copy'))
                       AND cr.snapshot <> ALL ($2)
                     ORDER BY t.est_bytes DESC NULLS LAST, cr.table_id, cr.range_no
                     LIMIT 1
                       FOR UPDATE OF cr SKIP LOCKED)
             RETURNING r.table_id, r.range_no, r.start_page, r.end_page, r.snapshot, r.binary_format,
                       (SELECT count(*) FROM livesync.copy_range x WHERE x.table_id = r.table_id) = 1",
            Some(1),
            &[connector_id.into(), dead.to_vec().into()],
        )?;
        match t.next() {
            None => Ok(None),
            Some(row) => Ok(Some(Claimed {
                table_id: row.get::<i32>(1)?.unwrap_or_default(),
                range_no: row.get::<i32>(2)?.unwrap_or_default(),
                start_page: row.get::<i64>(3)?.unwrap_or_default(),
                end_page: row.get::<i64>(4)?,
                snapshot: row.get::<String>(5)?.unwrap_or_default(),
                binary: row.get::<bool>(6)?.unwrap_or(false),
                whole_table: row.get::<bool>(7)?.unwrap_or(true),
            })),
        }
    })
    .map_err(spi_err)
}

/// Give a claimed range back (its source went away mid-read): another copy worker, or this
/// one under a newer snapshot, loads it.
pub fn release(table_id: i32, range_no: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.copy_range SET claimed_by = NULL WHERE table_id = $1 AND range_no = $2 AND NOT done",
        &[table_id.into(), range_no.into()],
    )
    .map_err(spi_err)
}

/// Must run in the transaction that loaded the range. `file_node`: the source table's file node
/// under the range's snapshot (a rewrite between two snapshots moves every row).
pub fn mark_done(
    table_id: i32,
    range_no: i32,
    rows: i64,
    bytes: i64,
    file_node: Option<i64>,
) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.copy_range SET done = true, rows = $3, bytes = $4, finished_at = clock_timestamp(),
                file_node = $5::oid
          WHERE table_id = $1 AND range_no = $2",
        &[table_id.into(), range_no.into(), rows.into(), bytes.into(), file_node.into()],
    )
    .map_err(spi_err)
}

/// How many different source file nodes the table's ranges were read from.
pub fn file_nodes(table_id: i32) -> Result<i64> {
    Ok(first_value::<i64>(
        "SELECT count(DISTINCT file_node) FROM livesync.copy_range WHERE table_id = $1",
        &[table_id.into()],
    )?
    .unwrap_or(0))
}

/// Tables still `copying` whose ranges are all done: (table id, rows, bytes). `only_spooled`:
/// only tables copied beside the stream (whose finisher, a copy worker, may have died before
/// building the key).
pub fn finished_tables(connector_id: i32, only_spooled: bool) -> Result<Vec<(i32, i64, i64)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT t.id, sum(r.rows)::int8, sum(r.bytes)::int8
               FROM livesync.sync_table t JOIN livesync.copy_range r ON r.table_id = t.id
              WHERE t.connector_id = $1 AND t.state = 'copying' AND (t.spooled OR NOT $2)
              GROUP BY t.id HAVING bool_and(r.done)",
            None,
            &[connector_id.into(), only_spooled.into()],
        )?;
        t.map(|r| {
            Ok((
                r.get::<i32>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<i64>(3)?.unwrap_or(0),
            ))
        })
        .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

/// When every range of table `table_id` is loaded: its rows and bytes.
pub fn table_finished(table_id: i32) -> Result<Option<(i64, i64)>> {
    Spi::connect(|c| {
        let mut t = c.select(
            "SELECT sum(rows)::int8, sum(bytes)::int8 FROM livesync.copy_range WHERE table_id = $1 HAVING bool_and(done)",
            None,
            &[table_id.into()],
        )?;
        match t.next() {
            Some(r) => Ok(Some((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0)))),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// Per snapshot: ranges of tables still copying, and how many of them are still to load. A
/// table whose ranges are all loaded stays `copying` until its key is built.
pub fn remaining_by_snapshot(connector_id: i32) -> Result<Vec<(String, i64, i64)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT r.snapshot, count(*)::int8, count(*) FILTER (WHERE NOT r.done)::int8
               FROM livesync.copy_range r JOIN livesync.sync_table t ON t.id = r.table_id
              WHERE t.connector_id = $1 AND t.state = 'copying'
              GROUP BY r.snapshot",
            None,
            &[connector_id.into()],
        )?;
        t.map(|r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<i64>(3)?.unwrap_or(0),
            ))
        })
        .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

/// Ranges of the connector's copying tables that a copy worker could claim now: not loaded,
/// nobody alive loading them, and — when `live` is given — under one of those snapshots.
pub fn claimable(connector_id: i32, live: Option<&[String]>) -> Result<i64> {
    Ok(first_value::<i64>(
        &format!(
            "SELECT count(*) FROM livesync.copy_range r JOIN livesync.sync_table t ON t.id = r.table_id
              WHERE t.connector_id = $1 AND t.state = 'copying' AND NOT r.done
                AND ($2::text[] IS NULL OR r.snapshot = ANY ($2)) AND {UNCLAIMED}"
        ),
        &[connector_id.into(), live.map(|l| l.to_vec()).into()],
    )?
    .unwrap_or(0))
}
