//! Exported snapshots from a logical replication slot.
//!
//! Each table is copied from a snapshot exported by `CREATE_REPLICATION_SLOT … LOGICAL pgoutput
//! (SNAPSHOT 'export')`: the snapshot is exactly the state of the database at the slot's
//! consistent point, so a table copied from it joins the change stream at that LSN with no gap
//! and no overlap. (A REPEATABLE READ snapshot plus `pg_current_wal_lsn()` does not line up with
//! commit order and is not a substitute.)
//!
//! The replication connection is made with PostgreSQL's own walreceiver library
//! (`libpqwalreceiver`, the one native subscriptions use): libpq brings TLS, SCRAM and every
//! conninfo keyword, and the library picks the right `CREATE_REPLICATION_SLOT` syntax for the
//! source's version. The snapshot stays importable only while the exporting connection stays
//! open and idle, so [`ExportedSnapshot`] keeps it open until it is dropped.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;

pub struct ExportedSnapshot {
    conn: *mut pg_sys::WalReceiverConn,
    /// The snapshot name to pass to `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the snapshot's position in the change stream.
    pub lsn: String,
}

fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn walrcv() -> &'static pg_sys::WalReceiverFunctionsType {
    unsafe {
        if pg_sys::WalReceiverFunctions.is_null() {
            let lib = CString::new("libpqwalreceiver").unwrap();
            pg_sys::load_file(lib.as_ptr(), false);
        }
        &*pg_sys::WalReceiverFunctions
    }
}

impl ExportedSnapshot {
    /// Connect for replication and create slot `slot` (temporary: it vanishes with the
    /// connection) exporting its snapshot. Errors are the source's message.
    pub fn create(conninfo: &str, application_name: &str, slot: &str) -> Result<Self, String> {
        let f = walrcv();
        let conninfo = CString::new(conninfo).map_err(|_| "connection string contains a NUL byte".to_string())?;
        let app = CString::new(application_name).unwrap();
        let slot_c = CString::new(slot).unwrap();
        unsafe {
            let mut err: *mut std::os::raw::c_char = std::ptr::null_mut();
            let conn = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                (f.walrcv_connect.unwrap())(conninfo.as_ptr(), true, app.as_ptr(), &mut err)
            });
            if conn.is_null() {
                let msg = if err.is_null() {
                    "could not connect to the source for replication".to_string()
                } else {
                    CStr::from_ptr(err).to_string_lossy().trim().to_string()
                };
                return Err(msg);
            }
            let mut lsn: pg_sys::XLogRecPtr = 0;
            let name = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                (f.walrcv_create_slot.unwrap())(
                    conn,
                    slot_c.as_ptr(),
                    true,
                    false,
                    pg_sys::CRSSnapshotAction::CRS_EXPORT_SNAPSHOT,
                    &mut lsn,
                )
            });
            let name = CStr::from_ptr(name).to_string_lossy().into_owned();
            Ok(ExportedSnapshot { conn, name, lsn: format_lsn(lsn) })
        }
    }
}

impl Drop for ExportedSnapshot {
    fn drop(&mut self) {
        // Closing the connection drops the temporary slot and ends the snapshot's life.
        unsafe {
            if let Some(disconnect) = walrcv().walrcv_disconnect {
                pg_sys::ffi::pg_guard_ffi_boundary(|| disconnect(self.conn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsn_format_matches_postgres() {
        assert_eq!(super::format_lsn(0x1_0000_00A8), "1/A8");
        assert_eq!(super::format_lsn(0x16B3748), "0/16B3748");
    }
}
