//! Jobs and the batch state the supervisor delivers into.
//!
//! A [`Job`] is what a caller submits and a [`Done`] what it receives; [`Queued`] is a
//! job in the pool's queue or running, with the [`BatchInner`] it answers to (the part
//! of a [`Batch`](crate::Batch) the supervisor holds).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use crate::error::TaskError;

/// The descriptors that travel with a job (see [`Job::fds`]), shared so that sending a
/// job again costs no duplicate.
pub type JobFds = Arc<[OwnedFd]>;

/// A unit of work for the engine: a function reference and an encoded argument.
#[derive(Debug, Clone)]
pub struct Job {
    /// Reference of the function, opaque to the engine (made and resolved by a front).
    pub func: Arc<[u8]>,
    /// The encoded argument. Shared so that a job can be sent again after a worker dies
    /// without a copy.
    pub payload: Arc<Vec<u8>>,
    /// The caller's tag for this job, reported back in [`Done`] and in errors.
    pub index: u64,
    /// How many user-level tasks the job stands for (for recycling counts); at least 1.
    pub weight: u32,
    /// Time limit of the job once started, if any.
    pub timeout: Option<Duration>,
    /// Descriptors that travel with the job (`SCM_RIGHTS`), at most
    /// [`MAX_JOB_FDS`](crate::wire::MAX_JOB_FDS); the worker hands them to the runner
    /// (see [`take_job_fds`](crate::take_job_fds)). Kept here, so that a job sent again
    /// after a worker's death or a revocation still has them.
    pub fds: Option<JobFds>,
}

impl Job {
    /// A job without descriptors.
    pub fn new(func: Arc<[u8]>, payload: Arc<Vec<u8>>, index: u64) -> Self {
        Self {
            func,
            payload,
            index,
            weight: 1,
            timeout: None,
            fds: None,
        }
    }

    /// How many descriptors travel with the job.
    pub fn fd_count(&self) -> usize {
        self.fds.as_ref().map_or(0, |f| f.len())
    }
}

/// The end of one job.
#[derive(Debug)]
pub struct Done {
    /// The job's [`Job::index`].
    pub index: u64,
    /// The encoded result, or why there is none.
    pub outcome: Result<Vec<u8>, TaskError>,
    /// How long the job ran in its worker, in nanoseconds (0 when it did not run).
    pub nanos: u64,
    /// Process id of the worker that ran it, if one did.
    pub pid: Option<u32>,
}

pub(crate) const LIVE: u8 = 0;
pub(crate) const CANCELLED: u8 = 1;
pub(crate) const ABANDONED: u8 = 2;
pub(crate) const DETACHED: u8 = 3;

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) done: VecDeque<Done>,
    pub(crate) outstanding: usize,
    pub(crate) waiters: usize,
    /// The task of an async caller waiting for the next result (see `Batch::poll_recv`).
    pub(crate) waker: Option<Waker>,
}

/// The part of a batch the supervisor shares.
#[derive(Debug, Default)]
pub(crate) struct BatchInner {
    state: Mutex<State>,
    pub(crate) cv: Condvar,
    pub(crate) flag: AtomicU8,
    /// Running average of the batch's job times in nanoseconds (bits of an `f64`; 0 until
    /// the first result). Only the supervisor thread writes it.
    avg_nanos: AtomicU64,
}

impl BatchInner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nobody wants this batch's results any more (abandoned or detached).
    pub(crate) fn is_abandoned(&self) -> bool {
        matches!(self.flag.load(Ordering::Relaxed), ABANDONED | DETACHED)
    }

    /// Whether the batch's jobs are dropped instead of run (abandoned; a detached
    /// batch's jobs still run).
    pub(crate) fn is_dropped(&self) -> bool {
        self.flag.load(Ordering::Relaxed) == ABANDONED
    }

    /// Whether the batch was cancelled (its running jobs are to be killed).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed) == CANCELLED
    }

    /// Average run time of the batch's jobs so far, in nanoseconds (0: none finished).
    pub(crate) fn avg_nanos(&self) -> f64 {
        f64::from_bits(self.avg_nanos.load(Ordering::Relaxed))
    }

    /// Records the run time of one of the batch's jobs.
    pub(crate) fn observe(&self, nanos: u64) {
        let old = self.avg_nanos();
        let new = if old <= 0.0 {
            nanos.max(1) as f64
        } else {
            0.8 * old + 0.2 * nanos as f64
        };
        self.avg_nanos.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Hands results to the batch's owner.
    pub(crate) fn deliver(&self, items: impl IntoIterator<Item = Done>) {
        let mut st = self.lock();
        st.done.extend(items);
        if st.waiters > 0 {
            self.cv.notify_all();
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A job waiting in the queue or running, with the batch it answers to.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) job: Job,
    pub(crate) batch: Arc<BatchInner>,
    /// How many times the job was started before.
    pub(crate) attempts: u32,
    /// How many times the job came back from a dead worker as its first job but not
    /// marked started (see `attribute`).
    pub(crate) bounced: u32,
}
