//! The Python front's job payloads and job results: a small header, a pickle stream,
//! then the pickle's out-of-band buffers, one after the other.
//!
//! ```text
//! 0      kind (payload: chunk, call, init; result: all ok, mixed)
//! 1      flags (bit 0: call each item with `func(*item)`; bit 1: a call whose
//!        `SystemExit` or `KeyboardInterrupt` is its outcome)
//! 4..8   items in the job (u32 LE)
//! 8..12  out-of-band buffers (u32 LE)
//! 16..24 pickle length (u64 LE)
//! then one u64 LE length per buffer, the pickle, the buffers
//! ```
//!
//! A buffer's length has its top bit set when it is the memory of a `bytes` object
//! (large `bytes` items go out of band): the receiver rebuilds it as `bytes` straight
//! from the frame, one copy, instead of a `bytearray` that `bytes()` would copy again.
//!
//! A worker's result is untrusted input: [`Frame::parse`] checks every length.

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList};

use crate::py;

/// Header bytes before the buffer lengths.
const HEAD: usize = 24;
/// Top bit of a buffer's length: the buffer is a `bytes` object's.
const BYTES: u64 = 1 << 63;
/// Flag: star call.
pub(crate) const STAR: u8 = 1;

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
