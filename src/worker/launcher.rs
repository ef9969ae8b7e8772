//! The launcher: one per cluster, started by the postmaster, connected to no database.
//!
//! After a server start it asks every connectable, non-template database for a manager (a
//! manager that finds no livesync in its database exits for good, so this costs one short-lived
//! process per database). Databases created later are probed when they first appear.
//! Template databases are skipped: a process connected to one would make `CREATE DATABASE` fail.
//!
//! The launcher is the only process that registers managers, and it keeps their handles: a
//! manager is restarted by the postmaster when it fails (every 10 s), so when its database is
//! dropped (`DROP DATABASE … WITH (FORCE)` ends it) that registration would fail to connect every
//! 10 s for the life of the server. The launcher unregisters the managers of databases that are
//! gone at its next look (every 10 s). `CREATE EXTENSION` and API calls that find no manager
//! running wake the launcher, which then starts the stopped managers of existing databases.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker,
};
use pgrx::prelude::*;

use super::{BACKEND_TYPE_LAUNCHER, BACKEND_TYPE_MANAGER};

/// How often the launcher looks for new databases.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// Register the launcher; called from `_PG_init` while the postmaster loads the library.
pub fn register() {
    BackgroundWorkerBuilder::new(BACKEND_TYPE_LAUNCHER)
        .set_type(BACKEND_TYPE_LAUNCHER)
        .set_function("livesync_launcher_main")
        .set_library("livesync")
        .enable_shmem_access(None)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Start the manager of database `dboid` (the launcher only). None when no background worker
/// slot is free (`max_worker_processes`).
fn start_manager(dboid: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    // A manager that fails is restarted by the postmaster; one that exits cleanly (no livesync
    // in its database, or already running) is not.
    super::launch(
        BACKEND_TYPE_MANAGER,
        BACKEND_TYPE_MANAGER,
        "livesync_manager_main",
        0,
        dboid,
        Some(Duration::from_secs(10)),
        false,
    )
}

/// Connectable, non-template databases.
fn list_databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    // No database connection, so no SPI: scan the shared catalog pg_database directly.
    // SAFETY: runs inside in_transaction; pg_database is shared, readable with no database; the relation is
    // opened and closed here with the same lock, and each tuple is read before the next heap_getnext.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
    out
}

/// Whether database `db` was probed before (and remember it).
fn seen_before(probed: &mut HashSet<u32>, db: u32) -> bool {
    !probed.insert(db)
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_launcher_main(_arg: pg_sys::Datum) {
    super::attach_signals();
    BackgroundWorker::connect_worker_to_spi(None, None);
    log!("livesync launcher started");

    let mut probed: HashSet<u32> = HashSet::new();
    // Every manager registration this launcher made, by database (a wake-up may start a second
    // one while the first exits: the duplicate passes the wake-up on and exits).
    let mut managers: HashMap<u32, Vec<DynamicBackgroundWorker>> = HashMap::new();
    // Woken (latch) rather than timed out: someone wants a manager started.
    let mut woken = false;
    loop {
        match super::in_transaction(list_databases) {
            Ok(dbs) => {
                let present: HashSet<u32> = dbs.iter().map(|d| d.to_u32()).collect();
                // Managers of dropped databases: unregister them, or the postmaster would retry
                // their connection every 10 s forever.
                let gone: Vec<u32> = managers
                    .keys()
                    .filter(|d| !present.contains(d))
                    .copied()
                    .collect();
                for d in gone {
                    for h in managers.remove(&d).unwrap_or_default() {
                        let _ = h.terminate();
                    }
                    log!("livesync launcher: database {d} is gone; its manager is unregistered");
                }
                for db in dbs {
                    let handles = managers.entry(db.to_u32()).or_default();
                    handles.retain(|h| !matches!(h.pid(), Err(BackgroundWorkerStatus::Stopped)));
                    // New databases are probed once; on a wake-up every database gets a manager
                    // started (one that finds livesync absent, or another manager running, exits
                    // at once). A manager still running may be on its way out after finding no
                    // extension a moment before CREATE EXTENSION committed, so it does not count.
                    let first_time = handles.is_empty() && !seen_before(&mut probed, db.to_u32());
                    if first_time || woken {
                        if let Some(h) = start_manager(db) {
                            handles.push(h);
                        }
                    }
                }
            }
            Err(e) => pgrx::warning!("livesync launcher could not list databases: {e}"),
        }
        match super::wait_woken(RESCAN_INTERVAL) {
            None => break,
            Some(w) => woken = w,
        }
    }
    log!("livesync launcher shutting down");
}
