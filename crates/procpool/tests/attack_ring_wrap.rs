//! Attack on the results ring's early wrap: a worker whose ring is empty past its first
//! eighth writes its next result at the start again (so that a parent that keeps up keeps
//! little of the ring resident). Workers are SIGKILLed while an `imap` streams results of
//! 24 KiB through rings that wrap early every few entries: every result that arrives must
//! be its item's own, each item must come exactly once, in order, and the only failures
//! allowed are items whose worker died under them.

procpool::enable_test_support!();

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::watchdog;
use procpool::{Error, Pool, TaskErrorKind};

const RESULT: usize = 24 << 10;

/// A 24 KiB result tagged with the index, after a short nap (so that kills land inside
/// chunks as well as between them).
fn tagged(i: u64) -> Vec<u8> {
    std::thread::sleep(Duration::from_micros(300));
    let mut v = vec![(i % 251) as u8; RESULT];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn check(i: u64, r: Result<Vec<u8>, Error>) -> bool {
    match r {
        Ok(v) => {
            assert_eq!(v.len(), RESULT, "item {i}");
            assert_eq!(
                u64::from_le_bytes(v[..8].try_into().unwrap()),
                i,
                "item {i}"
            );
            assert!(
                v[8..].iter().all(|&b| b == (i % 251) as u8),
                "item {i}: corrupt"
            );
            true
        }
        Err(Error::Task(e)) => {
            assert!(
                matches!(e.kind(), TaskErrorKind::WorkerDied { .. }),
                "item {i}: {e}"
            );
            assert_eq!(e.index(), i, "the failure names another item");
            false
        }
        Err(e) => panic!("item {i}: {e}"),
    }
}

#[test]
fn results_through_early_wrapped_rings_survive_kills() {
    watchdog(Duration::from_secs(120), || {
        let pool = Arc::new(Pool::builder().workers(2).build().expect("build a pool"));
        let killer =
            common::Killer::start(pool.clone(), |k| Duration::from_millis(60 + (k * 29) % 70));
        let n = 4000u64;
        let (mut ok, mut died) = (0u64, 0u64);
        // Automatic chunks (a death costs the item that was running) and single items.
        for chunk in [None, Some(1)] {
            let results: Box<dyn Iterator<Item = Result<Vec<u8>, Error>>> = match chunk {
                Some(c) => Box::new(pool.with_chunk_size(c).imap(tagged, 0..n)),
                None => Box::new(pool.imap(tagged, 0..n)),
            };
            let mut next = 0u64;
            for r in results {
                if check(next, r) {
                    ok += 1;
                } else {
                    died += 1;
                }
                next += 1;
            }
            assert_eq!(next, n, "chunk {chunk:?}: every item once");
        }
        let kills = killer.stop() as u64;
        eprintln!("{kills} kills, {died} items failed, {ok} succeeded");
        assert!(kills > 0, "no worker was killed");
        assert!(
            died <= kills,
            "{died} items failed for {kills} kills: finished items were lost"
        );
        assert!(ok > n, "only {ok} of {} succeeded", 2 * n);
    });
}
