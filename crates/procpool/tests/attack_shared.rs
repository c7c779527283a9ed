//! Attacks on "decoding a `Shared` value is not the task's time": a task that carries no
//! shared value at all, so has nothing to decode, yet claims to be decoding (through the
//! engine's marker, or by writing the control block's words itself) must still die at its
//! own time limit, as a time-out, not live on for the whole decode allowance and fail
//! with an error text of its own choosing.

mod common;

procpool::enable_test_support!();

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use procpool::{Error, Pool, TaskErrorKind};

const LIMIT: Duration = Duration::from_millis(300);
const ALLOWANCE: Duration = Duration::from_secs(8);

fn claims_to_decode(_: u32) -> u32 {
    let _p = procpool_engine::preparing("decoding a Shared<Vec<u64>> of 1 TB (not really)");
    loop {
        std::hint::spin_loop();
    }
}

fn forges_the_words(_: u32) -> u32 {
    let ctl = common::control_block();
    ctl[64].store(1, Ordering::Release);
    ctl[65].store(u64::MAX / 2, Ordering::Release);
    loop {
        std::hint::spin_loop();
    }
}

fn check(f: fn(u32) -> u32, what: &str) {
    let pool = Pool::builder()
        .workers(1)
        .timeout(LIMIT)
        .shared_decode_timeout(ALLOWANCE)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let r = pool.apply(f, 0);
    let took = t0.elapsed();
    let Err(Error::Task(e)) = r else {
        panic!("{what}: a spinning task returned: {r:?}")
    };
    assert!(
        took < LIMIT + Duration::from_secs(3),
        "{what}: a task with no shared value lived {took:?} under a {LIMIT:?} limit: {e}"
    );
    assert!(
        matches!(e.kind(), TaskErrorKind::TimedOut { .. }),
        "{what}: {e}"
    );
    assert_eq!(pool.apply(|x: u32| x + 1, 1).unwrap(), 2);
}

#[test]
fn a_task_without_a_shared_value_cannot_claim_decode_time() {
    common::watchdog(Duration::from_secs(25), || {
        check(claims_to_decode, "the engine's marker")
    });
}

#[test]
fn a_task_without_a_shared_value_cannot_forge_decode_time() {
    common::watchdog(Duration::from_secs(25), || {
        check(forges_the_words, "forged control words")
    });
}
