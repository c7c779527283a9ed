//! The supervisor's side of direct calls (see `direct`): lending idle workers out to
//! callers, and taking them back.
//!
//! A worker whose lane is open or lent (`Worker::lent`) is left alone: no job is dealt to
//! it, nothing is written to its socket, its results ring is not read, it is neither
//! revoked nor retired. Each turn of the loop first closes the open lanes (folding what
//! the callers did into the worker's books) and adopts the lent jobs it must watch; the
//! turn ends by lending out again every worker that is ready, idle and wanted by nobody
//! in the queue.

use std::time::{Duration, Instant};

use super::{Phase, Supervisor, Worker};
use crate::direct::{self, Lane, LaneInner, Link, State};
use crate::process::CTL_SLEEPING;
use crate::ring::RingReader;
use crate::shared::Mode;

impl Supervisor {
    /// Closes every open lane and adopts the lent jobs that need the supervisor (all of
    /// them when `force`, or when jobs wait in the queue). Returns how long until a lent
    /// job's time limit runs out.
    pub(super) fn sync_lanes(&mut self, force: bool) -> Option<Duration> {
        let queued = !self.shared.lock().jobs.is_empty();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for i in 0..self.slots.len() {
            if let Some(at) = self.sync_lane(i, force || queued, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Closes slot `i`'s lane, adopting a lent job (see [`sync_lane`](Self::sync_lane)):
    /// before anything is done with its worker.
    pub(super) fn reclaim(&mut self, i: usize) {
        self.sync_lane(i, true, Instant::now());
    }

    /// Closes slot `i`'s lane if it is open; adopts its lent job if `force`, if the
    /// caller handed it back, if its time limit ran out or if its result is in, and
    /// otherwise leaves it lent and returns when that limit runs out.
    fn sync_lane(&mut self, i: usize, force: bool, now: Instant) -> Option<Instant> {
        let w = self.slots[i].as_mut()?;
        if !w.lent {
            return None;
        }
        let shared = self.shared.clone();
        let mut l = shared.lanes[i].lock();
        fold_tally(w, &mut l, &mut self.avg_nanos);
        match std::mem::take(&mut l.state) {
            State::Closed | State::Open => {}
            State::Lent(x) => {
                let due = x.deadline.is_some_and(|d| now >= d);
                // Its result is in but the caller has not come for it: the worker is idle,
                // and may be wanted (jobs held behind a busy worker are taken back only
                // for a worker the supervisor knows to be idle).
                let finished = l
                    .link
                    .as_ref()
                    .is_some_and(|k| RingReader::new(&k.ctl).has_data());
                if !(force || x.handback || due || finished) {
                    let at = x.deadline;
                    l.state = State::Lent(x);
                    return at;
                }
                let x = *x;
                if w.in_flight.is_empty() {
                    w.front_since = x.sent;
                }
                w.next_seq = l.next_seq;
                w.hold(x.seq, x.q, None, x.sent);
                if !x.unsent.is_empty() {
                    w.out.buf().extend_from_slice(&x.unsent);
                    w.flush();
                }
            }
        }
        w.next_seq = l.next_seq;
        w.lent = false;
        let link = l.link.take();
        drop(l);
        // The caller, if it waits for the job, now waits for the supervisor's answer.
        if let Some(link) = link {
            direct::ring_waiter(&link.ctl, true);
        }
        None
    }

    /// Lends out every worker that is ready and idle while no job waits in the queue.
    pub(super) fn open_lanes(&mut self, mode: Mode) {
        if mode != Mode::Run {
            return;
        }
        {
            let q = self.shared.lock();
            if !q.jobs.is_empty() || q.broken.is_some() {
                return;
            }
        }
        let recycle = self.shared.config.recycle_after;
        for (w, lane) in self.slots.iter_mut().zip(self.shared.lanes.iter()) {
            let Some(w) = w else { continue };
            if w.lent || !lendable(w) {
                continue;
            }
            let quota = recycle.map_or(u64::MAX, |l| l.saturating_sub(w.items_sent));
            if quota == 0 {
                continue;
            }
            open(w, lane, quota);
        }
    }
}

/// Whether the supervisor has nothing to do with the worker until it is given work.
fn lendable(w: &Worker) -> bool {
    w.phase == Phase::Ready
        && w.kill_reason.is_none()
        && w.hard_kill_at.is_none()
        && w.revoke_pending.is_none()
        && w.in_flight.is_empty()
        && w.early.is_empty()
        && w.out.is_empty()
        && !w.eof
}

fn open(w: &mut Worker, lane: &Lane, quota: u64) {
    // Nothing is due from the worker: no doorbell either (a result of a direct job that
    // found the flag up would wake the supervisor for nothing).
    w.proc
        .ctl
        .word(CTL_SLEEPING)
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let mut l = lane.lock();
    l.state = State::Open;
    l.link = Some(Link {
        pid: w.pid(),
        sock: w.proc.sock.clone(),
        ctl: w.proc.ctl.clone(),
    });
    l.next_seq = w.next_seq;
    l.quota = quota;
    l.tally = Default::default();
    l.opened += 1;
    w.lent = true;
}

/// Folds what callers did through the lane into the worker's books: tasks sent (its
/// recycling quota), the last job known claimed, job times.
fn fold_tally(w: &mut Worker, l: &mut LaneInner, avg_nanos: &mut f64) {
    let t = std::mem::take(&mut l.tally);
    w.items_sent += t.sent_weight;
    w.claim_floor = w.claim_floor.max(t.last_done);
    for nanos in t.nanos {
        *avg_nanos = if *avg_nanos <= 0.0 {
            nanos as f64
        } else {
            0.8 * *avg_nanos + 0.2 * nanos as f64
        };
    }
}
