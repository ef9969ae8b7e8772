//! The only code that reads and writes the `livesync.*` tables (defined in `sql/bootstrap.sql`).
//!
//! Callers get typed rows and named operations; no other module embeds SQL against the catalog.
//! Every function here must run inside a transaction (a SQL function call, or
//! [`crate::worker::in_transaction`] in a background worker).
//!
//! # Connector lifecycle
//! A connector row is created by `add_connector` with `enabled = true, state = 'starting'`.
//! `enabled` is the user's desired state (`pause_connector` / `resume_connector`); `state` is what
//! the connector's worker last reported (`starting` → `running`, or `error` with `last_error`),
//! and `worker_pid` which process reported it. The view `livesync.connectors` folds these into
//! what a user sees: `paused` when disabled, otherwise the reported state — but only while
//! `worker_pid` is really alive, so a crashed worker never shows as `running`.

use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::error::{LivesyncError, Result};

pub mod ranges;
pub mod sequences;
pub mod tables;
pub mod verification;

/// A connector as the workers and the API need it.
#[derive(Debug, Clone)]
pub struct Connector {
    pub id: i32,
    pub name: String,
    pub token: String,
    pub publication_name: String,
    pub slot_name: String,
    pub enabled: bool,
    pub worker_pid: Option<i32>,
    pub auto_add_columns: bool,
}

impl Connector {
    /// The publication of the connector's `append_only` tables (inserts and truncates only).
    pub fn append_publication_name(&self) -> String {
        crate::source::names::append_publication_name(&self.publication_name)
    }
}

/// What the manager needs per connector to reconcile workers.
#[derive(Debug, Clone)]
pub struct ConnectorWorkerState {
    pub id: i32,
    pub enabled: bool,
    /// The connector's reported worker pid, if that process is alive as a livesync connector.
    pub live_worker_pid: Option<i32>,
}

pub struct NewConnector<'a> {
    pub name: &'a str,
    pub conninfo: &'a str,
    pub host: &'a str,
    pub port: i32,
    pub dbname: &'a str,
    pub user: &'a str,
}

pub(crate) fn spi_err(e: pgrx::spi::Error) -> LivesyncError {
    LivesyncError::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("livesync catalog access failed: {e}"),
    )
}

/// The first column of the first row, or None when the query returns no row (Spi::get_one
/// treats "no row" as an error).
pub(crate) fn first_value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    Spi::connect(|c| {
        let mut t = c.select(query, Some(1), args)?;
        match t.next() {
            Some(row) => row.get::<T>(1),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// Run `f` — a change to livesync's catalog — as the role owning it (the one that created the
/// extension). The SQL functions run as their caller, a member of `livesync_admin`, which has no
/// write privilege on the catalog tables: a row edited by hand could point livesync's workers,
/// which run as the bootstrap superuser, at any table. So only this module writes them, with
/// `SECURITY_LOCAL_USERID_CHANGE` set (no `SET ROLE` inside) and the caller's identity restored on
/// every path.
pub(crate) fn as_owner<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let owner = first_value::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'livesync'",
        &[],
    )?
    .ok_or_else(|| {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "extension \"livesync\" is not installed in this database",
        )
    })?;
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context: i32 = 0;
    // SAFETY: reads this backend's current user and security context into locals.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    // SAFETY: switches the current user within this transaction; restored below on success and
    // in `finally` on an ERROR (which also restores it at transaction abort).
    unsafe {
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        )
    };
    let f = std::panic::AssertUnwindSafe(f);
    pgrx::PgTryBuilder::new(move || {
        let f = f;
        (f.0)()
    })
    .finally(move || {
        // SAFETY: puts back exactly what was read above.
        unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    })
    .execute()
}

/// Like [`first_value`], run as a read-write SPI call: for a query that locks rows (`FOR
/// UPDATE`, which a read-only call refuses), or one that must see what this transaction created
/// a moment before — in a subtransaction without an XID of its own, pgrx would run a read-only
/// query on the statement's older snapshot, where a type created just now does not exist yet.
pub(crate) fn first_value_rw<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    Spi::connect_mut(|c| {
        let mut t = c.update(query, Some(1), args)?;
        match t.next() {
            Some(row) => row.get::<T>(1),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// Whether the extension's catalog exists in this database (a worker checks this: the extension
/// may have been dropped under it).
pub fn installed() -> bool {
    Spi::get_one::<bool>("SELECT to_regclass('livesync.connector') IS NOT NULL")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The version of this library, which is also the version of the SQL objects (`livesync--<v>.sql`,
/// or an upgrade script to it) it was built with.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version of livesync's SQL objects in this database (`pg_extension.extversion`): differs
/// from [`LIBRARY_VERSION`] between a server restart that loaded a new library and `ALTER
/// EXTENSION livesync UPDATE` (or after an UPDATE run before the restart). None when livesync is
/// not installed.
pub fn installed_version() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'livesync'",
    )
    .ok()
    .flatten()
}

/// Live `livesync connector` processes of this database, whoever started them (the manager
/// stops them all while the catalog and the library versions differ).
pub fn connector_processes() -> Result<Vec<i32>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT pid FROM pg_catalog.pg_stat_activity
              WHERE backend_type = 'livesync connector' AND datid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in t {
            if let Some(pid) = row.get::<i32>(1)? {
                out.push(pid);
            }
        }
        Ok(out)
    })
    .map_err(spi_err)
}

const CONNECTOR_COLUMNS: &str =
    "id, name, token, publication_name::text, slot_name::text, enabled, worker_pid, auto_add_columns";

fn connector_from_row(row: &pgrx::spi::SpiHeapTupleData) -> SpiResult<Connector> {
    Ok(Connector {
        id: row.get::<i32>(1)?.unwrap_or_default(),
        name: row.get::<String>(2)?.unwrap_or_default(),
        token: row.get::<String>(3)?.unwrap_or_default(),
        publication_name: row.get::<String>(4)?.unwrap_or_default(),
        slot_name: row.get::<String>(5)?.unwrap_or_default(),
        enabled: row.get::<bool>(6)?.unwrap_or(false),
        worker_pid: row.get::<i32>(7)?,
        auto_add_columns: row.get::<bool>(8)?.unwrap_or(false),
    })
}

pub fn connector_by_name(name: &str) -> Result<Option<Connector>> {
    Spi::connect(|c| {
        let q = format!("SELECT {CONNECTOR_COLUMNS} FROM livesync.connector WHERE name = $1");
        let mut t = c.select(&q, Some(1), &[name.into()])?;
        match t.next() {
            Some(row) => connector_from_row(&row).map(Some),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// Like [`connector_by_name`] but locks the row against concurrent API calls, and raises
/// "does not exist" when missing.
pub fn lock_connector_by_name(name: &str) -> Result<Connector> {
    as_owner(|| {
        let r = Spi::connect_mut(|c| {
            let q = format!(
                "SELECT {CONNECTOR_COLUMNS} FROM livesync.connector WHERE name = $1 FOR UPDATE"
            );
            let mut t = c.update(&q, Some(1), &[name.into()])?;
            match t.next() {
                Some(row) => connector_from_row(&row).map(Some),
                None => Ok(None),
            }
        })
        .map_err(spi_err)?;
        r.ok_or_else(|| LivesyncError::connector_not_found(name))
    })
}

pub fn connector_by_id(id: i32) -> Result<Option<Connector>> {
    Spi::connect(|c| {
        let q = format!("SELECT {CONNECTOR_COLUMNS} FROM livesync.connector WHERE id = $1");
        let mut t = c.select(&q, Some(1), &[id.into()])?;
        match t.next() {
            Some(row) => connector_from_row(&row).map(Some),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

pub fn connector_names() -> Result<Vec<String>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT name FROM livesync.connector ORDER BY name",
            None,
            &[],
        )?;
        t.map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
            .collect::<SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

/// The replication-origin names (= slot names) of this database's connectors.
pub fn origin_names() -> Result<Vec<String>> {
    Spi::connect(|c| {
        let t = c.select("SELECT slot_name::text FROM livesync.connector", None, &[])?;
        t.map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
            .collect::<SpiResult<Vec<_>>>()
    })
    .map_err(spi_err)
}

pub fn conninfo(id: i32) -> Result<Option<String>> {
    first_value::<String>(
        "SELECT conninfo FROM livesync.connector_secret WHERE connector_id = $1",
        &[id.into()],
    )
}

/// Insert a connector and its secret; returns the new row. The token is random (see
/// `src/source/names.rs` for why names derive from it).
pub fn insert_connector(n: &NewConnector) -> Result<Connector> {
    as_owner(|| {
        let token: String =
            Spi::get_one("SELECT left(replace(gen_random_uuid()::text, '-', ''), 16)")
                .map_err(spi_err)?
                .expect("gen_random_uuid returned NULL");
        let token = crate::source::names::ConnectorToken::parse(&token)
            .map_err(|e| LivesyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e))?;
        let id: i32 = Spi::get_one_with_args(
            "INSERT INTO livesync.connector
                 (name, token, publication_name, slot_name, source_host, source_port, source_dbname, source_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                n.name.into(),
                token.as_str().into(),
                token.publication_name().into(),
                token.slot_name().into(),
                n.host.into(),
                n.port.into(),
                n.dbname.into(),
                n.user.into(),
            ],
        )
        .map_err(spi_err)?
        .expect("INSERT RETURNING gave no row");
        Spi::run_with_args(
            "INSERT INTO livesync.connector_secret (connector_id, conninfo) VALUES ($1, $2)",
            &[id.into(), n.conninfo.into()],
        )
        .map_err(spi_err)?;
        Ok(connector_by_id(id)?.expect("connector vanished right after insert"))
    })
}

pub fn set_enabled(id: i32, enabled: bool) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE livesync.connector
                SET enabled = $2,
                    state = CASE WHEN $2 AND NOT enabled THEN 'starting' ELSE state END
              WHERE id = $1",
            &[id.into(), enabled.into()],
        )
        .map_err(spi_err)
    })
}

pub fn set_auto_add_columns(id: i32, on: bool) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE livesync.connector SET auto_add_columns = $2 WHERE id = $1",
            &[id.into(), on.into()],
        )
        .map_err(spi_err)
    })
}

pub fn rename(id: i32, new_name: &str) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE livesync.connector SET name = $2 WHERE id = $1",
            &[id.into(), new_name.into()],
        )
        .map_err(spi_err)
    })
}

pub fn delete_connector(id: i32) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args("DELETE FROM livesync.connector WHERE id = $1", &[id.into()])
            .map_err(spi_err)
    })
}

/// Reconciliation input for the manager: every connector, and whether its worker is alive.
pub fn connector_worker_states() -> Result<Vec<ConnectorWorkerState>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT c.id, c.enabled, a.pid
               FROM livesync.connector c
               LEFT JOIN pg_catalog.pg_stat_activity a
                      ON a.pid = c.worker_pid AND a.backend_type = 'livesync connector'",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in t {
            out.push(ConnectorWorkerState {
                id: row.get::<i32>(1)?.unwrap_or_default(),
                enabled: row.get::<bool>(2)?.unwrap_or(false),
                live_worker_pid: row.get::<i32>(3)?,
            });
        }
        Ok(out)
    })
    .map_err(spi_err)
}

/// The live pid of the worker of connector `id`, if any.
pub fn live_worker_pid(id: i32) -> Result<Option<i32>> {
    // pg_stat_activity hides other roles' backend types from a caller without
    // pg_read_all_stats: read it as the catalog's owner.
    as_owner(|| {
        first_value::<i32>(
            "SELECT a.pid FROM livesync.connector c
               JOIN pg_catalog.pg_stat_activity a
                 ON a.pid = c.worker_pid AND a.backend_type = 'livesync connector'
              WHERE c.id = $1",
            &[id.into()],
        )
    })
}

/// Pid of this database's livesync manager, if one runs.
pub fn manager_pid() -> Result<Option<i32>> {
    // pg_stat_activity hides other roles' backend types from a caller without
    // pg_read_all_stats: read it as the catalog's owner.
    as_owner(|| {
        first_value::<i32>(
            "SELECT pid FROM pg_catalog.pg_stat_activity
              WHERE backend_type = 'livesync manager' AND pid <> pg_catalog.pg_backend_pid()
                AND datid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
              LIMIT 1",
            &[],
        )
    })
}

/// The cluster's livesync launcher, if it runs.
pub fn launcher_pid() -> Result<Option<i32>> {
    // pg_stat_activity hides other roles' backend types from a caller without
    // pg_read_all_stats: read it as the catalog's owner.
    as_owner(|| {
        first_value::<i32>("SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'livesync launcher' LIMIT 1", &[])
    })
}

// ---- reports from a connector's worker -------------------------------------------------------

/// The worker of connector `id` is this process and is starting.
pub fn report_worker_started(id: i32, pid: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.connector SET worker_pid = $2, state = 'starting' WHERE id = $1",
        &[id.into(), pid.into()],
    )
    .map_err(spi_err)
}

/// The connector's permanent slot was created at `lsn` (its consistent point).
pub fn record_slot_created(id: i32, lsn: &str) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.connector SET slot_created_at = now(), slot_created_lsn = $2::pg_lsn WHERE id = $1",
        &[id.into(), lsn.into()],
    )
    .map_err(spi_err)
}

pub fn report_running(id: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.connector SET state = 'running', last_connected_at = now() WHERE id = $1",
        &[id.into()],
    )
    .map_err(spi_err)
}

/// Something the user must know about, while the worker goes on running (state unchanged).
pub fn report_last_error(id: i32, message: &str) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.connector SET last_error = $2, last_error_at = now() WHERE id = $1",
        &[id.into(), message.into()],
    )
    .map_err(spi_err)
}

pub fn report_error(id: i32, message: &str) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.connector SET state = 'error', last_error = $2, last_error_at = now() WHERE id = $1",
        &[id.into(), message.into()],
    )
    .map_err(spi_err)
}

/// Stream positions reported by a connector's worker.
pub struct StreamStats {
    pub received: u64,
    pub applied: u64,
    pub flushed: u64,
    pub source_wal_end: u64,
    /// Commit time of the last applied source transaction, µs since 2000-01-01 (0: none).
    pub last_commit_time: i64,
}

pub fn report_stream_stats(id: i32, s: &StreamStats) -> Result<()> {
    let lsn = |v: u64| -> Option<String> { (v != 0).then(|| crate::walrcv::format_lsn(v)) };
    let ts: Option<i64> = (s.last_commit_time != 0).then_some(s.last_commit_time);
    Spi::run_with_args(
        "UPDATE livesync.connector
            SET received_lsn = $2::pg_lsn, applied_lsn = coalesce($3::pg_lsn, applied_lsn),
                flushed_lsn = coalesce($4::pg_lsn, flushed_lsn), source_wal_end = $5::pg_lsn,
                last_commit_time = coalesce(timestamptz '2000-01-01 00:00:00+00' + $6 * interval '1 microsecond', last_commit_time),
                last_applied_at = CASE WHEN $3::pg_lsn IS DISTINCT FROM applied_lsn THEN now() ELSE last_applied_at END,
                stats_at = now()
          WHERE id = $1",
        &[id.into(), lsn(s.received).into(), lsn(s.applied).into(), lsn(s.flushed).into(), lsn(s.source_wal_end).into(), ts.into()],
    )
    .map_err(spi_err)
}

pub fn report_slot(
    id: i32,
    wal_status: Option<&str>,
    retained_bytes: Option<i64>,
    safe_wal_size: Option<i64>,
) -> Result<()> {
    Spi::run_with_args(
        "UPDATE livesync.connector
            SET slot_wal_status = $2, slot_retained_bytes = $3, slot_safe_wal_size = $4, slot_checked_at = now()
          WHERE id = $1",
        &[id.into(), wal_status.into(), retained_bytes.into(), safe_wal_size.into()],
    )
    .map_err(spi_err)
}
