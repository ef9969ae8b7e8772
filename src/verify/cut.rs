//! The consistent cut of a verification: one instant at which the source and the target are
//! read, while both keep running.
//!
//! The source side is a snapshot exported by a temporary slot at its consistent point `L`: it
//! holds exactly the source transactions committing before `L` (`final_lsn < L`, the convention
//! of the copy hand-off in `src/apply/`). The target side must hold exactly the same ones, so the
//! connector's stream stops *between* source transactions once it has applied everything before
//! `L` and nothing after it — before the first BEGIN at or past `L`, or, on a quiet source, once
//! it has received past `L` with no source transaction open — commits what it holds, and waits
//! while the verifier takes its target snapshot. That wait is the only pause the stream sees
//! (measured and reported as `pause_ms`).
//!
//! The request travels through shared memory, not the catalog: the stream looks at it at every
//! BEGIN, so a cheap atomic counter says whether any request is pending at all. If the stream had
//! already begun a transaction at or past `L` when the request arrived, the cut is *missed*
//! (the target cannot go back) and the verifier tries again with a new snapshot.
//!
//! States of a request: `Requested` (verifier) → `AtCut` (stream, waiting) → `Taken` (verifier
//! has its snapshot; the stream goes on) — or `Missed` / `Abandoned` (the stream waited too long
//! for the verifier), after which the verifier frees the slot.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{PgAtomic, PgLwLock};

const SLOTS: usize = 8;
/// How long the stream waits at the cut for the verifier's snapshot before it goes on.
const HOLD_LIMIT: Duration = Duration::from_secs(5);

#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum State {
    #[default]
    Free = 0,
    Requested,
    AtCut,
    Taken,
    Missed,
    Abandoned,
}

#[derive(Copy, Clone, Default)]
struct Slot {
    state: State,
    connector_id: i32,
    lsn: u64,
    verifier_pid: i32,
    stream_pid: i32,
    /// When the stream reached the cut (`GetCurrentTimestamp`, comparable across processes).
    at_cut: i64,
}

#[derive(Copy, Clone, Default)]
pub struct Cuts {
    slots: [Slot; SLOTS],
}

// SAFETY: Cuts is plain old data (no pointers), so it can live in shared memory.
unsafe impl PGRXSharedMemory for Cuts {}

// SAFETY: the names are unique to livesync.
static CUTS: PgLwLock<Cuts> = unsafe { PgLwLock::new(c"livesync_verify_cuts") };
static PENDING: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"livesync_verify_cuts_pending") };

/// Reserve the shared memory (from `_PG_init`, while shared_preload_libraries load).
// The macro tests features of other server versions this crate does not declare.
#[allow(unexpected_cfgs)]
pub fn init() {
    pgrx::pg_shmem_init!(CUTS);
    pgrx::pg_shmem_init!(PENDING);
}

/// A cut the stream of a connector must make.
#[derive(Copy, Clone, Debug)]
pub struct Pending {
    slot: usize,
    pub lsn: u64,
}

/// Stream side: the cut requested for `connector_id`, if any (one atomic read when none is).
pub fn pending(connector_id: i32) -> Option<Pending> {
    if PENDING.get().load(Ordering::Acquire) == 0 {
        return None;
    }
    let g = CUTS.share();
    g.slots
        .iter()
        .enumerate()
        .find(|(_, s)| s.state == State::Requested && s.connector_id == connector_id)
        .map(|(i, s)| Pending {
            slot: i,
            lsn: s.lsn,
        })
}

fn set_state(slot: usize, from: State, to: State) -> Option<i32> {
    let mut g = CUTS.exclusive();
    let s = &mut g.slots[slot];
    if s.state != from {
        return None;
    }
    s.state = to;
    Some(s.verifier_pid)
}

/// Stream side: the stream had already begun a transaction at or past the cut.
pub fn missed(p: Pending) {
    if let Some(pid) = set_state(p.slot, State::Requested, State::Missed) {
        crate::worker::wake(pid);
    }
}

/// Stream side: everything before the cut is committed and nothing after it. Wait (at most
/// [`HOLD_LIMIT`]) until the verifier has taken its target snapshot; returns how long it took.
pub fn hold(p: Pending) -> Duration {
    let start = Instant::now();
    {
        let mut g = CUTS.exclusive();
        let s = &mut g.slots[p.slot];
        if s.state != State::Requested {
            return Duration::ZERO;
        }
        s.state = State::AtCut;
        // SAFETY: MyProcPid is a backend-local global, read on the process's only thread.
        s.stream_pid = unsafe { pg_sys::MyProcPid };
        // SAFETY: GetCurrentTimestamp only reads the clock.
        s.at_cut = unsafe { pg_sys::GetCurrentTimestamp() };
        crate::worker::wake(s.verifier_pid);
    }
    loop {
        if CUTS.share().slots[p.slot].state != State::AtCut {
            break;
        }
        let waited = start.elapsed();
        if waited >= HOLD_LIMIT || crate::runtime::shutdown_requested() {
            if set_state(p.slot, State::AtCut, State::Abandoned).is_some() {
                pgrx::log!("livesync: a verification took no snapshot within {HOLD_LIMIT:?} of the cut; the stream goes on");
            }
            break;
        }
        let left = (HOLD_LIMIT - waited).as_millis().clamp(1, 10) as i64;
        // SAFETY: WaitLatch on this process's own latch with a timeout, then ResetLatch, as every
        // PostgreSQL wait loop does; the state is re-read after each wake-up.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    // The latch may also have been set for the stream's own reasons (add_table, a reload):
    // set it again so its next wait looks at the catalog at once.
    // SAFETY: setting this process's own latch is always allowed.
    unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
    start.elapsed()
}

/// Verifier side: a request slot, held until dropped.
pub struct Request {
    slot: usize,
}

impl Request {
    /// Ask the stream of `connector_id` for a cut at `lsn`. None if every slot is taken (as many
    /// verifications run at once).
    pub fn new(connector_id: i32, lsn: u64) -> Option<Request> {
        let mut g = CUTS.exclusive();
        let i = g.slots.iter().position(|s| s.state == State::Free)?;
        // SAFETY: MyProcPid is a backend-local global, read on the process's only thread.
        let me = unsafe { pg_sys::MyProcPid };
        g.slots[i] = Slot {
            state: State::Requested,
            connector_id,
            lsn,
            verifier_pid: me,
            stream_pid: 0,
            at_cut: 0,
        };
        PENDING.get().fetch_add(1, Ordering::AcqRel);
        Some(Request { slot: i })
    }

    pub fn state(&self) -> State {
        CUTS.share().slots[self.slot].state
    }

    /// The target snapshot is taken: let the stream go on. Returns how long the stream has
    /// waited at the cut, or None if it had given up.
    pub fn taken(&self) -> Option<Duration> {
        let mut g = CUTS.exclusive();
        let s = &mut g.slots[self.slot];
        if s.state != State::AtCut {
            return None;
        }
        s.state = State::Taken;
        crate::worker::wake(s.stream_pid);
        // SAFETY: GetCurrentTimestamp only reads the clock.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        Some(Duration::from_micros((now - s.at_cut).max(0) as u64))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let mut g = CUTS.exclusive();
        let s = &mut g.slots[self.slot];
        if s.state == State::AtCut {
            crate::worker::wake(s.stream_pid);
        }
        *s = Slot::default();
        PENDING.get().fetch_sub(1, Ordering::AcqRel);
    }
}
