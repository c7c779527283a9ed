//! Pools across the hosts of an MPI job (feature `mpi`).
//!
//! Start the program with `mpirun -n N ./prog` (or `srun`). [`crate::init`] initializes
//! MPI; on ranks other than 0 it never returns: each of those ranks becomes a *node
//! agent* that runs a local pool of worker processes on its host. Rank 0 runs `main`,
//! and a pool built with [`Builder::mpi`](crate::Builder::mpi) runs its tasks on the
//! agents' workers. The API is the same as for a local pool — `map`, `imap`,
//! `imap_unordered`, `apply`, `spawn`, time limits, retries, cancelling — and so are the
//! errors.
//!
//! ```no_run
//! fn work(x: u64) -> u64 {
//!     (0..x).map(|i| i * i % 7).sum()
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init(); // ranks other than 0 serve here and never return
//!     let pool = procpool::Pool::builder().mpi().build()?;
//!     let sums = pool.map(work, 0..10_000u64)?;
//!     println!("{}", sums.iter().sum::<u64>());
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//! The engine's pool normally has a supervisor thread that deals jobs to local workers.
//! An MPI pool has a *dispatcher* thread in its place (`procpool_engine::Remote`): it
//! takes jobs from the same queue and deals them to agents, each counted as as many
//! slots as it has workers, by the same work-conserving rule — a job goes only to an
//! agent with a free worker, unless the jobs of its call are short (under 5 ms), when an
//! agent may hold twice its workers so that no worker waits for a round trip. Many jobs
//! travel in one MPI message, as do their answers. Everything above the queue (chunking
//! measured as for a local pool, ordering, handles, progress) is shared with local pools.
//!
//! Functions travel as offsets into the executable, valid on every rank because every
//! rank runs the same file: at start-up rank 0 compares a fingerprint of the
//! executable's contents with every agent's, and refuses MPI pools (with an error naming
//! the rank and host) when one differs.
//!
//! # Workers per agent
//! By default each agent runs as many workers as its host has cores, divided among the
//! agents on that host. [`Builder::workers`](crate::Builder::workers) sets the count per
//! agent. Rank 0 runs no workers: start `hosts + 1` ranks (`mpirun -n 5 --map-by node`
//! on four hosts puts two ranks on the first, rank 0 and an agent) to use every host.
//!
//! # Faults, and what survives them
//! A task that panics, segfaults, aborts, is killed or passes its time limit harms only
//! the local worker that ran it: the agent's pool replaces the worker and the task's
//! error reaches the caller as from a local pool (with the remote worker's pid).
//!
//! Losing an agent itself (its host dies, the rank is killed) ends the whole job: that
//! is the MPI library's default error handling (Open MPI ends every rank within about a
//! second, and `mpirun` prints which rank died, on which host, and of which signal).
//!
//! # Exit
//! Returning from `main` (or `std::process::exit`, or an error returned from `main`)
//! tells every agent to stop its workers and leave, then finalizes MPI. A panic on rank
//! 0's main thread ends the job at once with `MPI_Abort` (exit code 101) after printing
//! the panic: unwinding into `MPI_Finalize` would hang every rank. One MPI pool is open
//! at a time; building another while one is open fails with
//! [`PoolError::Config`](crate::PoolError::Config).
//!
//! Outside an MPI launcher, or in a job of one rank, [`Builder::mpi`](crate::Builder::mpi)
//! builds a local pool, so the same program runs on a laptop.

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
/// ```no_run
/// procpool::init();
/// if let Some((rank, size)) = procpool::mpi_rank() {
///     println!("rank {rank} of {size}");
/// }
/// ```
pub fn mpi_rank() -> Option<(usize, usize)> {
    runtime::lock().map(|rt| (rt.rank as usize, rt.size as usize))
}
