//! Engine errors as the Python exceptions of `procpool._errors`.

use procpool_engine::{Death, PoolError, TaskError, TaskErrorKind};
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;

use crate::py;

/// The exception a task that failed in the engine (not in its own code) gets.
pub(crate) fn task_error<'py>(py: Python<'py>, e: &TaskError) -> Bound<'py, PyAny> {
    let pid = e.pid().unwrap_or(0);
    match e.kind() {
        TaskErrorKind::WorkerDied { death } => {
            let (code, sig) = match death {
                Death::Exit(c) => (Some(*c), None),
                Death::Signal(s) => (None, Some(*s)),
                _ => (None, None),
            };
            py::error(py, "WorkerDied", (pid, code, sig))
        }
        TaskErrorKind::AgentLost { agent } => py::error(py, "AgentLost", (pid, agent.clone())),
        TaskErrorKind::TimedOut { limit, .. } => {
            py::error(py, "TaskTimeoutError", (pid, limit.as_secs_f64()))
        }
        TaskErrorKind::OutOfMemory { size } => PyMemoryError::new_err(format!(
            "the parent could not allocate {size} bytes for the task's result"
        ))
        .into_value(py)
        .into_bound(py)
        .into_any(),
        TaskErrorKind::TooLarge { size, limit } => py::error(
            py,
            "MessageTooLarge",
            (format!(
                "the task's arguments or result take {size} bytes pickled, over the \
                 pool's max_message_size of {limit} bytes: pass a larger \
                 max_message_size= to Pool() or ProcessPoolExecutor() (at most \
                 {} bytes), or send less per task",
                crate::args::MAX_MESSAGE_SIZE
            ),),
        ),
        _ => py::error(py, "PoolError", (e.to_string(),)),
    }
}

/// A pool-level error as a Python exception: `ValueError("Pool not running")` for a
/// closed pool (as `multiprocessing` says it), `PoolError` otherwise.
pub(crate) fn pool_error(py: Python<'_>, e: &PoolError) -> PyErr {
    match e {
        PoolError::Closed => PyValueError::new_err("Pool not running"),
        _ => PyErr::from_value(py::error(py, "PoolError", (e.to_string(),))),
    }
}
