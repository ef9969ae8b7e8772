//! Loading a source's `COPY … TO STDOUT` stream into a target table with PostgreSQL's own
//! `COPY FROM` machinery, in this backend.
//!
//! `BeginCopyFrom` with a data-source callback reads the source's COPY data as it arrives (never
//! staging the table in memory or on disk), parses it with the target's own input functions,
//! routes rows of partitioned tables into their partitions and reports itself in
//! `pg_stat_progress_copy` like any `COPY`.
//!
//! This is the single loading path of the initial copy ([`load`]) and of the change stream's
//! batched INSERTs ([`load_buffer`]). Its route is chosen per target table ([`route_for`]), so
//! that a target extension's own hooks on COPY or the executor always see the rows:
//!
//! - [`Route::CopyFrom`]: `CopyFrom` on the relation — the fastest, and correct for plain and
//!   partitioned tables.
//! - [`Route::Executor`]: for TimescaleDB hypertables. `CopyFrom` on a hypertable's root would
//!   write rows into the root's own heap, where TimescaleDB hides them (no error, no chunks: the
//!   rows silently vanish — exactly the defect of native subscriptions). A source's stream (the
//!   initial copy, rows read again on resume) goes through TimescaleDB's own COPY instead, fed
//!   from a pipe (`copy::pipe`), which buffers rows per chunk. The change stream's batched
//!   INSERTs, a few rows each, take the executor: rows are parsed
//!   by the same COPY machinery (`NextCopyFrom`, so formats, input functions, defaults and
//!   `pg_stat_progress_copy` are identical) and inserted by a planned
//!   `INSERT INTO target SELECT * FROM livesync._copy_rows(NULL::target)`, whose executor
//!   TimescaleDB hooks: rows are routed into chunks (created as needed), compressed chunks are
//!   handled, and continuous-aggregate invalidations are recorded. Each statement takes a bounded
//!   slice of the stream (at most [`EXECUTOR_SLICE_ROWS`] rows or [`EXECUTOR_SLICE_BYTES`] of
//!   input), so nothing is staged beyond one slice.
//! - [`Route::Distributed`]: for Citus tables (distributed, reference, single-shard), whose
//!   coordinator table is a shell: `CopyFrom` would fill it, invisible through the distributed
//!   table. A source's stream goes through Citus's own COPY, fed from the pipe as for
//!   hypertables: Citus sends each row to its shard, one connection per worker node in the
//!   transaction's sequential mode (see `citus::prepare_writes`). The stream's batched INSERTs
//!   take the executor: Citus plans the `INSERT … SELECT` as "pull to coordinator" and COPYs
//!   the rows to the shards; `livesync._copy_rows` returns them one row per call from the target
//!   list (`SELECT (r).* FROM (SELECT livesync._copy_rows(…) AS r OFFSET 0)`, which PostgreSQL
//!   evaluates row by row where a function in FROM is materialized). Before Citus's COPY took the
//!   initial copy, it went this way too: 0.71× a binary `COPY … FROM STDIN` of the same rows
//!   into the same table (docs/benchmarks.md).

use std::cell::RefCell;
use std::ffi::CString;
use std::pin::Pin;

use bytes::{Buf, Bytes};
use futures_util::{FutureExt, StreamExt};
use pgrx::pg_sys;
use pgrx::prelude::*;
use tokio_postgres::CopyOutStream;

use crate::runtime::block_on_until_shutdown;

/// Where COPY data comes from: a source's `COPY … TO STDOUT` (initial copy), or rows already in
/// memory (batched INSERTs of the change stream).
pub enum Data {
    Stream {
        rt: *const tokio::runtime::Runtime,
        stream: Pin<Box<CopyOutStream>>,
    },
    Buffer,
}

struct CopySource {
    data: Data,
    pending: Bytes,
    bytes: i64,
    /// The stream has ended (it must not be polled again).
    ended: bool,
}

thread_local! {
    /// The stream the running `CopyFrom` reads from (one COPY at a time per process).
    static SOURCE: RefCell<Option<CopySource>> = const { RefCell::new(None) };
}

/// Next chunk of COPY data: waiting for it when `wait`, else only one that has already arrived.
/// None at the end of the data (or, without `wait`, when nothing is there yet).
fn next_chunk(src: &mut CopySource, wait: bool) -> Option<Bytes> {
    if src.ended {
        return None;
    }
    let Data::Stream { rt, stream } = &mut src.data else {
        return None;
    };
    let item = if wait {
        // SAFETY: `rt` was set by `load` from its `&Runtime` argument, borrowed for the whole `run`; `Reset`
        // clears SOURCE (and this pointer) before `run` returns.
        match block_on_until_shutdown(unsafe { &**rt }, stream.next()) {
            None => error!("livesync worker is shutting down; copy interrupted"),
            Some(item) => item,
        }
    } else {
        stream.next().now_or_never()?
    };
    match item {
        None => {
            src.ended = true;
            None
        }
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            error!("reading COPY data from the source failed: {msg}")
        }
    }
}

/// `BeginCopyFrom`'s data source: at least `minread` bytes (waiting for them), then whatever
/// else has already arrived, up to `maxread`. The source sends one CopyData message per row;
/// handing COPY one row per call (and entering the runtime for each) made a one-stream copy
/// ~7–10% slower (benchmark: 15.3 s, now 13.7–14.3 s).
#[pg_guard]
unsafe extern "C-unwind" fn read_copy_data(
    outbuf: *mut std::ffi::c_void,
    minread: std::ffi::c_int,
    maxread: std::ffi::c_int,
) -> std::ffi::c_int {
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        let src = s
            .as_mut()
            .expect("COPY data requested with no source stream");
        let out = outbuf as *mut u8;
        let mut n = 0usize;
        while n < maxread as usize {
            if src.pending.is_empty() {
                match next_chunk(src, n < minread as usize) {
                    Some(b) => src.pending = b,
                    None => break,
                }
            }
            let take = src.pending.len().min(maxread as usize - n);
            // SAFETY: COPY's `outbuf` has room for `maxread` bytes and n + take <= maxread; `pending` is a separate
            // Rust buffer of at least `take` bytes, so both ranges are valid and disjoint.
            unsafe { std::ptr::copy_nonoverlapping(src.pending.as_ptr(), out.add(n), take) };
            src.pending.advance(take);
            n += take;
        }
        src.bytes += n as i64;
        n as std::ffi::c_int
    })
}

/// How rows get into a target table (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    CopyFrom,
    Executor,
    /// The executor, into a Citus table (larger slices).
    Distributed,
    /// The executor, with `ON CONFLICT DO NOTHING`: for changes of source hypertables, where
    /// TimescaleDB re-inserts rows it decompresses (see `apply`).
    ExecutorSkippingExisting,
}

/// Prepare this transaction for loading rows copied from the source into `target_q` (the copy's
/// ranges, and the rows a resumed copy reads again): the replica role (no user triggers or
/// foreign keys fire) and UTF8 as the client encoding — the source sends text as UTF8 (livesync's
/// SQL connections ask it to), and COPY FROM converts it to the database's encoding, text fields
/// through the COPY's encoding and binary ones through the client encoding, refusing a character
/// it lacks. A Citus target's shard sessions get the replica role too. Returns the target's OID.
pub fn begin(target_q: &str) -> Result<pg_sys::Oid, String> {
    Spi::run("SET LOCAL session_replication_role = replica; SET LOCAL client_encoding = 'UTF8'")
        .map_err(|e| e.to_string())?;
    let relid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[target_q.into()],
    )
    .map_err(|e| e.to_string())?
    .ok_or_else(|| format!("target table {target_q} does not exist"))?;
    if crate::citus::table(relid).is_some() {
        crate::citus::prepare_writes().map_err(|e| e.to_string())?;
    }
    Ok(relid)
}

/// The route for table `relid`: the executor for Citus tables and TimescaleDB hypertables,
/// `CopyFrom` otherwise. Needs a transaction.
pub fn route_for(relid: pg_sys::Oid) -> Route {
    if crate::citus::table(relid).is_some() {
        Route::Distributed
    } else if crate::timescale::time_column(relid).is_some() {
        Route::Executor
    } else {
        Route::CopyFrom
    }
}

/// Rows per `INSERT … SELECT` statement of the executor route.
pub const EXECUTOR_SLICE_ROWS: i64 = 10_000;
/// Input bytes per `INSERT … SELECT` statement of the executor route.
pub const EXECUTOR_SLICE_BYTES: i64 = 8 << 20;
/// Rows between two progress reports of a streamed load.
const STREAMED_PROGRESS_ROWS: i64 = 1_000;

/// Load `stream` (COPY data of `columns`, in that order, text or binary format) into table
/// `relid`: plain and partitioned tables with `CopyFrom` here, hypertables and Citus tables with
/// the target's own COPY (`copy::pipe`). Returns (rows, bytes). Must run inside a transaction
/// with an active snapshot.
pub fn load(
    rt: &tokio::runtime::Runtime,
    relid: pg_sys::Oid,
    route: Route,
    columns: &[String],
    stream: CopyOutStream,
    binary: bool,
) -> (i64, i64) {
    match route {
        // A source's stream into a hypertable or a Citus table: TimescaleDB's or Citus's own
        // COPY (see `copy::pipe`).
        Route::Executor | Route::Distributed => {
            super::pipe::load(rt, relid, columns, stream, binary)
        }
        _ => run(
            relid,
            route,
            columns,
            Data::Stream {
                rt,
                stream: Box::pin(stream),
            },
            Bytes::new(),
            binary,
        ),
    }
}

/// Load rows already encoded in COPY text format.
pub fn load_buffer(
    relid: pg_sys::Oid,
    route: Route,
    columns: &[String],
    rows: Bytes,
) -> (i64, i64) {
    run(relid, route, columns, Data::Buffer, rows, false)
}

/// The COPY state the executor route's `livesync._copy_rows` reads from.
struct Parser {
    cstate: pg_sys::CopyFromState,
    rel: pg_sys::Relation,
    econtext: *mut pg_sys::ExprContext,
    rows: i64,
    done: bool,
    /// One row per call (the Citus route), not slices.
    streamed: bool,
}

thread_local! {
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

fn run(
    relid: pg_sys::Oid,
    route: Route,
    columns: &[String],
    data: Data,
    initial: Bytes,
    binary: bool,
) -> (i64, i64) {
    SOURCE.with(|s| {
        *s.borrow_mut() = Some(CopySource {
            data,
            pending: initial,
            bytes: 0,
            ended: false,
        })
    });
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with(|s| s.borrow_mut().take());
            PARSER.with(|p| p.borrow_mut().take());
        }
    }
    let _reset = Reset;

    // SAFETY: `run` is called in a transaction with an active snapshot; the relation is opened here and closed
    // after EndCopyFrom (its lock kept to commit); read_copy_data finds SOURCE set above.
    let rows = unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as _);
        let mut attnames: *mut pg_sys::List = std::ptr::null_mut();
        for c in columns {
            let name = CString::new(c.as_str()).expect("column name with NUL");
            attnames = pg_sys::lappend(
                attnames,
                pg_sys::makeString(pg_sys::pstrdup(name.as_ptr())).cast(),
            );
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
        pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::RowExclusiveLock as _,
            std::ptr::null_mut(),
            false,
            false,
        );
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
        let rows = match route {
            Route::CopyFrom => pg_sys::CopyFrom(cstate) as i64,
            Route::Executor | Route::Distributed | Route::ExecutorSkippingExisting => {
                insert_through_executor(cstate, rel, route)
            }
        };
        pg_sys::EndCopyFrom(cstate);
        pg_sys::table_close(rel, pg_sys::NoLock as _);
        rows
    };
    let bytes = SOURCE.with(|s| s.borrow().as_ref().map(|s| s.bytes).unwrap_or(0));
    (rows, bytes)
}

/// Run `INSERT INTO rel SELECT * FROM livesync._copy_rows(NULL::rel)` until `cstate` is
/// exhausted; returns the rows inserted.
unsafe fn insert_through_executor(
    cstate: pg_sys::CopyFromState,
    rel: pg_sys::Relation,
    route: Route,
) -> i64 {
    // SAFETY: `rel` is the relation `run` opened, and it stays open until after this function returns.
    let relid = unsafe { (*rel).rd_id };
    let target: String =
        Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relid.into()])
            .ok()
            .flatten()
            .expect("target relation has a name");
    let streamed = route == Route::Distributed;
    let mut sql = if streamed {
        format!("INSERT INTO {target} SELECT (_ls_r).* FROM (SELECT livesync._copy_rows(NULL::{target}) AS _ls_r OFFSET 0) _ls_s")
    } else {
        format!("INSERT INTO {target} SELECT * FROM livesync._copy_rows(NULL::{target})")
    };
    if route == Route::ExecutorSkippingExisting {
        sql.push_str(" ON CONFLICT DO NOTHING");
    }
    // SAFETY: only allocates an ExprContext in the current (transaction) memory context; it is freed
    // below, after PARSER, its only other user, is cleared.
    let econtext = unsafe { pg_sys::CreateStandaloneExprContext() };
    PARSER.with(|p| {
        *p.borrow_mut() = Some(Parser {
            cstate,
            rel,
            econtext,
            rows: 0,
            done: false,
            streamed,
        })
    });
    Spi::connect_mut(|client| {
        let stmt = client
            .prepare_mut(&sql, &[])
            .expect("prepare INSERT … SELECT");
        loop {
            client
                .update(&stmt, None, &[])
                .expect("INSERT … SELECT failed");
            if PARSER.with(|p| p.borrow().as_ref().is_none_or(|p| p.done)) {
                break;
            }
        }
    });
    let rows = PARSER.with(|p| p.borrow_mut().take().map(|p| p.rows).unwrap_or(0));
    // SAFETY: `econtext` came from CreateStandaloneExprContext above and PARSER, which shared it, was
    // taken just before; nothing uses it after this.
    unsafe { pg_sys::FreeExprContext(econtext, true) };
    rows
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_livesync_copy_rows() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `livesync._copy_rows(anyelement) RETURNS SETOF anyelement`: the next slice of the rows the
/// running executor-route load parses, as a materialized set of the target's row type — or, for
/// a streamed load, the next row (value per call). Only meaningful inside
/// [`insert_through_executor`]; anywhere else it is an error.
///
/// # Safety
///
/// Only PostgreSQL's function manager may call it (as `livesync._copy_rows`), with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn livesync_copy_rows(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the fmgr passes a valid fcinfo and resultinfo is checked to be a ReturnSetInfo before use;
    // PARSER's cstate/rel/econtext stay live while insert_through_executor runs (it clears PARSER).
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || ((*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32)
                == 0
        {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "livesync._copy_rows must be called in FROM"
            );
        }
        let active = PARSER.with(|p| {
            p.borrow()
                .as_ref()
                .map(|p| (p.cstate, p.rel, p.econtext, p.done, p.streamed))
        });
        let Some((cstate, rel, econtext, done, streamed)) = active else {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "livesync._copy_rows is internal to livesync's loading of hypertables and Citus tables",
                "It returns rows only while a livesync worker loads a table."
            );
        };
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        if streamed {
            // One row per call, in the caller's per-row memory (ProjectSet resets it for each row).
            if !done {
                let mut values = vec![pg_sys::Datum::from(0usize); natts];
                let mut nulls = vec![false; natts];
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                if pg_sys::NextCopyFrom(cstate, econtext, values.as_mut_ptr(), nulls.as_mut_ptr()) {
                    // heap_form_tuple stamps the row type of `rel`, which makes it a composite datum.
                    let tuple =
                        pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
                    let rows = PARSER.with(|p| {
                        let mut p = p.borrow_mut();
                        let p = p.as_mut().expect("parser still active");
                        p.rows += 1;
                        p.rows
                    });
                    if rows % STREAMED_PROGRESS_ROWS == 0 {
                        pg_sys::pgstat_progress_update_param(
                            pg_sys::PROGRESS_COPY_TUPLES_PROCESSED as i32,
                            rows,
                        );
                    }
                    (*rsinfo).isDone = pg_sys::ExprDoneCond::ExprMultipleResult;
                    return pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data);
                }
                let rows = PARSER.with(|p| {
                    let mut p = p.borrow_mut();
                    let p = p.as_mut().expect("parser still active");
                    p.done = true;
                    p.rows
                });
                pg_sys::pgstat_progress_update_param(
                    pg_sys::PROGRESS_COPY_TUPLES_PROCESSED as i32,
                    rows,
                );
            }
            (*rsinfo).isDone = pg_sys::ExprDoneCond::ExprEndResult;
            (*fcinfo).isnull = true;
            return pg_sys::Datum::from(0usize);
        }
        let per_query = (*(*rsinfo).econtext).ecxt_per_query_memory;
        let old = pg_sys::MemoryContextSwitchTo(per_query);
        let store = pg_sys::tuplestore_begin_heap(true, false, pg_sys::work_mem);
        let result_desc = pg_sys::CreateTupleDescCopy(tupdesc);
        pg_sys::MemoryContextSwitchTo(old);
        let row_cx = pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"livesync copy row".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![false; natts];
        let start_bytes = SOURCE.with(|s| s.borrow().as_ref().map(|s| s.bytes).unwrap_or(0));
        let mut n = 0i64;
        let mut finished = done;
        while !finished && n < EXECUTOR_SLICE_ROWS {
            let prev = pg_sys::MemoryContextSwitchTo(row_cx);
            let more =
                pg_sys::NextCopyFrom(cstate, econtext, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::MemoryContextSwitchTo(per_query);
            if more {
                pg_sys::tuplestore_putvalues(
                    store,
                    result_desc,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                );
                n += 1;
            } else {
                finished = true;
            }
            pg_sys::MemoryContextSwitchTo(prev);
            pg_sys::MemoryContextReset(row_cx);
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            let read =
                SOURCE.with(|s| s.borrow().as_ref().map(|s| s.bytes).unwrap_or(0)) - start_bytes;
            if read >= EXECUTOR_SLICE_BYTES {
                break;
            }
        }
        pg_sys::MemoryContextDelete(row_cx);
        let total = PARSER.with(|p| {
            let mut p = p.borrow_mut();
            let p = p.as_mut().expect("parser still active");
            p.rows += n;
            p.done = finished;
            p.rows
        });
        // CopyFrom reports processed tuples; on this route nobody else does.
        pg_sys::pgstat_progress_update_param(pg_sys::PROGRESS_COPY_TUPLES_PROCESSED as i32, total);
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = result_desc;
        pg_sys::Datum::from(0usize)
    }
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
