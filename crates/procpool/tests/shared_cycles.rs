//! 500 shared values made, sent and dropped: descriptors and memory come back where they
//! started, in the parent and in the worker. Alone in its test binary, so that no other
//! test opens descriptors meanwhile.

mod common;

procpool::enable_test_support!();

use procpool::{Pool, Shared, SharedSlice};

/// Descriptors open in this process, and how many of them are shared values' memfds.
fn fds() -> (usize, usize) {
    let all = std::fs::read_dir("/proc/self/fd").unwrap().count();
    (all, common::shared_memfds().len())
}

/// The shared memfds the worker holds (after it let go of values dropped by the parent).
fn worker_holds(s: Shared<u64>) -> usize {
    assert!(*s < 1000);
    common::shared_memfds().len()
}

/// The shared memfds the worker holds, and its mappings of shared values.
fn worker_holds_nothing(_: ()) -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mapped = maps
        .lines()
        .filter(|l| l.contains("memfd:procpool-shared"))
        .count();
    (common::shared_memfds().len(), mapped)
}

#[test]
fn descriptors_and_memory_come_back_after_500_values() {
    let pool = Pool::builder().workers(1).build().unwrap();
    // Warm up: the worker, the round-trip verdict, the lease machinery.
    let warm = Shared::new(0u64).unwrap();
    pool.apply(worker_holds, warm).unwrap();
    pool.apply(worker_holds_nothing, ()).unwrap();
    let before = fds();
    let mut most = 0;
    for k in 0..500u64 {
        let s = Shared::new(k).unwrap();
        let slice = SharedSlice::new(&[k; 16]).unwrap();
        most = most.max(pool.apply(worker_holds, s.clone()).unwrap());
        assert_eq!(pool.apply(|x: SharedSlice<u64>| x[3], slice).unwrap(), k);
    }
    // The worker let go of each value as soon as it started a task after the drop.
    assert!(most <= 3, "the worker held {most} shared memfds at once");
    assert_eq!(pool.apply(worker_holds_nothing, ()).unwrap(), (0, 0));
    assert_eq!(fds(), before, "descriptors (all, shared) before and after");
}
