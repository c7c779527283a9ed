//! A task that writes its worker's control block (shared memory the parent reads) cannot
//! escape its time limit or a cancel, cannot make the parent panic or hang, and harms no
//! other task: time limits rest on the supervisor's own clock, and every value read from
//! shared memory is checked (a lie kills the worker with a protocol error).
//!
//! The task finds the control memfd among its own descriptors (`/proc/self/fd`), maps it
//! writable and scribbles on it, as a buggy or hostile task could.

procpool::enable_test_support!();

mod common;

use std::time::{Duration, Instant};

use common::control_block;
use procpool::{Error, Pool, TaskErrorKind};

/// Word indices of the control block (see the engine's `process.rs`).
const STARTED_SEQ: usize = 0;
const STARTED_AT: usize = 1;
const RING_WRITE: usize = 2;
const RING_READ: usize = 3;
const CLAIM: usize = 5;

fn set(word: usize, v: u64) {
    control_block()[word].store(v, std::sync::atomic::Ordering::SeqCst);
}

/// Claims to have started at the end of time, or job 0, then runs forever.
fn forge_start_then_spin(how: u8) {
    match how {
        0 => set(STARTED_AT, u64::MAX),
        _ => set(STARTED_SEQ, 0),
    }
    loop {
        std::thread::sleep(Duration::from_millis(5));
        match how {
            0 => set(STARTED_AT, u64::MAX),
            _ => set(STARTED_SEQ, 0),
        }
    }
}

/// Puts the results ring's positions near the end of `u64`, then returns.
fn forge_ring(_: ()) -> u64 {
    set(RING_READ, u64::MAX - 7);
    set(RING_WRITE, u64::MAX - 3);
    1
}

/// Claims a job far in the future, or raises the parent's stop flag, then sleeps (so
/// that jobs queue behind it).
fn forge_claim((ms, stop): (u64, bool)) -> u64 {
    set(CLAIM, if stop { 1 << 63 } else { 1 << 40 });
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn a_forged_start_time_or_sequence_does_not_escape_the_time_limit() {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    for how in [0u8, 1] {
        let t = Instant::now();
        let r = pool
            .with_timeout(Duration::from_millis(200))
            .apply(forge_start_then_spin, how);
        let took = t.elapsed();
        match r {
            Err(Error::Task(e)) => assert!(
                matches!(e.kind(), TaskErrorKind::TimedOut { .. }),
                "forgery {how}: {e}"
            ),
            other => panic!("forgery {how}: {other:?}"),
        }
        assert!(
            took < Duration::from_secs(3),
            "forgery {how}: took {took:?}"
        );
    }
    assert_eq!(
        pool.map(double, 0..10u64).expect("map"),
        (0..10).map(|x| x * 2).collect::<Vec<_>>()
    );
}

#[test]
fn a_forged_sequence_does_not_escape_a_cancel() {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    let mut h = pool.spawn(forge_start_then_spin, 1).expect("spawn");
    std::thread::sleep(Duration::from_millis(200));
    let before = pool.worker_pids();
    h.cancel();
    let t = Instant::now();
    match h.join_timeout(Duration::from_secs(5)) {
        Err(procpool::WaitError::Failed(Error::Task(e))) => {
            assert!(matches!(e.kind(), TaskErrorKind::Cancelled), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // The worker that ran it is gone (killed), and the pool goes on.
    let gone = |pids: &[u32]| before.iter().any(|p| !pids.contains(p));
    while !gone(&pool.worker_pids()) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the cancelled task's worker still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.apply(double, 4).expect("apply"), 8);
}

#[test]
fn forged_ring_positions_kill_the_worker_with_a_protocol_error_and_the_pool_goes_on() {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    match pool.apply(forge_ring, ()) {
        Err(Error::Task(e)) => assert!(
            matches!(
                e.kind(),
                TaskErrorKind::Protocol { .. } | TaskErrorKind::WorkerDied { .. }
            ),
            "{e}"
        ),
        Ok(v) => panic!("a forged ring gave a value: {v}"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(pool.map(double, 0..100u64).expect("map").len(), 100);
}

#[test]
fn a_forged_claim_or_stop_flag_neither_hangs_nor_loses_work() {
    for workers in [1, 2] {
        for stop in [false, true] {
            let pool = Pool::builder()
                .workers(workers)
                .build()
                .expect("build a pool");
            // Warm the workers so that jobs are sent several at a time.
            pool.with_chunk_size(1)
                .map(double, 0..1000u64)
                .expect("warm up");
            std::thread::scope(|s| {
                let forger = s.spawn(|| pool.apply(forge_claim, (300, stop)));
                std::thread::sleep(Duration::from_millis(50));
                let out: Vec<u64> = pool
                    .with_chunk_size(1)
                    .map(double, 0..5000u64)
                    .expect("a map beside a forging task");
                assert_eq!(out, (0..5000).map(|x| x * 2).collect::<Vec<_>>());
                match forger.join().expect("join") {
                    Ok(v) => assert_eq!(v, 300),
                    Err(Error::Task(e)) => {
                        assert!(matches!(e.kind(), TaskErrorKind::Protocol { .. }), "{e}")
                    }
                    Err(e) => panic!("{e}"),
                }
            });
            assert_eq!(pool.apply(double, 21).expect("apply"), 42);
        }
    }
}
