//! The handle of a task started with [`Pool::spawn`](crate::Pool::spawn).

use std::marker::PhantomData;
use std::time::Duration;

use procpool_engine::{Batch, RecvError};

use crate::codec::Value;
use crate::codec::format::Codec;
use crate::error::{Error, WaitError};
use crate::job::outcome::ChunkOut;

/// A task running in a pool. Join it for its result, with or without a time limit, or
/// cancel it.
///
/// Dropping the handle detaches the task: it still runs (queued or running, and
/// [`Pool::join`](crate::Pool::join) waits for it), and its result is discarded. To stop
/// it instead, [`cancel`](Self::cancel) it before dropping the handle.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// fn log(msg: String) { eprintln!("{msg}"); }
/// drop(pool.spawn(log, "runs even though nobody joins it".to_string())?);
/// let h = pool.spawn(log, "may never run".to_string())?;
/// h.cancel(); // dropped if still queued, killed if running
/// pool.join(); // waits for the detached task
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TaskHandle<R> {
    batch: Batch,
    codec: Codec,
    _r: PhantomData<fn() -> R>,
}

impl<R: Value> TaskHandle<R> {
    pub(crate) fn new(batch: Batch, codec: Codec) -> Self {
        Self {
            batch,
            codec,
            _r: PhantomData,
        }
    }

    /// The result if it is in; otherwise `Pending`, with the task of `cx` woken when it
    /// comes (see the [`Future`](std::future::Future) impl).
    pub(crate) fn poll_result(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<R, Error>> {
        self.batch.poll_recv(cx).map(|done| match done {
            Some(done) => ChunkOut::decode_one_recorded(done, self.codec, &self.batch.recorder()),
            None => Err(cancelled()),
        })
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// [`Error::Task`] when the task failed (including
    /// [`Cancelled`](crate::TaskErrorKind::Cancelled) after [`cancel`](Self::cancel)).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let h = pool.spawn(|s: String| s.repeat(2), "ab")?;
    /// assert_eq!(h.join()?, "abab");
    /// # Ok(()) }
    /// ```
    pub fn join(self) -> Result<R, Error> {
        match self.batch.recv() {
            Some(done) => ChunkOut::decode_one_recorded(done, self.codec, &self.batch.recorder()),
            None => Err(cancelled()),
        }
    }

    /// Waits at most `timeout` for the result. The wait counts from this call; it is
    /// not a time limit on the task (see [`Builder::timeout`](crate::Builder::timeout)),
    /// which goes on running when the wait ends.
    ///
    /// # Errors
    /// [`WaitError::Timeout`] when the time ran out (the task still runs and can be
    /// joined again); [`WaitError::Failed`] when it failed.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut h = pool.spawn(nap, 300)?;
    /// assert!(matches!(
    ///     h.join_timeout(Duration::from_millis(1)),
    ///     Err(procpool::WaitError::Timeout)
    /// ));
    /// assert_eq!(h.join_timeout(Duration::from_secs(60))?, 300); // joined again
    /// # Ok(()) }
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, WaitError> {
        match self.batch.recv_timeout(timeout) {
            Ok(done) => Ok(ChunkOut::decode_one_recorded(
                done,
                self.codec,
                &self.batch.recorder(),
            )?),
            Err(RecvError::Timeout) => Err(WaitError::Timeout),
            Err(RecvError::Empty) => Err(WaitError::Failed(cancelled())),
        }
    }

    /// Whether the result is in (joining will not wait).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let h = pool.spawn(nap, 1)?;
    /// while !h.is_finished() {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(h.join()?, 1); // does not wait
    /// # Ok(()) }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.batch.ready() > 0 || self.batch.outstanding() == 0
    }

    /// Cancels the task: dropped if still queued; if running, its worker is killed (and
    /// replaced). Joining then gives a [`Cancelled`](crate::TaskErrorKind::Cancelled)
    /// error, unless the result had already arrived.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let h = pool.spawn(nap, 60_000)?;
    /// h.cancel(); // its worker is killed and replaced
    /// let err = h.join().unwrap_err();
    /// assert_eq!(err.as_task().unwrap().kind(), &procpool::TaskErrorKind::Cancelled);
    /// assert_eq!(pool.apply(nap, 1)?, 1);
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self) {
        self.batch.cancel();
    }
}

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        // A task is never dropped for want of a handle; `cancel` is the way to stop it.
        self.batch.detach();
    }
}

fn cancelled() -> Error {
    Error::Task(procpool_engine::TaskError::new(
        procpool_engine::TaskErrorKind::Cancelled,
        0,
        None,
        0,
    ))
}
