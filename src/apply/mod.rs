//! Applying decoded changes to the target, through the executor.
//!
//! Every change becomes SQL run with SPI in the connector worker's backend, with
//! `session_replication_role = replica`: going through the executor is what routes rows into
//! partitions (and TimescaleDB chunks) and fires planner/executor hooks, which writing heap tuples
//! directly would bypass. Statements are prepared once per (relation, kind, column set, rows) and
//! reused.
//!
//! # Batching
//! Within a target transaction, changes are collected per table ([`Pending`]): INSERTs into one
//! `COPY FROM`, UPDATEs that keep the key coalesced by key into `UPDATE … FROM (VALUES …)`,
//! DELETEs into `DELETE … USING (VALUES …)`. This reorders changes *across* tables, which is safe
//! because they commute here (no user triggers or foreign keys fire under the replica role, and
//! nothing else sees the transaction before it commits), but never *within* a table: a change of
//! another kind, a key change, an UPDATE under REPLICA IDENTITY FULL or on a hypertable first
//! applies the table's batch. Coalescing keeps only a row's last version, which is the only one
//! the target transaction ever exposes.
//!
//! # Atomicity and progress
//! A source transaction is applied inside one target transaction; several consecutive source
//! transactions may share a target transaction, but a target commit always ends on a source
//! commit. The position reached (the source commit's end LSN) is recorded with the target commit
//! itself through the replication origin (`replorigin_session_origin_lsn`), so after any crash
//! the stream restarts exactly after the last committed source transaction: no change lost, none
//! applied twice. The slot's flush position sent to the source only covers commits that are
//! durable on the target (`XLogFlush` first).
//!
//! # Streamed transactions
//! From PostgreSQL 14+ sources with `livesync.stream_in_progress` on, transactions larger than the
//! source's `logical_decoding_work_mem` arrive in blocks while they run; `spool` keeps each on disk until its `Stream Commit`, which
//! replays it here as one ordinary source transaction (`Begin` at its commit LSN … `Commit`).
//!
//! # Hand-off with the initial copy
//! Every copy runs **beside the stream** (the connector's permanent slot is created when its
//! worker starts): the worker exports a snapshot from a temporary slot (consistent point `L`),
//! copy workers load the table under it, and the stream never stops. Table states
//! (`src/catalog/tables.rs`) and what the stream does with a change of table T in a source
//! transaction committing at `final_lsn`:
//! - `pending`: skipped — T's copy reads a snapshot taken later, at the source's current WAL
//!   position, which contains every commit the stream has already decoded;
//! - `copying`/`loaded`: skipped when `final_lsn < L` (in the snapshot), else **spooled**: the
//!   raw message goes into `livesync.spooled_change`, with `final_lsn`, in the stream's own apply
//!   transaction, so it commits with the replication origin's progress (exactly once across
//!   crashes) and the slot keeps advancing;
//! - `loaded` → `copied`: once the last range is loaded and the key built (by a copy worker, so
//!   the stream does not wait for it), the stream replays T's spool in order — the changes at or
//!   after T's `snapshot_lsn` — in one target transaction that also marks T copied and empties
//!   the spool;
//! - `copied`: skipped when `final_lsn < L` (in the copy), applied when `final_lsn >= L`;
//! - `error`: skipped and counted.
//!
//! Stream ahead of copy (T added while streaming, stream at S):
//! ```text
//!   source WAL:  ──c1(T)──c2(T)──S──L=snapshot of T──c3(T)────c4(T)──────────c5(T)──▶
//!   stream:      c1,c2 skipped (T pending; in the snapshot)
//!                c3,c4 spooled (>= L) while T is copied; T loaded → spool replayed: c3,c4
//!                c5 applied (T copied)
//! ```
//! Copy ahead of stream (stream behind after a restart):
//! ```text
//!   source WAL:  ──P=stream position──c1(T)──L=snapshot of T──c2(T)──▶
//!   stream:      c1 skipped (< L, in the copy), c2 spooled or applied
//! ```
//! A crash loses the exported snapshot, not the spool nor the loaded ranges: the copy goes on
//! under a new snapshot `L2`, spooling still from `L`; once loaded, the table is put right at one
//! position `Lf ≥ L2` by key, from the spool (`src/copy/resume.rs`), which moves `snapshot_lsn`
//! to `Lf` — the spool before it is in the copy.

//! # Errors, per table
//! A change that cannot be applied aborts the target transaction (nothing half-applied); its table
//! is put in `error` with the reason and a hint, and the worker restarts the stream from the
//! origin's position, now skipping that table: the other tables' changes of the aborted batch
//! are applied again, exactly once. `livesync.resync_table()` re-copies the table once fixed.

use std::collections::{HashMap, HashSet};

pub mod origin;
pub mod relmap;
pub mod spool;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;

use crate::catalog::tables::{self, SyncTable};
use crate::copy::load::Route;
use crate::source::pgoutput::{ColumnValue, Decoder, LogicalMessage, OldTuple, TupleData};
use crate::source::quote_ident;
use relmap::{BatchShape, Mapping, RemoteColumn, RemoteRelation, TargetColumn};

/// A change that cannot be applied: which table, why, and what to do.
#[derive(Debug, Clone, Default)]
pub struct ApplyError {
    pub table_id: i32,
    /// SQLSTATE, e.g. `42703`.
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// What the stream does with a change of a table right now (see the hand-off above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Apply,
    /// In the table's copy (or in the one to come).
    Skip,
    /// Skipped and counted: the table is in `error`.
    SkipCounted,
    /// After the snapshot of a table copied while the stream runs: kept until its replay.
    Spool,
}

fn verdict(t: &SyncTable, final_lsn: u64) -> Verdict {
    match t.state.as_str() {
        "copied" if final_lsn >= t.snapshot_lsn => Verdict::Apply,
        "copied" => Verdict::Skip,
        "error" => Verdict::SkipCounted,
        "copying" | "loaded" if t.spooled && t.snapshot_lsn != 0 && final_lsn >= t.snapshot_lsn => {
            Verdict::Spool
        }
        _ => Verdict::Skip, // pending / copying: the copy (to come) contains it
    }
}

#[derive(Clone)]
struct MappedRelation {
    remote: RemoteRelation,
    /// Target table and column mapping, once looked up (None: the relation is not synced).
    target: Option<(String, Mapping)>,
    /// The target table's OID, once looked up (batched inserts go through COPY FROM).
    target_oid: Option<pg_sys::Oid>,
    /// How batched inserts reach the target (the executor for hypertables and Citus tables).
    route: Route,
    /// The column that says where a row lives — a target hypertable's time column (its chunk),
    /// a Citus table's distribution column (its shard): UPDATEs that change it move the row.
    moving_column: Option<String>,
    /// The target is a Citus table: the transaction writing it prepares its shards' sessions
    /// first (`citus::prepare_writes`).
    citus: bool,
    /// The target has a unique index other than one on the key's columns: UPDATEs are then
    /// applied one by one, in order. Coalescing them by key (or applying several in one
    /// statement) could make rows that swap values of that unique column conflict midway.
    other_unique: bool,
}

/// Changes of one table waiting to be applied together. Changes to *different* tables commute
/// on the target (`session_replication_role = replica` silences triggers and foreign keys), so
/// each table keeps its own batch while other tables' changes go by; changes to the *same* table
/// keep their order: a change of another kind flushes the table's batch first. Everything is
/// flushed before a target commit, a TRUNCATE, a RELATION message, and beyond [`MAX_PENDING_BYTES`].
enum Pending {
    /// INSERTs in COPY text format, loaded with one `COPY FROM` (or `INSERT … SELECT` for
    /// hypertables): multi-insert buffers, partition routing, one executor start-up per batch.
    Insert {
        present: Vec<bool>,
        columns: Vec<String>,
        data: Vec<u8>,
        rows: usize,
    },
    /// UPDATEs of rows whose key did not change, coalesced by key — within one target
    /// transaction only the last version of a row is ever visible — and applied as
    /// `UPDATE … FROM (VALUES …)` statements of up to 64 rows.
    Update {
        present: Vec<bool>,
        shape: BatchShape,
        rows: Vec<(Vec<Value>, Vec<Value>)>,
        index: HashMap<Vec<Value>, usize>,
    },
    /// DELETEs by key, as `DELETE … USING (VALUES …)`.
    Delete {
        shape: BatchShape,
        keys: Vec<Vec<Value>>,
        seen: HashSet<Vec<Value>>,
    },
}

struct TableBatch {
    table_id: i32,
    /// The remote relation the batch's rows came from (its mapping writes the SQL).
    rel_id: u32,
    pending: Pending,
    bytes: usize,
}

/// Rows per batched UPDATE/DELETE statement, largest first (a flush uses as few statements as
/// it can; each size is prepared once).
const ROWS_PER_STATEMENT: [usize; 3] = [64, 8, 1];
/// Bound on what all pending batches hold.
const MAX_PENDING_BYTES: usize = 32 << 20;

/// A column value from the stream: its text form in the target database's encoding (the
/// replication connection asks the source for that encoding), or NULL. Kept as bytes — a
/// LATIN1 target's text is not UTF-8 — and handed to statements as `text` datums as they are.
type Value = Option<Vec<u8>>;

fn approx_bytes(values: &[Value]) -> usize {
    values
        .iter()
        .map(|v| v.as_ref().map_or(1, |s| s.len() + 1))
        .sum::<usize>()
        + 16
}

/// Apply a table's batch once it holds this much data. Smaller batches interleave reading and
/// applying more finely, so the source's walsender is not left waiting on a full socket while a
/// batch is applied: one 2,000,000-row transaction took 13.2–14.0 s with 8 MB batches and
/// 12.7–12.9 s with 1 MB (native 12.6–13.9 s); 1000-row transactions were unchanged.
const INSERT_BATCH_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Counts {
    applied: i64,
    skipped: i64,
    /// UPDATEs and DELETEs that found no row on the target: the target diverged (rows changed
    /// behind livesync's back), shown in `table_progress.changes_missing`.
    missing: i64,
}

pub struct Applier {
    connector_id: i32,
    relations: HashMap<u32, MappedRelation>,
    tables: Vec<SyncTable>,
    statements: HashMap<String, OwnedPreparedStatement>,
    counts: HashMap<i32, Counts>,
    /// Counts of committed target transactions not yet written to the catalog.
    committed_counts: HashMap<i32, Counts>,
    /// Inside a source transaction (between Begin and Commit).
    in_source_txn: bool,
    final_lsn: u64,
    /// A target transaction is open.
    pub txn_open: bool,
    txn_started: std::time::Instant,
    /// Changes applied in the open target transaction.
    pub changes_in_txn: usize,
    /// End LSN and commit time of the last source commit applied in the open transaction.
    pending_end: Option<(u64, i64)>,
    /// The table whose change is being applied (for error attribution).
    pub current_table: Option<i32>,
    pub reload_tables: bool,
    batches: Vec<TableBatch>,
    pending_bytes: usize,
    /// The connector's option: add columns the source added (nullable) to the target.
    auto_add_columns: bool,
    /// User-defined types the stream described (TYPE messages): OID → (schema, name).
    remote_types: HashMap<u32, (String, String)>,
    /// The last RELATION message of each remote relation as received (and whether it came in a
    /// streamed transaction), to spool ahead of a spooled table's changes.
    relation_raw: HashMap<u32, (Vec<u8>, bool)>,
    /// (table, relation) pairs whose RELATION message is in the table's spool for this session.
    spooled_relations: HashSet<(i32, u32)>,
    /// Replaying this table's spool: its changes apply, every other table's are skipped.
    replaying: Option<i32>,
    /// The open target transaction has prepared Citus's shard sessions for writing.
    citus_prepared: bool,
}

impl Applier {
    pub fn new(connector_id: i32, auto_add_columns: bool) -> Self {
        Applier {
            connector_id,
            relations: Default::default(),
            tables: Vec::new(),
            statements: Default::default(),
            counts: Default::default(),
            committed_counts: Default::default(),
            in_source_txn: false,
            final_lsn: 0,
            txn_open: false,
            txn_started: std::time::Instant::now(),
            changes_in_txn: 0,
            pending_end: None,
            current_table: None,
            reload_tables: true,
            batches: Vec::new(),
            pending_bytes: 0,
            auto_add_columns,
            remote_types: HashMap::new(),
            relation_raw: HashMap::new(),
            spooled_relations: HashSet::new(),
            replaying: None,
            citus_prepared: false,
        }
    }

    pub fn connector_id(&self) -> i32 {
        self.connector_id
    }

    /// How long the open target transaction has been open.
    pub fn txn_age(&self) -> std::time::Duration {
        self.txn_started.elapsed()
    }

    pub fn in_source_txn(&self) -> bool {
        self.in_source_txn
    }

    fn begin_target_txn(&mut self) {
        if self.txn_open {
            return;
        }
        // SAFETY: txn_open is false, so no transaction is open (the worker runs between transactions); the one
        // started here is ended by commit() or the stream's abort(), as txn_open records.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        self.txn_open = true;
        self.txn_started = std::time::Instant::now();
        self.changes_in_txn = 0;
        self.citus_prepared = false;
        if self.reload_tables {
            // A failed read must not look like "no table is synced": their changes would be
            // skipped while the origin advances past them. Raise instead (the stream restarts).
            self.tables = tables::stream_tables(self.connector_id).unwrap_or_else(|e| e.raise());
            for r in self.relations.values_mut() {
                r.target = None;
            }
            self.reload_tables = false;
        }
    }

    /// Commit the open target transaction (always at a source commit boundary). Returns the
    /// source end LSN and commit time it recorded, and the local commit's end LSN.
    pub fn commit(&mut self) -> Option<(u64, i64, u64)> {
        if !self.txn_open {
            return None;
        }
        debug_assert!(!self.in_source_txn);
        debug_assert!(self.batches.is_empty(), "flush() before commit()");
        // The counters are statistics: kept in memory and written by save_counts() about once
        // a second (a crash may lose that second's counts, never a change).
        for (id, c) in self.counts.drain() {
            let total = self.committed_counts.entry(id).or_default();
            total.applied += c.applied;
            total.skipped += c.skipped;
            total.missing += c.missing;
        }
        let pending = self.pending_end.take();
        if let Some((end, ts)) = pending {
            // Crash-sensitive: the position must be set before the commit that persists it.
            origin::set_commit_position(end, ts);
        }
        // SAFETY: the transaction begun in begin_target_txn is open (txn_open checked above) with its pushed
        // snapshot, popped here before the commit as in worker::in_transaction.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        self.txn_open = false;
        self.changes_in_txn = 0;
        // SAFETY: XactLastCommitEnd is a backend-local global that CommitTransactionCommand just set to this
        // commit's end; a plain read on the process's only thread.
        pending.map(|(end, ts)| (end, ts, unsafe { pg_sys::XactLastCommitEnd }))
    }

    /// Write the change counters of committed transactions to `livesync.sync_table` (in the
    /// caller's transaction, outside any apply transaction).
    pub fn save_counts(&mut self) -> crate::error::Result<()> {
        for (id, c) in self.committed_counts.drain() {
            tables::add_change_counts(id, c.applied, c.skipped, c.missing)?;
        }
        Ok(())
    }

    /// Where the stream was when an error struck, for the stored error's context: the table and
    /// the source transaction being applied.
    pub fn error_context(&self) -> Option<String> {
        let t = self
            .current_table
            .and_then(|id| self.tables.iter().find(|t| t.id == id))?;
        let mut s = format!(
            "applying changes of source table {}.{} to {}.{}",
            quote_ident(&t.source_schema),
            quote_ident(&t.source_name),
            quote_ident(&t.target_schema),
            quote_ident(&t.target_name)
        );
        if self.in_source_txn && self.final_lsn != 0 {
            s.push_str(&format!(
                " in the source transaction committed at {}",
                crate::source::pgoutput::Lsn(self.final_lsn)
            ));
        }
        Some(s)
    }

    /// After an error: the transaction was aborted by the caller; forget its state.
    pub fn reset_after_abort(&mut self) {
        self.txn_open = false;
        self.in_source_txn = false;
        self.changes_in_txn = 0;
        self.pending_end = None;
        self.counts.clear();
        self.statements.clear();
        self.current_table = None;
        self.reload_tables = true;
        self.batches.clear();
        self.pending_bytes = 0;
        self.replaying = None;
        self.citus_prepared = false;
        // A rolled-back transaction may have held spooled RELATION messages.
        self.spooled_relations.clear();
    }

    /// Apply every pending batch. PostgreSQL errors propagate as panics, attributed to
    /// `current_table`.
    pub fn flush(&mut self) {
        for b in std::mem::take(&mut self.batches) {
            self.apply_batch(b);
        }
        self.pending_bytes = 0;
    }

    /// Apply table `table_id`'s pending batch, if any.
    fn flush_table(&mut self, table_id: i32) {
        if let Some(pos) = self.batches.iter().position(|b| b.table_id == table_id) {
            let b = self.batches.remove(pos);
            self.pending_bytes = self.pending_bytes.saturating_sub(b.bytes);
            self.apply_batch(b);
        }
    }

    /// The pending batch of `table_id` if it holds rows of `rel_id` of the same kind as `like`
    /// (and the same columns); any other batch of the table is applied first, since changes to
    /// one table keep their order.
    fn batch_for(&mut self, table_id: i32, rel_id: u32, like: &Pending) -> Option<&mut TableBatch> {
        let pos = self.batches.iter().position(|b| b.table_id == table_id)?;
        let b = &self.batches[pos];
        let same = b.rel_id == rel_id
            && match (&b.pending, like) {
                (Pending::Insert { present: a, .. }, Pending::Insert { present: z, .. }) => a == z,
                (Pending::Update { present: a, .. }, Pending::Update { present: z, .. }) => a == z,
                (Pending::Delete { .. }, Pending::Delete { .. }) => true,
                _ => false,
            };
        if !same {
            self.flush_table(table_id);
            return None;
        }
        Some(&mut self.batches[pos])
    }

    /// The batch of `table_id` for rows like `like`, started when there is none.
    fn batch(&mut self, table_id: i32, rel_id: u32, like: Pending) -> &mut TableBatch {
        if self.batch_for(table_id, rel_id, &like).is_none() {
            self.batches.push(TableBatch {
                table_id,
                rel_id,
                pending: like,
                bytes: 0,
            });
        }
        let pos = self
            .batches
            .iter()
            .position(|b| b.table_id == table_id)
            .expect("batch just ensured");
        &mut self.batches[pos]
    }

    /// A change of `table_id` went into its batch, `n` bytes more: count it, and apply the batch
    /// when it is large enough, everything when all batches together are.
    fn batched(&mut self, table_id: i32, n: usize) {
        self.count(table_id, true);
        self.changes_in_txn += 1;
        self.pending_bytes += n;
        let batch = self.batches.iter_mut().find(|b| b.table_id == table_id);
        let full = batch.is_some_and(|b| {
            b.bytes += n;
            b.bytes >= INSERT_BATCH_BYTES
        });
        if full {
            self.flush_table(table_id);
        } else if self.pending_bytes >= MAX_PENDING_BYTES {
            self.flush();
        }
    }

    fn apply_batch(&mut self, b: TableBatch) {
        self.current_table = Some(b.table_id);
        let mr = self
            .relations
            .get(&b.rel_id)
            .expect("batched relation is known");
        let (target, m) = mr.target.clone().expect("batched relation has a target");
        match b.pending {
            Pending::Insert {
                columns,
                data,
                rows,
                ..
            } => {
                let oid = mr.target_oid.expect("batched relation has a target");
                let (loaded, _) = crate::copy::load::load_buffer(
                    oid,
                    mr.route,
                    &columns,
                    bytes::Bytes::from(data),
                );
                debug_assert_eq!(loaded as usize, rows);
            }
            Pending::Update { shape, rows, .. } => {
                let remote = mr.remote.clone();
                let mut rest = rows.as_slice();
                while !rest.is_empty() {
                    let n = ROWS_PER_STATEMENT
                        .into_iter()
                        .find(|&n| n <= rest.len())
                        .unwrap_or(1);
                    let Some(sql) = shape.update_sql(&target, &remote, &m, n) else {
                        break;
                    };
                    let values = rest[..n]
                        .iter()
                        .flat_map(|(k, v)| k.iter().chain(v).cloned())
                        .collect();
                    let found = self.exec(&sql, values);
                    self.count_missing(b.table_id, n.saturating_sub(found));
                    rest = &rest[n..];
                }
            }
            Pending::Delete { shape, keys, .. } => {
                let remote = mr.remote.clone();
                let mut rest = keys.as_slice();
                while !rest.is_empty() {
                    let n = ROWS_PER_STATEMENT
                        .into_iter()
                        .find(|&n| n <= rest.len())
                        .unwrap_or(1);
                    let sql = shape.delete_sql(&target, &remote, &m, n);
                    let values = rest[..n].iter().flatten().cloned().collect();
                    let found = self.exec(&sql, values);
                    self.count_missing(b.table_id, n.saturating_sub(found));
                    rest = &rest[n..];
                }
            }
        }
        self.current_table = None;
    }

    fn table_of(&self, schema: &str, name: &str) -> Option<&SyncTable> {
        self.tables.iter().find(|t| t.receives(schema, name))
    }

    /// Whether remote relation `rel_id` is a chunk of a synced source hypertable (not its root).
    fn is_source_chunk(&self, rel_id: u32) -> bool {
        self.relations.get(&rel_id).is_some_and(|mr| {
            self.tables.iter().any(|t| {
                t.source_hypertable
                    .as_ref()
                    .is_some_and(|h| h.is_chunk(&mr.remote.schema, &mr.remote.name))
            })
        })
    }

    /// Look up (once) the target of remote relation `rel_id`: the synced table's id, target and
    /// column mapping; None when the relation is not synced.
    fn resolve(&mut self, rel_id: u32) -> Result<Option<(TableRef, String)>, ApplyError> {
        let Some(mr) = self.relations.get(&rel_id) else {
            return Ok(None);
        };
        let Some(t) = self.table_of(&mr.remote.schema, &mr.remote.name) else {
            return Ok(None);
        };
        if let Some((target, _)) = &mr.target {
            return Ok(Some((TableRef { id: t.id }, target.clone())));
        }
        let t = t.clone();
        let target = format!(
            "{}.{}",
            quote_ident(&t.target_schema),
            quote_ident(&t.target_name)
        );
        if self.relations[&rel_id].target.is_none() {
            let mut cols = target_columns(&target).map_err(|m| ApplyError {
                table_id: t.id,
                sqlstate: "42P01".into(),
                message: m,
                ..Default::default()
            })?;
            if self.auto_add_columns {
                let mr = &self.relations[&rel_id];
                let m = Mapping::new(&mr.remote, &cols);
                let missing: Vec<RemoteColumn> =
                    m.missing_columns(&mr.remote).into_iter().cloned().collect();
                if !missing.is_empty() {
                    for c in &missing {
                        if let Some(ty) = self.type_name_on_target(c) {
                            Spi::run(&format!(
                                "ALTER TABLE {target} ADD COLUMN {} {ty}",
                                quote_ident(&c.name)
                            ))
                            .expect("ALTER TABLE failed");
                            pgrx::log!(
                                "livesync: added column {} {ty} to {target} (the source added it)",
                                quote_ident(&c.name)
                            );
                        }
                    }
                    cols = target_columns(&target).map_err(|m| ApplyError {
                        table_id: t.id,
                        sqlstate: "42P01".into(),
                        message: m,
                        ..Default::default()
                    })?;
                }
            }
            let mr = self.relations.get_mut(&rel_id).unwrap();
            let m = Mapping::new(&mr.remote, &cols);
            if let Some(missing) = m.missing_column(&mr.remote) {
                return Err(ApplyError {
                    table_id: t.id,
                    sqlstate: "42703".into(),
                    detail: None,
                    message: format!(
                        "column \"{missing}\" of source table {}.{} does not exist in target table {target}",
                        quote_ident(&mr.remote.schema),
                        quote_ident(&mr.remote.name)
                    ),
                    hint: Some(format!(
                        "The source's schema changed. Add the column on the target (ALTER TABLE {target} ADD COLUMN {} …), then SELECT livesync.resync_table('{}.{}');",
                        quote_ident(missing),
                        mr.remote.schema,
                        mr.remote.name
                    )),
                });
            }
            mr.target = Some((target.clone(), m));
            mr.target_oid = Spi::get_one_with_args::<pg_sys::Oid>(
                "SELECT pg_catalog.to_regclass($1)::oid",
                &[target.as_str().into()],
            )
            .ok()
            .flatten();
            let citus = mr.target_oid.and_then(crate::citus::table);
            mr.citus = citus.is_some();
            mr.moving_column = match &citus {
                Some(c) => c.distribution_column.clone(),
                None => mr.target_oid.and_then(crate::timescale::time_column),
            };
            if let Some((_, m)) = mr.target.as_mut() {
                m.pick_by_ctid = !mr.citus;
            }
            let key: Vec<&str> = mr
                .remote
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.as_str())
                .collect();
            mr.other_unique = mr
                .target_oid
                .is_some_and(|oid| has_other_unique_index(oid, &key));
            mr.route = if t.source_hypertable.is_some() {
                // TimescaleDB on the source decompresses data a change touches by re-inserting
                // its rows into the chunk (the compressed batch's deletion is not published:
                // that table has no replica identity). Those rows are already here; genuine
                // inserts never collide with the key, which the source enforces too.
                Route::ExecutorSkippingExisting
            } else if mr.citus {
                Route::Distributed
            } else if mr.moving_column.is_some() {
                Route::Executor
            } else {
                Route::CopyFrom
            };
        }
        Ok(Some((TableRef { id: t.id }, target)))
    }

    /// The target's spelling of a remote column's type: built-in types by OID, others by the
    /// name the stream's TYPE message gave them (when the target has that type).
    fn type_name_on_target(&self, c: &RemoteColumn) -> Option<String> {
        let spelled = if c.type_oid < 16384 {
            Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.format_type($1::oid, $2)",
                &[(c.type_oid as i64).into(), c.type_mod.into()],
            )
            .ok()
            .flatten()?
        } else {
            let (nsp, name) = self.remote_types.get(&c.type_oid)?;
            format!("{}.{}", quote_ident(nsp), quote_ident(name))
        };
        let exists = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.to_regtype($1) IS NOT NULL",
            &[spelled.as_str().into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        exists.then_some(spelled)
    }

    /// `n` UPDATEs or DELETEs of table `id` found no row on the target.
    fn count_missing(&mut self, id: i32, n: usize) {
        if n > 0 {
            self.counts.entry(id).or_default().missing += n as i64;
        }
    }

    fn count(&mut self, id: i32, applied: bool) {
        let c = self.counts.entry(id).or_default();
        if applied {
            c.applied += 1;
        } else {
            c.skipped += 1;
        }
    }

    /// Decide whether the change to `rel_id` applies; returns its table and target when it does.
    fn gate(
        &mut self,
        rel_id: u32,
        raw: &[u8],
        streamed: bool,
    ) -> Result<Option<(TableRef, String)>, ApplyError> {
        let Some(mr) = self.relations.get(&rel_id) else {
            return Ok(None);
        };
        let Some(t) = self.table_of(&mr.remote.schema, &mr.remote.name) else {
            return Ok(None);
        };
        let id = t.id;
        let v = match self.replaying {
            Some(r) if r == id => Verdict::Apply,
            Some(_) => Verdict::Skip,
            None => verdict(t, self.final_lsn),
        };
        match v {
            Verdict::Apply => {}
            Verdict::Skip => return Ok(None),
            Verdict::SkipCounted => {
                self.count(id, false);
                return Ok(None);
            }
            Verdict::Spool => {
                self.spool(id, rel_id, raw, streamed);
                return Ok(None);
            }
        }
        self.current_table = Some(id);
        let resolved = self.resolve(rel_id)?;
        if resolved.is_some() && !self.citus_prepared && self.relations[&rel_id].citus {
            // Before the transaction's first write to a Citus table opens its shards' sessions.
            crate::citus::prepare_writes().expect("preparing the Citus transaction failed");
            self.citus_prepared = true;
        }
        Ok(resolved)
    }

    /// Keep change `raw` of table `id` (remote relation `rel_id`) in the table's spool, in this
    /// apply transaction — so it commits with the origin's progress, exactly once — preceded by
    /// the relation's description the first time in this session.
    fn spool(&mut self, id: i32, rel_id: u32, raw: &[u8], streamed: bool) {
        self.current_table = Some(id);
        if self.spooled_relations.insert((id, rel_id)) {
            if let Some((rel, rel_streamed)) = self.relation_raw.get(&rel_id) {
                tables::spool_change(id, *rel_streamed, self.final_lsn, rel)
                    .unwrap_or_else(|e| e.raise());
            }
        }
        tables::spool_change(id, streamed, self.final_lsn, raw).unwrap_or_else(|e| e.raise());
        self.changes_in_txn += 1;
        self.current_table = None;
    }

    /// Replay the spool of table `id` (copied while the stream ran, now `loaded`) in a target
    /// transaction of its own, and mark the table copied in it; the caller flushes and commits
    /// (no source position is recorded: this applies what earlier commits spooled).
    pub fn replay_spool(&mut self, id: i32) -> Result<usize, ApplyError> {
        self.begin_target_txn();
        // The spool's RELATION messages are older than the stream's: put the stream's back after.
        let relations = self.relations.clone();
        let relation_raw = self.relation_raw.clone();
        self.replaying = Some(id);
        self.in_source_txn = true;
        let mut plain = Decoder::new();
        let mut in_stream = Decoder::streamed();
        // Read in slices: a long copy of a busy table can spool more than fits in memory.
        let (mut after, mut total) = (0i64, 0usize);
        loop {
            let rows = tables::spooled_changes(id, after, 10_000).unwrap_or_else(|e| e.raise());
            let Some(last) = rows.last() else { break };
            after = last.0;
            total += rows.len();
            for (_, streamed, raw) in &rows {
                let decoder = if *streamed {
                    &mut in_stream
                } else {
                    &mut plain
                };
                let msg = decoder.decode(raw).map_err(|e| ApplyError {
                    table_id: id,
                    sqlstate: "XX001".into(),
                    message: format!("a spooled change of the table cannot be decoded: {e}"),
                    hint: Some(
                        "SELECT livesync.resync_table('schema.table'); copies the table again."
                            .into(),
                    ),
                    ..Default::default()
                })?;
                self.handle(msg, raw, *streamed)?;
            }
        }
        self.flush();
        self.in_source_txn = false;
        self.replaying = None;
        self.relations = relations;
        self.relation_raw = relation_raw;
        self.statements.clear();
        tables::finish_spooled(id).unwrap_or_else(|e| e.raise());
        self.reload_tables = true;
        Ok(total)
    }

    fn exec(&mut self, sql: &str, values: Vec<Value>) -> usize {
        let n = values.len();
        Spi::connect_mut(|client| {
            if !self.statements.contains_key(sql) {
                let types = vec![PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID); n];
                let stmt = client
                    .prepare_mut(sql, &types)
                    .expect("prepare failed")
                    .keep();
                self.statements.insert(sql.to_string(), stmt);
            }
            let stmt = &self.statements[sql];
            let text = pg_sys::BuiltinOid::TEXTOID.value();
            let args: Vec<pgrx::datum::DatumWithOid> = values
                .into_iter()
                .map(|v| match v {
                    // SAFETY: a `bytea` datum of these bytes is laid out exactly as a `text`
                    // datum (a varlena of the bytes); they are text in the database's encoding,
                    // as the source converted them for this connection.
                    Some(bytes) => unsafe { pgrx::datum::DatumWithOid::new(bytes, text) },
                    None => pgrx::datum::DatumWithOid::null_oid(text),
                })
                .collect();
            client
                .update(stmt, None, &args)
                .map(|t| t.len())
                .expect("statement failed")
        })
    }

    /// Apply one decoded message. PostgreSQL errors propagate as panics (the caller aborts the
    /// transaction and attributes the error to `current_table`); ApplyError is for problems found
    /// before running SQL.
    /// `raw` is the message as received (spooled as is for a table copied while the stream
    /// runs); `streamed`: it came inside a streamed transaction (decoded with its xid).
    pub fn handle(
        &mut self,
        msg: LogicalMessage,
        raw: &[u8],
        streamed: bool,
    ) -> Result<(), ApplyError> {
        self.current_table = None;
        match msg {
            LogicalMessage::Begin(b) => {
                self.begin_target_txn();
                self.in_source_txn = true;
                self.final_lsn = b.final_lsn.0;
            }
            LogicalMessage::Commit(c) => {
                self.in_source_txn = false;
                self.pending_end = Some((c.end_lsn.0, c.commit_time));
            }
            LogicalMessage::Relation(r) => {
                // Inside a streamed transaction's block this arrives between transactions.
                self.begin_target_txn();
                if self.replaying.is_none() {
                    self.relation_raw.insert(r.rel_id, (raw.to_vec(), streamed));
                    // A new shape: spooled tables' next changes need it in their spool first.
                    self.spooled_relations.retain(|&(_, rel)| rel != r.rel_id);
                }
                let remote = RemoteRelation {
                    oid: r.rel_id,
                    schema: r.namespace,
                    name: r.name,
                    replica_identity: r.replica_identity.as_byte(),
                    columns: r
                        .columns
                        .iter()
                        .map(|c| RemoteColumn {
                            name: c.name.clone(),
                            type_oid: c.type_oid,
                            type_mod: c.type_modifier,
                            key: c.is_key(),
                        })
                        .collect(),
                };
                self.flush();
                self.relations.insert(
                    r.rel_id,
                    MappedRelation {
                        remote,
                        target: None,
                        target_oid: None,
                        route: Route::CopyFrom,
                        moving_column: None,
                        citus: false,
                        other_unique: false,
                    },
                );
                // Prepared statements may refer to the old shape.
                self.statements.clear();
            }
            LogicalMessage::Insert(ins) => {
                let Some((t, _)) = self.gate(ins.rel_id, raw, streamed)? else {
                    return Ok(());
                };
                let present: Vec<bool> = ins.new.0.iter().map(|v| !v.is_unchanged()).collect();
                let columns = {
                    let mr = &self.relations[&ins.rel_id];
                    mr.remote
                        .columns
                        .iter()
                        .zip(&present)
                        .filter(|(_, p)| **p)
                        .map(|(c, _)| c.name.clone())
                        .collect()
                };
                let like = Pending::Insert {
                    present: present.clone(),
                    columns,
                    data: Vec::with_capacity(64 << 10),
                    rows: 0,
                };
                let b = self.batch(t.id, ins.rel_id, like);
                let Pending::Insert { data, rows, .. } = &mut b.pending else {
                    unreachable!("insert batch")
                };
                let before = data.len();
                let mut first = true;
                for (v, p) in ins.new.0.iter().zip(&present) {
                    if !*p {
                        continue;
                    }
                    if !first {
                        data.push(b'\t');
                    }
                    first = false;
                    match v {
                        ColumnValue::Text(bytes) => {
                            crate::copy::load::push_copy_value(data, Some(bytes))
                        }
                        _ => crate::copy::load::push_copy_value(data, None),
                    }
                }
                data.push(b'\n');
                *rows += 1;
                let added = data.len() - before;
                self.batched(t.id, added);
            }
            LogicalMessage::Update(up) => {
                let Some((t, target)) = self.gate(up.rel_id, raw, streamed)? else {
                    return Ok(());
                };
                let new_present: Vec<bool> = up.new.0.iter().map(|v| !v.is_unchanged()).collect();
                // Batched when the key did not change and identifies the row (not under
                // REPLICA IDENTITY FULL), except for hypertables and distributed tables (see
                // moving_update_sql).
                let batchable = {
                    let mr = &self.relations[&up.rel_id];
                    let (_, m) = mr.target.as_ref().unwrap();
                    (up.old.is_none() && mr.moving_column.is_none() && !mr.other_unique)
                        .then(|| BatchShape::for_update(&mr.remote, m, &new_present))
                        .flatten()
                };
                if let Some(shape) = batchable {
                    let key = values_of(&up.new, &shape.key_idx, t.id)?;
                    let vals = values_of(&up.new, &shape.set_idx, t.id)?;
                    let n = approx_bytes(&key) + approx_bytes(&vals);
                    let like = Pending::Update {
                        present: new_present,
                        shape,
                        rows: Vec::new(),
                        index: HashMap::new(),
                    };
                    let b = self.batch(t.id, up.rel_id, like);
                    let Pending::Update { rows, index, .. } = &mut b.pending else {
                        unreachable!("update batch")
                    };
                    match index.get(&key) {
                        // The same row again: only its last version matters.
                        Some(&i) => rows[i].1 = vals,
                        None => {
                            index.insert(key.clone(), rows.len());
                            rows.push((key, vals));
                        }
                    }
                    self.batched(t.id, n);
                    return Ok(());
                }
                self.flush_table(t.id);
                let mr = &self.relations[&up.rel_id];
                let (_, m) = mr.target.as_ref().unwrap();
                let full = mr.remote.replica_identity == b'f';
                let old = match &up.old {
                    Some(o) => o.tuple().clone(),
                    None => up.new.clone(),
                };
                let old_present = identity_present(&old, full, &mr.remote);
                let key_changed = up.old.is_some();
                let moving = mr.moving_column.as_deref().and_then(|tc| {
                    relmap::moving_update_sql(
                        &target,
                        &mr.remote,
                        m,
                        &new_present,
                        &old_present,
                        tc,
                        key_changed,
                    )
                });
                if let Some((stay, moved, set_idx, where_idx)) = moving {
                    let mut values = values_of(&up.new, &set_idx, t.id)?;
                    values.extend(values_of(&old, &where_idx, t.id)?);
                    // Most updates keep the row's time or shard (and key); the others move it.
                    let stayed = match stay {
                        Some(stay) => self.exec(&stay, values.clone()) > 0,
                        None => false,
                    };
                    if !stayed && self.exec(&moved, values) == 0 {
                        self.count_missing(t.id, 1);
                    }
                    self.count(t.id, true);
                    self.changes_in_txn += 1;
                    return Ok(());
                }
                let Some((sql, set_idx, where_idx)) =
                    relmap::update_sql(&target, &mr.remote, m, &new_present, &old_present)
                else {
                    return Err(no_identity(&t, &mr.remote, "UPDATE"));
                };
                let mut values = values_of(&up.new, &set_idx, t.id)?;
                values.extend(values_of(&old, &where_idx, t.id)?);
                if self.exec(&sql, values) == 0 {
                    self.count_missing(t.id, 1);
                }
                self.count(t.id, true);
                self.changes_in_txn += 1;
            }
            LogicalMessage::Delete(del) => {
                let Some((t, target)) = self.gate(del.rel_id, raw, streamed)? else {
                    return Ok(());
                };
                let old = del.old.tuple().clone();
                let (old_present, batchable) = {
                    let mr = &self.relations[&del.rel_id];
                    let (_, m) = mr.target.as_ref().unwrap();
                    let full =
                        matches!(del.old, OldTuple::Full(_)) || mr.remote.replica_identity == b'f';
                    let old_present = identity_present(&old, full, &mr.remote);
                    let batchable = (!full && mr.moving_column.is_none())
                        .then(|| BatchShape::for_delete(&mr.remote, m, &old_present))
                        .flatten();
                    (old_present, batchable)
                };
                if let Some(shape) = batchable {
                    let key = values_of(&old, &shape.key_idx, t.id)?;
                    let n = approx_bytes(&key);
                    let like = Pending::Delete {
                        shape,
                        keys: Vec::new(),
                        seen: HashSet::new(),
                    };
                    let b = self.batch(t.id, del.rel_id, like);
                    let Pending::Delete { keys, seen, .. } = &mut b.pending else {
                        unreachable!("delete batch")
                    };
                    if seen.insert(key.clone()) {
                        keys.push(key);
                    }
                    self.batched(t.id, n);
                    return Ok(());
                }
                self.flush_table(t.id);
                let mr = &self.relations[&del.rel_id];
                let (_, m) = mr.target.as_ref().unwrap();
                let Some((sql, idx)) = relmap::delete_sql(&target, &mr.remote, m, &old_present)
                else {
                    return Err(no_identity(&t, &mr.remote, "DELETE"));
                };
                let values = values_of(&old, &idx, t.id)?;
                if self.exec(&sql, values) == 0 {
                    self.count_missing(t.id, 1);
                }
                self.count(t.id, true);
                self.changes_in_txn += 1;
            }
            LogicalMessage::Truncate(tr) => {
                self.flush();
                let (mut targets, mut citus_targets) = (Vec::new(), Vec::new());
                for rel_id in &tr.rel_ids {
                    // A chunk truncated on its own is not the whole hypertable truncated.
                    if self.is_source_chunk(*rel_id) {
                        continue;
                    }
                    if let Some((t, target)) = self.gate(*rel_id, raw, streamed)? {
                        self.count(t.id, true);
                        if self.relations[rel_id].citus {
                            citus_targets.push(target);
                        } else {
                            targets.push(target);
                        }
                    }
                }
                // CASCADE is not propagated: the target's foreign keys are its own business.
                let restart = if tr.restart_identity() {
                    " RESTART IDENTITY"
                } else {
                    ""
                };
                if !targets.is_empty() {
                    Spi::run(&format!("TRUNCATE {}{restart}", targets.join(", ")))
                        .expect("TRUNCATE failed");
                    self.changes_in_txn += 1;
                }
                if !citus_targets.is_empty() {
                    crate::citus::truncate(&format!(
                        "TRUNCATE {}{restart}",
                        citus_targets.join(", ")
                    ))
                    .expect("TRUNCATE failed");
                    self.changes_in_txn += 1;
                }
            }
            LogicalMessage::Type(ty) => {
                self.remote_types
                    .insert(ty.type_oid, (ty.namespace, ty.name));
            }
            LogicalMessage::Origin(_) | LogicalMessage::Message(_) => {}
            LogicalMessage::StreamStart(_)
            | LogicalMessage::StreamStop
            | LogicalMessage::StreamCommit(_)
            | LogicalMessage::StreamAbort(_) => {
                // Not requested (streaming = off): the source never sends these.
            }
        }
        Ok(())
    }
}

/// The synced table a change belongs to (its id in `livesync.sync_table`).
#[derive(Debug, Clone, Copy)]
struct TableRef {
    id: i32,
}

/// Whether target table `oid` has a unique index whose columns are not exactly `key` (an
/// expression or partial unique index counts: it could conflict too).
fn has_other_unique_index(oid: pg_sys::Oid, key: &[&str]) -> bool {
    let mut key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    key.sort();
    let indexes = Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(cols), '{}') FROM (
           SELECT coalesce(string_agg(a.attname::text, ',' ORDER BY a.attname::text), '')
                  || CASE WHEN i.indexprs IS NOT NULL OR i.indpred IS NOT NULL THEN ',(expr)' ELSE '' END AS cols
             FROM pg_catalog.pg_index i
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) AND a.attnum > 0
            WHERE i.indrelid = $1 AND i.indisunique
            GROUP BY i.indexrelid, i.indexprs, i.indpred) s",
        &[oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    let key = key.join(",");
    indexes.iter().any(|cols| cols != &key)
}

fn no_identity(t: &TableRef, r: &RemoteRelation, what: &str) -> ApplyError {
    let q = format!("{}.{}", quote_ident(&r.schema), quote_ident(&r.name));
    ApplyError {
        table_id: t.id,
        sqlstate: "55000".into(),
        detail: None,
        message: format!("source table {q} has no replica identity, so its {what} cannot be applied"),
        hint: Some(format!(
            "On the source: ALTER TABLE {q} REPLICA IDENTITY FULL; (or add a primary key), then SELECT livesync.resync_table('{}.{}');",
            r.schema, r.name
        )),
    }
}

/// Which old-tuple columns identify the row.
fn identity_present(old: &TupleData, full: bool, r: &RemoteRelation) -> Vec<bool> {
    old.0
        .iter()
        .zip(&r.columns)
        .map(|(v, c)| !v.is_unchanged() && (full || (c.key && !v.is_null())))
        .collect()
}

fn values_of(t: &TupleData, idx: &[usize], table_id: i32) -> Result<Vec<Value>, ApplyError> {
    idx.iter()
        .map(|&i| match t.0.get(i) {
            Some(ColumnValue::Null) | None => Ok(None),
            Some(ColumnValue::Text(b)) => Ok(Some(b.to_vec())),
            Some(other) => Err(ApplyError {
                table_id,
                sqlstate: "08P01".into(),
                message: format!("unexpected column value {other:?} in the change stream"),
                ..Default::default()
            }),
        })
        .collect()
}

/// Whether type `typid` has a default equality operator — what `IS NOT DISTINCT FROM` needs.
/// The type cache answers for arrays (their element type's), domains (their base type's) and
/// composites (every field's) too, which a list of type names cannot.
fn has_equality(typid: pg_sys::Oid) -> bool {
    if typid == pg_sys::InvalidOid {
        return false;
    }
    // SAFETY: lookup_type_cache returns a pointer into the backend's type cache, valid for this
    // call; it ereports (a Rust panic here, caught by the caller's guard) for an unknown type.
    unsafe {
        let tc = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_EQ_OPR as i32);
        !tc.is_null() && (*tc).eq_opr != pg_sys::InvalidOid
    }
}

fn target_columns(target: &str) -> Result<Vec<TargetColumn>, String> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod), atttypid
               FROM pg_catalog.pg_attribute
              WHERE attrelid = pg_catalog.to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            None,
            &[target.into()],
        )?;
        t.map(|r| {
            let typid = r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid);
            Ok(TargetColumn {
                name: r.get::<String>(1)?.unwrap_or_default(),
                type_name: r.get::<String>(2)?.unwrap_or_default(),
                comparable: has_equality(typid),
            })
        })
        .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(|e| format!("could not read target table {target}: {e}"))
}
