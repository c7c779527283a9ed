//! Claiming jobs: how a worker and its parent agree on which queued jobs the worker may
//! still start, so that the parent can take back jobs a busy worker has not started and
//! give them to an idle one ("revoke").
//!
//! A worker may hold several jobs at once (many to a frame, so that tiny tasks cost no
//! round trip each). Which of them it starts is settled by one word of the control block,
//! the *claim word*: its low 63 bits are the sequence number of the job the worker claimed
//! last, its top bit the parent's *stop* flag.
//!
//! - The worker claims job `s` just before starting it, with a compare-and-swap of the
//!   word (stop flag down) to `s`. When the parent has raised the flag, the worker starts
//!   only the jobs up to the value the parent read beside it (the parent counts them as
//!   claimed), and skips the others until it reads the parent's
//!   [`Down::Revoke`](crate::wire::Down::Revoke).
//! - The parent revokes by raising the flag (`fetch_or`), which returns the job claimed
//!   last, `c`, atomically: every job after `c` that the worker holds is now never going to
//!   start there, and goes back to the pool's queue. The parent then sends
//!   `Revoke { through }` (the last job it had sent); the worker, reading it in order after
//!   every job sent before it, drops the jobs up to `through` it has not started, lowers
//!   the flag and answers `Revoked`. Until that answer the parent sends the worker nothing
//!   more, so the flag never stands for two revocations.
//!
//! A task that scribbles on the word can only hurt its own worker: a stray value is
//! overwritten by the next claim; a claimed value the parent reads that is not a job the
//! worker could have claimed, or a stop flag the parent did not raise, kills the worker
//! with a protocol error.
//!
//! A job is thus started by at most one worker: either the worker's swap came first (the
//! job counts as claimed, and stays with that worker) or the parent's flag did (the job
//! goes back to the queue, and the worker never starts it).

use std::sync::atomic::Ordering::SeqCst;

use crate::process::CTL_CLAIM;
use crate::sys::SharedRegion;

/// The parent's stop flag in the claim word.
const STOP: u64 = 1 << 63;

/// The worker's side of the claim word.
#[derive(Debug, Default)]
pub(crate) struct Claimer {
    /// The job claimed last.
    claimed: u64,
    /// Jobs up to this one were taken back and are never started here.
    revoked_through: u64,
}

impl Claimer {
    /// Claims job `seq` before starting it; `false` when the job was taken back (skip it).
    ///
    /// While the parent's stop flag is up, the value beside it is what the parent read as
    /// claimed when it raised the flag: jobs up to it stay this worker's (the parent
    /// counts on their results), the later ones were taken back.
    pub(crate) fn claim(&mut self, ctl: &SharedRegion, seq: u64) -> bool {
        if seq <= self.revoked_through {
            return false;
        }
        let word = ctl.word(CTL_CLAIM);
        // Any value without the flag is ours to replace (a task's scribble included: the
        // parent checks what it reads).
        let mut current = word.load(SeqCst);
        loop {
            if current & STOP != 0 {
                let kept = seq <= current & !STOP;
                if kept {
                    self.claimed = self.claimed.max(seq);
                }
                return kept;
            }
            match word.compare_exchange(current, seq & !STOP, SeqCst, SeqCst) {
                Ok(_) => {
                    self.claimed = seq & !STOP;
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Handles the parent's `Revoke { through }` (read after every job sent before it):
    /// the jobs up to `through` not started are dropped for good, and the flag goes down.
    pub(crate) fn revoked(&mut self, ctl: &SharedRegion, through: u64) {
        self.revoked_through = self.revoked_through.max(through);
        ctl.word(CTL_CLAIM).store(self.claimed, SeqCst);
    }
}

/// The parent's side: raises the stop flag and returns the job the worker claimed last.
///
/// # Errors
/// When the flag was already up (a revocation is pending) or the value is not a job the
/// worker could have claimed: `floor` is the last job known to be claimed (its result came
/// back, or an earlier stop returned it), `last_sent` the last one sent.
pub(crate) fn stop(ctl: &SharedRegion, floor: u64, last_sent: u64) -> Result<u64, String> {
    let prev = ctl.word(CTL_CLAIM).fetch_or(STOP, SeqCst);
    let claimed = prev & !STOP;
    if prev & STOP != 0 {
        return Err("the worker's claim word had the stop flag up already".into());
    }
    if claimed > last_sent || claimed < floor {
        return Err(format!(
            "the worker claims job {claimed}, but job {floor} had finished and the last \
             job sent is {last_sent}"
        ));
    }
    Ok(claimed)
}

/// The job the worker says it claimed last (what a dead worker's word says, too).
pub(crate) fn claimed(ctl: &SharedRegion) -> u64 {
    ctl.word(CTL_CLAIM).load(SeqCst) & !STOP
}

/// Whether the parent's stop flag is still up (the worker has not handled the revoke).
pub(crate) fn is_stopped(ctl: &SharedRegion) -> bool {
    ctl.word(CTL_CLAIM).load(SeqCst) & STOP != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::CONTROL_LEN;

    #[test]
    fn a_job_goes_to_the_worker_or_back_to_the_parent_never_both() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let mut w = Claimer::default();
        assert!(w.claim(&ctl, 1));
        assert!(w.claim(&ctl, 2));
        // The parent sent 1..=5, and the result of 1 came back.
        assert_eq!(stop(&ctl, 1, 5), Ok(2));
        assert!(is_stopped(&ctl));
        assert!(!w.claim(&ctl, 3), "taken back");
        assert!(!w.claim(&ctl, 4), "taken back");
        w.revoked(&ctl, 5);
        assert!(!is_stopped(&ctl));
        assert!(!w.claim(&ctl, 5), "sent before the revoke");
        assert!(w.claim(&ctl, 6), "sent after it");
        assert_eq!(stop(&ctl, 2, 6), Ok(6));
    }

    #[test]
    fn a_claim_written_ahead_by_a_task_keeps_those_jobs_with_the_worker() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let mut w = Claimer::default();
        assert!(w.claim(&ctl, 1));
        // A task scribbles "job 4 claimed"; the parent then takes back what follows it.
        ctl.word(CTL_CLAIM).store(4, SeqCst);
        assert_eq!(stop(&ctl, 1, 6), Ok(4));
        // The parent counts 2..=4 as claimed: they must run here, or nobody runs them.
        assert!(w.claim(&ctl, 2));
        assert!(w.claim(&ctl, 3));
        assert!(w.claim(&ctl, 4));
        assert!(!w.claim(&ctl, 5), "taken back");
        w.revoked(&ctl, 6);
        assert!(!w.claim(&ctl, 6), "taken back");
        assert!(w.claim(&ctl, 7));
    }

    #[test]
    fn lies_and_double_stops_are_errors() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        ctl.word(CTL_CLAIM).store(99, SeqCst);
        assert!(stop(&ctl, 2, 5).is_err(), "claims a job never sent");
        ctl.word(CTL_CLAIM).store(0, SeqCst);
        assert!(stop(&ctl, 3, 5).is_err(), "claims less than what finished");
        ctl.word(CTL_CLAIM).store(3, SeqCst);
        assert_eq!(stop(&ctl, 3, 5), Ok(3));
        assert!(stop(&ctl, 3, 5).is_err(), "already stopped");
    }
}
