//! The state a pool's callers and its supervisor share: the job queue, the pool's mode,
//! its configuration and counters. Below the handle (`pool`), the batches (`batch`) and
//! the supervisor, which all reach it; it reaches only jobs (`job`), counters (`stats`)
//! and OS calls.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use std::sync::atomic::AtomicUsize;

use crate::config::EngineConfig;
use crate::direct::Lane;
use crate::error::PoolError;
use crate::job::{BatchInner, Job, Queued};
use crate::stats::StatsCell;
use crate::sys;

/// What the pool has been told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Run,
    /// Finish queued work, then stop the workers.
    Join,
    /// Kill the workers now.
    Terminate,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) jobs: VecDeque<Queued>,
    /// Batches cancelled or abandoned since the supervisor last looked.
    pub(crate) cancels: Vec<Arc<BatchInner>>,
    pub(crate) mode: Mode,
    /// `close` was called: batches made from now on are refused.
    pub(crate) closed: bool,
    /// Batches made before `close` that will submit more jobs (a call still feeding its
    /// input): `join` waits for them.
    pub(crate) feeding: usize,
    pub(crate) broken: Option<PoolError>,
}

/// State shared by callers and the supervisor thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    wake_fd: OwnedFd,
    pub(crate) config: EngineConfig,
    pub(crate) pids: Mutex<Vec<u32>>,
    /// Result of starting the first workers, set once by the supervisor.
    pub(crate) started: Mutex<Option<Result<(), PoolError>>>,
    pub(crate) started_cv: Condvar,
    /// The pool's counters (see `stats`).
    pub(crate) stats: Arc<StatsCell>,
    /// One lane per worker slot, for jobs sent straight to an idle worker (see `direct`).
    pub(crate) lanes: Vec<Lane>,
    /// Where a caller looks for an open lane first: the lane lent last.
    pub(crate) next_lane: AtomicUsize,
}

impl Shared {
    /// The state of a new pool, before its supervisor (or dispatcher) runs.
    pub(crate) fn new(config: EngineConfig) -> Result<Arc<Shared>, PoolError> {
        let workers = config.workers;
        Ok(Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                cancels: Vec::new(),
                mode: Mode::Run,
                closed: false,
                feeding: 0,
                broken: None,
            }),
            wake_fd: sys::eventfd()?,
            config,
            pids: Mutex::new(Vec::new()),
            started: Mutex::new(None),
            started_cv: Condvar::new(),
            stats: Arc::new(StatsCell::new(workers)),
            lanes: (0..workers).map(|_| Lane::default()).collect(),
            next_lane: AtomicUsize::new(0),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn wake(&self) {
        sys::wake(self.wake_fd.as_fd());
    }

    pub(crate) fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.wake_fd.as_fd()
    }

    pub(crate) fn enqueue(
        &self,
        batch: &Arc<BatchInner>,
        jobs: impl IntoIterator<Item = Job>,
        admitted: bool,
    ) -> Result<usize, PoolError> {
        let mut q = self.lock();
        if let Some(e) = &q.broken {
            return Err(e.clone());
        }
        // A call under way when the pool was closed may go on until the pool stops.
        if q.mode == Mode::Terminate || (q.closed && !admitted) {
            return Err(PoolError::Closed);
        }
        let before = q.jobs.len();
        q.jobs.extend(jobs.into_iter().map(|job| Queued {
            attempts: job.attempts,
            job,
            batch: batch.clone(),
            bounced: 0,
        }));
        let n = q.jobs.len() - before;
        drop(q);
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    pub(crate) fn request_cancel(&self, batch: Arc<BatchInner>) {
        self.lock().cancels.push(batch);
        self.wake();
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        let mut q = self.lock();
        q.closed = true;
        if mode == Mode::Terminate || q.mode == Mode::Run {
            q.mode = mode;
        }
        drop(q);
        self.wake();
    }
}
