//! The initial copy of a connector's tables (table states documented in
//! `src/catalog/tables.rs`).
//!
//! The connector's worker coordinates a *batch* whenever tables are due ([`copy_due_tables`]):
//! 1. it exports one snapshot for the whole batch (see [`snapshot`]), so tables added in quick
//!    succession share it; the first batch exports it from the connector's permanent slot, so
//!    the change stream starts exactly where the copies end;
//! 2. for each table it reads the source definition under that snapshot, checks or creates the
//!    target ([`target`]), decides the COPY format (binary when every column type is built in,
//!    text otherwise) and splits large tables into ctid ranges ([`plan`]);
//! 3. it starts up to `livesync.max_copy_workers` copy workers (`src/worker/copier.rs`; by
//!    default half the target's CPUs), which claim ranges (biggest tables first), import the
//!    snapshot and stream each range's `COPY … TO STDOUT` into the target through [`load`] —
//!    each range loaded and marked done in one target transaction;
//! 4. it keeps the exporting connection open (the snapshot lives as long as it does) until every
//!    range is loaded, then builds each table's key and marks it copied, in one transaction per
//!    table, with the snapshot's LSN.
//!
//! The connector's first batch ([`copy_due_tables`]) runs before its stream exists: it creates the
//! permanent slot the stream starts from. Every later batch ([`start_batch`]) runs beside the
//! stream, from a temporary slot's snapshot: the connector's worker keeps its exporting
//! connection open ([`Batch`], looked after by [`tend_batches`]) while copy workers load the
//! ranges, the stream spools the tables' changes from the snapshot on, the copy worker loading a
//! table's last range builds its key and marks it `loaded`, and the stream replays the spool (see
//! the hand-off in `src/apply/`). A range whose copy worker died is taken over by another copy
//! worker under the same snapshot, keeping the ranges already committed. A range that fails puts
//! its table in `error`; like a table whose snapshot is gone (the connector's worker ended, e.g. a
//! server restart), it is retried by a later batch, which truncates what was loaded and starts the
//! table over from a new snapshot.

pub mod guard;
pub mod load;
pub mod plan;
pub mod snapshot;
pub mod target;

use std::time::Duration;

use pgrx::bgworkers::DynamicBackgroundWorker;
use pgrx::prelude::*;

use crate::catalog::tables::{self, SyncTable};
use crate::catalog::{ranges, Connector};
use crate::runtime::block_on_until_shutdown;
use crate::source::conninfo::SourceConninfo;
use crate::source::{connect, publication, quote_ident, quote_literal};
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
    pgrx::log!("livesync: copy of {} failed: {message}", qualified(&t.source_schema, &t.source_name));
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

pub async fn slot_status(client: &tokio_postgres::Client, slot: &str) -> Result<SlotStatus, tokio_postgres::Error> {
    let r = client
        .query_opt("SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await?;
    Ok(match r {
        None => SlotStatus::Missing,
        Some(r) if r.get::<_, Option<String>>(0).as_deref() == Some("lost") => SlotStatus::Invalidated,
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
        format!("the replication slot \"{}\" of connector \"{}\" {what}", c.slot_name, c.name),
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

/// How long after the last `add_table` a batch waits for more, and at most how many times.
const SETTLE: Duration = Duration::from_millis(150);
const SETTLE_ROUNDS: usize = 6;

/// What [`prepare_batch`] got ready.
enum Prepared {
    /// The worker must exit.
    Exit,
    /// Nothing to copy now (no due table, or every one failed and is recorded in `error`).
    Nothing,
    /// Ranges planned under this exported snapshot, which must stay open until they are loaded.
    Batch { snap: snapshot::ExportedSnapshot, ranges: usize },
}

/// Prepare a batch of the due tables: publish them (before the snapshot), export one snapshot
/// (from the permanent slot when it does not exist yet, else from a temporary one), read their
/// definitions under it, check or create their targets and plan their ranges. `spooled`: the
/// stream runs during this copy and spools the tables' changes from the snapshot on.
fn prepare_batch(
    c: &Connector,
    conninfo: &str,
    info: &SourceConninfo,
    rt: &tokio::runtime::Runtime,
    due: Vec<SyncTable>,
    spooled: bool,
    live: &[String],
) -> Prepared {
    let client = match block_on_until_shutdown(rt, connect::connect(info, &format!("livesync copy {}", c.name))) {
        None => return Prepared::Exit,
        Some(Ok(client)) => client,
        Some(Err(e)) => {
            record_errors(&due, &format!("could not reach the source: {e}"), None);
            return Prepared::Nothing;
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

    let status = block_on_until_shutdown(rt, async {
        let client = &client;
        let status = slot_status(client, &c.slot_name).await.map_err(|e| e.to_string())?;
        if status == SlotStatus::Invalidated && in_transaction(|| tables::count_copied(c.id)).ok().and_then(|r| r.ok()) == Some(0) {
            // Every table is being copied again: the invalidated slot can go, a new one follows.
            client
                .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&c.slot_name])
                .await
                .map_err(|e| e.to_string())?;
            return Ok(SlotStatus::Missing);
        }
        Ok::<_, String>(status)
    });
    let status = match status {
        None => return Prepared::Exit,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            record_errors(&due, &format!("could not reach the source: {e}"), None);
            return Prepared::Nothing;
        }
    };
    // Crash-sensitive: never create a new permanent slot while tables still depend on the old one.
    if report_if_slot_lost(c, &status) {
        return Prepared::Nothing;
    }
    if spooled && status != SlotStatus::Usable {
        // The stream's slot is gone: the stream fails and the connector's loop says why.
        return Prepared::Nothing;
    }
    for t in &due {
        let _ = in_transaction(|| tables::mark_copying(t.id));
    }
    let (slot, temporary) = if status == SlotStatus::Usable {
        // Several batches may run at once beside the stream: each its own temporary slot.
        static BATCHES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: MyProcPid is set at process start and never changes; a plain read.
        (format!("{}_copy_{}_{n}", c.slot_name, unsafe { pg_sys::MyProcPid }), true)
    } else {
        (c.slot_name.clone(), false)
    };
    let snap = match snapshot::ExportedSnapshot::create(conninfo, &format!("livesync copy {}", c.name), &slot, temporary) {
        Ok(s) => s,
        Err(e) => {
            record_errors(
                &due,
                &format!("could not export a snapshot from the source: {e}"),
                Some("Check that the source has a free replication slot and WAL sender (livesync.check_source)."),
            );
            return Prepared::Nothing;
        }
    };

    if !temporary {
        let _ = in_transaction(|| crate::catalog::record_slot_created(c.id, &snap.lsn));
    }

    // Read every table's definition under the snapshot: the shape the copy will have.
    let app = format!("livesync copy {}", c.name);
    let described = block_on_until_shutdown(rt, async {
        let client = connect::connect(info, &app).await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&snap.name)
            ))
            .await
            .map_err(|e| e.to_string())?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let mut defs = Vec::new();
        for t in &due {
            let def = crate::source::table::describe(&client, &qualified(&t.source_schema, &t.source_name)).await;
            defs.push(def.map_err(|e| e.to_string()));
        }
        Ok::<_, String>((version, defs))
    });
    let (version, defs) = match described {
        None => return Prepared::Exit,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            record_errors(&due, &format!("could not read the source tables: {e}"), None);
            return Prepared::Nothing;
        }
    };

    let range_bytes = i64::from(crate::guc::COPY_RANGE_MB.get()) << 20;
    let mut total_ranges = 0usize;
    for (t, def) in due.iter().zip(defs) {
        let def = match def {
            Ok(Some(d)) => d,
            Ok(None) => {
                record_error(t, "the source table no longer exists", Some("Remove it: SELECT livesync.remove_table('…');"));
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
                // A previous attempt loaded ranges under a snapshot that is gone.
                Spi::run(&format!("TRUNCATE {target_q}")).map_err(crate::catalog::spi_err)?;
            }
            let key = target::prepare(&def, &t.target_schema, &t.target_name, t.hypertable.as_ref())?;
            tables::set_plan(t.id, key.as_deref(), def.key_is_primary, def.est_rows as i64, def.size_bytes, &snap.lsn, spooled)?;
            ranges::replace(t.id, &planned, &snap.name, binary)
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
    Prepared::Batch { snap, ranges: total_ranges }

}

/// Copy every table of connector `c` that is due. Returns false if the worker must exit.
pub fn copy_due_tables(c: &Connector, conninfo: &str, info: &SourceConninfo, rt: &tokio::runtime::Runtime) -> bool {
    // add_table wakes the worker as it commits; tables are usually added a few at a time, and
    // one batch shares one exported snapshot: let a burst of add_table calls settle first.
    for _ in 0..SETTLE_ROUNDS {
        match in_transaction(|| tables::newest_pending_age(c.id)) {
            Ok(Ok(Some(age))) if age < SETTLE => {
                if !crate::worker::wait(SETTLE - age) {
                    return false;
                }
            }
            _ => break,
        }
    }
    let due = match in_transaction(|| tables::due_for_copy(c.id)) {
        Ok(Ok(d)) => d,
        _ => return true,
    };
    if due.is_empty() {
        return true;
    }
    let (snap, total_ranges) = match prepare_batch(c, conninfo, info, rt, due, false, &[]) {
        Prepared::Exit => return false,
        Prepared::Nothing => return true,
        Prepared::Batch { snap, ranges } => (snap, ranges),
    };

    // Run copy workers until every range is loaded (or failed for good), finishing tables as
    // their last range lands. The exporting connection (`snap`) stays open meanwhile.
    let workers = crate::guc::copy_workers().min(total_ranges).max(1);
    let mut handles: Vec<DynamicBackgroundWorker> = (0..workers).filter_map(|_| crate::worker::copier::start(c.id)).collect();
    let mut restarts = 0;
    loop {
        finish_tables(c);
        let remaining = match in_transaction(|| ranges::remaining(c.id)) {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        handles.retain(|h| !matches!(h.pid(), Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)));
        if remaining == 0 {
            break;
        }
        if handles.is_empty() {
            if restarts >= MAX_WORKER_RESTARTS {
                fail_unfinished(c, "the copy workers kept failing");
                break;
            }
            restarts += 1;
            handles = (0..workers.min(remaining as usize)).filter_map(|_| crate::worker::copier::start(c.id)).collect();
            if handles.is_empty() {
                fail_unfinished(c, "no background worker slot is free for a copy worker (max_worker_processes)");
                break;
            }
        }
        if !crate::worker::wait(Duration::from_millis(250)) {
            for h in handles {
                let _ = h.terminate();
            }
            return false;
        }
    }
    finish_tables(c);
    drop(snap);
    true
}

/// Build the key and mark copied every table whose ranges are all loaded.
fn finish_tables(c: &Connector) {
    let finished = match in_transaction(|| ranges::finished_tables(c.id, false)) {
        Ok(Ok(f)) => f,
        _ => return,
    };
    for (id, rows, bytes) in finished {
        finish_table(id, rows, bytes);
    }
}

/// Build table `id`'s key and other indexes once all its ranges are loaded, and mark it copied
/// — or, when the stream ran during its copy (`spooled`), `loaded`: the stream then replays its
/// spooled changes and marks it copied. Called by the coordinator (batches copied with the
/// stream stopped) and by the copy worker that loaded a spooled table's last range (the key
/// build would otherwise hold the stream up).
pub fn finish_table(id: i32, rows: i64, bytes: i64) {
    let r = in_transaction(|| -> crate::error::Result<()> {
        // One finisher per table: two copy workers loading its last ranges at once both get
        // here; the second waits for the first's commit and finds it no longer copying.
        let state = crate::catalog::first_value_rw::<String>(
            "SELECT state FROM livesync.sync_table WHERE id = $1 FOR UPDATE",
            &[id.into()],
        )?;
        if state.as_deref() != Some("copying") {
            return Ok(());
        }
        // Crash-sensitive: the key and the 'copied' (or 'loaded') mark, with the snapshot's LSN,
        // commit together; before this commit the table's changes are not applied.
        let Some(t) = tables::by_id(id)? else { return Ok(()) };
        if let Some(key) = &t.build_key {
            let target_q = target::qualified(&t.target_schema, &t.target_name);
            Spi::run(&crate::source::table::create_key_sql(&target_q, key, t.build_key_primary))
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
            if let Err(e) = crate::error::in_subtransaction(|| guard::run_one(stmt)).map_err(String::from).and_then(|r| r.map_err(|e| e.to_string())) {
                pgrx::warning!("livesync: index not built on {}: {e}; statement: {stmt}", qualified(&t.target_schema, &t.target_name));
            }
        }
        if t.spooled {
            tables::mark_loaded(id, rows, bytes)?;
        } else {
            tables::mark_copied(id, rows, bytes)?;
        }
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
            let _ = in_transaction(|| tables::mark_error(id, &format!("could not build the key: {e}"), None));
        }
    }
}

/// Tables being copied while the connector's stream runs, under one exported snapshot: the
/// exporting connection must stay open (and idle) until every range is loaded, and copy workers
/// must be running while ranges remain. Kept by the connector's worker across stream restarts.
pub struct Batch {
    snap: snapshot::ExportedSnapshot,
    workers: Vec<DynamicBackgroundWorker>,
    restarts: u32,
}

/// Start copying the connector's due tables while its stream runs (its permanent slot exists):
/// the snapshot comes from a temporary slot, and the stream spools the tables' changes from the
/// snapshot's LSN on (see the hand-off in `src/apply/`). Returns false if the worker must exit.
pub fn start_batch(c: &Connector, conninfo: &str, info: &SourceConninfo, rt: &tokio::runtime::Runtime, batches: &mut Vec<Batch>) -> bool {
    let live: Vec<String> = batches.iter().map(|b| b.snap.name.clone()).collect();
    let due = match in_transaction(|| tables::due_for_copy_excluding(c.id, &live)) {
        Ok(Ok(d)) => d,
        _ => return true,
    };
    if due.is_empty() {
        return true;
    }
    match prepare_batch(c, conninfo, info, rt, due, true, &live) {
        Prepared::Exit => false,
        Prepared::Nothing => true,
        Prepared::Batch { snap, ranges } => {
            let n = crate::guc::copy_workers().min(ranges).max(1);
            let workers = (0..n).filter_map(|_| crate::worker::copier::start(c.id)).collect();
            batches.push(Batch { snap, workers, restarts: 0 });
            true
        }
    }
}

/// Finish the tables loaded beside the stream whose finisher (a copy worker) died before
/// building their key while this worker, which would have restarted one, was not running: their
/// ranges and spool are complete. Called when the stream starts; while a batch runs,
/// [`tend_batches`] gives it copy workers, which finish such tables themselves.
pub fn finish_orphans(c: &Connector) {
    if let Ok(Ok(unfinished)) = in_transaction(|| ranges::finished_tables(c.id, true)) {
        for (id, rows, bytes) in unfinished {
            finish_table(id, rows, bytes);
        }
    }
}

/// Look after the running batches: a batch whose tables are all loaded (or failed) lets its
/// snapshot go; one with tables still copying but no live copy worker gets new ones (at most
/// [`MAX_WORKER_RESTARTS`] times, then its unfinished tables go to `error`, retried later).
pub fn tend_batches(c: &Connector, batches: &mut Vec<Batch>) {
    if batches.is_empty() {
        return;
    }
    let remaining = match in_transaction(|| ranges::remaining_by_snapshot(c.id)) {
        Ok(Ok(r)) => r,
        _ => return,
    };
    batches.retain_mut(|b| {
        let (ranges, left) = remaining.iter().find(|(s, _, _)| s == &b.snap.name).map_or((0, 0), |(_, n, l)| (*n, *l));
        if ranges == 0 {
            // Every table of the batch is loaded (or failed): its snapshot can go.
            return false;
        }
        b.workers.retain(|h| !matches!(h.pid(), Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)));
        if b.workers.is_empty() {
            if b.restarts >= MAX_WORKER_RESTARTS {
                fail_unfinished(c, "the copy workers kept failing");
                return false;
            }
            b.restarts += 1;
            // Ranges left to load, or a loaded table whose finisher died: a copy worker does both.
            let n = crate::guc::copy_workers().min(left.max(1) as usize).max(1);
            b.workers = (0..n).filter_map(|_| crate::worker::copier::start(c.id)).collect();
        }
        true
    });
}

fn fail_unfinished(c: &Connector, why: &str) {
    let _ = in_transaction(|| -> crate::error::Result<()> {
        for t in tables::due_for_copy(c.id)?.iter().filter(|t| t.state == "copying") {
            tables::mark_error(t.id, &format!("copy interrupted: {why}"), Some("It is retried automatically; check the server log."))?;
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
/// Every step is idempotent, so a crash between a source change and the catalog's commit is
/// repaired by the next run. Runs under the connector's table-set lock (add_table/remove_table
/// in progress: try again later). Returns whether the set of synced tables changed.
pub fn reconcile(c: &Connector, client: &tokio_postgres::Client, rt: &tokio::runtime::Runtime) -> bool {
    let changed = in_transaction(|| -> crate::error::Result<bool> {
        if !crate::worker::try_xact_lock(crate::worker::LOCK_CLASS_TABLES, c.id) {
            return Ok(false);
        }
        let synced = tables::stream_tables(c.id)?;
        let unpublish = tables::unpublish_list(c.id)?;
        let source_err = |e: tokio_postgres::Error| {
            crate::error::LivesyncError::new(
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                format!("could not update publication \"{}\" on the source: {}", c.publication_name, source_message(&e)),
            )
        };
        let pubname = c.publication_name.as_str();
        let apubname = c.append_publication_name();
        let Some(outcome) = block_on_until_shutdown(rt, async {
            // A missing publication (dropped on the source) means nothing about its tables: leave
            // them alone rather than stop syncing every one (the worker recreates it on reconnect).
            let Some(mut main) = publication::tables(client, pubname).await? else { return Ok(None) };
            let Some(mut append) = publication::tables(client, &apubname).await? else { return Ok(None) };
            for (schema, name) in &unpublish {
                if !synced.iter().any(|t| &t.source_schema == schema && &t.source_name == name) {
                    publication::drop_table(client, pubname, schema, name).await?;
                    publication::drop_table(client, &apubname, schema, name).await?;
                    main.retain(|(s, n)| !(s == schema && n == name));
                    append.retain(|(s, n)| !(s == schema && n == name));
                }
            }
            let mut failures = Vec::new();
            for t in synced.iter().filter(|t| !t.published) {
                let (p, list) = if t.append_only { (apubname.as_str(), &mut append) } else { (pubname, &mut main) };
                let r = async {
                    publication::add_table(client, p, t.append_only, &t.source_schema, &t.source_name).await?;
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
        let Some((main, append, failures)) = outcome.map_err(source_err)? else { return Ok(false) };
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
        let chunk_schemas: Vec<&str> =
            synced.iter().filter_map(|t| t.source_hypertable.as_ref().map(|h| h.chunk_schema.as_str())).collect();
        for t in &synced {
            let list = if t.append_only { &append } else { &main };
            let in_pub = list.iter().any(|(s, n)| s == &t.source_schema && n == &t.source_name);
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
        let published = main.iter().map(|t| (t, false)).chain(append.iter().map(|t| (t, true)));
        for ((schema, name), append_only) in published {
            if chunk_schemas.contains(&schema.as_str())
                || synced.iter().any(|t| &t.source_schema == schema && &t.source_name == name)
            {
                continue;
            }
            if tables::find_by_target(schema, name)?.is_some() {
                continue; // that target already receives another table; add_table reports this
            }
            pgrx::log!("livesync: {} joined publication \"{}\"; syncing it", qualified(schema, name), c.publication_name);
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
            })?;
            changed = true;
        }
        Ok(changed)
    });
    match changed {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            pgrx::log!("livesync connector \"{}\": {}", c.name, e.message);
            false
        }
        Err(e) => {
            pgrx::log!("livesync connector \"{}\": could not reconcile its publication: {e}", c.name);
            false
        }
    }
}

fn source_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}
