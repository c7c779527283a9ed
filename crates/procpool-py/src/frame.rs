//! The Python front's job payloads and job results: a small header, a pickle stream,
//! then the pickle's out-of-band buffers, one after the other.
//!
//! ```text
//! 0      kind (payload: chunk, call, init; result: all ok, mixed)
//! 1      flags (bit 0: call each item with `func(*item)`)
//! 4..8   items in the job (u32 LE)
//! 8..12  out-of-band buffers (u32 LE)
//! 16..24 pickle length (u64 LE)
//! then one u64 LE length per buffer, the pickle, the buffers
//! ```
//!
//! A worker's result is untrusted input: [`Frame::parse`] checks every length.

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList};

use crate::py;

/// Header bytes before the buffer lengths.
const HEAD: usize = 24;
/// Flag: star call.
pub(crate) const STAR: u8 = 1;

/// A parsed frame, borrowing its bytes.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) count: u32,
    pub(crate) pickle: &'a [u8],
    pub(crate) bufs: Vec<&'a [u8]>,
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
            bufs.push(take(&mut at, u64_at(HEAD + 8 * i))?);
        }
        Ok(Frame {
            kind: b[0],
            flags: b[1],
            count: u32_at(4),
            pickle,
            bufs,
        })
    }

    /// The out-of-band buffers as Python `bytearray`s (one copy each, so that what the
    /// unpickled objects keep stays valid after the frame's memory is gone).
    pub(crate) fn py_bufs<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        PyList::new(py, self.bufs.iter().map(|b| PyByteArray::new(py, b)))
            .expect("a list of bytearrays")
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
    let mut lens = Vec::with_capacity(nbufs);
    for b in bufs.try_iter()? {
        lens.push(
            b?.getattr(pyo3::intern!(bufs.py(), "nbytes"))?
                .extract::<u64>()?,
        );
    }
    let total: u64 = lens.iter().sum();
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
        let at = out.len();
        out.resize(at + total as usize, 0);
        let mv = py::memoryview_mut(bufs.py(), &mut out[at..])?;
        py::helper(bufs.py(), "_pickle", "fill")?.call1((mv, bufs))?;
    }
    Ok(())
}
