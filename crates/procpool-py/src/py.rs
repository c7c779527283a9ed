//! Small helpers over the Python C API: the private Python modules' functions, and
//! memoryviews over memory this crate owns.

use std::ffi::c_char;

use pyo3::prelude::*;
use pyo3::{ffi, intern};

/// `PyBUF_READ` and `PyBUF_WRITE` of the C API (memoryview flags).
const PYBUF_READ: std::ffi::c_int = 0x100;
const PYBUF_WRITE: std::ffi::c_int = 0x200;

/// `procpool.<module>.<name>`, looked up once per process.
pub(crate) fn helper<'py>(
    py: Python<'py>,
    module: &'static str,
    name: &'static str,
) -> PyResult<Bound<'py, PyAny>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Helpers = HashMap<(&'static str, &'static str), Py<PyAny>>;
    static CACHE: Mutex<Option<Helpers>> = Mutex::new(None);
    if let Some(f) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&(module, name))
    {
        return Ok(f.bind(py).clone());
    }
    let m = py.import(format!("procpool.{module}"))?;
    let f = m.getattr(name)?;
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert((module, name), f.clone().unbind());
    Ok(f)
}

/// A read-only memoryview of `mem`. The caller must `release()` it before `mem` goes.
pub(crate) fn memoryview<'py>(py: Python<'py>, mem: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the view reads `mem.len()` bytes at `mem`, which outlive it (the caller
    // releases it first); PyBUF_READ makes it read-only.
    unsafe {
        let p = ffi::PyMemoryView_FromMemory(
            mem.as_ptr().cast_mut().cast::<c_char>(),
            mem.len() as ffi::Py_ssize_t,
            PYBUF_READ,
        );
        Bound::from_owned_ptr_or_err(py, p)
    }
}

/// A writable memoryview of memory not yet initialized, for Python to fill (and
/// release) without reading it.
pub(crate) fn memoryview_uninit<'py>(
    py: Python<'py>,
    mem: &mut [std::mem::MaybeUninit<u8>],
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the view covers `mem`, borrowed mutably for its life (the callee releases
    // it before returning); it is only written through (slice assignment
    // in `_pickle.fill`), never read, so the bytes' being uninitialized is never seen.
    unsafe {
        let p = ffi::PyMemoryView_FromMemory(
            mem.as_mut_ptr().cast::<c_char>(),
            mem.len() as ffi::Py_ssize_t,
            PYBUF_WRITE,
        );
        Bound::from_owned_ptr_or_err(py, p)
    }
}

/// Releases a memoryview (no Python object may keep using its memory).
pub(crate) fn release(mv: &Bound<'_, PyAny>) {
    let _ = mv.call_method0(intern!(mv.py(), "release"));
}

/// An exception of `procpool._errors` (or any module), built with `args`.
pub(crate) fn error<'py, A: pyo3::call::PyCallArgs<'py>>(
    py: Python<'py>,
    name: &'static str,
    args: A,
) -> Bound<'py, PyAny> {
    match helper(py, "_errors", name).and_then(|cls| cls.call1(args)) {
        Ok(e) => e,
        Err(e) => e.into_value(py).into_bound(py).into_any(),
    }
}

/// Whether this thread is one of the pools' own result threads (marked by
/// `procpool._pickle.result_thread()`), which have no caller to raise an exception to.
pub(crate) fn in_result_thread(py: Python<'_>) -> bool {
    helper(py, "_pickle", "in_result_thread")
        .and_then(|f| f.call0())
        .and_then(|r| r.is_truthy())
        .unwrap_or(false)
}
