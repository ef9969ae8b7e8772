//! Replication origins: the source position reached, stored in the same commit as the data.
//!
//! Each connector has an origin named after its slot. The worker binds its session to it once;
//! from then on every commit of the worker carries `replorigin_session_origin_lsn`, and
//! PostgreSQL persists the origin's progress with the commit record itself — so "data applied"
//! and "position reached" can never disagree after a crash.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

/// Whether this process's session is bound to its origin. Set only once
/// `replorigin_session_setup` has returned: when it fails (no free replication state slot, the
/// origin busy in another process) the ERROR leaves this false and the next attempt sets up
/// again, instead of reading a session that does not exist (a NULL dereference that would take
/// the whole target cluster down).
static SESSION_BOUND: AtomicBool = AtomicBool::new(false);

/// The end LSN of the last source transaction committed here through origin `name` (0 if none),
/// binding this session to the origin first (creating it if missing) when it is not yet bound.
/// Must run in a transaction.
pub fn session_progress(name: &str) -> u64 {
    if SESSION_BOUND.load(Ordering::Relaxed) {
        // SAFETY: the session is bound (SESSION_BOUND), which is all this function requires.
        unsafe { pg_sys::replorigin_session_get_progress(false) }
    } else {
        setup(name)
    }
}

/// Bind this session to origin `name` (created if missing) and return its progress: the end LSN
/// of the last source transaction committed here (0 if none). Must run in a transaction.
fn setup(name: &str) -> u64 {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` outlives the calls; each call ereports (a Rust panic through pgrx's guard) on
    // failure, so the lines after one run only when it succeeded, and the session is marked bound
    // only after replorigin_session_setup returned.
    unsafe {
        let mut id = pg_sys::replorigin_by_name(c.as_ptr(), true);
        if id == 0 {
            id = pg_sys::replorigin_create(c.as_ptr());
        }
        // PostgreSQL 16 added `acquired_by` (the pid of a leader sharing its origin with parallel
        // apply workers); 0: this process acquires the origin for itself, as 15 always did.
        #[cfg(feature = "pg15")]
        pg_sys::replorigin_session_setup(id);
        #[cfg(feature = "pg18")]
        pg_sys::replorigin_session_setup(id, 0);
        SESSION_BOUND.store(true, Ordering::Relaxed);
        pg_sys::replorigin_session_origin = id;
        pg_sys::replorigin_session_get_progress(false)
    }
}

/// The position the next commit records (the source commit's end LSN and time).
pub fn set_commit_position(end_lsn: u64, commit_time: i64) {
    // SAFETY: plain stores to backend-local globals read by the next commit; this backend is
    // single-threaded and only the main thread runs here.
    unsafe {
        pg_sys::replorigin_session_origin_lsn = end_lsn;
        pg_sys::replorigin_session_origin_timestamp = commit_time;
    }
}

/// Drop origin `name` if it exists (drop_connector). Must run in a transaction.
pub fn drop(name: &str) {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` outlives the calls; both look up / drop by name and ereport on failure.
    unsafe {
        let id = pg_sys::replorigin_by_name(c.as_ptr(), true);
        if id != 0 {
            pg_sys::replorigin_drop_by_name(c.as_ptr(), true, true);
        }
    }
}

/// The setting that sizes PostgreSQL's replication state array, i.e. bounds the origins in use
/// at once: PostgreSQL 18 gave it a name of its own; before, `max_replication_slots` did both.
#[cfg(feature = "pg15")]
pub const LIMIT_SETTING: &str = "max_replication_slots";
#[cfg(feature = "pg18")]
pub const LIMIT_SETTING: &str = "max_active_replication_origins";

/// Replication origins that exist on this cluster (every database's, subscriptions' included),
/// counting the ones in `pending` (names of origins that connectors will create) that do not
/// exist yet, and the limit on origins in use at once: [`LIMIT_SETTING`] (the size of
/// PostgreSQL's replication state array). Read from the catalog directly: `pg_replication_origin`
/// is not readable by the roles that may call `add_connector`.
pub fn headroom(pending: &[String]) -> (usize, usize) {
    let mut n = 0usize;
    // SAFETY: runs in a transaction (add_connector); the relation is opened and closed here with
    // the same lock, the scan begun and ended here, and nothing from it outlives the loop.
    unsafe {
        let rel = pg_sys::table_open(
            pg_sys::ReplicationOriginRelationId,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        while !pg_sys::systable_getnext(scan).is_null() {
            n += 1;
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    }
    for name in pending {
        let Ok(c) = CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: `c` outlives the call; missing_ok = true, so a missing origin is 0, no ERROR.
        if unsafe { pg_sys::replorigin_by_name(c.as_ptr(), true) } == 0 {
            n += 1;
        }
    }
    // SAFETY: reading a GUC variable of this backend.
    #[cfg(feature = "pg15")]
    let limit = unsafe { pg_sys::max_replication_slots };
    // SAFETY: reading a GUC variable of this backend.
    #[cfg(feature = "pg18")]
    let limit = unsafe { pg_sys::max_active_replication_origins };
    let limit = limit.max(0) as usize;
    (n, limit)
}
