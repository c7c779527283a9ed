//! The results of one job, decoded: the values of the items that succeeded, in order, and
//! the failures (usually none) apart, so that a chunk of plain values moves as one
//! vector instead of item by item.

use std::any::{Any, TypeId};
use std::collections::VecDeque;

use procpool_engine::{Done, Recorder, TaskError, TaskErrorKind};

use crate::codec::format::Codec;
use crate::codec::{self, Value};
use crate::error::Error;
use crate::job::items::{self, Entry};

/// The decoded results of a job covering items `start..start + count`.
#[derive(Debug)]
pub(crate) struct ChunkOut<R> {
    start: u64,
    count: u32,
    /// Offset of the next item to hand out.
    next: u32,
    /// Values of the items that succeeded, in order.
    values: Values<R>,
    /// Failed items: offset within the chunk and error, in order.
    errors: VecDeque<(u32, Error)>,
    /// Where the worker stopped the chunk, if it did.
    not_run: Option<u32>,
}

impl<R> ChunkOut<R> {
    /// A chunk whose every item failed.
    pub(crate) fn failed(start: u64, count: u32, mut err: impl FnMut(u64) -> Error) -> Self {
        Self {
            start,
            count,
            next: 0,
            values: Values::Decoded(Vec::new().into_iter()),
            errors: (0..count).map(|k| (k, err(start + u64::from(k)))).collect(),
            not_run: None,
        }
    }

    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Items in the chunk.
    pub(crate) fn len(&self) -> u32 {
        self.count
    }

    /// Items not yet handed out.
    pub(crate) fn remaining(&self) -> usize {
        (self.count - self.next) as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next == self.count
    }

    /// Whether an item failed.
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Records the chunk's outcome (run by `pid` for `nanos`) in the pool's counters.
    pub(crate) fn record(&self, rec: &Recorder, pid: Option<u32>, nanos: u64) {
        let ok = u64::from(self.count) - self.errors.len() as u64;
        rec.record(pid, nanos, ok, self.errors.iter().map(|(_, e)| kind_of(e)));
    }

    /// How many items failed.
    pub(crate) fn failures(&self) -> u64 {
        self.errors.len() as u64
    }

    /// Appends all remaining values in order to `out`, when no item failed.
    pub(crate) fn extend_into(self, out: &mut Vec<R>) -> Result<(), Error>
    where
        R: 'static,
    {
        if let Some((_, e)) = self.errors.into_iter().next() {
            return Err(e);
        }
        match self.values {
            // A vector's own iterator moves into an empty vector without a copy.
            Values::Decoded(it) if out.is_empty() && it.len() >= out.capacity() => {
                *out = it.collect();
            }
            Values::Decoded(it) => out.extend(it),
            Values::Held(mut v) => out.append(&mut v),
            Values::Packed { bytes, pos } => {
                extend_packed(out, &bytes[pos..]);
                procpool_engine::recycle_result(bytes);
            }
            Values::Moved => {}
        }
        Ok(())
    }

    /// [`extend_into`](Self::extend_into), keeping the emptied vector of a chunk made by
    /// [`decode_held`](ChunkOut::decode_held) in `spares` for the next one (at most
    /// [`SPARES`] of them).
    pub(crate) fn extend_into_reusing(
        mut self,
        out: &mut Vec<R>,
        spares: &mut Vec<Vec<R>>,
    ) -> Result<(), Error>
    where
        R: 'static,
    {
        if self.errors.is_empty()
            && let Values::Held(v) = &mut self.values
        {
            out.append(v);
            if spares.len() < SPARES {
                spares.push(std::mem::take(v));
            }
            return Ok(());
        }
        self.extend_into(out)
    }
}

/// Emptied vectors `map` keeps for chunks that come out of order (see
/// [`ChunkOut::extend_into_reusing`]).
pub(crate) const SPARES: usize = 8;

impl<R: Value> ChunkOut<R> {
    /// Decodes a job's outcome into per-item results.
    pub(crate) fn decode(done: Done, count: u32, codec: Codec) -> Self {
        Self::decode_to(done, count, codec, None)
    }

    /// Decodes a job's outcome, appending the values of the items that succeeded to
    /// `sink`, in order, instead of holding them: the chunk then carries only its
    /// failures (and where the worker stopped it), and hands out no values. For a caller
    /// that collects every result in order and whose results so far end just before this
    /// chunk (`map`): the values are made in their final place, without a vector per
    /// chunk and a second move.
    pub(crate) fn decode_into(done: Done, count: u32, codec: Codec, sink: &mut Vec<R>) -> Self {
        Self::decode_to(done, count, codec, Some(sink))
    }

    /// Decodes a job's outcome into `spare` (emptied first), a vector the chunk holds
    /// until its values are taken: for `map`, whose chunks that come out of order wait
    /// for those before them. Taking the vector from those of chunks already appended
    /// (see [`extend_into_reusing`](Self::extend_into_reusing)) spares a fresh
    /// allocation per chunk, which after the caller has freed many small values (its
    /// arguments, once encoded) makes the allocator sort them all out first.
    ///
    /// Plain numbers are decoded as by [`decode`](Self::decode): they wait packed in the
    /// worker's answer, to be copied once (no spare is ever kept for them).
    pub(crate) fn decode_held(done: Done, count: u32, codec: Codec, mut spare: Vec<R>) -> Self {
        if codec::plain_size::<R>().is_some() {
            return Self::decode(done, count, codec);
        }
        spare.clear();
        let mut chunk = Self::decode_to(done, count, codec, Some(&mut spare));
        if matches!(chunk.values, Values::Moved) {
            chunk.values = Values::Held(spare);
        }
        chunk
    }

    fn decode_to(done: Done, count: u32, codec: Codec, mut sink: Option<&mut Vec<R>>) -> Self {
        let start = done.index;
        let pid = done.pid;
        let mut bytes = match done.outcome {
            Ok(bytes) => bytes,
            Err(e) => {
                if let TaskErrorKind::PoolBroken(p) = e.kind() {
                    // The pool's own failure, not the task's: say so.
                    let p = p.clone();
                    return Self::failed(start, count, |_| Error::Pool(p.clone()));
                }
                return Self::failed(start, count, |i| Error::Task(e.clone().with_index(i)));
            }
        };
        if count == 1
            && let Some(v) = take_sole_bytes::<R>(&mut bytes)
        {
            let values = match sink {
                Some(out) => {
                    out.push(v);
                    Values::Moved
                }
                None => Values::Decoded(vec![v].into_iter()),
            };
            return Self {
                start,
                count,
                next: 0,
                values,
                errors: VecDeque::new(),
                not_run: None,
            };
        }
        let codec_err = |k: u32, message: String| {
            let kind = TaskErrorKind::Codec { message };
            Error::Task(TaskError::new(kind, start + u64::from(k), pid, 1))
        };
        let (packed, mut rest) = match items::split_results(&bytes) {
            Some(x) => x,
            None => {
                let m = "the worker's answer has an unknown layout".to_string();
                return Self::failed(start, count, |i| codec_err((i - start) as u32, m.clone()));
            }
        };
        if packed {
            let fits = codec::plain_size::<R>().is_some_and(|n| rest.len() == n * count as usize);
            if !fits {
                let m = "packed results of the wrong size".to_string();
                return Self::failed(start, count, |i| codec_err((i - start) as u32, m.clone()));
            }
            // The values stay packed in the worker's answer until they are taken (or
            // go to the sink in one copy).
            let pos = bytes.len() - rest.len();
            let values = match sink {
                Some(out) => {
                    extend_packed(out, rest);
                    procpool_engine::recycle_result(bytes);
                    Values::Moved
                }
                None => Values::Packed { bytes, pos },
            };
            return Self {
                start,
                count,
                next: 0,
                values,
                errors: VecDeque::new(),
                not_run: None,
            };
        }
        let mut own = Vec::new();
        let to_sink = sink.is_some();
        let values = match sink.take() {
            Some(out) => {
                out.reserve(count as usize);
                out
            }
            None => {
                own.reserve_exact(count as usize);
                &mut own
            }
        };
        let mut errors = VecDeque::new();
        let mut not_run = None;
        for k in 0..count {
            let task = |kind| Error::Task(TaskError::new(kind, start + u64::from(k), pid, 1));
            match items::next_entry::<R>(codec, &mut rest) {
                Ok(Entry::Item(Ok(v))) => values.push(v),
                Ok(Entry::Item(Err(kind))) => errors.push_back((k, task(kind))),
                Ok(Entry::Stop) if k > 0 => {
                    not_run = Some(k);
                    break;
                }
                other => {
                    // The answer is broken from here: every item left fails.
                    let message = match other {
                        Err(m) => m,
                        _ => "the worker stopped a chunk before its first item".into(),
                    };
                    for j in k..count {
                        errors.push_back((j, codec_err(j, message.clone())));
                    }
                    break;
                }
            }
        }
        // Every value is decoded: the answer's buffer can take the next one.
        procpool_engine::recycle_result(bytes);
        // Values that went to the caller's vector are not the chunk's.
        let values = if to_sink {
            Values::Moved
        } else {
            Values::Decoded(own.into_iter())
        };
        Self {
            start,
            count: not_run.unwrap_or(count),
            next: 0,
            values,
            errors,
            not_run,
        }
    }

    /// [`decode_one`](Self::decode_one), recording the outcome in the pool's counters.
    pub(crate) fn decode_one_recorded(
        done: Done,
        codec: Codec,
        rec: &Recorder,
    ) -> Result<R, Error> {
        let (pid, nanos) = (done.pid, done.nanos);
        let r = Self::decode_one(done, codec);
        let failed = r.as_ref().err().map(kind_of);
        rec.record(pid, nanos, u64::from(r.is_ok()), failed);
        r
    }

    /// Where the worker stopped the chunk: the items from this offset on did not run,
    /// and are not part of these results.
    pub(crate) fn not_run(&self) -> Option<u32> {
        self.not_run
    }

    /// Decodes the outcome of a job of one item.
    pub(crate) fn decode_one(done: Done, codec: Codec) -> Result<R, Error> {
        let mut c = Self::decode(done, 1, codec);
        c.next().map_or_else(
            || {
                let kind = TaskErrorKind::Codec {
                    message: "no result in the worker's answer".into(),
                };
                Err(Error::Task(TaskError::new(kind, 0, None, 1)))
            },
            |(_, r)| r,
        )
    }
}

impl<R: 'static> Iterator for ChunkOut<R> {
    type Item = (u64, Result<R, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.count {
            return None;
        }
        let k = self.next;
        self.next += 1;
        let index = self.start + u64::from(k);
        if self.errors.front().is_some_and(|(o, _)| *o == k) {
            let (_, e) = self.errors.pop_front()?;
            return Some((index, Err(e)));
        }
        let v = self.values.next()?;
        Some((index, Ok(v)))
    }
}

/// Appends the plain values packed in `bytes` to `out` in one copy (their bytes are the
/// values' own: nothing is decoded item by item).
fn extend_packed<R: 'static>(out: &mut Vec<R>, bytes: &[u8]) {
    let Some(n) = codec::plain_size::<R>() else {
        return out.extend(codec::plain_values::<R>(bytes));
    };
    let count = bytes.len() / n;
    out.reserve(count);
    // SAFETY: `R` is a primitive number (its plain size is known): every bit pattern of
    // its size is a valid value, and `out` has room for `count` more, which is
    // `count * n` bytes; the copy is byte-wise, so alignment does not matter.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr().add(out.len()).cast::<u8>(),
            count * n,
        );
        out.set_len(out.len() + count);
    }
}

/// The kind of a failed item, for the counters (`None`: the pool's own error).
fn kind_of(e: &Error) -> Option<&TaskErrorKind> {
    match e {
        Error::Task(t) => Some(t.kind()),
        _ => None,
    }
}

/// The values of a chunk's succeeded items.
#[derive(Debug)]
enum Values<R> {
    /// Decoded one by one.
    Decoded(std::vec::IntoIter<R>),
    /// Decoded into a vector that is used again once emptied (see
    /// [`ChunkOut::decode_held`]).
    Held(Vec<R>),
    /// Still packed in the worker's answer, from `pos`.
    Packed { bytes: Vec<u8>, pos: usize },
    /// Appended to the caller's vector as they were decoded (see
    /// [`ChunkOut::decode_into`]): none to hand out.
    Moved,
}

impl<R: 'static> Values<R> {
    fn next(&mut self) -> Option<R> {
        match self {
            Values::Decoded(it) => it.next(),
            Values::Held(v) => {
                // Handed out one by one after all: as a plain iterator.
                *self = Values::Decoded(std::mem::take(v).into_iter());
                self.next()
            }
            Values::Packed { bytes, pos } => {
                let n = codec::plain_size::<R>()?;
                let v = bytes.get(*pos..*pos + n).map(codec::read_plain::<R>)?;
                *pos += n;
                Some(v)
            }
            Values::Moved => None,
        }
    }
}

/// Results at least this large are handed over in the worker's answer itself.
const SOLE_BYTES_MIN: usize = 64 << 10;

/// The one `Vec<u8>` result of a job, made of the answer's own buffer (its bytes moved
/// down over the few bytes before them) instead of a copy: a large result costs the
/// parent its size once.
fn take_sole_bytes<R: 'static>(bytes: &mut Vec<u8>) -> Option<R> {
    if TypeId::of::<R>() != TypeId::of::<Vec<u8>>() || bytes.len() < SOLE_BYTES_MIN {
        return None;
    }
    let body = items::sole_ok_body(bytes)?;
    let at = body.start + codec::bytes_start(&bytes[body])?;
    bytes.drain(..at);
    let mut slot: Option<R> = None;
    if let Some(out) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
        *out = Some(std::mem::take(bytes));
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_values_are_appended_in_one_copy() {
        let mut bytes = Vec::new();
        for x in [3u64, u64::MAX, 0] {
            codec::put_plain(&mut bytes, &x);
        }
        let mut out = vec![7u64];
        extend_packed(&mut out, &bytes);
        assert_eq!(out, [7, 3, u64::MAX, 0]);
        let mut f = Vec::new();
        let mut fb = Vec::new();
        codec::put_plain(&mut fb, &-1.5f32);
        extend_packed::<f32>(&mut f, &fb);
        assert_eq!(f, [-1.5]);
        let mut none: Vec<u16> = Vec::new();
        extend_packed(&mut none, &[]);
        assert!(none.is_empty());
    }
}
