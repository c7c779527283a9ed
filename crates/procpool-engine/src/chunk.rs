//! How many items go into one job.
//!
//! With no chunk size given, the engine measures instead of guessing: the first jobs carry
//! one item each; from then on a chunk holds as many items as take about
//! [`TARGET_NANOS`] to run (the time reported by the workers, averaged) and as many as
//! make about [`TARGET_BYTES`] of argument and result together (so that memory in flight
//! stays small whatever the item size), at most [`MAX_CHUNK`], and when the input's
//! length is known, no more than a quarter of each worker's share of what is left, so
//! that every worker gets work to the end, and never more than the tasks a worker runs
//! before it is recycled.
//!
//! A worker that dies (or is killed at a time limit) inside a chunk costs one item when
//! its runner records items as they finish (see `items`): the feed delivers the finished
//! ones and sends the others again, and sizing goes on. For a runner that does not, the
//! whole chunk fails, and automatic sizing falls back to one item per job for the rest
//! of the call.

/// The run time a chunk aims at.
pub(crate) const TARGET_NANOS: f64 = 1_000_000.0;
/// The bytes of argument and result a chunk aims at.
pub(crate) const TARGET_BYTES: f64 = 1024.0 * 1024.0;
/// The largest automatic chunk.
pub(crate) const MAX_CHUNK: usize = 1 << 16;

#[derive(Debug, Clone)]
pub(crate) struct Chunker {
    fixed: Option<usize>,
    item_nanos: f64,
    /// Bytes of argument and result per item (0: not measured).
    item_bytes: f64,
    workers: usize,
    /// Largest automatic chunk (a worker recycled after `n` tasks takes chunks of at
    /// most `n`).
    cap: usize,
}

impl Chunker {
    pub(crate) fn new(fixed: Option<usize>, workers: usize, cap: Option<u64>) -> Self {
        let cap = cap.map_or(MAX_CHUNK, |c| (c.max(1) as usize).min(MAX_CHUNK));
        Self {
            fixed,
            item_nanos: 0.0,
            item_bytes: 0.0,
            workers: workers.max(1),
            cap,
        }
    }

    /// Whether sizes come from measurements.
    pub(crate) fn adaptive(&self) -> bool {
        self.fixed.is_none()
    }

    /// Whether a measurement has come in (always true with a fixed size).
    pub(crate) fn measured(&self) -> bool {
        self.fixed.is_some() || self.item_nanos > 0.0
    }

    /// Size of the next chunk, given how many items are known to remain.
    pub(crate) fn next(&self, remaining: Option<usize>) -> usize {
        if let Some(n) = self.fixed {
            return n.max(1);
        }
        if self.item_nanos <= 0.0 {
            return 1;
        }
        let by_time = (TARGET_NANOS / self.item_nanos) as usize;
        let by_bytes = if self.item_bytes > 0.0 {
            (TARGET_BYTES / self.item_bytes) as usize
        } else {
            usize::MAX
        };
        let by_time = by_time.min(by_bytes).clamp(1, self.cap);
        match remaining {
            Some(r) => by_time.min(r.div_ceil(4 * self.workers)).max(1),
            None => by_time,
        }
    }

    /// After a chunk's worker died or timed out (which fails every item of the chunk),
    /// automatic sizing stops: one item per job from then on, so that the next crash
    /// fails only its own item.
    pub(crate) fn isolate(&mut self) {
        if self.fixed.is_none() {
            self.fixed = Some(1);
        }
    }

    /// Records that a job of `items` items ran for `nanos` and moved `bytes` of
    /// argument and result.
    pub(crate) fn observe(&mut self, nanos: u64, bytes: usize, items: usize) {
        if items == 0 {
            return;
        }
        let blend = |old: f64, new: f64| {
            if old <= 0.0 {
                new
            } else {
                0.7 * old + 0.3 * new
            }
        };
        self.item_bytes = blend(self.item_bytes, (bytes as f64 / items as f64).max(1.0));
        if nanos > 0 {
            self.item_nanos = blend(self.item_nanos, nanos as f64 / items as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_one_then_follows_the_measured_time() {
        let mut c = Chunker::new(None, 2, None);
        assert_eq!(c.next(None), 1);
        c.observe(1_000, 16, 1); // 1 µs per item
        assert_eq!(c.next(None), 1000);
        assert_eq!(c.next(Some(800)), 100); // a quarter of each worker's share
        c.observe(10, 160, 10); // tiny items: capped
        assert!(c.next(None) <= MAX_CHUNK);
    }

    #[test]
    fn large_items_make_small_chunks() {
        let mut c = Chunker::new(None, 2, None);
        c.observe(100, 64 * 1024, 1); // fast, but 64 KiB each
        assert_eq!(c.next(None), 16);
    }

    #[test]
    fn recycling_caps_the_chunk() {
        let mut c = Chunker::new(None, 2, Some(5));
        c.observe(10, 10, 10);
        assert_eq!(c.next(None), 5);
    }

    #[test]
    fn a_crash_turns_automatic_chunks_into_single_items() {
        let mut c = Chunker::new(None, 2, None);
        c.observe(1_000, 8, 1);
        c.isolate();
        assert_eq!(c.next(None), 1);
        let mut fixed = Chunker::new(Some(9), 2, None);
        fixed.isolate();
        assert_eq!(fixed.next(None), 9, "a size the user chose is kept");
    }

    #[test]
    fn a_fixed_size_is_kept() {
        let c = Chunker::new(Some(7), 4, None);
        assert_eq!(c.next(Some(3)), 7);
        assert!(c.measured());
    }
}
