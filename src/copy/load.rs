//! Loading a source's `COPY … TO STDOUT` stream into a target table with PostgreSQL's own
//! `COPY FROM` machinery, in this backend.
//!
//! `BeginCopyFrom` with a data-source callback reads the source's COPY data as it arrives (never
//! staging the table in memory or on disk), parses it with the target's own input functions,
//! routes rows of partitioned tables into their partitions and reports itself in
//! `pg_stat_progress_copy` like any `COPY`.
//!
//! This is the single loading path of the initial copy ([`load`]); TimescaleDB hypertables need
//! a route through TimescaleDB's COPY handling instead of `CopyFrom` on the root (which would
//! write rows into the root's heap, where TimescaleDB hides them) and will plug in here.

use std::cell::RefCell;
use std::ffi::CString;
use std::pin::Pin;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use pgrx::pg_sys;
use pgrx::prelude::*;
use tokio_postgres::CopyOutStream;

use crate::runtime::block_on_until_shutdown;

/// Where COPY data comes from: a source's `COPY … TO STDOUT` (initial copy), or rows already in
/// memory (batched INSERTs of the change stream).
pub enum Data {
    Stream { rt: *const tokio::runtime::Runtime, stream: Pin<Box<CopyOutStream>> },
    Buffer,
}

struct CopySource {
    data: Data,
    pending: Bytes,
    bytes: i64,
}

thread_local! {
    /// The stream the running `CopyFrom` reads from (one COPY at a time per process).
    static SOURCE: RefCell<Option<CopySource>> = const { RefCell::new(None) };
}

/// Next chunk of COPY data; None at the end of the data.
fn next_chunk(src: &mut CopySource) -> Option<Bytes> {
    let Data::Stream { rt, stream } = &mut src.data else { return None };
    let rt = unsafe { &**rt };
    match block_on_until_shutdown(rt, stream.next()) {
        None => error!("livesync worker is shutting down; copy interrupted"),
        Some(None) => None,
        Some(Some(Ok(b))) => Some(b),
        Some(Some(Err(e))) => {
            let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            error!("reading COPY data from the source failed: {msg}")
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn read_copy_data(
    outbuf: *mut std::ffi::c_void,
    minread: std::ffi::c_int,
    maxread: std::ffi::c_int,
) -> std::ffi::c_int {
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        let src = s.as_mut().expect("COPY data requested with no source stream");
        let out = outbuf as *mut u8;
        let mut n = 0usize;
        while n < minread as usize {
            if src.pending.is_empty() {
                match next_chunk(src) {
                    Some(b) => src.pending = b,
                    None => break,
                }
            }
            let take = src.pending.len().min(maxread as usize - n);
            unsafe { std::ptr::copy_nonoverlapping(src.pending.as_ptr(), out.add(n), take) };
            src.pending.advance(take);
            n += take;
        }
        src.bytes += n as i64;
        n as std::ffi::c_int
    })
}

/// Load `stream` (COPY data of `columns`, in that order, text or binary format) into table
/// `relid`. Returns (rows, bytes). Must run inside a transaction with an active snapshot.
pub fn load(
    rt: &tokio::runtime::Runtime,
    relid: pg_sys::Oid,
    columns: &[String],
    stream: CopyOutStream,
    binary: bool,
) -> (i64, i64) {
    run(relid, columns, Data::Stream { rt, stream: Box::pin(stream) }, Bytes::new(), binary)
}

/// Load rows already encoded in COPY text format.
pub fn load_buffer(relid: pg_sys::Oid, columns: &[String], rows: Bytes) -> (i64, i64) {
    run(relid, columns, Data::Buffer, rows, false)
}

fn run(relid: pg_sys::Oid, columns: &[String], data: Data, initial: Bytes, binary: bool) -> (i64, i64) {
    SOURCE.with(|s| *s.borrow_mut() = Some(CopySource { data, pending: initial, bytes: 0 }));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with(|s| s.borrow_mut().take());
        }
    }
    let _reset = Reset;

    let rows = unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as _);
        let mut attnames: *mut pg_sys::List = std::ptr::null_mut();
        for c in columns {
            let name = CString::new(c.as_str()).expect("column name with NUL");
            attnames = pg_sys::lappend(attnames, pg_sys::makeString(pg_sys::pstrdup(name.as_ptr())).cast());
        }
        // CopyFrom finds its result relation through the parse state's range table (as in
        // DoCopy and PostgreSQL's tablesync): without this entry it would dereference nothing.
        let mut options: *mut pg_sys::List = std::ptr::null_mut();
        if binary {
            let format = pg_sys::makeDefElem(
                pg_sys::pstrdup(c"format".as_ptr()),
                pg_sys::makeString(pg_sys::pstrdup(c"binary".as_ptr())).cast(),
                -1,
            );
            options = pg_sys::lappend(options, format.cast());
        }
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::addRangeTableEntryForRelation(pstate, rel, pg_sys::RowExclusiveLock as _, std::ptr::null_mut(), false, false);
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(read_copy_data),
            attnames,
            options,
        );
        let rows = pg_sys::CopyFrom(cstate);
        pg_sys::EndCopyFrom(cstate);
        pg_sys::table_close(rel, pg_sys::NoLock as _);
        rows as i64
    };
    let bytes = SOURCE.with(|s| s.borrow().as_ref().map(|s| s.bytes).unwrap_or(0));
    (rows, bytes)
}

/// Append one value to a COPY text-format line (`\N` for NULL; backslash, tab, newline and
/// carriage return escaped).
pub fn push_copy_value(line: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => line.extend_from_slice(b"\\N"),
        Some(v) => {
            for &b in v {
                match b {
                    b'\\' => line.extend_from_slice(b"\\\\"),
                    b'\t' => line.extend_from_slice(b"\\t"),
                    b'\n' => line.extend_from_slice(b"\\n"),
                    b'\r' => line.extend_from_slice(b"\\r"),
                    _ => line.push(b),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_copy_value;

    #[test]
    fn copy_text_escaping() {
        let mut l = Vec::new();
        push_copy_value(&mut l, Some(b"a\tb\\c\nd\re"));
        l.push(b'\t');
        push_copy_value(&mut l, None);
        assert_eq!(l, b"a\\tb\\\\c\\nd\\re\t\\N".to_vec());
    }
}
