//! The batches jobs are submitted in.
//!
//! A [`Batch`] is one caller's stream of jobs (a `map`, an `imap`, a single `spawn`): the
//! caller submits jobs into the pool's queue and receives each job's [`Done`] from the
//! batch, in the order they finish. The supervisor holds a reference to the batch of
//! every queued or running job (its `BatchInner`, in `job`) and delivers into it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::Mutex;

use crate::direct::{Ticket, Waited};
use crate::error::PoolError;
use crate::job::{ABANDONED, BatchInner, CANCELLED, DETACHED, Done, Job, LIVE};
use crate::shared::{Mode, Shared};
use crate::stats::Recorder;

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
    /// The job this batch sent straight to a worker, while the batch waits for it itself
    /// (see `direct`).
    direct: Mutex<Option<Ticket>>,
    /// The batch is one call's single job (see [`allow_direct`](Batch::allow_direct)).
    direct_ok: bool,
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
            direct: Mutex::new(None),
            direct_ok: false,
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
        let mut jobs: Vec<Job> = jobs.into_iter().collect();
        let n = jobs.len();
        // Only a batch's one job goes straight to a worker; one that has more waits for
        // all of them the same way.
        self.hand_back();
        let alone = n == 1
            && self.direct_ok
            && self.inner.flag.load(Ordering::Relaxed) == LIVE
            && self.inner.lock().outstanding == 0;
        // Counted before the jobs are queued: a result may arrive before `enqueue` returns.
        self.inner.lock().outstanding += n;
        if alone && let Some(job) = jobs.pop() {
            match self.shared.try_direct(&self.inner, job, self.admitted) {
                Ok(t) => {
                    *self.ticket() = Some(t);
                    return Ok(1);
                }
                Err(job) => jobs.push(job),
            }
        }
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
        self.settle_direct(None, false);
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
        // Async code is woken through its waker, which only the supervisor's answer rings.
        if !self.settle_direct(None, false) {
            self.hand_back();
        }
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
        if !self.settle_direct(deadline, true) {
            return Err(RecvError::Timeout);
        }
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
        self.hand_back();
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
        self.hand_back();
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
        self.hand_back();
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

impl Batch {
    /// Marks the batch as one call's single job (an `apply`, a `spawn`): submitted to a
    /// pool with an idle worker and nothing queued, it goes from this thread straight to
    /// that worker, and its result wakes the thread that waits for it, without the
    /// supervisor in between. Batches that stream many jobs (a `map`) leave it off.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), procpool_engine::PoolError> {
    /// # let engine = procpool_engine::Engine::start(procpool_engine::EngineConfig::default())?;
    /// let batch = engine.batch().allow_direct();
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn allow_direct(mut self) -> Self {
        self.direct_ok = true;
        self
    }

    fn ticket(&self) -> std::sync::MutexGuard<'_, Option<Ticket>> {
        self.direct.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (`block`) until `deadline` for the job sent directly, if there is one, to be
    /// answered or taken over by the supervisor. Returns whether it was (or there is none).
    fn settle_direct(&self, deadline: Option<Instant>, block: bool) -> bool {
        // Not held while waiting: another thread may cancel meanwhile.
        let Some(t) = *self.ticket() else { return true };
        match self.shared.wait_direct(t, deadline, block) {
            Waited::Settled => {
                let mut slot = self.ticket();
                if *slot == Some(t) {
                    *slot = None;
                }
                true
            }
            Waited::Pending => false,
        }
    }

    /// Gives the job sent directly, if any, to the supervisor to watch and answer.
    fn hand_back(&self) {
        if let Some(t) = self.ticket().take() {
            self.shared.hand_back(t);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.hand_back();
        self.close_input();
        if self.inner.flag.load(Ordering::Relaxed) == LIVE {
            self.abandon();
        }
    }
}

impl Batch {
    /// Where to record the outcomes of this batch's jobs (see [`Recorder`]).
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.pool().stats.clone())
    }
}
