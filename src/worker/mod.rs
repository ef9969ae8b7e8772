//! livesync's background processes.
//!
//! ```text
//! postmaster
//!  └─ livesync launcher            (static, no database; one per cluster)
//!      └─ livesync manager          (one per database where the extension is installed)
//!          └─ livesync connector    (one per enabled connector)
//!              └─ livesync copy     (up to livesync.max_copy_workers, during an initial copy)
//! ```
//! - [`launcher`] starts at server start and asks every connectable database for a manager; a
//!   manager finding no livesync in its database exits for good. `CREATE EXTENSION livesync`
//!   (and every API call) starts the manager of its own database, so the launcher needs no list.
//! - [`manager`] reconciles the connector catalog with running workers every 250 ms (or at once
//!   when an API call wakes it): starts workers of enabled connectors, stops those of paused or
//!   dropped ones, and restarts crashed workers with capped exponential back-off.
//! - [`connector`] holds the connection to the source and reports its state in the catalog.
//!
//! Each process is unique per key (manager: database; connector: connector id) by holding a
//! session-level advisory lock for its lifetime. `drop_connector` takes the same lock to know the
//! worker is gone before it removes source objects, and holds it until commit so a worker
//! restarted in between cannot start.
//!
//! All waits are latch waits with a timeout, or network waits sliced by [`crate::runtime::TICK`];
//! SIGTERM (pause, drop, server shutdown) is honoured within one tick.

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
};
use pgrx::prelude::*;

pub mod connector;
pub mod copier;
pub mod launcher;
pub mod manager;
pub mod stream;

/// Advisory-lock classes (first key): one per kind of unique process.
pub const LOCK_CLASS_MANAGER: i32 = 0x4c53_4d47; // "LSMG"
pub const LOCK_CLASS_CONNECTOR: i32 = 0x4c53_434e; // "LSCN"
/// Serializes changes to a connector's table set: add_table/remove_table against the worker's
/// discovery of tables added to or dropped from the publication directly on the source.
pub const LOCK_CLASS_TABLES: i32 = 0x4c53_5442; // "LSTB"

pub const BACKEND_TYPE_LAUNCHER: &str = "livesync launcher";
pub const BACKEND_TYPE_MANAGER: &str = "livesync manager";
pub const BACKEND_TYPE_CONNECTOR: &str = "livesync connector";
pub const BACKEND_TYPE_COPY: &str = "livesync copy";
pub const BACKEND_TYPE_VERIFY: &str = "livesync verify";

/// Start a dynamic livesync worker in this database (or database `dboid`): `function` is its
/// entry point, `arg` its argument. `restart`: None for workers their parent restarts itself;
/// `notify`: set this process's latch when it starts or stops. The handle lives in
/// TopMemoryContext, so it outlives the transaction. None (with a WARNING) when no background
/// worker slot is free.
pub fn launch(
    name: &str,
    backend_type: &str,
    function: &str,
    arg: i32,
    dboid: pg_sys::Oid,
    restart: Option<Duration>,
    notify: bool,
) -> Option<DynamicBackgroundWorker> {
    launch_extra(
        name,
        backend_type,
        function,
        arg,
        &dboid.to_u32().to_string(),
        restart,
        notify,
    )
}

/// [`launch`] in this database, with `tail` passed to the worker beside the database
/// ([`worker_extra_tail`]).
pub fn launch_with(
    name: &str,
    backend_type: &str,
    function: &str,
    arg: i32,
    tail: &str,
    restart: Option<Duration>,
    notify: bool,
) -> Option<DynamicBackgroundWorker> {
    // SAFETY: MyDatabaseId is a backend-local global set when this backend connected; a plain read.
    let db = unsafe { pg_sys::MyDatabaseId };
    launch_extra(
        name,
        backend_type,
        function,
        arg,
        &format!("{}:{tail}", db.to_u32()),
        restart,
        notify,
    )
}

fn launch_extra(
    name: &str,
    backend_type: &str,
    function: &str,
    arg: i32,
    extra: &str,
    restart: Option<Duration>,
    notify: bool,
) -> Option<DynamicBackgroundWorker> {
    // SAFETY: TopMemoryContext is valid for the life of the process, so the handle allocated there
    // outlives the transaction as intended; MyProcPid is a backend-local global set at start.
    let r = unsafe {
        pgrx::PgMemoryContexts::TopMemoryContext.switch_to(|_| {
            let mut b = BackgroundWorkerBuilder::new(name)
                .set_type(backend_type)
                .set_function(function)
                .set_library("livesync")
                .enable_shmem_access(None)
                .enable_spi_access()
                .set_start_time(BgWorkerStartTime::RecoveryFinished)
                .set_restart_time(restart)
                .set_argument(arg.into_datum())
                .set_extra(extra);
            if notify {
                b = b.set_notify_pid(pg_sys::MyProcPid);
            }
            b.load_dynamic()
        })
    };
    match r {
        Ok(h) => Some(h),
        Err(_) => {
            pgrx::warning!("livesync could not start a {backend_type} worker: no free background worker slot (max_worker_processes)");
            None
        }
    }
}

/// The database a livesync worker serves (its `bgw_extra`).
pub fn worker_database() -> pg_sys::Oid {
    let extra = BackgroundWorker::get_extra();
    let db = extra.split(':').next().unwrap_or_default();
    pg_sys::Oid::from(
        db.parse::<u32>()
            .expect("livesync worker needs a database OID"),
    )
}

/// What [`launch_with`] passed beside the database.
pub fn worker_extra_tail() -> String {
    BackgroundWorker::get_extra()
        .split_once(':')
        .map(|(_, t)| t.to_string())
        .unwrap_or_default()
}

/// Run `f` in its own transaction. A PostgreSQL ERROR (or Rust panic) inside aborts the
/// transaction and is returned, so a worker can record it and carry on instead of exiting.
pub fn in_transaction<R>(f: impl FnOnce() -> R) -> Result<R, crate::error::Caught> {
    // SAFETY: workers call this outside any transaction; the transaction started here is
    // committed or aborted below on every path (`catch` returns instead of unwinding).
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    // An error aborts the whole transaction; the caller only sees its message.
    let r = crate::error::catch(f);
    // SAFETY: ends the transaction begun above.
    unsafe {
        match &r {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Err(_) => {
                pg_sys::AbortCurrentTransaction();
                pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            }
        }
    }
    r
}

/// Sleep on the process latch for up to `timeout`. Returns false when the worker must exit
/// (SIGTERM, or the postmaster died).
pub fn wait(timeout: Duration) -> bool {
    wait_woken(timeout).is_some()
}

/// Like [`wait`]: None when the worker must exit, else whether the latch was set (a wake-up
/// rather than the timeout).
pub fn wait_woken(timeout: Duration) -> Option<bool> {
    if crate::runtime::shutdown_requested() {
        return None;
    }
    // SAFETY: MyLatch is this process's own latch, valid for its whole life; only its owner may wait on
    // and reset it, and this single-threaded process is that owner.
    let rc = unsafe {
        let rc = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
            timeout.as_millis() as libc::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        rc
    };
    crate::runtime::reload_config_if_requested();
    let exit = rc & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 || crate::runtime::shutdown_requested();
    (!exit).then_some(rc & pg_sys::WL_LATCH_SET as i32 != 0)
}

/// Common start of every livesync worker: signal handlers for SIGHUP (reload) and SIGTERM (exit
/// at the next tick).
pub fn attach_signals() {
    BackgroundWorker::attach_signal_handlers(
        pgrx::bgworkers::SignalWakeFlags::SIGHUP | pgrx::bgworkers::SignalWakeFlags::SIGTERM,
    );
}

/// Take a session-level advisory lock (kept until the process exits); false if another process
/// holds it.
pub fn try_session_lock(class: i32, key: i32) -> Result<bool, crate::error::Caught> {
    in_transaction(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[class.into(), key.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    })
}

/// Wake livesync process `pid` (it looks at the catalog at once) by setting its latch. The
/// process is found in PostgreSQL's proc array, so a PID that meanwhile went to a process that is
/// no backend is never signalled; if it went to another backend, that one just wakes once.
pub fn wake(pid: i32) {
    // SAFETY: BackendPidGetProc takes the proc array lock and returns a pointer into shared
    // memory (PGPROCs are never freed), or NULL; setting a PGPROC's latch is always allowed.
    unsafe {
        let p = pg_sys::BackendPidGetProc(pid);
        if !p.is_null() {
            pg_sys::SetLatch(&raw mut (*p).procLatch);
        }
    }
}

/// Ask livesync worker `pid` to exit (SIGTERM) — only if `pid` is still a PostgreSQL backend
/// (callers have just read it from the catalog and found it alive as a livesync process in
/// `pg_stat_activity`), never a process that reused the PID outside PostgreSQL.
pub fn terminate(pid: i32) {
    // SAFETY: as in `wake`; kill() on a PID that is a live backend.
    unsafe {
        if !pg_sys::BackendPidGetProc(pid).is_null() {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Take a transaction-level advisory lock if free (in the caller's transaction).
pub fn try_xact_lock(class: i32, key: i32) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_try_advisory_xact_lock($1, $2)",
        &[class.into(), key.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Show `name` as this process's application_name in pg_stat_activity.
pub fn set_application_name(name: &str) {
    let _ = in_transaction(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.set_config('application_name', $1, false)",
            &[name.into()],
        )
    });
}

/// Session settings of every livesync worker (`statement_timeout` is not among them: a
/// background worker never arms it, as only a client's statements do; waits on the source are
/// bounded by the workers' own timeouts and their latch):
/// - `lock_timeout`: no catalog write of a worker may wait long behind a user's open transaction
///   (a worker stuck on a row lock could not honour SIGTERM);
/// - `synchronous_commit = off`: a worker's commits need not wait for the WAL flush. Nothing is
///   acknowledged to anyone on the strength of a commit alone: the change stream flushes WAL
///   explicitly (`XLogFlush`) before it confirms a position to the source, and a copy range lost
///   in a crash is simply loaded again (its rows and its "done" mark are lost together).
pub fn set_worker_session_defaults() {
    let _ = in_transaction(|| {
        Spi::run(
            "SELECT pg_catalog.set_config('lock_timeout', '2s', false),
                    pg_catalog.set_config('synchronous_commit', 'off', false)",
        )
    });
}

/// Capped exponential back-off: 1 s, 2 s, 4 s, ... up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_secs(1);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::INITIAL,
            max,
        }
    }

    /// The delay to wait now; doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::INITIAL;
    }

    /// Whether no delay has been taken since the last reset.
    pub fn is_reset(&self) -> bool {
        self.next == Self::INITIAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let got: Vec<u64> = (0..6).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
