//! The engine's pool: the handle callers hold.

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::batch::Batch;
use crate::config::EngineConfig;
use crate::error::PoolError;
use crate::shared::{Mode, Shared};
use crate::stats::Stats;
use crate::supervisor::Supervisor;

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

    /// A snapshot of the pool's counters: per worker slot and for the whole pool.
    ///
    /// Cheap: it copies a small struct under a lock the supervisor holds only briefly.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        let queued = shared.lock().jobs.len();
        shared.stats.snapshot(queued)
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
