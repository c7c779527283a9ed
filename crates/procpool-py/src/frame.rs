//! The Python front's job payloads and job results: a small header, a pickle stream,
//! then the pickle's out-of-band buffers, one after the other.
//!
//! ```text
//! 0      kind (payload: chunk, call, init; result: all ok, mixed)
//! 1      flags (bit 0: call each item with `func(*item)`; bit 1: a call whose
//!        `SystemExit` or `KeyboardInterrupt` is its outcome)
//! 4..8   items in the job (u32 LE)
//! 8..12  out-of-band buffers (u32 LE)
//! 12..16 payload of a chunk: items of the pickled list to skip (u32 LE; the job runs
//!        the `count` items after them: the items a dead worker had not started, cut
//!        from its chunk's payload at the byte level)
//! 16..24 pickle length (u64 LE)
//! then one u64 LE length per buffer, the pickle, the buffers
//! ```
//!
//! A buffer's length has its top bit set when it is the memory of a `bytes` object
//! (large `bytes` items go out of band): the receiver rebuilds it as `bytes` straight
//! from the frame, one copy, instead of a `bytearray` that `bytes()` would copy again.
//!
//! A chunk's result (kind [`ITEMS`]) is that header (no pickle, no buffers; its count is
//! the items the worker ran: fewer than the job's when it stopped early) followed by one
//! record per item, appended as each item finishes, so that the records of the items a
//! worker finished before it died can be read (see `procpool_engine::items_finished`):
//!
//! ```text
//! tag 0 None, 1 True, 2 False (nothing follows)
//! tag 3 int (i64 LE), 4 float (f64 LE)
//! tag 5 str (u32 LE length, UTF-8), 6 bytes (u32 LE length, the bytes)
//! tag 7 anything else, or a failure: u64 LE length, then a frame of one item (kind
//!       all ok or mixed: a pickle of a one-item list, and its out-of-band buffers)
//! ```
//!
//! A worker's result is untrusted input: [`Frame::parse`] and [`records`] check every
//! length.

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList};

use crate::py;

/// Header bytes before the buffer lengths.
const HEAD: usize = 24;
/// Top bit of a buffer's length: the buffer is a `bytes` object's.
const BYTES: u64 = 1 << 63;
/// Flag: star call.
pub(crate) const STAR: u8 = 1;
/// Payload kind of a chunk of items.
pub(crate) const CHUNK: u8 = 0;
/// Result kind: one record per item (see the module's text).
pub(crate) const ITEMS: u8 = 3;

/// Record tags of an [`ITEMS`] result.
pub(crate) const T_NONE: u8 = 0;
pub(crate) const T_TRUE: u8 = 1;
pub(crate) const T_FALSE: u8 = 2;
pub(crate) const T_INT: u8 = 3;
pub(crate) const T_FLOAT: u8 = 4;
pub(crate) const T_STR: u8 = 5;
pub(crate) const T_BYTES: u8 = 6;
pub(crate) const T_FRAME: u8 = 7;

/// Flag of a call: an exception that is not an `Exception` (`SystemExit`,
/// `KeyboardInterrupt`) raised by the task is its outcome, as `concurrent.futures`
/// delivers it, instead of ending the worker.
pub(crate) const CATCH_ALL: u8 = 2;

/// A parsed frame, borrowing its bytes.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) count: u32,
    /// Items of a chunk's pickled list to skip.
    pub(crate) skip: u32,
    pub(crate) pickle: &'a [u8],
    pub(crate) bufs: Vec<(&'a [u8], bool)>,
}

impl<'a> Frame<'a> {
    /// Reads a frame; `Err` says what is wrong with it.
    pub(crate) fn parse(b: &'a [u8]) -> Result<Self, String> {
        let bad = |what: &str| format!("malformed frame ({} bytes): {what}", b.len());
        if b.len() < HEAD {
            return Err(bad("shorter than its header"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let nbufs = u32_at(8) as usize;
        let plen = u64_at(16);
        let lens_end = nbufs
            .checked_mul(8)
            .and_then(|n| n.checked_add(HEAD))
            .filter(|&e| e <= b.len())
            .ok_or_else(|| bad("buffer count too large"))?;
        let mut at = lens_end;
        let take = |at: &mut usize, n: u64| -> Result<&'a [u8], String> {
            let n = usize::try_from(n).map_err(|_| bad("length too large"))?;
            let end = at
                .checked_add(n)
                .filter(|&e| e <= b.len())
                .ok_or_else(|| bad("length past its end"))?;
            let s = &b[*at..end];
            *at = end;
            Ok(s)
        };
        let pickle = take(&mut at, plen)?;
        let mut bufs = Vec::with_capacity(nbufs);
        for i in 0..nbufs {
            let len = u64_at(HEAD + 8 * i);
            bufs.push((take(&mut at, len & !BYTES)?, len & BYTES != 0));
        }
        Ok(Frame {
            kind: b[0],
            flags: b[1],
            count: u32_at(4),
            skip: u32_at(12),
            pickle,
            bufs,
        })
    }

    /// The out-of-band buffers as Python `bytearray`s, or `bytes` for a `bytes`
    /// object's (one copy each, so that what the unpickled objects keep stays valid
    /// after the frame's memory is gone).
    pub(crate) fn py_bufs<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        PyList::new(
            py,
            self.bufs.iter().map(|&(b, is_bytes)| {
                if is_bytes {
                    PyBytes::new(py, b).into_any()
                } else {
                    PyByteArray::new(py, b).into_any()
                }
            }),
        )
        .expect("a list of buffers")
    }
}

/// Appends a frame to `out`: `data` is the pickle, `bufs` its out-of-band buffers
/// (memoryviews of bytes), copied in by Python.
/// Starts a frame of `count` items whose pickle is appended to `out` next, with no
/// out-of-band buffers; [`finish_unbuffered`] then writes the pickle's length. Returns
/// where the frame starts.
pub(crate) fn start_unbuffered(out: &mut Vec<u8>, kind: u8, flags: u8, count: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&[kind, flags, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&0u64.to_le_bytes());
    start
}

/// Ends the frame [`start_unbuffered`] began at `start`: all that follows its header is
/// its pickle.
pub(crate) fn finish_unbuffered(out: &mut [u8], start: usize) {
    let len = (out.len() - start - HEAD) as u64;
    out[start + 16..start + HEAD].copy_from_slice(&len.to_le_bytes());
}

pub(crate) fn encode(
    out: &mut Vec<u8>,
    kind: u8,
    flags: u8,
    count: u32,
    data: &Bound<'_, PyBytes>,
    bufs: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let data = data.as_bytes();
    let nbufs = bufs.len()?;
    let py = bufs.py();
    let mut lens = Vec::with_capacity(nbufs);
    for b in bufs.try_iter()? {
        let b = b?;
        let len = b.getattr(pyo3::intern!(py, "nbytes"))?.extract::<u64>()?;
        let is_bytes = b
            .getattr(pyo3::intern!(py, "obj"))
            .is_ok_and(|o| o.is_exact_instance_of::<PyBytes>());
        lens.push(if is_bytes { len | BYTES } else { len });
    }
    let total: u64 = lens.iter().map(|l| l & !BYTES).sum();
    let start = out.len();
    out.reserve(HEAD + 8 * nbufs + data.len() + total as usize);
    out.extend_from_slice(&[kind, flags, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(nbufs as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for l in &lens {
        out.extend_from_slice(&l.to_le_bytes());
    }
    out.extend_from_slice(data);
    debug_assert_eq!(out.len() - start, HEAD + 8 * nbufs + data.len());
    if total > 0 {
        // Written by Python's copies, not zeroed first (a pass over every byte less).
        let total = total as usize;
        let spare = &mut out.spare_capacity_mut()[..total];
        let mv = py::memoryview_uninit(py, spare)?;
        py::helper(py, "_pickle", "fill")?.call1((mv, bufs))?;
        // SAFETY: `fill` wrote the buffers, `total` bytes, one after the other, into
        // the spare capacity (it raises otherwise, and the length stays as it was).
        unsafe { out.set_len(out.len() + total) };
    }
    Ok(())
}

/// Writes the header of an [`ITEMS`] result of `count` items into `out` (empty).
pub(crate) fn begin_items(out: &mut Vec<u8>, count: u32) {
    out.extend_from_slice(&[ITEMS, 0, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; HEAD - 8]);
}

/// Sets the item count of an [`ITEMS`] result's header (the worker stopped early).
pub(crate) fn set_items(out: &mut [u8], count: u32) {
    out[4..8].copy_from_slice(&count.to_le_bytes());
}

/// The item count an [`ITEMS`] result's header gives, if `b` is one.
pub(crate) fn items_count(b: &[u8]) -> Option<u32> {
    (b.len() >= HEAD && b[0] == ITEMS)
        .then(|| u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")))
}

/// One item's record of an [`ITEMS`] result.
#[derive(Debug, PartialEq)]
pub(crate) enum Record<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Frame(&'a [u8]),
}

/// The records of an [`ITEMS`] result `b`; `Err` says what is wrong with it.
pub(crate) fn records(b: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let bad = |what: &str| format!("malformed item records ({} bytes): {what}", b.len());
    if items_count(b).is_none() {
        return Err(bad("not an items result"));
    }
    let mut rest = &b[HEAD..];
    let mut out = Vec::new();
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        (n <= rest.len()).then(|| {
            let (a, b) = rest.split_at(n);
            *rest = b;
            a
        })
    }
    while let Some((&tag, after)) = rest.split_first() {
        rest = after;
        let short = || bad("a record past its end");
        let r = match tag {
            T_NONE => Record::None,
            T_TRUE => Record::Bool(true),
            T_FALSE => Record::Bool(false),
            T_INT | T_FLOAT => {
                let v: [u8; 8] = take(&mut rest, 8).ok_or_else(short)?.try_into().expect("8");
                if tag == T_INT {
                    Record::Int(i64::from_le_bytes(v))
                } else {
                    Record::Float(f64::from_le_bytes(v))
                }
            }
            T_STR | T_BYTES => {
                let n = take(&mut rest, 4).ok_or_else(short)?;
                let n = u32::from_le_bytes(n.try_into().expect("4")) as usize;
                let v = take(&mut rest, n).ok_or_else(short)?;
                if tag == T_STR {
                    Record::Str(std::str::from_utf8(v).map_err(|_| bad("a string not UTF-8"))?)
                } else {
                    Record::Bytes(v)
                }
            }
            T_FRAME => {
                let n = take(&mut rest, 8).ok_or_else(short)?;
                let n = usize::try_from(u64::from_le_bytes(n.try_into().expect("8")))
                    .map_err(|_| short())?;
                Record::Frame(take(&mut rest, n).ok_or_else(short)?)
            }
            _ => return Err(bad("an unknown record tag")),
        };
        out.push(r);
    }
    Ok(out)
}

/// The payload of items `from..from + count` of a chunk's `payload`, cut at the byte
/// level (the same pickle and buffers, more items skipped): `None` if it is not a chunk's
/// payload or has fewer items.
pub(crate) fn split_chunk(payload: &[u8], from: u32, count: u32) -> Option<Vec<u8>> {
    if payload.len() < HEAD || payload[0] != CHUNK {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
    let (items, skip) = (u32_at(4), u32_at(12));
    if from.checked_add(count)? > items {
        return None;
    }
    let mut out = payload.to_vec();
    out[4..8].copy_from_slice(&count.to_le_bytes());
    out[12..16].copy_from_slice(&skip.checked_add(from)?.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, count: u32, pickle: &[u8], bufs: &[(&[u8], bool)]) -> Vec<u8> {
        let mut out = vec![kind, STAR, 0, 0];
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(pickle.len() as u64).to_le_bytes());
        for (b, is_bytes) in bufs {
            let flag = if *is_bytes { BYTES } else { 0 };
            out.extend_from_slice(&(b.len() as u64 | flag).to_le_bytes());
        }
        out.extend_from_slice(pickle);
        for (b, _) in bufs {
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn parses_what_it_is_given() {
        let b = frame(
            1,
            7,
            b"pickle",
            &[(b"abc", false), (b"", true), (b"zz", true)],
        );
        let f = Frame::parse(&b).unwrap();
        assert_eq!((f.kind, f.flags, f.count), (1, STAR, 7));
        assert_eq!(f.pickle, b"pickle");
        assert_eq!(
            f.bufs,
            vec![(&b"abc"[..], false), (&b""[..], true), (&b"zz"[..], true)]
        );
    }

    #[test]
    fn item_records_read_back_and_cut_ones_refused() {
        let mut b = Vec::new();
        begin_items(&mut b, 3);
        b.push(T_INT);
        b.extend_from_slice(&(-5i64).to_le_bytes());
        b.push(T_STR);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(b"hi");
        b.push(T_FRAME);
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(b"abc");
        assert_eq!(items_count(&b), Some(3));
        assert_eq!(
            records(&b).unwrap(),
            vec![Record::Int(-5), Record::Str("hi"), Record::Frame(b"abc")]
        );
        let whole = records(&b).unwrap().len();
        for cut in HEAD..b.len() {
            // A cut inside a record is refused; at a record's end, fewer records.
            if let Ok(r) = records(&b[..cut]) {
                assert!(r.len() < whole, "cut at {cut}");
            }
        }
        b.push(99);
        assert!(records(&b).is_err());
        assert!(records(&b[..HEAD - 1]).is_err());
    }

    #[test]
    fn chunks_are_cut_by_skipping_items() {
        let p = frame(CHUNK, 5, b"pickle", &[(b"abc", false)]);
        let q = split_chunk(&p, 2, 3).unwrap();
        let f = Frame::parse(&q).unwrap();
        assert_eq!((f.count, f.skip, f.pickle), (3, 2, &b"pickle"[..]));
        let r = split_chunk(&q, 1, 1).unwrap();
        assert_eq!(
            (
                Frame::parse(&r).unwrap().count,
                Frame::parse(&r).unwrap().skip
            ),
            (1, 3)
        );
        assert_eq!(split_chunk(&q, 1, 3), None, "past its items");
        assert_eq!(
            split_chunk(&frame(1, 5, b"", &[]), 0, 1),
            None,
            "not a chunk"
        );
    }

    #[test]
    fn refuses_lengths_past_the_end_and_short_frames() {
        let good = frame(0, 1, b"pickle", &[(b"abc", false)]);
        for cut in 0..good.len() {
            assert!(Frame::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Frame::parse(&huge).is_err());
        let mut many = good.clone();
        many[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Frame::parse(&many).is_err());
        let mut buf = good;
        buf[24..32].copy_from_slice(&(u64::MAX >> 1).to_le_bytes());
        assert!(Frame::parse(&buf).is_err());
    }
}
