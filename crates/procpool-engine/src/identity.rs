//! Which worker a task runs in: the slot index the parent gave the worker at start-up,
//! and the worker's process id (as Python's `multiprocessing.current_process()`).
//!
//! The parent passes the index in [`ENV_INDEX`] beside the worker's own variable; the
//! worker takes it (and removes it, so processes a task starts do not inherit it) when it
//! enters its loop.

use std::sync::OnceLock;

/// Environment variable carrying a worker's slot index.
pub(crate) const ENV_INDEX: &str = "PROCPOOL_WORKER_INDEX";

static INDEX: OnceLock<usize> = OnceLock::new();

/// A worker process's identity within its pool.
///
/// ```
/// // Outside a worker there is none; inside, its slot and pid.
/// assert_eq!(procpool_engine::current_worker(), None);
/// let w = procpool_engine::WorkerInfo { index: 1, pid: 4321 };
/// assert_eq!(w.index, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerInfo {
    /// The index of the worker's slot in the pool, in `0..workers`. A replacement
    /// (after a crash, a time limit or recycling) takes the slot, and the index, of the
    /// worker it replaces.
    pub index: usize,
    /// The worker's process id.
    pub pid: u32,
}

/// The identity of the worker running the calling code, or `None` outside a worker (in
/// the parent, or in a one-off process).
///
/// # Examples
/// ```
/// // In the parent process, there is no current worker.
/// assert_eq!(procpool_engine::current_worker(), None);
/// ```
pub fn current_worker() -> Option<WorkerInfo> {
    INDEX.get().map(|&index| WorkerInfo {
        index,
        pid: std::process::id(),
    })
}

/// Called once by a worker at start-up: remembers its slot index and removes the variable.
pub(crate) fn adopt() {
    let Some(raw) = std::env::var_os(ENV_INDEX) else {
        return;
    };
    // SAFETY: called at the very start of a worker, before any other thread reads the
    // environment (as for the worker's own variable).
    unsafe { std::env::remove_var(ENV_INDEX) };
    if let Some(i) = raw.to_str().and_then(|s| s.parse().ok()) {
        let _ = INDEX.set(i);
    }
}
