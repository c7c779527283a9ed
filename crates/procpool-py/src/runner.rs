//! The worker side: the engine's worker loop with a runner that calls Python.

use procpool_engine::{Failure, Runner};
use pyo3::exceptions::{PyException, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::frame::{self, CATCH_ALL, Frame, STAR};
use crate::py;

/// Payload kind of a pool's initializer.
const INIT: u8 = 2;

/// Runs jobs by calling `procpool._worker.run`. The function of the last job is kept,
/// unpickled, for the next job with the same bytes.
#[derive(Debug, Default)]
pub(crate) struct PyRunner {
    func: Option<(Vec<u8>, Py<PyAny>)>,
}

impl Runner for PyRunner {
    fn run(&mut self, func: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        Python::attach(|py| self.run_py(py, func, payload, out))
    }
}

impl PyRunner {
    fn run_py(
        &mut self,
        py: Python<'_>,
        func: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let f = Frame::parse(payload).map_err(|message| Failure::Codec { message })?;
        let init = f.kind == INIT;
        let r = match self.function(py, func) {
            Ok(callable) => self.call(py, callable, &f, out),
            Err(e) if !init => py::helper(py, "_worker", "fail_all")
                .and_then(|h| h.call1((e.into_value(py), f.count)))
                .map(|t| Some(t.unbind())),
            Err(e) => Err(e),
        };
        let r = r.and_then(|t| {
            let Some(t) = t else {
                return Ok(()); // a chunk's items, run and recorded
            };
            let t = t.bind(py).cast::<PyTuple>()?.clone();
            let kind: u8 = t.get_item(0)?.extract()?;
            let data = t.get_item(1)?;
            let data = data.cast::<PyBytes>()?;
            frame::encode(out, kind, 0, f.count, data, &t.get_item(2)?)
        });
        r.map_err(|e| failure(py, e, init))
    }

    fn function(&mut self, py: Python<'_>, func: &[u8]) -> PyResult<Py<PyAny>> {
        if let Some((bytes, f)) = &self.func
            && bytes == func
        {
            return Ok(f.clone_ref(py));
        }
        let mv = py::memoryview(py, func)?;
        let f = py::helper(py, "_worker", "load_func")?.call1((&mv,));
        py::release(&mv);
        let f = f?.unbind();
        self.func = Some((func.to_vec(), f.clone_ref(py)));
        Ok(f)
    }

    /// Runs a job: `None` when it was a chunk, whose items' records are in `out`; else
    /// `_worker.run`'s `(kind, pickle, buffers)`.
    fn call(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        f: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let mv = py::memoryview(py, f.pickle)?;
        // Descriptors of shared values in the arguments (closed after the job).
        let fds = procpool_engine::take_job_fds();
        let r = py::helper(py, "_worker", "run").and_then(|run| {
            run.call1((
                &func,
                f.kind,
                f.flags & STAR != 0,
                f.count,
                &mv,
                f.py_bufs(py),
                f.flags & CATCH_ALL != 0,
                crate::passfd::as_list(py, &fds)?,
                f.skip,
            ))
        });
        py::release(&mv);
        let r = r.and_then(|t| match t.cast_exact::<PyList>() {
            Ok(items) => {
                run_items(py, func.bind(py), items, f.flags & STAR != 0, out).map(|()| None)
            }
            Err(_) => Ok(Some(t.unbind())),
        });
        drop(fds);
        r
    }
}

/// Strings and bytes results at least this large go as a pickle (out of band when
/// large), not as a record of their own.
const RECORD_MAX: usize = 64 * 1024;

/// Runs a chunk's `items` (the arguments, unpickled), appending each item's record to
/// `out` (see `frame`) and recording the finished items with the engine after each, so
/// that if the worker dies inside the chunk the parent gets them, and the item running
/// alone fails. A task's `Exception` is that item's failure; any other exception
/// (`SystemExit`, `KeyboardInterrupt`) ends the job (and the worker, see `failure`).
/// When the records outgrow what the engine can keep, the chunk stops after the item
/// that passed it: the header then counts the items run, and the parent sends the others
/// again.
fn run_items(
    py: Python<'_>,
    func: &Bound<'_, PyAny>,
    items: &Bound<'_, PyList>,
    star: bool,
    out: &mut Vec<u8>,
) -> PyResult<()> {
    let log = procpool_engine::ItemLog::current();
    out.clear();
    let n = items.len();
    frame::begin_items(out, n as u32);
    log.finished(0, out, 0);
    let mut recorded = out.len();
    for i in 0..n {
        let x = items.get_item(i)?;
        let r = if star {
            match x.cast_exact::<PyTuple>() {
                Ok(t) => func.call(t, None),
                Err(_) => py
                    .get_type::<PyTuple>()
                    .call1((x,))
                    .and_then(|t| func.call(t.cast_into::<PyTuple>()?, None)),
            }
        } else {
            call_one(func, &x)
        };
        match r {
            Ok(v) => put_value(py, out, &v)?,
            Err(e) if e.is_instance_of::<PyException>(py) => {
                let t = py::helper(py, "_worker", "item_error")?.call1((e.into_value(py),))?;
                put_frame(out, &t)?;
            }
            Err(e) => return Err(e),
        }
        if !log.finished(i as u32 + 1, out, recorded) {
            frame::set_items(out, i as u32 + 1);
            return Ok(());
        }
        recorded = out.len();
    }
    Ok(())
}

/// `func(x)`, without a tuple of arguments: `PyObject_CallFunctionObjArgs` (in the
/// stable ABI) passes them on the stack, as a vectorcall, where the abi3 build's
/// `call1` makes a tuple for each call.
#[inline]
fn call_one<'py>(func: &Bound<'py, PyAny>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: both objects are alive (borrowed for the call); the list of arguments ends
    // with NULL; the call returns a new reference, or NULL with an exception set.
    unsafe {
        let r = pyo3::ffi::PyObject_CallFunctionObjArgs(
            func.as_ptr(),
            x.as_ptr(),
            std::ptr::null_mut::<pyo3::ffi::PyObject>(),
        );
        Bound::from_owned_ptr_or_err(func.py(), r)
    }
}

/// Appends the record of one item's value.
fn put_value(py: Python<'_>, out: &mut Vec<u8>, v: &Bound<'_, PyAny>) -> PyResult<()> {
    if v.is_none() {
        out.push(frame::T_NONE);
        return Ok(());
    }
    if let Ok(i) = v.cast_exact::<PyInt>()
        && let Ok(n) = i.extract::<i64>()
    {
        out.push(frame::T_INT);
        out.extend_from_slice(&n.to_le_bytes());
        return Ok(());
    }
    if let Ok(f) = v.cast_exact::<PyFloat>() {
        out.push(frame::T_FLOAT);
        out.extend_from_slice(&f.value().to_le_bytes());
        return Ok(());
    }
    if let Ok(b) = v.cast_exact::<PyBool>() {
        out.push(if b.is_true() {
            frame::T_TRUE
        } else {
            frame::T_FALSE
        });
        return Ok(());
    }
    if let Ok(s) = v.cast_exact::<PyString>()
        && let Ok(s) = s.to_cow()
        && s.len() < RECORD_MAX
    {
        out.push(frame::T_STR);
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        return Ok(());
    }
    if let Ok(b) = v.cast_exact::<PyBytes>()
        && b.as_bytes().len() < RECORD_MAX
    {
        out.push(frame::T_BYTES);
        out.extend_from_slice(&(b.as_bytes().len() as u32).to_le_bytes());
        out.extend_from_slice(b.as_bytes());
        return Ok(());
    }
    let t = py::helper(py, "_worker", "item_value")?.call1((v,))?;
    put_frame(out, &t)
}

/// Appends a record holding a frame of one item, from `_pickle.encode_results`'s
/// `(kind, pickle, buffers)`.
fn put_frame(out: &mut Vec<u8>, t: &Bound<'_, PyAny>) -> PyResult<()> {
    let t = t.cast::<PyTuple>()?;
    let kind: u8 = t.get_item(0)?.extract()?;
    let data = t.get_item(1)?;
    let mark = out.len();
    out.push(frame::T_FRAME);
    out.extend_from_slice(&[0; 8]);
    let r = frame::encode(out, kind, 0, 1, data.cast::<PyBytes>()?, &t.get_item(2)?);
    if r.is_err() {
        out.truncate(mark);
    }
    r?;
    let len = (out.len() - mark - 9) as u64;
    out[mark + 1..mark + 9].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// What a Python exception out of a job means: an initializer's failure (the worker
/// reports it and exits), or, for `SystemExit` and `KeyboardInterrupt` raised by a task,
/// the end of this worker (as the same call would end a program).
fn failure(py: Python<'_>, e: PyErr, init: bool) -> Failure {
    if !init && !e.is_instance_of::<PyException>(py) {
        let code = if e.is_instance_of::<PySystemExit>(py) {
            e.value(py)
                .getattr("code")
                .ok()
                .and_then(|c| c.extract::<i32>().ok())
                .unwrap_or(1)
        } else {
            e.display(py);
            1
        };
        if let Ok(flush) = py::helper(py, "_worker", "flush") {
            let _ = flush.call0();
        }
        // SAFETY: _exit ends the process at once; nothing of it is used afterwards.
        unsafe { libc::_exit(code) };
    }
    let message = py
        .import("traceback")
        .and_then(|tb| {
            tb.getattr("format_exception")?
                .call1((e.get_type(py), e.value(py), e.traceback(py)))
        })
        .and_then(|lines| {
            let lines: Vec<String> = lines.extract()?;
            Ok(lines.concat())
        })
        .unwrap_or_else(|_| e.to_string());
    Failure::Panic {
        message,
        location: None,
    }
}

/// The worker loop, for a worker forked by the template: serves until the parent shuts
/// it down; returns the exit code.
pub(crate) fn serve(py: Python<'_>, identity: u64) -> i32 {
    py.detach(|| procpool_engine::serve_launched(identity, &mut PyRunner::default()))
}
