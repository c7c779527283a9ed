//! The supervisor's hooks into `events` (counters and tracing): what it knows of a worker
//! at its start, readiness and end, put into the terms events use.

use super::intake::{drain_ring, drain_socket};
use super::{KillReason, Phase, Supervisor, Worker};
use crate::events::{self, Kill};

impl Supervisor {
    /// Slot `i`'s worker `w` ended (before its jobs are attributed). What it sent before
    /// it died is taken first, so that a job it finished is not told as retried.
    pub(super) fn observe_end(&mut self, i: usize, w: &mut Worker) {
        drain_socket(w, &mut self.avg_nanos);
        drain_ring(w, &mut self.avg_nanos);
        let death = w.proc.reap();
        let kill = match &w.kill_reason {
            Some(KillReason::Timeout { limit, ran, .. }) => Some(Kill::Timeout {
                limit: *limit,
                ran: *ran,
            }),
            Some(KillReason::Cancel) => Some(Kill::Cancel),
            Some(KillReason::Protocol(m)) => Some(Kill::Protocol(m)),
            Some(KillReason::OutOfMemory(_)) => Some(Kill::OutOfMemory),
            Some(KillReason::Shutdown) | None => None,
        };
        let (started, _) = w.proc.started();
        let retried = kill.is_none()
            && w.in_flight.iter().any(|f| {
                f.seq == started && !f.answered && f.q.attempts < self.shared.config.retries
            });
        let ready = matches!(w.phase, Phase::Ready | Phase::Retiring);
        events::worker_died(&self.shared, i, w.pid(), death, ready, kill, retried);
    }

    /// Slot `i`'s worker `pid` retired after reaching its quota.
    pub(super) fn observe_recycled(&self, i: usize, pid: u32) {
        events::worker_recycled(&self.shared, i, pid);
    }

    /// Publishes the number of jobs the workers hold, once per loop turn.
    pub(super) fn publish_in_flight(&self) {
        let n = self
            .slots
            .iter()
            .flatten()
            .chain(self.retiring.iter())
            .map(|w| w.in_flight.len())
            .sum();
        self.shared.stats.set_in_flight(n);
    }
}
