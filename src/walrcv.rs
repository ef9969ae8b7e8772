//! Replication connections to a source, through PostgreSQL's own walreceiver library.
//!
//! `libpqwalreceiver` is what native subscriptions use: libpq brings TLS (every `sslmode`,
//! verify modes included), SCRAM and every conninfo keyword, and the library already speaks the
//! replication sub-protocol (CopyBoth, `CREATE_REPLICATION_SLOT` in the syntax of the source's
//! version, `START_REPLICATION … LOGICAL` with pgoutput options). Its waits are latch waits that
//! end the process on SIGTERM (`ProcessWalRcvInterrupts`) — the right behaviour for a worker.
//! What livesync adds on top — pgoutput decoding, feedback messages — is pure Rust in
//! `src/source/pgoutput.rs`.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;

// A libpqwalreceiver call raises an ERROR when the source fails (e.g. "could not receive data
// from WAL stream: …"): every call goes through `catch`, so the caller gets the message, records
// it and reconnects instead of the worker dying.
use crate::error::catch;

pub struct ReplicationConn {
    conn: *mut pg_sys::WalReceiverConn,
}

/// What `receive` found.
pub enum Received<'a> {
    /// One CopyData message (borrowed from libpq's buffer until the next call).
    Data(&'a [u8]),
    /// Nothing buffered: wait for the socket to become readable.
    WouldBlock(pg_sys::pgsocket),
    /// The source ended the stream.
    End,
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn functions() -> &'static pg_sys::WalReceiverFunctionsType {
    // SAFETY: WalReceiverFunctions is a backend-local global that libpqwalreceiver's _PG_init points
    // at its static table (load_file ERRORs if it cannot load it); it is never reset or unloaded.
    unsafe {
        if pg_sys::WalReceiverFunctions.is_null() {
            let lib = CString::new("libpqwalreceiver").unwrap();
            pg_sys::load_file(lib.as_ptr(), false);
        }
        &*pg_sys::WalReceiverFunctions
    }
}

impl ReplicationConn {
    /// Connect with `replication=database`. Errors carry libpq's message (never the conninfo).
    pub fn connect(conninfo: &str, application_name: &str) -> Result<Self, String> {
        let f = functions();
        let conninfo = CString::new(conninfo)
            .map_err(|_| "connection string contains a NUL byte".to_string())?;
        let app = CString::new(application_name.replace('\0', "")).unwrap();
        // SAFETY: conninfo, app and the `err` out-pointer outlive the guarded call; a non-NULL `err` is
        // the palloc'ed, NUL-terminated message libpqwalreceiver copied from libpq.
        unsafe {
            let mut err: *mut std::os::raw::c_char = std::ptr::null_mut();
            let conn = catch(|| {
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    // 15: (conninfo, logical, appname, err). 16 added must_use_password (false: a
                    // password is not required, as on 15), 17 `replication` before `logical`.
                    #[cfg(feature = "pg15")]
                    let conn = (f.walrcv_connect.unwrap())(
                        conninfo.as_ptr(),
                        true,
                        app.as_ptr(),
                        &mut err,
                    );
                    #[cfg(feature = "pg18")]
                    let conn = (f.walrcv_connect.unwrap())(
                        conninfo.as_ptr(),
                        true,
                        true,
                        false,
                        app.as_ptr(),
                        &mut err,
                    );
                    conn
                }) as usize
            })? as *mut pg_sys::WalReceiverConn;
            if conn.is_null() {
                return Err(if err.is_null() {
                    "could not connect to the source for replication".to_string()
                } else {
                    CStr::from_ptr(err).to_string_lossy().trim().to_string()
                });
            }
            Ok(ReplicationConn { conn })
        }
    }

    /// Create a logical slot (pgoutput). With `export`, returns the exported snapshot's name,
    /// valid while this connection stays open and idle. Returns (snapshot, consistent point).
    pub fn create_slot(
        &mut self,
        slot: &str,
        temporary: bool,
        export: bool,
    ) -> Result<(Option<String>, u64), String> {
        let f = functions();
        let slot = CString::new(slot).unwrap();
        let action = if export {
            pg_sys::CRSSnapshotAction::CRS_EXPORT_SNAPSHOT
        } else {
            pg_sys::CRSSnapshotAction::CRS_NOEXPORT_SNAPSHOT
        };
        let mut lsn: pg_sys::XLogRecPtr = 0;
        let conn = self.conn;
        // SAFETY: `conn` is the open connection owned by self; `slot` and the `lsn` out-pointer outlive
        // the guarded call (an ERROR becomes Err through `catch`).
        let name = catch(|| unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                // 17 added `failover` (sync the slot to standbys) after `two_phase`: off, as on 15.
                #[cfg(feature = "pg15")]
                let name = (f.walrcv_create_slot.unwrap())(
                    conn,
                    slot.as_ptr(),
                    temporary,
                    false,
                    action,
                    &mut lsn,
                );
                #[cfg(feature = "pg18")]
                let name = (f.walrcv_create_slot.unwrap())(
                    conn,
                    slot.as_ptr(),
                    temporary,
                    false,
                    false,
                    action,
                    &mut lsn,
                );
                name
            }) as usize
        })? as *const std::os::raw::c_char;
        // SAFETY: a non-NULL result is the snapshot name walrcv_create_slot pstrdup'ed, NUL-terminated.
        let name = (!name.is_null()).then(|| {
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        });
        Ok((name, lsn))
    }

    pub fn server_version(&self) -> i32 {
        let f = functions();
        // SAFETY: self.conn is the open connection (freed only in Drop); the guarded call only returns
        // libpq's PQserverVersion for it.
        unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| (f.walrcv_server_version.unwrap())(self.conn))
        }
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (proto_version …, publication_names …)`.
    pub fn start_logical(
        &mut self,
        slot: &str,
        start: u64,
        proto_version: u32,
        streaming: bool,
        publications: &[String],
    ) -> Result<(), String> {
        let f = functions();
        let slot = CString::new(slot).unwrap();
        let publications: Vec<CString> = publications
            .iter()
            .map(|p| CString::new(p.as_str()).unwrap())
            .collect();
        // SAFETY: the options struct is plain data, zeroed then filled; the strings it points to
        // (slot, the pstrdup'ed names, the static "on") outlive the call; the List is built in the current memory
        // context; the call is guarded (an ERROR becomes Err through `catch`).
        unsafe {
            let mut opts: pg_sys::WalRcvStreamOptions = std::mem::zeroed();
            opts.logical = true;
            opts.slotname = slot.as_ptr() as *mut _;
            opts.startpoint = start;
            opts.proto.logical.proto_version = proto_version;
            let mut names: *mut pg_sys::List = std::ptr::null_mut();
            for p in &publications {
                names = pg_sys::lappend(
                    names,
                    pg_sys::makeString(pg_sys::pstrdup(p.as_ptr())).cast(),
                );
            }
            opts.proto.logical.publication_names = names;
            opts.proto.logical.binary = false;
            // 16 turned the `streaming` flag into the option's text (NULL: not sent, as `false` was).
            #[cfg(feature = "pg15")]
            {
                opts.proto.logical.streaming = streaming;
            }
            #[cfg(feature = "pg18")]
            {
                opts.proto.logical.streaming_str = if streaming {
                    c"on".as_ptr() as *mut _
                } else {
                    std::ptr::null_mut()
                };
            }
            opts.proto.logical.twophase = false;
            let conn = self.conn;
            let ok = catch(|| {
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    (f.walrcv_startstreaming.unwrap())(conn, &opts)
                })
            })?;
            if ok {
                Ok(())
            } else {
                Err("the source ended replication at once".into())
            }
        }
    }

    /// Next message, if one is buffered. Err: the stream failed (the source's message).
    pub fn receive(&mut self) -> Result<Received<'_>, String> {
        let f = functions();
        let conn = self.conn;
        let mut buf: *mut std::os::raw::c_char = std::ptr::null_mut();
        let mut fd: pg_sys::pgsocket = -1;
        // SAFETY: `conn` is the open connection owned by self; `buf` and `fd` are live locals the guarded
        // call writes through.
        let len = catch(|| unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                (f.walrcv_receive.unwrap())(conn, &mut buf, &mut fd)
            })
        })?;
        Ok(match len {
            // SAFETY: for n > 0 walrcv_receive set `buf` to n bytes of libpq's buffer, valid until the next call
            // on `conn`, which the `&mut self` borrow held by the returned Received rules out.
            n if n > 0 => {
                Received::Data(unsafe { std::slice::from_raw_parts(buf as *const u8, n as usize) })
            }
            0 => Received::WouldBlock(fd),
            _ => Received::End,
        })
    }

    pub fn send(&mut self, data: &[u8]) -> Result<(), String> {
        let f = functions();
        let conn = self.conn;
        // SAFETY: `conn` is the open connection owned by self; the pointer and length describe `data`,
        // borrowed for the whole guarded call.
        catch(|| unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                (f.walrcv_send.unwrap())(conn, data.as_ptr() as *const _, data.len() as i32)
            })
        })
        .map_err(String::from)
    }
}

impl Drop for ReplicationConn {
    fn drop(&mut self) {
        // Closing the connection also drops its temporary slots and ends exported snapshots.
        let f = functions();
        // SAFETY: self.conn is the open connection this value owns; walrcv_disconnect (PQfinish, then pfree)
        // runs once, here, and the pointer is never used afterwards.
        unsafe {
            if let Some(disconnect) = f.walrcv_disconnect {
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
