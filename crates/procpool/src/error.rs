//! The errors of the typed API.

pub use procpool_engine::{Death, HandshakeError, PoolError, TaskError, TaskErrorKind};

/// Anything a pool call can fail with: one task failed, or the pool itself did.
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task failed; the pool goes on.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The pool could not be started or can no longer run work.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl Error {
    /// The task error, if this is one.
    pub fn as_task(&self) -> Option<&TaskError> {
        match self {
            Error::Task(t) => Some(t),
            Error::Pool(_) => None,
        }
    }
}

/// What waiting with a time limit gives when no result came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The time ran out; the task still runs and can be waited for again.
    #[error("the task did not finish in time; it is still running")]
    Timeout,
    /// The task or the pool failed.
    #[error(transparent)]
    Failed(#[from] Error),
}
