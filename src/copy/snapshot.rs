//! Exported snapshots from a logical replication slot.
//!
//! Each table is copied from a snapshot exported by `CREATE_REPLICATION_SLOT … LOGICAL pgoutput
//! (SNAPSHOT 'export')`: the snapshot is exactly the state of the database at the slot's
//! consistent point, so a table copied from it joins the change stream at that LSN with no gap
//! and no overlap. (A REPEATABLE READ snapshot plus `pg_current_wal_lsn()` does not line up with
//! commit order and is not a substitute.) The snapshot stays importable only while the exporting
//! connection stays open and idle, so [`ExportedSnapshot`] keeps it open until dropped.

use crate::source::conninfo::SourceConninfo;
use crate::source::{connect, quote_literal};
use crate::walrcv::{format_lsn, ReplicationConn};

pub struct ExportedSnapshot {
    _conn: ReplicationConn,
    /// The snapshot name to pass to `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the snapshot's position in the change stream.
    pub lsn: String,
}

impl ExportedSnapshot {
    /// Create slot `slot` (temporary or permanent) exporting its snapshot.
    pub fn create(
        conninfo: &str,
        application_name: &str,
        slot: &str,
        temporary: bool,
    ) -> Result<Self, String> {
        let mut conn = ReplicationConn::connect(conninfo, application_name)?;
        let (name, lsn) = conn.create_slot(slot, temporary, true)?;
        let name = name.ok_or_else(|| "the source exported no snapshot".to_string())?;
        Ok(ExportedSnapshot {
            _conn: conn,
            name,
            lsn: format_lsn(lsn),
        })
    }
}

/// A new SQL connection to the source whose transaction (REPEATABLE READ, read-only) reads under
/// exported snapshot `name`. The error is the source's message (e.g. "invalid snapshot
/// identifier": the exporting connection is gone).
pub async fn import(
    info: &SourceConninfo,
    application_name: &str,
    name: &str,
) -> Result<tokio_postgres::Client, String> {
    let client = connect::connect(info, application_name)
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(name)
        ))
        .await
        .map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        })?;
    Ok(client)
}
