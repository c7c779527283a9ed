//! A `Shared` value with interior mutability: each process works on its own copy, so a
//! change through `&T` stays in the process that made it (the contract in `Shared`'s
//! docs, "One copy per process").

mod common;

procpool::enable_test_support!();

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procpool::{Pool, Shared};

fn bump(counter: Shared<AtomicU64>) -> (u32, u64) {
    (std::process::id(), counter.fetch_add(1, Ordering::SeqCst))
}

#[test]
fn a_change_through_interior_mutability_stays_in_its_process() {
    common::watchdog(Duration::from_secs(20), || {
        let counter = Shared::new(AtomicU64::new(100)).unwrap();
        let pool = Pool::builder().workers(1).recycle_after(3).build().unwrap();
        let seen: Vec<(u32, u64)> = (0..6)
            .map(|_| pool.apply(bump, counter.clone()).unwrap())
            .collect();
        // Three tasks on the first worker see its copy change: 100, 101, 102.
        assert_eq!(
            seen.iter().map(|s| s.1).collect::<Vec<_>>(),
            [100, 101, 102, 100, 101, 102],
            "{seen:?}"
        );
        // The fourth runs in a new worker (the first retired after three): a fresh copy,
        // decoded from the encoding, which never changed.
        assert!(seen[..3].iter().all(|s| s.0 == seen[0].0), "{seen:?}");
        assert!(seen[3..].iter().all(|s| s.0 != seen[0].0), "{seen:?}");
        // The parent's copy is its own: no task's change reached it.
        assert_eq!(counter.load(Ordering::SeqCst), 100);
        // And the parent's own change reaches no worker.
        counter.store(7, Ordering::SeqCst);
        assert_eq!(pool.apply(bump, counter.clone()).unwrap().1, 100);
    });
}
