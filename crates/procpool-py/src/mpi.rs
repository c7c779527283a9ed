//! The Python front over MPI (feature `mpi`, built as the `_procpool_mpi` extension).
//!
//! Why a second extension rather than MPI in `procpool._core`: the MPI bindings link the
//! MPI library at build time, so a `_core` with MPI would load `libmpi` (and Open MPI's
//! own libraries) at every `import procpool`, costing start-up time, and would not load
//! at all on a machine without MPI (the published wheel must work there). So `_core`
//! has no MPI, and this build of the same crate, a module of its own linked against the
//! machine's MPI, is loaded by `procpool.mpi` only when a program asks for MPI under an
//! MPI launcher.
//!
//! Rank 0 uses this module's `Engine` (the same class as `_core`'s) with `mpi=True`: the
//! engine's `Remote` dispatcher over procpool's MPI link, exactly as a Rust program's
//! pool. Ranks other than 0 serve as procpool's MPI agents (`procpool::mpi_front`), each
//! running a local pool of Python workers forked from its host's template, which this
//! module's hook gives them: the template launcher of `procpool._core` (so a worker is a
//! plain `_core` worker, and a task's crash or time limit costs that task alone).

use std::sync::Arc;

use procpool_engine::{Engine, EngineConfig, PoolError};
use pyo3::prelude::*;

/// Initializes MPI when this process runs under an MPI launcher (once; later calls only
/// answer). On rank 0, returns `(0, size)` once every agent said hello; on the other
/// ranks, serves as an agent until rank 0 ends the job, then exits the process (code 0)
/// without returning. Outside an MPI launcher, `(0, 1)`.
#[pyfunction]
fn _init(py: Python<'_>) -> (usize, usize) {
    py.detach(|| procpool::mpi_front::init(complete_local));
    procpool::mpi_rank().unwrap_or((0, 1))
}

/// This process's rank and the job's size, once MPI is initialized.
#[pyfunction]
fn _rank() -> Option<(usize, usize)> {
    procpool::mpi_rank()
}

/// On an agent: gives the local pool rank 0 asked for this process's Python workers
/// (started from the template, looking like this process as of now).
fn complete_local(config: &mut EngineConfig) -> Result<(), PoolError> {
    let launcher = Python::attach(|py| crate::engine::template_launcher(py, None, false))?;
    config.launcher = Some(Arc::new(launcher));
    config.identity = Some(crate::identity());
    Ok(())
}

/// Starts a pool over the MPI job's agents, `per_agent` workers on each (0: each host's
/// cores shared among its agents); a local pool when the job has no agent.
pub(crate) fn start(mut config: EngineConfig, per_agent: usize) -> Result<Engine, PoolError> {
    if procpool::mpi_rank().is_none_or(|(_, size)| size <= 1) {
        if per_agent == 0 {
            config.workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        return Engine::start(config);
    }
    procpool::mpi_front::start(config, (per_agent > 0).then_some(per_agent))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_init, m)?)?;
    m.add_function(wrap_pyfunction!(_rank, m)?)?;
    Ok(())
}
