//! Faulting in the pages of a large result vector ahead of the values, on a thread of its
//! own.
//!
//! A `map` collects its results into a vector sized for the whole input. Each first write
//! to a page of it costs a page fault; for small values (a map of `u64`s) these faults
//! cost the calling thread more than decoding the values does, and the calling thread is
//! what paces the map (it also encodes every chunk). A helper thread asks the kernel to
//! map the vector's pages (`MADV_POPULATE_WRITE`) a step at a time from the start, while
//! the caller writes values behind it: the faults are taken off the caller's path, as
//! threads sharing a `collect` do (rayon's workers each fault in their own part).
//!
//! The kernel only maps pages: no byte of the vector is read or written by the helper,
//! so it cannot race with the caller's writes. The helper stops at the end, when told
//! to (the call ends, or the vector moved), or when the kernel refuses (a kernel before
//! 5.14 does not know the advice; memory that is no longer mapped).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Vectors smaller than this are faulted in by the caller as it writes: starting a
/// thread costs tens of microseconds, as much as faulting in a few megabytes.
const MIN_BYTES: usize = 16 << 20;
/// What the helper maps in one request (and the longest it goes on after a stop).
const STEP: usize = 2 << 20;
/// The kernel's page size at least; requests are aligned to it.
const PAGE: usize = 4096;

/// A helper thread faulting in a vector's pages; stopped and joined when dropped.
#[derive(Debug)]
pub(crate) struct Warmer {
    stop: Arc<AtomicBool>,
    /// The vector's buffer when the helper started.
    at: usize,
    thread: Option<JoinHandle<()>>,
}

impl Warmer {
    /// Starts faulting in the spare room of `out` (which is empty), when it is large
    /// enough to be worth a thread; `None` otherwise.
    pub(crate) fn start<R>(out: &mut Vec<R>) -> Option<Warmer> {
        let bytes = out.capacity().checked_mul(std::mem::size_of::<R>())?;
        if bytes < MIN_BYTES || !out.is_empty() {
            return None;
        }
        let base = out.as_mut_ptr() as usize;
        // Whole pages inside the buffer only: the pages at its ends may hold other data
        // of the allocator's (mapping them would be harmless, but is not ours to ask).
        let start = base.checked_next_multiple_of(PAGE)?;
        let end = (base + bytes) & !(PAGE - 1);
        if end <= start {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("procpool-warm".into())
            .spawn(move || populate(start, end, &flag))
            .ok()?;
        Some(Warmer {
            stop,
            at: base,
            thread: Some(thread),
        })
    }

    /// Stops the helper if `out`'s buffer moved (it grew past the room reserved): the
    /// old buffer is freed memory the helper must not go on mapping.
    #[inline]
    pub(crate) fn watch<R>(&self, out: &[R]) {
        if out.as_ptr() as usize != self.at {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Maps the pages of `start..end` for writing, a step at a time, until `stop`.
fn populate(start: usize, end: usize, stop: &AtomicBool) {
    let mut at = start;
    while at < end && !stop.load(Ordering::Relaxed) {
        let len = STEP.min(end - at);
        // SAFETY: `MADV_POPULATE_WRITE` maps pages as a write would, without writing:
        // it changes no byte of memory, whoever owns it. The range is page-aligned.
        let r = unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
        if r != 0 {
            // Unknown advice (an old kernel), memory gone or short: the caller's own
            // writes fault the rest in.
            return;
        }
        at += len;
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic in the helper (none is expected) only lost its help.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_vector_is_mapped_and_its_values_are_untouched() {
        let n = (MIN_BYTES / 8) * 2;
        let mut out: Vec<u64> = Vec::with_capacity(n);
        let w = Warmer::start(&mut out).expect("a helper for 32 MiB");
        for i in 0..n as u64 {
            out.push(i ^ 0x5a5a);
        }
        w.watch(&out);
        drop(w);
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as u64 ^ 0x5a5a));
    }

    #[test]
    fn small_or_started_vectors_get_no_helper() {
        let mut small: Vec<u64> = Vec::with_capacity(1000);
        assert!(Warmer::start(&mut small).is_none());
        let mut started: Vec<u8> = Vec::with_capacity(MIN_BYTES * 2);
        started.push(1);
        assert!(Warmer::start(&mut started).is_none());
        let mut zst: Vec<()> = Vec::with_capacity(usize::MAX);
        assert!(Warmer::start(&mut zst).is_none());
    }

    #[test]
    fn a_moved_vector_stops_the_helper() {
        let mut out: Vec<u8> = Vec::with_capacity(MIN_BYTES * 4);
        let w = Warmer::start(&mut out).expect("a helper");
        out = vec![1]; // a buffer elsewhere (the old one is freed)
        w.watch(&out);
        assert!(w.stop.load(Ordering::Relaxed));
        drop(w);
        assert_eq!(out, [1]);
    }
}
