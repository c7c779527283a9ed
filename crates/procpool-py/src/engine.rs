//! `Engine`: a pool of Python workers on the engine, started from the template.

use std::ffi::OsString;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use procpool_engine::EngineConfig;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::args::{MAX_MESSAGE_SIZE, duration, pickle_func};
use crate::errors;
use crate::frame;
use crate::launcher::TemplateLauncher;
use crate::py;
use crate::run::{POLL, Run, RunSpec, State as RunState, pump};
use crate::stream::Stream;

/// How often a join moves along the runs nobody iterates.
const PUMP_STEP: Duration = Duration::from_millis(2);

/// Payload kind of a pool's initializer.
const INIT: u8 = 2;
/// Most descriptors `initargs` may carry (they go with the worker's own socket in one
/// `SCM_RIGHTS` message to the template, whose limit is 253).
const MAX_INIT_FDS: usize = 252;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Closed,
    Stopping,
    Stopped,
}

#[derive(Debug)]
struct Inner {
    engine: Option<procpool_engine::Engine>,
    phase: Phase,
    /// The thread joining the engine, joined in turn once it is done.
    joiner: Option<std::thread::JoinHandle<()>>,
}

/// A pool of worker processes running Python callables.
#[pyclass(module = "procpool._core")]
#[derive(Debug)]
pub(crate) struct Engine {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    /// Terminates the engine even while a join holds it.
    stopper: procpool_engine::Stopper,
    #[pyo3(get)]
    processes: usize,
    timeout: Option<Duration>,
    /// The runs made, for a join to move along (see `run::pump`).
    runs: Mutex<Vec<Weak<Mutex<RunState>>>>,
}

impl Engine {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the engine while it is open; `ValueError("Pool not running")` if not.
    fn open<T>(&self, f: impl FnOnce(&procpool_engine::Engine) -> T) -> PyResult<T> {
        let g = self.lock();
        match (&g.engine, g.phase) {
            (Some(e), Phase::Open) => Ok(f(e)),
            _ => Err(PyValueError::new_err("Pool not running")),
        }
    }

    /// Takes the engine out to stop it on its own thread; the last to stop wakes the
    /// waiters.
    fn stop(&self, py: Python<'_>, terminate: bool) {
        let mut g = self.lock();
        let Some(engine) = g.engine.take() else {
            if terminate && g.phase == Phase::Stopping {
                // A join is under way: make it end now, and wait for it.
                drop(g);
                self.stopper.terminate();
                let inner = self.inner.clone();
                py.detach(move || {
                    let (m, cv) = &*inner;
                    let g = m.lock().unwrap_or_else(|e| e.into_inner());
                    drop(cv.wait_while(g, |g| g.phase != Phase::Stopped));
                });
            }
            return;
        };
        g.phase = Phase::Stopping;
        drop(g);
        let inner = self.inner.clone();
        let finish = move || {
            if terminate {
                engine.terminate();
            } else {
                engine.join();
            }
            let (m, cv) = &*inner;
            m.lock().unwrap_or_else(|e| e.into_inner()).phase = Phase::Stopped;
            cv.notify_all();
        };
        if terminate {
            py.detach(finish);
        } else {
            let t = std::thread::Builder::new()
                .name("procpool-join".into())
                .spawn(finish)
                .expect("a thread to join the pool");
            self.lock().joiner = Some(t);
        }
    }
}

#[pymethods]
impl Engine {
    #[new]
    /// `mpi`: over the agents of the MPI job (`_procpool_mpi` only), `processes` workers
    /// on each (0: each host's cores shared among its agents).
    #[pyo3(signature = (processes, *, initializer=None, initargs=None, maxtasksperchild=None,
                        timeout=None, retries=0, max_message_size=None, mpi=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        processes: usize,
        initializer: Option<&Bound<'_, PyAny>>,
        initargs: Option<&Bound<'_, PyAny>>,
        maxtasksperchild: Option<i64>,
        timeout: Option<f64>,
        retries: u32,
        max_message_size: Option<usize>,
        mpi: bool,
    ) -> PyResult<Self> {
        // A pool started while this process still starts up (a worker importing the
        // main module or unpickling a task): the stdlib's RuntimeError.
        py::helper(py, "_bootstrap", "check")?.call0()?;
        if processes < 1 && !mpi {
            return Err(PyValueError::new_err(
                "Number of processes must be at least 1",
            ));
        }
        let recycle_after = match maxtasksperchild {
            None => None,
            Some(n) if n >= 1 => Some(n as u64),
            Some(_) => {
                return Err(PyValueError::new_err(
                    "maxtasksperchild must be a positive int or None",
                ));
            }
        };
        let timeout = duration(timeout, "timeout")?;
        let mut init_fds = None;
        let initializer = match initializer {
            Some(f) if !f.is_none() => {
                let func = pickle_func(f)?;
                let args = match initargs {
                    Some(a) => a.clone(),
                    None => PyTuple::empty(py).into_any(),
                };
                // Shared values in `initargs`: each worker gets their descriptors at
                // its start, from the template (see `launcher`).
                let (t, fds) = crate::passfd::collecting(py, || {
                    py::helper(py, "_pickle", "dumps_call")?
                        .call1((args, None::<&Bound<'_, PyDict>>))
                })?;
                if fds.as_ref().is_some_and(|f| f.len() > MAX_INIT_FDS) {
                    return Err(PyValueError::new_err(format!(
                        "initargs hold more than {MAX_INIT_FDS} distinct shared values \
                         (locks, Value, Array, shared()): pass fewer, or pass them as task \
                         arguments"
                    )));
                }
                init_fds = fds;
                let t = t.cast::<PyTuple>()?;
                let mut payload = Vec::new();
                frame::encode(
                    &mut payload,
                    INIT,
                    0,
                    1,
                    t.get_item(0)?.cast::<PyBytes>()?,
                    &t.get_item(1)?,
                )?;
                Some((func, payload))
            }
            _ => None,
        };
        if mpi && init_fds.is_some() {
            return Err(PyValueError::new_err(
                "initargs hold shared values (locks, Value, Array, shared()) or queues and \
                 pipes, which name open files of this host and cannot travel to the workers \
                 of an MPI pool on other hosts: pass plain data, or use a local pool",
            ));
        }
        // The first pool of a single-threaded process: its template is a fork of it
        // (never for an MPI pool: a rank is not forked).
        let launcher =
            template_launcher(py, init_fds, !mpi).map_err(|e| errors::pool_error(py, &e))?;
        let config = EngineConfig {
            workers: processes,
            recycle_after,
            retries,
            initializer,
            launcher: Some(Arc::new(launcher)),
            identity: Some(crate::identity()),
            max_message: max_message_size.unwrap_or(if mpi {
                default_mpi_max_message()
            } else {
                MAX_MESSAGE_SIZE
            }),
            ..EngineConfig::default()
        };
        let engine = py
            .detach(|| start(config, mpi, processes))
            .map_err(|e| errors::pool_error(py, &e))?;
        let processes = engine.config().workers;
        Ok(Engine {
            stopper: engine.stopper(),
            inner: Arc::new((
                Mutex::new(Inner {
                    engine: Some(engine),
                    phase: Phase::Open,
                    joiner: None,
                }),
                Condvar::new(),
            )),
            processes,
            timeout,
            runs: Mutex::new(Vec::new()),
        })
    }

    /// Runs `func` over `items` (lazily); see the module docs. `collect`: the caller
    /// takes every result within the call (a `map`); otherwise (an `imap`) what the run
    /// holds in flight follows what the caller takes.
    #[pyo3(signature = (func, items, *, star=false, chunksize=None, ordered=true, timeout=None,
                        collect=false))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        func: &Bound<'_, PyAny>,
        items: &Bound<'_, PyAny>,
        star: bool,
        chunksize: Option<usize>,
        ordered: bool,
        timeout: Option<f64>,
        collect: bool,
    ) -> PyResult<Run> {
        if chunksize == Some(0) {
            return Err(PyValueError::new_err("chunksize must be at least 1"));
        }
        let timeout = duration(timeout, "timeout")?.or(self.timeout);
        self.open(|_| ())?;
        let fref = pickle_func(func)?;
        let hint = items.len().ok();
        let iter = items.try_iter()?.unbind();
        let spec = RunSpec {
            func: fref,
            star,
            chunksize,
            ordered,
            timeout,
            collect,
        };
        let run = self.open(|e| Run::new(e, iter, hint, spec))?;
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.retain(|r| r.strong_count() > 0);
        runs.push(run.state_ref());
        Ok(run)
    }

    /// A stream of independent calls. `catch_all`: a task's `SystemExit` or
    /// `KeyboardInterrupt` is its outcome (the executor's way) rather than the end of
    /// its worker (the pool's).
    #[pyo3(signature = (*, catch_all=false))]
    fn stream(&self, catch_all: bool) -> PyResult<Stream> {
        let timeout = self.timeout;
        // Each call is its own job: one submitted while the stream has nothing
        // outstanding goes straight to an idle worker (see `Batch::allow_direct`).
        self.open(|e| Stream::new(e.batch().allow_direct(), timeout, catch_all))
    }

    /// Current worker pids.
    fn pids(&self) -> Vec<u32> {
        self.lock()
            .engine
            .as_ref()
            .map(procpool_engine::Engine::worker_pids)
            .unwrap_or_default()
    }

    /// No new run, stream or submit; started work finishes.
    fn close(&self) {
        let mut g = self.lock();
        if g.phase == Phase::Open {
            g.phase = Phase::Closed;
            if let Some(e) = &g.engine {
                e.close();
            }
        }
    }

    /// Kills the workers now; unfinished work ends with `PoolError`.
    fn terminate(&self, py: Python<'_>) {
        self.stop(py, true);
    }

    /// After close or terminate: waits until the work is done and every worker is gone.
    /// `False` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = duration(timeout, "timeout")?.map(|t| Instant::now() + t);
        match self.lock().phase {
            Phase::Open => return Err(PyValueError::new_err("Pool is still running")),
            Phase::Closed => {}
            Phase::Stopping | Phase::Stopped => {}
        }
        self.stop(py, false);
        loop {
            let inner = self.inner.clone();
            let runs: Vec<_> = self
                .runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            // Runs nobody iterates are moved along here, in short steps.
            let step = if runs.is_empty() { POLL } else { PUMP_STEP };
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(step),
                None => step,
            };
            let stopped = py.detach(move || {
                for r in &runs {
                    pump(r);
                }
                let (m, cv) = &*inner;
                let g = m.lock().unwrap_or_else(|e| e.into_inner());
                let (g, _) = cv
                    .wait_timeout_while(g, wait, |g| g.phase != Phase::Stopped)
                    .unwrap_or_else(|e| e.into_inner());
                g.phase == Phase::Stopped
            });
            if stopped {
                let joiner = self.lock().joiner.take();
                if let Some(t) = joiner {
                    // It has set `Stopped`: it ends now.
                    py.detach(|| {
                        let _ = t.join();
                    });
                }
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// The pool's counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let g = self.lock();
        if let Some(e) = &g.engine {
            let s = e.stats();
            d.set_item("succeeded", s.succeeded)?;
            let f = &s.failed;
            d.set_item(
                "failed",
                f.panicked + f.died + f.timed_out + f.cancelled + f.codec + f.other,
            )?;
            d.set_item("workers_died", f.died)?;
            d.set_item("timed_out", f.timed_out)?;
            d.set_item("workers_started", s.workers_started)?;
            d.set_item("workers_replaced", s.workers_replaced)?;
            d.set_item("workers_recycled", s.workers_recycled)?;
            d.set_item("queued", s.queued)?;
            d.set_item("in_flight", s.in_flight)?;
            // A pool over MPI: its agents (started, alive, their workers, those lost).
            if let Some(a) = &s.agents {
                let ad = PyDict::new(py);
                ad.set_item("started", a.started)?;
                ad.set_item("alive", a.alive)?;
                ad.set_item("workers_alive", a.workers_alive)?;
                ad.set_item("lost", a.lost.clone())?;
                ad.set_item("survives_loss", a.survives_loss)?;
                ad.set_item("note", a.note.clone())?;
                d.set_item("agents", ad)?;
            }
        }
        Ok(d)
    }
}

/// The launcher of this process's workers: from its template, which looks like this
/// process (`_template.prep`) as of now. With `fork_here`, the first template of a
/// single-threaded process is a fork of it (`_template.fork_here`).
pub(crate) fn template_launcher(
    py: Python<'_>,
    init_fds: Option<procpool_engine::JobFds>,
    fork_here: bool,
) -> Result<TemplateLauncher, procpool_engine::PoolError> {
    use procpool_engine::PoolError;
    let config = |e: PyErr| PoolError::Config(format!("cannot prepare Python workers: {e}"));
    let sys = py.import("sys").map_err(config)?;
    let python: OsString = sys
        .getattr("executable")
        .and_then(|p| p.extract())
        .map_err(config)?;
    if python.is_empty() {
        return Err(PoolError::Config(
            "sys.executable is empty: procpool cannot start Python workers from an embedded \
             interpreter"
                .into(),
        ));
    }
    let path: Vec<OsString> = sys
        .getattr("path")
        .and_then(|p| p.try_iter())
        .map_err(config)?
        .filter_map(|p| p.ok()?.extract().ok())
        .collect();
    let prep = py::helper(py, "_template", "prep")
        .and_then(|f| f.call0())
        .map_err(config)?;
    if fork_here {
        py::helper(py, "_template", "fork_here")
            .and_then(|f| f.call1((&prep,)))
            .map_err(config)?;
    }
    let prep = prep.cast::<PyBytes>().map_err(|e| config(e.into()))?;
    Ok(TemplateLauncher {
        python: python.into(),
        path,
        prep: prep.as_bytes().to_vec(),
        init_fds,
    })
}

/// The default `max_message_size` of an MPI pool: the local default, within what one
/// MPI message carries.
fn default_mpi_max_message() -> usize {
    #[cfg(feature = "mpi")]
    {
        MAX_MESSAGE_SIZE.min(procpool::mpi_front::MAX_MESSAGE)
    }
    #[cfg(not(feature = "mpi"))]
    {
        MAX_MESSAGE_SIZE
    }
}

/// Starts the engine: local, or over MPI's agents (`processes` each, 0 for the default).
fn start(
    config: EngineConfig,
    mpi: bool,
    processes: usize,
) -> Result<procpool_engine::Engine, procpool_engine::PoolError> {
    if !mpi {
        return procpool_engine::Engine::start(config);
    }
    #[cfg(feature = "mpi")]
    {
        crate::mpi::start(config, processes)
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = processes;
        Err(procpool_engine::PoolError::Config(
            "procpool._core has no MPI support: MPI pools are the _procpool_mpi \
             extension's (Pool(mpi=True) loads it)"
                .into(),
        ))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Dropping the engine terminates it (outside the GIL: no worker needs it).
        let engine = self.lock().engine.take();
        if let Some(e) = engine {
            e.terminate();
        }
    }
}
