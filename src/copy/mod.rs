//! The initial copy of a connector's tables (table states documented in
//! `src/catalog/tables.rs`). Every copy runs **beside the connector's stream**, which starts as
//! soon as the connector's permanent slot exists ([`ensure_slot`], at the worker's start).
//!
//! The connector's worker starts a *batch* whenever tables are due ([`start_batch`], from the
//! stream's housekeeping):
//! 1. it exports one snapshot from a temporary slot (see [`snapshot`]), so tables added in quick
//!    succession share it;
//! 2. for each table it reads the source definition under that snapshot, checks or creates the
//!    target ([`target`]), decides the COPY format (binary when every column type is built in,
//!    text otherwise) and splits large tables into ctid ranges ([`plan`]); the stream spools the
//!    table's changes from the snapshot's LSN on (see the hand-off in `src/apply/`);
//! 3. up to `livesync.max_copy_workers` copy workers (`src/worker/copier.rs`; by default half
//!    the target's CPUs) claim ranges (biggest tables first), import the range's snapshot and
//!    stream its `COPY … TO STDOUT` into the target through [`load`] — each range loaded and
//!    marked done, with its snapshot's position, in one target transaction;
//! 4. the copy worker loading a table's last range finishes it ([`finish_table`]): puts it right
//!    if its ranges were read under different snapshots ([`resume`]), builds its key and marks
//!    it `loaded`; the stream then replays its spool and marks it copied.
//!
//! The exporting connections stay open while ranges are to be read under them ([`Batches`],
//! looked after by [`tend_batches`]). A copy survives anything: after a restart of the target,
//! of the connector's worker or of the source, a pause or a lost connection, a table that has a
//! key to put it right by keeps its loaded ranges and reads the others under a new snapshot;
//! and a snapshot older than `livesync.max_snapshot_age` hands the ranges not started yet to a
//! fresh one, so no snapshot pins the source's xmin for long. A table without such a key starts
//! over after a restart (its target truncated, from a new snapshot) and keeps one snapshot to
//! the end of its copy. A range that fails on the target puts its table in `error`, retried
//! later from scratch.

pub mod guard;
pub mod load;
mod pipe;
pub mod plan;
pub mod resume;
pub mod snapshot;
pub mod target;

use std::time::{Duration, Instant};

use pgrx::bgworkers::DynamicBackgroundWorker;
use pgrx::prelude::*;

use crate::catalog::tables::{self, SyncTable};
use crate::catalog::{ranges, Connector};
use crate::runtime::block_on_until_shutdown;
use crate::source::conninfo::SourceConninfo;
use crate::source::{connect, publication, quote_ident};
use crate::worker::in_transaction;

/// A copy worker that fails is relaunched at most this many times per batch.
const MAX_WORKER_RESTARTS: u32 = 3;

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// [`record_error`] for every table of a batch that could not start.
fn record_errors(due: &[SyncTable], message: &str, hint: Option<&str>) {
    for t in due {
        record_error(t, message, hint);
    }
}

fn record_error(t: &SyncTable, message: &str, hint: Option<&str>) {
    pgrx::log!(
        "livesync: copy of {} failed: {message}",
        qualified(&t.source_schema, &t.source_name)
    );
    let _ = in_transaction(|| tables::mark_error(t.id, message, hint));
}

/// The connector's permanent slot as the source has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotStatus {
    Missing,
    /// Invalidated by the source (`wal_status = 'lost'`, e.g. `max_slot_wal_keep_size`).
    Invalidated,
    Usable,
}

pub async fn slot_status(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<SlotStatus, tokio_postgres::Error> {
    let r = client
        .query_opt(
            "SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match r {
        None => SlotStatus::Missing,
        Some(r) if r.get::<_, Option<String>>(0).as_deref() == Some("lost") => {
            SlotStatus::Invalidated
        }
        Some(_) => SlotStatus::Usable,
    })
}

/// When the connector's permanent slot is missing or invalidated while some of its tables are
/// copied (their changes since can only come from that slot): mark the connector in `error`
/// with what happened and what to do, and return true. A new slot would start at a later
/// position and silently skip the changes in between for those tables, so none is created until
/// no table depends on the old one (every table resynced).
pub fn report_if_slot_lost(c: &Connector, status: &SlotStatus) -> bool {
    if *status == SlotStatus::Usable {
        return false;
    }
    let copied = match in_transaction(|| tables::count_copied(c.id)) {
        Ok(Ok(n)) => n,
        _ => return true,
    };
    if copied == 0 {
        return false;
    }
    let what = match status {
        SlotStatus::Invalidated => "was invalidated by the source (wal_status \"lost\": it retained more WAL than max_slot_wal_keep_size allows)",
        _ => "no longer exists on the source",
    };
    let e = crate::error::LivesyncError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "the replication slot \"{}\" of connector \"{}\" {what}",
            c.slot_name, c.name
        ),
    );
    let message = format!(
        "{} — the changes made on the source since the connector last streamed are gone for its {copied} synced table(s); \
         copy them again: SELECT livesync.resync_table(source_table, connector => '{}') for each (a new slot is created once no table depends on the old one), or drop and re-add the connector",
        e.message,
        c.name.replace('\'', "''")
    );
    pgrx::warning!("livesync: {message}");
    let _ = in_transaction(|| crate::catalog::report_error(c.id, &message));
    true
}

/// What [`prepare_batch`] got ready.
enum Prepared {
    /// The worker must exit.
    Exit,
    /// Nothing to copy now (no due table, or every one failed and is recorded in `error`).
    Nothing,
    /// The source could not be reached or export a snapshot: try again after a back-off.
    Failed,
    /// Ranges planned under this exported snapshot, which must stay open until they are loaded.
    Batch {
        snap: snapshot::ExportedSnapshot,
        ranges: usize,
    },
}

/// A name for a temporary slot of this process (several may exist at once).
fn temporary_slot_name(c: &Connector, what: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: MyProcPid is set at process start and never changes; a plain read.
    format!("{}_{what}_{}_{n}", c.slot_name, unsafe {
        pg_sys::MyProcPid
    })
}

/// Make sure the connector's permanent slot exists before its stream starts: create it when
/// missing — or invalidated while no table depends on it; the copies under way then start
/// over, since their spools miss the changes the lost slot skipped. Returns Ok(false) when the
/// slot is lost and tables depend on it (reported; the connector waits for the user).
pub fn ensure_slot(
    c: &Connector,
    conninfo: &str,
    client: &tokio_postgres::Client,
    rt: &tokio::runtime::Runtime,
) -> Result<bool, String> {
    let status = match block_on_until_shutdown(rt, slot_status(client, &c.slot_name)) {
        None => return Ok(false),
        Some(r) => r.map_err(|e| e.to_string())?,
    };
    // Crash-sensitive: never create a new permanent slot while tables still depend on the old one.
    if report_if_slot_lost(c, &status) {
        return Ok(false);
    }
    if status == SlotStatus::Usable {
        return Ok(true);
    }
    if status == SlotStatus::Invalidated {
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&c.slot_name];
        if let Some(r) = block_on_until_shutdown(
            rt,
            client.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &args),
        ) {
            r.map_err(|e| e.to_string())?;
        }
    }
    // Copies under way read their changes from the old slot's stream: they start over.
    in_transaction(|| {
        tables::restart_copies(c.id, "the connector's replication slot was created anew")
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.message)?;
    let mut conn = crate::walrcv::ReplicationConn::connect(
        conninfo,
        &format!("livesync connector {}", c.name),
    )?;
    let (_, lsn) = conn.create_slot(&c.slot_name, false, false)?;
    in_transaction(|| crate::catalog::record_slot_created(c.id, &crate::walrcv::format_lsn(lsn)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
    pgrx::log!(
        "livesync connector \"{}\": created replication slot \"{}\" at {}",
        c.name,
        c.slot_name,
        crate::walrcv::format_lsn(lsn)
    );
    Ok(true)
}

/// Prepare a batch of the due tables beside the stream: publish them (before the snapshot),
/// export one snapshot from a temporary slot, read their definitions under it, check or create
/// their targets and plan their ranges — or, for a table whose copy was interrupted with some
/// ranges loaded and a key to put it right by, move its ranges still to load to the new snapshot
/// (see `resume`). The stream spools the tables' changes from their first snapshot on.
fn prepare_batch(
    c: &Connector,
    conninfo: &str,
    info: &SourceConninfo,
    rt: &tokio::runtime::Runtime,
    due: Vec<SyncTable>,
    live: &[String],
) -> Prepared {
    let client = match block_on_until_shutdown(
        rt,
        connect::connect(info, &format!("livesync copy {}", c.name)),
    ) {
        None => return Prepared::Exit,
        Some(Ok(client)) => client,
        Some(Err(e)) => {
            // The stream notices too and reconnects; copies under way keep what they loaded.
            pgrx::log!(
                "livesync connector \"{}\": could not reach the source to start a copy: {e}",
                c.name
            );
            return Prepared::Failed;
        }
    };
    // Crash-sensitive: a table must be in the publication before the snapshot it is copied from
    // is taken, or its changes between the two would be in neither. add_table leaves that to us.
    if due.iter().any(|t| !t.published) {
        reconcile(c, &client, rt);
    }
    let due: Vec<SyncTable> = match in_transaction(|| tables::due_for_copy_excluding(c.id, live)) {
        Ok(Ok(d)) => d.into_iter().filter(|t| t.published).collect(),
        _ => return Prepared::Nothing,
    };
    if due.is_empty() {
        return Prepared::Nothing;
    }
    // Interrupted copies that go on from where they are: still `copying` (so their spool has no
    // gap), some ranges loaded, and a key to put the table right by.
    let resumed: Vec<i32> = due
        .iter()
        .filter(|t| t.state == "copying" && t.spooled && t.resume_key.is_some())
        .filter(|t| matches!(in_transaction(|| ranges::partly_done(t.id)), Ok(Ok(true))))
        .map(|t| t.id)
        .collect();
    for t in &due {
        let _ = in_transaction(|| tables::mark_copying(t.id));
    }
    let snap = match snapshot::ExportedSnapshot::create(
        conninfo,
        &format!("livesync copy {}", c.name),
        &temporary_slot_name(c, "copy"),
        true,
    ) {
        Ok(s) => s,
        Err(e) => {
            // A copy under way keeps what it loaded (it is tried again after a back-off, see
            // `Batches`); the others go to `error`, retried from scratch.
            let fresh: Vec<SyncTable> = due
                .into_iter()
                .filter(|t| !resumed.contains(&t.id))
                .collect();
            record_errors(
                &fresh,
                &format!("could not export a snapshot from the source: {e}"),
                Some("Check that the source has a free replication slot and WAL sender (livesync.check_source)."),
            );
            pgrx::log!(
                "livesync connector \"{}\": could not export a copy snapshot: {e}",
                c.name
            );
            return Prepared::Failed;
        }
    };

    let mut total_ranges = 0usize;
    for t in due.iter().filter(|t| resumed.contains(&t.id)) {
        match in_transaction(|| ranges::resume(t.id, &snap.name, &snap.lsn)) {
            Ok(Ok(n)) => {
                pgrx::log!(
                    "livesync: the copy of {} goes on under a new snapshot at {}: {n} range(s) left, the loaded ones kept",
                    qualified(&t.source_schema, &t.source_name),
                    snap.lsn
                );
                total_ranges += n as usize;
            }
            Ok(Err(e)) => record_error(t, &e.message, e.hint.as_deref()),
            Err(e) => record_error(t, &e.message, None),
        }
    }
    let due: Vec<&SyncTable> = due.iter().filter(|t| !resumed.contains(&t.id)).collect();
    if due.is_empty() {
        return if total_ranges == 0 {
            Prepared::Nothing
        } else {
            Prepared::Batch {
                snap,
                ranges: total_ranges,
            }
        };
    }

    // Read every table's definition under the snapshot: the shape the copy will have.
    let app = format!("livesync copy {}", c.name);
    let described = block_on_until_shutdown(rt, async {
        let client = snapshot::import(info, &app, &snap.name).await?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let mut defs = Vec::new();
        for t in &due {
            let def = crate::source::table::describe(
                &client,
                &qualified(&t.source_schema, &t.source_name),
            )
            .await;
            defs.push(def.map_err(|e| e.to_string()));
        }
        Ok::<_, String>((version, defs))
    });
    let (version, defs) = match described {
        None => return Prepared::Exit,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            let due: Vec<SyncTable> = due.into_iter().cloned().collect();
            record_errors(
                &due,
                &format!("could not read the source tables: {e}"),
                None,
            );
            return if total_ranges == 0 {
                Prepared::Nothing
            } else {
                Prepared::Batch {
                    snap,
                    ranges: total_ranges,
                }
            };
        }
    };

    let range_bytes = i64::from(crate::guc::COPY_RANGE_MB.get()) << 20;
    for (t, def) in due.iter().zip(defs) {
        let def = match def {
            Ok(Some(d)) => d,
            Ok(None) => {
                record_error(
                    t,
                    "the source table no longer exists",
                    Some("Remove it: SELECT livesync.remove_table('…');"),
                );
                continue;
            }
            Err(e) => {
                record_error(t, &format!("could not read the source table: {e}"), None);
                continue;
            }
        };
        let binary = def.binary_copy_ok();
        let planned = plan::plan(def.size_bytes, range_bytes, version, def.has_children());
        let prepared = in_transaction(|| -> crate::error::Result<()> {
            let target_q = target::qualified(&t.target_schema, &t.target_name);
            if ranges::any_done(t.id)? {
                // A previous attempt loaded ranges that cannot be kept (see `resume`).
                target::truncate(&target_q)?;
            }
            let key = target::prepare(
                &def,
                &t.target_schema,
                &t.target_name,
                t.hypertable.as_ref(),
                t.distributed_by.as_deref(),
            )?;
            let resume_key = def.resume_key();
            tables::set_plan(
                t.id,
                key.as_deref(),
                def.key_is_primary,
                def.est_rows as i64,
                def.size_bytes,
                &snap.lsn,
                resume_key.as_deref(),
            )?;
            ranges::replace(t.id, &planned, &snap.name, &snap.lsn, binary)
        });
        match prepared {
            Ok(Ok(())) => total_ranges += planned.len(),
            Ok(Err(e)) => record_error(t, &e.message, e.hint.as_deref()),
            Err(e) => record_error(t, &e.message, None),
        }
    }
    if total_ranges == 0 {
        return Prepared::Nothing;
    }
    Prepared::Batch {
        snap,
        ranges: total_ranges,
    }
}

/// Build table `id`'s key and other indexes once all its ranges are loaded — after putting it
/// right when its ranges were read under different snapshots (`resume`) — and mark it `loaded`:
/// the stream then replays its spooled changes and marks it copied. Called by the copy worker
/// that loaded its last range (the key build would otherwise hold the stream up), and by copy
/// workers finding a table whose finisher died. `source`: None in the connector's worker, which
/// leaves a table that must be put right to a copy worker.
pub fn finish_table(id: i32, rows: i64, bytes: i64, source: Option<&resume::Source>) {
    let Ok(Ok(Some(t))) = in_transaction(|| tables::by_id(id)) else {
        return;
    };
    if t.state != "copying" {
        return;
    }
    match resume::settle(&t, source) {
        resume::Settled::Ready => {}
        _ => return,
    }
    let r = in_transaction(|| -> crate::error::Result<()> {
        // One finisher per table: two copy workers may get here at once (both loading its last
        // ranges, or one finding it unfinished); the second skips it rather than wait for the
        // key build (and time out on the lock).
        let state = crate::catalog::first_value_rw::<String>(
            "SELECT state FROM livesync.sync_table WHERE id = $1 FOR UPDATE SKIP LOCKED",
            &[id.into()],
        )?;
        if state.as_deref() != Some("copying") {
            return Ok(());
        }
        // Crash-sensitive: the key and the 'loaded' mark, with the snapshot's LSN, commit
        // together; before this commit the table's changes are only spooled.
        let Some(t) = tables::by_id(id)? else {
            return Ok(());
        };
        // Every range reads as of one snapshot (settle made it so): the spool before it goes.
        if let Some((oldest, newest)) = ranges::snapshot_span(id)? {
            if oldest != newest {
                return Ok(()); // a range was moved meanwhile; its copy worker finishes
            }
            tables::settle_spool(id, &newest)?;
        }
        let target_q = target::qualified(&t.target_schema, &t.target_name);
        let target_relid = Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT pg_catalog.to_regclass($1)::oid",
            &[target_q.as_str().into()],
        )
        .map_err(crate::catalog::spi_err)?;
        if target_relid.and_then(crate::citus::table).is_some() {
            crate::citus::commit_durably().map_err(crate::catalog::spi_err)?;
        }
        if let Some(key) = &t.build_key {
            Spi::run(&crate::source::table::create_key_sql(
                &target_q,
                key,
                t.build_key_primary,
            ))
            .map_err(crate::catalog::spi_err)?;
        }
        // The other indexes (indexes => 'all'): one that cannot be built on the target (a
        // function or operator class it lacks, a unique index a hypertable refuses) is left
        // out with a WARNING rather than holding the table back.
        for stmt in t.build_indexes.iter().flatten() {
            // Built by add_table from the source index's fields and tried out there (see
            // target::plan_indexes); checked again here as one CREATE INDEX on this very
            // table, since the catalog row could have been edited since.
            if !guard::is_index_on(stmt, &t.target_schema, &t.target_name) {
                pgrx::warning!("livesync: index not built on {}: the stored statement is not a CREATE INDEX on it", qualified(&t.target_schema, &t.target_name));
                continue;
            }
            if let Err(e) = crate::error::in_subtransaction(|| guard::run_one(stmt))
                .map_err(String::from)
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                pgrx::warning!(
                    "livesync: index not built on {}: {e}; statement: {stmt}",
                    qualified(&t.target_schema, &t.target_name)
                );
            }
        }
        // The ranges' sums once put right (a resumed copy read some keys again).
        let (rows, bytes) = ranges::table_finished(id)?.unwrap_or((rows, bytes));
        tables::mark_loaded(id, rows, bytes)?;
        pgrx::log!(
            "livesync: copied {rows} rows of {} into {}",
            qualified(&t.source_schema, &t.source_name),
            qualified(&t.target_schema, &t.target_name)
        );
        Ok(())
    });
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = in_transaction(|| tables::mark_error(id, &e.message, e.hint.as_deref()));
        }
        Err(e) => {
            let _ = in_transaction(|| {
                tables::mark_error(id, &format!("could not build the key: {e}"), None)
            });
        }
    }
}

/// One exported snapshot of a batch: its connection stays open (and idle) while ranges are
/// still to be read under it.
struct Snap {
    snap: snapshot::ExportedSnapshot,
    born: Instant,
}

/// The copies running beside the connector's stream: the snapshots ranges are read under and
/// the copy workers reading them. Kept by the connector's worker across stream restarts (a lost
/// source connection drops the snapshots: [`Batches::clear`]).
#[derive(Default)]
pub struct Batches {
    snaps: Vec<Snap>,
    workers: Vec<DynamicBackgroundWorker>,
    /// Copy workers restarted with no range loaded since (a copy worker also hands its ranges
    /// over to one it starts itself, while it builds a key: then the ones started here are
    /// gone without anything having failed).
    restarts: u32,
    /// Ranges loaded at the last look (any change is progress).
    last_done: i64,
    /// No batch starts before this (the last one could not reach the source), and the back-off.
    retry_at: Option<Instant>,
    failures: u32,
}

impl Batches {
    /// The source connection was lost: the snapshots with it. The copies under way go on under
    /// new ones (`resume`); the copy workers keep what they are loading.
    pub fn clear(&mut self) {
        self.snaps.clear();
    }

    fn live(&self) -> Vec<String> {
        self.snaps.iter().map(|s| s.snap.name.clone()).collect()
    }

    fn start_workers(&mut self, c: &Connector, n: usize) {
        self.workers.retain(|h| {
            !matches!(
                h.pid(),
                Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)
            )
        });
        let want = crate::guc::copy_workers().min(n.max(1));
        while self.workers.len() < want {
            match crate::worker::copier::start(c.id) {
                Some(h) => self.workers.push(h),
                None => break,
            }
        }
    }
}

/// Start copying the connector's due tables beside its stream: the snapshot comes from a
/// temporary slot, and the stream spools the tables' changes from the snapshot's LSN on (see the
/// hand-off in `src/apply/`). Returns false if the worker must exit.
pub fn start_batch(
    c: &Connector,
    conninfo: &str,
    info: &SourceConninfo,
    rt: &tokio::runtime::Runtime,
    batches: &mut Batches,
) -> bool {
    if batches.retry_at.is_some_and(|at| Instant::now() < at) {
        return true;
    }
    let live = batches.live();
    let due = match in_transaction(|| tables::due_for_copy_excluding(c.id, &live)) {
        Ok(Ok(d)) => d,
        _ => return true,
    };
    if due.is_empty() {
        return true;
    }
    match prepare_batch(c, conninfo, info, rt, due, &live) {
        Prepared::Exit => false,
        Prepared::Nothing => {
            batches.failures = 0;
            batches.retry_at = None;
            true
        }
        Prepared::Failed => {
            batches.failures = (batches.failures + 1).min(6);
            batches.retry_at = Some(Instant::now() + Duration::from_secs(1 << batches.failures));
            true
        }
        Prepared::Batch { snap, ranges } => {
            batches.failures = 0;
            batches.retry_at = None;
            batches.snaps.push(Snap {
                snap,
                born: Instant::now(),
            });
            batches.start_workers(c, ranges);
            true
        }
    }
}

/// Look after the running copies: a snapshot with no range left to read under it goes; one
/// older than `livesync.max_snapshot_age` hands its ranges not started yet to a fresh snapshot
/// (tables that can be put right by key; see `resume`); ranges to load, or loaded tables whose
/// finisher died, with no live copy worker get new ones (at most [`MAX_WORKER_RESTARTS`] times
/// in a row, then the unfinished tables go to `error`, retried later).
pub fn tend_batches(c: &Connector, conninfo: &str, batches: &mut Batches) {
    let remaining = match in_transaction(|| ranges::remaining_by_snapshot(c.id)) {
        Ok(Ok(r)) => r,
        _ => return,
    };
    let done: i64 = remaining.iter().map(|(_, n, l)| n - l).sum();
    if done != batches.last_done {
        batches.last_done = done;
        batches.restarts = 0;
    }
    let left_under = |name: &str| {
        remaining
            .iter()
            .find(|(s, _, _)| s == name)
            .map_or(0, |(_, _, l)| *l)
    };
    batches.snaps.retain(|s| left_under(&s.snap.name) > 0);
    if remaining.is_empty() {
        // No table is copying (the stream's usual case): nothing to rotate, adopt or finish.
        batches.restarts = 0;
        return;
    }

    let max_age = Duration::from_secs(crate::guc::MAX_SNAPSHOT_AGE.get().max(1) as u64);
    let old: Vec<String> = batches
        .snaps
        .iter()
        .filter(|s| s.born.elapsed() >= max_age)
        .map(|s| s.snap.name.clone())
        .collect();
    for name in old {
        let fresh = match snapshot::ExportedSnapshot::create(
            conninfo,
            &format!("livesync copy {}", c.name),
            &temporary_slot_name(c, "copy"),
            true,
        ) {
            Ok(s) => s,
            Err(e) => {
                pgrx::log!(
                    "livesync connector \"{}\": could not export a fresh copy snapshot: {e}",
                    c.name
                );
                break;
            }
        };
        match in_transaction(|| ranges::rotate(c.id, &name, &fresh.name, &fresh.lsn)) {
            Ok(Ok(n)) if n > 0 => {
                pgrx::log!(
                    "livesync connector \"{}\": {n} range(s) move to a fresh snapshot at {}",
                    c.name,
                    fresh.lsn
                );
                batches.snaps.push(Snap {
                    snap: fresh,
                    born: Instant::now(),
                });
            }
            _ => {}
        }
        // The old snapshot stays while ranges are read under it (tables without a key, ranges
        // being loaded); otherwise it goes now.
        let still = in_transaction(|| ranges::remaining_by_snapshot(c.id))
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        if !still.iter().any(|(s, _, l)| s == &name && *l > 0) {
            batches.snaps.retain(|s| s.snap.name != name);
        } else if let Some(s) = batches.snaps.iter_mut().find(|s| s.snap.name == name) {
            // Tried again after another max age.
            s.born = Instant::now();
        }
    }

    // A range whose snapshot went while its table's other ranges moved on (given back by a copy
    // worker that could not import it): under the newest snapshot with them.
    let live = batches.live();
    if let Some(newest) = batches.snaps.last() {
        if let Ok(Ok(n)) = in_transaction(|| {
            ranges::adopt_orphans(c.id, &live, &newest.snap.name, &newest.snap.lsn)
        }) {
            if n > 0 {
                pgrx::log!(
                    "livesync connector \"{}\": {n} range(s) of a snapshot that is gone move to {}",
                    c.name,
                    newest.snap.lsn
                );
            }
        }
    }
    // Work a copy worker could take now: ranges under a live snapshot nobody alive is loading,
    // or tables loaded but not finished.
    let claimable = in_transaction(|| ranges::claimable(c.id, Some(&live)))
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0);
    let unfinished = in_transaction(|| ranges::finished_tables(c.id, true))
        .ok()
        .and_then(|r| r.ok())
        .map_or(0, |v| v.len());
    let left = claimable as usize;
    batches.workers.retain(|h| {
        !matches!(
            h.pid(),
            Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)
        )
    });
    if left > 0 || unfinished > 0 {
        if batches.workers.is_empty() {
            if batches.restarts >= MAX_WORKER_RESTARTS {
                batches.restarts = 0;
                fail_unfinished(c, "the copy workers kept failing");
                return;
            }
            batches.restarts += 1;
            batches.start_workers(c, left.max(unfinished));
        }
    } else {
        batches.restarts = 0;
    }
}

fn fail_unfinished(c: &Connector, why: &str) {
    let _ = in_transaction(|| -> crate::error::Result<()> {
        for t in tables::due_for_copy(c.id)?
            .iter()
            .filter(|t| t.state == "copying")
        {
            tables::mark_error(
                t.id,
                &format!("copy interrupted: {why}"),
                Some("It is retried automatically; check the server log."),
            )?;
        }
        Ok(())
    });
}

/// Bring the connector's publication on the source in line with the committed catalog, and
/// the catalog in line with what the user did to the publication. livesync's SQL functions never
/// change the source's publication themselves — so a rolled-back `add_table` or `remove_table`
/// leaves the source as it was — and this runs in the worker, after they commit:
///
/// - a table `remove_table` took out (`livesync.unpublish`) is dropped from the publication,
///   unless it was added again since;
/// - a synced table not yet published (`published` false: `add_table`) is added to it, with its
///   chunk schema for a source hypertable; a failure puts that table in `error` (retried);
/// - a table the user added to the publication (`ALTER PUBLICATION … ADD TABLE`) is synced like
///   `add_table` would (same name on the target);
/// - a published table the user dropped from the publication stops syncing.
///
/// A publication of the connector found missing (dropped on the source) is created again by
/// [`ensure_publications`], which puts its tables back.
///
/// Every step is idempotent, so a crash between a source change and the catalog's commit is
/// repaired by the next run. Runs under the connector's table-set lock (add_table/remove_table
/// in progress: try again later). Returns whether the set of synced tables changed.
pub fn reconcile(
    c: &Connector,
    client: &tokio_postgres::Client,
    rt: &tokio::runtime::Runtime,
) -> bool {
    let (changed, gone) = reconcile_tables(c, client, rt);
    if gone {
        // Its tables go back in once it exists again (a missing publication means nothing about
        // its tables: they are not "removed by the user").
        let _ = ensure_publications(c, client, rt);
    }
    changed
}

/// Create the connector's publications on the source where missing — at the worker's start
/// (`add_connector` leaves the source alone, so a rolled-back one leaves nothing behind there)
/// and when one is found gone, dropped on the source. The synced tables of one created again go
/// back into it (see [`publications_recreated`]). None: shutdown.
pub fn ensure_publications(
    c: &Connector,
    client: &tokio_postgres::Client,
    rt: &tokio::runtime::Runtime,
) -> Option<Result<(), tokio_postgres::Error>> {
    let apubname = c.append_publication_name();
    let ensure = async {
        let main = publication::ensure(client, &c.publication_name, false).await?;
        let append = publication::ensure(client, &apubname, true).await?;
        let version: i32 = if main || append {
            client
                .query_one(
                    "SELECT pg_catalog.current_setting('server_version_num')::int4",
                    &[],
                )
                .await?
                .get(0)
        } else {
            0
        };
        Ok::<_, tokio_postgres::Error>((main, append, version))
    };
    let (main, append, version) = match block_on_until_shutdown(rt, ensure)? {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    if main || append {
        match in_transaction(|| publications_recreated(c, main, append, version)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => pgrx::log!("livesync connector \"{}\": {}", c.name, e.message),
            Err(e) => pgrx::log!("livesync connector \"{}\": {e}", c.name),
        }
        reconcile_tables(c, client, rt);
    }
    Some(Ok(()))
}

/// The connector's publication (`main`) and/or append-only publication (`append`) had to be
/// created on a source of `server_version_num` `version`: the tables published through it are
/// to be published again (`reconcile`), and when there were any, it was dropped on the source,
/// which the connector reports. A source before PostgreSQL 18 then fails to decode the changes
/// made while the publication was missing, so the stream stops there (see the README). 18 goes
/// on without sending them (a WARNING "skipped loading publication" in its log): the tables
/// that were in it and receiving changes lack those, and go to `error` until `resync_table`.
fn publications_recreated(
    c: &Connector,
    main: bool,
    append: bool,
    version: i32,
) -> crate::error::Result<()> {
    let apubname = c.append_publication_name();
    let in_gone = |t: &SyncTable| t.published && if t.append_only { append } else { main };
    let all = tables::stream_tables(c.id)?;
    let published: Vec<&SyncTable> = all.iter().filter(|t| in_gone(t)).collect();
    tables::mark_unpublished(c.id, main, append)?;
    if published.is_empty() {
        return Ok(()); // the worker's first start, or nothing was published yet
    }
    let names: Vec<String> = [
        (main, c.publication_name.as_str()),
        (append, apubname.as_str()),
    ]
    .iter()
    .filter(|(gone, _)| *gone)
    .map(|(_, n)| format!("publication \"{n}\""))
    .collect();
    let names = names.join(" and ");
    let mut message = format!(
        "{names} does not exist on the source (dropped there): created again with its {} synced table(s)",
        published.len()
    );
    if version >= 180000 {
        // Copied or being copied: their changes after their snapshot come from the stream.
        let lacking: Vec<&&SyncTable> = published
            .iter()
            .filter(|t| t.state != "error" && (t.state != "pending" || t.snapshot_lsn != 0))
            .collect();
        for t in &lacking {
            let q = qualified(&t.source_schema, &t.source_name);
            tables::mark_stream_error(
                t.id,
                &tables::ErrorRecord {
                    message: &format!("the source did not send the changes made to {q} while {names} was missing (dropped on the source)"),
                    hint: Some(&format!(
                        "SELECT livesync.resync_table('{}', connector => '{}'); copies the table again.",
                        q.replace('\'', "''"),
                        c.name.replace('\'', "''")
                    )),
                    ..Default::default()
                },
            )?;
        }
        message.push_str(&format!(
            "; the source did not send the changes made meanwhile, so {} of them are in error until resync_table copies them again",
            lacking.len()
        ));
    }
    pgrx::warning!("livesync connector \"{}\": {message}", c.name);
    crate::catalog::report_last_error(c.id, &message)
}

/// One run of [`reconcile`]; also whether one of the connector's publications is missing.
fn reconcile_tables(
    c: &Connector,
    client: &tokio_postgres::Client,
    rt: &tokio::runtime::Runtime,
) -> (bool, bool) {
    let mut gone = false;
    let changed = in_transaction(|| -> crate::error::Result<bool> {
        if !crate::worker::try_xact_lock(crate::worker::LOCK_CLASS_TABLES, c.id) {
            return Ok(false);
        }
        let synced = tables::stream_tables(c.id)?;
        let unpublish = tables::unpublish_list(c.id)?;
        let source_err = |e: tokio_postgres::Error| {
            crate::error::LivesyncError::new(
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                format!(
                    "could not update publication \"{}\" on the source: {}",
                    c.publication_name,
                    source_message(&e)
                ),
            )
        };
        let pubname = c.publication_name.as_str();
        let apubname = c.append_publication_name();
        let Some(outcome) = block_on_until_shutdown(rt, async {
            // None: a publication is missing (dropped on the source).
            let Some(mut main) = publication::tables(client, pubname).await? else {
                return Ok(None);
            };
            let Some(mut append) = publication::tables(client, &apubname).await? else {
                return Ok(None);
            };
            for (schema, name) in &unpublish {
                if !synced
                    .iter()
                    .any(|t| &t.source_schema == schema && &t.source_name == name)
                {
                    publication::drop_table(client, pubname, schema, name).await?;
                    publication::drop_table(client, &apubname, schema, name).await?;
                    main.retain(|(s, n)| !(s == schema && n == name));
                    append.retain(|(s, n)| !(s == schema && n == name));
                }
            }
            let mut failures = Vec::new();
            for t in synced.iter().filter(|t| !t.published) {
                let (p, list) = if t.append_only {
                    (apubname.as_str(), &mut append)
                } else {
                    (pubname, &mut main)
                };
                let r = async {
                    publication::add_table(
                        client,
                        p,
                        t.append_only,
                        &t.source_schema,
                        &t.source_name,
                    )
                    .await?;
                    if let Some(h) = &t.source_hypertable {
                        publication::add_schema(client, p, t.append_only, &h.chunk_schema).await?;
                    }
                    Ok::<_, tokio_postgres::Error>(())
                }
                .await;
                match r {
                    Ok(()) => list.push((t.source_schema.clone(), t.source_name.clone())),
                    Err(e) => failures.push((t.id, source_message(&e))),
                }
            }
            Ok::<_, tokio_postgres::Error>(Some((main, append, failures)))
        }) else {
            return Ok(false);
        };
        let Some((main, append, failures)) = outcome.map_err(source_err)? else {
            gone = true;
            return Ok(false);
        };
        for (schema, name) in &unpublish {
            tables::delete_unpublish(c.id, schema, name)?;
        }
        for (id, message) in &failures {
            tables::mark_error(
                *id,
                &format!("could not add the table to publication \"{}\" on the source: {message}", c.publication_name),
                Some("Check that the connector's source role owns the table (and is a superuser for a source hypertable); it is retried automatically."),
            )?;
        }

        let mut changed = false;
        // Chunks of synced source hypertables are published through their whole schema; they
        // are part of their hypertable, not tables of their own.
        let chunk_schemas: Vec<&str> = synced
            .iter()
            .filter_map(|t| {
                t.source_hypertable
                    .as_ref()
                    .map(|h| h.chunk_schema.as_str())
            })
            .collect();
        for t in &synced {
            let list = if t.append_only { &append } else { &main };
            let in_pub = list
                .iter()
                .any(|(s, n)| s == &t.source_schema && n == &t.source_name);
            if in_pub && !t.published {
                tables::mark_published(t.id)?;
            } else if !in_pub && t.published {
                pgrx::log!(
                    "livesync: {} left publication \"{}\"; no longer syncing it",
                    qualified(&t.source_schema, &t.source_name),
                    c.publication_name
                );
                tables::delete(t.id)?;
                changed = true;
            }
        }
        let published = main
            .iter()
            .map(|t| (t, false))
            .chain(append.iter().map(|t| (t, true)));
        for ((schema, name), append_only) in published {
            if chunk_schemas.contains(&schema.as_str())
                || synced
                    .iter()
                    .any(|t| &t.source_schema == schema && &t.source_name == name)
            {
                continue;
            }
            if tables::find_by_target(schema, name)?.is_some() {
                continue; // that target already receives another table; add_table reports this
            }
            pgrx::log!(
                "livesync: {} joined publication \"{}\"; syncing it",
                qualified(schema, name),
                c.publication_name
            );
            tables::insert(&tables::NewSyncTable {
                connector_id: c.id,
                source_schema: schema,
                source_name: name,
                target_schema: schema,
                target_name: name,
                build_key: None,
                build_key_primary: true,
                build_indexes: None,
                est_rows: 0,
                est_bytes: 0,
                hypertable: None,
                source_hypertable: None,
                published: true,
                append_only,
                distributed_by: None,
            })?;
            changed = true;
        }
        Ok(changed)
    });
    let changed = match changed {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            pgrx::log!("livesync connector \"{}\": {}", c.name, e.message);
            false
        }
        Err(e) => {
            pgrx::log!(
                "livesync connector \"{}\": could not reconcile its publication: {e}",
                c.name
            );
            false
        }
    };
    (changed, gone)
}

fn source_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}
