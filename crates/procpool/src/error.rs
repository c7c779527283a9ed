//! The errors of the typed API, and the one [`Error`] that every fallible call of the
//! crate converts into with `?`.

use std::io;

pub use procpool_engine::{Death, HandshakeError, PoolError, TaskError, TaskErrorKind};

use crate::channel::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::shared::SharedError;

/// Implements `Debug` as the type's `Display`, so that an error returned from `main`
/// (which prints its `Debug`) reads as a sentence, as `std::io::Error`'s and anyhow's do.
macro_rules! debug_as_display {
    ($($t:ty),* $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(self, f)
            }
        }
    )*};
}
pub(crate) use debug_as_display;

/// Anything a call of this crate can fail with: one task failed, the pool itself did, a
/// channel, shared data or the system did. Every fallible call converts into it with `?`,
/// so one `main` can use pools, channels and shared data together:
///
/// ```
/// fn total(t: (procpool::Shared<Vec<u64>>, usize)) -> u64 {
///     t.0[t.1]
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(1).build()?; // Error::Pool
///     let table = procpool::Shared::new(vec![10, 20, 30])?; // Error::Shared
///     let (tx, rx) = procpool::channel::<u64>()?; // Error::Io
///     tx.send(pool.apply(total, (table, 2))?)?; // Error::Task, Error::Send
///     assert_eq!(rx.recv()?, 30); // Error::Recv
///     Ok(())
/// }
/// ```
///
/// Each source keeps its own variant, to match on; `Debug` reads as `Display` does (an
/// error returned from `main` prints a sentence, and a task's backtrace as lines):
///
/// ```
/// # fn demo(r: Result<u64, procpool::Error>) {
/// use procpool::{Error, TaskErrorKind};
/// match r {
///     Ok(v) => println!("got {v}"),
///     Err(Error::Task(t)) => match t.kind() {
///         TaskErrorKind::Panic { message, .. } => eprintln!("task {} panicked: {message}", t.index()),
///         TaskErrorKind::WorkerDied { death } => eprintln!("worker {death}"),
///         other => eprintln!("task failed: {other}"),
///     },
///     Err(Error::Pool(p)) => eprintln!("pool error: {p}"),
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
///
/// A channel's send error converts with the undelivered value dropped (its kind is kept:
/// `Error::Send(SendError::Disconnected(()))`); call
/// [`into_inner`](SendError::into_inner) before `?` to keep the value.
///
/// Errors of tasks and pools compare and clone as values. A system error
/// (`std::io::Error`, inside [`Io`](Error::Io), [`Shared`](Error::Shared) and the
/// channel variants) is cloned as its OS error code, or its kind and message, and
/// compared by message. `source()` is that of the error inside (each variant is
/// transparent), so an error chain walks on to the system error.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task failed; the pool goes on.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The pool could not be started or can no longer run work.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A [`join_timeout`](crate::TaskHandle::join_timeout) ran out of time (from
    /// [`WaitError::Timeout`]); the task still runs.
    #[error("the task did not finish in time; it is still running")]
    WaitTimeout,
    /// Shared data ([`Shared`](crate::Shared), [`SharedSlice`](crate::SharedSlice),
    /// [`SharedArray`](crate::SharedArray)) could not be made.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// [`Sender::send`](crate::Sender::send) failed; the value was dropped.
    #[error(transparent)]
    Send(SendError<()>),
    /// [`Sender::try_send`](crate::Sender::try_send) failed; the value was dropped.
    #[error(transparent)]
    TrySend(TrySendError<()>),
    /// [`Sender::send_timeout`](crate::Sender::send_timeout) failed; the value was dropped.
    #[error(transparent)]
    SendTimeout(SendTimeoutError<()>),
    /// [`Receiver::recv`](crate::Receiver::recv) failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// [`Receiver::try_recv`](crate::Receiver::try_recv) failed.
    #[error(transparent)]
    TryRecv(#[from] TryRecvError),
    /// [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) failed.
    #[error(transparent)]
    RecvTimeout(#[from] RecvTimeoutError),
    /// A system call failed: making a [`channel`](crate::channel()) (out of descriptors,
    /// say), or any other `std::io::Error` passed on with `?`.
    #[error(transparent)]
    Io(#[from] io::Error),
}

debug_as_display!(Error, WaitError);

/// Errors of tasks and pools compare as values; the others (which carry a system error,
/// whose payload cannot be compared) compare by variant and message.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Error::Task(a), Error::Task(b)) => a == b,
            (Error::Pool(a), Error::Pool(b)) => a == b,
            (a, b) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
                    && a.to_string() == b.to_string()
            }
        }
    }
}

impl Eq for Error {}

/// A copy of a system error: the same OS error code, or the same kind and message.
fn clone_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Clone for SharedError {
    fn clone(&self) -> Self {
        match self {
            SharedError::Codec { message } => SharedError::Codec {
                message: message.clone(),
            },
            SharedError::Memory(e) => SharedError::Memory(clone_io(e)),
        }
    }
}

impl<T: Clone> Clone for SendError<T> {
    fn clone(&self) -> Self {
        match self {
            SendError::Disconnected(v) => SendError::Disconnected(v.clone()),
            SendError::Encode { value, reason } => SendError::Encode {
                value: value.clone(),
                reason: reason.clone(),
            },
            SendError::Io { value, error } => SendError::Io {
                value: value.clone(),
                error: clone_io(error),
            },
        }
    }
}

impl<T: Clone> Clone for TrySendError<T> {
    fn clone(&self) -> Self {
        match self {
            TrySendError::Full(v) => TrySendError::Full(v.clone()),
            TrySendError::Failed(e) => TrySendError::Failed(e.clone()),
        }
    }
}

impl<T: Clone> Clone for SendTimeoutError<T> {
    fn clone(&self) -> Self {
        match self {
            SendTimeoutError::Timeout(v) => SendTimeoutError::Timeout(v.clone()),
            SendTimeoutError::Failed(e) => SendTimeoutError::Failed(e.clone()),
        }
    }
}

impl Clone for RecvError {
    fn clone(&self) -> Self {
        match self {
            RecvError::Disconnected => RecvError::Disconnected,
            RecvError::Malformed(m) => RecvError::Malformed(m.clone()),
            RecvError::Decode(m) => RecvError::Decode(m.clone()),
            RecvError::Io(e) => RecvError::Io(clone_io(e)),
        }
    }
}

impl Clone for TryRecvError {
    fn clone(&self) -> Self {
        match self {
            TryRecvError::Empty => TryRecvError::Empty,
            TryRecvError::Failed(e) => TryRecvError::Failed(e.clone()),
        }
    }
}

impl Clone for RecvTimeoutError {
    fn clone(&self) -> Self {
        match self {
            RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
            RecvTimeoutError::Failed(e) => RecvTimeoutError::Failed(e.clone()),
        }
    }
}

impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::Task(e) => Error::Task(e.clone()),
            Error::Pool(e) => Error::Pool(e.clone()),
            Error::WaitTimeout => Error::WaitTimeout,
            Error::Shared(e) => Error::Shared(e.clone()),
            Error::Send(e) => Error::Send(e.clone()),
            Error::TrySend(e) => Error::TrySend(e.clone()),
            Error::SendTimeout(e) => Error::SendTimeout(e.clone()),
            Error::Recv(e) => Error::Recv(e.clone()),
            Error::TryRecv(e) => Error::TryRecv(e.clone()),
            Error::RecvTimeout(e) => Error::RecvTimeout(e.clone()),
            Error::Io(e) => Error::Io(clone_io(e)),
        }
    }
}

impl Error {
    /// The task error, if this is one.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// procpool::init();
    /// let pool = procpool::Pool::builder().workers(1).build()?;
    /// let err = pool.apply(|x: u32| 10 / x, 0).unwrap_err();
    /// assert_eq!(err.as_task().map(|t| t.index()), Some(0));
    /// # Ok(()) }
    /// ```
    pub fn as_task(&self) -> Option<&TaskError> {
        match self {
            Error::Task(t) => Some(t),
            _ => None,
        }
    }
}

impl<T> From<SendError<T>> for Error {
    fn from(e: SendError<T>) -> Self {
        Error::Send(without_value(e))
    }
}

impl<T> From<TrySendError<T>> for Error {
    fn from(e: TrySendError<T>) -> Self {
        Error::TrySend(match e {
            TrySendError::Full(_) => TrySendError::Full(()),
            TrySendError::Failed(e) => TrySendError::Failed(without_value(e)),
        })
    }
}

impl<T> From<SendTimeoutError<T>> for Error {
    fn from(e: SendTimeoutError<T>) -> Self {
        Error::SendTimeout(match e {
            SendTimeoutError::Timeout(_) => SendTimeoutError::Timeout(()),
            SendTimeoutError::Failed(e) => SendTimeoutError::Failed(without_value(e)),
        })
    }
}

/// `e` with its value dropped.
fn without_value<T>(e: SendError<T>) -> SendError<()> {
    match e {
        SendError::Disconnected(_) => SendError::Disconnected(()),
        SendError::Encode { reason, .. } => SendError::Encode { value: (), reason },
        SendError::Io { error, .. } => SendError::Io { value: (), error },
    }
}

impl From<WaitError> for Error {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => Error::WaitTimeout,
            WaitError::Failed(e) => e,
        }
    }
}

/// What waiting with a time limit gives when no result came.
///
/// ```
/// use std::time::Duration;
/// use procpool::WaitError;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// procpool::init();
/// let pool = procpool::Pool::builder().workers(1).build()?;
/// let mut handle = pool.spawn(nap, 300)?;
/// assert!(matches!(handle.join_timeout(Duration::from_millis(1)), Err(WaitError::Timeout)));
/// assert_eq!(handle.join_timeout(Duration::from_secs(60))?, 300); // `?` into Error
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The time ran out; the task still runs and can be waited for again.
    #[error("the task did not finish in time; it is still running")]
    Timeout,
    /// The task or the pool failed.
    #[error(transparent)]
    Failed(#[from] Error),
}
