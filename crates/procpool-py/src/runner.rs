//! The worker side: the engine's worker loop with a runner that calls Python.

use procpool_engine::{Failure, Runner};
use pyo3::exceptions::{PyException, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

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
            Ok(callable) => self.call(py, callable, &f),
            Err(e) if !init => py::helper(py, "_worker", "fail_all")
                .and_then(|h| h.call1((e.into_value(py), f.count)))
                .map(Bound::unbind),
            Err(e) => Err(e),
        };
        let r = r.and_then(|t| {
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

    fn call(&self, py: Python<'_>, func: Py<PyAny>, f: &Frame<'_>) -> PyResult<Py<PyAny>> {
        let mv = py::memoryview(py, f.pickle)?;
        // Descriptors of shared values in the arguments (closed after the job).
        let fds = procpool_engine::take_job_fds();
        let r = py::helper(py, "_worker", "run").and_then(|run| {
            run.call1((
                func,
                f.kind,
                f.flags & STAR != 0,
                f.count,
                &mv,
                f.py_bufs(py),
                f.flags & CATCH_ALL != 0,
                crate::passfd::as_list(py, &fds)?,
            ))
        });
        drop(fds);
        py::release(&mv);
        Ok(r?.unbind())
    }
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
