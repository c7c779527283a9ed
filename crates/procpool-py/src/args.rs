//! Argument conversions shared by `Engine`, `Run` and `Stream`: seconds into durations,
//! and a task function into the bytes jobs carry.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::py;

/// The largest job payload or result the engine takes (4 GiB - 1 KiB), the Python
/// front's default limit: as the stdlib, which has none, a 1 GiB argument or result
/// goes through unless the pool's `max_message_size=` says less.
pub(crate) const MAX_MESSAGE_SIZE: usize = u32::MAX as usize - 1024;

/// Seconds as a duration; `None` stays `None`. A negative, NaN or infinite value is a
/// `ValueError` naming `what`.
pub(crate) fn duration(secs: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, not {s}"
        ))),
    }
}

/// A function's reference for jobs (by value when it cannot go by reference).
pub(crate) fn pickle_func(func: &Bound<'_, PyAny>) -> PyResult<Arc<[u8]>> {
    if !func.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "{:?} object is not callable",
            func.get_type().name()?.to_string()
        )));
    }
    let b = py::helper(func.py(), "_pickle", "dumps_func")?.call1((func,))?;
    Ok(Arc::from(b.cast::<PyBytes>()?.as_bytes()))
}
