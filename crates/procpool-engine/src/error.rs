//! Errors of tasks and of pools.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::sys;
use crate::wire::{Failure, Refusal};

/// Implements `Debug` as the type's `Display`, so that an error returned from `main`
/// (which prints its `Debug`) reads as a sentence, and a backtrace as lines.
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

debug_as_display!(TaskErrorKind, TaskError, HandshakeError, PoolError);

/// How a worker process ended.
///
/// ```
/// use procpool_engine::Death;
/// assert_eq!(Death::Signal(9).to_string(), "was killed by SIGKILL (signal 9)");
/// assert_eq!(Death::Signal(9).signal_name(), Some("SIGKILL"));
/// assert_eq!(Death::Exit(3).to_string(), "exited with code 3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Death {
    /// It exited with this code.
    Exit(i32),
    /// A signal ended it (for example 9, SIGKILL, or 11, SIGSEGV).
    Signal(i32),
    /// It ended, but the system kept no status to tell how: the process sets SIGCHLD to
    /// `SIG_IGN` (or `SA_NOCLDWAIT`), so the kernel reaps its children itself and discards
    /// their status, and the kernel is older than Linux 6.15 (which keeps it on the
    /// process descriptor).
    Unknown,
}

impl Death {
    /// The signal's name, such as `"SIGKILL"`, when a signal ended the process.
    ///
    /// ```
    /// use procpool_engine::Death;
    /// assert_eq!(Death::Signal(11).signal_name(), Some("SIGSEGV"));
    /// assert_eq!(Death::Exit(1).signal_name(), None);
    /// ```
    pub fn signal_name(&self) -> Option<&'static str> {
        match self {
            Death::Signal(s) => Some(sys::signal_name(*s)),
            Death::Exit(_) | Death::Unknown => None,
        }
    }
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Death::Exit(c) => write!(f, "exited with code {c}"),
            Death::Signal(s) => write!(f, "was killed by {} (signal {s})", sys::signal_name(*s)),
            Death::Unknown => write!(
                f,
                "ended, but how is unknown: this program sets SIGCHLD to SIG_IGN, so the \
                 kernel discarded the exit status (Linux 6.15 and later keep it)"
            ),
        }
    }
}

/// What made a task fail. Its `Debug` reads as its `Display`.
///
/// ```
/// use procpool_engine::{Death, TaskErrorKind};
///
/// fn advice(kind: &TaskErrorKind) -> &'static str {
///     match kind {
///         TaskErrorKind::Panic { .. } => "fix the task's code",
///         TaskErrorKind::WorkerDied { death } if death.signal_name() == Some("SIGKILL") => {
///             "out of memory? (the OOM killer sends SIGKILL)"
///         }
///         TaskErrorKind::TimedOut { .. } => "raise the time limit",
///         _ => "see the message",
///     }
/// }
///
/// let kind = TaskErrorKind::WorkerDied { death: Death::Signal(9) };
/// assert_eq!(advice(&kind), "out of memory? (the OOM killer sends SIGKILL)");
/// assert_eq!(format!("{kind:?}"), kind.to_string()); // Debug reads as Display
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// The task panicked; the worker survived and goes on.
    Panic {
        /// The panic's message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
        /// The worker's stack backtrace at the panic, captured when the user asked for
        /// backtraces (`RUST_BACKTRACE=1`, which workers inherit), as Python carries a
        /// remote traceback. [`TaskError::backtrace`] gives it too.
        backtrace: Option<String>,
    },
    /// The process running the task died (a signal such as SIGKILL or SIGSEGV, or an
    /// exit). A pool replaces such a worker.
    WorkerDied {
        /// How it ended.
        death: Death,
    },
    /// The task ran past its time limit; its worker was killed and replaced.
    TimedOut {
        /// The limit.
        limit: Duration,
        /// How long the task had run when it was stopped.
        ran: Duration,
    },
    /// Getting the task's input ready (decoding a shared value it refers to, in a
    /// worker that did not hold it yet) ran past the pool's preparation allowance, which
    /// is counted apart from the task's time limit; the worker was killed and replaced.
    PreparationTimedOut {
        /// What was being prepared, as the worker said ("decoding a `Shared<…>` of N
        /// bytes", say).
        what: String,
        /// The allowance.
        allowance: Duration,
        /// How long preparation had taken when the worker was stopped.
        spent: Duration,
    },
    /// The task was cancelled before it finished.
    Cancelled,
    /// The argument or the result could not be serialized or deserialized.
    Codec {
        /// Which side failed and the codec's message.
        message: String,
    },
    /// An argument or a result was larger than the pool's maximum message size.
    TooLarge {
        /// Size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The process running the task sent bytes that break the protocol; it was killed (a
    /// pool replaces it).
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The parent could not allocate memory to receive the task's result (an
    /// address-space or memory limit); the pool goes on.
    OutOfMemory {
        /// Size of the result in bytes.
        size: u64,
    },
    /// The pool was terminated or dropped before the task finished.
    Terminated,
    /// The pool could not keep workers alive; the cause of the first failure.
    PoolBroken(PoolError),
    /// The agent holding the task (a pool on another host, see
    /// [`Remote`](crate::Remote)) was lost while the task may have been running: its
    /// process ended or its host became unreachable, with its workers. The pool goes on
    /// with the agents left; within the pool's retries the task runs again on one of
    /// them, as after a local worker's death.
    AgentLost {
        /// Which agent, as its link names it (`"MPI rank 2 (host node-a)"`).
        agent: String,
    },
}

/// A task that failed, with what is known of where and why. Its `Display` is a
/// sentence naming the task, the process that ran it, and the cause; its `Debug` reads
/// the same (so `main` returning it prints the sentence, and a panic's backtrace as
/// lines).
///
/// ```
/// use procpool_engine::{Death, TaskError, TaskErrorKind};
/// let died = TaskErrorKind::WorkerDied { death: Death::Signal(9) };
/// assert_eq!(
///     TaskError::new(died, 3, Some(1234), 1).to_string(),
///     "task 3, run by process 1234, failed because the process running it was killed by \
///      SIGKILL (signal 9)"
/// );
/// assert_eq!(
///     TaskError::new(TaskErrorKind::Cancelled, 5, None, 2).to_string(),
///     "task 5 was cancelled; it was started 2 times"
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TaskError {
    kind: TaskErrorKind,
    index: u64,
    pid: Option<u32>,
    attempts: u32,
    place: Option<Arc<str>>,
}

impl TaskError {
    /// An error of the task at `index`, last run by worker `pid`, started `attempts`
    /// times.
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// assert_eq!(e.to_string(), "task 4, run by process 99, was cancelled; it was started 2 times");
    /// ```
    pub fn new(kind: TaskErrorKind, index: u64, pid: Option<u32>, attempts: u32) -> Self {
        Self {
            kind,
            index,
            pid,
            attempts,
            place: None,
        }
    }

    /// Names where the task ran, for a pool on several hosts (`"MPI rank 2 (host
    /// node-a)"`); the error's `Display` says it after the process id.
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 1).at("MPI rank 2 (host a)");
    /// assert_eq!(e.place(), Some("MPI rank 2 (host a)"));
    /// assert_eq!(e.to_string(), "task 4, run by process 99 on MPI rank 2 (host a), was cancelled");
    /// ```
    pub fn at(mut self, place: impl Into<Arc<str>>) -> Self {
        self.place = Some(place.into());
        self
    }

    /// Where the task ran, when the pool spans hosts (see [`at`](Self::at)).
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// assert_eq!(TaskError::new(TaskErrorKind::Cancelled, 4, None, 1).place(), None);
    /// ```
    pub fn place(&self) -> Option<&str> {
        self.place.as_deref()
    }

    /// What made the task fail.
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// assert_eq!(e.kind(), &TaskErrorKind::Cancelled);
    /// ```
    pub fn kind(&self) -> &TaskErrorKind {
        &self.kind
    }

    /// Consumes the error, giving its kind.
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// let kind: TaskErrorKind = e.into_kind();
    /// assert_eq!(kind, TaskErrorKind::Cancelled);
    /// ```
    pub fn into_kind(self) -> TaskErrorKind {
        self.kind
    }

    /// The worker's stack backtrace at the task's panic, when it panicked and the user
    /// asked for backtraces (`RUST_BACKTRACE=1`); the error's `Display` shows it too.
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let kind = TaskErrorKind::Panic {
    ///     message: "boom".into(),
    ///     location: None,
    ///     backtrace: Some("   0: my_task\n".into()),
    /// };
    /// assert_eq!(TaskError::new(kind, 0, None, 1).backtrace(), Some("   0: my_task\n"));
    /// let cancelled = TaskError::new(TaskErrorKind::Cancelled, 0, None, 1);
    /// assert_eq!(cancelled.backtrace(), None);
    /// ```
    pub fn backtrace(&self) -> Option<&str> {
        match &self.kind {
            TaskErrorKind::Panic { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }

    /// Position of the task in its input (0 for a single call).
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// assert_eq!(e.index(), 4);
    /// ```
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Process id of the worker that last ran the task, if one did.
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// assert_eq!(e.pid(), Some(99));
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// How many times the task was started (more than 1 with retries).
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// assert_eq!(e.attempts(), 2);
    /// ```
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Changes the index (for fronts that split or merge tasks).
    ///
    /// ```
    /// use procpool_engine::{TaskError, TaskErrorKind};
    /// let e = TaskError::new(TaskErrorKind::Cancelled, 4, Some(99), 2);
    /// assert_eq!(e.with_index(10).index(), 10);
    /// ```
    pub fn with_index(mut self, index: u64) -> Self {
        self.index = index;
        self
    }
}

impl From<Failure> for TaskErrorKind {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Panic { message, location } => TaskErrorKind::Panic {
                message,
                location,
                backtrace: None,
            },
            Failure::Codec { message } => TaskErrorKind::Codec { message },
            Failure::TooLarge { size, limit } => TaskErrorKind::TooLarge { size, limit },
        }
    }
}

impl fmt::Display for TaskErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskErrorKind::Panic {
                message,
                location,
                backtrace,
            } => {
                write!(f, "panicked")?;
                if let Some(l) = location {
                    write!(f, " at {l}")?;
                }
                write!(f, ": {message}")?;
                if let Some(bt) = backtrace {
                    write!(f, "\nstack backtrace of the worker:\n{}", bt.trim_end())?;
                }
                Ok(())
            }
            TaskErrorKind::WorkerDied { death } => {
                write!(f, "failed because the process running it {death}")
            }
            TaskErrorKind::TimedOut { limit, ran } => write!(
                f,
                "ran past its time limit of {limit:?} (it had run {ran:.3?}), so the process \
                 running it was killed"
            ),
            TaskErrorKind::PreparationTimedOut {
                what,
                allowance,
                spent,
            } => write!(
                f,
                "was still getting its input ready ({what}) after {spent:.3?}, past the \
                 allowance of {allowance:?} that preparation has apart from the task's time \
                 limit, so the process running it was killed (raise the allowance: \
                 `Builder::shared_decode_timeout` in procpool)"
            ),
            TaskErrorKind::Cancelled => write!(f, "was cancelled"),
            TaskErrorKind::Codec { message } => write!(f, "could not be (de)serialized: {message}"),
            TaskErrorKind::TooLarge { size, limit } => write!(
                f,
                "has a message of {size} bytes, over the limit of {limit} bytes (a pool's \
                 limit is raised with Builder::max_message_size)"
            ),
            TaskErrorKind::OutOfMemory { size } => write!(
                f,
                "gave a result of {size} bytes that the parent could not allocate memory to \
                 receive"
            ),
            TaskErrorKind::Protocol { message } => write!(
                f,
                "failed because the process running it broke the protocol ({message}) and \
                 was killed"
            ),
            TaskErrorKind::Terminated => {
                write!(f, "did not finish: the pool was terminated or dropped")
            }
            TaskErrorKind::PoolBroken(e) => write!(f, "could not run: {e}"),
            TaskErrorKind::AgentLost { agent } => write!(
                f,
                "was lost with the agent running it, {agent}, whose process ended or whose \
                 host became unreachable"
            ),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.index)?;
        match (self.pid, &self.place) {
            (Some(pid), Some(place)) => write!(f, ", run by process {pid} on {place},")?,
            (Some(pid), None) => write!(f, ", run by process {pid},")?,
            (None, Some(place)) => write!(f, ", on {place},")?,
            (None, None) => {}
        }
        write!(f, " {}", self.kind)?;
        if self.attempts > 1 {
            write!(f, "; it was started {} times", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

/// Why a worker could not join the pool. Its `Debug` reads as its `Display`.
///
/// ```
/// use procpool_engine::{HandshakeError, PoolError};
///
/// let e = PoolError::Handshake { pid: Some(7), reason: HandshakeError::InitMissing };
/// if let PoolError::Handshake { reason: HandshakeError::InitMissing, .. } = &e {
///     assert!(e.to_string().contains("procpool::init()")); // says what to do
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The worker runs a different executable than the parent, so functions cannot be
    /// resolved in it.
    BinaryMismatch {
        /// Fingerprint of the parent's executable.
        parent: u64,
        /// Fingerprint of the worker's.
        worker: u64,
    },
    /// The two sides speak different protocol versions.
    Version {
        /// The parent's.
        parent: u32,
        /// The worker's.
        worker: u32,
    },
    /// The worker's `main` created a pool before calling `procpool::init()`.
    InitMissing,
    /// The worker ended before completing the handshake.
    Exited(Death),
    /// The worker did not complete the handshake in time.
    TimedOut(Duration),
    /// The worker's initializer failed.
    Initializer(Box<TaskErrorKind>),
    /// The worker sent something else than a handshake.
    Protocol(String),
}

impl From<Refusal> for HandshakeError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::BinaryMismatch { parent, worker } => {
                HandshakeError::BinaryMismatch { parent, worker }
            }
            Refusal::Version { parent, worker } => HandshakeError::Version { parent, worker },
            Refusal::InitMissing => HandshakeError::InitMissing,
            Refusal::Other(s) => HandshakeError::Protocol(s),
        }
    }
}

const INIT_HINT: &str = "call procpool::init() as the first line of main (or \
procpool::enable_test_support!() in a test crate)";

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BinaryMismatch { parent, worker } => write!(
                f,
                "the worker runs a different executable (fingerprint {worker:016x}) than the \
                 parent ({parent:016x}); workers must run the parent's own binary"
            ),
            HandshakeError::Version { parent, worker } => write!(
                f,
                "the worker speaks protocol version {worker} but the parent speaks {parent}; \
                 both must run the same build of procpool"
            ),
            HandshakeError::InitMissing => write!(
                f,
                "the worker process created a pool instead of serving: {INIT_HINT}"
            ),
            HandshakeError::Exited(d) => write!(
                f,
                "the worker {d} before completing the handshake; if its main does not start \
                 with procpool::init(), {INIT_HINT}"
            ),
            HandshakeError::TimedOut(d) => write!(
                f,
                "the worker did not complete the handshake within {d:?}; {INIT_HINT}"
            ),
            HandshakeError::Initializer(k) => write!(f, "the worker's initializer {k}"),
            HandshakeError::Protocol(m) => {
                write!(f, "the worker broke the handshake protocol: {m}")
            }
        }
    }
}

/// An error of the pool as a whole. Its `Debug` reads as its `Display`.
///
/// ```
/// use procpool_engine::PoolError;
///
/// let e = PoolError::Config("workers must be at least 1".into());
/// assert_eq!(e.to_string(), "invalid pool configuration: workers must be at least 1");
/// assert_eq!(format!("{e:?}"), e.to_string()); // Debug reads as Display
/// let io = PoolError::from(std::io::Error::from_raw_os_error(24));
/// assert!(matches!(io, PoolError::Io(_)));
/// ```
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A worker process could not be started.
    #[error("could not start a worker process: {0}")]
    Spawn(Arc<io::Error>),
    /// A worker process started but could not join the pool.
    #[error("worker process{} failed its handshake: {reason}", pid.map(|p| format!(" {p}")).unwrap_or_default())]
    Handshake {
        /// The worker's process id, when known.
        pid: Option<u32>,
        /// What went wrong.
        reason: HandshakeError,
    },
    /// The pool no longer accepts work (it was closed, joined or terminated).
    #[error("the pool is closed and accepts no more work")]
    Closed,
    /// Workers kept failing their handshake or initializer, so the pool gave up; the
    /// first failure.
    #[error(
        "the pool gave up after {failures} worker starts failed in a row; the first failure: {first}"
    )]
    Broken {
        /// How many starts failed in a row.
        failures: u32,
        /// The first of them.
        first: Box<PoolError>,
    },
    /// No worker was alive for a while and every attempt to start one was refused by the
    /// operating system, so the pool gave up; the last refusal. (A refusal while some
    /// worker lives is retried, with growing waits, for as long as the pool runs.)
    #[error(
        "the pool gave up: no worker was alive for {waited:?} and the system refused every \
         attempt to start one; the last refusal: {last}"
    )]
    NoWorker {
        /// How long the pool was without a live worker.
        waited: std::time::Duration,
        /// The last refusal.
        last: Box<PoolError>,
    },
    /// A builder setting is invalid.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// An operating-system call of the pool itself failed.
    #[error("a system call of the pool failed: {0}")]
    Io(Arc<io::Error>),
    /// Every agent of a pool on other hosts (see [`Remote`](crate::Remote)) was lost or
    /// taken out, so no worker is left to run anything.
    #[error("every agent of the pool was lost, so no worker is left: {}", lost.join("; "))]
    AgentsLost {
        /// Each agent and why it was lost (`"MPI rank 2 (host node-a): its process
        /// ended"`).
        lost: Vec<String>,
    },
}

impl PartialEq for PoolError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for PoolError {}

impl From<io::Error> for PoolError {
    fn from(e: io::Error) -> Self {
        PoolError::Io(Arc::new(e))
    }
}
