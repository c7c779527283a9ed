//! Starting workers again after the operating system refused to start one.
//!
//! A refused start (`EAGAIN` from a process or memory limit, a missing executable) is
//! often transient: the pool waits and tries again, 10 ms after the first refusal, then
//! twice as long after each one, up to a second, and serves its work meanwhile on the
//! workers that live. It gives up only when no worker has been alive for
//! [`ALONE_LIMIT`] while every start was refused: then nothing would ever run the queued
//! work, and the pool breaks with [`PoolError::NoWorker`].

use std::time::{Duration, Instant};

use crate::error::PoolError;

/// The wait after the first refusal.
const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a pool with no live worker keeps trying.
pub(super) const ALONE_LIMIT: Duration = Duration::from_secs(10);

/// The state of retrying refused starts.
#[derive(Debug)]
pub(super) struct SpawnRetry {
    /// The wait after the next refusal.
    wait: Duration,
    /// No start is tried before this.
    next_try: Option<Instant>,
    /// Since when starts have been refused with no worker alive.
    alone_since: Option<Instant>,
}

impl Default for SpawnRetry {
    fn default() -> Self {
        Self {
            wait: FIRST_WAIT,
            next_try: None,
            alone_since: None,
        }
    }
}

impl SpawnRetry {
    /// How long until a start may be tried (`None`: now).
    pub(super) fn not_before(&self, now: Instant) -> Option<Duration> {
        self.next_try
            .filter(|&at| at > now)
            .map(|at| at.saturating_duration_since(now))
    }

    /// A start was refused with `e` while `live` workers were alive (started or
    /// starting). Returns the error to break the pool with, when it is time to give up.
    pub(super) fn refused(&mut self, e: PoolError, live: usize, now: Instant) -> Option<PoolError> {
        self.next_try = Some(now + self.wait);
        self.wait = (self.wait * 2).min(MAX_WAIT);
        if live > 0 {
            self.alone_since = None;
            return None;
        }
        let since = *self.alone_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        (waited >= ALONE_LIMIT).then(|| PoolError::NoWorker {
            waited,
            last: Box::new(e),
        })
    }

    /// A worker started: the next refusal is waited for from the shortest wait again.
    pub(super) fn started(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn refusal() -> PoolError {
        PoolError::Spawn(Arc::new(std::io::ErrorKind::WouldBlock.into()))
    }

    #[test]
    fn waits_double_up_to_a_second_and_reset_on_a_start() {
        let t0 = Instant::now();
        let mut r = SpawnRetry::default();
        assert_eq!(r.not_before(t0), None);
        let mut waits = Vec::new();
        for _ in 0..10 {
            assert!(r.refused(refusal(), 1, t0).is_none());
            waits.push(r.not_before(t0).unwrap());
        }
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert_eq!(waits[9], Duration::from_secs(1));
        r.started();
        assert_eq!(r.not_before(t0), None);
        r.refused(refusal(), 1, t0);
        assert_eq!(r.not_before(t0), Some(Duration::from_millis(10)));
    }

    #[test]
    fn gives_up_only_after_a_while_with_no_worker_alive() {
        let t0 = Instant::now();
        let mut r = SpawnRetry::default();
        assert!(r.refused(refusal(), 0, t0).is_none());
        // A live worker resets the count.
        assert!(r.refused(refusal(), 1, t0 + ALONE_LIMIT).is_none());
        let t1 = t0 + ALONE_LIMIT * 2;
        assert!(r.refused(refusal(), 0, t1).is_none());
        match r.refused(refusal(), 0, t1 + ALONE_LIMIT) {
            Some(PoolError::NoWorker { waited, last }) => {
                assert_eq!(waited, ALONE_LIMIT);
                assert!(matches!(*last, PoolError::Spawn(_)));
            }
            other => panic!("expected NoWorker, got {other:?}"),
        }
    }
}
