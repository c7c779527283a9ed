//! Descriptors that travel with a job's arguments (see `procpool/_passfd.py`): collected
//! while the parent pickles the arguments, handed to the engine as the job's
//! [`JobFds`]; in the worker, shown to Python while it unpickles them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use procpool_engine::JobFds;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::py;

/// Runs `f` (which pickles a job's arguments) while values that hold a descriptor may
/// attach it; returns `f`'s result and the descriptors attached (`None` if none). On an
/// error from `f` the descriptors are closed.
pub(crate) fn collecting<'py, T>(
    py: Python<'py>,
    f: impl FnOnce() -> PyResult<T>,
) -> PyResult<(T, Option<JobFds>)> {
    let prev = py::helper(py, "_passfd", "begin")?.call1((remote(),))?;
    let r = f();
    let fds = py::helper(py, "_passfd", "end")?.call1((prev,))?;
    let fds = fds.cast::<PyList>()?;
    let owned: Vec<OwnedFd> = fds
        .iter()
        .filter_map(|fd| fd.extract::<i32>().ok())
        // SAFETY: `_passfd.attach` made each one with os.dup for this job alone; nothing
        // else closes them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let v = r?;
    Ok((v, (!owned.is_empty()).then(|| Arc::from(owned))))
}

/// Whether jobs pickled in this process go to other hosts: in the `_procpool_mpi`
/// extension (whose engines are MPI pools only: `procpool._args._start_engine`) on rank 0
/// of an MPI job with agents. Values that name a descriptor of this process by number
/// (queues, pipes) then attach it to the job (`_passfd.host_bound`), so that the pool
/// refuses the job as it refuses shared memory and locks.
/// Known once MPI is initialized, then kept (asking takes the MPI runtime's lock).
fn remote() -> bool {
    #[cfg(feature = "mpi")]
    {
        use std::sync::OnceLock;
        static REMOTE: OnceLock<bool> = OnceLock::new();
        if let Some(&r) = REMOTE.get() {
            return r;
        }
        match procpool::mpi_rank() {
            Some((_, size)) => *REMOTE.get_or_init(|| size > 1),
            None => false,
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        false
    }
}

/// The descriptors as a Python list of numbers (borrowed: valid while `fds` lives), or
/// `None` when there are none.
pub(crate) fn as_list<'py>(py: Python<'py>, fds: &[OwnedFd]) -> PyResult<Bound<'py, PyAny>> {
    if fds.is_empty() {
        return Ok(py.None().into_bound(py));
    }
    Ok(PyList::new(py, fds.iter().map(|f| f.as_raw_fd()))?.into_any())
}
