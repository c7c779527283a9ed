//! An `imap` holds a few chunks per worker, not megabytes: the bound on what a lazy call
//! holds follows its consumer (see `Pool::imap`'s docs for the peak to expect).
//!
//! One test in its own binary, so that the peak resident size (`VmHWM`) is this test's.

procpool::enable_test_support!();

mod common;

use std::time::Duration;

use procpool::Pool;

fn kib(i: u64) -> Vec<u8> {
    vec![i as u8; 1024]
}

#[test]
fn an_imap_of_1_kib_results_holds_a_few_chunks_per_worker() {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    // Warm up: the pool's own buffers and this thread's allocator arenas.
    for r in pool.imap(kib, 0..2_000u64) {
        r.expect("item");
    }
    let before = common::status_kib("VmHWM:");
    let mut seen = 0u64;
    for (i, r) in pool.imap(kib, 0..200_000u64).enumerate() {
        let v = r.expect("item");
        assert_eq!((v.len(), v[0]), (1024, i as u8));
        seen += 1;
        // A consumer that stalls now and then: the workers run ahead, up to the bound.
        if i % 50_000 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (_, r) in pool.imap_unordered(kib, 0..200_000u64) {
        assert_eq!(r.expect("item").len(), 1024);
        seen += 1;
    }
    assert_eq!(seen, 400_000);
    let grew = common::status_kib("VmHWM:").saturating_sub(before);
    // Expected: (6N + 4) chunks of about 128 KiB (2 MiB) plus about 0.6 MiB of each
    // worker's results ring. It grew by about 25 MiB when 1 MiB chunks, 4 MiB of
    // reordering and the whole ring were held.
    assert!(
        grew < 10 * 1024,
        "the parent's peak memory grew by {grew} KiB while 400 MiB of results passed through"
    );
}
