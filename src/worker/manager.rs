//! The manager: one per database with livesync installed.
//!
//! Every 250 ms — or at once when an API call or a child's start/exit sets its latch — it compares
//! the connector catalog with the running connector workers:
//! - an enabled connector without a live worker gets one, unless that connector's worker failed
//!   recently: then it waits out a capped exponential back-off (1 s, 2 s, ... 60 s), so a worker
//!   that crashes on start cannot crash-loop;
//! - a live worker of a paused or dropped connector is told to stop (SIGTERM);
//! - when the extension is dropped, it stops every worker and exits for good;
//! - while the extension's version in the database differs from the library's (a server restarted
//!   with a new library before `ALTER EXTENSION livesync UPDATE`), it runs no connector and logs
//!   one WARNING saying what to run; the connectors start once the versions match.
//!
//! Workers survive a manager restart: the next manager adopts them (it finds them through the
//! catalog's `worker_pid` and `pg_stat_activity`) instead of starting duplicates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker};
use pgrx::prelude::*;
use pgrx::PgLogLevel;

use super::{Backoff, BACKEND_TYPE_CONNECTOR, BACKEND_TYPE_MANAGER, LOCK_CLASS_MANAGER};
use crate::catalog;

/// Short enough that a wake-up lost in a start-up race (an API call that could not yet see a
/// just-started manager) costs little; a reconcile is one catalog query.
const NAPTIME: Duration = Duration::from_millis(250);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);
/// A worker that ran at least this long before exiting is considered healthy: its restart is
/// immediate and the back-off starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

struct Child {
    handle: Option<DynamicBackgroundWorker>,
    started_at: Instant,
    backoff: Backoff,
    not_before: Instant,
}

impl Child {
    fn new() -> Self {
        let now = Instant::now();
        Child {
            handle: None,
            started_at: now,
            backoff: Backoff::new(MAX_RESTART_BACKOFF),
            not_before: now,
        }
    }

    /// Our handle says the worker is starting or running.
    fn handle_alive(&self) -> bool {
        match &self.handle {
            Some(h) => match h.pid() {
                Ok(_) => true,
                Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted) => true,
                Err(_) => false,
            },
            None => false,
        }
    }
}

fn start_connector_worker(connector_id: i32) -> Option<DynamicBackgroundWorker> {
    // No restart by the postmaster: the manager restarts it, with back-off.
    super::launch(
        &format!("livesync connector {connector_id}"),
        BACKEND_TYPE_CONNECTOR,
        "livesync_connector_main",
        connector_id,
        // SAFETY: MyDatabaseId is a backend-local global set when this manager connected to its database;
        // a plain read on the process's only thread.
        unsafe { pg_sys::MyDatabaseId },
        None,
        true,
    )
}

fn terminate_pid(pid: i32) {
    super::terminate(pid);
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_manager_main(_arg: pg_sys::Datum) {
    super::attach_signals();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(super::worker_database()), None);

    // Exit cleanly (exit code 0: the postmaster will not restart us) when there is nothing to do.
    match super::in_transaction(catalog::installed) {
        Ok(true) => {}
        _ => return,
    }
    match super::try_session_lock(LOCK_CLASS_MANAGER, 0) {
        Ok(true) => {}
        _ => {
            // Another manager serves this database. We were started because somebody wanted it
            // woken (an API call that could not see it yet in pg_stat_activity): pass it on.
            if let Ok(Ok(Some(pid))) = super::in_transaction(catalog::manager_pid) {
                super::wake(pid);
            }
            return;
        }
    }
    super::set_worker_session_defaults();
    super::set_application_name(BACKEND_TYPE_MANAGER);
    log!("livesync manager started");

    let mut children: HashMap<i32, Child> = HashMap::new();
    // The catalog version last found different from the library's (reported once).
    let mut mismatch: Option<Option<String>> = None;
    loop {
        match super::in_transaction(|| {
            if !catalog::installed() {
                return Ok(None);
            }
            let version = catalog::installed_version();
            if version.as_deref() != Some(catalog::LIBRARY_VERSION) {
                return catalog::connector_processes()
                    .map(|pids| Some(Catalog::OtherVersion(version, pids)));
            }
            catalog::connector_worker_states().map(|s| Some(Catalog::Current(s)))
        }) {
            Ok(Ok(Some(Catalog::Current(states)))) => {
                if let Some(v) = mismatch.take() {
                    log!(
                        "livesync extension in this database is now at version {} (was {}); starting its connectors",
                        catalog::LIBRARY_VERSION,
                        v.as_deref().unwrap_or("unknown")
                    );
                }
                reconcile(&mut children, &states)
            }
            Ok(Ok(Some(Catalog::OtherVersion(version, pids)))) => {
                hold_for_update(&mut children, &pids);
                if mismatch.as_ref() != Some(&version) {
                    report_version_mismatch(version.as_deref());
                    mismatch = Some(version);
                }
            }
            Ok(Ok(None)) => {
                log!("livesync was dropped from this database; manager exiting");
                for (_, c) in children.drain() {
                    if let Some(h) = c.handle {
                        let _ = h.terminate();
                    }
                }
                return;
            }
            Ok(Err(e)) => pgrx::warning!("livesync manager: {}", e.message),
            Err(e) => pgrx::warning!("livesync manager: {e}"),
        }
        if !super::wait(NAPTIME) {
            break;
        }
    }
    log!("livesync manager shutting down");
}

/// What the manager found in its database's catalog.
enum Catalog {
    /// The catalog is at this library's version: the connectors' desired and actual states.
    Current(Vec<catalog::ConnectorWorkerState>),
    /// The catalog is at another version (or none is recorded), and these connector processes run.
    OtherVersion(Option<String>, Vec<i32>),
}

/// The library and the catalog are of different versions: a server restarted with a new library
/// before `ALTER EXTENSION livesync UPDATE`, or an UPDATE run before the restart. Neither this
/// code on that catalog nor the old code on the new catalog is known to work, so no connector runs
/// until they match; the replication slots keep the source's changes meanwhile.
fn hold_for_update(children: &mut HashMap<i32, Child>, pids: &[i32]) {
    for (_, c) in children.drain() {
        if let Some(h) = c.handle {
            let _ = h.terminate();
        }
    }
    for &pid in pids {
        terminate_pid(pid);
    }
}

fn report_version_mismatch(version: Option<&str>) {
    crate::error::LivesyncError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "livesync library version {} does not match the extension's version {} in this database; its connectors wait",
            catalog::LIBRARY_VERSION,
            version.unwrap_or("(none)")
        ),
    )
    .hint(
        "After installing a new livesync package, restart the server, then run ALTER EXTENSION livesync UPDATE in every database that has livesync.",
    )
    .report(PgLogLevel::WARNING);
}

fn reconcile(children: &mut HashMap<i32, Child>, states: &[catalog::ConnectorWorkerState]) {
    let now = Instant::now();
    for s in states {
        let child = children.entry(s.id).or_insert_with(Child::new);
        let alive = child.handle_alive() || s.live_worker_pid.is_some();

        if s.enabled && !alive {
            if child.handle.take().is_some() {
                // Our worker exited although nobody asked it to: back off before the next try.
                let delay = if now.duration_since(child.started_at) >= HEALTHY_RUN {
                    child.backoff.reset();
                    Duration::ZERO
                } else {
                    child.backoff.next_delay()
                };
                child.not_before = now + delay;
                if !delay.is_zero() {
                    log!(
                        "livesync connector {} worker exited; restarting in {} s",
                        s.id,
                        delay.as_secs()
                    );
                }
            }
            if now >= child.not_before {
                child.handle = start_connector_worker(s.id);
                child.started_at = now;
            }
        } else if !s.enabled && alive {
            stop(child, s.live_worker_pid);
        }
    }
    // Connectors that were dropped.
    let known: Vec<i32> = states.iter().map(|s| s.id).collect();
    children.retain(|id, child| {
        if known.contains(id) {
            return true;
        }
        stop(child, None);
        false
    });
}

fn stop(child: &mut Child, pid: Option<i32>) {
    if let Some(h) = child.handle.take() {
        let _ = h.terminate();
    } else if let Some(pid) = pid {
        terminate_pid(pid);
    }
    child.backoff.reset();
    child.not_before = Instant::now();
}
