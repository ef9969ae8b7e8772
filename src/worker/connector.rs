//! A connector's worker: one per enabled connector.
//!
//! It owns the connector's connection to the source (the seed of its replication stream): it
//! connects, makes sure the connector's publication exists, reports `running`, and then checks
//! every second that it should still run (not paused, not dropped) and every few seconds that the
//! source still answers. When the source goes away (restart, network) it records the error in
//! the catalog — visible in `livesync.connectors` — and reconnects with capped exponential
//! back-off; it never exits because of the source, so a flapping source cannot make it
//! crash-loop.

use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use super::{Backoff, LOCK_CLASS_CONNECTOR};
use crate::catalog;
use crate::runtime::{block_on_until_shutdown, new_runtime};
use crate::source::connect;
use crate::source::conninfo::SourceConninfo;

const TICK: Duration = Duration::from_secs(1);
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// What the worker should do after checking its catalog row.
enum Verdict {
    Run {
        name: String,
        conninfo: String,
        publication: String,
        connector: Box<catalog::Connector>,
    },
    Exit,
}

fn read_verdict(id: i32) -> Verdict {
    match super::in_transaction(|| -> crate::error::Result<Verdict> {
        if !catalog::installed() {
            return Ok(Verdict::Exit);
        }
        let Some(c) = catalog::connector_by_id(id)? else {
            return Ok(Verdict::Exit);
        };
        if !c.enabled {
            return Ok(Verdict::Exit);
        }
        let conninfo = catalog::conninfo(id)?.unwrap_or_default();
        Ok(Verdict::Run {
            name: c.name.clone(),
            conninfo,
            publication: c.publication_name.clone(),
            connector: Box::new(c),
        })
    }) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            pgrx::warning!("livesync connector {id}: {}", e.message);
            Verdict::Exit
        }
        Err(e) => {
            pgrx::warning!("livesync connector {id}: {e}");
            Verdict::Exit
        }
    }
}

fn report_error(id: i32, name: &str, message: &str) {
    pgrx::log!("livesync connector \"{name}\": {message}");
    let _ = super::in_transaction(|| catalog::report_error(id, message));
}

fn application_name(name: &str) -> String {
    // application_name keeps printable ASCII only and at most 63 bytes.
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut s = format!("livesync connector {clean}");
    s.truncate(63);
    s
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_connector_main(arg: pg_sys::Datum) {
    super::attach_signals();
    // SAFETY: `arg` is the bgw_main_arg `launch` built from an i32 with into_datum: a by-value Datum,
    // never NULL.
    let id = unsafe { i32::from_datum(arg, false) }.expect("connector worker needs a connector id");
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(super::worker_database()), None);

    // One worker per connector. drop_connector holds this lock (transaction-level) while it
    // removes the connector, so a worker started meanwhile exits here.
    if !matches!(super::try_session_lock(LOCK_CLASS_CONNECTOR, id), Ok(true)) {
        return;
    }
    super::set_worker_session_defaults();
    // SAFETY: MyProcPid is a backend-local global set at process start; a plain read.
    let pid = unsafe { pg_sys::MyProcPid };
    if super::in_transaction(|| catalog::report_worker_started(id, pid)).is_err() {
        return;
    }

    let rt = new_runtime();
    let mut backoff = Backoff::new(MAX_RECONNECT_BACKOFF);
    // Retries of the stream after transient errors on the target (reset by the stream once it
    // commits past what failed).
    let mut retry = Backoff::new(MAX_RECONNECT_BACKOFF);
    // Copies running beside the stream: their exported snapshots stay open across reconnects.
    let mut batches = crate::copy::Batches::default();
    loop {
        let Verdict::Run {
            name,
            conninfo,
            publication,
            connector,
        } = read_verdict(id)
        else {
            break;
        };
        let app = application_name(&name);
        super::set_application_name(&app);

        let info = match SourceConninfo::parse(&conninfo) {
            Ok(i) => i,
            Err(e) => {
                report_error(id, &name, &format!("invalid connection string: {}", e.0));
                if !super::wait(backoff.next_delay()) {
                    break;
                }
                continue;
            }
        };

        let client = match block_on_until_shutdown(&rt, connect::connect(&info, &app)) {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                report_error(id, &name, &e.to_string());
                if !super::wait(backoff.next_delay()) {
                    break;
                }
                continue;
            }
        };

        // The connector's publications: created here rather than in add_connector, so that a
        // rolled-back add_connector leaves nothing behind on the source (and again when one was
        // dropped on the source).
        match crate::copy::ensure_publications(&connector, &client, &rt) {
            None => break,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                report_error(
                    id,
                    &name,
                    &format!("could not create publication \"{publication}\" on the source at \"{}\": {msg}", info.endpoint()),
                );
                if !super::wait(backoff.next_delay()) {
                    break;
                }
                continue;
            }
        }

        let _ = super::in_transaction(|| catalog::report_running(id));
        pgrx::log!(
            "livesync connector \"{name}\" connected to the source at \"{}\"",
            info.endpoint_with_db()
        );
        backoff.reset();

        // Connected: copy what is due, stream once the connector's slot exists (it is created by
        // the first copy batch), and otherwise watch the catalog and the source.
        let mut last_ping = Instant::now();
        let mut current_name = name.clone();
        let mut slot_ready = false;
        let lost = loop {
            let Verdict::Run {
                name,
                conninfo,
                connector,
                ..
            } = read_verdict(id)
            else {
                return;
            };
            if name != current_name {
                super::set_application_name(&application_name(&name));
                current_name = name;
            }
            if !slot_ready {
                // The stream starts from the connector's permanent slot: created here when
                // missing. Copies run beside the stream (stream::run, copy::start_batch).
                match crate::copy::ensure_slot(&connector, &conninfo, &client, &rt) {
                    Ok(true) => slot_ready = true,
                    Ok(false) => {
                        // Lost while tables depend on it: loud and stuck until the user resyncs
                        // them (or drops the connector); check again now and then.
                        if !super::wait(MAX_RECONNECT_BACKOFF) {
                            return;
                        }
                        continue;
                    }
                    Err(e) => break e,
                }
            }
            if slot_ready {
                match super::stream::run(
                    &connector,
                    &conninfo,
                    &application_name(&current_name),
                    &rt,
                    &client,
                    &mut retry,
                    &info,
                    &mut batches,
                ) {
                    super::stream::Outcome::Stop => return,
                    super::stream::Outcome::CopyDue | super::stream::Outcome::Restart => continue,
                    super::stream::Outcome::Failed(e) => {
                        // The source connection is gone, and the copy snapshots with it: the
                        // copies go on under new ones.
                        batches.clear();
                        break e;
                    }
                    super::stream::Outcome::Retry(reason) => {
                        let delay = retry.next_delay();
                        pgrx::log!(
                            "livesync connector \"{current_name}\": rolled back after a transient error, retrying in {} s: {reason}",
                            delay.as_secs()
                        );
                        if !super::wait(delay) {
                            return;
                        }
                        continue;
                    }
                }
            }
            if !super::wait(TICK) {
                return;
            }
            if last_ping.elapsed() >= PING_INTERVAL {
                last_ping = Instant::now();
                crate::copy::reconcile(&connector, &client, &rt);
                let ping = async {
                    tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await
                };
                match block_on_until_shutdown(&rt, ping) {
                    None => return,
                    Some(Ok(Ok(_))) => {}
                    Some(Ok(Err(e))) => break e.to_string(),
                    Some(Err(_)) => break format!("no answer within {} s", PING_TIMEOUT.as_secs()),
                }
            }
        };
        report_error(
            id,
            &current_name,
            &format!(
                "replication from the source at \"{}\" stopped: {lost}",
                info.endpoint()
            ),
        );
        drop(client);
        if !super::wait(backoff.next_delay()) {
            break;
        }
    }
}
