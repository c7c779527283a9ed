//! How an engine pool is set up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::process::Launcher;

/// Default largest message (argument or result): 1 GiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// Default [`EngineConfig::prepare_allowance`]: 30 s.
pub const DEFAULT_PREPARE_ALLOWANCE: Duration = Duration::from_secs(30);

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
    /// How long the preparations of one job (a front decoding a shared value it refers
    /// to: see [`preparing`](crate::preparing)) may take, counted apart from the job's
    /// time limit. A job with a limit lives at most `limit + prepare_allowance`; one whose
    /// preparation runs past it fails with
    /// [`TaskErrorKind::PreparationTimedOut`](crate::TaskErrorKind::PreparationTimedOut).
    /// Unused for jobs without a limit.
    pub prepare_allowance: Duration,
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
            prepare_allowance: DEFAULT_PREPARE_ALLOWANCE,
        }
    }
}

/// The number of cores this process may use, looked up once (it reads cgroup files).
fn available_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
