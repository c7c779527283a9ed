//! Pools across the hosts of an MPI job (feature `mpi`); the user's view is the crate
//! docs' section "Across hosts (MPI)".
//!
//! Parts: `runtime` (MPI start-up, the executable check, ending the job on every exit
//! path), `msg` (the messages and their encoding), `link` (rank 0's side: the engine's
//! `Remote` link, one agent per other rank), `agent` (what the other ranks run), `caller`
//! (agents on rank 0's host watching its process).
//!
//! Why the engine's `Remote` seam rather than a dispatcher in this crate: everything
//! above the engine's queue (feeds, chunking, reordering, handles, cancel, progress) is
//! then shared with local pools unchanged, and the engine keeps the one scheduling rule;
//! this module only carries bytes between ranks. An agent is a plain user of the
//! engine's public API (`Engine`, `Batch`): it owns a local pool and forwards answers.

mod agent;
mod caller;
mod link;
mod msg;
mod runtime;

use procpool_engine::{Engine, EngineConfig, PoolError};

pub(crate) use runtime::init;

/// What an agent's local pool configuration is completed with (see `front::init`).
type LocalHook = Box<dyn Fn(&mut EngineConfig) -> Result<(), PoolError> + Send + Sync>;

/// What another front (procpool's Python front) needs to run over MPI: start MPI with
/// its own way of starting an agent's local pool, and start a pool over the agents.
/// Not for programs: they use [`crate::init`] and `Builder::mpi`.
#[doc(hidden)]
pub mod front {
    use procpool_engine::{Engine, EngineConfig, PoolError};

    /// The largest `max_message` an MPI pool accepts (an MPI message carries at most
    /// 2 GiB, with room for the job's header).
    ///
    /// ```
    /// assert!(procpool::mpi_front::MAX_MESSAGE > 1 << 30);
    /// ```
    pub const MAX_MESSAGE: usize = super::msg::MAX_MESSAGE - 4096;

    /// Sets how an agent completes the configuration of its local pool (the front's
    /// launcher and worker identity; an error is the agent's answer to the pool's start),
    /// then does what [`crate::init`] does for MPI: under an MPI launcher, initializes
    /// MPI; on ranks other than 0, serves as an agent and exits the process. The hook is
    /// set once; later calls keep the first.
    ///
    /// ```
    /// procpool::mpi_front::init(|_config| Ok(()));
    /// ```
    pub fn init(
        local: impl Fn(&mut EngineConfig) -> Result<(), PoolError> + Send + Sync + 'static,
    ) {
        let _ = super::agent::LOCAL.set(Box::new(local));
        super::runtime::init();
    }

    /// Starts a pool over the agents of the MPI job (a local one when there are none),
    /// `per_agent` workers on each (default: each host's cores shared among its agents).
    ///
    /// # Errors
    /// As `Builder::build` with `mpi()`.
    ///
    /// ```
    /// procpool::init();
    /// let config = procpool_engine::EngineConfig { workers: 1, ..Default::default() };
    /// let engine = procpool::mpi_front::start(config, Some(1))?; // local: not under mpirun
    /// assert_eq!(engine.config().workers, 1);
    /// engine.terminate();
    /// # Ok::<(), procpool::PoolError>(())
    /// ```
    pub fn start(config: EngineConfig, per_agent: Option<usize>) -> Result<Engine, PoolError> {
        super::start(config, per_agent)
    }
}

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
