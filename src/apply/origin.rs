//! Replication origins: the source position reached, stored in the same commit as the data.
//!
//! Each connector has an origin named after its slot. The worker binds its session to it once;
//! from then on every commit of the worker carries `replorigin_session_origin_lsn`, and
//! PostgreSQL persists the origin's progress with the commit record itself — so "data applied"
//! and "position reached" can never disagree after a crash.

use std::ffi::CString;

use pgrx::pg_sys;

/// Bind this session to origin `name` (created if missing) and return its progress: the end LSN
/// of the last source transaction committed here (0 if none). Must run in a transaction.
pub fn setup(name: &str) -> u64 {
    let c = CString::new(name).unwrap();
    unsafe {
        let mut id = pg_sys::replorigin_by_name(c.as_ptr(), true);
        if id == 0 {
            id = pg_sys::replorigin_create(c.as_ptr());
        }
        pg_sys::replorigin_session_setup(id);
        pg_sys::replorigin_session_origin = id;
        pg_sys::replorigin_session_get_progress(false)
    }
}

/// The position the next commit records (the source commit's end LSN and time).
pub fn set_commit_position(end_lsn: u64, commit_time: i64) {
    unsafe {
        pg_sys::replorigin_session_origin_lsn = end_lsn;
        pg_sys::replorigin_session_origin_timestamp = commit_time;
    }
}

/// Drop origin `name` if it exists (drop_connector). Must run in a transaction.
pub fn drop(name: &str) {
    let c = CString::new(name).unwrap();
    unsafe {
        let id = pg_sys::replorigin_by_name(c.as_ptr(), true);
        if id != 0 {
            pg_sys::replorigin_drop_by_name(c.as_ptr(), true, true);
        }
    }
}
