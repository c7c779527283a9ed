//! Feeding a lazy input to a pool: the machinery under every front's `map`, `imap` and
//! `imap_unordered`.
//!
//! A front supplies its items through a [`Source`], which encodes the next items into
//! one job's payload in the front's own format; the engine decides how many go into a job
//! (measured chunk sizes, see `chunk`), how many jobs and bytes are in flight at once, and
//! hands back each finished job as a [`Piece`] for the front to decode. A [`Reorder`]
//! buffer puts pieces back in input order for the ordered calls.
//!
//! Bounds, so that memory stays small however long the input (endless included) and
//! whatever the item size:
//! - jobs in flight: 1024 per worker when the chunk size is fixed (tiny jobs need a deep
//!   queue), 4 per worker when chunks are measured (each is about a millisecond of work,
//!   and at most [`TARGET_BYTES`](crate::chunk) of data);
//! - payload bytes in flight: [`MAX_PAYLOAD_BYTES`] (beyond two jobs per worker);
//! - finished results the caller holds back for reordering: [`MAX_REORDER_BYTES`]; past
//!   that, no more input is pulled until the earlier job finishes (workers may then idle:
//!   memory wins).
//!
//! A call whose caller consumes results as they come ([`Feed::follow_consumer`], an
//! `imap`) holds less: chunks of about [`LAZY_CHUNK_BYTES`] of argument and result,
//! results held back for reordering up to two such chunks per worker, and arguments in
//! flight up to one such chunk per worker once one job per worker and one more are out.
//! A consumer that keeps up then holds a few chunks per worker, whatever the input's
//! length: what is in flight (one chunk per worker and one more when chunks are full, at
//! most four jobs per worker when they are small), what waits for its turn, and the
//! chunk being handed out.
//!
//! None of these hold work back from an idle worker while the input has items and the
//! bounds are not reached; the supervisor's scheduling rule does the rest.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::batch::{Batch, RecvError};
use crate::job::{Done, Job, JobFds};

/// A job submitted and not yet received: its item count, payload and descriptors.
type Submitted = (u32, Arc<Vec<u8>>, Option<JobFds>);
use crate::chunk::Chunker;
use crate::error::{PoolError, TaskError, TaskErrorKind};
use crate::pool::Engine;
use crate::progress::{ProgressFn, Tracker};
use crate::stats::Recorder;

/// Jobs in flight per worker when each is small and of fixed size.
const JOBS_PER_WORKER_FIXED: usize = 1024;
/// Jobs in flight per worker when chunks are sized from measurements.
const JOBS_PER_WORKER_ADAPTIVE: usize = 4;
/// Encoded arguments in flight, beyond the first two jobs per worker. Two jobs per
/// worker keep every worker busy; past them, more bytes in flight only cost the caller
/// memory (a long `imap` of large chunks held 16 MiB here for no speed).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Encoded arguments in flight, beyond the first two jobs per worker, for a caller that
/// collects every result anyway ([`Feed::encode_ahead`]).
///
/// ```
/// assert!(procpool_engine::MAX_PAYLOAD_BYTES_AHEAD > procpool_engine::MAX_PAYLOAD_BYTES);
/// ```
pub const MAX_PAYLOAD_BYTES_AHEAD: usize = 4 << 20;
/// Encoded results a caller may hold back for reordering before input stops.
pub const MAX_REORDER_BYTES: usize = 4 << 20;
/// The bytes of argument and result a chunk aims at in a call that follows its consumer
/// ([`Feed::follow_consumer`]).
///
/// ```
/// // What an imap of 1 KiB results holds per chunk, about:
/// let items_per_chunk = procpool_engine::LAZY_CHUNK_BYTES / 1024;
/// assert!(items_per_chunk >= 64);
/// ```
pub const LAZY_CHUNK_BYTES: usize = crate::chunk::LAZY_TARGET_BYTES as usize;
/// Payload buffers at least this large are kept for reuse.
const RECYCLE_MIN: usize = 64 << 10;
/// At most this many are kept (each may be as large as a job).
const MAX_SPARE: usize = 2;

/// How much a [`Source`] may put into one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most items.
    pub items: usize,
    /// Stop adding items once the payload is this large.
    pub soft_bytes: usize,
    /// The payload must never be larger (the pool's message limit): an item that would
    /// pass it waits for the next job, and an item that passes it alone fails.
    pub hard_bytes: usize,
}

/// What [`Source::fill`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// This many items (at least one) were encoded into the payload.
    Items(u32),
    /// The next item could not be encoded (or is too large alone): it fails with this
    /// error and is used up.
    Failed(TaskErrorKind),
    /// The input is exhausted.
    End,
}

/// A front's input, encoded on demand.
pub trait Source {
    /// Encodes the next items into `out` (empty on entry) as one job's payload, within
    /// `limits`.
    fn fill(&mut self, out: &mut Vec<u8>, limits: Limits) -> Pulled;

    /// The descriptors the items of the last [`fill`](Self::fill) attached (they travel
    /// with its job; see [`Job::fds`]). None by default.
    fn take_fds(&mut self) -> Option<JobFds> {
        None
    }

    /// Bounds on the number of items left, as [`Iterator::size_hint`].
    fn size_hint(&self) -> (usize, Option<usize>);

    /// The payload of items `from..from + count` of a job's `payload` (made by
    /// [`fill`](Self::fill)), cut at the byte level: never by decoding the items, which
    /// may run a task's code. The feed sends them again after a worker died inside the
    /// job (see [`items_finished`](crate::items_finished)); `None` (the default) when the
    /// source cannot, and the job's items then fail together.
    fn split(&self, payload: &[u8], from: u32, count: u32) -> Option<Vec<u8>> {
        let _ = (payload, from, count);
        None
    }
}

/// One finished job of a [`Feed`]: items `start..start + count`, and the job's answer.
#[derive(Debug)]
pub struct Piece {
    /// Index of its first item.
    pub start: u64,
    /// How many items it covers.
    pub count: u32,
    /// The job's end (its `index` is `start`).
    pub done: Done,
    /// The job's payload (`None` for a piece made without a worker): the front may look
    /// at it (to send again the items a worker did not run, say), then should hand it
    /// back with [`Feed::give_back`] so that its buffer is reused.
    pub payload: Option<Arc<Vec<u8>>>,
    /// The descriptors that travelled with the job (for items sent again, whose encoding
    /// refers to them).
    pub fds: Option<JobFds>,
}

impl Piece {
    /// Bytes of its encoded result (what holding it back costs).
    pub fn bytes(&self) -> usize {
        self.done.outcome.as_ref().map_or(64, |b| b.len() + 64)
    }
}

/// Whether a job failed because its worker ended (which fails every item of a chunk).
fn is_death(kind: &TaskErrorKind) -> bool {
    matches!(
        kind,
        TaskErrorKind::WorkerDied { .. }
            | TaskErrorKind::TimedOut { .. }
            | TaskErrorKind::PreparationTimedOut { .. }
            | TaskErrorKind::Protocol { .. }
    )
}

/// One call's stream of items into a pool and of finished jobs back.
///
/// Dropping it abandons the call: queued jobs are dropped and results still to come are
/// discarded.
#[derive(Debug)]
pub struct Feed<S> {
    batch: Batch,
    source: S,
    func: Arc<[u8]>,
    timeout: Option<Duration>,
    chunker: Chunker,
    next_index: u64,
    exhausted: bool,
    /// Submitted jobs not yet received: first index → (items, payload).
    jobs: HashMap<u64, Submitted>,
    payload_bytes: usize,
    /// Pieces made without a worker (an item that failed to encode, or a refused job).
    local: VecDeque<Piece>,
    /// Large payload buffers of finished jobs, reused so that their pages need not be
    /// faulted in again.
    spare: Vec<Vec<u8>>,
    workers: usize,
    max_jobs: usize,
    max_message: usize,
    /// The pool's retries (for an item whose worker died inside a chunk).
    retries: u32,
    /// The call's progress, when a callback asked for it.
    progress: Option<Tracker>,
    /// Results held back for reordering past which no more input is pulled.
    max_held: usize,
    /// Encoded arguments in flight past which (beyond `min_jobs` jobs) no more input is
    /// pulled.
    max_payload: usize,
    /// Jobs in flight that [`max_payload`](Self::max_payload) never holds back: two per
    /// worker, or one per worker and one more for a call that follows its consumer.
    min_jobs: usize,
    /// Whether the next job is encoded ahead ([`Feed::encode_ahead`]).
    ahead: bool,
    /// The job encoded ahead, not submitted yet.
    staged: Option<Job>,
    /// Keeps result buffers handed back ([`crate::recycle_result`]) while the call runs.
    _bufs: crate::bufs::CallGuard,
}

impl<S: Source> Feed<S> {
    /// A feed of `source`'s items to `engine`, each job running `func`. With no
    /// `chunk_size`, chunks are sized from measurements, except that with a `timeout`
    /// each item is a job of its own (a limit is per job).
    pub fn new(
        engine: &Engine,
        source: S,
        func: Arc<[u8]>,
        chunk_size: Option<usize>,
        timeout: Option<Duration>,
    ) -> Self {
        let config = engine.config();
        let workers = config.workers.max(1);
        let fixed = chunk_size.or(timeout.map(|_| 1));
        let chunker = Chunker::new(fixed, workers, config.recycle_after);
        let per = if chunker.adaptive() {
            JOBS_PER_WORKER_ADAPTIVE
        } else {
            JOBS_PER_WORKER_FIXED
        };
        Self {
            batch: engine.batch(),
            source,
            func,
            timeout,
            chunker,
            next_index: 0,
            exhausted: false,
            jobs: HashMap::new(),
            payload_bytes: 0,
            local: VecDeque::new(),
            spare: Vec::new(),
            workers,
            max_jobs: workers * per + 2,
            max_message: config.max_message,
            retries: config.retries,
            progress: None,
            max_held: MAX_REORDER_BYTES,
            max_payload: MAX_PAYLOAD_BYTES,
            min_jobs: 2 * workers,
            ahead: false,
            staged: None,
            _bufs: crate::bufs::CallGuard::new(),
        }
    }

    /// Says that the caller consumes results as they come and holds them no longer than
    /// it takes (an `imap`, not a `map` that collects them all): chunks aim at
    /// [`LAZY_CHUNK_BYTES`] instead of 1 MiB of argument and result, finished results
    /// held back for reordering stop the input at two such chunks per worker (at most
    /// [`MAX_REORDER_BYTES`]) instead of [`MAX_REORDER_BYTES`], and once one job per
    /// worker and one more are in flight, encoded arguments in flight stop it at one such
    /// chunk per worker (instead of [`MAX_PAYLOAD_BYTES`] beyond two jobs per worker), so
    /// that the memory the call holds follows what the consumer takes: a few chunks per
    /// worker. Jobs of small arguments are not held back by that last bound: up to the
    /// usual count per worker stay in flight.
    pub fn follow_consumer(&mut self) {
        self.chunker.set_target_bytes(LAZY_CHUNK_BYTES as f64);
        self.max_held = (2 * self.workers * LAZY_CHUNK_BYTES).min(MAX_REORDER_BYTES);
        self.max_payload = self.workers * LAZY_CHUNK_BYTES;
        self.min_jobs = self.workers + 1;
    }

    /// Reports the call's progress to `callback`, at most once per `interval` and once
    /// at the end (see [`Progress`](crate::Progress)). The total is known when the
    /// source's size hint is exact.
    pub fn set_progress(&mut self, callback: ProgressFn, interval: Duration) {
        let (lo, hi) = self.source.size_hint();
        let total = (Some(lo) == hi).then(|| self.next_index + lo as u64);
        self.progress = Some(Tracker::new(callback, interval, total));
    }

    fn room(&self, held_bytes: usize) -> bool {
        let jobs = self.jobs.len() + self.local.len();
        if jobs >= self.max_jobs || held_bytes >= self.max_held {
            return false;
        }
        if self.payload_bytes >= self.max_payload && jobs >= self.min_jobs {
            return false;
        }
        // Until the first measurement, one probe job per worker.
        self.chunker.measured() || self.jobs.len() < self.workers
    }

    /// Pulls input and submits jobs while the bounds allow; `held_bytes` is what the
    /// caller holds back (finished results waiting for an earlier one).
    pub fn fill(&mut self, held_bytes: usize) {
        // Many small fixed-size jobs are topped up in large batches, not one per result:
        // each submission may wake the supervisor.
        if !self.chunker.adaptive() && self.jobs.len() > self.max_jobs / 2 {
            return;
        }
        let mut jobs = Vec::new();
        // Measured chunks are few and each is worth a millisecond or so of work: each goes
        // out as soon as it is encoded, not after the next ones (a worker would idle while
        // the caller encodes them).
        let at_once = self.chunker.adaptive();
        // The chunk encoded ahead goes first: it holds the next items.
        if self.staged.is_some()
            && self.room(held_bytes)
            && let Some(job) = self.staged.take()
        {
            self.launch(job, &mut jobs);
            if at_once {
                self.submit(&mut jobs);
            }
        }
        while !self.exhausted && self.room(held_bytes) {
            match self.pull() {
                Some(Ok(job)) => {
                    self.launch(job, &mut jobs);
                    if at_once {
                        self.submit(&mut jobs);
                    }
                }
                Some(Err(())) => {}
                None => break,
            }
        }
        self.submit(&mut jobs);
        // Encode the next chunk now, while the workers run what was just sent: when a
        // job finishes, its successor goes out at once instead of after an encoding.
        if self.ahead && self.staged.is_none() && !self.exhausted && self.chunker.measured() {
            self.staged = match self.pull() {
                Some(Ok(job)) => Some(job),
                _ => None,
            };
        }
        self.release_input();
    }

    /// Tells the pool that this call will submit nothing more, once its input ended
    /// and every job it submitted came back: a job whose worker died may still send part
    /// of its items again (see [`after_death`](Self::after_death), and a front's own
    /// resubmission of a piece), so a pool being joined must not stop its workers
    /// before then. Until then it waits for a [`keep_open`](Self::keep_open) feed.
    fn release_input(&mut self) {
        if self.exhausted && self.jobs.is_empty() && self.staged.is_none() {
            self.batch.close_input();
        }
    }

    /// Encodes the next job from the source: `None` when the input ended, `Err` when its
    /// next item failed (as a local piece).
    fn pull(&mut self) -> Option<Result<Job, ()>> {
        let (lo, hi) = self.source.size_hint();
        let remaining = (Some(lo) == hi).then_some(lo);
        let limits = Limits {
            items: self.chunker.next(remaining),
            soft_bytes: self.chunker.target_bytes() as usize,
            hard_bytes: self.max_message,
        };
        let mut payload = self.spare.pop().unwrap_or_default();
        payload.clear();
        let start = self.next_index;
        let count = match self.source.fill(&mut payload, limits) {
            Pulled::Items(n) => n.max(1),
            Pulled::Failed(kind) => {
                self.next_index += 1;
                let e = TaskError::new(kind, start, None, 0);
                self.local.push_back(local_piece(start, 1, e));
                return Some(Err(()));
            }
            Pulled::End => {
                // Not `end_input`: the pool learns that no more will come only once
                // what was pulled is queued (see `release_input`).
                self.exhausted = true;
                return None;
            }
        };
        self.next_index += u64::from(count);
        Some(Ok(Job {
            func: self.func.clone(),
            payload: Arc::new(payload),
            index: start,
            weight: count,
            timeout: self.timeout,
            fds: self.source.take_fds(),
            attempts: 0,
        }))
    }

    /// Submits `jobs` (launched), leaving it empty.
    fn submit(&mut self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let jobs = std::mem::take(jobs);
        let starts: Vec<u64> = jobs.iter().map(|j| j.index).collect();
        if let Err(e) = self.batch.submit(jobs) {
            self.refused(&starts, e);
        }
    }

    /// Counts `job` as submitted and adds it to `jobs`.
    fn launch(&mut self, job: Job, jobs: &mut Vec<Job>) {
        self.payload_bytes += job.payload.len();
        self.jobs.insert(
            job.index,
            (job.weight, job.payload.clone(), job.fds.clone()),
        );
        jobs.push(job);
    }

    /// Pulls no more input (the call is ending early); jobs already submitted still come
    /// back (a chunk encoded ahead and not submitted is dropped: see
    /// [`encode_ahead`](Self::encode_ahead)).
    pub fn stop_input(&mut self) {
        self.staged = None;
        self.end_input();
    }

    /// Says that the caller collects every result (a `map`): the next chunk is encoded
    /// while the workers run the ones sent (so that a finished job's successor goes out
    /// at once), and up to [`MAX_PAYLOAD_BYTES_AHEAD`] of arguments are in flight instead
    /// of [`MAX_PAYLOAD_BYTES`]. The input is then pulled one chunk ahead of what was
    /// submitted; [`stop_input`](Self::stop_input) drops that chunk, so a caller that
    /// stops early (on a failure) must not expect its items back.
    pub fn encode_ahead(&mut self) {
        self.ahead = true;
        self.max_payload = MAX_PAYLOAD_BYTES_AHEAD;
    }

    /// Says that the caller drains this feed to its end within one call (a `map`): a
    /// pool being joined then waits until all its input is in and every job came back
    /// to the caller (who may send part of one again). (An iterator a caller may hold
    /// without draining must not say so: a join would wait for it forever.)
    pub fn keep_open(&mut self) {
        if !self.exhausted {
            self.batch.open_input();
        }
    }

    /// No more input will be pulled, nor anything sent again: a pool being joined need
    /// not wait for this call.
    fn end_input(&mut self) {
        self.exhausted = true;
        self.batch.close_input();
    }

    /// Refuses the call before it starts (an invalid setting, say): the first item comes
    /// back as this error, and no input is pulled.
    pub fn refuse(&mut self, e: PoolError) {
        self.end_input();
        let start = self.next_index;
        self.next_index += 1;
        let err = TaskError::new(TaskErrorKind::PoolBroken(e), start, None, 0);
        self.local.push_back(local_piece(start, 1, err));
    }

    /// The pool refused the jobs starting at `starts`: each of their items fails with the
    /// pool's error, and no more input is pulled.
    #[cold]
    fn refused(&mut self, starts: &[u64], e: PoolError) {
        self.end_input();
        for &start in starts {
            if let Some((count, payload, _)) = self.jobs.remove(&start) {
                self.payload_bytes -= payload.len();
                let err = TaskError::new(TaskErrorKind::PoolBroken(e.clone()), start, None, 0);
                self.local.push_back(local_piece(start, count, err));
            }
        }
    }

    /// Sends again, as a job of their own, `count` items from `start` whose job ended
    /// without running them (a front's worker may stop a chunk early), encoded in
    /// `payload`.
    pub fn resubmit(&mut self, start: u64, count: u32, payload: Vec<u8>) {
        self.resubmit_with_fds(start, count, payload, None);
    }

    /// Like [`resubmit`](Self::resubmit), with the descriptors the payload's encoding
    /// refers to (those of the job it came from: [`Piece::fds`]).
    pub fn resubmit_with_fds(
        &mut self,
        start: u64,
        count: u32,
        payload: Vec<u8>,
        fds: Option<JobFds>,
    ) {
        if let Some(t) = &mut self.progress {
            t.retract(u64::from(count));
        }
        self.submit_part(start, count, payload, fds, 0);
    }

    /// Fails `count` items from `start` without a worker, with `kind`.
    pub fn fail_locally(&mut self, start: u64, count: u32, kind: TaskErrorKind) {
        let e = TaskError::new(kind, start, None, 0);
        self.local.push_back(local_piece(start, count, e));
    }

    /// Hands back a finished piece's payload, for its buffer to be reused.
    pub fn give_back(&mut self, payload: Arc<Vec<u8>>) {
        if payload.capacity() >= RECYCLE_MIN
            && self.spare.len() < MAX_SPARE
            && let Ok(v) = Arc::try_unwrap(payload)
        {
            self.spare.push(v);
        }
    }

    /// Tops up the jobs in flight, then waits for the next finished job (in finishing
    /// order); `None` when nothing is left. `held_bytes` as for [`fill`](Self::fill).
    pub fn recv(&mut self, held_bytes: usize) -> Option<Piece> {
        if let Some(t) = &mut self.progress {
            t.tick();
        }
        self.fill(held_bytes);
        if let Some(p) = self.local.pop_front() {
            return Some(self.counted(p));
        }
        loop {
            let Some(done) = self.batch.recv() else {
                self.finish_progress();
                return None;
            };
            if let Some(p) = self.piece(done) {
                return Some(self.arrived(p, held_bytes));
            }
        }
    }

    /// [`recv`](Self::recv), waiting at most `timeout` for a job to finish: `Ok(None)`
    /// when nothing is left, [`RecvError::Timeout`] when the time ran out first (call
    /// again to go on waiting). For callers that must look up now and then (a Python
    /// front checks for Ctrl-C).
    ///
    /// # Errors
    /// [`RecvError::Timeout`] only.
    pub fn recv_timeout(
        &mut self,
        held_bytes: usize,
        timeout: Duration,
    ) -> Result<Option<Piece>, RecvError> {
        if let Some(t) = &mut self.progress {
            t.tick();
        }
        self.fill(held_bytes);
        if let Some(p) = self.local.pop_front() {
            return Ok(Some(self.counted(p)));
        }
        // A timeout too long for the clock (`Duration::MAX`) is as good as none.
        let now = std::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(1 << 32));
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.batch.recv_timeout(left) {
                Ok(done) => {
                    if let Some(p) = self.piece(done) {
                        return Ok(Some(self.arrived(p, held_bytes)));
                    }
                }
                Err(RecvError::Empty) => {
                    self.finish_progress();
                    return Ok(None);
                }
                Err(RecvError::Timeout) => return Err(RecvError::Timeout),
            }
        }
    }

    /// Cancels the call: no more input is pulled, queued jobs are dropped, and workers
    /// running its jobs are killed (the pool replaces them); each such job comes back as
    /// [`Cancelled`](TaskErrorKind::Cancelled).
    pub fn cancel(&mut self) {
        self.staged = None;
        self.end_input();
        self.batch.cancel();
    }

    /// [`recv`](Self::recv) for async callers: never blocks; `Pending` wakes the task of
    /// `cx` when a job finishes.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>, held_bytes: usize) -> Poll<Option<Piece>> {
        if let Some(t) = &mut self.progress {
            t.tick();
        }
        self.fill(held_bytes);
        if let Some(p) = self.local.pop_front() {
            return Poll::Ready(Some(self.counted(p)));
        }
        loop {
            match self.batch.poll_recv(cx) {
                Poll::Ready(Some(done)) => {
                    if let Some(p) = self.piece(done) {
                        return Poll::Ready(Some(self.arrived(p, held_bytes)));
                    }
                }
                Poll::Ready(None) => {
                    self.finish_progress();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// A piece that came from a worker: the jobs in flight are topped up before the
    /// caller decodes it, so that the workers have work meanwhile.
    fn arrived(&mut self, p: Piece, held_bytes: usize) -> Piece {
        self.fill(held_bytes.saturating_add(p.bytes()));
        self.counted(p)
    }

    /// The piece a finished job makes, after taking its measurements.
    fn piece(&mut self, mut done: Done) -> Option<Piece> {
        // Not ours cannot happen, but never trust a count.
        let (count, payload, fds) = self.jobs.remove(&done.index)?;
        self.payload_bytes -= payload.len();
        if let Some(partial) = done.partial.take()
            && let Some(parts) = self.split_after(partial.finished, count, &payload)
        {
            let mut pieces = self.after_death(done, partial, count, parts, &fds);
            self.give_back(payload);
            let first = (!pieces.is_empty()).then(|| pieces.remove(0));
            self.local.extend(pieces);
            return first;
        }
        let arg_bytes = payload.len();
        match &done.outcome {
            Ok(r) => self
                .chunker
                .observe(done.nanos, arg_bytes + r.len(), count as usize),
            Err(e) if count > 1 && is_death(e.kind()) => self.chunker.isolate(),
            Err(_) => {}
        }
        Some(Piece {
            start: done.index,
            count,
            done,
            payload: Some(payload),
            fds,
        })
    }
}

impl<S: Source> Feed<S> {
    /// The payloads of the item that was running and of the items not started, when a
    /// chunk of `count` items died after `finished` of them; `None` when the source
    /// cannot cut them.
    #[allow(clippy::type_complexity)]
    fn split_after(
        &self,
        finished: u32,
        count: u32,
        payload: &[u8],
    ) -> Option<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        let n = finished.min(count);
        let running = if n < count {
            Some(self.source.split(payload, n, 1)?)
        } else {
            None
        };
        let rest = if n + 1 < count {
            Some(self.source.split(payload, n + 1, count - n - 1)?)
        } else {
            None
        };
        Some((running, rest))
    }

    /// A chunk whose worker died inside it, having reported its items: the finished ones
    /// make a piece, the one running fails alone (or is sent again alone, within the
    /// pool's retries), the ones not started (`parts`, from `split_after`) are sent again
    /// as a job.
    fn after_death(
        &mut self,
        done: Done,
        partial: crate::Partial,
        count: u32,
        (running, rest): (Option<Vec<u8>>, Option<Vec<u8>>),
        fds: &Option<JobFds>,
    ) -> Vec<Piece> {
        let start = done.index;
        let n = partial.finished.min(count);
        let mut pieces = Vec::new();
        if n > 0 {
            pieces.push(Piece {
                start,
                count: n,
                done: Done {
                    index: start,
                    outcome: Ok(partial.results),
                    nanos: done.nanos,
                    pid: done.pid,
                    partial: None,
                },
                payload: None,
                fds: fds.clone(),
            });
        }
        if let Some(one) = running {
            let at = start + u64::from(n);
            match done.outcome {
                Err(e)
                    if matches!(e.kind(), TaskErrorKind::WorkerDied { .. })
                        && e.attempts() <= self.retries =>
                {
                    self.submit_part(at, 1, one, fds.clone(), e.attempts());
                }
                Err(e) => pieces.push(local_piece(at, 1, e.with_index(at))),
                Ok(_) => {
                    let kind = TaskErrorKind::Protocol {
                        message: "a chunk's worker died, yet its result is whole".into(),
                    };
                    pieces.push(local_piece(at, 1, TaskError::new(kind, at, done.pid, 0)));
                }
            }
        }
        if let Some(tail) = rest {
            self.submit_part(
                start + u64::from(n) + 1,
                count - n - 1,
                tail,
                fds.clone(),
                0,
            );
        }
        pieces
    }

    /// Submits `count` items from `start` (part of a job that ended early), `attempts`
    /// being the times they already ran in a worker that died.
    fn submit_part(
        &mut self,
        start: u64,
        count: u32,
        payload: Vec<u8>,
        fds: Option<JobFds>,
        attempts: u32,
    ) {
        let payload = Arc::new(payload);
        self.payload_bytes += payload.len();
        self.jobs
            .insert(start, (count, payload.clone(), fds.clone()));
        let job = Job {
            func: self.func.clone(),
            payload,
            index: start,
            weight: count,
            timeout: self.timeout,
            fds,
            attempts,
        };
        if let Err(e) = self.batch.submit([job]) {
            self.refused(&[start], e);
        }
    }
}

impl<S> Feed<S> {
    fn counted(&mut self, p: Piece) -> Piece {
        if let Some(t) = &mut self.progress {
            t.advance(u64::from(p.count));
        }
        p
    }

    /// Counts `n` failed items for the progress report (the front knows which items of
    /// a job failed; [`recv`](Feed::recv) counts only finished ones).
    pub fn note_failed(&mut self, n: u64) {
        if let Some(t) = &mut self.progress
            && n > 0
        {
            t.failed(n);
        }
    }

    /// Makes the last progress report now (the call ended, or stops here on an error);
    /// dropping the feed does it too.
    pub fn finish_progress(&mut self) {
        if let Some(t) = &mut self.progress {
            t.finish();
        }
    }

    /// Where a front records the outcomes of the jobs it decodes (see
    /// [`Stats`](crate::Stats)).
    pub fn recorder(&self) -> Recorder {
        self.batch.recorder()
    }

    /// Items taken from the source so far.
    pub fn pulled(&self) -> u64 {
        self.next_index
    }

    /// Jobs submitted and not yet received.
    pub fn in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// Bytes of the encoded arguments of the jobs submitted and not yet received.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Whether no more input will be pulled (the source ended, or the call was refused).
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }
}

fn local_piece(start: u64, count: u32, e: TaskError) -> Piece {
    Piece {
        start,
        count,
        done: Done {
            index: start,
            outcome: Err(e),
            nanos: 0,
            pid: None,
            partial: None,
        },
        payload: None,
        fds: None,
    }
}

/// Finished pieces put back in input order: a piece comes out once every item before it
/// has.
#[derive(Debug)]
pub struct Reorder<T> {
    waiting: BTreeMap<u64, (u32, usize, T)>,
    next: u64,
    bytes: usize,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            next: 0,
            bytes: 0,
        }
    }
}

impl<T> Reorder<T> {
    /// Holds `value`, covering items `start..start + count` and costing `bytes`.
    pub fn insert(&mut self, start: u64, count: u32, bytes: usize, value: T) {
        self.bytes += bytes;
        self.waiting.insert(start, (count, bytes, value));
    }

    /// The next piece in order, if it is here.
    pub fn pop(&mut self) -> Option<T> {
        let (count, bytes, value) = self.waiting.remove(&self.next)?;
        self.next += u64::from(count);
        self.bytes -= bytes;
        Some(value)
    }

    /// Pieces held back.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Bytes held back.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Index of the next item to come out.
    pub fn next_index(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_come_out_in_input_order() {
        let mut r = Reorder::default();
        r.insert(3, 2, 10, "c");
        assert_eq!(r.pop(), None);
        r.insert(0, 3, 5, "a");
        assert_eq!(r.bytes(), 15);
        assert_eq!(r.pop(), Some("a"));
        assert_eq!(r.pop(), Some("c"));
        assert_eq!(r.next_index(), 5);
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }
}
