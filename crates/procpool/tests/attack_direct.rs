//! Attacks on direct calls (a single task sent by the caller straight to an idle worker,
//! its result waking the caller through shared memory): workers SIGKILLed at random
//! while many threads call, the pool dropped while callers wait on lent jobs, and a task
//! that publishes a well-formed result for its own job early, then goes on running.

procpool::enable_test_support!();

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use common::watchdog;
use procpool::{Error, Pool, TaskErrorKind};

fn kind(e: &Error) -> &TaskErrorKind {
    e.as_task().expect("a task error").kind()
}

/// `(caller, i)` back, after `us` microseconds, with the worker's pid: each answer
/// names its call.
fn tagged((caller, i, us): (u64, u64, u64)) -> (u64, u64, u32) {
    if us > 0 {
        std::thread::sleep(Duration::from_micros(us));
    }
    (caller, i, std::process::id())
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn callers_racing_while_workers_are_sigkilled_get_their_own_answer_or_a_death() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().unwrap();
        for i in 0..4 {
            assert_eq!(pool.apply(tagged, (99, i, 0)).unwrap().0, 99);
        }
        let stop = AtomicBool::new(false);
        let kills = AtomicUsize::new(0);
        let deaths = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        // A worker seen answering: it is past its handshake (killing workers still
        // starting would only break the pool, by design, after three in a row).
        let serving = AtomicU64::new(0);
        std::thread::scope(|s| {
            let pool = &pool;
            let killer = s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(3 + n % 7));
                    n += 1;
                    let p = serving.swap(0, SeqCst) as u32;
                    if p != 0 {
                        // SAFETY: kill(2) on a worker of this test's pool (it may be gone).
                        if unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) } == 0 {
                            kills.fetch_add(1, SeqCst);
                        }
                    }
                }
            });
            let callers: Vec<_> = (0..4u64)
                .map(|c| {
                    let (deaths, done, serving) = (&deaths, &done, &serving);
                    s.spawn(move || {
                        let t0 = Instant::now();
                        let mut i = 0u64;
                        while t0.elapsed() < Duration::from_secs(4) {
                            let us = [0, 0, 50, 500][(i % 4) as usize];
                            match pool.apply(tagged, (c, i, us)) {
                                Ok((vc, vi, pid)) => {
                                    assert_eq!((vc, vi), (c, i), "caller {c} got another's answer");
                                    serving.store(u64::from(pid), SeqCst);
                                }
                                Err(e) => {
                                    assert!(
                                        matches!(
                                            e.as_task().map(|t| t.kind()),
                                            Some(TaskErrorKind::WorkerDied { .. })
                                        ),
                                        "caller {c} call {i}: {e:?}"
                                    );
                                    deaths.fetch_add(1, SeqCst);
                                }
                            }
                            done.fetch_add(1, SeqCst);
                            i += 1;
                        }
                    })
                })
                .collect();
            for c in callers {
                c.join().unwrap();
            }
            stop.store(true, SeqCst);
            killer.join().unwrap();
        });
        assert!(kills.load(SeqCst) > 20, "the killer ran");
        assert!(
            done.load(SeqCst) > 100,
            "calls were made: {}",
            done.load(SeqCst)
        );
        // The pool is whole afterwards.
        assert_eq!(pool.map(|x: u64| x + 1, 0..100u64).unwrap().len(), 100);
        let _ = deaths;
    });
}

#[test]
fn dropping_the_pool_ends_callers_waiting_on_lent_jobs_at_once() {
    watchdog(Duration::from_secs(30), || {
        let pool = Pool::builder().workers(2).build().unwrap();
        for i in 0..4 {
            assert_eq!(pool.apply(nap, i).unwrap(), i);
        }
        let a = pool.spawn(nap, 20_000).unwrap();
        let b = pool.spawn(nap, 20_000).unwrap();
        let waiters: Vec<_> = [a, b]
            .into_iter()
            .map(|h| std::thread::spawn(move || (Instant::now(), h.join())))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        drop(pool);
        for w in waiters {
            let (_, r) = w.join().unwrap();
            let e = r.expect_err("a job of a dropped pool");
            assert_eq!(kind(&e), &TaskErrorKind::Terminated, "{e}");
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    });
}

const RING_WRITE: usize = 2;
const STARTED_SEQ: usize = 0;
const RING_OFFSET: usize = 4096;

/// Publishes a well-formed, empty result for its own job (as if it had returned), then
/// sleeps 300 ms and returns: the worker then publishes the real result for a job its
/// caller already took.
fn early_result(x: u64) -> u64 {
    let ctl = common::control_pages(2);
    let me = ctl[STARTED_SEQ].load(SeqCst);
    let write = ctl[RING_WRITE].load(SeqCst) as usize;
    let mut body = Vec::new();
    body.extend_from_slice(&me.to_le_bytes());
    body.extend_from_slice(&5u64.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&0u32.to_le_bytes());
    let at = RING_OFFSET + write % (4 << 20);
    if at + 8 + 24 <= 8192 {
        let base = ctl.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: within the two pages mapped above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (body.len() as u32).to_le_bytes().as_ptr(),
                base.add(at),
                4,
            );
            std::ptr::copy_nonoverlapping(body.as_ptr(), base.add(at + 8), body.len());
        }
        ctl[RING_WRITE].store((write + 8 + body.len().div_ceil(8) * 8) as u64, SeqCst);
    }
    std::thread::sleep(Duration::from_millis(300));
    x
}

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn a_task_publishing_its_result_early_never_costs_the_next_call() {
    watchdog(Duration::from_secs(30), || {
        let pool = Pool::builder().workers(1).build().unwrap();
        for i in 0..3 {
            assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
        }
        // The forger's own outcome may be anything but a value it did not return.
        match pool.apply(early_result, 7) {
            Ok(v) => assert_eq!(v, 7),
            Err(e) => assert!(
                matches!(
                    kind(&e),
                    TaskErrorKind::Protocol { .. } | TaskErrorKind::Codec { .. }
                ),
                "{e}"
            ),
        }
        let after: Vec<_> = (0..5).map(|i| pool.apply(double, i)).collect();
        for (i, r) in after.into_iter().enumerate() {
            assert_eq!(r.expect("a call after the forger's"), 2 * i as u64);
        }
    });
}

#[test]
fn a_task_publishing_its_result_early_never_costs_the_calls_queued_behind_it() {
    watchdog(Duration::from_secs(30), || {
        let pool = Pool::builder().workers(1).build().unwrap();
        for i in 0..3 {
            assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
        }
        let forger = pool.spawn(early_result, 7).unwrap();
        let queued: Vec<_> = (0..3).map(|i| pool.spawn(double, i).unwrap()).collect();
        let _ = forger.join();
        for (i, h) in queued.into_iter().enumerate() {
            assert_eq!(
                h.join().expect("a call queued behind the forger's"),
                2 * i as u64
            );
        }
    });
}
