//! `Stream`: independent calls (`apply_async`, `Executor.submit`) on one engine batch;
//! results in completion order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use procpool_engine::{Batch, Job, RecvError};
use pyo3::exceptions::{PyStopIteration, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple, PyWeakrefReference};

use crate::args::{duration, pickle_func};
use crate::errors;
use crate::frame;
use crate::py;
use crate::run::{POLL, decode_result, pop_ready};

/// Payload kind of one call.
const CALL: u8 = 1;

/// Independent calls; results come back as `(tag, ok, value)` in completion order.
#[pyclass(module = "procpool._core")]
#[derive(Debug)]
pub(crate) struct Stream {
    batch: Batch,
    next_tag: AtomicU64,
    closed: AtomicBool,
    cancelled: AtomicBool,
    default_timeout: Option<Duration>,
    /// Frame flags of every call (`frame::CATCH_ALL` or 0).
    flags: u8,
    /// Pickled functions by identity, the latest last.
    funcs: Mutex<FuncCache>,
    /// Counts submits, closes and cancels: a `next` with nothing outstanding sleeps
    /// until it changes.
    changes: Mutex<u64>,
    changed: Condvar,
}

/// Pickled functions, each with the function it was made from: held by a weak reference
/// (a bound method or a callable object is not kept alive by the stream, nor what it
/// refers to), or, for the functions that take none (builtins), strongly.
type FuncCache = Vec<(FuncRef, Arc<[u8]>)>;

#[derive(Debug)]
enum FuncRef {
    Weak(Py<PyWeakrefReference>),
    Strong(Py<PyAny>),
}

impl FuncRef {
    /// Whether this is `func` (a dead weak reference is nothing).
    fn is(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> bool {
        match self {
            FuncRef::Strong(f) => f.as_ptr() == func.as_ptr(),
            FuncRef::Weak(w) => w
                .bind(py)
                .upgrade()
                .is_some_and(|f| f.as_ptr() == func.as_ptr()),
        }
    }

    fn alive(&self, py: Python<'_>) -> bool {
        match self {
            FuncRef::Strong(_) => true,
            FuncRef::Weak(w) => w.bind(py).upgrade().is_some(),
        }
    }
}

/// Functions whose pickles are kept.
const FUNC_CACHE: usize = 16;

impl Stream {
    pub(crate) fn new(batch: Batch, default_timeout: Option<Duration>, catch_all: bool) -> Self {
        Stream {
            batch,
            next_tag: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            default_timeout,
            flags: if catch_all { frame::CATCH_ALL } else { 0 },
            funcs: Mutex::new(Vec::new()),
            changes: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    fn changes(&self) -> u64 {
        *self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        *self.changes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Waits at most `wait` for a submit, close or cancel after `seen`.
    fn wait_change(&self, seen: u64, wait: Duration) {
        let g = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        drop(
            self.changed
                .wait_timeout_while(g, wait, |n| *n == seen)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }

    fn func_bytes(&self, func: &Bound<'_, PyAny>) -> PyResult<Arc<[u8]>> {
        let py = func.py();
        let mut cache = self.funcs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = cache.iter().find(|(f, _)| f.is(py, func)) {
            return Ok(b.clone());
        }
        let b: Arc<[u8]> = pickle_func(func)?;
        let entry = match PyWeakrefReference::new(func) {
            Ok(w) => Some(FuncRef::Weak(w.unbind())),
            // Builtins take no weak reference and live as long as their module.
            Err(_) if func.is_instance_of::<PyCFunction>() => {
                Some(FuncRef::Strong(func.clone().unbind()))
            }
            Err(_) => None,
        };
        if let Some(entry) = entry {
            cache.retain(|(f, _)| f.alive(py));
            if cache.len() >= FUNC_CACHE {
                cache.remove(0);
            }
            cache.push((entry, b.clone()));
        }
        Ok(b)
    }
}

#[pymethods]
impl Stream {
    /// Pickles the call now (a pickling error raises here) and queues it; returns its
    /// tag: 0, 1, 2, ...
    #[pyo3(signature = (func, args=None, kwds=None, *, timeout=None))]
    fn submit(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: Option<&Bound<'_, PyAny>>,
        kwds: Option<&Bound<'_, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        if self.closed.load(Ordering::Relaxed) || self.cancelled.load(Ordering::Relaxed) {
            return Err(PyValueError::new_err("Pool not running"));
        }
        let timeout = duration(timeout, "timeout")?.or(self.default_timeout);
        let func = self.func_bytes(func)?;
        let args = match args {
            Some(a) => a.clone(),
            None => PyTuple::empty(py).into_any(),
        };
        // The arguments may hold shared values: their descriptors go with the job.
        let (t, fds) = crate::passfd::collecting(py, || {
            py::helper(py, "_pickle", "dumps_call")?.call1((args, kwds))
        })?;
        let t = t.cast::<PyTuple>()?;
        let mut payload = Vec::new();
        frame::encode(
            &mut payload,
            CALL,
            self.flags,
            1,
            t.get_item(0)?.cast::<PyBytes>()?,
            &t.get_item(1)?,
        )?;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            func,
            payload: Arc::new(payload),
            index: tag,
            weight: 1,
            timeout,
            fds,
            attempts: 0,
        };
        self.batch
            .submit([job])
            .map_err(|e| errors::pool_error(py, &e))?;
        self.bump();
        Ok(tag)
    }

    /// The next `(tag, ok, value)` in completion order; `TimeoutError` after `timeout`
    /// seconds; `StopIteration` once closed and everything came back.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let deadline = duration(timeout, "timeout")?.map(|t| Instant::now() + t);
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(PyStopIteration::new_err(()));
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(POLL),
                None => POLL,
            };
            let seen = self.changes();
            let batch = &self.batch;
            match py.detach(|| batch.recv_timeout(wait)) {
                Ok(done) => {
                    return match &done.outcome {
                        Ok(bytes) => {
                            let mut ready =
                                VecDeque::from([decode_result(py, done.index, 1, bytes)?.0]);
                            Ok(pop_ready(py, &mut ready)?.expect("one outcome"))
                        }
                        Err(e) => Ok(PyTuple::new(
                            py,
                            [
                                done.index.into_pyobject(py)?.into_any(),
                                false.into_pyobject(py)?.to_owned().into_any(),
                                errors::task_error(py, e),
                            ],
                        )?
                        .into_any()
                        .unbind()),
                    };
                }
                Err(RecvError::Empty) => {
                    if self.closed.load(Ordering::Relaxed) {
                        return Err(PyStopIteration::new_err(()));
                    }
                    py.detach(|| self.wait_change(seen, wait));
                }
                Err(RecvError::Timeout) => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PyTimeoutError::new_err("timed out"));
            }
        }
    }

    /// Calls submitted whose outcome `next` has not returned yet.
    fn pending(&self) -> usize {
        self.batch.outstanding()
    }

    /// No more submits.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.bump();
    }

    /// Drops every call not started and kills the workers running the others; `next`
    /// then ends.
    fn cancel(&self, py: Python<'_>) {
        if !self.cancelled.swap(true, Ordering::Relaxed) {
            let batch = &self.batch;
            py.detach(|| batch.cancel());
            self.bump();
        }
    }
}
