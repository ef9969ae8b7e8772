//! The initial copy of a connector's tables (states documented in `src/catalog/tables.rs`).
//!
//! Run by the connector's worker whenever tables are due ([`copy_due_tables`]): one exported
//! snapshot per batch (see [`snapshot`]) — so tables added in quick succession share it — and one
//! source connection that imports it (`SET TRANSACTION SNAPSHOT`) and streams each table's
//! `COPY … TO STDOUT` into the target through [`load`]. Each table is loaded, its key built and
//! its state set to `copied` in one target transaction, with `session_replication_role =
//! replica` so foreign keys and user triggers stay quiet.
//!
//! Not yet here (issue 3): parallel copy workers and ctid ranges, binary format.

pub mod load;
pub mod snapshot;
pub mod target;

use pgrx::prelude::*;

use crate::catalog::tables::{self, SyncTable};
use crate::catalog::Connector;
use crate::runtime::block_on_until_shutdown;
use crate::source::conninfo::SourceConninfo;
use crate::source::{connect, quote_ident, quote_literal};
use crate::worker::in_transaction;

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn record_error(t: &SyncTable, message: &str, hint: Option<&str>) {
    pgrx::log!(
        "livesync: copy of {} failed: {message}",
        qualified(&t.source_schema, &t.source_name)
    );
    let _ = in_transaction(|| tables::mark_error(t.id, message, hint));
}

/// Copy every table of connector `c` that is due. Returns false if the worker must exit.
pub fn copy_due_tables(c: &Connector, conninfo: &str, info: &SourceConninfo, rt: &tokio::runtime::Runtime) -> bool {
    let due = match in_transaction(|| tables::due_for_copy(c.id)) {
        Ok(Ok(d)) => d,
        _ => return true,
    };
    if due.is_empty() {
        return true;
    }
    for t in &due {
        let _ = in_transaction(|| tables::mark_copying(t.id));
    }

    // The first batch creates the connector's permanent slot and copies from its snapshot: the
    // change stream then starts exactly where every copy of that batch ends. Later batches use a
    // temporary slot's snapshot, which lies after the permanent slot's start, so the stream has
    // every change the copy misses (see the hand-off in src/apply/).
    let slot_exists = match block_on_until_shutdown(rt, slot_exists(info, &c.slot_name)) {
        None => return false,
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            pgrx::log!("livesync: could not check for slot \"{}\": {e}", c.slot_name);
            return true;
        }
    };
    let (slot, temporary) =
        if slot_exists { (format!("{}_copy", c.slot_name), true) } else { (c.slot_name.clone(), false) };
    let snap = match snapshot::ExportedSnapshot::create(conninfo, &format!("livesync copy {}", c.name), &slot, temporary) {
        Ok(s) => s,
        Err(e) => {
            for t in &due {
                record_error(
                    t,
                    &format!("could not export a snapshot from the source: {e}"),
                    Some("Check that the source has a free replication slot and WAL sender (livesync.check_source)."),
                );
            }
            return true;
        }
    };

    // One source transaction importing the snapshot serves every table of the batch.
    let app = format!("livesync copy {}", c.name);
    let client = match block_on_until_shutdown(rt, async {
        let client = connect::connect(info, &app).await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&snap.name)
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(client)
    }) {
        None => return false,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            for t in &due {
                record_error(t, &format!("could not open the copy connection: {e}"), None);
            }
            return true;
        }
    };

    for t in &due {
        if crate::runtime::shutdown_requested() {
            return false;
        }
        copy_one(t, &client, &snap, rt);
    }
    drop(client);
    drop(snap);
    true
}

async fn slot_exists(info: &SourceConninfo, slot: &str) -> Result<bool, String> {
    let client = connect::connect(info, "livesync").await.map_err(|e| e.to_string())?;
    let r = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.is_some())
}

fn copy_one(t: &SyncTable, client: &tokio_postgres::Client, snap: &snapshot::ExportedSnapshot, rt: &tokio::runtime::Runtime) {
    let source_q = qualified(&t.source_schema, &t.source_name);
    let target_q = qualified(&t.target_schema, &t.target_name);

    // The source's column list, read under the snapshot: the table's shape as of the copy.
    let def = match block_on_until_shutdown(rt, crate::source::table::describe(client, &source_q)) {
        None => return,
        Some(Ok(Some(def))) => def,
        Some(Ok(None)) => {
            record_error(t, &format!("source table {source_q} no longer exists"), Some("livesync.remove_table() it, or recreate it on the source."));
            return;
        }
        Some(Err(e)) => {
            record_error(t, &format!("could not read source table {source_q}: {e}"), None);
            return;
        }
    };
    let columns: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
    let copy_sql = format!("COPY {source_q} {} TO STDOUT", def.column_list());

    let result = in_transaction(|| -> Result<(), (String, Option<String>)> {
        let plain = |e: String| (e, None);
        // Crash-sensitive: the rows, the key and the 'copied' mark commit together, or not at all.
        Spi::run("SET LOCAL session_replication_role = replica").map_err(|e| plain(e.to_string()))?;
        // Checks the target still fits (or creates it, for tables that joined the publication
        // without add_table): a failure here is recorded on the table like any copy error.
        let created_key = target::prepare(&def, &t.target_schema, &t.target_name).map_err(|e| (e.message, e.hint))?;
        let relid = Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::oid", &[target_q.as_str().into()])
            .map_err(|e| plain(e.to_string()))?
            .ok_or_else(|| plain(format!("target table {target_q} does not exist")))?;
        let stream = match block_on_until_shutdown(rt, client.copy_out(copy_sql.as_str())) {
            None => return Err(plain("worker shutting down".into())),
            Some(r) => r.map_err(|e| plain(e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())))?,
        };
        let (rows, bytes) = load::load(rt, relid, &columns, stream);
        let primary = if created_key.is_some() { def.key_is_primary } else { t.build_key_primary };
        if let Some(key) = t.build_key.as_ref().or(created_key.as_ref()) {
            Spi::run(&crate::source::table::create_key_sql(&target_q, key, primary)).map_err(|e| plain(e.to_string()))?;
        }
        tables::mark_copied(t.id, rows, bytes, &snap.lsn).map_err(|e| (e.message, e.hint))?;
        pgrx::log!("livesync: copied {rows} rows of {source_q} into {target_q} (snapshot at {})", snap.lsn);
        Ok(())
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err((e, hint))) => record_error(t, &e, hint.as_deref()),
        Err(e) => record_error(t, &e, None),
    }
}

/// Follow the connector's publication on the source: a table added to it directly (`ALTER
/// PUBLICATION … ADD TABLE`) is synced like `add_table` would (same schema and name on the
/// target, created if missing at copy time); one dropped from it stops syncing (target data
/// stays). Returns true when the table set changed.
pub fn discover(c: &Connector, client: &tokio_postgres::Client, rt: &tokio::runtime::Runtime) -> bool {
    let published = match block_on_until_shutdown(rt, async {
        client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
                &[&c.publication_name],
            )
            .await
    }) {
        Some(Ok(rows)) => rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>(),
        _ => return false,
    };
    let changed = in_transaction(|| -> crate::error::Result<bool> {
        if !crate::worker::try_xact_lock(crate::worker::LOCK_CLASS_TABLES, c.id) {
            return Ok(false); // add_table/remove_table in progress: look again next time
        }
        let synced = tables::stream_tables(c.id)?;
        let mut changed = false;
        for (schema, name) in &published {
            if !synced.iter().any(|t| &t.source_schema == schema && &t.source_name == name) {
                if tables::find_by_target(schema, name)?.is_some() {
                    continue; // that target already receives another table; add_table reports this
                }
                pgrx::log!("livesync: {} joined publication \"{}\"; syncing it", qualified(schema, name), c.publication_name);
                tables::insert(&tables::NewSyncTable {
                    connector_id: c.id,
                    source_schema: schema,
                    source_name: name,
                    target_schema: schema,
                    target_name: name,
                    build_key: None,
                    build_key_primary: true,
                    est_rows: 0,
                    est_bytes: 0,
                })?;
                changed = true;
            }
        }
        for t in &synced {
            if !published.iter().any(|(s, n)| s == &t.source_schema && n == &t.source_name) {
                pgrx::log!(
                    "livesync: {} left publication \"{}\"; no longer syncing it",
                    qualified(&t.source_schema, &t.source_name),
                    c.publication_name
                );
                tables::delete(t.id)?;
                changed = true;
            }
        }
        Ok(changed)
    });
    matches!(changed, Ok(Ok(true)))
}
