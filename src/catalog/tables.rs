//! `livesync.sync_table`: the tables a connector syncs, and the sync state machine.
//!
//! # Table sync states
//!
//! ```text
//!  add_table ──► pending ──► copying ──► loaded ──► copied
//!                 ▲  ▲          │  ▲
//!                 │  │          ▼  │ (restart: goes on under a new snapshot)
//!                 │  └──────── error   (retried with back-off: 2, 4, 8 … 300 s)
//!                 └── (restart of a table without key, slot created anew: starts over)
//! ```
//!
//! - `pending` — set by `add_table`. Durable. The connector worker picks up every pending table
//!   whose `next_attempt_at` has passed.
//! - `copying` — set by the connector worker in its own committed transaction as the table's
//!   batch starts (`snapshot_lsn`: the position of its first snapshot, from which the stream
//!   spools its changes; `spooled` is set). Each range commits its rows with its "done" mark and
//!   the position of the snapshot it was read under (`livesync.copy_range`). If a worker or the
//!   server dies mid-copy, the row stays `copying` and the aborted range's load is rolled back:
//!   the next batch keeps the loaded ranges and reads the others under a new snapshot — when
//!   the table has a `resume_key`; otherwise it truncates the target and starts over.
//! - `loaded` — set once every range is loaded, **in the same transaction that builds the
//!   key**, after the table was put right at one position if its ranges were read under
//!   different snapshots (`src/copy/resume.rs`, which moves `snapshot_lsn` there). A crash can
//!   never leave a table loaded without all its rows and its key.
//! - `copied` — set by the stream in the transaction that replays the table's spool. Changes to
//!   the table committed on the source after `snapshot_lsn` belong to the change stream
//!   (`src/apply/`), those before it are in the copy.
//! - `error` — the copy failed; `last_error`/`last_error_hint` say why and what to do (with
//!   `last_error_sqlstate`, `last_error_detail`, `last_error_context`). Other tables are not
//!   affected. Retried automatically after `next_attempt_at`, from scratch (the spool stops while
//!   in `error`). A change the stream cannot apply (a data error) also sets `error`, with
//!   `next_attempt_at = 'infinity'`: only `resync_table` brings the table back; so does a
//!   publication dropped on a PostgreSQL 18 source, which did not send the table's changes
//!   meanwhile (`copy::ensure_publications`).
//!
//! Not states of their own, but shown by `livesync.table_progress`: `catching up`/`ready` (a
//! `copied` table before/after the stream passed its `snapshot_lsn`) and `retrying` (a `copied`
//! table with `retry_reason` set: the stream rolled back after a transient error on it — lock
//! timeout, deadlock, … — and retries after a back-off; cleared by the stream's next commit).
//!
//! Publication membership is separate from the state: `published` says whether the worker has put
//! the source table into the connector's publication (`add_table` never touches the source; see
//! `copy::reconcile`), `livesync.unpublish` lists tables `remove_table` took out.

use pgrx::prelude::*;

use super::{as_owner, first_value, spi_err};
use crate::error::Result;
use crate::source::table::SourceHypertable;
use crate::timescale::HypertableSpec;

#[derive(Debug, Clone)]
pub struct SyncTable {
    pub id: i32,
    pub source_schema: String,
    pub source_name: String,
    pub target_schema: String,
    pub target_name: String,
    pub state: String,
    pub build_key: Option<Vec<String>>,
    pub build_key_primary: bool,
    /// Statements building the other indexes after the load (`indexes => 'all'`).
    pub build_indexes: Option<Vec<String>>,
    /// `snapshot_lsn` as a number (0 until the table's copy is planned).
    pub snapshot_lsn: u64,
    /// Set when the target is to be a hypertable (`add_table(hypertable => true)`).
    pub hypertable: Option<HypertableSpec>,
    /// Set when the source table is a hypertable (its changes arrive as its chunks').
    pub source_hypertable: Option<SourceHypertable>,
    /// The worker has put the source table into the connector's publication.
    pub published: bool,
    /// `add_table(append_only => true)`: only INSERT and TRUNCATE are replicated (the table is
    /// in the connector's append-only publication).
    pub append_only: bool,
    /// Copied while the stream runs: its changes from `snapshot_lsn` on are spooled until the
    /// stream replays them (state `loaded` → `copied`).
    pub spooled: bool,
    /// The source key by which a copy interrupted between snapshots is put right; None: the
    /// table's copy starts over after a restart (see `src/copy/resume.rs`).
    pub resume_key: Option<Vec<String>>,
    /// `add_table(distributed_by => …)`: the target is (re)created as a Citus table distributed
    /// by this column.
    pub distributed_by: Option<String>,
}

impl SyncTable {
    /// Whether a change to source relation `schema.name` is a change of this table: the table
    /// itself or, for a source hypertable, one of its chunks.
    pub fn receives(&self, schema: &str, name: &str) -> bool {
        (self.source_schema == schema && self.source_name == name)
            || self
                .source_hypertable
                .as_ref()
                .is_some_and(|h| h.is_chunk(schema, name))
    }
}

pub struct NewSyncTable<'a> {
    pub connector_id: i32,
    pub source_schema: &'a str,
    pub source_name: &'a str,
    pub target_schema: &'a str,
    pub target_name: &'a str,
    pub build_key: Option<Vec<String>>,
    pub build_key_primary: bool,
    pub build_indexes: Option<Vec<String>>,
    pub est_rows: i64,
    pub est_bytes: i64,
    pub hypertable: Option<HypertableSpec>,
    pub source_hypertable: Option<SourceHypertable>,
    /// Already in the connector's publication (found there by the worker).
    pub published: bool,
    pub append_only: bool,
    pub distributed_by: Option<String>,
}

const COLUMNS: &str = "id, source_schema, source_name, target_schema, target_name, state, build_key, \
                       build_key_primary, coalesce(snapshot_lsn - '0/0'::pg_lsn, 0)::int8, \
                       hypertable_time_column, hypertable_chunk_interval, hypertable_integer, \
                       source_chunk_schema, source_chunk_prefix, build_indexes, published, append_only, spooled, resume_key, distributed_by";

fn from_row(row: &pgrx::spi::SpiHeapTupleData) -> pgrx::spi::SpiResult<SyncTable> {
    Ok(SyncTable {
        id: row.get::<i32>(1)?.unwrap_or_default(),
        source_schema: row.get::<String>(2)?.unwrap_or_default(),
        source_name: row.get::<String>(3)?.unwrap_or_default(),
        target_schema: row.get::<String>(4)?.unwrap_or_default(),
        target_name: row.get::<String>(5)?.unwrap_or_default(),
        state: row.get::<String>(6)?.unwrap_or_default(),
        build_key: row.get::<Vec<String>>(7)?,
        build_key_primary: row.get::<bool>(8)?.unwrap_or(true),
        snapshot_lsn: row.get::<i64>(9)?.unwrap_or_default() as u64,
        hypertable: match (row.get::<String>(10)?, row.get::<String>(11)?) {
            (Some(time_column), Some(chunk_interval)) => Some(HypertableSpec {
                time_column,
                chunk_interval,
                integer: row.get::<bool>(12)?.unwrap_or(false),
            }),
            _ => None,
        },
        source_hypertable: match (row.get::<String>(13)?, row.get::<String>(14)?) {
            (Some(chunk_schema), Some(chunk_prefix)) => Some(SourceHypertable {
                chunk_schema,
                chunk_prefix,
                compressed: false,
            }),
            _ => None,
        },
        build_indexes: row.get::<Vec<String>>(15)?,
        published: row.get::<bool>(16)?.unwrap_or(false),
        append_only: row.get::<bool>(17)?.unwrap_or(false),
        spooled: row.get::<bool>(18)?.unwrap_or(false),
        resume_key: row.get::<Vec<String>>(19)?,
        distributed_by: row.get::<String>(20)?,
    })
}

fn select(where_sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<Vec<SyncTable>> {
    Spi::connect(|c| {
        let q = format!("SELECT {COLUMNS} FROM livesync.sync_table WHERE {where_sql} ORDER BY id");
        let t = c.select(&q, None, args)?;
        t.map(|row| from_row(&row))
            .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

pub fn find(
    connector_id: i32,
    source_schema: &str,
    source_name: &str,
) -> Result<Option<SyncTable>> {
    Ok(select(
        "connector_id = $1 AND source_schema = $2 AND source_name = $3",
        &[
            connector_id.into(),
            source_schema.into(),
            source_name.into(),
        ],
    )?
    .into_iter()
    .next())
}

/// The table syncing into target `schema.name`, if any (a target takes one source only).
pub fn find_by_target(target_schema: &str, target_name: &str) -> Result<Option<SyncTable>> {
    Ok(select(
        "target_schema = $1 AND target_name = $2",
        &[target_schema.into(), target_name.into()],
    )?
    .into_iter()
    .next())
}

pub fn insert(n: &NewSyncTable) -> Result<i32> {
    as_owner(|| {
        Ok(first_value::<i32>(
            "INSERT INTO livesync.sync_table
                 (connector_id, source_schema, source_name, target_schema, target_name,
                  build_key, build_key_primary, est_rows, est_bytes,
                  hypertable_time_column, hypertable_chunk_interval, hypertable_integer,
                  source_chunk_schema, source_chunk_prefix, build_indexes, published, append_only, distributed_by, added_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, false), $13, $14, $15, $16, $17, $18, clock_timestamp())
             RETURNING id",
            &[
                n.connector_id.into(),
                n.source_schema.into(),
                n.source_name.into(),
                n.target_schema.into(),
                n.target_name.into(),
                n.build_key.clone().into(),
                n.build_key_primary.into(),
                n.est_rows.into(),
                n.est_bytes.into(),
                n.hypertable.as_ref().map(|h| h.time_column.clone()).into(),
                n.hypertable.as_ref().map(|h| h.chunk_interval.clone()).into(),
                n.hypertable.as_ref().map(|h| h.integer).into(),
                n.source_hypertable.as_ref().map(|h| h.chunk_schema.clone()).into(),
                n.source_hypertable.as_ref().map(|h| h.chunk_prefix.clone()).into(),
                n.build_indexes.clone().into(),
                n.published.into(),
                n.append_only.into(),
                n.distributed_by.clone().into(),
            ],
        )?
        .expect("INSERT RETURNING gave no row"))
    })
}

/// The connector's publication (`main`) or append-only publication (`append`) was created anew:
/// its tables are to be published again.
pub fn mark_unpublished(connector_id: i32, main: bool, append: bool) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table SET published = false
          WHERE connector_id = $1 AND ((append_only AND $3) OR (NOT append_only AND $2))",
        &[connector_id.into(), main.into(), append.into()],
    )
    .map_err(spi_err)
}

/// The worker put the table into the connector's publication (or found it there).
pub fn mark_published(id: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table SET published = true WHERE id = $1",
        &[id.into()],
    )
    .map_err(spi_err)
}

/// `remove_table`: drop the table from the connector's publication once this commits.
pub fn add_unpublish(connector_id: i32, schema: &str, name: &str) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO livesync.unpublish VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[connector_id.into(), schema.into(), name.into()],
        )
        .map_err(spi_err)
    })
}

/// Tables to drop from the connector's publication.
pub fn unpublish_list(connector_id: i32) -> Result<Vec<(String, String)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT source_schema, source_name FROM livesync.unpublish WHERE connector_id = $1 ORDER BY 1, 2",
            None,
            &[connector_id.into()],
        )?;
        t.map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())))
            .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

pub fn delete_unpublish(connector_id: i32, schema: &str, name: &str) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM livesync.unpublish WHERE connector_id = $1 AND source_schema = $2 AND source_name = $3",
        &[connector_id.into(), schema.into(), name.into()],
    )
    .map_err(spi_err)
}

pub fn delete(id: i32) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "DELETE FROM livesync.sync_table WHERE id = $1",
            &[id.into()],
        )
        .map_err(spi_err)
    })
}

/// Tables of a connector waiting for their copy (including copies interrupted by a crash).
pub fn due_for_copy(connector_id: i32) -> Result<Vec<SyncTable>> {
    select(
        "connector_id = $1 AND state IN ('pending', 'copying', 'error')
         AND (next_attempt_at IS NULL OR next_attempt_at <= now())",
        &[connector_id.into()],
    )
}

/// [`due_for_copy`] but for tables being copied under one of `live` snapshots (a batch that is
/// still running beside the stream, in this process).
pub fn due_for_copy_excluding(connector_id: i32, live: &[String]) -> Result<Vec<SyncTable>> {
    select(
        "connector_id = $1 AND state IN ('pending', 'copying', 'error')
         AND (next_attempt_at IS NULL OR next_attempt_at <= now())
         AND NOT (state = 'copying' AND EXISTS (
               SELECT 1 FROM livesync.copy_range r
                WHERE r.table_id = livesync.sync_table.id AND r.snapshot = ANY ($2)))
         -- Loaded beside the stream but not finished yet (key build under way, or its copy worker
         -- died first): its ranges and spool are complete, a copy worker finishes it.
         AND NOT (state = 'copying' AND spooled
                  AND EXISTS (SELECT 1 FROM livesync.copy_range r WHERE r.table_id = livesync.sync_table.id)
                  AND NOT EXISTS (SELECT 1 FROM livesync.copy_range r
                                   WHERE r.table_id = livesync.sync_table.id AND NOT r.done))",
        &[connector_id.into(), live.to_vec().into()],
    )
}

/// Committed on its own before the load starts (see the state machine above).
pub fn mark_copying(id: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET state = 'copying', started_at = now(), finished_at = NULL, attempts = attempts + 1
          WHERE id = $1 AND state IN ('pending', 'copying', 'error')",
        &[id.into()],
    )
    .map_err(spi_err)
}

/// Record a table's copy plan: the key to build after the load (when livesync created the
/// target), the source's size estimates, the snapshot's LSN, and whether the stream runs during
/// the copy (`spooled`). A spool left by an earlier attempt goes: that attempt's snapshot is gone
/// and the new one contains those changes.
pub fn set_plan(
    id: i32,
    key: Option<&[String]>,
    primary: bool,
    est_rows: i64,
    est_bytes: i64,
    snapshot_lsn: &str,
    resume_key: Option<&[String]>,
) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM livesync.spooled_change WHERE table_id = $1",
        &[id.into()],
    )
    .map_err(spi_err)?;
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET build_key = coalesce($2, build_key), build_key_primary = CASE WHEN $2 IS NULL THEN build_key_primary ELSE $3 END,
                est_rows = $4, est_bytes = $5, snapshot_lsn = $6::pg_lsn, spooled = true, resume_key = $7
          WHERE id = $1",
        &[
            id.into(),
            key.map(|k| k.to_vec()).into(),
            primary.into(),
            est_rows.into(),
            est_bytes.into(),
            snapshot_lsn.into(),
            resume_key.map(|k| k.to_vec()).into(),
        ],
    )
    .map_err(spi_err)
}

/// The table's copy now reads as of `lsn` (every range was read under that snapshot, or was put
/// right to it): its spooled changes before `lsn` are in the copy and go — but for the RELATION
/// messages, which later changes of the same stream session are decoded with. Must run in the
/// transaction that makes the copy so.
pub fn settle_spool(id: i32, lsn: &str) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM livesync.spooled_change
          WHERE table_id = $1 AND lsn < $2::pg_lsn AND pg_catalog.get_byte(message, 0) <> 82 -- 'R'",
        &[id.into(), lsn.into()],
    )
    .map_err(spi_err)?;
    Spi::run_with_args(
        "UPDATE livesync.sync_table SET snapshot_lsn = $2::pg_lsn WHERE id = $1",
        &[id.into(), lsn.into()],
    )
    .map_err(spi_err)
}

/// The table's spooled messages committed before `lsn`, in stream order: (streamed, message).
pub fn spooled_before(id: i32, lsn: &str) -> Result<Vec<(bool, Vec<u8>)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT streamed, message FROM livesync.spooled_change WHERE table_id = $1 AND lsn < $2::pg_lsn ORDER BY seq",
            None,
            &[id.into(), lsn.into()],
        )?;
        t.map(|r| Ok((r.get::<bool>(1)?.unwrap_or(false), r.get::<Vec<u8>>(2)?.unwrap_or_default())))
            .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

/// A copy that cannot go on from where it is (its spool has a gap: the connector's slot was
/// recreated; or it cannot be put right by key): back to `pending`, so that the next batch
/// truncates what was loaded and copies the table again from a new snapshot.
pub fn restart_copy(id: i32, why: &str) -> Result<()> {
    pgrx::log!("livesync: the copy of table {id} starts over: {why}");
    Spi::run_with_args(
        "UPDATE livesync.sync_table SET state = 'pending', spooled = false WHERE id = $1 AND state IN ('copying', 'loaded')",
        &[id.into()],
    )
    .map_err(spi_err)
}

/// [`restart_copy`] for every table of the connector whose copy is under way.
pub fn restart_copies(connector_id: i32, why: &str) -> Result<()> {
    for t in select(
        "connector_id = $1 AND state IN ('copying', 'loaded')",
        &[connector_id.into()],
    )? {
        restart_copy(t.id, why)?;
    }
    Ok(())
}

/// Every range of a spooled table is loaded and its key built: the stream replays its spool next.
/// Must run in the transaction that built the key.
pub fn mark_loaded(id: i32, rows: i64, bytes: i64) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET state = 'loaded', rows_copied = $2, bytes_copied = $3, build_key = NULL, build_indexes = NULL
          WHERE id = $1 AND state = 'copying'",
        &[id.into(), rows.into(), bytes.into()],
    )
    .map_err(spi_err)
}

/// The connector's tables copied beside the stream whose load is done: their spools are next.
pub fn loaded_spooled(connector_id: i32) -> Result<Vec<i32>> {
    Ok(select(
        "connector_id = $1 AND state = 'loaded' AND spooled",
        &[connector_id.into()],
    )?
    .into_iter()
    .map(|t| t.id)
    .collect())
}

/// Spool one raw pgoutput message of table `id` (in the stream's apply transaction).
pub fn spool_change(id: i32, streamed: bool, lsn: u64, message: &[u8]) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO livesync.spooled_change (table_id, streamed, lsn, message) VALUES ($1, $2, $3::pg_lsn, $4)",
        &[id.into(), streamed.into(), crate::walrcv::format_lsn(lsn).into(), message.to_vec().into()],
    )
    .map_err(spi_err)
}

/// Up to `limit` spooled messages of table `id` after sequence number `after`, in stream order:
/// (seq, streamed, message).
pub fn spooled_changes(id: i32, after: i64, limit: i64) -> Result<Vec<(i64, bool, Vec<u8>)>> {
    Spi::connect(|c| {
        let t = c.select(
            // Changes before the table's snapshot are in its copy (a copy resumed under a newer
            // snapshot moves snapshot_lsn on); RELATION messages are kept for decoding.
            "SELECT seq, streamed, message FROM livesync.spooled_change
              WHERE table_id = $1 AND seq > $2
                AND (lsn >= (SELECT snapshot_lsn FROM livesync.sync_table WHERE id = $1) OR pg_catalog.get_byte(message, 0) = 82)
              ORDER BY seq LIMIT $3",
            None,
            &[id.into(), after.into(), limit.into()],
        )?;
        t.map(|r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<bool>(2)?.unwrap_or(false), r.get::<Vec<u8>>(3)?.unwrap_or_default())))
            .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

/// The replay of a spooled table is applied: it is copied (in that same transaction).
pub fn finish_spooled(id: i32) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM livesync.spooled_change WHERE table_id = $1",
        &[id.into()],
    )
    .map_err(spi_err)?;
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET state = 'copied', spooled = false, finished_at = clock_timestamp(), attempts = 0, next_attempt_at = NULL,
                last_error = NULL, last_error_hint = NULL, last_error_at = NULL,
                last_error_sqlstate = NULL, last_error_detail = NULL, last_error_context = NULL
          WHERE id = $1 AND state = 'loaded'",
        &[id.into()],
    )
    .map_err(spi_err)
}

/// How long ago the most recently added table still waiting for its copy was added (None when
/// no table waits).
pub fn newest_pending_age(connector_id: i32) -> Result<Option<std::time::Duration>> {
    let secs = first_value::<f64>(
        "SELECT extract(epoch FROM clock_timestamp() - max(added_at))::float8
           FROM livesync.sync_table WHERE connector_id = $1 AND state = 'pending'",
        &[connector_id.into()],
    )?;
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}

pub fn by_id(id: i32) -> Result<Option<SyncTable>> {
    Ok(select("id = $1", &[id.into()])?.into_iter().next())
}

pub fn mark_error(id: i32, message: &str, hint: Option<&str>) -> Result<()> {
    mark_copy_error(
        id,
        &ErrorRecord {
            message,
            hint,
            ..Default::default()
        },
    )
}

/// A copy failed: `error`, retried after a back-off (2, 4, 8 … 300 s).
pub fn mark_copy_error(id: i32, e: &ErrorRecord) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET state = 'error', last_error = $2, last_error_hint = $3, last_error_at = now(),
                last_error_sqlstate = $4, last_error_detail = $5, last_error_context = $6,
                next_attempt_at = now() + least(300, 2 ^ greatest(attempts, 1)) * interval '1 second'
          WHERE id = $1",
        &[id.into(), e.message.into(), e.hint.into(), e.sqlstate.into(), e.detail.into(), e.context.into()],
    )
    .map_err(spi_err)
}

/// How many of a connector's tables are copied: their changes after their snapshot can only come
/// from the connector's permanent slot.
pub fn count_copied(connector_id: i32) -> Result<i64> {
    Ok(first_value::<i64>(
        "SELECT count(*) FROM livesync.sync_table WHERE connector_id = $1 AND state = 'copied'",
        &[connector_id.into()],
    )?
    .unwrap_or(0))
}

/// Every table of a connector (what the change stream gates on).
pub fn stream_tables(connector_id: i32) -> Result<Vec<SyncTable>> {
    select("connector_id = $1", &[connector_id.into()])
}

/// Add to a table's change counters (in the apply transaction).
pub fn add_change_counts(id: i32, applied: i64, skipped: i64, missing: i64) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET changes_applied = changes_applied + $2, changes_skipped = changes_skipped + $3,
                changes_missing = changes_missing + $4
          WHERE id = $1",
        &[id.into(), applied.into(), skipped.into(), missing.into()],
    )
    .map_err(spi_err)
}

/// Back to `pending`: `resync_table`.
pub fn mark_pending(id: i32) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE livesync.sync_table
                SET state = 'pending', snapshot_lsn = NULL, rows_copied = NULL, bytes_copied = NULL,
                    started_at = NULL, finished_at = NULL, attempts = 0, next_attempt_at = NULL,
                    last_error = NULL, last_error_hint = NULL, last_error_at = NULL,
                    last_error_sqlstate = NULL, last_error_detail = NULL, last_error_context = NULL,
                    retry_reason = NULL, retry_since = NULL
              WHERE id = $1",
            &[id.into()],
        )
        .map_err(spi_err)
    })
}

/// What is stored about an error: SQLSTATE, message, DETAIL, HINT and where it happened.
#[derive(Debug, Clone, Default)]
pub struct ErrorRecord<'a> {
    pub sqlstate: Option<&'a str>,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
    pub context: Option<&'a str>,
}

/// The stream hit a change it cannot apply (a data error): the table goes to `error` until
/// `resync_table` (no automatic retry: the cause is on the user's side).
pub fn mark_stream_error(id: i32, e: &ErrorRecord) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET state = 'error', last_error = $2, last_error_hint = $3, last_error_at = now(),
                last_error_sqlstate = $4, last_error_detail = $5, last_error_context = $6,
                retry_reason = NULL, retry_since = NULL, next_attempt_at = 'infinity'
          WHERE id = $1",
        &[
            id.into(),
            e.message.into(),
            e.hint.into(),
            e.sqlstate.into(),
            e.detail.into(),
            e.context.into(),
        ],
    )
    .map_err(spi_err)
}

/// The stream hit a transient error on this table (lock timeout, deadlock, …): it rolled back
/// and will retry; the table stays synced and shows `retrying` with the reason.
pub fn mark_retrying(id: i32, reason: &str) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table
            SET retry_reason = $2, retry_since = coalesce(retry_since, now())
          WHERE id = $1",
        &[id.into(), reason.into()],
    )
    .map_err(spi_err)
}

/// The stream committed again: no table of the connector is waiting any more.
pub fn clear_retrying(connector_id: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.sync_table SET retry_reason = NULL, retry_since = NULL
          WHERE connector_id = $1 AND retry_reason IS NOT NULL",
        &[connector_id.into()],
    )
    .map_err(spi_err)
}
