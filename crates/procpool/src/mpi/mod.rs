//! Pools across the hosts of an MPI job (feature `mpi`); the user's view is the crate
//! docs' section "Across hosts (MPI)".
//!
//! Parts: `runtime` (MPI start-up, the executable check, ending the job on every exit
//! path), `msg` (the messages and their encoding), `link` (rank 0's side: the engine's
//! `Remote` link, one agent per other rank), `agent` (what the other ranks run).
//!
//! Why the engine's `Remote` seam rather than a dispatcher in this crate: everything
//! above the engine's queue (feeds, chunking, reordering, handles, cancel, progress) is
//! then shared with local pools unchanged, and the engine keeps the one scheduling rule;
//! this module only carries bytes between ranks. An agent is a plain user of the
//! engine's public API (`Engine`, `Batch`): it owns a local pool and forwards answers.

mod agent;
mod link;
mod msg;
mod runtime;

use procpool_engine::{Engine, EngineConfig, PoolError};

pub(crate) use runtime::init;

/// Starts the engine of a pool built with `mpi()`: over the agents of the MPI job, or
/// a local one when there are none.
pub(crate) fn start(config: EngineConfig, per_agent: Option<usize>) -> Result<Engine, PoolError> {
    let ranks = runtime::lock().map_or(1, |rt| rt.size);
    if ranks <= 1 {
        return Engine::start(config);
    }
    Engine::start_remote(config, Box::new(link::MpiLink::new(per_agent)))
}

/// This process's rank in the MPI job and the job's size, when it runs under an MPI
/// launcher with the `mpi` feature (`None` otherwise). Rank 0 runs `main`; the others
/// are agents and never return from [`crate::init`].
///
/// ```
/// procpool::init();
/// if let Some((rank, size)) = procpool::mpi_rank() {
///     println!("rank {rank} of {size}");
/// }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub fn mpi_rank() -> Option<(usize, usize)> {
    runtime::lock().map(|rt| (rt.rank as usize, rt.size as usize))
}
