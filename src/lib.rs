//! livesync: keep tables of a target PostgreSQL/TimescaleDB database in sync with a source
//! PostgreSQL through logical replication.
//!
//! This file only wires the modules together and refuses to load unless preloaded:
//! - [`api`]: the thin SQL-callable functions (`livesync.add_connector`, ...);
//! - [`catalog`]: the only code reading and writing the `livesync.*` tables;
//! - [`worker`]: the launcher, the per-database manager and the per-connector workers;
//! - [`source`]: pure Rust, no pgrx — connection strings, connecting, prerequisite checks;
//! - [`runtime`]: driving tokio from a PostgreSQL process without missing a cancel or SIGTERM;
//! - [`error`]: PostgreSQL-style errors.

use pgrx::prelude::*;

pub mod api;
pub mod apply;
pub mod catalog;
pub mod copy;
pub mod error;
pub mod guc;
pub mod runtime;
pub mod sequences;
pub mod source;
pub mod timescale;
pub mod verify;
pub mod walrcv;
pub mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Called when the library is loaded. livesync runs background workers, which can only be
/// registered while the postmaster loads `shared_preload_libraries`; loaded any other way (by
/// `CREATE EXTENSION` or a function call in a server that was not configured for it) it refuses
/// with a hint saying exactly what to add, instead of half-working without its workers.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: process_shared_preload_libraries_in_progress is a backend-local global the server sets while
    // it loads shared_preload_libraries; a plain read on the process's only thread.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        error::LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "livesync must be loaded via shared_preload_libraries",
        )
        .detail("livesync runs background workers, which PostgreSQL can only register at server start.")
        .hint(
            "Add shared_preload_libraries = 'livesync' to postgresql.conf (append livesync to the list, comma-separated, if the setting already names other libraries) and restart the server.",
        )
        .raise();
    }
    guc::register();
    verify::cut::init();
    worker::launcher::register();
}
