//! Loading a source's COPY stream through the target's own `COPY` command, fed from a pipe.
//!
//! A TimescaleDB hypertable is loaded fastest by TimescaleDB's COPY, which buffers rows per
//! chunk and writes each chunk with multi-inserts; the executor route (`load::Route::Executor`,
//! one `ExecInsert` and chunk dispatch per row) ran at 0.73–0.90× a raw binary COPY pipe into
//! the same hypertable. A Citus table likewise by Citus's COPY, which sends each row to its
//! shard (the executor's `INSERT … SELECT`: 0.71×). Both extensions reach their COPY only from
//! `ProcessUtility` (their hooks take `COPY table FROM …` statements), and that COPY reads a
//! file or the client connection, never a data callback. So this route runs the statement itself, through SPI, as
//! `COPY target (…) FROM '/proc/self/fd/N'`, where `N` is the read end of a pipe made here:
//! the backend opens it as a file (no path in the file system, nothing to clean up, nothing
//! another process could open), and a feeder thread writes the source's COPY data into the
//! write end as it arrives. Whatever hooks the target has on `COPY` run, exactly as for a user's
//! own `COPY`; the running COPY shows in `pg_stat_progress_copy`.
//!
//! The feeder thread only moves bytes: it drives the tokio runtime the source connection lives
//! on (the backend's thread is inside COPY and does not drive it meanwhile) and writes to the
//! pipe. It never calls into PostgreSQL, and it blocks every signal, so PostgreSQL's handlers
//! run only on the backend's thread, as they must.
//!
//! A pipe has no notion of a failed writer: when the feeder stops (the source's stream broke,
//! the worker is shutting down), the backend reads an end of file, and a binary COPY cut at a row
//! boundary ends as if complete. So the COPY's outcome is never trusted alone: the load succeeds
//! only if the feeder saw the source's stream end normally (its CommandComplete) and the COPY
//! read everything written; anything else raises an ERROR, which rolls the transaction — rows
//! and the range's "done" mark — back.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{FutureExt, StreamExt};
use pgrx::pg_sys;
use pgrx::prelude::*;
use tokio_postgres::CopyOutStream;

use crate::runtime::{shutdown_requested, TICK};
use crate::source::quote_ident;

/// Bytes the pipe holds before the feeder waits for the COPY (Linux's default is 64 kB; 1 MB is
/// the unprivileged maximum, `/proc/sys/fs/pipe-max-size`).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Most bytes the feeder gathers from the source before writing them to the pipe.
const BATCH_BYTES: usize = 256 << 10;

/// Why the feeder stopped before the source's stream ended.
enum Stopped {
    /// The source's stream failed (its message).
    Source(String),
    /// The worker is shutting down.
    Shutdown,
    /// The COPY stopped reading: it failed, or ended before the data did.
    ReaderGone,
}

/// Load `stream` (COPY data of `columns`, binary or text) into table `relid` with the target's
/// `COPY` command. Returns (rows, bytes). Runs in the caller's transaction; raises an ERROR on
/// any failure (see the module header).
pub fn load(
    rt: &tokio::runtime::Runtime,
    relid: pg_sys::Oid,
    columns: &[String],
    stream: CopyOutStream,
    binary: bool,
) -> (i64, i64) {
    let target: String =
        Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relid.into()])
            .ok()
            .flatten()
            .expect("target relation has a name");
    let (read_end, write_end) = make_pipe();
    let cols = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    // The path names this process's own descriptor: only this backend can open it. The target
    // name is regclass output (quoted as needed), the columns quoted here.
    let sql = format!(
        "COPY {target} ({cols}) FROM '/proc/self/fd/{}' WITH (FORMAT {})",
        read_end.as_raw_fd(),
        if binary { "binary" } else { "text" }
    );
    let abandon = AtomicBool::new(false);
    let mut stream = Box::pin(stream);
    let (rows, fed) = std::thread::scope(|scope| {
        // The thread starts with every signal blocked (a thread inherits its creator's mask), so
        // no signal can reach it even before it runs; this thread's mask is put back at once.
        let saved = block_all_signals();
        let feeder = std::thread::Builder::new()
            .name("livesync copy feeder".into())
            .spawn_scoped(scope, || feed(rt, stream.as_mut(), write_end, &abandon));
        restore_signals(&saved);
        let feeder =
            feeder.unwrap_or_else(|e| error!("could not start the copy feeder thread: {e}"));
        // On every way out of this closure — an ERROR of the COPY unwinds through here — the
        // feeder is told to stop, so the scope's join cannot wait on a writer blocked on a full
        // pipe nobody reads any more.
        struct Abandon<'a>(&'a AtomicBool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _abandon = Abandon(&abandon);
        let rows =
            Spi::connect_mut(|client| client.update(&sql, None, &[]).map(|t| t.len() as i64))
                .unwrap_or_else(|e| error!("COPY into {target} failed: {e}"));
        (rows, feeder.join())
    });
    drop(read_end);
    match fed {
        Ok(Ok(bytes)) => (rows, bytes),
        Ok(Err(Stopped::Source(msg))) => error!("reading COPY data from the source failed: {msg}"),
        Ok(Err(Stopped::Shutdown)) => error!("livesync worker is shutting down; copy interrupted"),
        Ok(Err(Stopped::ReaderGone)) => {
            error!("the COPY into {target} ended before the source's data did")
        }
        Err(_) => error!("the copy feeder thread of {target} failed"),
    }
}

/// A pipe whose write end does not block (the feeder polls it, so it can notice when to stop),
/// with room for [`PIPE_BYTES`]. Both ends close on exec.
fn make_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        error!(
            "could not create a pipe for COPY: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor this function owns; a failure to grow the pipe only costs speed.
    unsafe {
        libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
        let flags = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(w.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            error!(
                "could not set up a pipe for COPY: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    (r, w)
}

/// The feeder thread: the source's COPY data into `pipe` until the stream ends (Ok: bytes
/// written), or it fails, the worker is shutting down, the reader is gone or `abandon` is set.
/// Closes `pipe` when it returns, which the COPY reads as the end of its data.
fn feed(
    rt: &tokio::runtime::Runtime,
    mut stream: Pin<&mut CopyOutStream>,
    pipe: OwnedFd,
    abandon: &AtomicBool,
) -> Result<i64, Stopped> {
    let stop = || {
        if abandon.load(Ordering::Acquire) {
            Some(Stopped::ReaderGone)
        } else if shutdown_requested() {
            Some(Stopped::Shutdown)
        } else {
            None
        }
    };
    let mut bytes = 0i64;
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    loop {
        let next = rt.block_on(async { tokio::time::timeout(TICK, stream.next()).await });
        let mut ended = false;
        match next {
            Err(_) => {
                if let Some(why) = stop() {
                    return Err(why);
                }
                continue;
            }
            Ok(None) => ended = true,
            Ok(Some(Err(e))) => return Err(source_error(&e)),
            Ok(Some(Ok(b))) => batch.extend_from_slice(&b),
        }
        // The source sends one CopyData message per row: take every one that has already
        // arrived, so the pipe sees large writes rather than a system call (and a wake-up of the
        // COPY) per row.
        while !ended && batch.len() < BATCH_BYTES {
            match stream.next().now_or_never() {
                None => break,
                Some(None) => ended = true,
                Some(Some(Err(e))) => return Err(source_error(&e)),
                Some(Some(Ok(b))) => batch.extend_from_slice(&b),
            }
        }
        write_all(&pipe, &batch, &stop)?;
        bytes += batch.len() as i64;
        batch.clear();
        if ended {
            return Ok(bytes);
        }
    }
}

fn source_error(e: &tokio_postgres::Error) -> Stopped {
    Stopped::Source(
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    )
}

/// Write all of `data` to the non-blocking `pipe`, waiting (in slices, asking `stop` between
/// them) while it is full.
fn write_all(
    pipe: &OwnedFd,
    data: &[u8],
    stop: &dyn Fn() -> Option<Stopped>,
) -> Result<(), Stopped> {
    let mut rest = data;
    while !rest.is_empty() {
        // SAFETY: writes at most rest.len() bytes from a live slice to a descriptor this thread owns.
        let n = unsafe { libc::write(pipe.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => {
                if let Some(why) = stop() {
                    return Err(why);
                }
                let mut pfd = libc::pollfd {
                    fd: pipe.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; the timeout bounds how long a stop request waits.
                unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as libc::c_int) };
            }
            // EPIPE: no reader is left (SIGPIPE is blocked on this thread, so write says so).
            _ => return Err(Stopped::ReaderGone),
        }
    }
    Ok(())
}

/// Block every signal on the calling thread; returns the mask it had.
fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset initialises `all`; pthread_sigmask changes only the calling thread's mask and
    // stores the previous one in `saved`, a sigset_t it may overwrite whole.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved);
        saved
    }
}

/// Put back the calling thread's signal mask (signals that came meanwhile are delivered now).
fn restore_signals(saved: &libc::sigset_t) {
    // SAFETY: `saved` is a mask pthread_sigmask returned; this sets the calling thread's mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, saved, std::ptr::null_mut()) };
}
