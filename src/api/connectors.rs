//! `livesync.add_connector`, `check_source`, `pause_connector`, `resume_connector`,
//! `rename_connector`, `drop_connector`.

use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::catalog;
use crate::error::{LivesyncError, OrRaise, Result};
use crate::runtime::{block_on_interruptible, new_runtime};
use crate::source::checks::{self, SourceFacts, CONNECTION_CHECK};
use crate::source::conninfo::SourceConninfo;
use crate::source::{connect, quote_ident, quote_literal};
use crate::worker::{self, LOCK_CLASS_CONNECTOR};

/// How long `drop_connector` waits for the connector's worker to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Functions that receive a conninfo keep the statement text (which contains it, password
/// included) out of the server log should they fail: PostgreSQL logs the statement of a failed
/// query (`log_min_error_statement`), and that log line is not ours to redact otherwise.
fn hide_statement_from_error_log() {
    // SAFETY: debug_query_string is a backend-local global, read (NULL-checked) only by error reporting and
    // set again for each query; the string it pointed to stays owned by its caller.
    unsafe {
        pg_sys::debug_query_string = std::ptr::null();
    }
}

fn parse_conninfo(conninfo: &str) -> Result<SourceConninfo> {
    SourceConninfo::parse(conninfo).map_err(|e| {
        LivesyncError::invalid_parameter("invalid connection string")
            .detail(format!("{}.", e.0))
            .hint("Use libpq key=value syntax (host=... port=... dbname=... user=... password=...) or a postgresql:// URI.")
    })
}

fn validate_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() {
        return Err(LivesyncError::invalid_parameter(format!(
            "{what} must not be empty"
        )));
    }
    if name.len() > 63 {
        return Err(
            LivesyncError::invalid_parameter(format!("{what} \"{name}\" is too long"))
                .detail(format!("It has {} bytes; the limit is 63.", name.len())),
        );
    }
    if name.chars().any(char::is_control) {
        return Err(LivesyncError::invalid_parameter(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Connect and read the prerequisite facts. Errors are connection errors or query errors.
fn probe(info: &SourceConninfo, app: &str) -> Result<SourceFacts> {
    let rt = new_runtime();
    block_on_interruptible(&rt, async {
        let client = connect::connect(info, app)
            .await
            .map_err(|e| LivesyncError::from_connect(&e))?;
        SourceFacts::read(&client)
            .await
            .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))
    })
}

/// The target database's encoding.
fn target_encoding() -> String {
    // SAFETY: GetDatabaseEncodingName returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }
        .to_string_lossy()
        .into_owned()
}

/// Wake this database's manager once the current transaction commits (or start it if none runs),
/// so workers follow a catalog change at once rather than at the next poll.
fn wake_manager_after_commit() {
    // No manager runs (the extension was just created, or it exited): the launcher starts it.
    let pid = catalog::manager_pid()
        .ok()
        .flatten()
        .or_else(|| catalog::launcher_pid().ok().flatten());
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        if let Some(pid) = pid {
            worker::wake(pid);
        }
    });
}

/// Called at the end of `CREATE EXTENSION`: start this database's manager once it commits.
#[pg_extern(name = "_ensure_manager")]
fn ensure_manager() {
    wake_manager_after_commit();
}

#[pg_extern]
fn add_connector(conninfo: &str, name: default!(Option<&str>, "NULL")) -> String {
    hide_statement_from_error_log();
    let info = parse_conninfo(conninfo).or_raise();
    let name = name.map(str::to_string).unwrap_or_else(|| info.dbname());
    validate_name(&name, "connector name").or_raise();
    if catalog::connector_by_name(&name).or_raise().is_some() {
        LivesyncError::connector_exists(&name).raise();
    }

    // Each connector binds its worker to a replication origin of its own, and the target can
    // hold only LIMIT_SETTING of them in use: say so now rather than leave a worker that can
    // never start.
    let setting = crate::apply::origin::LIMIT_SETTING;
    let (in_use, limit) = crate::apply::origin::headroom(&catalog::origin_names().or_raise());
    if in_use + 1 > limit {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "no replication origin is free on the target for another connector",
        )
        .detail(format!(
            "Replication origins in use or claimed by connectors: {in_use}; {setting} on the target: {limit}."
        ))
        .hint(format!("Raise {setting} on the target (postgresql.conf, then restart the server), or drop a connector or subscription you no longer need."))
        .raise();
    }

    let facts = probe(&info, "livesync add_connector").or_raise();
    let checks = checks::evaluate(&facts, &target_encoding());
    if let Some((detail, hint)) = checks::summarize_failures(&checks) {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "the source at \"{}\" does not meet livesync's prerequisites",
                info.endpoint_with_db()
            ),
        )
        .detail(detail)
        .hint(hint)
        .raise();
    }

    let port = i32::from(info.port());
    catalog::insert_connector(&catalog::NewConnector {
        name: &name,
        conninfo,
        host: &info.host(),
        port,
        dbname: &info.dbname(),
        user: &info.user(),
    })
    .or_raise();
    wake_manager_after_commit();
    name
}

#[pg_extern]
fn check_source(
    conninfo: &str,
) -> TableIterator<
    'static,
    (
        name!(check, String),
        name!(ok, bool),
        name!(detail, String),
        name!(hint, Option<String>),
    ),
> {
    hide_statement_from_error_log();
    let info = parse_conninfo(conninfo).or_raise();
    let rows = match probe(&info, "livesync check_source") {
        Err(e) => vec![(CONNECTION_CHECK.to_string(), false, e.message, e.hint)],
        Ok(facts) => {
            let mut rows = vec![(
                CONNECTION_CHECK.to_string(),
                true,
                format!(
                    "connected to \"{}\" as role \"{}\" (PostgreSQL {})",
                    info.endpoint_with_db(),
                    facts.user,
                    facts.server_version
                ),
                None,
            )];
            rows.extend(
                checks::evaluate(&facts, &target_encoding())
                    .into_iter()
                    .map(|c| (c.name.to_string(), c.ok, c.detail, c.hint)),
            );
            rows
        }
    };
    TableIterator::new(rows)
}

#[pg_extern]
fn pause_connector(name: &str) {
    let c = catalog::lock_connector_by_name(name).or_raise();
    catalog::set_enabled(c.id, false).or_raise();
    wake_manager_after_commit();
}

#[pg_extern]
fn resume_connector(name: &str) {
    let c = catalog::lock_connector_by_name(name).or_raise();
    catalog::set_enabled(c.id, true).or_raise();
    wake_manager_after_commit();
}

/// Connector options. `auto_add_columns`: when the source adds a column to a synced table, add it
/// (nullable, same type) to the target instead of putting the table in `error`.
#[pg_extern]
fn alter_connector(name: &str, auto_add_columns: default!(Option<bool>, "NULL")) {
    let c = catalog::lock_connector_by_name(name).or_raise();
    if let Some(on) = auto_add_columns {
        catalog::set_auto_add_columns(c.id, on).or_raise();
    }
    // The worker reads options when its stream (re)starts: restart it.
    if let Some(pid) = catalog::live_worker_pid(c.id).or_raise() {
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
            worker::terminate(pid);
        });
    }
}

#[pg_extern]
fn rename_connector(name: &str, new_name: &str) {
    validate_name(new_name, "connector name").or_raise();
    let c = catalog::lock_connector_by_name(name).or_raise();
    if new_name != name && catalog::connector_by_name(new_name).or_raise().is_some() {
        LivesyncError::connector_exists(new_name).raise();
    }
    catalog::rename(c.id, new_name).or_raise();
}

/// Stop the connector's worker and wait until it is gone, then keep it from coming back until
/// this transaction ends (the worker's advisory lock, taken here at transaction level).
fn stop_worker_and_lock(c: &catalog::Connector) -> Result<()> {
    if let Some(pid) = catalog::live_worker_pid(c.id)? {
        worker::terminate(pid);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if worker::try_xact_lock(LOCK_CLASS_CONNECTOR, c.id) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LivesyncError::new(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!("could not stop the worker of connector \"{}\"", c.name),
            )
            .detail(format!(
                "The worker did not exit within {} s.",
                STOP_TIMEOUT.as_secs()
            ))
            .hint("Try again; if it persists, check the server log for the worker's state."));
        }
        // A worker restarted by the manager in the meantime is told to stop too.
        if let Some(pid) = catalog::live_worker_pid(c.id)? {
            worker::terminate(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
        pg_sys::check_for_interrupts!();
    }
}

#[pg_extern]
fn drop_connector(name: &str) {
    hide_statement_from_error_log();
    // Like DROP SUBSCRIPTION with a slot: the source clean-up below cannot be rolled back, so
    // no transaction block may roll back the rest after it.
    // SAFETY: a plain check of the transaction state; ereports when in a transaction block.
    unsafe { pg_sys::PreventInTransactionBlock(true, c"livesync.drop_connector()".as_ptr()) };
    let c = catalog::lock_connector_by_name(name).or_raise();
    let conninfo = catalog::conninfo(c.id).or_raise().unwrap_or_default();
    stop_worker_and_lock(&c).or_raise();

    // Local state first: what can fail here fails before the source is touched.
    crate::apply::origin::drop(&c.slot_name);
    catalog::delete_connector(c.id).or_raise();

    // Remove what livesync created on the source. The local row goes in any case: a dead source
    // must not make a connector impossible to drop; the user is told what is left behind.
    let leftovers = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE {}; DROP PUBLICATION IF EXISTS {}, {};",
        quote_literal(&format!("{}%", c.slot_name)),
        quote_ident(&c.publication_name),
        quote_ident(&c.append_publication_name())
    );
    let cleanup = match SourceConninfo::parse(&conninfo) {
        Err(e) => Err(format!("invalid connection string: {}", e.0)),
        Ok(info) => {
            let rt = new_runtime();
            block_on_interruptible(&rt, async {
                let client = connect::connect(&info, "livesync drop_connector")
                    .await
                    .map_err(|e| e.to_string())?;
                client.batch_execute(&leftovers).await.map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                })
            })
        }
    };
    if let Err(reason) = cleanup {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "connector \"{}\" was dropped, but replication slot \"{}\" and publication \"{}\" may remain on the source",
                c.name, c.slot_name, c.publication_name
            ),
        )
        .detail(format!("Could not clean up the source: {reason}."))
        .hint(format!("When the source is reachable, run on it: {leftovers}"))
        .report(PgLogLevel::WARNING);
    }
    wake_manager_after_commit();
}
