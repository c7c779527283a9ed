//! `imap_unordered` over an endless input of 100 KiB arguments (through the workers'
//! data regions) with small results, a slow consumer and uneven task times: the parent's
//! memory must stay bounded. One test in its own binary, so that the peak resident size
//! (`VmHWM`) is this test's.

procpool::enable_test_support!();

mod common;

use common::status_kib;

use std::sync::mpsc;
use std::time::Duration;

use procpool::Pool;

fn sum(v: Vec<u8>) -> u64 {
    if v[0] % 40 == 7 {
        std::thread::sleep(Duration::from_millis(30));
    }
    v.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn imap_unordered_of_100_kib_arguments_over_an_endless_input_stays_bounded() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let before = status_kib("VmHWM:");
        let input = (0u64..).map(|i| vec![(i % 251) as u8; 100 << 10]);
        let mut n = 0u64;
        for (i, r) in pool.imap_unordered(sum, input).take(4000) {
            assert_eq!(r.expect("item"), (i as u64 % 251) * (100 << 10));
            n += 1;
            if n.is_multiple_of(10) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let input = (0u64..).map(|i| vec![(i % 251) as u8; 100 << 10]);
        for (i, r) in pool
            .with_chunk_size(1)
            .imap(sum, input)
            .take(2000)
            .enumerate()
        {
            assert_eq!(r.expect("item"), (i as u64 % 251) * (100 << 10));
            n += 1;
        }
        let _ = tx.send((n, before, status_kib("VmHWM:")));
    });
    let (n, before, after) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the calls hung");
    assert_eq!(n, 6000);
    let grew = after.saturating_sub(before);
    eprintln!("peak grew {grew} KiB");
    // 600 MB of arguments passed through; 16 MiB of payload in flight at most, plus
    // buffers and each worker's ring.
    assert!(
        grew < 64 * 1024,
        "the parent's peak memory grew by {grew} KiB"
    );
}
