//! livesync's settings (postgresql.conf, `ALTER SYSTEM`, reloadable), one static each.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Copy workers per connector batch: tables (and ranges of large tables) copied at once.
pub static MAX_COPY_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);

/// Tables larger than this (MB) are split into ctid ranges of this size, copied in parallel.
pub static COPY_RANGE_MB: GucSetting<i32> = GucSetting::<i32>::new(256);

pub fn register() {
    GucRegistry::define_int_guc(
        c"livesync.max_copy_workers",
        c"Copy workers a connector runs at once for the initial copy.",
        c"Several tables, and ranges of large tables, are copied in parallel under one exported snapshot. Each copy worker takes a max_worker_processes slot and a connection to the source.",
        &MAX_COPY_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"livesync.copy_range_mb",
        c"Size of the ctid ranges a large table is split into for its initial copy.",
        c"A table bigger than this is copied as several ranges by several copy workers (TID range scans, PostgreSQL 14 or later sources).",
        &COPY_RANGE_MB,
        1,
        1 << 20,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
}
