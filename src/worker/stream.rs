//! The change stream of a connector: receive pgoutput from the connector's slot, apply it
//! ([`crate::apply::Applier`]), report progress to the source.
//!
//! The loop reads every message libpq has buffered, then — only when the socket has nothing more —
//! commits the open target transaction (if it ends on a source commit), sends feedback, does its
//! once-a-second housekeeping and sleeps on the latch *and* the socket. Reading is never starved
//! by applying: each message is applied as it arrives, so keepalives are answered well within
//! the source's `wal_sender_timeout` and a huge source transaction needs no memory beyond the
//! current change. A target transaction is also committed once it holds [`BATCH_CHANGES`]
//! changes and the source transaction it is in has ended.
//!
//! Feedback: `write` is the last position received; `flush` and `apply` only cover source
//! commits whose target commit is durable (`XLogFlush` of its local commit record first), or —
//! when nothing is pending at all — everything received, so an idle slot keeps advancing.

use std::time::{Duration, Instant};

use pgrx::prelude::*;

use super::Backoff;
use crate::apply::spool::Spool;
use crate::apply::{origin, Applier, ApplyError};
use crate::catalog::{self, tables, Connector};
use crate::error::Caught;
use crate::source::pgoutput::{
    self, Begin, Commit, Decoder, LogicalMessage, ReplicationMessage, StreamCommit,
};
use crate::walrcv::{Received, ReplicationConn};

/// Commit the target transaction at the next source commit once it holds this many changes.
pub const BATCH_CHANGES: usize = 5_000;
const FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often the publication's membership and the slot's health are read from the source.
pub const SOURCE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// When the source has nothing more to send right now, the open target transaction is
/// committed once it is this old, or as soon as the source stays quiet for a moment: waiting a
/// few milliseconds for more source transactions spares a target commit (and a flush of the
/// batches) per wake-up, while keeping the added latency far below what a user can notice.
const COMMIT_DELAY: Duration = Duration::from_millis(10);
/// The feedback to the source is sent at least this often while positions advance.
const FEEDBACK_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A wake-up that brought at least this many messages marks the stream busy.
const BUSY_MESSAGES: usize = 64;
/// While busy, the socket wakes us once this much data is buffered ...
const BUSY_LOW_WATER: libc::c_int = 64 << 10;
/// ... or after this long.
const BUSY_WAIT: Duration = Duration::from_millis(2);

/// Once the stream carries large transactions (a target transaction reaches [`BATCH_CHANGES`]
/// changes), the socket's receive buffer is raised to this, so the walsender keeps sending while a
/// large batch is applied instead of the two processes taking turns. Streams of small
/// transactions keep the kernel's autotuned buffer, as native subscriptions do: a fixed large
/// buffer made the source's walsender — which sends every message as its own TCP segment —
/// slower there. Measured (`bench/run.sh`, 2 cores): 200,000 single-row transactions took
/// 5.5–6.4 s with a fixed 8 MB buffer and 2.6–4.0 s without (native 3.6–3.9 s); one
/// 2,000,000-row transaction 14.6 s with it and 15.6 s without.
const BIG_RCVBUF: libc::c_int = 8 << 20;

/// Set a `SOL_SOCKET` option of the replication socket: `SO_RCVLOWAT` (how many bytes must be
/// buffered before the socket reports itself readable) or `SO_RCVBUF` (see [`BIG_RCVBUF`]).
fn set_socket_option(fd: pg_sys::pgsocket, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from `bytes`, a live local; `fd` is the open
    // replication socket (a failure only leaves the option unchanged, and is ignored).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The latch, the postmaster and the replication socket, waited on together. One set for the
/// whole stream: building one per wait (`WaitLatchOrSocket`) costs an epoll descriptor and three
/// system calls every time the socket runs dry.
struct Waiter {
    set: *mut pg_sys::WaitEventSet,
    fd: pg_sys::pgsocket,
}

impl Waiter {
    fn new(fd: pg_sys::pgsocket) -> Waiter {
        // SAFETY: the set is allocated in TopMemoryContext (outlives transactions; freed in Drop) with room for
        // the 3 events added; MyLatch is our own latch and `fd` the open replication socket.
        unsafe {
            // 17 takes a resource owner instead of a memory context; NULL: allocated in
            // TopMemoryContext for the session, tracked by no resource owner, as on 15.
            #[cfg(feature = "pg15")]
            let set = pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, 3);
            #[cfg(feature = "pg18")]
            let set = pg_sys::CreateWaitEventSet(std::ptr::null_mut(), 3);
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_LATCH_SET,
                pg_sys::PGINVALID_SOCKET,
                pg_sys::MyLatch,
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_POSTMASTER_DEATH,
                pg_sys::PGINVALID_SOCKET,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_SOCKET_READABLE,
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            Waiter { set, fd }
        }
    }

    /// Wait up to `timeout_ms`; the events that occurred (`WL_*` bits, 0 on timeout).
    fn wait(&mut self, timeout_ms: i64) -> u32 {
        // SAFETY: self.set is the live set from `new`; `event` is a zeroed plain C struct, room for the 1 event
        // requested; MyLatch is this process's own latch.
        unsafe {
            let mut event: pg_sys::WaitEvent = std::mem::zeroed();
            let n = pg_sys::WaitEventSetWait(
                self.set,
                timeout_ms as _,
                &mut event,
                1,
                pg_sys::PG_WAIT_EXTENSION,
            );
            let events = if n > 0 { event.events } else { 0 };
            if events & pg_sys::WL_LATCH_SET != 0 {
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            events
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: self.set came from CreateWaitEventSet in `new` and is freed once, here.
        unsafe { pg_sys::FreeWaitEventSet(self.set) };
    }
}

pub enum Outcome {
    /// The worker must exit (SIGTERM, paused, dropped).
    Stop,
    /// Tables wait for their initial copy: copy them, then stream again.
    CopyDue,
    /// A table was put in error; restart from the origin's position.
    Restart,
    /// The stream failed (connection lost, source error): reconnect with back-off.
    Failed(String),
    /// A transient error on the target (lock timeout, deadlock, cancel, out of disk …) rolled
    /// the open transaction back: stream again from the origin after a back-off.
    Retry(String),
}

/// Whether the connector should keep streaming: still enabled, and no table due for a copy.
fn housekeeping(c: &Connector) -> Option<Outcome> {
    match super::in_transaction(|| -> crate::error::Result<Option<Outcome>> {
        match catalog::connector_by_id(c.id)? {
            Some(now) if now.enabled => {}
            _ => return Ok(Some(Outcome::Stop)),
        }
        Ok((!tables::due_for_copy(c.id)?.is_empty()).then_some(Outcome::CopyDue))
    }) {
        Ok(Ok(o)) => o,
        _ => None,
    }
}

/// Read the slot's retained WAL and `wal_status` into the catalog (shown in
/// `livesync.connectors`).
pub fn check_slot(c: &Connector, client: &tokio_postgres::Client, rt: &tokio::runtime::Runtime) {
    let q = async {
        client
            .query_opt(
                "SELECT wal_status, (pg_catalog.pg_current_wal_lsn() - restart_lsn)::int8, safe_wal_size::int8
                   FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&c.slot_name],
            )
            .await
    };
    if let Some(Ok(Some(r))) = crate::runtime::block_on_until_shutdown(rt, q) {
        let status: Option<String> = r.get(0);
        let retained: Option<i64> = r.get(1);
        let safe: Option<i64> = r.get(2);
        let _ =
            super::in_transaction(|| catalog::report_slot(c.id, status.as_deref(), retained, safe));
    }
}

struct Progress<'r> {
    /// Where this stream started (the origin's position).
    start: u64,
    /// The previous stream ended in a transient error: clear the tables' `retrying` and the
    /// back-off at the first commit past `start`.
    retrying: bool,
    retry: &'r mut Backoff,
    received: u64,
    /// Source end LSN of the last committed target transaction, and its local commit end.
    committed_remote: u64,
    committed_local: u64,
    flushed: u64,
    source_wal_end: u64,
    last_commit_time: i64,
    connector_id: i32,
    /// The commit LSN of the last source transaction begun (for a verification's cut).
    last_begin_final: u64,
}

impl Progress<'_> {
    fn record_commit(&mut self, r: Option<(u64, i64, u64)>) {
        if let Some((end, ts, local)) = r {
            self.committed_remote = self.committed_remote.max(end);
            self.committed_local = local;
            self.last_commit_time = ts;
        }
    }

    fn feedback(&mut self, conn: &mut ReplicationConn, nothing_pending: bool, reply: bool) {
        if self.committed_local != 0 {
            // Crash-sensitive: never confirm to the source what could still be lost here.
            // SAFETY: committed_local is XactLastCommitEnd of a commit made by this process, so WAL already
            // inserted; we are outside any critical section.
            unsafe { pg_sys::XLogFlush(self.committed_local) };
        }
        let mut flushed = self.committed_remote;
        if nothing_pending {
            flushed = flushed.max(self.received);
        }
        self.flushed = self.flushed.max(flushed);
        let now = pgoutput::pg_epoch_micros(std::time::SystemTime::now());
        // A failed send shows up as a failed receive right after.
        let _ = conn.send(&pgoutput::encode_standby_status(
            self.received,
            self.flushed,
            self.flushed,
            now,
            reply,
        ));
    }
}

/// Stream until something needs the worker's attention.
/// `client` (a regular connection to the source, driven by `rt`) serves the periodic checks of
/// the publication and of the slot's health.
pub fn run(
    c: &Connector,
    conninfo: &str,
    application_name: &str,
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    retry: &mut Backoff,
    info: &crate::source::conninfo::SourceConninfo,
    batches: &mut crate::copy::Batches,
) -> Outcome {
    let start = match super::in_transaction(|| {
        Spi::run("SET session_replication_role = replica").expect("SET failed");
        origin::session_progress(&c.slot_name)
    }) {
        Ok(lsn) => lsn,
        Err(e) => return Outcome::Failed(format!("could not set up replication origin: {e}")),
    };

    let mut conn = match ReplicationConn::connect(conninfo, application_name) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    // PostgreSQL 14+ sources can stream large transactions while they run (protocol 2), the
    // target spooling them until they commit (see apply::spool); otherwise they come at commit.
    let streaming = conn.server_version() >= 140000 && crate::guc::STREAM_IN_PROGRESS.get();
    let mut spool = match Spool::new(c.id) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed(format!(
                "could not prepare the spool for streamed transactions: {e}"
            ))
        }
    };
    let publications = [c.publication_name.clone(), c.append_publication_name()];
    if let Err(e) = conn.start_logical(
        &c.slot_name,
        start,
        if streaming { 2 } else { 1 },
        streaming,
        &publications,
    ) {
        return Outcome::Failed(e);
    }
    let _ = super::in_transaction(|| catalog::report_running(c.id));

    let mut decoder = Decoder::new();
    // The transaction whose Stream Start … Stream Stop block is being received.
    let mut stream_xid: Option<u32> = None;
    let mut applier = Applier::new(c.id, c.auto_add_columns);
    let mut p = Progress {
        start,
        retrying: !retry.is_reset(),
        retry,
        received: start,
        committed_remote: start,
        committed_local: 0,
        flushed: start,
        source_wal_end: 0,
        last_commit_time: 0,
        connector_id: c.id,
        last_begin_final: 0,
    };
    let mut last_feedback = Instant::now();
    // Housekeeping runs at once: tables added before the stream started (a new connector, a
    // restart) start copying now, not a HOUSEKEEPING_INTERVAL later (that second was 7% of an
    // 838 MB hypertable copy in the benchmark).
    let mut last_housekeeping = Instant::now() - HOUSEKEEPING_INTERVAL;
    // The first refresh of the sequences comes with the first housekeeping.
    let mut last_sequences: Option<Instant> = None;
    let mut last_source_check = Instant::now();
    let mut waiter: Option<Waiter> = None;
    // The last wait for the socket ended without data: commit now.
    let mut quiet = false;
    // Messages received since the last wait, and whether the socket only wakes us for a
    // [`BUSY_LOW_WATER`] of data (`SO_RCVLOWAT`).
    let mut since_wait = 0usize;
    let mut low_water = false;
    // The replication socket (known from the first wait), and whether it has BIG_RCVBUF.
    let mut socket: Option<pg_sys::pgsocket> = None;
    let mut big_rcvbuf = false;

    loop {
        let received = match conn.receive() {
            Ok(r) => r,
            Err(e) => return abort(&mut applier, Outcome::Failed(e)),
        };
        match received {
            Received::Data(buf) => {
                since_wait += 1;
                let msg = match pgoutput::parse_replication_message(buf) {
                    Ok(m) => m,
                    Err(e) => {
                        return abort(
                            &mut applier,
                            Outcome::Failed(format!("invalid replication message: {e}")),
                        )
                    }
                };
                match msg {
                    ReplicationMessage::XLogData { wal_end, data, .. } => {
                        p.received = p.received.max(wal_end);
                        p.source_wal_end = p.source_wal_end.max(wal_end);
                        let decoded = match decoder.decode(data) {
                            Ok(d) => d,
                            Err(e) => {
                                return abort(
                                    &mut applier,
                                    Outcome::Failed(format!("invalid pgoutput message: {e}")),
                                )
                            }
                        };
                        // Streamed transactions go to the spool; their commit replays them.
                        let spooled = match &decoded {
                            LogicalMessage::StreamStart(s) => {
                                stream_xid = Some(s.xid);
                                spool.start(s.xid, s.first_segment).map(|_| true)
                            }
                            LogicalMessage::StreamStop => {
                                stream_xid = None;
                                Ok(true)
                            }
                            LogicalMessage::StreamAbort(a) => {
                                spool.abort(a.xid, a.subxid).map(|_| true)
                            }
                            LogicalMessage::StreamCommit(_) => Ok(false),
                            // RELATION and TYPE messages are spooled and also taken in at once: a
                            // subtransaction abort may cut away the block that carried them, while
                            // later changes of the transaction still refer to them.
                            m => match stream_xid {
                                Some(xid) => {
                                    let described = matches!(
                                        m,
                                        LogicalMessage::Relation(_) | LogicalMessage::Type(_)
                                    );
                                    spool
                                        .append(xid, if described { None } else { m.xid() }, data)
                                        .map(|_| !described)
                                }
                                None => Ok(false),
                            },
                        };
                        match spooled {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(e) => {
                                return abort(
                                    &mut applier,
                                    Outcome::Failed(format!(
                                        "could not spool a streamed transaction: {e}"
                                    )),
                                )
                            }
                        }
                        let begins = match &decoded {
                            LogicalMessage::Begin(b) => Some(b.final_lsn.0),
                            LogicalMessage::StreamCommit(sc) => Some(sc.commit_lsn.0),
                            _ => None,
                        };
                        if let Some(final_lsn) = begins {
                            if let Err(o) = cut_before(&mut applier, &mut p, Some(final_lsn)) {
                                return o;
                            }
                            p.last_begin_final = p.last_begin_final.max(final_lsn);
                        }
                        if let LogicalMessage::StreamCommit(sc) = decoded {
                            if let Err(o) = replay(&mut applier, &mut spool, &sc, &mut conn, &mut p)
                            {
                                return o;
                            }
                            last_feedback = Instant::now();
                            continue;
                        }
                        match guarded(&mut applier, |a| a.handle(decoded, data, false)) {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return table_error(&mut applier, e),
                            Err(message) => return pg_error(&mut applier, message),
                        }
                        if !big_rcvbuf && applier.changes_in_txn >= BATCH_CHANGES {
                            if let Some(fd) = socket {
                                set_socket_option(fd, libc::SO_RCVBUF, BIG_RCVBUF);
                                big_rcvbuf = true;
                            }
                        }
                        if applier.txn_open
                            && !applier.in_source_txn()
                            && applier.changes_in_txn >= BATCH_CHANGES
                        {
                            if let Err(o) = commit(&mut applier, &mut p) {
                                return o;
                            }
                        }
                    }
                    ReplicationMessage::Keepalive {
                        wal_end,
                        reply_requested,
                        ..
                    } => {
                        p.source_wal_end = p.source_wal_end.max(wal_end);
                        if !applier.txn_open {
                            p.received = p.received.max(wal_end);
                        }
                        if reply_requested {
                            p.feedback(&mut conn, !applier.txn_open, false);
                            last_feedback = Instant::now();
                        }
                    }
                }
            }
            Received::WouldBlock(fd) => {
                socket = Some(fd);
                let mut timeout_ms: i64 = 1000;
                // A verification's cut on a quiet source: everything before it has arrived once
                // the source has sent a position past it with no transaction open; ask for that
                // position often meanwhile.
                if crate::verify::cut::pending(c.id).is_some() {
                    if let Err(o) = cut_before(&mut applier, &mut p, None) {
                        return o;
                    }
                    if crate::verify::cut::pending(c.id).is_some()
                        && last_feedback.elapsed() >= CUT_POLL
                    {
                        p.feedback(&mut conn, !applier.txn_open, true);
                        last_feedback = Instant::now();
                    }
                    timeout_ms = CUT_POLL.as_millis() as i64;
                }
                // A busy stream (many messages per wake-up) is read in larger pieces: the socket
                // then wakes us when a good amount of data is there, or after BUSY_WAIT at the
                // latest; a wait that ends with less goes back to waking on every byte.
                let busy = since_wait >= BUSY_MESSAGES;
                if busy != low_water {
                    set_socket_option(fd, libc::SO_RCVLOWAT, if busy { BUSY_LOW_WATER } else { 1 });
                    low_water = busy;
                }
                since_wait = 0;
                if low_water {
                    timeout_ms = BUSY_WAIT.as_millis() as i64;
                }
                if applier.txn_open && !applier.in_source_txn() {
                    let age = applier.txn_age();
                    if quiet || age >= COMMIT_DELAY {
                        if let Err(o) = commit(&mut applier, &mut p) {
                            return o;
                        }
                    } else {
                        timeout_ms = timeout_ms.min((COMMIT_DELAY - age).as_millis().max(1) as i64);
                    }
                }
                // Confirm new commits soon (the source's slot and lag views follow), and in any case
                // once a second (it also answers the walsender's keepalives in long transactions).
                let advanced = !applier.txn_open
                    && p.committed_remote > p.flushed
                    && last_feedback.elapsed() >= FEEDBACK_MIN_INTERVAL;
                if advanced || last_feedback.elapsed() >= FEEDBACK_INTERVAL {
                    p.feedback(&mut conn, !applier.txn_open, false);
                    last_feedback = Instant::now();
                }
                if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL && !applier.txn_open {
                    last_housekeeping = Instant::now();
                    let _ = super::in_transaction(|| {
                        let _ = applier.save_counts();
                        catalog::report_stream_stats(
                            c.id,
                            &catalog::StreamStats {
                                received: p.received,
                                applied: p.committed_remote,
                                flushed: p.flushed,
                                source_wal_end: p.source_wal_end,
                                last_commit_time: p.last_commit_time,
                            },
                        )
                    });
                    if last_source_check.elapsed() >= SOURCE_CHECK_INTERVAL {
                        last_source_check = Instant::now();
                        crate::copy::reconcile(c, client, rt);
                        check_slot(c, client, rt);
                    }
                    match housekeeping(c) {
                        Some(Outcome::CopyDue) => {
                            // Tables to copy: copied beside the stream, which spools their
                            // changes from their snapshot on (see the hand-off in src/apply/).
                            if !crate::copy::start_batch(c, conninfo, info, rt, batches) {
                                return abort(&mut applier, Outcome::Stop);
                            }
                        }
                        Some(o) => return o,
                        None => {}
                    }
                    crate::copy::tend_batches(c, conninfo, batches);
                    applier.reload_tables = true;
                    // Tables whose copy is loaded: replay what was spooled for them, in a target
                    // transaction of its own, which marks them copied.
                    let loaded = super::in_transaction(|| tables::loaded_spooled(c.id))
                        .ok()
                        .and_then(|r| r.ok())
                        .unwrap_or_default();
                    let copied_now = !loaded.is_empty();
                    for id in loaded {
                        match guarded(&mut applier, |a| a.replay_spool(id)) {
                            Ok(Ok(n)) => {
                                pgrx::log!("livesync: replayed {n} spooled changes of table {id}")
                            }
                            Ok(Err(e)) => return table_error(&mut applier, e),
                            Err(e) => return pg_error(&mut applier, e),
                        }
                        if let Err(o) = commit(&mut applier, &mut p) {
                            return o;
                        }
                    }
                    // Sequences: set when a table finishes its copy, then refreshed now and then
                    // (src/sequences.rs); outside the apply transaction (none is open here).
                    let every = crate::guc::SEQUENCE_SYNC_INTERVAL.get();
                    if copied_now
                        || (every > 0
                            && last_sequences
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(every as u64)))
                    {
                        last_sequences = Some(Instant::now());
                        crate::sequences::sync_connector(c.id, client, rt);
                    }
                }
                if waiter.as_ref().is_none_or(|w| w.fd != fd) {
                    waiter = Some(Waiter::new(fd));
                }
                let events = waiter.as_mut().unwrap().wait(timeout_ms);
                let rc = events as i32;
                quiet = events == 0 && applier.txn_open;
                crate::runtime::reload_config_if_requested();
                if rc & pg_sys::WL_POSTMASTER_DEATH as i32 != 0
                    || crate::runtime::shutdown_requested()
                {
                    return abort(&mut applier, Outcome::Stop);
                }
                if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
                    // Woken by add_table/remove_table/resync_table (or a reload): look at the
                    // catalog, and bring the publication in line with it, now.
                    last_housekeeping = Instant::now() - HOUSEKEEPING_INTERVAL;
                    last_source_check = Instant::now() - SOURCE_CHECK_INTERVAL;
                }
            }
            Received::End => {
                return abort(
                    &mut applier,
                    Outcome::Failed("the source ended the replication stream".into()),
                )
            }
        }
    }
}

/// While a verification waits for its cut, the stream asks the source for its position this often.
const CUT_POLL: Duration = Duration::from_millis(10);

/// A verification's cut (`src/verify/cut.rs`): before a source transaction committing at
/// `final_lsn` (Some) is applied, or while waiting for data (None). At the cut `L` — the next
/// transaction commits at or after `L`, or everything up to `L` has arrived and no source
/// transaction is open — commit what the target transaction holds (source transactions before
/// `L` only) and hold while the verifier takes its snapshot. A stream that already began a
/// transaction at or past `L` cannot make that cut: it says so, and the verifier tries anew.
fn cut_before(
    applier: &mut Applier,
    p: &mut Progress,
    final_lsn: Option<u64>,
) -> Result<(), Outcome> {
    let Some(cut) = crate::verify::cut::pending(p.connector_id) else {
        return Ok(());
    };
    if p.last_begin_final >= cut.lsn || p.committed_remote > cut.lsn {
        crate::verify::cut::missed(cut);
        return Ok(());
    }
    let at_cut = match final_lsn {
        Some(f) => f >= cut.lsn,
        None => p.received >= cut.lsn && !applier.in_source_txn(),
    };
    if !at_cut {
        return Ok(());
    }
    if applier.txn_open {
        commit(applier, p)?;
    }
    let paused = crate::verify::cut::hold(cut);
    pgrx::debug1!("livesync: held the stream {paused:?} at a verification's cut");
    Ok(())
}

/// Apply a committed streamed transaction from the spool, as one source transaction. Feedback
/// keeps going out meanwhile (the socket is not read while a long replay runs, and the walsender
/// must still hear from us within its timeout).
fn replay(
    applier: &mut Applier,
    spool: &mut Spool,
    sc: &StreamCommit,
    conn: &mut ReplicationConn,
    p: &mut Progress,
) -> Result<(), Outcome> {
    let messages = match spool.take(sc.xid) {
        Ok(m) => m,
        Err(e) => {
            return Err(abort(
                applier,
                Outcome::Failed(format!("could not read a spooled transaction: {e}")),
            ))
        }
    };
    let begin = LogicalMessage::Begin(Begin {
        final_lsn: sc.commit_lsn,
        commit_time: sc.commit_time,
        xid: sc.xid,
    });
    let mut decoder = Decoder::streamed();
    let mut last_feedback = Instant::now();
    let mut next: Option<Result<(LogicalMessage, Vec<u8>), String>> = Some(Ok((begin, Vec::new())));
    let mut messages = messages.into_iter().flatten();
    while let Some(m) = next.take() {
        let (m, raw) = match m {
            Ok(m) => m,
            Err(e) => return Err(abort(applier, Outcome::Failed(e))),
        };
        match guarded(applier, |a| a.handle(m, &raw, true)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(table_error(applier, e)),
            Err(message) => return Err(pg_error(applier, message)),
        }
        if last_feedback.elapsed() >= FEEDBACK_INTERVAL {
            p.feedback(conn, false, false);
            last_feedback = Instant::now();
        }
        next = match messages.next() {
            Some(Ok(raw)) => Some(
                decoder
                    .decode(&raw)
                    .map(|m| (m, raw.to_vec()))
                    .map_err(|e| format!("invalid spooled pgoutput message: {e}")),
            ),
            Some(Err(e)) => Some(Err(format!("could not read a spooled transaction: {e}"))),
            None => None,
        };
    }
    let commit = LogicalMessage::Commit(Commit {
        flags: sc.flags,
        commit_lsn: sc.commit_lsn,
        end_lsn: sc.end_lsn,
        commit_time: sc.commit_time,
    });
    match guarded(applier, |a| a.handle(commit, &[], true)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(table_error(applier, e)),
        Err(message) => Err(pg_error(applier, message)),
    }
}

/// Run `f` on the applier, catching a PostgreSQL ERROR.
fn guarded<R>(applier: &mut Applier, f: impl FnOnce(&mut Applier) -> R) -> Result<R, Caught> {
    crate::error::catch(|| f(applier))
}

/// Flush pending inserts and commit the target transaction.
fn commit(applier: &mut Applier, p: &mut Progress) -> Result<(), Outcome> {
    if let Err(e) = guarded(applier, |a| a.flush()) {
        return Err(pg_error(applier, e));
    }
    match guarded(applier, |a| a.commit()) {
        Ok(r) => p.record_commit(r),
        Err(e) => return Err(pg_error(applier, e)),
    }
    if p.retrying && p.committed_remote > p.start {
        // The stream got past what failed: the tables that waited are synced again.
        p.retrying = false;
        p.retry.reset();
        let _ = super::in_transaction(|| tables::clear_retrying(applier.connector_id()));
    }
    Ok(())
}

/// A PostgreSQL error while applying. A transient one (lock or statement timeout, deadlock,
/// serialization failure, cancel, shutdown, out of disk or memory, lost connection) rolls back
/// and the stream retries from the origin after a back-off: the table stays synced and shows
/// `retrying` with the reason — a user holding a lock delays a table, never breaks it. Any other
/// (a data error: constraint, type, missing object) puts the table being applied in `error`.
fn pg_error(applier: &mut Applier, e: Caught) -> Outcome {
    let table = applier.current_table;
    if e.is_transient() {
        let reason = format!("{} (SQLSTATE {})", e.message, e.sqlstate);
        let o = abort(applier, Outcome::Retry(reason.clone()));
        if let Some(id) = table {
            let _ = super::in_transaction(|| tables::mark_retrying(id, &reason));
        }
        return o;
    }
    let Some(table_id) = table else {
        return abort(applier, Outcome::Failed(e.message));
    };
    let hint = match &e.hint {
        Some(h) => format!("{h} Then run SELECT livesync.resync_table('schema.table');"),
        None => {
            "Fix the cause on the target, then run SELECT livesync.resync_table('schema.table');"
                .into()
        }
    };
    table_error(
        applier,
        ApplyError {
            table_id,
            sqlstate: e.sqlstate,
            message: e.message,
            detail: e.detail,
            hint: Some(hint),
        },
    )
}

/// Roll back whatever is open (nothing of an unfinished source transaction may commit).
fn abort(applier: &mut Applier, o: Outcome) -> Outcome {
    if applier.txn_open {
        // SAFETY: txn_open means the applier's transaction (begun in begin_target_txn) is still open, possibly
        // failed; aborting it and going back to TopMemoryContext is what in_transaction does on error.
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        }
    }
    applier.reset_after_abort();
    let _ = super::in_transaction(|| applier.save_counts());
    o
}

fn table_error(applier: &mut Applier, e: ApplyError) -> Outcome {
    let context = applier.error_context();
    let o = abort(applier, Outcome::Restart);
    pgrx::log!(
        "livesync: table {} stopped: {} (SQLSTATE {})",
        e.table_id,
        e.message,
        e.sqlstate
    );
    let _ = super::in_transaction(|| {
        tables::mark_stream_error(
            e.table_id,
            &tables::ErrorRecord {
                sqlstate: Some(&e.sqlstate),
                message: &e.message,
                detail: e.detail.as_deref(),
                hint: e.hint.as_deref(),
                context: context.as_deref(),
            },
        )
    });
    o
}
