//! A copy worker: loads ranges of a connector's tables (see `src/copy/`).
//!
//! Started by the connector's worker while ranges are to be loaded. It claims ranges one at a
//! time (`livesync.copy_range`), opens a source transaction that imports the range's exported
//! snapshot, and streams the range's `COPY … TO STDOUT` into the target with COPY FROM — the
//! rows and the range's "done" mark (with the source table's file node under that snapshot)
//! committed in one target transaction, with `session_replication_role = replica`. When the
//! source goes away mid-range (a restart, a lost connection) or the snapshot is gone, the range
//! is given back, to be loaded under a newer snapshot; a range that fails on the target puts its
//! table in `error` (the other tables go on). The worker loading a table's last range finishes
//! the table (`copy::finish_table`: put right, key, `loaded`). It exits when no range is left.

use std::collections::HashMap;

use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker};
use pgrx::prelude::*;

use super::BACKEND_TYPE_COPY;
use crate::catalog::{self, ranges, tables};
use crate::copy::{load, target};
use crate::runtime::{block_on_until_shutdown, new_runtime};
use crate::source::conninfo::SourceConninfo;
use crate::source::quote_ident;
use crate::source::table::TableDef;

/// Start a copy worker for connector `connector_id` (called by its connector worker, which
/// relaunches failed ones itself).
pub fn start(connector_id: i32) -> Option<DynamicBackgroundWorker> {
    super::launch(
        &format!("livesync copy {connector_id}"),
        BACKEND_TYPE_COPY,
        "livesync_copy_main",
        connector_id,
        // SAFETY: MyDatabaseId is a backend-local global set when this (connector) worker connected to its
        // database; a plain read on the process's only thread.
        unsafe { pg_sys::MyDatabaseId },
        None,
        true,
    )
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_copy_main(arg: pg_sys::Datum) {
    super::attach_signals();
    // SAFETY: `arg` is the bgw_main_arg `launch` built from an i32 with into_datum: a by-value Datum,
    // never NULL.
    let connector_id =
        unsafe { i32::from_datum(arg, false) }.expect("copy worker needs a connector id");
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(super::worker_database()), None);
    super::set_worker_session_defaults();

    let Ok(Ok(Some(conninfo))) = super::in_transaction(|| catalog::conninfo(connector_id)) else {
        return;
    };
    let Ok(info) = SourceConninfo::parse(&conninfo) else {
        return;
    };
    let name = match super::in_transaction(|| catalog::connector_by_id(connector_id)) {
        Ok(Ok(Some(c))) => c.name,
        _ => return,
    };
    super::set_application_name(&format!("livesync copy {name}"));

    let rt = new_runtime();
    // The source transaction importing the current snapshot, and table definitions read in it.
    let mut session: Option<(String, tokio_postgres::Client)> = None;
    let mut defs: HashMap<i32, TableDef> = HashMap::new();
    // Snapshots found gone: their ranges wait for the connector's worker to move them.
    let mut dead: Vec<String> = Vec::new();
    let slot = match super::in_transaction(|| catalog::connector_by_id(connector_id)) {
        Ok(Ok(Some(c))) => c.slot_name,
        _ => return,
    };
    let app = format!("livesync copy {name}");
    let source = crate::copy::resume::Source {
        conninfo: &conninfo,
        info: &info,
        rt: &rt,
        app: &app,
        slot: &slot,
    };
    let mut backoff = super::Backoff::new(std::time::Duration::from_secs(10));
    // Another copy worker took over the ranges left while this one built a key: exit after it.
    let mut handed_over = false;

    while !crate::runtime::shutdown_requested() {
        let claimed = match super::in_transaction(|| ranges::claim_next(connector_id, &dead)) {
            Ok(Ok(Some(c))) => c,
            _ => {
                // Nothing left to load: finish tables whose last range is in but whose finisher
                // died first (or could not put them right yet) — without holding a snapshot.
                drop(session.take());
                if let Ok(Ok(unfinished)) =
                    super::in_transaction(|| ranges::finished_tables(connector_id, true))
                {
                    for (id, rows, bytes) in unfinished {
                        crate::copy::finish_table(id, rows, bytes, Some(&source));
                    }
                }
                break;
            }
        };
        let Ok(Ok(Some(t))) = super::in_transaction(|| tables::by_id(claimed.table_id)) else {
            continue;
        };

        if session.as_ref().is_none_or(|(s, _)| s != &claimed.snapshot) {
            defs.clear();
            let app = format!("livesync copy {name}");
            let opened = block_on_until_shutdown(
                &rt,
                crate::copy::snapshot::import(&info, &app, &claimed.snapshot),
            );
            match opened {
                None => break,
                Some(Ok(client)) => session = Some((claimed.snapshot.clone(), client)),
                Some(Err(e)) => {
                    // Typically "invalid snapshot identifier": the connector's worker that
                    // exported it is gone, or the source restarted. The range waits for a newer
                    // snapshot (the loaded ranges are kept; see copy::resume).
                    pgrx::log!("livesync: could not import copy snapshot {}: {e}; range left for a newer one", claimed.snapshot);
                    let _ = super::in_transaction(|| {
                        ranges::release(claimed.table_id, claimed.range_no)
                    });
                    dead.push(claimed.snapshot.clone());
                    session = None;
                    continue;
                }
            }
        }
        let client = &session.as_ref().unwrap().1;

        if !defs.contains_key(&t.id) {
            let source_q = format!(
                "{}.{}",
                quote_ident(&t.source_schema),
                quote_ident(&t.source_name)
            );
            match block_on_until_shutdown(&rt, crate::source::table::describe(client, &source_q)) {
                None => break,
                Some(Ok(Some(d))) => {
                    defs.insert(t.id, d);
                }
                Some(Ok(None)) => {
                    fail(t.id, "the source table no longer exists");
                    continue;
                }
                Some(Err(e)) => {
                    fail(t.id, &format!("could not read the source table: {e}"));
                    continue;
                }
            }
        }
        let def = &defs[&t.id];
        // The file node under this snapshot: a rewrite between two snapshots moves every row.
        let file_node = match block_on_until_shutdown(
            &rt,
            client.query_one(
                "SELECT pg_catalog.pg_relation_filenode($1::text::regclass)::int8",
                &[&def.qualified()],
            ),
        ) {
            None => break,
            Some(Ok(r)) => r.get::<_, Option<i64>>(0),
            Some(Err(_)) => None,
        };
        let pages = (!claimed.whole_table).then_some((claimed.start_page, claimed.end_page));
        let copy_sql = def.copy_out_sql(pages, claimed.binary);
        let columns: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
        let target_q = target::qualified(&t.target_schema, &t.target_name);

        let result = super::in_transaction(|| -> Result<(), String> {
            // Crash-sensitive: the range's rows and its "done" mark commit together. The range
            // must still be the one claimed: a table re-planned meanwhile (a new snapshot, after
            // its worker restarted) truncated the target and replaced its ranges.
            let current = crate::catalog::first_value_rw::<bool>(
                "SELECT true FROM livesync.copy_range WHERE table_id = $1 AND range_no = $2 AND snapshot = $3 AND NOT done FOR UPDATE",
                &[claimed.table_id.into(), claimed.range_no.into(), claimed.snapshot.as_str().into()],
            )
            .map_err(|e| e.message)?;
            if current != Some(true) {
                return Ok(());
            }
            let relid = load::begin(&target_q)?;
            let stream = match block_on_until_shutdown(&rt, client.copy_out(copy_sql.as_str())) {
                None => return Err("copy worker shutting down".into()),
                Some(r) => r.map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                })?,
            };
            let route = load::route_for(relid);
            let (rows, bytes) = load::load(&rt, relid, route, &columns, stream, claimed.binary);
            ranges::mark_done(claimed.table_id, claimed.range_no, rows, bytes, file_node)
                .map_err(|e| e.message)?;
            Ok(())
        });
        // The source went away mid-range (restart, lost connection): not the table's fault.
        let source_lost = session.as_ref().is_some_and(|(_, c)| c.is_closed());
        if source_lost && !matches!(result, Ok(Ok(()))) {
            pgrx::log!("livesync: the source went away while copying a range of table {}; it is loaded again later", t.id);
            let _ = super::in_transaction(|| ranges::release(claimed.table_id, claimed.range_no));
            session = None;
            if !super::wait(backoff.next_delay()) {
                break;
            }
            continue;
        }
        match result {
            Ok(Ok(())) => {
                backoff.reset();
                // The worker loading a table's last range builds its key (the stream must not
                // wait for that) and marks it loaded — while a new copy worker takes over the
                // ranges still to load, so that loading goes on during the key build (as many
                // processes busy as before: this one, building, and its successor, loading).
                if let Ok(Ok(Some((rows, bytes)))) =
                    super::in_transaction(|| ranges::table_finished(t.id))
                {
                    // The source transaction (and the snapshot it holds) is not needed for that.
                    session = None;
                    let more = super::in_transaction(|| ranges::claimable(connector_id, None))
                        .ok()
                        .and_then(|r| r.ok())
                        .unwrap_or(0);
                    if more > 0 && start(connector_id).is_some() {
                        handed_over = true;
                    }
                    crate::copy::finish_table(t.id, rows, bytes, Some(&source));
                    if handed_over {
                        break;
                    }
                }
                // The coordinator builds the key and marks the table copied once its last range
                // is in (or the stream replays a loaded table's spool): tell it now rather than
                // at its next look.
                if let Ok(Ok(Some(pid))) =
                    super::in_transaction(|| catalog::live_worker_pid(connector_id))
                {
                    super::wake(pid);
                }
            }
            Ok(Err(e)) => {
                fail(t.id, &e);
                // The source transaction may be unusable after a failed COPY: start a new one.
                session = None;
            }
            Err(e) => {
                pgrx::log!(
                    "livesync: copy of table {} failed: {} (SQLSTATE {})",
                    t.id,
                    e.message,
                    e.sqlstate
                );
                let _ = super::in_transaction(|| {
                    tables::mark_copy_error(
                        t.id,
                        &tables::ErrorRecord {
                            sqlstate: Some(&e.sqlstate),
                            message: &e.message,
                            detail: e.detail.as_deref(),
                            hint: e.hint.as_deref(),
                            context: Some(&format!("copying into {target_q}")),
                        },
                    )
                });
                session = None;
            }
        }
    }
}

fn fail(table_id: i32, message: &str) {
    pgrx::log!("livesync: copy of table {table_id} failed: {message}");
    let _ = super::in_transaction(|| tables::mark_error(table_id, message, None));
}
