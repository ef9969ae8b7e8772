//! The launcher: one per cluster, started by the postmaster, connected to no database.
//!
//! After a server start it asks every connectable, non-template database for a manager (a
//! manager that finds no livesync in its database exits for good, so this costs one short-lived
//! process per database). Databases created later are probed when they first appear.
//! Template databases are skipped: a process connected to one would make `CREATE DATABASE` fail.

use std::collections::HashSet;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
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

/// Start the manager of database `dboid` (from any process). Returns false when no background
/// worker slot is free (`max_worker_processes`).
pub fn start_manager(dboid: pg_sys::Oid) -> bool {
    // A manager that fails is restarted by the postmaster; one that exits cleanly (no livesync
    // in its database, or already running) is not.
    super::launch(BACKEND_TYPE_MANAGER, BACKEND_TYPE_MANAGER, "livesync_manager_main", 0, dboid, Some(Duration::from_secs(10)), false)
        .is_some()
}

/// Connectable, non-template databases.
fn list_databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    // No database connection, so no SPI: scan the shared catalog pg_database directly.
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

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_launcher_main(_arg: pg_sys::Datum) {
    super::attach_signals();
    BackgroundWorker::connect_worker_to_spi(None, None);
    log!("livesync launcher started");

    let mut seen: HashSet<u32> = HashSet::new();
    loop {
        match super::in_transaction(list_databases) {
            Ok(dbs) => {
                for db in dbs {
                    if seen.insert(db.to_u32()) {
                        start_manager(db);
                    }
                }
            }
            Err(e) => pgrx::warning!("livesync launcher could not list databases: {e}"),
        }
        if !super::wait(RESCAN_INTERVAL) {
            break;
        }
    }
    log!("livesync launcher shutting down");
}
