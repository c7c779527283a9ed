//! One-off processes: [`spawn`] runs one function call in a new process, joined like a
//! thread.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use procpool_engine::{DEFAULT_MAX_MESSAGE, JoinError, OneOff};

use crate::codec::Value;
use crate::codec::format::Codec;
use crate::encodes_as::EncodesAs;
use crate::error::{Error, WaitError};
use crate::job::func;
use crate::job::items::{self, Layout};
use crate::job::outcome::ChunkOut;
use crate::pool::{guard_worker, single_payload};

/// Runs `f(arg)` in a new process, like [`std::thread::spawn`] for processes.
///
/// ```
/// fn fib(n: u32) -> u64 {
///     if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) }
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let p = procpool::spawn(fib, 20)?;
///     assert_eq!(p.join()?, 6765);
///     Ok(())
/// }
/// ```
///
/// # Errors
/// [`Error::Pool`] with [`PoolError::Spawn`](crate::PoolError::Spawn) when the process
/// cannot start; [`Error::Task`] with a codec error when `arg` cannot be serialized.
pub fn spawn<A, R>(f: fn(A) -> R, arg: impl EncodesAs<A>) -> Result<Process<R>, Error>
where
    A: Value,
    R: Value,
{
    guard_worker();
    let layout = Layout {
        codec: Codec::Postcard,
        limit: DEFAULT_MAX_MESSAGE,
    };
    let (payload, fds) = single_payload(&arg, layout)?;
    let bound = items::transport_bound(DEFAULT_MAX_MESSAGE);
    let fds: Vec<BorrowedFd<'_>> = fds
        .iter()
        .flat_map(|f| f.iter())
        .map(|f| f.as_fd())
        .collect();
    let inner = OneOff::spawn_with_fds(&func::chunk_ref(f), &payload, &fds, bound)?;
    Ok(Process {
        inner,
        _r: PhantomData,
    })
}

/// A process running one call. Dropping it kills the process if it still runs, and reaps
/// it: it never outlives its handle, and leaves no zombie.
///
/// The process lives until it is joined, killed or dropped, or until the parent process
/// dies, whichever thread spawned it; a handle may move to another thread. Killing it
/// (or dropping it) also kills every process its task started, unless that process left
/// on purpose with a session of its own (`setsid`).
///
/// ```
/// fn fib(n: u64) -> u64 {
///     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let p: procpool::Process<u64> = procpool::spawn(fib, 20)?;
///     assert_ne!(p.pid(), std::process::id()); // another process
///     assert_eq!(p.join()?, 6765);
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Process<R> {
    inner: OneOff,
    _r: PhantomData<fn() -> R>,
}

impl<R: Value> Process<R> {
    /// The process id.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let p = procpool::spawn(|_: ()| std::process::id(), ())?;
    /// let pid = p.pid();
    /// assert_eq!(p.join()?, pid);
    /// # Ok(()) }
    /// ```
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Kills the process with SIGKILL; joining then gives a
    /// [`WorkerDied`](crate::TaskErrorKind::WorkerDied) error naming SIGKILL.
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
    /// let mut p = procpool::spawn(nap, 60_000)?;
    /// p.kill();
    /// let err = p.join().unwrap_err();
    /// assert!(matches!(
    ///     err.as_task().unwrap().kind(),
    ///     procpool::TaskErrorKind::WorkerDied { death } if death.signal_name() == Some("SIGKILL")
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Whether the process finished (joining will not wait).
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
    /// let mut p = procpool::spawn(nap, 1)?;
    /// while !p.is_finished() {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(p.join()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn is_finished(&mut self) -> bool {
        self.inner.is_finished()
    }

    /// The result if it is in; otherwise `Pending`, with the task of `cx` woken when the
    /// process has news (see the [`Future`](std::future::Future) impl).
    pub(crate) fn poll_result(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<R, Error>> {
        self.inner.poll_join(cx).map(decode)
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// [`Error::Task`] when the call panicked, the process died, or a value failed to
    /// (de)serialize; [`Error::Pool`] when the process could not run it.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let p = procpool::spawn(|v: Vec<u32>| v.iter().sum::<u32>(), vec![1, 2, 3])?;
    /// assert_eq!(p.join()?, 6);
    /// let crash = procpool::spawn(|_: ()| -> u32 { panic!("no") }, ())?;
    /// assert!(crash.join().is_err());
    /// # Ok(()) }
    /// ```
    pub fn join(self) -> Result<R, Error> {
        decode(self.inner.join())
    }

    /// Waits at most `timeout`.
    ///
    /// # Errors
    /// [`WaitError::Timeout`] when the time ran out (the process still runs);
    /// [`WaitError::Failed`] otherwise, as [`join`](Self::join).
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
    /// let mut p = procpool::spawn(nap, 300)?;
    /// assert!(matches!(
    ///     p.join_timeout(Duration::from_millis(1)),
    ///     Err(procpool::WaitError::Timeout)
    /// ));
    /// assert_eq!(p.join_timeout(Duration::from_secs(60))?, 300);
    /// # Ok(()) }
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, WaitError> {
        match self.inner.join_timeout(timeout) {
            Err(JoinError::Timeout) => Err(WaitError::Timeout),
            r => Ok(decode(r)?),
        }
    }
}

fn decode<R: Value>(r: Result<Vec<u8>, JoinError>) -> Result<R, Error> {
    match r {
        Ok(bytes) => {
            let done = procpool_engine::Done {
                index: 0,
                outcome: Ok(bytes),
                nanos: 0,
                pid: None,
                partial: None,
            };
            ChunkOut::decode_one(done, Codec::Postcard)
        }
        Err(JoinError::Task(t)) => Err(Error::Task(t)),
        Err(JoinError::Pool(p)) => Err(Error::Pool(p)),
        Err(other) => Err(Error::Pool(procpool_engine::PoolError::Config(
            other.to_string(),
        ))),
    }
}
