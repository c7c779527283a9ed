//! The layout of a chunk (one job of one or more items): the arguments the parent writes
//! and the results the worker writes back, item by item, so that an item whose value
//! fails to encode, decode or fit fails alone, under its own index.
//!
//! Arguments: a header (item count `u32`, mode, codec, per-item limit `u32`, all
//! little-endian), then either the values packed (plain numbers, see
//! [`codec::plain_size`]) or, for each item, its length (`u32`) and its encoding.
//!
//! Results: a mode byte, then either the values packed (plain results, all succeeded) or,
//! for each item, its length (`u32`), a tag and the tag's body. A length of [`STOP`]
//! ends the results of a chunk the worker cut short: the items after it were not run,
//! and the parent sends them again as a job of their own.
//!
//! # Size limits
//! The pool's `max_message_size` is a limit *per item*: an argument or a result over it
//! fails that item with `TooLarge`. A chunk's arguments are cut to stay within it (an item
//! that would take a chunk past it starts the next one). A chunk's results together may
//! be larger: the engine moves whole jobs under [`transport_bound`] (twice the item
//! limit, at least 64 MiB, at most 1.5 GiB unless one item needs more), and a worker whose
//! results come within one item's limit of that bound stops the chunk there, so no job's
//! results can pass it.

use std::panic::{self, AssertUnwindSafe};

use procpool_engine::{Failure, TaskErrorKind};

use crate::codec::format::{self, Codec};
use crate::codec::roundtrip::{self, Refusal};
use crate::codec::{self, Value};
use crate::passfd;

/// How a call's items are encoded: the codec and the per-item size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) codec: Codec,
    pub(crate) limit: usize,
}

/// Length of a chunk's header.
pub(crate) const HEADER: usize = 10;
/// How a chunk's items (or results) are laid out after the header.
const MODE_ENCODED: u8 = 0;
/// Plain values, packed; for results, all succeeded.
const MODE_PLAIN: u8 = 1;
/// The length that marks where a worker stopped a chunk.
const STOP: u32 = u32::MAX;

const TAG_OK: u8 = 0;
const TAG_PANIC: u8 = 1;
const TAG_CODEC: u8 = 2;
const TAG_TOO_LARGE: u8 = 3;

/// The largest per-item limit: the engine's largest message, less a chunk's overhead.
pub(crate) const MAX_ITEM_LIMIT: usize = (u32::MAX as usize) - 1024 - 64;
/// The smallest bound on a whole job's payload or results.
const MIN_TRANSPORT: usize = 64 << 20;
/// Where the bound stops growing with the item limit: a length past 2^31 from a worker is
/// refused as bogus with the default limit.
const SOFT_MAX_TRANSPORT: usize = 3 << 29;

/// The engine's bound on a whole job's payload or results, for a per-item limit: twice
/// the limit, at least 64 MiB, at most 1.5 GiB (unless one item needs more).
pub(crate) fn transport_bound(limit: usize) -> usize {
    limit
        .saturating_mul(2)
        .saturating_add(4096)
        .clamp(MIN_TRANSPORT, SOFT_MAX_TRANSPORT)
        .max(limit.saturating_add(64 << 10))
        .min((u32::MAX as usize) - 1024)
}

/// A chunk's header, as the worker reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) count: u32,
    plain: bool,
    pub(crate) layout: Layout,
}

/// Starts a chunk payload of `A`s; [`end_chunk`] writes its count.
pub(crate) fn begin_chunk<A: Value>(buf: &mut Vec<u8>, layout: Layout) {
    buf.clear();
    // Room for the header and a small item at once: a growing buffer costs a realloc
    // each time, which shows with one item per job.
    buf.reserve(HEADER + 22);
    buf.extend_from_slice(&[0; 4]);
    buf.push(if codec::plain_size::<A>().is_some() {
        MODE_PLAIN
    } else {
        MODE_ENCODED
    });
    buf.push(layout.codec.to_byte());
    let limit = u32::try_from(layout.limit).unwrap_or(u32::MAX);
    buf.extend_from_slice(&limit.to_le_bytes());
}

/// The most plain values a chunk may carry within the item limit (no bound for other
/// types: [`past_limit`] cuts their chunks).
#[inline]
pub(crate) fn max_plain<A: Value>(layout: Layout) -> usize {
    codec::plain_size::<A>().map_or(usize::MAX, |n| (layout.limit / n).max(1))
}

/// Whether a chunk payload of `A`s has passed the item limit (never for plain values,
/// whose count [`max_plain`] bounds).
#[inline]
pub(crate) fn past_limit<A: Value>(payload: &[u8], layout: Layout) -> bool {
    codec::plain_size::<A>().is_none() && payload.len() - HEADER > layout.limit
}

/// Writes the count of a chunk payload.
pub(crate) fn end_chunk(buf: &mut [u8], count: u32) {
    buf[..4].copy_from_slice(&count.to_le_bytes());
}

/// Appends one argument to a chunk payload begun by [`begin_chunk`].
///
/// # Errors
/// Why the item fails (the codec's message, its size over the limit, or the panic of its
/// `Serialize`), in which case `buf` is left as it was.
#[inline]
pub(crate) fn push_arg<A: Value>(
    buf: &mut Vec<u8>,
    layout: Layout,
    a: &A,
) -> Result<(), TaskErrorKind> {
    if codec::plain_size::<A>().is_some() {
        codec::put_plain(buf, a);
        return Ok(());
    }
    push_encoded::<A>(buf, layout, |buf| format::encode(layout.codec, buf, a))
}

/// Appends one argument of type `A` given as `form`, a borrowed form whose serde
/// encoding is an `A`'s (a `&str` for a `String`: see [`EncodesAs`](crate::EncodesAs)),
/// without making an `A`. Never a plain type.
///
/// # Errors
/// As [`push_arg`].
#[inline]
pub(crate) fn push_arg_as<A: Value, S: serde::Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    layout: Layout,
    form: &S,
) -> Result<(), TaskErrorKind> {
    debug_assert!(codec::plain_size::<A>().is_none());
    push_encoded::<A>(buf, layout, |buf| {
        format::encode_as::<A, S>(layout.codec, buf, form)
    })
}

/// Appends one argument of type `A` that `encode` writes, with its length before it.
#[inline]
fn push_encoded<A: Value>(
    buf: &mut Vec<u8>,
    layout: Layout,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), TaskErrorKind> {
    let mark = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let r = encode_checked::<A>(buf, layout, mark + 4, encode, "argument");
    if r.is_err() {
        buf.truncate(mark);
    } else {
        let len = (buf.len() - mark - 4) as u32;
        buf[mark..mark + 4].copy_from_slice(&len.to_le_bytes());
    }
    r
}

/// Encodes a `T` after `from` with `encode`, then checks its size and (once per type)
/// its round trip.
#[inline]
fn encode_checked<T: Value>(
    buf: &mut Vec<u8>,
    layout: Layout,
    from: usize,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    what: &str,
) -> Result<(), TaskErrorKind> {
    let fds = passfd::attached();
    let refs = passfd::references();
    let r = encode_and_check::<T>(buf, layout, from, encode, what, refs);
    if r.is_err() {
        // Descriptors attached by a discarded encoding are closed.
        passfd::rollback(fds);
    }
    r
}

#[inline]
fn encode_and_check<T: Value>(
    buf: &mut Vec<u8>,
    layout: Layout,
    from: usize,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    what: &str,
    refs: u64,
) -> Result<(), TaskErrorKind> {
    match panic::catch_unwind(AssertUnwindSafe(|| encode(buf))) {
        Ok(Ok(())) => {}
        Ok(Err(m)) => {
            return Err(TaskErrorKind::Codec {
                message: format!("the {what} could not be serialized: {m}"),
            });
        }
        Err(p) => {
            buf.truncate(from);
            return Err(panicked(&*p));
        }
    }
    let size = buf.len() - from;
    if size > layout.limit {
        return Err(TaskErrorKind::TooLarge {
            size: size as u64,
            limit: layout.limit as u64,
        });
    }
    if passfd::references() > refs {
        // A value holding descriptors decodes only where they arrive (in the worker): its
        // round trip is not tried here.
        return Ok(());
    }
    roundtrip::check::<T>(layout.codec, &buf[from..]).map_err(|r| {
        let message = match r {
            Refusal::Type(m) => m,
            Refusal::Value(m) => format!("the {what} could not be deserialized: {m}"),
        };
        TaskErrorKind::Codec { message }
    })
}

/// The kind of a failure that was a panic.
#[cold]
pub(crate) fn panicked(p: &(dyn std::any::Any + Send)) -> TaskErrorKind {
    let (message, location) =
        procpool_engine::take_last_panic().unwrap_or_else(|| (payload_message(p), None));
    let backtrace = procpool_engine::take_last_backtrace();
    TaskErrorKind::Panic {
        message,
        location,
        backtrace,
    }
}

fn payload_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned())
}

/// The payload of the items of `payload` (a chunk of `A`s) from the `from`-th on: the
/// part of a chunk a worker did not run.
pub(crate) fn tail_payload<A: Value>(payload: &[u8], from: u32) -> Option<Vec<u8>> {
    let (h, _) = read_header(payload).ok()?;
    range_payload::<A>(payload, from, h.count.checked_sub(from)?)
}

/// The payload of items `from..from + count` of `payload` (a chunk of `A`s), cut at the
/// byte level (nothing is decoded).
pub(crate) fn range_payload<A: Value>(payload: &[u8], from: u32, count: u32) -> Option<Vec<u8>> {
    let (h, mut body) = read_header(payload).ok()?;
    if count == 0 || from.checked_add(count)? > h.count {
        return None;
    }
    let take = if let Some(n) = codec::plain_size::<A>() {
        body = body.get(n * from as usize..)?;
        n.checked_mul(count as usize)?
    } else {
        for _ in 0..from {
            let (len, rest) = take_len(body)?;
            body = rest.get(len..)?;
        }
        let mut rest = body;
        for _ in 0..count {
            let (len, r) = take_len(rest)?;
            rest = r.get(len..)?;
        }
        body.len() - rest.len()
    };
    let body = body.get(..take)?;
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.extend_from_slice(&payload[..HEADER]);
    v.extend_from_slice(body);
    end_chunk(&mut v, count);
    Some(v)
}

#[inline]
fn take_len(b: &[u8]) -> Option<(usize, &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*len) as usize, rest))
}

fn bad(message: &str) -> Failure {
    Failure::Codec {
        message: message.into(),
    }
}

/// Reads a chunk's header; returns it and the items.
pub(crate) fn read_header(payload: &[u8]) -> Result<(Header, &[u8]), Failure> {
    let (h, rest) = payload
        .split_first_chunk::<HEADER>()
        .ok_or_else(|| bad("chunk payload shorter than its header"))?;
    let count = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let plain = match h[4] {
        MODE_PLAIN => true,
        MODE_ENCODED => false,
        _ => return Err(bad("unknown chunk layout")),
    };
    let codec = Codec::from_byte(h[5]).ok_or_else(|| bad("unknown codec"))?;
    let limit = u32::from_le_bytes([h[6], h[7], h[8], h[9]]) as usize;
    let layout = Layout { codec, limit };
    Ok((
        Header {
            count,
            plain,
            layout,
        },
        rest,
    ))
}

/// The arguments of a chunk, one item at a time, in the worker.
pub(crate) struct Args<'a> {
    rest: &'a [u8],
    plain: Option<usize>,
}

impl<'a> Args<'a> {
    /// The arguments after a header, for `A`s.
    pub(crate) fn new<A: Value>(h: &Header, body: &'a [u8]) -> Result<Self, Failure> {
        let plain = match (h.plain, codec::plain_size::<A>()) {
            (true, Some(n)) if body.len() == n * h.count as usize => Some(n),
            (false, None) => None,
            _ => return Err(bad("packed arguments of the wrong size or type")),
        };
        Ok(Self { rest: body, plain })
    }

    /// The packed arguments not taken yet, when the arguments are packed numbers.
    #[inline]
    pub(crate) fn packed_rest(&self) -> Option<&'a [u8]> {
        self.plain.map(|_| self.rest)
    }

    /// Takes `n` packed arguments (read through [`packed_rest`](Self::packed_rest)).
    #[inline]
    pub(crate) fn skip_packed(&mut self, n: u32) {
        if let Some(size) = self.plain {
            self.rest = &self.rest[(n as usize * size).min(self.rest.len())..];
        }
    }

    /// The next item's bytes.
    #[inline]
    pub(crate) fn next_bytes(&mut self) -> Result<&'a [u8], Failure> {
        let len = match self.plain {
            Some(n) => n,
            None => {
                let (len, rest) = take_len(self.rest).ok_or_else(|| bad("truncated chunk"))?;
                self.rest = rest;
                len
            }
        };
        if len > self.rest.len() {
            return Err(bad("truncated chunk"));
        }
        let (item, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(item)
    }

    /// Decodes one argument; a failure (or a panic of its `Deserialize`) is that item's.
    #[inline]
    pub(crate) fn decode<A: Value>(&self, codec: Codec, bytes: &[u8]) -> Result<A, TaskErrorKind> {
        if self.plain.is_some() {
            return Ok(codec::read_plain::<A>(bytes));
        }
        match panic::catch_unwind(AssertUnwindSafe(|| format::decode::<A>(codec, bytes))) {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(m)) => Err(TaskErrorKind::Codec {
                message: format!("the argument could not be deserialized: {m}"),
            }),
            Err(p) => Err(panicked(&*p)),
        }
    }
}

/// The results of a chunk, as the worker writes them.
pub(crate) struct Results<'a> {
    out: &'a mut Vec<u8>,
    /// The size of each value while the results are packed.
    packed: Option<usize>,
    /// Items written.
    count: usize,
    layout: Layout,
    /// The job bound, less room for one more item.
    room: usize,
    /// Bytes of `out` the engine has recorded as they are (see `finished`).
    recorded: usize,
    /// Where finished items are recorded.
    log: procpool_engine::ItemLog,
}

impl<'a> Results<'a> {
    /// Starts the results of a chunk of `R`s.
    pub(crate) fn begin<R: Value>(out: &'a mut Vec<u8>, layout: Layout) -> Self {
        let packed = codec::plain_size::<R>();
        out.push(if packed.is_some() {
            MODE_PLAIN
        } else {
            MODE_ENCODED
        });
        Self {
            out,
            packed,
            count: 0,
            layout,
            room: transport_bound(layout.limit).saturating_sub(layout.limit.saturating_add(64)),
            recorded: 0,
            log: procpool_engine::ItemLog::current(),
        }
    }

    /// Tells the engine the items written so far are finished, so that if the worker dies
    /// in the next one, they are delivered (see `procpool_engine::items_finished`).
    /// `false`: no more can be recorded, and the chunk should stop here.
    #[inline]
    pub(crate) fn finished(&mut self) -> bool {
        let ok = self
            .log
            .finished(self.count as u32, self.out, self.recorded);
        if ok {
            self.recorded = self.out.len();
        }
        ok
    }

    /// Whether one more result might take the results past the transport bound (counting
    /// packed results at the size they would take as entries of their own, which a
    /// failure or a stop turns them into).
    #[inline]
    pub(crate) fn full(&self) -> bool {
        let size = match self.packed {
            Some(_) => 1 + self.count * (4 + 1 + 10),
            None => self.out.len(),
        };
        size > self.room
    }

    /// Ends the results here: the items not run yet are sent again by the parent.
    pub(crate) fn stop<R: Value>(&mut self) {
        self.unpack::<R>();
        self.out.extend_from_slice(&STOP.to_le_bytes());
    }

    /// Turns packed results into one entry per item, for a chunk with a failure.
    fn unpack<R: Value>(&mut self) {
        if self.packed.take().is_none() {
            return;
        }
        let packed = std::mem::take(self.out);
        self.recorded = 0;
        self.out.push(MODE_ENCODED);
        for v in codec::plain_values::<R>(&packed[1..]) {
            self.push_encoded(Ok(v));
        }
    }

    /// Runs `f` on packed arguments `args` (numbers) while the results are packed too:
    /// the general loop of a chunk (see `func::run_chunk`) without its per-item choices,
    /// each item still run under its own `catch_unwind` and recorded as finished.
    /// Returns how many arguments it took; it stops before an item when the results are
    /// full or could not be recorded, and after an item that panicked (its failure
    /// unpacks the results): the general loop goes on from there. `recorded` is whether
    /// the items so far were recorded, as that loop keeps it.
    #[inline]
    pub(crate) fn run_packed<A: Value, R: Value>(
        &mut self,
        f: fn(A) -> R,
        args: &[u8],
        recorded: &mut bool,
    ) -> u32 {
        let (Some(size), Some(rsize)) = (codec::plain_size::<A>(), self.packed) else {
            return 0;
        };
        // The results are written straight into room reserved for all of them, the
        // vector's length set once at the end (or before a failure is pushed).
        self.out.reserve(args.len() / size * rsize);
        let base = self.out.as_mut_ptr();
        let mut len = self.out.len();
        let mut k = 0u32;
        for bytes in args.chunks_exact(size) {
            if k > 0 && (self.full() || !*recorded) {
                break;
            }
            let a = codec::read_plain::<A>(bytes);
            k += 1;
            match panic::catch_unwind(AssertUnwindSafe(|| f(a))) {
                Ok(v) => {
                    self.count += 1;
                    // SAFETY: `R` is a primitive number of `rsize` bytes (`plain_size`);
                    // room for one per argument was reserved past the length `len`
                    // started at, and the vector is not touched until `set_len` below.
                    let done = unsafe {
                        std::ptr::write_unaligned(base.add(len).cast::<R>(), v);
                        len += rsize;
                        std::slice::from_raw_parts(base, len)
                    };
                    *recorded = self.log.finished(self.count as u32, done, self.recorded);
                    if *recorded {
                        self.recorded = len;
                    }
                }
                Err(p) => {
                    // SAFETY: the bytes up to `len` were written above.
                    unsafe { self.out.set_len(len) };
                    self.push_err::<R>(panicked(&*p));
                    *recorded = self.finished();
                    return k;
                }
            }
        }
        // SAFETY: the bytes up to `len` were written above.
        unsafe { self.out.set_len(len) };
        k
    }

    /// Appends one item's value.
    #[inline]
    pub(crate) fn push_ok<R: Value>(&mut self, v: R) {
        self.count += 1;
        if self.packed.is_some() {
            codec::put_plain(self.out, &v);
        } else {
            self.push_encoded(Ok(v));
        }
    }

    /// Appends one item's failure.
    #[cold]
    pub(crate) fn push_err<R: Value>(&mut self, kind: TaskErrorKind) {
        self.count += 1;
        self.unpack::<R>();
        self.push_encoded::<R>(Err(kind));
    }

    fn push_encoded<R: Value>(&mut self, r: Result<R, TaskErrorKind>) {
        let mark = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        let r = match r {
            Ok(v) => {
                self.out.push(TAG_OK);
                let from = self.out.len();
                encode_checked::<R>(
                    self.out,
                    self.layout,
                    from,
                    |buf| format::encode(self.layout.codec, buf, &v),
                    "result",
                )
            }
            Err(kind) => Err(kind),
        };
        if let Err(kind) = r {
            self.out.truncate(mark + 4);
            put_failure(self.out, &kind);
        }
        let len = (self.out.len() - mark - 4) as u32;
        self.out[mark..mark + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Appends a failed item's tag and body.
fn put_failure(out: &mut Vec<u8>, kind: &TaskErrorKind) {
    let r = match kind {
        TaskErrorKind::Panic {
            message,
            location,
            backtrace,
        } => {
            out.push(TAG_PANIC);
            codec::append(out, &(message, location, backtrace))
        }
        TaskErrorKind::TooLarge { size, limit } => {
            out.push(TAG_TOO_LARGE);
            codec::append(out, &(size, limit))
        }
        TaskErrorKind::Codec { message } => {
            out.push(TAG_CODEC);
            codec::append(out, message)
        }
        other => {
            out.push(TAG_CODEC);
            codec::append(out, &other.to_string())
        }
    };
    // Strings and numbers always encode.
    debug_assert!(r.is_ok());
}

/// Splits a chunk's results: packed plain values (all succeeded), or one entry per item.
pub(crate) fn split_results(bytes: &[u8]) -> Option<(bool, &[u8])> {
    let (&mode, rest) = bytes.split_first()?;
    match mode {
        MODE_PLAIN => Some((true, rest)),
        MODE_ENCODED => Some((false, rest)),
        _ => None,
    }
}

/// The range, in a chunk's results, of the body of its only entry when that entry is a
/// success filling the rest of the answer.
pub(crate) fn sole_ok_body(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let (packed, rest) = split_results(bytes)?;
    let (len, after) = take_len(rest)?;
    let (&tag, body) = after.split_first()?;
    (!packed && len == after.len() && tag == TAG_OK).then(|| bytes.len() - body.len()..bytes.len())
}

/// One item's entry in a chunk's results, decoded in the parent.
#[derive(Debug)]
pub(crate) enum Entry<R> {
    /// The item's value, or why it failed (in the worker, or decoding it here).
    Item(Result<R, TaskErrorKind>),
    /// The worker stopped the chunk here.
    Stop,
}

/// Reads the next entry of a chunk's results.
///
/// # Errors
/// A message when the results are malformed from here on.
pub(crate) fn next_entry<R: Value>(codec: Codec, rest: &mut &[u8]) -> Result<Entry<R>, String> {
    let (len, after) = take_len(rest).ok_or("the worker's answer ended early")?;
    if len == STOP as usize {
        *rest = after;
        return Ok(Entry::Stop);
    }
    if len > after.len() || len == 0 {
        return Err("the worker's answer has an entry of the wrong length".into());
    }
    let (entry, after) = after.split_at(len);
    *rest = after;
    let (&tag, body) = entry.split_first().ok_or("empty entry")?;
    let broken = |e: postcard::Error| format!("the worker's answer is malformed: {e}");
    let r = match tag {
        TAG_OK => {
            match panic::catch_unwind(AssertUnwindSafe(|| format::decode::<R>(codec, body))) {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(m)) => Err(TaskErrorKind::Codec {
                    message: format!("the result could not be deserialized: {m}"),
                }),
                Err(p) => Err(TaskErrorKind::Panic {
                    message: payload_message(&*p),
                    location: None,
                    backtrace: None,
                }),
            }
        }
        TAG_PANIC => {
            let (message, location, backtrace) = postcard::from_bytes(body).map_err(broken)?;
            Err(TaskErrorKind::Panic {
                message,
                location,
                backtrace,
            })
        }
        TAG_CODEC => Err(TaskErrorKind::Codec {
            message: postcard::from_bytes(body).map_err(broken)?,
        }),
        TAG_TOO_LARGE => {
            let (size, limit) = postcard::from_bytes(body).map_err(broken)?;
            Err(TaskErrorKind::TooLarge { size, limit })
        }
        _ => return Err("the worker's answer has an unknown entry".into()),
    };
    Ok(Entry::Item(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        codec: Codec::Postcard,
        limit: 1 << 20,
    };

    #[test]
    fn the_transport_bound_holds_two_items_and_refuses_bogus_lengths_by_default() {
        assert_eq!(transport_bound(4096), MIN_TRANSPORT);
        let d = procpool_engine::DEFAULT_MAX_MESSAGE;
        assert!(transport_bound(d) > d && transport_bound(d) < 1 << 31);
        assert!(transport_bound(MAX_ITEM_LIMIT) > MAX_ITEM_LIMIT);
    }

    #[test]
    fn a_tail_payload_holds_the_items_not_run() {
        let words: Vec<String> = (0..5).map(|i| "x".repeat(i)).collect();
        let mut p = Vec::new();
        begin_chunk::<String>(&mut p, LAYOUT);
        for w in &words {
            push_arg(&mut p, LAYOUT, w).unwrap();
        }
        end_chunk(&mut p, 5);
        let tail = tail_payload::<String>(&p, 3).unwrap();
        let (h, body) = read_header(&tail).unwrap();
        assert_eq!((h.count, h.layout), (2, LAYOUT));
        let mut args = Args::new::<String>(&h, body).unwrap();
        for w in &words[3..] {
            let b = args.next_bytes().unwrap();
            assert_eq!(&args.decode::<String>(h.layout.codec, b).unwrap(), w);
        }
        assert!(tail_payload::<String>(&p, 5).is_none());
    }

    /// Reads every entry of a worker's answer, as the parent does.
    fn read_all<R: Value>(bytes: &[u8]) -> usize {
        let Some((_, mut rest)) = split_results(bytes) else {
            return 0;
        };
        let mut n = 0;
        while let Ok(Entry::Item(_)) = next_entry::<R>(Codec::Postcard, &mut rest) {
            n += 1;
        }
        n
    }

    #[test]
    fn garbage_from_a_worker_is_an_error_never_a_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Small values now and then, so that lengths and tags are plausible.
                    if x.is_multiple_of(3) {
                        (x >> 60) as u8
                    } else {
                        (x >> 32) as u8
                    }
                })
                .collect();
            read_all::<String>(&bytes);
            read_all::<(u64, Vec<u8>)>(&bytes);
            let _ = tail_payload::<String>(&bytes, (len % 5) as u32);
            if let Ok((h, body)) = read_header(&bytes)
                && let Ok(mut args) = Args::new::<String>(&h, body)
            {
                while let Ok(b) = args.next_bytes() {
                    let _ = args.decode::<String>(Codec::Postcard, b);
                }
            }
        }
    }

    #[test]
    fn an_argument_over_the_limit_is_refused_and_leaves_the_payload_as_it_was() {
        let small = Layout { limit: 8, ..LAYOUT };
        let mut p = Vec::new();
        begin_chunk::<String>(&mut p, small);
        let before = p.clone();
        let e = push_arg(&mut p, small, &"long enough".to_string()).unwrap_err();
        assert!(
            matches!(e, TaskErrorKind::TooLarge { limit: 8, .. }),
            "{e:?}"
        );
        assert_eq!(p, before);
    }
}
