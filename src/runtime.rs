//! Driving tokio from a PostgreSQL process.
//!
//! PostgreSQL backends are single-threaded and every call into PostgreSQL must happen on the main
//! thread, so livesync uses a tokio *current-thread* runtime and drives it with `block_on` from
//! that thread. Network waits must still notice a query cancel (in a backend running a SQL
//! function) or a SIGTERM (in a background worker), so futures are polled in short slices
//! ([`TICK`]) and the process's interrupt state is checked between slices — outside `block_on`,
//! because `CHECK_FOR_INTERRUPTS` may raise an ERROR, which must not unwind through tokio.

use std::future::Future;
use std::time::Duration;

use pgrx::pg_sys;

/// How long a network wait may go without checking for interrupts.
pub const TICK: Duration = Duration::from_millis(100);

pub fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("could not build the tokio runtime")
}

/// In a backend running a SQL function: run `fut` to completion; a query cancel or
/// `statement_timeout` interrupts it with the usual ERROR.
pub fn block_on_interruptible<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        match rt.block_on(async { tokio::time::timeout(TICK, &mut fut).await }) {
            Ok(v) => return v,
            Err(_) => {
                pg_sys::check_for_interrupts!();
            }
        }
    }
}

/// True once this process was asked to exit (SIGTERM in a background worker).
pub fn shutdown_requested() -> bool {
    // SAFETY: ShutdownRequestPending is a process-local sig_atomic_t written only by the SIGTERM handler;
    // a volatile read is how PostgreSQL's own code reads it.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// In a background worker: run `fut` until it completes (`Some`) or the worker is asked to stop
/// or the postmaster dies (`None`).
pub fn block_on_until_shutdown<F: Future>(
    rt: &tokio::runtime::Runtime,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        match rt.block_on(async { tokio::time::timeout(TICK, &mut fut).await }) {
            Ok(v) => return Some(v),
            Err(_) => {
                if shutdown_requested() || !postmaster_alive() {
                    return None;
                }
                reload_config_if_requested();
            }
        }
    }
}

pub fn postmaster_alive() -> bool {
    // PostmasterIsAlive() is a static inline wrapper in pmsignal.h, absent from pgrx's bindings;
    // the function it wraps is exported by the server.
    // SAFETY: matches pmsignal.h's `extern bool PostmasterIsAliveInternal(void);` (no arguments, returns
    // a C bool), exported by the postgres binary this library is loaded into.
    unsafe extern "C-unwind" {
        fn PostmasterIsAliveInternal() -> bool;
    }
    // SAFETY: takes no arguments and only checks this process's postmaster-death pipe; callable at any
    // time in any backend or worker, as the inline PostmasterIsAlive() does.
    unsafe { PostmasterIsAliveInternal() }
}

/// Apply a pending SIGHUP (postgresql.conf reload).
pub fn reload_config_if_requested() {
    // SAFETY: ConfigReloadPending is the process-local sig_atomic_t the SIGHUP handler sets; it is cleared
    // before ProcessConfigFile runs, as PostgreSQL's own loops do, on the main thread.
    unsafe {
        if std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0 {
            std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}
