//! Memory in flight is bounded in bytes, not only in jobs: a lazy call over many items
//! with 1 KiB results keeps the parent's memory small however many items pass through.
//!
//! One test in its own binary, so that the peak resident size (`VmHWM`) is this test's.

procpool::enable_test_support!();

use procpool::Pool;

fn kib(i: u64) -> Vec<u8> {
    vec![i as u8; 1024]
}

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB")
}

#[test]
fn imap_and_imap_unordered_of_1_kib_results_keep_the_parent_small() {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    let before = peak_kib();
    let mut bytes = 0usize;
    for r in pool.imap(kib, 0..150_000u64) {
        bytes += r.expect("item").len();
    }
    for (_, r) in pool.imap_unordered(kib, 0..150_000u64) {
        bytes += r.expect("item").len();
    }
    assert_eq!(bytes, 2 * 150_000 * 1024);
    let grew = peak_kib().saturating_sub(before);
    // Each worker's results ring (4 MiB) is mapped in the parent and counts once touched;
    // the rest is what is in flight. Before bounds in bytes this grew by ~128 MiB.
    assert!(
        grew < 40 * 1024,
        "the parent's peak memory grew by {grew} KiB while 290 MiB of results passed through"
    );
}
