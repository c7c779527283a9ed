//! Feeding input to a pool lazily and handing results back: the machinery under `map`,
//! `imap` and `imap_unordered`.
//!
//! A [`Feeder`] pulls items from the input only while the number of jobs it holds
//! (submitted, or finished but not yet handed to the caller) is under a bound, so memory
//! stays bounded however long the input is, endless included.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use procpool_engine::{Batch, Job, PoolError, TaskError, TaskErrorKind};

use crate::chunk::Chunker;
use crate::codec::Value;
use crate::error::Error;
use crate::items::{self, Layout};
use crate::outcome::ChunkOut;

/// Jobs in flight per worker when each is small and of fixed size.
const JOBS_PER_WORKER_FIXED: usize = 1024;
/// Jobs in flight per worker when chunks are sized to about a millisecond.
const JOBS_PER_WORKER_ADAPTIVE: usize = 4;
/// Encoded input held beyond the first two jobs per worker.
const MAX_HELD_BYTES: usize = 64 << 20;

/// Whether a job failed because its worker ended (which fails every item of a chunk).
fn is_death(kind: &TaskErrorKind) -> bool {
    matches!(
        kind,
        TaskErrorKind::WorkerDied { .. }
            | TaskErrorKind::TimedOut { .. }
            | TaskErrorKind::Protocol { .. }
    )
}

/// Payload buffers at least this large are kept for reuse.
const RECYCLE_MIN: usize = 64 << 10;
/// At most this many are kept.
const MAX_SPARE: usize = 8;

pub(crate) struct Feeder<A, R, I> {
    batch: Batch,
    input: I,
    exhausted: bool,
    next_index: u64,
    func: Arc<[u8]>,
    layout: Layout,
    /// An item pulled but left out of the last chunk (it would have taken the chunk past
    /// the size limit): its index and encoding.
    carry: Option<(u64, Vec<u8>)>,
    chunker: Chunker,
    timeout: Option<Duration>,
    /// Submitted jobs not yet received: first index → (items, payload).
    sizes: HashMap<u64, (u32, Arc<Vec<u8>>)>,
    /// Large payload buffers of finished jobs, reused so that their pages need not be
    /// faulted in again.
    spare: Vec<Vec<u8>>,
    held_bytes: usize,
    /// Results made without a worker (an argument that failed to serialize, or a pool
    /// that refused the job).
    local: VecDeque<ChunkOut<R>>,
    workers: usize,
    max_jobs: usize,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R, I> std::fmt::Debug for Feeder<A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder")
            .field("next_index", &self.next_index)
            .field("submitted", &self.sizes.len())
            .field("exhausted", &self.exhausted)
            .finish_non_exhaustive()
    }
}

impl<A, R, I> Feeder<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: Borrow<A>>,
{
    #[allow(clippy::too_many_arguments)] // one per setting of the call
    pub(crate) fn new(
        batch: Batch,
        input: I,
        func: Arc<[u8]>,
        layout: Layout,
        chunk_size: Option<usize>,
        timeout: Option<Duration>,
        workers: usize,
        max_chunk: Option<u64>,
    ) -> Self {
        let chunker = Chunker::new(chunk_size, workers, max_chunk);
        let per = if chunker.adaptive() {
            JOBS_PER_WORKER_ADAPTIVE
        } else {
            JOBS_PER_WORKER_FIXED
        };
        Self {
            batch,
            input,
            exhausted: false,
            next_index: 0,
            func,
            layout,
            carry: None,
            chunker,
            timeout,
            sizes: HashMap::new(),
            spare: Vec::new(),
            held_bytes: 0,
            local: VecDeque::new(),
            workers,
            max_jobs: workers * per + 2,
            _types: PhantomData,
        }
    }

    /// Items pulled from the input so far.
    pub(crate) fn pulled(&self) -> u64 {
        self.next_index
    }

    /// Jobs submitted and not yet received.
    pub(crate) fn in_flight(&self) -> usize {
        self.sizes.len()
    }

    fn room(&self, extra_held: usize) -> bool {
        let held = self.sizes.len() + self.local.len() + extra_held;
        if held >= self.max_jobs {
            return false;
        }
        if self.held_bytes >= MAX_HELD_BYTES && held >= 2 * self.workers {
            return false;
        }
        // Until the first measurement, one probe job per worker.
        self.chunker.measured() || self.sizes.len() < self.workers
    }

    /// Pulls input and submits jobs while the bound allows; `extra_held` counts jobs the
    /// caller still holds (results waiting to be reordered).
    pub(crate) fn fill(&mut self, extra_held: usize) {
        // Many small fixed-size jobs are topped up in large batches, not one per result:
        // each submission may wake the supervisor.
        if !self.chunker.adaptive() && self.sizes.len() + extra_held > self.max_jobs / 2 {
            return;
        }
        let mut jobs = Vec::new();
        let mut room_jobs = 0usize;
        while (!self.exhausted || self.carry.is_some()) && self.room(extra_held + room_jobs) {
            let (lo, hi) = self.input.size_hint();
            let remaining = (Some(lo) == hi).then_some(lo);
            let n = self
                .chunker
                .next(remaining)
                .min(items::max_plain::<A>(self.layout));
            let mut payload = self.spare.pop().unwrap_or_default();
            items::begin_chunk::<A>(&mut payload, self.layout);
            // An item that did not fit in the last chunk starts this one.
            let (start, mut count) = match self.carry.take() {
                Some((index, bytes)) => {
                    payload.extend_from_slice(&bytes);
                    (index, 1u32)
                }
                None => (self.next_index, 0u32),
            };
            while (count as usize) < n && !self.exhausted {
                let Some(a) = self.input.next() else {
                    self.exhausted = true;
                    break;
                };
                let index = self.next_index;
                self.next_index += 1;
                let mark = payload.len();
                if let Err(kind) = items::push_arg(&mut payload, self.layout, a.borrow()) {
                    let e = Error::Task(TaskError::new(kind, index, None, 0));
                    self.local
                        .push_back(ChunkOut::failed(index, 1, |_| e.clone()));
                    break;
                }
                if items::past_limit::<A>(&payload, self.layout) && count > 0 {
                    self.carry = Some((index, payload[mark..].to_vec()));
                    payload.truncate(mark);
                    break;
                }
                count += 1;
            }
            if count == 0 {
                continue;
            }
            items::end_chunk(&mut payload, count);
            let payload = Arc::new(payload);
            self.held_bytes += payload.len();
            self.sizes.insert(start, (count, payload.clone()));
            room_jobs += 1;
            jobs.push(Job {
                func: self.func.clone(),
                payload,
                index: start,
                weight: count,
                timeout: self.timeout,
            });
        }
        if jobs.is_empty() {
            return;
        }
        let starts: Vec<u64> = jobs.iter().map(|j| j.index).collect();
        if let Err(e) = self.batch.submit(jobs) {
            self.refused(&starts, e);
        }
    }

    /// The pool refused the jobs starting at `starts`: each of their items fails with the
    /// pool's error, and no more input is pulled.
    #[cold]
    fn refused(&mut self, starts: &[u64], e: PoolError) {
        self.exhausted = true;
        for &start in starts {
            if let Some((count, payload)) = self.sizes.remove(&start) {
                self.held_bytes -= payload.len();
                let chunk = ChunkOut::failed(start, count, |_| Error::Pool(e.clone()));
                self.local.push_back(chunk);
            }
        }
    }

    /// The worker stopped the chunk of `count` items at `start` after `from` of them (its
    /// results would have grown past the transport bound): the rest go out again.
    #[cold]
    fn resubmit(&mut self, start: u64, count: u32, from: u32, payload: &[u8]) {
        let index = start + u64::from(from);
        let left = count - from;
        let Some(tail) = items::tail_payload::<A>(payload, from) else {
            let kind = TaskErrorKind::Codec {
                message: "a chunk's payload could not be split".into(),
            };
            let e = |i| Error::Task(TaskError::new(kind.clone(), i, None, 0));
            self.local.push_back(ChunkOut::failed(index, left, e));
            return;
        };
        let payload = Arc::new(tail);
        self.held_bytes += payload.len();
        self.sizes.insert(index, (left, payload.clone()));
        let job = Job {
            func: self.func.clone(),
            payload,
            index,
            weight: left,
            timeout: self.timeout,
        };
        if let Err(e) = self.batch.submit([job]) {
            self.refused(&[index], e);
        }
    }

    fn recycle(&mut self, payload: Arc<Vec<u8>>) {
        if payload.capacity() >= RECYCLE_MIN
            && self.spare.len() < MAX_SPARE
            && let Ok(v) = Arc::try_unwrap(payload)
        {
            self.spare.push(v);
        }
    }

    /// The next finished job's results; `None` when nothing is outstanding.
    pub(crate) fn recv(&mut self) -> Option<ChunkOut<R>> {
        if let Some(x) = self.local.pop_front() {
            return Some(x);
        }
        loop {
            let done = self.batch.recv()?;
            let Some((count, payload)) = self.sizes.remove(&done.index) else {
                continue; // not ours: cannot happen, but never trust a count
            };
            self.held_bytes -= payload.len();
            match &done.outcome {
                Ok(_) => self.chunker.observe(done.nanos, count as usize),
                Err(e) if count > 1 && is_death(e.kind()) => self.chunker.isolate(),
                Err(_) => {}
            }
            let chunk = ChunkOut::decode(done, count, self.layout.codec);
            if let Some(from) = chunk.not_run() {
                self.resubmit(chunk.start(), count, from, &payload);
            }
            self.recycle(payload);
            return Some(chunk);
        }
    }
}

/// Results of [`Pool::imap`](crate::Pool::imap), in input order.
///
/// Input is pulled lazily: only while the jobs held (running, or finished and waiting for
/// their turn) stay under a bound. Dropping the iterator drops the queued jobs and
/// discards results still to come.
pub struct Imap<A, R, I> {
    feeder: Feeder<A, R, I>,
    waiting: BTreeMap<u64, ChunkOut<R>>,
    current: Option<ChunkOut<R>>,
    next_yield: u64,
}

impl<A, R, I> std::fmt::Debug for Imap<A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("feeder", &self.feeder)
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<A, R, I> Imap<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: Borrow<A>>,
{
    pub(crate) fn new(feeder: Feeder<A, R, I>) -> Self {
        Self {
            feeder,
            waiting: BTreeMap::new(),
            current: None,
            next_yield: 0,
        }
    }

    /// Items taken from the input so far.
    pub fn pulled(&self) -> u64 {
        self.feeder.pulled()
    }

    /// Jobs submitted to workers and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.feeder.in_flight()
    }

    /// Finished jobs held back until the jobs before them finish.
    pub fn buffered(&self) -> usize {
        self.waiting.len()
    }

    /// The next job's results in input order, whole. With `fail_fast`, a job with a
    /// failed item comes out as soon as it arrives, out of order.
    pub(crate) fn next_chunk(&mut self, fail_fast: bool) -> Option<ChunkOut<R>> {
        if let Some(c) = self.current.take()
            && !c.is_empty()
        {
            return Some(c);
        }
        loop {
            if let Some(c) = self.waiting.remove(&self.next_yield) {
                self.next_yield += u64::from(c.len());
                return Some(c);
            }
            self.feeder.fill(self.waiting.len());
            let c = self.feeder.recv()?;
            if fail_fast && c.has_errors() {
                return Some(c);
            }
            self.waiting.insert(c.start(), c);
        }
    }
}

impl<A, R, I> Iterator for Imap<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: Borrow<A>>,
{
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = &mut self.current
                && let Some((_, r)) = c.next()
            {
                return Some(r);
            }
            self.current = None;
            self.current = Some(self.next_chunk(false)?);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (lo, hi) = self.feeder.input.size_hint();
        let cur = self.current.as_ref().map_or(0, |c| c.remaining());
        let held = ((self.feeder.next_index - self.next_yield) as usize).saturating_add(cur);
        (lo.saturating_add(cur), hi.and_then(|h| h.checked_add(held)))
    }
}

/// Results of [`Pool::imap_unordered`](crate::Pool::imap_unordered), as they finish,
/// each with its input index.
pub struct ImapUnordered<A, R, I> {
    feeder: Feeder<A, R, I>,
    current: Option<ChunkOut<R>>,
}

impl<A, R, I> std::fmt::Debug for ImapUnordered<A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("feeder", &self.feeder)
            .finish_non_exhaustive()
    }
}

impl<A, R, I> ImapUnordered<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: Borrow<A>>,
{
    pub(crate) fn new(feeder: Feeder<A, R, I>) -> Self {
        Self {
            feeder,
            current: None,
        }
    }

    /// Items taken from the input so far.
    pub fn pulled(&self) -> u64 {
        self.feeder.pulled()
    }

    /// Jobs submitted to workers and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.feeder.in_flight()
    }
}

impl<A, R, I> Iterator for ImapUnordered<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: Borrow<A>>,
{
    type Item = (usize, Result<R, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = &mut self.current
                && let Some((i, r)) = c.next()
            {
                return Some((i as usize, r));
            }
            self.current = None;
            self.feeder.fill(0);
            self.current = Some(self.feeder.recv()?);
        }
    }
}
