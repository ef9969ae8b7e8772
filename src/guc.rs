//! livesync's settings (postgresql.conf, `ALTER SYSTEM`, reloadable), one static each.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Copy workers per connector batch: tables (and ranges of large tables) copied at once; 0 picks
/// [`copy_workers`]' automatic value.
pub static MAX_COPY_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The copy workers a batch may run: `livesync.max_copy_workers`, or when it is 0, half the
/// target machine's CPUs (at least 1, at most 8). Each copy stream keeps about one target core
/// busy (COPY parsing, heap and WAL writes) and the key builds and the change stream need room
/// too: measured on 2 cores shared with the source, one stream loads the benchmark's 917 MB in
/// 13.7–14.3 s, four in 14.5–14.9 s (ranges of one table contend for the same relation).
pub fn copy_workers() -> usize {
    match MAX_COPY_WORKERS.get() {
        n if n > 0 => n as usize,
        _ => std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .clamp(1, 8),
    }
}

/// Tables larger than this (MB) are split into ctid ranges of this size, copied in parallel.
pub static COPY_RANGE_MB: GucSetting<i32> = GucSetting::<i32>::new(256);

/// The longest a copy keeps one source snapshot, in seconds. A copy's snapshot pins the source's
/// xmin horizon (VACUUM cannot remove what it might still see), so past this age the ranges not
/// started yet move to a fresh snapshot, and the rows changed in between are read again at the
/// end (`src/copy/resume.rs`). A range already being read keeps its snapshot to its end.
pub static MAX_SNAPSHOT_AGE: GucSetting<i32> = GucSetting::<i32>::new(300);

/// How often (seconds) a streaming connector brings its target sequences up to the source's
/// values; 0: only when a table finishes its copy and on `livesync.sync_sequences()`.
pub static SEQUENCE_SYNC_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

/// Stream large transactions of PostgreSQL 14+ sources while they run (protocol 2). Off by
/// default, like native subscriptions: measured here, it costs 10–20% on streams of small
/// transactions and on huge ones (spooled, then replayed), and pays off where the source's disk
/// or memory is the constraint.
pub static STREAM_IN_PROGRESS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Let expressions carried over from the source (defaults, generated columns, index expressions
/// and predicates, domain constraints) call functions and operators that are not built in but
/// exist on the target. Off by default: the source is another trust domain (see
/// `src/copy/guard.rs`). Superuser-only.
pub static TRUST_SOURCE_FUNCTIONS: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"livesync.trust_source_functions",
        c"Let expressions copied from a source's definitions call functions that are not built in.",
        c"Column defaults, generated columns, index expressions and predicates and domain constraints read from the source may then call any function or operator that exists on the target; by default only built-in ones.",
        &TRUST_SOURCE_FUNCTIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"livesync.stream_in_progress",
        c"Have PostgreSQL 14+ sources stream large transactions while they run.",
        c"The source then sends a transaction beyond its logical_decoding_work_mem in blocks instead of decoding it to its own disk at commit; livesync spools it on the target until the commit. Takes effect when a connector's stream (re)starts.",
        &STREAM_IN_PROGRESS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"livesync.max_copy_workers",
        c"Copy workers a connector runs at once for the initial copy.",
        c"Several tables, and ranges of large tables, are copied in parallel under one exported snapshot. Each copy worker takes a max_worker_processes slot and a connection to the source. 0 (the default) means half the target machine's CPUs, at least 1 and at most 8.",
        &MAX_COPY_WORKERS,
        0,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"livesync.sequence_sync_interval",
        c"How often a streaming connector brings its target sequences up to the source's values.",
        c"Sequences owned by synced tables' columns and those added with livesync.add_sequence() are set to the source's value when a table finishes its copy, then every this many seconds while the connector streams (never moving backwards on the target); 0 turns the periodic refresh off. livesync.sync_sequences() does it on demand.",
        &SEQUENCE_SYNC_INTERVAL,
        0,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"livesync.max_snapshot_age",
        c"Longest time a copy reads the source under one snapshot.",
        c"Past it, the ranges of a table not started yet are read under a fresh snapshot and the rows changed in between are read again, so a long copy does not hold back VACUUM on the source. A range being read keeps its snapshot until it is loaded (see livesync.copy_range_mb). Tables without a primary key or replica identity index keep one snapshot to the end of their copy.",
        &MAX_SNAPSHOT_AGE,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
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
