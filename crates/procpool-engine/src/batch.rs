//! Jobs and the batches they are submitted in.
//!
//! A [`Batch`] is one caller's stream of jobs (a `map`, an `imap`, a single `spawn`): the
//! caller submits jobs into the pool's queue and receives each job's [`Done`] from the
//! batch, in the order they finish. The supervisor holds a reference to the batch of
//! every queued or running job and delivers into it.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{PoolError, TaskError};
use crate::pool::{Mode, Shared};

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

const LIVE: u8 = 0;
const CANCELLED: u8 = 1;
const ABANDONED: u8 = 2;
const DETACHED: u8 = 3;

#[derive(Debug, Default)]
struct State {
    done: VecDeque<Done>,
    outstanding: usize,
    waiters: usize,
    /// The task of an async caller waiting for the next result (see `Batch::poll_recv`).
    waker: Option<Waker>,
}

/// The part of a batch the supervisor shares.
#[derive(Debug, Default)]
pub(crate) struct BatchInner {
    state: Mutex<State>,
    cv: Condvar,
    flag: AtomicU8,
    /// Running average of the batch's job times in nanoseconds (bits of an `f64`; 0 until
    /// the first result). Only the supervisor thread writes it.
    avg_nanos: AtomicU64,
}

impl BatchInner {
    fn lock(&self) -> MutexGuard<'_, State> {
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

/// What [`Batch::recv_timeout`] gives when no result is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing was submitted that has not been received.
    Empty,
    /// The time ran out first.
    Timeout,
}

/// One caller's stream of jobs into a pool, and of their results back.
///
/// Dropping a batch abandons it: its queued jobs are dropped and its running jobs' results
/// are discarded (the jobs are not killed). [`detach`](Batch::detach) it first to have its
/// jobs run all the same.
///
/// A batch made while the pool was open may go on submitting after
/// [`close`](crate::Engine::close): closing refuses new calls, not calls under way.
#[derive(Debug)]
pub struct Batch {
    inner: Arc<BatchInner>,
    shared: Arc<Shared>,
    /// The pool was open when the batch was made.
    admitted: bool,
    /// Counted among the pool's feeding batches (see [`open_input`](Batch::open_input)).
    feeding: bool,
}

impl Batch {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let q = shared.lock();
        let admitted = q.mode != Mode::Terminate && !q.closed;
        drop(q);
        Self {
            inner: Arc::default(),
            shared,
            admitted,
            feeding: false,
        }
    }

    /// The pool the batch submits to.
    pub(crate) fn pool(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Says that more jobs will follow: until [`close_input`](Self::close_input) (or
    /// the batch is dropped), a pool being joined waits for them before it stops its
    /// workers. Has no effect on a batch made after the pool was closed.
    pub fn open_input(&mut self) {
        if !self.admitted || self.feeding {
            return;
        }
        self.feeding = true;
        self.shared.lock().feeding += 1;
    }

    /// Says that no more jobs will follow (see [`open_input`](Self::open_input)).
    pub fn close_input(&mut self) {
        if !std::mem::take(&mut self.feeding) {
            return;
        }
        let mut q = self.shared.lock();
        q.feeding = q.feeding.saturating_sub(1);
        drop(q);
        self.shared.wake();
    }

    /// Queues jobs; returns how many.
    ///
    /// # Errors
    /// [`PoolError::Closed`] when the batch was made after the pool was closed, or the
    /// pool has stopped; the pool's fatal error if it broke.
    pub fn submit(&self, jobs: impl IntoIterator<Item = Job>) -> Result<usize, PoolError> {
        let jobs: Vec<Job> = jobs.into_iter().collect();
        let n = jobs.len();
        // Counted before the jobs are queued: a result may arrive before `enqueue` returns.
        self.inner.lock().outstanding += n;
        self.shared
            .enqueue(&self.inner, jobs, self.admitted)
            .inspect_err(|_| {
                let mut st = self.inner.lock();
                st.outstanding = st.outstanding.saturating_sub(n);
            })
    }

    /// Jobs submitted whose result has not been received.
    pub fn outstanding(&self) -> usize {
        self.inner.lock().outstanding
    }

    /// Results that arrived and can be received without waiting.
    pub fn ready(&self) -> usize {
        self.inner.lock().done.len()
    }

    /// Waits for the next result, in finishing order. `None` when nothing is outstanding.
    pub fn recv(&self) -> Option<Done> {
        self.recv_deadline(None).ok()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout` (a timeout too long for the
    /// clock, such as `Duration::MAX`, waits as long as `recv`).
    ///
    /// # Errors
    /// [`RecvError::Empty`] when nothing is outstanding, [`RecvError::Timeout`] when the
    /// time ran out.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Done, RecvError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    /// The next result if there is one, without blocking: `Ready(Some(done))`, or
    /// `Ready(None)` when nothing is outstanding; otherwise `Pending`, and the task of
    /// `cx` is woken (by the pool's supervisor) when a result arrives. For async callers.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Done>> {
        let mut st = self.inner.lock();
        if let Some(d) = st.done.pop_front() {
            st.outstanding = st.outstanding.saturating_sub(1);
            return Poll::Ready(Some(d));
        }
        if st.outstanding == 0 {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn recv_deadline(&self, deadline: Option<Instant>) -> Result<Done, RecvError> {
        let mut st = self.inner.lock();
        loop {
            if let Some(d) = st.done.pop_front() {
                st.outstanding = st.outstanding.saturating_sub(1);
                return Ok(d);
            }
            if st.outstanding == 0 {
                return Err(RecvError::Empty);
            }
            st.waiters += 1;
            st = match deadline {
                None => self.inner.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        st.waiters -= 1;
                        return Err(RecvError::Timeout);
                    }
                    self.inner
                        .cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            st.waiters -= 1;
        }
    }

    /// Cancels every job of the batch not yet finished: queued jobs are dropped, and a
    /// worker running one is killed (the pool replaces it). Each such job is received as a
    /// [`Cancelled`](crate::TaskErrorKind::Cancelled) error.
    pub fn cancel(&self) {
        if self
            .inner
            .flag
            .compare_exchange(LIVE, CANCELLED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.shared.request_cancel(self.inner.clone());
        }
    }

    /// Stops the batch without killing anything: queued jobs are dropped, results of
    /// running jobs discarded. Results already received stay received.
    pub fn abandon(&self) {
        self.inner.flag.store(ABANDONED, Ordering::Relaxed);
        let outstanding = std::mem::take(&mut self.inner.lock().outstanding);
        if outstanding > 0 {
            // The supervisor takes back the jobs of the batch workers hold but have not
            // started, so that they do not delay other calls.
            self.shared.request_cancel(self.inner.clone());
        }
    }

    /// Lets the batch's jobs run without anyone waiting for them: queued and running
    /// jobs run to their end (a pool's `join` waits for them), and their results are
    /// discarded. Has no effect on a batch already cancelled or abandoned.
    pub fn detach(&self) {
        if self
            .inner
            .flag
            .compare_exchange(LIVE, DETACHED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let mut st = self.inner.lock();
            st.outstanding = 0;
            st.done.clear();
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.close_input();
        if self.inner.flag.load(Ordering::Relaxed) == LIVE {
            self.abandon();
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
