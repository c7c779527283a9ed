//! Progress of one call (a `map`, an `imap`): items finished, failed, the total when the
//! input's length is known, time elapsed; reported to a callback at most once per
//! interval, and once more at the end.
//!
//! A [`Feed`](crate::Feed) counts the items of each job it hands back; the front counts
//! the failed ones as it decodes them ([`Feed::note_failed`](crate::Feed::note_failed)).
//! The callback runs on the caller's thread, from inside the feed's `recv`, never per
//! item: the count is a few additions per finished job, and the clock is read once per
//! job.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far a call has got, as given to a progress callback.
///
/// ```
/// use std::time::Duration;
///
/// fn percent(p: procpool_engine::Progress) -> Option<u64> {
///     p.total.map(|t| 100 * p.done / t.max(1))
/// }
///
/// let p = procpool_engine::Progress {
///     done: 25,
///     total: Some(100),
///     failed: 0,
///     elapsed: Duration::from_secs(1),
///     finished: false,
/// };
/// assert_eq!(percent(p), Some(25));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Items finished (succeeded or failed).
    pub done: u64,
    /// Items in the input, when its length is known up front.
    pub total: Option<u64>,
    /// Items that failed.
    pub failed: u64,
    /// Time since the call started.
    pub elapsed: Duration,
    /// Whether this is the last report of the call (it ended, or was abandoned or
    /// stopped by an error).
    pub finished: bool,
}

/// A progress callback, shared by the calls it is given to.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Default shortest time between two reports.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

/// One call's progress and where to report it.
pub(crate) struct Tracker {
    callback: ProgressFn,
    interval: Duration,
    start: Instant,
    last: Instant,
    done: u64,
    failed: u64,
    total: Option<u64>,
    /// Counts changed since the last report.
    dirty: bool,
    finished: bool,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("done", &self.done)
            .field("failed", &self.failed)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    pub(crate) fn new(callback: ProgressFn, interval: Duration, total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            callback,
            interval,
            start: now,
            last: now,
            done: 0,
            failed: 0,
            total,
            dirty: false,
            finished: false,
        }
    }

    fn report(&mut self, finished: bool) {
        self.dirty = false;
        (self.callback)(Progress {
            done: self.done,
            total: self.total,
            failed: self.failed,
            elapsed: self.start.elapsed(),
            finished,
        });
    }

    /// `n` more items finished.
    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        self.dirty = true;
    }

    /// `n` items counted as finished were not run after all (they go out again).
    pub(crate) fn retract(&mut self, n: u64) {
        self.done = self.done.saturating_sub(n);
    }

    /// `n` of the finished items failed.
    pub(crate) fn failed(&mut self, n: u64) {
        self.failed += n;
        self.dirty = true;
    }

    /// Reports if something changed and the interval has passed since the last report.
    pub(crate) fn tick(&mut self) {
        if !self.dirty || self.finished {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last) >= self.interval {
            self.last = now;
            self.report(false);
        }
    }

    /// The last report; later calls do nothing.
    pub(crate) fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.report(true);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // A panicking callback must not be called again while unwinding.
        if !std::thread::panicking() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn tracker(interval: Duration) -> (Arc<Mutex<Vec<Progress>>>, Tracker) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let f: ProgressFn = Arc::new(move |p| s.lock().unwrap().push(p));
        (seen, Tracker::new(f, interval, Some(10)))
    }

    #[test]
    fn reports_at_most_once_per_interval_and_once_at_the_end() {
        let (seen, mut t) = tracker(Duration::from_secs(3600));
        for _ in 0..10 {
            t.advance(1);
            t.tick();
        }
        assert!(seen.lock().unwrap().is_empty());
        t.failed(2);
        drop(t);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].done, seen[0].failed, seen[0].finished),
            (10, 2, true)
        );
    }

    #[test]
    fn a_zero_interval_reports_each_change_and_retracts() {
        let (seen, mut t) = tracker(Duration::ZERO);
        t.tick(); // nothing changed: no report
        t.advance(4);
        t.tick();
        t.retract(2); // two of them go out again
        t.advance(8);
        t.tick();
        t.finish();
        t.finish();
        let done: Vec<_> = seen.lock().unwrap().iter().map(|p| p.done).collect();
        assert_eq!(done, [4, 10, 10]);
    }
}
