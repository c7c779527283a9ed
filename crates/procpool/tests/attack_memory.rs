//! `imap` over an endless input with 100 KiB results and a slow consumer: the parent's
//! memory must stay bounded. One test in its own binary, so that the peak resident size
//! (`VmHWM`) is this test's.

procpool::enable_test_support!();

mod common;

use common::status_kib;

use std::sync::mpsc;
use std::time::Duration;

use procpool::Pool;

fn hundred_kib(i: u64) -> Vec<u8> {
    // Uneven times: some items are slow, so that results finish out of order and the
    // ordered call has to hold some back.
    if i % 50 == 7 {
        std::thread::sleep(Duration::from_millis(40));
    }
    // One item far slower than the rest: an ordered call must stop pulling input once
    // 16 MiB of later results wait for it.
    if i == 4000 {
        std::thread::sleep(Duration::from_millis(1500));
    }
    vec![i as u8; 100 << 10]
}

#[test]
fn imap_of_100_kib_results_over_an_endless_input_with_a_slow_consumer_stays_bounded() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let before = status_kib("VmHWM:");
        let mut rss_max = 0;
        let mut n = 0u64;
        for (k, r) in pool.imap(hundred_kib, 0u64..).take(5000).enumerate() {
            let v = r.expect("item");
            assert_eq!(v.len(), 100 << 10);
            assert_eq!(v[0], k as u8, "out of order at {k}");
            n += 1;
            if k.is_multiple_of(10) {
                // A slow consumer.
                std::thread::sleep(Duration::from_millis(2));
                rss_max = rss_max.max(status_kib("VmRSS:"));
            }
        }
        for (_, r) in pool.imap_unordered(hundred_kib, 0u64..).take(2000) {
            assert_eq!(r.expect("item").len(), 100 << 10);
            n += 1;
            if n.is_multiple_of(10) {
                std::thread::sleep(Duration::from_millis(2));
                rss_max = rss_max.max(status_kib("VmRSS:"));
            }
        }
        let _ = tx.send((n, before, status_kib("VmHWM:"), rss_max));
    });
    let (n, before, after, rss_max) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the imap hung");
    assert_eq!(n, 7000);
    let grew = after.saturating_sub(before);
    eprintln!("peak grew {grew} KiB, max VmRSS {rss_max} KiB");
    // 500 MB of results passed through. Bounds: a few MiB in flight, 16 MiB held back for
    // reordering, each worker's 4 MiB ring mapped in the parent; allow 64 MiB.
    assert!(
        grew < 64 * 1024,
        "the parent's peak memory grew by {grew} KiB (max VmRSS {rss_max} KiB)"
    );
}
