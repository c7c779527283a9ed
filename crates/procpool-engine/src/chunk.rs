//! How many items go into one job.
//!
//! With no chunk size given, the engine measures instead of guessing: the first job for
//! each worker carries one item; from the first answer on, a chunk holds as many items as
//! take about [`TARGET_NANOS`] to run (the time reported by the workers) and as many as
//! make about [`TARGET_BYTES`] of argument and result together (so that memory in flight
//! stays small whatever the item size), at most [`MAX_CHUNK`], and when the input's
//! length is known, no more than a quarter of each worker's share of what is left, so
//! that every worker gets work to the end, but never less than [`MIN_NANOS`] of work (a
//! job costs a few microseconds of dispatch, whatever its size: a tail of ever smaller
//! chunks would spend more on jobs than on items), and never more than the tasks a
//! worker runs before it is recycled.
//!
//! Measurements are averaged weighted by items, with older jobs counting less and less:
//! a job of one item (the first on a cold worker, say) that took long says little about
//! the next thousand, and must not shrink the next chunks a hundredfold (it did: the
//! automatic-chunk figure swung by a third from one run to the next).
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
/// The same, for a call whose results are consumed as they come (an `imap`): what a
/// chunk holds is what the caller holds per chunk in flight, and results this small
/// travel through the results ring, which then stays small too.
pub(crate) const LAZY_TARGET_BYTES: f64 = 128.0 * 1024.0;
/// The least run time of a chunk cut short by the input's end (see the module's docs).
pub(crate) const MIN_NANOS: f64 = 100_000.0;
/// The largest automatic chunk.
pub(crate) const MAX_CHUNK: usize = 1 << 16;
/// How much the measurements of earlier jobs still count at each new one.
const DECAY: f64 = 0.5;

#[derive(Debug, Clone)]
pub(crate) struct Chunker {
    fixed: Option<usize>,
    /// Decayed sums of the measured jobs: run time, bytes of argument and result, items
    /// (0: nothing measured yet).
    nanos: f64,
    bytes: f64,
    items: f64,
    workers: usize,
    /// The bytes of argument and result a chunk aims at.
    target_bytes: f64,
    /// Largest automatic chunk (a worker recycled after `n` tasks takes chunks of at
    /// most `n`).
    cap: usize,
}

impl Chunker {
    pub(crate) fn new(fixed: Option<usize>, workers: usize, cap: Option<u64>) -> Self {
        let cap = cap.map_or(MAX_CHUNK, |c| (c.max(1) as usize).min(MAX_CHUNK));
        Self {
            fixed,
            nanos: 0.0,
            bytes: 0.0,
            items: 0.0,
            workers: workers.max(1),
            target_bytes: TARGET_BYTES,
            cap,
        }
    }

    /// Aims at `bytes` of argument and result per chunk instead of [`TARGET_BYTES`].
    pub(crate) fn set_target_bytes(&mut self, bytes: f64) {
        self.target_bytes = bytes.max(1.0);
    }

    /// The bytes of argument and result a chunk aims at.
    pub(crate) fn target_bytes(&self) -> f64 {
        self.target_bytes
    }

    /// Whether sizes come from measurements.
    pub(crate) fn adaptive(&self) -> bool {
        self.fixed.is_none()
    }

    /// Whether a measurement has come in (always true with a fixed size).
    pub(crate) fn measured(&self) -> bool {
        self.fixed.is_some() || self.items > 0.0
    }

    /// Size of the next chunk, given how many items are known to remain.
    pub(crate) fn next(&self, remaining: Option<usize>) -> usize {
        if let Some(n) = self.fixed {
            return n.max(1);
        }
        if self.items <= 0.0 {
            return 1;
        }
        // At least a nanosecond an item, a byte an item: no division by a zero.
        let item_nanos = (self.nanos / self.items).max(1.0);
        let item_bytes = (self.bytes / self.items).max(1.0);
        let by_bytes = self.target_bytes / item_bytes;
        let most = (TARGET_NANOS / item_nanos).min(by_bytes) as usize;
        let most = most.clamp(1, self.cap);
        let Some(r) = remaining else {
            return most;
        };
        let least = ((MIN_NANOS / item_nanos).min(by_bytes) as usize).clamp(1, most);
        r.div_ceil(4 * self.workers)
            .clamp(least, most)
            .min(r)
            .max(1)
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
        // A report of no time (a clock too coarse) counts as a nanosecond an item.
        let nanos = (nanos as f64).max(items as f64);
        self.nanos = DECAY * self.nanos + nanos;
        self.bytes = DECAY * self.bytes + bytes as f64;
        self.items = DECAY * self.items + items as f64;
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
    fn a_slow_single_item_does_not_shrink_the_chunks() {
        let mut c = Chunker::new(None, 2, None);
        c.observe(60_000, 200_000, 10_000); // 6 ns an item
        let before = c.next(None);
        c.observe(15_000, 20, 1); // one cold item: 15 µs
        let after = c.next(None);
        assert!(after * 2 > before, "{before} -> {after}");
    }

    #[test]
    fn the_tail_keeps_chunks_worth_a_job() {
        let mut c = Chunker::new(None, 2, None);
        c.observe(1_000_000, 16_000, 1_000); // 1 µs an item
        // A quarter of each worker's share of 80 items is 10, but 100 µs of work is 100
        // items: the last 80 go in one job.
        assert_eq!(c.next(Some(80)), 80);
        assert_eq!(c.next(Some(8_000)), 1000);
        assert_eq!(c.next(Some(2_000)), 250);
        assert_eq!(c.next(Some(400)), 100);
        let mut slow = Chunker::new(None, 2, None);
        slow.observe(10_000_000, 16, 1); // 10 ms an item
        assert_eq!(slow.next(Some(3)), 1);
    }

    #[test]
    fn large_items_make_small_chunks() {
        let mut c = Chunker::new(None, 2, None);
        c.observe(100, 64 * 1024, 1); // fast, but 64 KiB each
        assert_eq!(c.next(None), 16);
    }

    #[test]
    fn a_lazy_call_aims_at_fewer_bytes() {
        let mut c = Chunker::new(None, 2, None);
        c.set_target_bytes(LAZY_TARGET_BYTES);
        c.observe(1_000, 1_032, 1); // 1 KiB results
        assert_eq!(c.next(None), 127);
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
