//! A worker's life after it starts: cancelling and time limits, recycling, death and
//! attribution of its jobs, shutting down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::intake::{drain_ring, drain_socket, finished};
use super::{KillReason, Phase, SHUTDOWN_GRACE, Supervisor, Worker, answer, deliver};
use crate::claim;
use crate::error::{Death, HandshakeError, PoolError, TaskError, TaskErrorKind};
use crate::items;
use crate::job::{BatchInner, Done, Queued};
use crate::prepare::{self, Judged};
use crate::sys;
use crate::wire::{self, Down};

/// How many times the first job a dead worker held, not marked started, is sent again
/// before it counts as the job that killed its worker.
const MAX_BOUNCES: u32 = 2;

impl Supervisor {
    /// Takes back from the workers the jobs of `batch` they hold but have not started
    /// (with the others they had not started: those are dealt again): a cancelled
    /// batch's are then answered from the queue, an abandoned batch's dropped there.
    pub(super) fn take_back(&mut self, batch: &Arc<BatchInner>) {
        for i in 0..self.slots.len() {
            let holds = self.slots[i].as_ref().is_some_and(|w| {
                w.can_take()
                    && w.in_flight
                        .iter()
                        .skip(1)
                        .any(|f| Arc::ptr_eq(&f.q.batch, batch))
            });
            if holds {
                self.revoke(i);
            }
        }
    }

    pub(super) fn cancel(&mut self, batch: &Arc<BatchInner>) {
        self.take_back(batch);
        let mut q = self.shared.lock();
        let mut kept = VecDeque::with_capacity(q.jobs.len());
        for j in q.jobs.drain(..) {
            if Arc::ptr_eq(&j.batch, batch) {
                deliver(&j, TaskErrorKind::Cancelled, None, j.attempts);
            } else {
                kept.push_back(j);
            }
        }
        q.jobs = kept;
        drop(q);
        for w in self.slots.iter_mut().flatten() {
            let running = w.in_flight.back().map(|f| f.seq);
            let mut kill = false;
            for f in w.in_flight.iter_mut() {
                if Arc::ptr_eq(&f.q.batch, batch) && !f.answered {
                    f.answered = true;
                    let pid = w.proc.pid;
                    deliver(&f.q, TaskErrorKind::Cancelled, Some(pid), f.q.attempts + 1);
                    // What is left after the revocation was started; only the last of
                    // it can still be running (the others' results are on the way).
                    kill |= Some(f.seq) == running;
                }
            }
            if kill {
                w.kill(KillReason::Cancel);
            }
        }
    }

    /// Kills workers past a deadline; returns how long until the next one.
    ///
    /// A job's time limit counts on the supervisor's own clock, from when the job became
    /// due: sent to an idle worker, or the result before it came back (the job cannot
    /// have started before either). The start time the worker writes in its control block
    /// can only make the count longer (never shorter than the parent's, never longer than
    /// since the job was sent), so a task that scribbles on it cannot escape its limit.
    pub(super) fn check_deadlines(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mono = sys::monotonic_nanos();
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        let grace = self.shared.config.kill_grace;
        // Workers given a grace period before their kill: what they hold behind the
        // job past its limit is taken back after the loop, not left to wait out the grace.
        let mut graceful: Vec<u32> = Vec::new();
        for w in self.slots.iter_mut().flatten() {
            if let Some(at) = w.hard_kill_at {
                if now >= at {
                    w.proc.kill();
                    w.hard_kill_at = None;
                } else {
                    soonest(at - now);
                }
            }
            if w.kill_reason.is_some() {
                continue;
            }
            if let Some(d) = w.deadline {
                if now >= d {
                    let t = self.shared.config.handshake_timeout;
                    w.start_error.get_or_insert(PoolError::Handshake {
                        pid: Some(w.proc.pid),
                        reason: HandshakeError::TimedOut(t),
                    });
                    w.kill(KillReason::Shutdown);
                    continue;
                }
                soonest(d - now);
            }
            // A stop flag the supervisor did not raise would leave the worker waiting for
            // a revocation that never comes, holding its jobs: a task wrote it.
            if w.phase == Phase::Ready
                && w.revoke_pending.is_none()
                && claim::is_stopped(&w.proc.ctl)
            {
                w.kill(KillReason::Protocol(
                    "the stop flag of the claim word was raised by the worker".into(),
                ));
                continue;
            }
            let limited = w
                .in_flight
                .front()
                .is_some_and(|f| f.q.job.timeout.is_some());
            if w.phase != Phase::Ready || !limited {
                continue;
            }
            // Results published meanwhile move the first job on: take them first (and
            // come back at once to deal the worker more work).
            let held = w.in_flight.len();
            drain_ring(w, &mut self.avg_nanos);
            if w.in_flight.len() < held {
                soonest(Duration::ZERO);
            }
            let Some(f) = w.in_flight.front() else {
                continue;
            };
            let Some(limit) = f.q.job.timeout else {
                continue;
            };
            let (started, at) = w.proc.started();
            let by_parent = now.saturating_duration_since(w.front_since);
            let by_worker = if started == f.seq {
                Duration::from_nanos(mono.saturating_sub(at))
                    .min(now.saturating_duration_since(f.sent))
            } else {
                Duration::ZERO
            };
            let ran = by_parent.max(by_worker);
            let prep = if started == f.seq {
                prepare::claimed(&w.proc.ctl, f.seq, mono)
            } else {
                Duration::ZERO
            };
            // A job that carries no descriptors refers to no shared value: it has
            // nothing to prepare, whatever its worker claims.
            let allowance = if f.q.job.fds.is_some() {
                self.shared.config.prepare_allowance
            } else {
                Duration::ZERO
            };
            let (ran, prep) = match prepare::judge(ran, limit, prep, allowance) {
                Judged::Within(next) => {
                    soonest(next);
                    continue;
                }
                Judged::TaskOver(task) => (task, None),
                Judged::PrepOver(spent) => (
                    ran,
                    Some(Box::new((prepare::what(&w.proc.ctl), allowance, spent))),
                ),
            };
            w.kill_reason = Some(KillReason::Timeout {
                seq: f.seq,
                limit,
                ran,
                prep,
            });
            match grace {
                Some(g) if !g.is_zero() => {
                    w.proc.terminate();
                    w.hard_kill_at = Some(now + g);
                    soonest(g);
                    if w.revoke_pending.is_none() && w.in_flight.len() > 1 {
                        graceful.push(w.pid());
                    }
                }
                _ => w.proc.kill(),
            }
        }
        for pid in graceful {
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|w| w.pid() == pid))
            {
                self.revoke(i);
                soonest(Duration::ZERO);
            }
        }
        for w in &mut self.retiring {
            if let Some(d) = w.deadline {
                if now >= d {
                    w.proc.kill();
                } else {
                    soonest(d - now);
                }
            }
        }
        next
    }

    /// Sends a worker that reached its task quota into retirement.
    pub(super) fn maybe_retire(&mut self, i: usize) {
        let Some(limit) = self.shared.config.recycle_after else {
            return;
        };
        let Some(w) = self.slots[i].as_mut() else {
            return;
        };
        if w.phase == Phase::Ready && w.items_sent >= limit && w.in_flight.is_empty() && !w.lent {
            let w = self.slots[i].take().expect("slot checked above");
            self.observe_recycled(i, w.pid());
            self.retire(w);
            self.publish_pids();
        }
    }

    pub(super) fn retire(&mut self, mut w: Worker) {
        wire::encode_down(w.out.buf(), &Down::Shutdown);
        w.flush();
        w.phase = Phase::Retiring;
        w.deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        self.retiring.push(w);
    }

    /// Handles the end of a worker that held a slot.
    pub(super) fn bury(&mut self, mut w: Worker) {
        drain_socket(&mut w, &mut self.avg_nanos);
        drain_ring(&mut w, &mut self.avg_nanos);
        let death = w.proc.reap();
        match w.phase {
            Phase::Handshake | Phase::Init => {
                let e = w.start_error.take().unwrap_or(PoolError::Handshake {
                    pid: Some(w.proc.pid),
                    reason: HandshakeError::Exited(death),
                });
                self.start_failed(e);
            }
            Phase::Ready | Phase::Retiring => self.attribute(w, death),
        }
    }

    /// Fails the job a dead worker was running and sends the others back to the queue.
    pub(super) fn attribute(&mut self, mut w: Worker, death: Death) {
        let (started, _) = w.proc.started();
        let claimed = claim::claimed(&w.proc.ctl);
        let retries = self.shared.config.retries;
        let mut again: Vec<Queued> = Vec::new();
        // Only the first job without a result can have been running: a worker runs its
        // jobs in order and publishes each result before it claims the next. That much
        // the supervisor knows by itself; what the worker wrote only says whether that
        // job had started.
        let mut first = true;
        for mut f in w.in_flight.drain(..) {
            if let Some(e) = w.early.remove(&f.seq) {
                // Its result came, though an earlier job's never did.
                if !f.answered
                    && let Some((batch, done)) = finished(f.q, w.proc.pid, e.nanos, e.outcome)
                {
                    batch.deliver([done]);
                }
                continue;
            }
            let front = std::mem::replace(&mut first, false);
            if f.answered || f.q.batch.is_dropped() {
                continue;
            }
            if f.q.batch.is_cancelled() {
                // Its cancel is not handled yet: answer it here, once.
                deliver(
                    &f.q,
                    TaskErrorKind::Cancelled,
                    Some(w.proc.pid),
                    f.q.attempts,
                );
                continue;
            }
            let timed_out =
                matches!(&w.kill_reason, Some(KillReason::Timeout { seq, .. }) if *seq == f.seq);
            // A worker killed for writing nonsense may have run more jobs than the
            // results that could be read show: none the worker marked started or claimed
            // runs again (failing one is better than running it twice).
            let unreadable = matches!(&w.kill_reason, Some(KillReason::Protocol(_)))
                && f.seq <= claimed.max(started);
            if !front && !timed_out && !unreadable {
                again.push(f.q);
                continue;
            }
            // The first job, not marked started: the worker died between two jobs, or a
            // task wrote over the marks. Sent again, but not forever.
            if front
                && !timed_out
                && claimed < f.seq
                && started < f.seq
                && f.q.bounced < MAX_BOUNCES
            {
                f.q.bounced += 1;
                again.push(f.q);
                continue;
            }
            let attempts = f.q.attempts + 1;
            // A chunk that reported its items: those finished are delivered, the one
            // running fails (or is retried) alone, the others go again (see `items`).
            let partial = (started == f.seq && f.q.job.weight > 1)
                .then(|| items::read(&w.proc.ctl, f.q.job.weight))
                .flatten();
            let kind = match &w.kill_reason {
                Some(KillReason::Timeout {
                    seq,
                    limit,
                    ran,
                    prep,
                }) if *seq == f.seq => match prep.as_deref() {
                    Some((what, allowance, spent)) => TaskErrorKind::PreparationTimedOut {
                        what: what.clone(),
                        allowance: *allowance,
                        spent: *spent,
                    },
                    None => TaskErrorKind::TimedOut {
                        limit: *limit,
                        ran: *ran,
                    },
                },
                // Killed for another job's sake (it started as the worker was killed):
                // not its fault, so it runs again.
                Some(KillReason::Timeout { .. } | KillReason::Cancel) => {
                    again.push(f.q);
                    continue;
                }
                Some(KillReason::Protocol(m)) => TaskErrorKind::Protocol { message: m.clone() },
                Some(KillReason::OutOfMemory(size)) => TaskErrorKind::OutOfMemory { size: *size },
                Some(KillReason::Shutdown) | None => {
                    if attempts <= retries && partial.is_none() {
                        f.q.attempts = attempts;
                        again.push(f.q);
                        continue;
                    }
                    TaskErrorKind::WorkerDied { death }
                }
            };
            match partial {
                Some(p)
                    if matches!(
                        kind,
                        TaskErrorKind::WorkerDied { .. }
                            | TaskErrorKind::TimedOut { .. }
                            | TaskErrorKind::PreparationTimedOut { .. }
                    ) && !f.q.batch.is_abandoned() =>
                {
                    let index = f.q.job.index;
                    f.q.batch.deliver([Done {
                        index,
                        outcome: Err(TaskError::new(kind, index, Some(w.proc.pid), attempts)),
                        nanos: 0,
                        pid: Some(w.proc.pid),
                        partial: Some(p),
                    }]);
                }
                _ => deliver(&f.q, kind, Some(w.proc.pid), attempts),
            }
        }
        let mut q = self.shared.lock();
        for j in again.into_iter().rev() {
            q.jobs.push_front(j);
        }
    }

    /// Retires every ready worker. A worker still in its handshake has run no task code
    /// and holds nothing: it is stopped at once (a pool joined right after it was made
    /// does not wait for its other workers to finish starting). A worker in its
    /// initializer is left to finish it, and retired once ready: it is killed only if it
    /// is not ready within the shutdown grace. Returns whether every worker is gone.
    pub(super) fn shutdown_all(&mut self) -> bool {
        let by = Instant::now() + SHUTDOWN_GRACE;
        for i in 0..self.slots.len() {
            let Some(w) = self.slots[i].as_mut() else {
                continue;
            };
            if w.phase == Phase::Ready {
                let w = self.slots[i].take().expect("slot checked above");
                self.retire(w);
            } else if w.phase == Phase::Handshake && w.in_flight.is_empty() {
                let mut w = self.slots[i].take().expect("slot checked above");
                w.proc.kill();
                w.phase = Phase::Retiring;
                w.deadline = Some(by);
                self.retiring.push(w);
            } else {
                w.deadline = Some(w.deadline.map_or(by, |d| d.min(by)));
            }
        }
        self.publish_pids();
        self.retiring.is_empty() && self.slots.iter().all(Option::is_none)
    }

    pub(super) fn terminate(&mut self) {
        // Jobs callers sent directly are answered as the others.
        self.sync_lanes(true);
        let mut all: Vec<Worker> = self.slots.iter_mut().filter_map(Option::take).collect();
        all.append(&mut self.retiring);
        for w in &all {
            w.proc.kill();
        }
        for mut w in all {
            w.proc.reap();
            for f in w.in_flight.drain(..) {
                if !f.answered {
                    deliver(
                        &f.q,
                        TaskErrorKind::Terminated,
                        Some(w.proc.pid),
                        f.q.attempts + 1,
                    );
                }
            }
        }
        let jobs = std::mem::take(&mut self.shared.lock().jobs);
        for j in jobs {
            answer(&j, TaskErrorKind::Terminated, None);
        }
        self.publish_pids();
    }
}
