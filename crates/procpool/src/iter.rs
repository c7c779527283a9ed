//! Feeding input to a pool lazily and handing results back: the machinery under `map`,
//! `imap` and `imap_unordered`.
//!
//! The engine's [`Feed`] decides how many items go into a job and how much is in flight
//! (see its docs for the bounds); this module only encodes items into chunks
//! ([`Items`], the front's [`Source`]), decodes finished jobs and presents them.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
#[cfg(feature = "futures")]
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use procpool_engine::{
    Engine, Feed, Limits, Piece, Pulled, Recorder, Reorder, Source, TaskErrorKind,
};

use crate::codec::{self, Value};
use crate::encodes_as::{self, EncodesAs, sealed};
use crate::error::Error;
use crate::job::items::{self, Layout};
use crate::job::outcome::ChunkOut;
use crate::passfd;
use crate::progress::Watch;

/// Descriptors a chunk takes before it ends (items holding descriptors each of their own;
/// handles to one shared value share theirs): well under the engine's hard limit, and
/// under the default limit of open files with a few jobs in flight.
const FDS_PER_JOB: usize = 128;

/// A typed input encoded on demand into chunk payloads.
pub(crate) struct Items<A, I> {
    input: I,
    layout: Layout,
    /// The encoding of an item pulled but left for the next job (it would have taken
    /// this one past the size limit).
    carry: Option<Vec<u8>>,
    /// The descriptors of the carried item (its slots count from 0, as it opens the next
    /// job).
    carry_fds: Vec<OwnedFd>,
    /// Why the next item could not be encoded (reported by the next `fill`).
    failed: Option<TaskErrorKind>,
    /// Descriptors attached by the last `fill` (see `passfd`).
    fds: Option<procpool_engine::JobFds>,
    _a: PhantomData<fn(A)>,
}

impl<A, I> std::fmt::Debug for Items<A, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items")
            .field("carry", &self.carry.as_ref().map(Vec::len))
            .field("carry_fds", &self.carry_fds.len())
            .finish_non_exhaustive()
    }
}

impl<A: Value, I: Iterator<Item: EncodesAs<A>>> Items<A, I> {
    /// [`Source::fill`] inside an encoding context.
    fn fill_items(&mut self, out: &mut Vec<u8>, limits: Limits) -> Pulled {
        if let Some(kind) = self.failed.take() {
            return Pulled::Failed(kind);
        }
        items::begin_chunk::<A>(out, self.layout);
        if let Some(size) = codec::plain_size::<A>() {
            return self.fill_plain(out, limits, size);
        }
        let n = limits.items.min(items::max_plain::<A>(self.layout));
        let mut count = 0u32;
        let body = out.len();
        if let Some(bytes) = self.carry.take() {
            out.extend_from_slice(&bytes);
            count = 1;
        }
        while (count as usize) < n {
            let Some(a) = self.input.next() else {
                break;
            };
            let mark = out.len();
            // Plain numbers and bytes hold no descriptors: nothing to track.
            let track = !codec::has_fast_path::<A>();
            let (fds, refs) = if track {
                (passfd::attached(), passfd::references())
            } else {
                (0, 0)
            };
            if let Err(kind) = encodes_as::push_arg(out, self.layout, &a) {
                if count == 0 {
                    return Pulled::Failed(kind);
                }
                self.failed = Some(kind);
                break;
            }
            if count > 0
                && (items::past_limit::<A>(out, self.layout)
                    || out.len() > limits.hard_bytes
                    || (track && passfd::attached() > FDS_PER_JOB))
            {
                // Fits alone: it opens the next job.
                if track && passfd::references() > refs {
                    // Its slots were numbered for this job: encoded again for the next.
                    passfd::rollback(fds);
                    out.truncate(mark);
                    let enc = passfd::Encoding::begin();
                    let mut bytes = Vec::new();
                    if let Err(kind) = encodes_as::push_arg(&mut bytes, self.layout, &a) {
                        self.failed = Some(kind);
                        break;
                    }
                    self.carry_fds = enc.finish_vec();
                    self.carry = Some(bytes);
                } else {
                    self.carry = Some(out[mark..].to_vec());
                }
                out.truncate(mark);
                break;
            }
            count += 1;
            if count == 1 && n > 1 {
                // Room for the chunk at the first item's size, at once: a buffer grown by
                // doubling costs a copy of all it holds each time.
                let per = out.len() - body;
                let want = per
                    .saturating_mul(n)
                    .min(limits.soft_bytes.min(limits.hard_bytes))
                    .saturating_add(per);
                out.reserve(want.saturating_sub(out.len()));
            }
            if out.len() >= limits.soft_bytes {
                break;
            }
        }
        if count == 0 {
            return Pulled::End;
        }
        items::end_chunk(out, count);
        Pulled::Items(count)
    }
}

impl<A: Value, I: Iterator<Item: EncodesAs<A>>> Items<A, I> {
    /// [`fill_items`](Self::fill_items) for plain numbers of `size` bytes: packed, they
    /// hold no descriptors and their size is known, so the chunk takes as many as the
    /// limits allow in one reservation, with no check per item.
    #[inline]
    fn fill_plain(&mut self, out: &mut Vec<u8>, limits: Limits, size: usize) -> Pulled {
        let by_bytes = limits
            .soft_bytes
            .min(limits.hard_bytes)
            .saturating_sub(out.len())
            / size;
        let n = limits
            .items
            .min(items::max_plain::<A>(self.layout))
            .min(by_bytes.max(1))
            .min(u32::MAX as usize - 1);
        out.reserve(n * size);
        let mut count = 0u32;
        // The values' bytes go straight into the room reserved, the length set once at
        // the end: no check and no update of the vector per item.
        let mut len = out.len();
        for a in self.input.by_ref().take(n) {
            match sealed::Sealed::<A>::form(&a) {
                Ok(v) => {
                    // SAFETY: `A` is a primitive number of `size` bytes (`plain_size`),
                    // any of whose values is its bytes; the room for the `n - count`
                    // values still to come is reserved past `len` (above, and again after
                    // a value pushed the general way below).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            std::ptr::from_ref(v).cast::<u8>(),
                            out.as_mut_ptr().add(len),
                            size,
                        );
                    }
                    len += size;
                }
                Err(_) => {
                    // SAFETY: the bytes up to `len` were written above.
                    unsafe { out.set_len(len) };
                    if let Err(kind) = encodes_as::push_arg(out, self.layout, &a) {
                        // Never for a number; kept as for any item.
                        if count == 0 {
                            return Pulled::Failed(kind);
                        }
                        self.failed = Some(kind);
                        break;
                    }
                    len = out.len();
                    // Room for the values still to come, whatever this one took.
                    out.reserve((n - count as usize) * size);
                }
            }
            count += 1;
        }
        // SAFETY: the bytes up to `len` were written above (`len` is never less than the
        // vector's length).
        unsafe { out.set_len(len) };
        if count == 0 {
            return Pulled::End;
        }
        items::end_chunk(out, count);
        Pulled::Items(count)
    }
}

impl<A: Value, I: Iterator<Item: EncodesAs<A>>> Source for Items<A, I> {
    fn fill(&mut self, out: &mut Vec<u8>, limits: Limits) -> Pulled {
        if codec::has_fast_path::<A>() {
            return self.fill_items(out, limits);
        }
        let enc = passfd::Encoding::begin_with(std::mem::take(&mut self.carry_fds));
        let pulled = self.fill_items(out, limits);
        let fds = enc.finish();
        // Only a job made of items carries them (a failed item's are closed).
        self.fds = if matches!(pulled, Pulled::Items(_)) {
            fds
        } else {
            None
        };
        pulled
    }

    fn take_fds(&mut self) -> Option<procpool_engine::JobFds> {
        self.fds.take()
    }

    fn split(&self, payload: &[u8], from: u32, count: u32) -> Option<Vec<u8>> {
        items::range_payload::<A>(payload, from, count)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let extra = usize::from(self.carry.is_some() || self.failed.is_some());
        let (lo, hi) = self.input.size_hint();
        (
            lo.saturating_add(extra),
            hi.and_then(|h| h.checked_add(extra)),
        )
    }
}

/// A call's feed of typed items, decoding each finished job.
pub(crate) struct Feeder<A, R, I> {
    feed: Feed<Items<A, I>>,
    layout: Layout,
    recorder: Recorder,
    /// The call's span (`map`, `imap` or `imap_unordered`), entered while it waits.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R, I> std::fmt::Debug for Feeder<A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder")
            .field("pulled", &self.feed.pulled())
            .field("in_flight", &self.feed.in_flight())
            .finish_non_exhaustive()
    }
}

impl<A, R, I> Feeder<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: EncodesAs<A>>,
{
    pub(crate) fn new(
        engine: &Engine,
        input: I,
        func: Arc<[u8]>,
        layout: Layout,
        chunk_size: Option<usize>,
        timeout: Option<Duration>,
    ) -> Self {
        let items = Items {
            input,
            layout,
            carry: None,
            carry_fds: Vec::new(),
            failed: None,
            fds: None,
            _a: PhantomData,
        };
        let feed = Feed::new(engine, items, func, chunk_size, timeout);
        Self {
            recorder: feed.recorder(),
            feed,
            layout,
            #[cfg(feature = "tracing")]
            span: tracing::Span::none(),
            _types: PhantomData,
        }
    }

    /// Refuses the call: its first item is this error, and no input is pulled.
    pub(crate) fn refuse(&mut self, e: procpool_engine::PoolError) {
        self.feed.refuse(e);
    }

    /// Reports the call's progress (see [`Call::on_progress`](crate::Call::on_progress)),
    /// and with the `tracing` feature opens the call's span, named `name`.
    pub(crate) fn observe(&mut self, watch: Option<&Watch>, name: &'static str) {
        if let Some(w) = watch {
            self.feed.set_progress(w.callback.clone(), w.interval);
        }
        #[cfg(feature = "tracing")]
        {
            self.span = crate::progress::call_span(name, self.size_hint());
        }
        let _ = name;
    }

    /// Pulls no more input; what was submitted still comes back.
    pub(crate) fn stop_input(&mut self) {
        self.feed.stop_input();
    }

    /// Items pulled from the input so far.
    pub(crate) fn pulled(&self) -> u64 {
        self.feed.pulled()
    }

    /// Jobs submitted and not yet received.
    pub(crate) fn in_flight(&self) -> usize {
        self.feed.in_flight()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.feed.exhausted() {
            return (0, Some(0));
        }
        self.feed.source().size_hint()
    }

    /// The next finished job's results, with the bytes they were sent back in; `None`
    /// when nothing is outstanding. `held_bytes`: what the caller holds back.
    fn recv(&mut self, held_bytes: usize) -> Option<(ChunkOut<R>, usize)> {
        let piece = self.recv_piece(held_bytes)?;
        Some(self.open(piece))
    }

    /// [`recv`](Self::recv) for async callers.
    #[cfg(feature = "futures")]
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        held: usize,
    ) -> Poll<Option<(ChunkOut<R>, usize)>> {
        self.feed
            .poll_recv(cx, held)
            .map(|p| p.map(|piece| self.open(piece)))
    }

    /// The next finished job, not decoded yet; `None` when nothing is outstanding.
    fn recv_piece(&mut self, held_bytes: usize) -> Option<Piece> {
        #[cfg(feature = "tracing")]
        let _entered = self.span.enter();
        self.feed.recv(held_bytes)
    }

    /// Decodes a finished job, sending again the items its worker did not run.
    fn open(&mut self, piece: Piece) -> (ChunkOut<R>, usize) {
        self.open_to(piece, Sink::None)
    }

    /// [`open`](Self::open), the values going to `sink` when given (see
    /// [`ChunkOut::decode_into`]).
    fn open_to(&mut self, piece: Piece, sink: Sink<'_, R>) -> (ChunkOut<R>, usize) {
        let bytes = piece.bytes();
        let Piece {
            start,
            count,
            done,
            payload,
            fds,
        } = piece;
        let (pid, nanos) = (done.pid, done.nanos);
        let codec = self.layout.codec;
        let chunk = match sink {
            Sink::Caller(out) => ChunkOut::decode_into(done, count, codec, out),
            Sink::Spare(v) => ChunkOut::decode_held(done, count, codec, v),
            Sink::None => ChunkOut::decode(done, count, codec),
        };
        chunk.record(&self.recorder, pid, nanos);
        self.feed.note_failed(chunk.failures());
        match (chunk.not_run(), &payload) {
            (Some(from), Some(payload)) => self.resubmit(start, count, from, payload, fds),
            (Some(from), None) => {
                // The finished items a dead worker reported (a piece without a payload)
                // cannot end with items not run: the report is forged. Those items fail
                // here rather than vanish.
                let kind = TaskErrorKind::Protocol {
                    message: "a dead worker's report of its finished items stops early".into(),
                };
                self.feed
                    .fail_locally(start + u64::from(from), count - from, kind);
            }
            (None, _) => {}
        }
        if let Some(payload) = payload {
            self.feed.give_back(payload);
        }
        (chunk, bytes)
    }

    /// The worker stopped the chunk of `count` items at `start` after `from` of them (its
    /// results would have grown past the transport bound): the rest go out again.
    #[cold]
    fn resubmit(
        &mut self,
        start: u64,
        count: u32,
        from: u32,
        payload: &[u8],
        fds: Option<procpool_engine::JobFds>,
    ) {
        let index = start + u64::from(from);
        match items::tail_payload::<A>(payload, from) {
            // The tail's slots refer to the whole job's descriptors: they go along.
            Some(tail) => self.feed.resubmit_with_fds(index, count - from, tail, fds),
            None => {
                let kind = TaskErrorKind::Codec {
                    message: "a chunk's payload could not be split".into(),
                };
                self.feed.fail_locally(index, count - from, kind);
            }
        }
    }
}

/// Where a finished chunk's values are decoded to (see `Feeder::open_to`).
enum Sink<'a, R> {
    /// Appended to the caller's results, which end just before the chunk.
    Caller(&'a mut Vec<R>),
    /// Into this vector, which the chunk holds until its turn.
    Spare(Vec<R>),
    /// Into a vector of the chunk's own.
    None,
}

/// Results of [`Pool::imap`](crate::Pool::imap), in input order.
///
/// Input is pulled lazily: only while the jobs held (running, or finished and waiting for
/// their turn) stay under a bound. Dropping the iterator drops the queued jobs and
/// discards results still to come.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// let mut results = pool.imap(|x: u64| x * 3, 0..); // an endless input
/// assert_eq!(results.next().unwrap()?, 0);
/// assert_eq!(results.next().unwrap()?, 3);
/// drop(results); // the rest of the input is never pulled
/// # Ok(()) }
/// ```
pub struct Imap<A, R, I> {
    feeder: Feeder<A, R, I>,
    waiting: Reorder<ChunkOut<R>>,
    current: Option<ChunkOut<R>>,
    /// Results are all collected anyway (`map`): holding back costs no extra memory, so
    /// it never stops the input.
    collect_all: bool,
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
    I: Iterator<Item: EncodesAs<A>>,
{
    pub(crate) fn new(mut feeder: Feeder<A, R, I>, collect_all: bool) -> Self {
        if collect_all {
            // A `map` drains its input within the call: a join waits for it. It collects
            // every result: the next chunk is encoded while the workers run.
            feeder.feed.keep_open();
            feeder.feed.encode_ahead();
        } else {
            // The caller takes results one by one: hold a few chunks, not megabytes.
            feeder.feed.follow_consumer();
        }
        Self {
            feeder,
            waiting: Reorder::default(),
            current: None,
            collect_all,
        }
    }

    /// Items taken from the input so far.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut it = pool.imap(|x: u64| x, 0..1000);
    /// it.next().unwrap()?;
    /// assert!(it.pulled() >= 1 && it.pulled() <= 1000); // lazily, not all at once
    /// # Ok(()) }
    /// ```
    pub fn pulled(&self) -> u64 {
        self.feeder.pulled()
    }

    /// Jobs submitted to workers and not yet finished.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut it = pool.imap(|x: u64| x, 0..4);
    /// let _ = it.in_flight(); // jobs out with the workers now
    /// let all: Vec<u64> = it.by_ref().collect::<Result<_, _>>()?;
    /// assert_eq!((all.len(), it.in_flight()), (4, 0));
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> usize {
        self.feeder.in_flight()
    }

    /// Finished jobs held back until the jobs before them finish.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut it = pool.imap(|x: u64| x, 0..4);
    /// let _: Vec<u64> = it.by_ref().collect::<Result<_, _>>()?;
    /// assert_eq!(it.buffered(), 0); // nothing left waiting for its turn
    /// # Ok(()) }
    /// ```
    pub fn buffered(&self) -> usize {
        self.waiting.len()
    }

    /// Collects every result in input order into `out` (`map`): the first failure in
    /// input order stops the input at once and is returned, as with
    /// [`next_chunk`](Self::next_chunk) and `fail_fast`. A finished job that comes next
    /// in order is decoded straight into `out`; one that comes early waits decoded, as
    /// in `next_chunk`. `grew` is called with `out` after each job's values went in.
    pub(crate) fn collect_all_into(
        &mut self,
        out: &mut Vec<R>,
        mut grew: impl FnMut(&[R]),
    ) -> Result<(), Error> {
        if let Some(c) = self.current.take() {
            c.extend_into(out)?;
        }
        // Vectors of chunks that came out of order, emptied into `out`, for the next.
        let mut spares = Vec::new();
        loop {
            while let Some(c) = self.waiting.pop() {
                c.extend_into_reusing(out, &mut spares)?;
            }
            grew(out);
            let Some(piece) = self.feeder.recv_piece(0) else {
                return Ok(());
            };
            // In order (nothing waits: `pop` took all that could come out), and with
            // values to decode.
            let in_order = piece.start == self.waiting.next_index() && self.waiting.is_empty();
            let sink = if in_order {
                Sink::Caller(&mut *out)
            } else {
                Sink::Spare(spares.pop().unwrap_or_default())
            };
            let (c, bytes) = self.feeder.open_to(piece, sink);
            if c.has_errors() {
                self.feeder.stop_input();
            }
            self.waiting.insert(c.start(), c.len(), bytes, c);
        }
    }

    /// The next job's results in input order, whole. With `fail_fast`, a job with a
    /// failed item stops the input at once (no more items are pulled), and the jobs
    /// before it still come out first, so the first failure in input order is the one
    /// the caller meets.
    pub(crate) fn next_chunk(&mut self, fail_fast: bool) -> Option<ChunkOut<R>> {
        match self.step(fail_fast, |f, held| Poll::Ready(f.recv(held))) {
            Poll::Ready(c) => c,
            Poll::Pending => unreachable!("a blocking receive is always ready"),
        }
    }

    /// The next item for async callers (see the `Stream` impl).
    #[cfg(feature = "futures")]
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<R, Error>>> {
        loop {
            if let Some(c) = &mut self.current
                && let Some((_, r)) = c.next()
            {
                return Poll::Ready(Some(r));
            }
            self.current = None;
            match self.step(false, |f, held| f.poll_recv(cx, held)) {
                Poll::Ready(Some(c)) => self.current = Some(c),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// [`next_chunk`](Self::next_chunk) over a way to receive finished jobs.
    fn step(
        &mut self,
        fail_fast: bool,
        mut recv: impl FnMut(&mut Feeder<A, R, I>, usize) -> Poll<Option<(ChunkOut<R>, usize)>>,
    ) -> Poll<Option<ChunkOut<R>>> {
        if let Some(c) = self.current.take()
            && !c.is_empty()
        {
            return Poll::Ready(Some(c));
        }
        loop {
            if let Some(c) = self.waiting.pop() {
                return Poll::Ready(Some(c));
            }
            let held = if self.collect_all {
                0
            } else {
                self.waiting.bytes()
            };
            let (c, bytes) = match recv(&mut self.feeder, held) {
                Poll::Ready(Some(x)) => x,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if fail_fast && c.has_errors() {
                self.feeder.stop_input();
            }
            self.waiting.insert(c.start(), c.len(), bytes, c);
        }
    }
}

impl<A, R, I> Iterator for Imap<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: EncodesAs<A>>,
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
        let (lo, hi) = self.feeder.size_hint();
        let cur = self.current.as_ref().map_or(0, |c| c.remaining());
        let pending = self.feeder.pulled() - self.waiting.next_index();
        let held = (pending as usize).saturating_add(cur);
        (lo.saturating_add(cur), hi.and_then(|h| h.checked_add(held)))
    }
}

/// Results of [`Pool::imap_unordered`](crate::Pool::imap_unordered), as they finish,
/// each with its input index.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// let mut total = 0;
/// for (index, result) in pool.imap_unordered(|x: u64| x * x, [1, 2, 3]) {
///     let square = result?;
///     assert_eq!(square, [1, 4, 9][index]);
///     total += square;
/// }
/// assert_eq!(total, 14);
/// # Ok(()) }
/// ```
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
    I: Iterator<Item: EncodesAs<A>>,
{
    pub(crate) fn new(mut feeder: Feeder<A, R, I>) -> Self {
        feeder.feed.follow_consumer();
        Self {
            feeder,
            current: None,
        }
    }

    /// Items taken from the input so far.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut it = pool.imap_unordered(|x: u64| x, 0..10);
    /// it.next();
    /// assert!(it.pulled() >= 1);
    /// # Ok(()) }
    /// ```
    pub fn pulled(&self) -> u64 {
        self.feeder.pulled()
    }

    /// Jobs submitted to workers and not yet finished.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut it = pool.imap_unordered(|x: u64| x, 0..4);
    /// assert_eq!(it.by_ref().count(), 4);
    /// assert_eq!(it.in_flight(), 0);
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> usize {
        self.feeder.in_flight()
    }

    /// The next result for async callers (see the `Stream` impl).
    #[cfg(feature = "futures")]
    pub(crate) fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, Result<R, Error>)>> {
        loop {
            if let Some(c) = &mut self.current
                && let Some((i, r)) = c.next()
            {
                return Poll::Ready(Some((i as usize, r)));
            }
            self.current = None;
            match self.feeder.poll_recv(cx, 0) {
                Poll::Ready(Some((c, _))) => self.current = Some(c),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<A, R, I> Iterator for ImapUnordered<A, R, I>
where
    A: Value,
    R: Value,
    I: Iterator<Item: EncodesAs<A>>,
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
            self.current = Some(self.feeder.recv(0)?.0);
        }
    }
}
