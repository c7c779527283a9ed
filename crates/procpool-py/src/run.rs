//! `Run`: one `map`/`imap` call, on the engine's `Feed` (and `Reorder` when ordered).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use procpool_engine::Recorder;
use procpool_engine::{Feed, Limits, Piece, Pulled, RecvError, Reorder, Source, TaskErrorKind};
use pyo3::exceptions::{PyException, PyStopIteration, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyIterator, PyList, PyString, PyTuple};

use crate::errors;
use crate::frame::{self, Frame, STAR};
use crate::py;

/// How often a blocked caller looks for Ctrl-C (and for a cancel from another thread).
pub(crate) const POLL: Duration = Duration::from_millis(50);

use crate::frame::CHUNK;
/// Result kind: the worker could not rebuild the chunk's argument (`_pickle.SPLIT`).
const SPLIT: u8 = 2;

/// What the source tells the run outside the engine's pieces.
#[derive(Debug, Default)]
struct Side {
    /// Items that could not be pickled, by index: the pickling error.
    bad: HashMap<u64, Py<PyAny>>,
    /// The input iterator raised this.
    input_error: Option<PyErr>,
    /// Raised while pulling or pickling input and not an `Exception`
    /// (`KeyboardInterrupt`, `SystemExit`): raised to the caller at once.
    urgent: Option<PyErr>,
}

/// The run's items, pulled and pickled on demand (under the GIL, taken here).
#[derive(Debug)]
struct PySource {
    iter: Py<PyIterator>,
    star: bool,
    /// Items pulled but not yet sent (after a chunk that held a bad item).
    ahead: VecDeque<Py<PyAny>>,
    next_index: u64,
    ended: bool,
    side: Arc<Mutex<Side>>,
    hint: Option<usize>,
    /// Descriptors the last job's items attached (shared values, locks).
    fds: Option<procpool_engine::JobFds>,
    /// The items of each job of several items still out, by its first index: a job
    /// whose worker died, or could not rebuild its argument, is sent again item by item,
    /// pickled anew from these (see [`Kept`]).
    kept: Mutex<HashMap<u64, Kept>>,
    /// Payload bytes per item of the last plain chunk: the next one's buffer is sized
    /// from it at once, rather than grown (and copied) step by step.
    plain_per_item: usize,
    /// Payload bytes per item of the last chunk, plain or not: the size a chunk's
    /// items are guessed at when they cannot be measured as they come (see `cut`).
    per_item: usize,
    /// Whether chunks end at the feed's soft byte limit (`Limits::soft_bytes`), however
    /// many items the chunk size allows: the run follows its consumer (an `imap`).
    cut: bool,
    /// The largest chunk made so far: its payload's bytes and its items (see
    /// [`Run::stats`]).
    largest: (usize, u32),
}

impl PySource {
    /// Notes a chunk of `n` items whose payload is `bytes` long.
    fn made(&mut self, bytes: usize, n: u32) {
        self.per_item = bytes.div_ceil(n.max(1) as usize);
        self.largest = (self.largest.0.max(bytes), self.largest.1.max(n));
    }
}

/// What the parent keeps of a job of several items, to send its items again one by one.
#[derive(Debug)]
enum Kept {
    /// The items themselves: the parent never unpickles what it sent when that could
    /// run code (a task's class, a `__reduce__`).
    Items(Vec<Py<PyAny>>),
    /// This many plain items (numbers, strings, small bytes, tuples of them: see
    /// [`plain_size`]), pickled by the standard pickler with nothing by reference: they
    /// are read back from the job's own payload, which the parent holds anyway, so that
    /// a chunk in flight is held once, not twice (an `imap`'s memory).
    Plain(u32),
}

impl Kept {
    fn len(&self) -> usize {
        match self {
            Kept::Items(v) => v.len(),
            Kept::Plain(n) => *n as usize,
        }
    }

    /// Keeps the first `n` items; returns the others.
    fn split_off(&mut self, n: usize) -> Kept {
        match self {
            Kept::Items(v) => Kept::Items(v.split_off(n)),
            Kept::Plain(k) => {
                let rest = k.saturating_sub(n as u32);
                *k = (*k).min(n as u32);
                Kept::Plain(rest)
            }
        }
    }

    /// The items of a job of `count` items whose payload is `payload`.
    fn items(self, py: Python<'_>, payload: Option<&[u8]>, count: u32) -> Option<Vec<Py<PyAny>>> {
        match self {
            Kept::Items(v) => (v.len() == count as usize).then_some(v),
            Kept::Plain(n) if n == count => plain_items(py, payload?, count).ok(),
            Kept::Plain(_) => None,
        }
    }
}

/// Items `skip..skip + count` of a plain chunk's payload (see [`Kept::Plain`]), read back
/// with the standard unpickler: the payload is the parent's own copy, pickled from
/// plain items by the standard pickler.
fn plain_items(py: Python<'_>, payload: &[u8], count: u32) -> PyResult<Vec<Py<PyAny>>> {
    let bad = || PyException::new_err("not a plain chunk's payload");
    let f = Frame::parse(payload).map_err(|_| bad())?;
    if f.kind != CHUNK || f.count != count || !f.bufs.is_empty() {
        return Err(bad());
    }
    let list = py
        .import("pickle")?
        .call_method1("loads", (PyBytes::new(py, f.pickle),))?;
    let list = list.cast::<PyList>()?;
    let (from, to) = (f.skip as usize, f.skip as usize + count as usize);
    if to > list.len() {
        return Err(bad());
    }
    (from..to)
        .map(|i| list.get_item(i).map(Bound::unbind))
        .collect()
}

impl Source for PySource {
    fn fill(&mut self, out: &mut Vec<u8>, limits: Limits) -> Pulled {
        self.fds = None;
        Python::attach(|py| self.fill_py(py, out, limits))
    }

    fn take_fds(&mut self) -> Option<procpool_engine::JobFds> {
        self.fds.take()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.hint {
            Some(n) => {
                let left = n.saturating_sub(self.next_index as usize);
                (left, Some(left))
            }
            None => (0, None),
        }
    }

    fn split(&self, payload: &[u8], from: u32, count: u32) -> Option<Vec<u8>> {
        frame::split_chunk(payload, from, count)
    }
}

impl PySource {
    fn fill_py(&mut self, py: Python<'_>, out: &mut Vec<u8>, limits: Limits) -> Pulled {
        let want = limits.items.max(1);
        let mut items = Vec::with_capacity(want.min(4096));
        let mut big = false;
        let mut plain = true;
        // A run that follows its consumer cuts its chunks at the feed's soft limit (a
        // chunk in flight is held several times over: its payload, the worker's copy,
        // its results, their values), whatever `chunksize` says: the items' pickled size
        // is estimated as they are pulled (see `plain_size`), from the last chunk's size
        // per item for the others.
        let cut = if self.cut {
            limits.soft_bytes
        } else {
            usize::MAX
        };
        let mut est = 0usize;
        while items.len() < want && est < cut {
            if let Some(x) = self.ahead.pop_front() {
                big |= is_big(x.bind(py));
                let size = plain_size(x.bind(py));
                plain &= size.is_some();
                est = est.saturating_add(size.unwrap_or(self.per_item));
                items.push(x);
                continue;
            }
            if self.ended {
                break;
            }
            match self.iter.bind(py).clone().next() {
                Some(Ok(x)) => {
                    big |= is_big(&x);
                    let size = plain_size(&x);
                    plain &= size.is_some();
                    est = est.saturating_add(size.unwrap_or(self.per_item));
                    items.push(x.unbind());
                }
                None => self.ended = true,
                Some(Err(e)) => {
                    self.ended = true;
                    let mut side = lock(&self.side);
                    if e.is_instance_of::<PyException>(py) {
                        side.input_error = Some(e);
                    } else {
                        side.urgent = Some(e);
                    }
                }
            }
        }
        if items.is_empty() {
            return Pulled::End;
        }
        let list = PyList::new(py, &items).expect("a list");
        let n = items.len() as u32;
        if plain && !big {
            // Numbers, strings and small bytes (and tuples of them): the standard
            // pickler, in C, with nothing by value and no buffers, straight into the
            // payload.
            let before = out.len();
            // A little over the last chunk's size per item: most chunks fit at once.
            out.reserve((n as usize).saturating_mul(self.plain_per_item) / 16 * 17);
            return match pickle_plain_into(py, out, &list, n, self.star) {
                Ok(()) => {
                    self.plain_per_item = (out.len() - before).div_ceil(n as usize);
                    self.made(out.len(), n);
                    if n > 1 {
                        lock(&self.kept).insert(self.next_index, Kept::Plain(n));
                    }
                    self.next_index += u64::from(n);
                    Pulled::Items(n)
                }
                Err(e) => self.fail_first(py, items, e),
            };
        }
        let r = {
            // Items may hold shared values: their descriptors go with the job.
            crate::passfd::collecting(py, || {
                py::helper(py, "_pickle", "dumps_items").and_then(|d| d.call1((list, big)))
            })
            .map(|(t, fds)| {
                self.fds = fds;
                t
            })
        };
        let t = match r {
            Ok(t) => t,
            Err(e) => return self.fail_first(py, items, e),
        };
        let failed =
            t.get_item(0)
                .is_ok_and(|d| d.is_none())
                .then(|| -> PyResult<(usize, PyErr)> {
                    Ok((t.get_item(1)?.extract()?, PyErr::from_value(t.get_item(2)?)))
                });
        match failed {
            None => match encode_pickled(out, &t, n, self.star) {
                Ok(()) => {
                    self.made(out.len(), n);
                    if n > 1 {
                        lock(&self.kept).insert(self.next_index, Kept::Items(items));
                    }
                    self.next_index += u64::from(n);
                    Pulled::Items(n)
                }
                Err(e) => {
                    self.fds = None;
                    self.fail_first(py, items, e)
                }
            },
            Some(Err(e)) | Some(Ok((0, e))) => {
                self.fds = None;
                self.fail_first(py, items, e)
            }
            Some(Ok((bad, _))) => {
                // Send the good items before the bad one; the rest waits for the next job.
                for x in items.into_iter().rev() {
                    self.ahead.push_front(x);
                }
                out.clear();
                self.fds = None;
                self.fill_py(
                    py,
                    out,
                    Limits {
                        items: bad,
                        ..limits
                    },
                )
            }
        }
    }

    /// The first of `items` fails with `e`; the others wait for the next job.
    fn fail_first(&mut self, py: Python<'_>, items: Vec<Py<PyAny>>, e: PyErr) -> Pulled {
        if !e.is_instance_of::<PyException>(py) {
            // Ctrl-C while pickling: the caller gets it now; no more input.
            self.ended = true;
            self.ahead.clear();
            lock(&self.side).urgent = Some(e);
            return Pulled::End;
        }
        for x in items.into_iter().skip(1).rev() {
            self.ahead.push_front(x);
        }
        let message = e.to_string();
        let exc = e.into_value(py).into_any();
        lock(&self.side).bad.insert(self.next_index, exc);
        self.next_index += 1;
        Pulled::Failed(TaskErrorKind::Codec { message })
    }
}

/// Bytes at least this large go out of band (as `_pickle.OOB_MIN`).
const OOB_MIN: usize = 64 * 1024;

/// Whether an item is (or, as a tuple, holds) `bytes` large enough to go out of band.
fn is_big(x: &Bound<'_, PyAny>) -> bool {
    let big = |x: &Bound<'_, PyAny>| {
        x.cast_exact::<PyBytes>()
            .is_ok_and(|b| b.as_bytes().len() >= OOB_MIN)
    };
    big(x)
        || x.cast_exact::<PyTuple>()
            .is_ok_and(|t| t.iter().any(|y| big(&y)))
}

/// If an item is a number, a string, bytes or `None`, or a tuple of those (what the
/// standard pickler takes as it is): about the bytes its pickle takes (exact for bytes
/// and ASCII strings, a bound for small numbers); `None` for any other item.
fn plain_size(x: &Bound<'_, PyAny>) -> Option<usize> {
    use pyo3::types::{PyFloat, PyInt, PyString};
    let atom = |x: &Bound<'_, PyAny>| -> Option<usize> {
        if x.is_none() || x.is_exact_instance_of::<PyBool>() {
            Some(1)
        } else if let Ok(b) = x.cast_exact::<PyBytes>() {
            Some(b.as_bytes().len() + 9)
        } else if let Ok(s) = x.cast_exact::<PyString>() {
            // Code points: a string of non-ASCII text pickles to up to four times that.
            s.len().ok().map(|n| n + 9)
        } else if x.is_exact_instance_of::<PyInt>() || x.is_exact_instance_of::<PyFloat>() {
            Some(9)
        } else {
            None
        }
    };
    atom(x).or_else(|| {
        let t = x.cast_exact::<PyTuple>().ok()?;
        t.iter().try_fold(2usize, |n, y| Some(n + atom(&y)?))
    })
}

/// Where the standard pickler writes a plain chunk: its frames (about 64 KiB each, as
/// they are made) are appended to a job's payload, so that no whole pickle of the chunk
/// is ever made apart from it (a large transient allocation per chunk, which scatters
/// the parent's heap over a long `imap`).
#[pyclass(module = "procpool._core")]
struct PickleSink {
    buf: Vec<u8>,
}

#[pymethods]
impl PickleSink {
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Ok(b) = data.cast::<PyBytes>() {
            self.buf.extend_from_slice(b.as_bytes());
            return Ok(b.as_bytes().len());
        }
        // Another buffer (the pickler hands large items over as they are).
        let b = data.py().get_type::<PyBytes>().call1((data,))?;
        let b = b.cast::<PyBytes>()?;
        self.buf.extend_from_slice(b.as_bytes());
        Ok(b.as_bytes().len())
    }
}

/// Appends to `out` a chunk's payload of the plain items of `list` (see [`plain_size`]);
/// `out` is as it was on an error.
fn pickle_plain_into(
    py: Python<'_>,
    out: &mut Vec<u8>,
    list: &Bound<'_, PyList>,
    n: u32,
    star: bool,
) -> PyResult<()> {
    let flags = if star { STAR } else { 0 };
    let start = frame::start_unbuffered(out, CHUNK, flags, n);
    let sink = Py::new(
        py,
        PickleSink {
            buf: std::mem::take(out),
        },
    )?;
    let r = py::helper(py, "_pickle", "dump_plain").and_then(|d| d.call1((list, &sink)));
    *out = std::mem::take(&mut sink.borrow_mut(py).buf);
    match r {
        Ok(_) => {
            frame::finish_unbuffered(out, start);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Frames a `(pickle, buffers)` pair from `_pickle` as a chunk's payload.
fn encode_pickled(out: &mut Vec<u8>, t: &Bound<'_, PyAny>, n: u32, star: bool) -> PyResult<()> {
    let t = t.cast::<PyTuple>()?;
    let data = t.get_item(0)?;
    let flags = if star { STAR } else { 0 };
    frame::encode(
        out,
        CHUNK,
        flags,
        n,
        data.cast::<PyBytes>()?,
        &t.get_item(1)?,
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Outcomes decoded and not yet returned.
#[derive(Debug)]
pub(crate) enum Ready {
    /// One `(index, ok, value)` tuple.
    One(Py<PyAny>),
    /// A list of such tuples; the next to return is at the index.
    Many(Py<PyList>, usize),
    /// The results of a job whose items all succeeded, from item `start`; the next to
    /// return is `values[pos]`.
    Values {
        start: u64,
        values: Py<PyList>,
        pos: usize,
    },
}

/// Takes the next outcome tuple from `ready`.
pub(crate) fn pop_ready(
    py: Python<'_>,
    ready: &mut VecDeque<Ready>,
) -> PyResult<Option<Py<PyAny>>> {
    loop {
        match ready.front_mut() {
            None => return Ok(None),
            Some(Ready::One(_)) => {
                let Some(Ready::One(t)) = ready.pop_front() else {
                    unreachable!("looked at above")
                };
                return Ok(Some(t));
            }
            Some(Ready::Many(list, pos)) => {
                let list = list.bind(py);
                if *pos >= list.len() {
                    ready.pop_front();
                    continue;
                }
                let t = list.get_item(*pos)?;
                // The run keeps no reference to what it handed out.
                list.set_item(*pos, py.None())?;
                *pos += 1;
                if *pos >= list.len() {
                    ready.pop_front();
                }
                return Ok(Some(t.unbind()));
            }
            Some(Ready::Values { start, values, pos }) => {
                let list = values.bind(py);
                if *pos >= list.len() {
                    ready.pop_front();
                    continue;
                }
                let v = list.get_item(*pos)?;
                list.set_item(*pos, py.None())?;
                let i = *start + *pos as u64;
                *pos += 1;
                if *pos >= list.len() {
                    ready.pop_front();
                }
                let t = PyTuple::new(
                    py,
                    [
                        i.into_pyobject(py)?.into_any(),
                        true.into_pyobject(py)?.to_owned().into_any(),
                        v,
                    ],
                )?;
                return Ok(Some(t.into_any().unbind()));
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    feed: Feed<PySource>,
    reorder: Option<Reorder<Piece>>,
    ready: VecDeque<Ready>,
    recorder: Recorder,
    ended: bool,
    cancel_sent: bool,
    /// Pieces of an unordered run received by [`pump`], not yet decoded.
    parked: VecDeque<Piece>,
    /// The most the run has held at once (see [`Run::stats`]).
    peak: Peak,
}

/// The most a run has held at once, each counted on its own, as seen each time a
/// finished job is received (the feed tops up the jobs in flight just before).
#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    /// Jobs submitted and not yet received.
    jobs: usize,
    /// Bytes of their encoded arguments.
    payload_bytes: usize,
    /// Bytes of finished results held back for order.
    held_bytes: usize,
}

impl State {
    /// Takes in what the run holds now.
    fn note_peak(&mut self) {
        let held = self.reorder.as_ref().map_or(0, Reorder::bytes);
        let p = &mut self.peak;
        p.jobs = p.jobs.max(self.feed.in_flight());
        p.payload_bytes = p.payload_bytes.max(self.feed.payload_bytes());
        p.held_bytes = p.held_bytes.max(held);
    }
}

/// How a run calls its function.
#[derive(Debug)]
pub(crate) struct RunSpec {
    /// The pickled function.
    pub(crate) func: Arc<[u8]>,
    /// `func(*item)` instead of `func(item)`.
    pub(crate) star: bool,
    /// Items per job (`None`: the engine's measured rule).
    pub(crate) chunksize: Option<usize>,
    /// Outcomes in input order.
    pub(crate) ordered: bool,
    /// Per-task time limit.
    pub(crate) timeout: Option<Duration>,
    /// The caller drains every result within the call (a `map`): the next chunk is
    /// encoded while the workers run (`Feed::encode_ahead`). Otherwise (an `imap`) the
    /// results are taken one by one, and what is in flight follows the consumer
    /// (`Feed::follow_consumer`).
    pub(crate) collect: bool,
}

/// An iterator of one call's outcomes: `(index, ok, value)`.
#[pyclass(module = "procpool._core")]
#[derive(Debug)]
pub(crate) struct Run {
    state: Arc<Mutex<State>>,
    side: Arc<Mutex<Side>>,
    cancelled: AtomicBool,
}

impl Run {
    /// The state, for the engine to [`pump`] while it is joined.
    pub(crate) fn state_ref(&self) -> std::sync::Weak<Mutex<State>> {
        Arc::downgrade(&self.state)
    }

    pub(crate) fn new(
        engine: &procpool_engine::Engine,
        iter: Py<PyIterator>,
        hint: Option<usize>,
        spec: RunSpec,
    ) -> Self {
        let RunSpec {
            func,
            star,
            chunksize,
            ordered,
            timeout,
            collect,
        } = spec;
        let side = Arc::new(Mutex::new(Side::default()));
        let source = PySource {
            iter,
            star,
            ahead: VecDeque::new(),
            next_index: 0,
            ended: false,
            side: side.clone(),
            hint,
            fds: None,
            kept: Mutex::default(),
            plain_per_item: 0,
            per_item: 0,
            cut: !collect,
            largest: (0, 0),
        };
        let mut feed = Feed::new(engine, source, func, chunksize, timeout);
        feed.keep_open();
        if collect {
            feed.encode_ahead();
        } else {
            feed.follow_consumer();
        }
        Run {
            state: Arc::new(Mutex::new(State {
                recorder: feed.recorder(),
                feed,
                reorder: ordered.then(Reorder::default),
                ready: VecDeque::new(),
                ended: false,
                cancel_sent: false,
                parked: VecDeque::new(),
                peak: Peak::default(),
            })),
            side,
            cancelled: AtomicBool::new(false),
        }
    }

    /// The state, locked without holding the GIL while waiting for it.
    fn state(&self, py: Python<'_>) -> MutexGuard<'_, State> {
        loop {
            match self.state.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                // The holder may need the GIL to finish: wait for it without the GIL.
                Err(std::sync::TryLockError::WouldBlock) => py.detach(|| drop(lock(&self.state))),
            }
        }
    }

    fn next_outcome(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Py<PyAny>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state(py);
        loop {
            if self.cancelled.load(Ordering::Relaxed) && !st.cancel_sent {
                cancel_now(&mut st);
            }
            if let Some(t) = pop_ready(py, &mut st.ready)? {
                return Ok(t);
            }
            if !self.fill_ready(py, &mut st, deadline)? {
                return Err(PyStopIteration::new_err(()));
            }
        }
    }

    /// Waits until outcomes are ready (`true`) or the run has ended (`false`; the input
    /// iterator's error, if it raised, is raised now).
    fn fill_ready(
        &self,
        py: Python<'_>,
        st: &mut State,
        deadline: Option<Instant>,
    ) -> PyResult<bool> {
        loop {
            if let Some(e) = lock(&self.side).urgent.take() {
                return Err(e);
            }
            if self.cancelled.load(Ordering::Relaxed) && !st.cancel_sent {
                cancel_now(st);
            }
            if !st.ready.is_empty() {
                return Ok(true);
            }
            // Pieces already here (received by a `pump`, left by a Ctrl-C, or in order
            // now) come first. An ordered run parks only a piece taken in order.
            if let Some(p) = st.parked.pop_front() {
                decode(py, st, &self.side, p)?;
                continue;
            }
            if let Some(r) = st.reorder.as_mut()
                && let Some(p) = r.pop()
            {
                decode(py, st, &self.side, p)?;
                continue;
            }
            if st.ended {
                if let Some(e) = lock(&self.side).input_error.take() {
                    return Err(e);
                }
                return Ok(false);
            }
            // On every pass, not only when a receive times out: while results keep
            // coming a Ctrl-C would otherwise wait for a gap between them.
            py.check_signals()?;
            let held = st.reorder.as_ref().map_or(0, Reorder::bytes);
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(POLL),
                None => POLL,
            };
            let feed = &mut st.feed;
            let got = py.detach(|| feed.recv_timeout(held, wait));
            st.note_peak();
            match got {
                Ok(Some(p)) => match split_if_died(st, p) {
                    None => {}
                    Some(p) => match st.reorder.as_mut() {
                        Some(r) => {
                            r.insert(p.start, p.count, p.bytes(), p);
                            st.note_peak();
                        }
                        None => decode(py, st, &self.side, p)?,
                    },
                },
                Ok(None) => st.ended = true,
                Err(RecvError::Timeout | RecvError::Empty) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(PyTimeoutError::new_err("timed out"));
                    }
                }
            }
        }
    }
}

/// Appends one `(index, ok, value)` outcome to `collect`'s lists.
fn collect_one(
    values: &Bound<'_, PyList>,
    failures: &Bound<'_, PyList>,
    t: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (i, ok, v): (u64, bool, Bound<'_, PyAny>) = t.extract()?;
    if ok {
        values.append(v)
    } else {
        values.append(values.py().None())?;
        failures.append((i, v))
    }
}

/// Ends a run now: outcomes not yet returned are dropped, jobs not started too, and
/// the workers running its jobs are killed.
fn cancel_now(st: &mut State) {
    st.cancel_sent = true;
    st.ended = true;
    st.ready.clear();
    st.parked.clear();
    if let Some(r) = &mut st.reorder {
        *r = Reorder::default();
    }
    st.feed.cancel();
}

/// Moves a run along without its consumer, while its engine is being joined: pulls
/// input and receives the pieces ready now, so that the join can end (as
/// `multiprocessing`'s would, its tasks all run) even if nobody iterates the run. The
/// pieces are kept for the consumer (as `multiprocessing` keeps the results); those of an
/// ordered run are parked as they come in order, so that only pieces waiting for an
/// earlier one count against the engine's reorder bound (held back, in-order pieces
/// would stop the input for good: the join would wait forever, and the run end early).
/// Does nothing if the run's consumer holds it.
pub(crate) fn pump(state: &Mutex<State>) {
    let Ok(mut guard) = state.try_lock() else {
        return;
    };
    let st = &mut *guard;
    while !st.ended {
        // A join waits for the run's whole input, whose results are parked here
        // whatever their size: the bound on results held back for order (which follows
        // a consumer that is not reading now) must not stop the input meanwhile.
        match st.feed.recv_timeout(0, Duration::ZERO) {
            Ok(Some(p)) => match split_if_died(st, p) {
                None => {}
                Some(p) => match st.reorder.as_mut() {
                    Some(r) => {
                        r.insert(p.start, p.count, p.bytes(), p);
                        while let Some(p) = r.pop() {
                            st.parked.push_back(p);
                        }
                    }
                    None => st.parked.push_back(p),
                },
            },
            // Nothing out and nothing more to send: the run has ended only if its input
            // has (never cut a run short).
            Ok(None) => {
                st.ended = st.feed.exhausted();
                break;
            }
            Err(_) => break,
        }
    }
}

/// A chunk whose worker died (or that ran past its time limit) before it recorded any
/// item (see `procpool_engine::items_finished`: with a record, the feed has already
/// delivered the finished items, failed the running one alone and sent the others
/// again), whose arguments or results went over `max_message_size=`, or whose argument
/// the worker could not rebuild, is sent again item by item, so
/// that only the item at fault fails: its piece is used up here (`None`). The items,
/// pickled anew from the objects the parent holds (never by unpickling what was sent), go
/// out one per job. A chunk whose worker stopped early (its results outgrew what the
/// engine records) is cut: the items it ran make the piece, the others are sent again.
/// Any other piece is given back.
fn split_if_died(st: &mut State, mut p: Piece) -> Option<Piece> {
    let kept = {
        let mut kept = lock(&st.feed.source().kept);
        let mut items = kept.remove(&p.start);
        // Part of a chunk (its items finished before a death, or the one running then):
        // the rest of its items stay kept, for the part sent again.
        if let Some(all) = &mut items
            && all.len() > p.count as usize
        {
            let rest = all.split_off(p.count as usize);
            kept.insert(p.start + u64::from(p.count), rest);
        }
        items
    };
    if let Ok(b) = &p.done.outcome
        && let Some(ran) = frame::items_count(b)
        // A worker stops after an item, never before the first (a forged count of 0
        // would have the chunk sent again forever: it is refused as unreadable).
        && ran > 0
        && ran < p.count
        && let Some(payload) = &p.payload
        && let Some(part) = frame::split_chunk(payload, ran, p.count - ran)
    {
        let (start, rest) = (p.start + u64::from(ran), p.count - ran);
        if let Some(mut items) = kept
            && items.len() == p.count as usize
        {
            let others = items.split_off(ran as usize);
            lock(&st.feed.source().kept).insert(start, others);
        }
        st.feed.resubmit_with_fds(start, rest, part, p.fds.clone());
        p.count = ran;
        return Some(p);
    }
    let died = matches!(
        &p.done.outcome,
        Err(e) if matches!(
            e.kind(),
            TaskErrorKind::WorkerDied { .. }
                | TaskErrorKind::TimedOut { .. }
                | TaskErrorKind::Protocol { .. }
                // max_message_size= is per item: a chunk over it goes again item by
                // item, so that only an item over it fails.
                | TaskErrorKind::TooLarge { .. }
        )
    );
    let split = matches!(
        &p.done.outcome,
        Ok(b) if Frame::parse(b).is_ok_and(|f| f.kind == SPLIT)
    );
    if !(died || split) || p.count <= 1 {
        return Some(p);
    }
    let star = st.feed.source().star;
    let parts = kept.and_then(|kept| {
        Python::attach(|py| {
            let items = kept.items(py, p.payload.as_deref().map(Vec::as_slice), p.count)?;
            repickle(py, &items, star).ok()
        })
    });
    let Some(parts) = parts else {
        if !split {
            return Some(p);
        }
        // Cannot happen (every job of several items is kept): its items fail together.
        let kind = TaskErrorKind::Codec {
            message: "a chunk's argument could not be rebuilt in the worker".into(),
        };
        let e = procpool_engine::TaskError::new(kind, p.start, p.done.pid, 1);
        return Some(Piece {
            done: procpool_engine::Done {
                outcome: Err(e),
                ..p.done
            },
            ..p
        });
    };
    for (i, (part, fds)) in parts.into_iter().enumerate() {
        st.feed.resubmit_with_fds(p.start + i as u64, 1, part, fds);
    }
    if let Some(payload) = p.payload {
        st.feed.give_back(payload);
    }
    None
}

/// Each of `items` pickled alone as the payload of a chunk of one, with the descriptors
/// it attached (shared values, locks).
fn repickle(
    py: Python<'_>,
    items: &[Py<PyAny>],
    star: bool,
) -> PyResult<Vec<(Vec<u8>, Option<procpool_engine::JobFds>)>> {
    let dumps = py::helper(py, "_pickle", "dumps_items")?;
    let mut out = Vec::with_capacity(items.len());
    for x in items {
        let x = x.bind(py);
        let list = PyList::new(py, [x])?;
        let (t, fds) = crate::passfd::collecting(py, || dumps.call1((list, is_big(x))))?;
        if t.get_item(0)?.is_none() {
            return Err(PyErr::from_value(t.get_item(2)?));
        }
        let mut part = Vec::new();
        encode_pickled(&mut part, &t, 1, star)?;
        out.push((part, fds));
    }
    Ok(out)
}

/// Turns a finished piece into outcomes. Ctrl-C while its results are unpickled leaves
/// it parked, to be read again by the next call.
fn decode(py: Python<'_>, st: &mut State, side: &Mutex<Side>, p: Piece) -> PyResult<()> {
    let decoded = match &p.done.outcome {
        Ok(bytes) => match decode_result(py, p.start, p.count, bytes) {
            Ok(d) => Some(d),
            Err(e) if !e.is_instance_of::<PyException>(py) => {
                st.parked.push_front(p);
                return Err(e);
            }
            Err(e) => return Err(e),
        },
        Err(_) => None,
    };
    let Piece {
        start,
        count,
        done,
        payload,
        ..
    } = p;
    match &done.outcome {
        Ok(_) => {
            let (ready, failed) = decoded.expect("decoded above");
            let raised = TaskErrorKind::Panic {
                message: String::new(),
                location: None,
                backtrace: None,
            };
            st.recorder.record(
                done.pid,
                done.nanos,
                u64::from(count) - failed as u64,
                (0..failed).map(|_| Some(&raised)),
            );
            st.ready.push_back(ready);
        }
        Err(e) => {
            let bad = if matches!(e.kind(), TaskErrorKind::Codec { .. }) {
                lock(side).bad.remove(&start)
            } else {
                None
            };
            st.recorder
                .record(done.pid, done.nanos, 0, (0..count).map(|_| Some(e.kind())));
            for i in 0..u64::from(count) {
                let exc = match &bad {
                    Some(b) if i == 0 => b.bind(py).clone(),
                    _ => errors::task_error(py, e),
                };
                st.ready
                    .push_back(Ready::One(failed_tuple(py, start + i, exc)?));
            }
        }
    }
    if let Some(payload) = payload {
        st.feed.give_back(payload);
    }
    Ok(())
}

/// `(index, False, exc)`.
pub(crate) fn failed_tuple(
    py: Python<'_>,
    index: u64,
    exc: Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    Ok(PyTuple::new(
        py,
        [
            index.into_pyobject(py)?.into_any(),
            false.into_pyobject(py)?.to_owned().into_any(),
            exc,
        ],
    )?
    .into_any()
    .unbind())
}

/// A job's result bytes as outcomes, and how many of its items failed.
pub(crate) fn decode_result(
    py: Python<'_>,
    start: u64,
    count: u32,
    bytes: &[u8],
) -> PyResult<(Ready, usize)> {
    let bad = |message: String| -> PyResult<(Ready, usize)> {
        let e = py::error(
            py,
            "PoolError",
            (format!(
                "a worker sent a result that cannot be read: {message}"
            ),),
        );
        let list = PyList::empty(py);
        for i in 0..u64::from(count) {
            list.append(failed_tuple(py, start + i, e.clone())?)?;
        }
        Ok((Ready::Many(list.unbind(), 0), count as usize))
    };
    if frame::items_count(bytes).is_some() {
        return match decode_items(py, start, count, bytes)? {
            Ok(r) => Ok(r),
            Err(m) => bad(m),
        };
    }
    let f = match Frame::parse(bytes) {
        Ok(f) => f,
        Err(m) => return bad(m),
    };
    let mv = py::memoryview(py, f.pickle)?;
    let r = py::helper(py, "_pickle", "decode_results")
        .and_then(|d| d.call1((start, f.kind, &mv, f.py_bufs(py))));
    py::release(&mv);
    let r = match r {
        Ok(r) => r,
        // Ctrl-C (or a `SystemExit`) in the caller while it reads the result is the
        // caller's, never the task's error; the result thread turns it into one (it has
        // nobody to raise it to).
        Err(e) if !e.is_instance_of::<PyException>(py) && !py::in_result_thread(py) => {
            return Err(e);
        }
        Err(e) if count == 1 => {
            let exc = unreadable(py, None, e);
            let list = PyList::new(py, [failed_tuple(py, start, exc)?])?;
            return Ok((Ready::Many(list.unbind(), 0), 1));
        }
        Err(e) => return bad(e.to_string()),
    };
    let (all_ok, list): (bool, Bound<'_, PyList>) = match r.extract() {
        Ok(x) => x,
        Err(e) => return bad(e.to_string()),
    };
    if list.len() != count as usize {
        return bad(format!("{} outcomes for {count} items", list.len()));
    }
    if all_ok {
        return Ok((
            Ready::Values {
                start,
                values: list.unbind(),
                pos: 0,
            },
            0,
        ));
    }
    let failed = list
        .iter()
        .filter(|t| {
            t.get_item(1)
                .and_then(|ok| ok.is_truthy())
                .is_ok_and(|ok| !ok)
        })
        .count();
    Ok((Ready::Many(list.unbind(), 0), failed))
}

/// A chunk's per-item records (see `frame`) as outcomes, and how many of its items
/// failed; `Err` says why they cannot be read.
fn decode_items(
    py: Python<'_>,
    start: u64,
    count: u32,
    bytes: &[u8],
) -> PyResult<Result<(Ready, usize), String>> {
    use frame::Record;
    let records = match frame::records(bytes) {
        Ok(r) => r,
        Err(m) => return Ok(Err(m)),
    };
    if records.len() != count as usize {
        return Ok(Err(format!("{} outcomes for {count} items", records.len())));
    }
    let values = PyList::empty(py);
    // `(index, ok, value)` for each item, once one failed.
    let mut tuples: Option<Bound<'_, PyList>> = None;
    let mut failed = 0;
    for (i, r) in records.into_iter().enumerate() {
        let index = start + i as u64;
        let (ok, v) = match r {
            Record::None => (true, py.None().into_bound(py)),
            Record::Bool(b) => (true, PyBool::new(py, b).to_owned().into_any()),
            Record::Int(n) => (true, n.into_pyobject(py)?.into_any()),
            Record::Float(x) => (true, x.into_pyobject(py)?.into_any()),
            Record::Str(s) => (true, PyString::new(py, s).into_any()),
            Record::Bytes(b) => (true, PyBytes::new(py, b).into_any()),
            Record::Frame(b) => match one_framed(py, index, b)? {
                Ok(x) => x,
                Err(m) => return Ok(Err(m)),
            },
        };
        if !ok && tuples.is_none() {
            let list = PyList::empty(py);
            for (j, v) in values.iter().enumerate() {
                let t = (start + j as u64, true, v);
                list.append(t)?;
            }
            tuples = Some(list);
        }
        failed += usize::from(!ok);
        match &tuples {
            Some(list) => list.append((index, ok, v))?,
            None => values.append(v)?,
        }
    }
    Ok(Ok(match tuples {
        Some(list) => (Ready::Many(list.unbind(), 0), failed),
        None => (
            Ready::Values {
                start,
                values: values.unbind(),
                pos: 0,
            },
            0,
        ),
    }))
}

/// The outcome `(ok, value)` of item `index` from a frame of that item alone.
fn one_framed<'py>(
    py: Python<'py>,
    index: u64,
    b: &[u8],
) -> PyResult<Result<(bool, Bound<'py, PyAny>), String>> {
    let f = match Frame::parse(b) {
        Ok(f) => f,
        Err(m) => return Ok(Err(m)),
    };
    let mv = py::memoryview(py, f.pickle)?;
    let r = py::helper(py, "_pickle", "decode_results")
        .and_then(|d| d.call1((index, f.kind, &mv, f.py_bufs(py))));
    py::release(&mv);
    let r = match r {
        Ok(r) => r,
        // Ctrl-C (or a `SystemExit`) in the caller while it reads the result is the
        // caller's, never the task's error (as in `decode_result`).
        Err(e) if !e.is_instance_of::<PyException>(py) && !py::in_result_thread(py) => {
            return Err(e);
        }
        // The item's pickle is whole (its frame parsed) but cannot be unpickled here (a
        // class this process cannot import, a `__reduce__` that raises here): that item
        // alone fails; the chunk's other results were read or are read next.
        Err(e) => return Ok(Ok((false, unreadable(py, Some(index), e)))),
    };
    let got = (|| {
        let (all_ok, list): (bool, Bound<'_, PyList>) = r.extract()?;
        if list.len() != 1 {
            return Ok(Err(format!("{} outcomes for one item", list.len())));
        }
        let x = list.get_item(0)?;
        if all_ok {
            return Ok(Ok((true, x)));
        }
        let (_, ok, v): (u64, bool, Bound<'_, PyAny>) = x.extract()?;
        Ok(Ok((ok, v)))
    })();
    got.or_else(|e: PyErr| Ok(Err(e.to_string())))
}

/// The `PoolError` of an item (of a map's item `index`, if given; else of a single
/// call), whose result the worker pickled but this process cannot unpickle (`e`, set as
/// its `__cause__`).
fn unreadable<'py>(py: Python<'py>, index: Option<u64>, e: PyErr) -> Bound<'py, PyAny> {
    let what = match index {
        Some(i) => format!("the result of item {i}"),
        None => "the task's result".to_owned(),
    };
    let exc = py::error(
        py,
        "PoolError",
        (format!(
            "{what} cannot be read: the worker pickled it, but it could not be unpickled \
             here: {e}"
        ),),
    );
    let _ = exc.setattr("__cause__", e.into_value(py));
    exc
}

#[pymethods]
impl Run {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.next_outcome(py, None)
    }

    /// As `__next__`, but raises `TimeoutError` after `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.next_outcome(py, crate::args::duration(timeout, "timeout")?)
    }

    /// Drains an ordered run at once: `(values, failures)`, where `values` holds every
    /// item's result in input order (`None` where it failed) and `failures` the
    /// `(index, exception)` pairs in input order. The fast way to a `map`'s list: no
    /// tuple per item. Blocks with the GIL released; Ctrl-C raises `KeyboardInterrupt`
    /// (what was drained is then lost).
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let values = PyList::empty(py);
        let failures = PyList::empty(py);
        let mut st = self.state(py);
        if st.reorder.is_none() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "collect() needs an ordered run",
            ));
        }
        loop {
            while let Some(r) = st.ready.pop_front() {
                match r {
                    Ready::Values { values: v, pos, .. } => {
                        let v = v.bind(py);
                        if pos == 0 {
                            values.call_method1(pyo3::intern!(py, "extend"), (v,))?;
                        } else if pos < v.len() {
                            values.call_method1(
                                pyo3::intern!(py, "extend"),
                                (v.get_slice(pos, v.len()),),
                            )?;
                        }
                    }
                    Ready::Many(list, pos) => {
                        for t in list.bind(py).iter().skip(pos) {
                            collect_one(&values, &failures, &t)?;
                        }
                    }
                    Ready::One(t) => collect_one(&values, &failures, t.bind(py))?,
                }
            }
            if !self.fill_ready(py, &mut st, None)? {
                return Ok((values, failures));
            }
        }
    }

    /// What the run holds, and the most it has held at once: `jobs` (submitted, not yet
    /// received) and `payload_bytes` (their encoded arguments) now, and their peaks
    /// `peak_jobs` and `peak_payload_bytes`; `peak_held_bytes`, finished results held
    /// back for order; `largest_chunk_bytes` and `largest_chunk_items`, the largest
    /// chunk's payload and item count; `pulled`, items taken from the input.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let st = self.state(py);
        let d = pyo3::types::PyDict::new(py);
        let (largest_bytes, largest_items) = st.feed.source().largest;
        d.set_item("jobs", st.feed.in_flight())?;
        d.set_item("payload_bytes", st.feed.payload_bytes())?;
        d.set_item("peak_jobs", st.peak.jobs)?;
        d.set_item("peak_payload_bytes", st.peak.payload_bytes)?;
        d.set_item("peak_held_bytes", st.peak.held_bytes)?;
        d.set_item("largest_chunk_bytes", largest_bytes)?;
        d.set_item("largest_chunk_items", largest_items)?;
        d.set_item("pulled", st.feed.pulled())?;
        Ok(d)
    }

    /// Drops the run's jobs not started and kills the workers running its jobs;
    /// iteration then ends. Idempotent.
    fn cancel(&self, py: Python<'_>) {
        self.cancelled.store(true, Ordering::Relaxed);
        if let Ok(mut st) = self.state.try_lock()
            && !st.cancel_sent
        {
            let st = &mut *st;
            py.detach(|| cancel_now(st));
        }
    }
}
