//! What happens to a pool's workers, told in one place: each supervisor hook here updates
//! the pool's counters (see `stats`) and, with the `tracing` feature, emits an event
//! (target `procpool`). Nothing here runs per task: only at a worker's start, readiness
//! and end, and when the pool breaks.

use std::time::Duration;

use crate::error::{Death, PoolError};
use crate::shared::Shared;

/// Why the supervisor killed a worker, as far as events tell it.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) enum Kill<'a> {
    /// Its running task passed its time `limit` after running `ran`.
    Timeout { limit: Duration, ran: Duration },
    /// Its running task was cancelled.
    Cancel,
    /// It broke the protocol.
    Protocol(&'a str),
    /// Its result could not be held in the parent's memory.
    OutOfMemory,
}

/// A worker process was started in slot `slot`.
pub(crate) fn worker_started(shared: &Shared, slot: usize, pid: u32) {
    let restart = shared.stats.worker_started(slot, pid);
    #[cfg(feature = "tracing")]
    if restart {
        tracing::info!(target: "procpool", slot, pid, "worker replaced");
    } else {
        tracing::debug!(target: "procpool", slot, pid, "worker started");
    }
    let _ = restart;
}

/// A worker passed its handshake (and initializer): it takes work now.
pub(crate) fn worker_ready(slot: usize, pid: u32) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "procpool", slot, pid, "worker ready");
    let _ = (slot, pid);
}

/// A worker that held slot `slot` ended; `ready`: it had passed its handshake (a worker
/// that never did is a start failure, not a replacement). `reason`: why the supervisor
/// killed it, if it did; `retried`: whether the job it was running goes out again.
pub(crate) fn worker_died(
    shared: &Shared,
    slot: usize,
    pid: u32,
    death: Death,
    ready: bool,
    reason: Option<Kill<'_>>,
    retried: bool,
) {
    shared.stats.worker_ended(slot, ready, false);
    #[cfg(feature = "tracing")]
    trace_death(slot, pid, death, ready, reason, retried);
    let _ = (pid, death, reason, retried);
}

#[cfg(feature = "tracing")]
#[cold]
fn trace_death(
    slot: usize,
    pid: u32,
    death: Death,
    ready: bool,
    reason: Option<Kill<'_>>,
    retried: bool,
) {
    let cause = death.to_string();
    match reason {
        Some(Kill::Timeout { limit, ran }) => {
            tracing::warn!(target: "procpool", slot, pid, ?limit, ?ran, "task timed out");
        }
        Some(Kill::Cancel) => {
            tracing::info!(target: "procpool", slot, pid, "task cancelled");
        }
        Some(Kill::Protocol(m)) => {
            tracing::error!(target: "procpool", slot, pid, message = %m, "worker broke the protocol");
        }
        Some(Kill::OutOfMemory) => {
            tracing::error!(target: "procpool", slot, pid, "a result did not fit in the parent's memory");
        }
        None => {}
    }
    if !ready {
        tracing::warn!(target: "procpool", slot, pid, %cause, "worker failed to start");
        return;
    }
    tracing::warn!(target: "procpool", slot, pid, %cause, "worker died");
    if retried {
        tracing::info!(target: "procpool", slot, pid, "task retried");
    }
}

/// A worker reached its task quota and retires; a new one takes its slot.
pub(crate) fn worker_recycled(shared: &Shared, slot: usize, pid: u32) {
    shared.stats.worker_ended(slot, false, true);
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "procpool", slot, pid, "worker recycled");
    let _ = pid;
}

/// Workers keep failing to start: the pool gives up.
pub(crate) fn pool_broken(e: &PoolError) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "procpool", error = %e, "pool broken");
    let _ = e;
}
