//! Result buffers used again while calls run.
//!
//! The supervisor copies each result out of a worker's ring (or socket) into a vector of
//! its own before anything parses it (a worker could change shared memory under a
//! parser). For a chunk of a large `map`, that vector is hundreds of KiB: allocated fresh
//! each time, the allocator handed out pages it had given back to the kernel, and the
//! copy faulted them in again (a 50 M-item map of `x * 2` took about 40 000 such faults
//! in the supervisor, 23 per page of its heap, and ran at 80 to 120 M items/s; with the
//! allocator told to keep its heap, 130 to 190).
//!
//! So the front hands a result's vector back once its values are decoded
//! ([`recycle_result`]), and the supervisor takes the next one from here ([`take`]).
//! Only buffers between [`MIN_CAP`] and [`MAX_CAP`] are kept, [`KEEP_BYTES`] in all, and
//! only while a call is under way (a [`CallGuard`] alive, one per `Feed`): the last call
//! to end frees them, so an idle process holds none.
//!
//! The store is only ever tried, never waited for (`try_lock`): a thread that finds it
//! busy allocates or frees as before. So no thread waits on another here, and a child
//! forked while another thread held the lock cannot hang on it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::AcqRel, Ordering::Acquire};

/// Smaller buffers cost the allocator little: not kept.
const MIN_CAP: usize = 64 * 1024;
/// Larger buffers are rare (results of one large item): not kept.
const MAX_CAP: usize = 4 << 20;
/// Bytes of buffers kept at most: the results of a few chunks in flight per worker
/// (a `map`'s chunk aims at 1 MiB of argument and result).
const KEEP_BYTES: usize = 16 << 20;

/// The kept buffers and the calls under way; one per process ([`KEPT`]).
struct Kept {
    /// The buffers, and the sum of their capacities.
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    calls: AtomicUsize,
}

static KEPT: Kept = Kept::new();

impl Kept {
    const fn new() -> Self {
        Self {
            free: Mutex::new((Vec::new(), 0)),
            calls: AtomicUsize::new(0),
        }
    }

    fn take(&self, len: usize) -> Result<Vec<u8>, ()> {
        if (MIN_CAP / 2..=MAX_CAP).contains(&len)
            && let Ok(mut free) = self.free.try_lock()
        {
            let (bufs, bytes) = &mut *free;
            // The smallest that fits, so a large buffer stays for a large result; and not
            // one more than twice the size: a result may become a value of the caller's
            // (a `Vec<u8>` moved out of it), which would keep the room it does not use.
            let best = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| (len..=len.saturating_mul(2)).contains(&b.capacity()))
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let v = bufs.swap_remove(i);
                *bytes -= v.capacity();
                return Ok(v);
            }
        }
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| ())?;
        Ok(v)
    }

    fn give(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if !(MIN_CAP..=MAX_CAP).contains(&cap) || self.calls.load(Acquire) == 0 {
            return;
        }
        buf.clear();
        if let Ok(mut free) = self.free.try_lock() {
            let (bufs, bytes) = &mut *free;
            if *bytes + cap <= KEEP_BYTES {
                *bytes += cap;
                bufs.push(buf);
            }
        }
    }

    fn begin(&self) {
        self.calls.fetch_add(1, AcqRel);
    }

    fn end(&self) {
        if self.calls.fetch_sub(1, AcqRel) == 1 {
            // The last call ended: free what is kept (outside the lock). The lock is held
            // for a few instructions at a time: a few tries find it free (a lock never
            // freed, in a forked child, leaves at most `KEEP_BYTES` kept).
            for _ in 0..1000 {
                if let Ok(mut f) = self.free.try_lock() {
                    let kept = std::mem::take(&mut *f);
                    drop(f);
                    drop(kept);
                    return;
                }
                std::thread::yield_now();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.lock().map_or(0, |f| f.0.len())
    }
}

/// An empty vector with room for `len` bytes: a kept buffer that fits, else a new one.
/// `Err` when the room cannot be allocated.
pub(crate) fn take(len: usize) -> Result<Vec<u8>, ()> {
    KEPT.take(len)
}

/// Hands back the vector of a result ([`Done::outcome`](crate::Done::outcome)) whose
/// bytes are no longer needed, so that the pool's next result can be copied into pages
/// already in memory instead of fresh ones. Optional: a vector not handed back is freed
/// as usual. Kept only while a `map`-like call ([`Feed`](crate::Feed)) is under way, and
/// only vectors of middling size, 16 MiB of them at most; any other is dropped here.
///
/// ```
/// // After decoding a result's values:
/// let bytes: Vec<u8> = vec![0; 256 * 1024];
/// procpool_engine::recycle_result(bytes);
/// ```
pub fn recycle_result(buf: Vec<u8>) {
    KEPT.give(buf);
}

/// Marks a call under way: buffers are kept while at least one lives.
#[derive(Debug)]
pub(crate) struct CallGuard(());

impl CallGuard {
    pub(crate) fn new() -> Self {
        KEPT.begin();
        Self(())
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        KEPT.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_kept_only_while_a_call_runs_and_reused_by_size() {
        let k = Kept::new();
        // No call: dropped.
        k.give(Vec::with_capacity(256 * 1024));
        assert_eq!(k.len(), 0);
        k.begin();
        let big = Vec::<u8>::with_capacity(1 << 20);
        let big_ptr = big.as_ptr();
        k.give(big);
        k.give(Vec::with_capacity(128 * 1024));
        // Too small and too large: dropped.
        k.give(Vec::with_capacity(1024));
        k.give(Vec::with_capacity(8 << 20));
        assert_eq!(k.len(), 2);
        // Not more than twice the size asked for: a new one.
        let fresh = k.take(200 * 1024).unwrap();
        assert!(fresh.capacity() < 1 << 20);
        assert_eq!(k.len(), 2);
        // The smallest that fits.
        let v = k.take(600 * 1024).unwrap();
        assert_eq!(v.as_ptr(), big_ptr);
        assert!(v.is_empty());
        let small = k.take(100 * 1024).unwrap();
        assert!(small.capacity() >= 100 * 1024);
        assert_eq!(k.len(), 0);
        // A kept buffer comes back empty even if handed back full.
        let mut full = small;
        full.extend_from_slice(&[7; 1000]);
        k.give(full);
        assert!(k.take(70 * 1024).unwrap().is_empty());
        // Small requests do not take a kept buffer.
        k.give(Vec::with_capacity(MIN_CAP));
        assert!(k.take(100).unwrap().capacity() < MIN_CAP);
        // Kept up to KEEP_BYTES (each buffer counted by its capacity).
        let cap = k.take(MIN_CAP).unwrap().capacity();
        for _ in 0..KEEP_BYTES / cap + 3 {
            k.give(Vec::with_capacity(cap));
        }
        let most = KEEP_BYTES / cap;
        assert!(k.len() <= most && k.len() + 1 >= most, "{}", k.len());
        let kept = k.len();
        // Two calls: kept until the last ends.
        k.begin();
        k.end();
        assert_eq!(k.len(), kept);
        k.end();
        assert_eq!(k.len(), 0);
        drop(v);
    }

    /// A lock held for ever (as in a child forked while another thread held it) makes no
    /// one wait: taking allocates, handing back drops, the end of the last call returns.
    #[test]
    fn a_lock_never_freed_blocks_nothing() {
        let k = Kept::new();
        k.begin();
        k.give(Vec::with_capacity(256 * 1024));
        assert_eq!(k.len(), 1);
        let held = k.free.lock().unwrap();
        let t = std::time::Instant::now();
        let v = k.take(256 * 1024).unwrap();
        assert!(v.capacity() >= 256 * 1024);
        k.give(v);
        k.end();
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(held.0.len(), 1, "the held store was not touched");
        drop(held);
    }
}
