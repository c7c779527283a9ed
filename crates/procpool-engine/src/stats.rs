//! Counters of a pool's work and of its workers' lives, and the [`Stats`] snapshot read
//! from them.
//!
//! The supervisor records worker starts and ends (a handful of events per worker life);
//! a front records the outcome of each finished job's items as it decodes them (one
//! uncontended lock per job, not per item); the queue length and the jobs in flight are
//! read when a snapshot is taken. Reading clones a small struct under the same lock, so
//! [`Engine::stats`](crate::Engine::stats) is cheap enough to call often.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::TaskErrorKind;

/// One worker slot of a pool, in a [`Stats`] snapshot.
///
/// ```
/// let mut w = procpool_engine::WorkerStats::default(); // as a pool's `stats()` gives
/// w.tasks = 7;
/// let s = procpool_engine::Stats { workers: vec![w], ..Default::default() };
/// let busiest = s.workers.iter().max_by_key(|w| w.tasks).unwrap();
/// assert_eq!((busiest.index, busiest.tasks), (0, 7));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// The slot's index, in `0..workers` (what
    /// [`current_worker`](crate::current_worker) reports inside the worker).
    pub index: usize,
    /// Process id of the slot's current worker (`None` between a worker's end and its
    /// replacement's start).
    pub pid: Option<u32>,
    /// Tasks (items) the current worker ran, succeeded or failed.
    pub tasks: u64,
    /// Time the current worker spent running them, as the worker measured it.
    pub busy: Duration,
    /// How many times a worker was started in this slot after the first: replacements
    /// (after a crash, a time limit or a cancel), recycling, and new tries after a
    /// failed start.
    pub restarts: u32,
    /// Whether a worker of this slot has ended (the next start is a restart).
    ended: bool,
}

/// Failed tasks, by kind.
///
/// ```
/// let f = procpool_engine::Failures { timed_out: 1, ..Default::default() };
/// assert_eq!((f.timed_out, f.total()), (1, 1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// The task panicked.
    pub panicked: u64,
    /// Its worker died (signal or exit) while running it.
    pub died: u64,
    /// It ran past its time limit.
    pub timed_out: u64,
    /// It was cancelled.
    pub cancelled: u64,
    /// Its argument or result could not be encoded or decoded.
    pub codec: u64,
    /// Any other failure: too large, protocol error, pool terminated or broken.
    pub other: u64,
}

impl Failures {
    /// All failed tasks.
    ///
    /// # Examples
    /// ```
    /// let f = procpool_engine::Failures { panicked: 2, died: 1, ..Default::default() };
    /// assert_eq!(f.total(), 3);
    /// ```
    pub fn total(&self) -> u64 {
        self.panicked + self.died + self.timed_out + self.cancelled + self.codec + self.other
    }

    fn count(&mut self, kind: &TaskErrorKind) {
        let n = match kind {
            TaskErrorKind::Panic { .. } => &mut self.panicked,
            TaskErrorKind::WorkerDied { .. } | TaskErrorKind::AgentLost { .. } => &mut self.died,
            TaskErrorKind::TimedOut { .. } | TaskErrorKind::PreparationTimedOut { .. } => {
                &mut self.timed_out
            }
            TaskErrorKind::Cancelled => &mut self.cancelled,
            TaskErrorKind::Codec { .. } => &mut self.codec,
            _ => &mut self.other,
        };
        *n += 1;
    }
}

/// A snapshot of a pool's counters.
///
/// Task counts cover the tasks whose outcome reached a caller (a result nobody waits
/// for any more, of a dropped iterator or a detached handle, is not counted).
///
/// ```
/// let s = procpool_engine::Stats { succeeded: 9, ..Default::default() };
/// assert_eq!(s.done(), 9);
/// assert_eq!(s.failed.total(), 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// One entry per worker slot, in slot order.
    pub workers: Vec<WorkerStats>,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed, by kind.
    pub failed: Failures,
    /// Worker processes started (the first ones and every replacement).
    pub workers_started: u64,
    /// Workers that ended, after their start, other than by recycling or shutdown (a
    /// crash, a kill, a time limit, a cancel): the pool starts another in their slot.
    pub workers_replaced: u64,
    /// Workers retired after reaching their task quota (`recycle_after`).
    pub workers_recycled: u64,
    /// Jobs waiting in the pool's queue (a job carries one or more items).
    pub queued: usize,
    /// Jobs held by workers (running or sent ahead).
    pub in_flight: usize,
    /// For a pool whose workers are agents on other hosts (an MPI pool): how many are
    /// left; `None` for a local pool.
    pub agents: Option<AgentStats>,
}

/// The agents of a pool on other hosts ([`Stats::agents`]).
///
/// ```
/// let a = procpool_engine::AgentStats { started: 3, alive: 2, workers_alive: 8, ..Default::default() };
/// assert_eq!(a.started - a.alive, 1); // one agent lost or taken out
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Agents the pool started with.
    pub started: usize,
    /// Agents still dealt to.
    pub alive: usize,
    /// Workers of the agents still dealt to.
    pub workers_alive: usize,
    /// The agents lost or taken out, each with why (`"MPI rank 2 (host node-a): its
    /// process ended"`).
    pub lost: Vec<String>,
    /// Whether losing an agent is survived (the pool goes on with the others). `false`
    /// when the link cannot tell a lost agent from a broken link, as over an MPI library
    /// without the ULFM fault-tolerance extension: there a lost agent ends the job.
    pub survives_loss: bool,
    /// Why losing an agent is not survived, when it is not (what to install or how to
    /// launch).
    pub note: Option<String>,
}

impl Stats {
    /// Tasks finished, succeeded or failed.
    ///
    /// ```
    /// use procpool_engine::{Failures, Stats};
    ///
    /// let s = Stats {
    ///     succeeded: 8,
    ///     failed: Failures { panicked: 2, ..Default::default() },
    ///     ..Default::default()
    /// };
    /// assert_eq!(s.done(), 10);
    /// ```
    pub fn done(&self) -> u64 {
        self.succeeded + self.failed.total()
    }
}

#[derive(Debug, Default)]
struct Data {
    stats: Stats,
}

/// The live counters, shared by the supervisor, the callers and readers.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    data: Mutex<Data>,
    in_flight: AtomicUsize,
}

impl StatsCell {
    pub(crate) fn new(workers: usize) -> Self {
        let cell = Self::default();
        cell.lock().stats.workers = (0..workers)
            .map(|index| WorkerStats {
                index,
                ..WorkerStats::default()
            })
            .collect();
        cell
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker was started in slot `i`; returns whether it replaces an earlier one.
    pub(crate) fn worker_started(&self, i: usize, pid: u32) -> bool {
        let mut d = self.lock();
        d.stats.workers_started += 1;
        let Some(w) = d.stats.workers.get_mut(i) else {
            return false;
        };
        {
            let restarts = if w.pid.is_some() || w.ended {
                w.restarts + 1
            } else {
                w.restarts
            };
            *w = WorkerStats {
                index: i,
                pid: Some(pid),
                restarts,
                ..WorkerStats::default()
            };
        }
        w.restarts > 0
    }

    /// Slot `i`'s worker ended; `replaced`: for a fault, not recycling or shutdown.
    pub(crate) fn worker_ended(&self, i: usize, replaced: bool, recycled: bool) {
        let mut d = self.lock();
        d.stats.workers_replaced += u64::from(replaced);
        d.stats.workers_recycled += u64::from(recycled);
        if let Some(w) = d.stats.workers.get_mut(i) {
            w.pid = None;
            w.ended = true;
        }
    }

    /// The agents of a pool on other hosts, set by its dispatcher.
    pub(crate) fn set_agents(&self, agents: AgentStats) {
        self.lock().stats.agents = Some(agents);
    }

    /// Jobs the workers hold, set by the supervisor once per loop turn.
    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// Records a finished job's items: `ok` succeeded and `failed` failed, run by worker
    /// `pid` (if one ran them) for `nanos`.
    fn record<'a>(
        &self,
        pid: Option<u32>,
        nanos: u64,
        ok: u64,
        failed: impl IntoIterator<Item = Option<&'a TaskErrorKind>>,
    ) {
        let mut d = self.lock();
        let mut n = ok;
        d.stats.succeeded += ok;
        for kind in failed {
            match kind {
                Some(k) => d.stats.failed.count(k),
                None => d.stats.failed.other += 1,
            }
            n += 1;
        }
        if let Some(pid) = pid
            && let Some(w) = d.stats.workers.iter_mut().find(|w| w.pid == Some(pid))
        {
            w.tasks += n;
            w.busy += Duration::from_nanos(nanos);
        }
    }

    pub(crate) fn snapshot(&self, queued: usize) -> Stats {
        let mut s = self.lock().stats.clone();
        s.queued = queued;
        s.in_flight = self.in_flight.load(Ordering::Relaxed);
        s
    }
}

/// Where a front records the outcome of each job it decodes, for [`Stats`]: taken from a
/// [`Batch`](crate::Batch) or a [`Feed`](crate::Feed). Cloning it is cheap.
#[derive(Debug, Clone)]
pub struct Recorder(Arc<StatsCell>);

impl Recorder {
    pub(crate) fn new(cell: Arc<StatsCell>) -> Self {
        Self(cell)
    }

    /// Records one finished job: `ok` items succeeded, and one item failed per entry of
    /// `failed` (its kind, or `None` for a failure that has none, a pool error say); run
    /// by worker `pid` (if one ran it) for `nanos`.
    pub fn record<'a>(
        &self,
        pid: Option<u32>,
        nanos: u64,
        ok: u64,
        failed: impl IntoIterator<Item = Option<&'a TaskErrorKind>>,
    ) {
        self.0.record(pid, nanos, ok, failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_replacements_and_recycling_are_counted_per_slot() {
        let c = StatsCell::new(2);
        assert!(!c.worker_started(0, 10));
        assert!(!c.worker_started(1, 11));
        let died = TaskErrorKind::Cancelled;
        c.record(Some(10), 1_000, 3, [None, Some(&died)]);
        c.worker_ended(0, true, false);
        assert!(c.worker_started(0, 12));
        c.worker_ended(1, false, true);
        assert!(c.worker_started(1, 13));
        c.set_in_flight(4);
        let s = c.snapshot(7);
        assert_eq!((s.queued, s.in_flight), (7, 4));
        assert_eq!(
            (s.workers_started, s.workers_replaced, s.workers_recycled),
            (4, 1, 1)
        );
        assert_eq!(
            (s.succeeded, s.failed.cancelled, s.failed.other, s.done()),
            (3, 1, 1, 5)
        );
        assert_eq!(s.workers[0].pid, Some(12));
        assert_eq!((s.workers[0].restarts, s.workers[0].tasks), (1, 0));
        assert_eq!((s.workers[1].restarts, s.workers[1].pid), (1, Some(13)));
    }
}
