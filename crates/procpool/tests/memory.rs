//! Memory in flight is bounded in bytes, not only in jobs: a lazy call over many items
//! with 1 KiB results keeps the parent's memory small however many items pass through.
//!
//! One test in its own binary, so that the peak resident size (`VmHWM`) is this test's.

procpool::enable_test_support!();

mod common;

use procpool::Pool;

fn kib(i: u64) -> Vec<u8> {
    vec![i as u8; 1024]
}

#[test]
fn imap_and_imap_unordered_of_1_kib_results_keep_the_parent_small() {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    let before = common::status_kib("VmHWM:");
    let mut bytes = 0usize;
    for r in pool.imap(kib, 0..150_000u64) {
        bytes += r.expect("item").len();
    }
    for (_, r) in pool.imap_unordered(kib, 0..150_000u64) {
        bytes += r.expect("item").len();
    }
    assert_eq!(bytes, 2 * 150_000 * 1024);
    let grew = common::status_kib("VmHWM:").saturating_sub(before);
    // Each worker's results ring (4 MiB) is mapped in the parent and counts once touched;
    // the rest is what is in flight. Before bounds in bytes this grew by ~128 MiB.
    assert!(
        grew < 40 * 1024,
        "the parent's peak memory grew by {grew} KiB while 290 MiB of results passed through"
    );
}
