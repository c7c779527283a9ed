//! The engine's pool: configuration, the queue shared between callers and the supervisor,
//! and the handle callers hold.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::batch::{Batch, BatchInner, Job, Queued};
use crate::error::PoolError;
use crate::process::Launcher;
use crate::stats::StatsCell;
use crate::supervisor::Supervisor;
use crate::sys;

/// Default largest message (argument or result): 1 GiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// How an engine pool is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of worker processes (at least 1).
    pub workers: usize,
    /// Replace a worker after it ran this many tasks (job weights).
    pub recycle_after: Option<u64>,
    /// How many times a job whose worker died is started again (0: never).
    pub retries: u32,
    /// Initializer run once in each worker before any job: function reference and
    /// encoded argument.
    pub initializer: Option<(Arc<[u8]>, Vec<u8>)>,
    /// Largest job payload or job result in bytes (a front that packs many items in a
    /// job may set it above its own per-item limit).
    pub max_message: usize,
    /// Executable to start as worker instead of the running one (it must be the same
    /// binary: the handshake checks its fingerprint).
    pub executable: Option<PathBuf>,
    /// Starts workers instead of re-executing [`executable`](Self::executable) (a front
    /// whose workers are not this program: see [`Launcher`]).
    pub launcher: Option<Arc<dyn Launcher>>,
    /// What the handshake checks instead of the executable's fingerprint (with a
    /// [`launcher`](Self::launcher): the workers' code, as the front identifies it).
    pub identity: Option<u64>,
    /// How long a new worker may take to answer the handshake.
    pub handshake_timeout: Duration,
    /// Consecutive failed worker starts (handshake refused or timed out, initializer
    /// failing) after which the pool gives up. A start the operating system refuses is
    /// retried with growing waits instead, and ends the pool only when no worker has
    /// been alive for a while ([`PoolError::NoWorker`]).
    pub max_start_failures: u32,
    /// On a timeout, send SIGTERM and wait this long before SIGKILL (`None`: SIGKILL at
    /// once).
    pub kill_grace: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: available_cores(),
            recycle_after: None,
            retries: 0,
            initializer: None,
            max_message: DEFAULT_MAX_MESSAGE,
            executable: None,
            launcher: None,
            identity: None,
            handshake_timeout: Duration::from_secs(20),
            max_start_failures: 3,
            kill_grace: None,
        }
    }
}

/// The number of cores this process may use, looked up once (it reads cgroup files).
fn available_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

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
            job,
            batch: batch.clone(),
            attempts: 0,
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

    fn close(&self) {
        self.lock().closed = true;
    }

    fn set_mode(&self, mode: Mode) {
        let mut q = self.lock();
        q.closed = true;
        if mode == Mode::Terminate || q.mode == Mode::Run {
            q.mode = mode;
        }
        drop(q);
        self.wake();
    }
}

/// Terminates an [`Engine`] from another thread (see [`Engine::stopper`]).
#[derive(Debug, Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
}

impl Stopper {
    /// Kills the pool's workers now, as [`Engine::terminate`] does; the engine's own
    /// handle (and a `join` under way) then finishes at once.
    pub fn terminate(&self) {
        self.shared.set_mode(Mode::Terminate);
    }
}

/// A pool of worker processes that runs byte-level jobs.
///
/// Dropping the engine terminates it: workers are killed and reaped, and unfinished jobs
/// end with [`TaskErrorKind::Terminated`](crate::TaskErrorKind::Terminated).
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Why a pool cannot start in a worker that has not yet entered its loop (its program
/// is still starting up: a Python worker importing the caller's main module, say). A
/// module that creates a pool at import time, without a `__name__ == "__main__"` guard,
/// would otherwise start workers that start workers, without end.
///
/// ```
/// assert!(procpool_engine::BOOTSTRAPPING.contains("__main__"));
/// ```
pub const BOOTSTRAPPING: &str = "an attempt was made to start a pool in a worker process before \
     it finished starting up (while it imported the main module or read its task). This \
     probably means that the main module creates the pool at import time: guard that code \
     with `if __name__ == \"__main__\":` (Python) or call procpool::init() first in main (Rust)";

/// Most workers one local pool may have: each is a process with its own memory regions,
/// and the supervisor keeps state for each, so a mistaken huge count is refused
/// ([`PoolError::Config`]) rather than exhausting memory or the process table.
pub const MAX_WORKERS: usize = 1 << 16;

impl Engine {
    /// Starts the workers and returns as soon as one of them has completed its handshake
    /// (the others join as they come; all run the same binary).
    ///
    /// # Errors
    /// [`PoolError::Spawn`] when a process cannot be started, [`PoolError::Handshake`]
    /// when a worker refuses or fails to answer, [`PoolError::Config`] for a bad setting.
    pub fn start(config: EngineConfig) -> Result<Engine, PoolError> {
        if crate::worker::is_worker_process() {
            return Err(PoolError::Config(BOOTSTRAPPING.into()));
        }
        if config.workers == 0 {
            return Err(PoolError::Config("a pool needs at least one worker".into()));
        }
        if config.workers > MAX_WORKERS {
            return Err(PoolError::Config(format!(
                "{} workers asked for; a pool has at most {MAX_WORKERS} (each is a process)",
                config.workers
            )));
        }
        if config.max_message == 0 || config.max_message > (u32::MAX as usize) - 1024 {
            return Err(PoolError::Config(
                "max_message_size must be between 1 byte and 4 GiB - 1 KiB".into(),
            ));
        }
        let shared = Shared::new(config)?;
        let sup = Supervisor::new(shared.clone());
        let thread = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || sup.run())?;
        let mut engine = Engine {
            shared,
            thread: Some(thread),
        };
        let mut started = engine
            .shared
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while started.is_none() {
            started = engine
                .shared
                .started_cv
                .wait(started)
                .unwrap_or_else(|e| e.into_inner());
        }
        let result = started.take().unwrap_or(Ok(()));
        drop(started);
        match result {
            Ok(()) => Ok(engine),
            Err(e) => {
                engine.stop(Mode::Terminate);
                Err(e)
            }
        }
    }

    /// An engine whose pool is served by `thread` (see `remote`).
    pub(crate) fn from_parts(shared: Arc<Shared>, thread: JoinHandle<()>) -> Engine {
        Engine {
            shared,
            thread: Some(thread),
        }
    }

    /// A new batch to submit jobs through.
    pub fn batch(&self) -> Batch {
        Batch::new(self.shared.clone())
    }

    /// Process ids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Stops accepting new calls: a batch made from now on is refused. The workers go
    /// on serving: queued and running jobs finish, and batches made before (calls under
    /// way) may go on submitting until the pool is joined or terminated.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the pool, waits for queued jobs to finish and for batches still feeding
    /// their input (see [`Batch::open_input`]) to close it, then stops the workers and
    /// reaps them. A batch made before that submits after the workers stopped is
    /// refused with [`PoolError::Closed`].
    pub fn join(mut self) {
        self.stop(Mode::Join);
    }

    /// A handle that terminates the pool from any thread, even while another thread is
    /// in [`join`](Self::join) (which then returns at once).
    ///
    /// ```no_run
    /// # fn demo(engine: procpool_engine::Engine) {
    /// let stopper = engine.stopper();
    /// let joiner = std::thread::spawn(move || engine.join());
    /// stopper.terminate(); // the join ends now: running jobs end with `Terminated`
    /// joiner.join().unwrap();
    /// # }
    /// ```
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
        }
    }

    /// Kills the workers now; unfinished jobs end with `Terminated`.
    pub fn terminate(mut self) {
        self.stop(Mode::Terminate);
    }

    fn stop(&mut self, mode: Mode) {
        self.shared.set_mode(mode);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(Mode::Terminate);
    }
}
