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
    let prev = py::helper(py, "_passfd", "begin")?.call0()?;
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

/// The descriptors as a Python list of numbers (borrowed: valid while `fds` lives), or
/// `None` when there are none.
pub(crate) fn as_list<'py>(py: Python<'py>, fds: &[OwnedFd]) -> PyResult<Bound<'py, PyAny>> {
    if fds.is_empty() {
        return Ok(py.None().into_bound(py));
    }
    Ok(PyList::new(py, fds.iter().map(|f| f.as_raw_fd()))?.into_any())
}
