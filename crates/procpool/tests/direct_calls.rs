//! Direct calls: a single task for an idle worker goes from the caller straight to the
//! worker, and its result wakes the caller without the supervisor. These tests try to
//! break what must still hold on that path: a worker killed while it holds a direct job,
//! a caller that drops or detaches its handle, cancels, or dies; time limits; a task that
//! forges the control-block words the path uses; many callers racing for one worker; the
//! recycling quota.

procpool::enable_test_support!();

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::{TempDir, append, sigkill, wait_for_file, watchdog, write_file};
use procpool::{Death, Error, Pool, TaskErrorKind};

const RING_WRITE: usize = 2;
const STARTED_SEQ: usize = 0;
const DIRECT_WAKE: usize = 16;
const DIRECT_WAITING: usize = 17;
const BELL: usize = 24;
const DIRECT_SEQ: usize = 25;
const RING_OFFSET: usize = 4096;

fn pid_of_worker(_: u64) -> u32 {
    std::process::id()
}

fn pid_after_nap(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn double(x: u64) -> u64 {
    x * 2
}

fn kind(e: &Error) -> &TaskErrorKind {
    e.as_task().expect("a task error").kind()
}

/// A pool of one worker, warmed up so that its worker is lent out to callers.
fn one_worker(b: procpool::Builder) -> Pool {
    let pool = b.workers(1).build().unwrap();
    for i in 0..3 {
        assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
    }
    pool
}

/// Writes its pid to `path`, then sleeps `ms`.
fn pid_then_sleep((path, ms): (String, u64)) -> u64 {
    write_file(&path, &std::process::id().to_string());
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_worker_killed_while_it_holds_a_direct_job_fails_that_job_alone() {
    watchdog(Duration::from_secs(30), || {
        let dir = TempDir::new("direct-kill");
        let pool = one_worker(Pool::builder());
        let path = dir.file("pid");
        let h = pool.spawn(pid_then_sleep, (path.clone(), 10_000)).unwrap();
        let pid: u32 = wait_for_file(&path, Duration::from_secs(10))
            .trim()
            .parse()
            .unwrap();
        sigkill(pid);
        let t0 = Instant::now();
        let e = h.join().unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(
            kind(&e),
            &TaskErrorKind::WorkerDied {
                death: Death::Signal(libc::SIGKILL)
            },
            "{e}"
        );
        // The replacement serves, directly again.
        for i in 0..20 {
            assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
        }
        assert_ne!(pool.apply(pid_of_worker, 0).unwrap(), pid);
    });
}

fn kill_me_once((path, i): (String, u64)) -> u64 {
    append(&path, i);
    let runs = std::fs::read_to_string(&path).unwrap().lines().count();
    if runs == 1 {
        // SAFETY: kills this worker process, as a crashing task would.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    i + 100
}

#[test]
fn a_direct_job_whose_worker_dies_is_retried_once_and_never_run_twice_after() {
    watchdog(Duration::from_secs(30), || {
        let dir = TempDir::new("direct-retry");
        let pool = one_worker(Pool::builder().retries(1));
        let path = dir.file("runs");
        assert_eq!(pool.apply(kill_me_once, (path.clone(), 7)).unwrap(), 107);
        std::thread::sleep(Duration::from_millis(100));
        let runs = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            runs.lines().count(),
            2,
            "one attempt and one retry: {runs:?}"
        );
    });
}

fn die_now(_: u64) -> u64 {
    // SAFETY: ends this worker process at once, as a crashing task would.
    unsafe { libc::_exit(9) }
}

#[test]
fn a_worker_that_exits_inside_a_direct_job_fails_it_and_the_pool_goes_on() {
    watchdog(Duration::from_secs(30), || {
        let pool = one_worker(Pool::builder());
        for round in 0..5 {
            let e = pool.apply(die_now, round).unwrap_err();
            assert_eq!(
                kind(&e),
                &TaskErrorKind::WorkerDied {
                    death: Death::Exit(9)
                },
                "{e}"
            );
            assert_eq!(pool.apply(double, round).unwrap(), 2 * round);
        }
    });
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn time_limits_hold_on_direct_jobs() {
    watchdog(Duration::from_secs(30), || {
        let pool = one_worker(Pool::builder().timeout(Duration::from_millis(200)));
        for _ in 0..3 {
            let t0 = Instant::now();
            let e = pool.apply(nap, 20_000).unwrap_err();
            let took = t0.elapsed();
            assert!(matches!(kind(&e), TaskErrorKind::TimedOut { .. }), "{e}");
            assert!(took >= Duration::from_millis(200), "{took:?}");
            assert!(took < Duration::from_secs(5), "{took:?}");
            assert_eq!(pool.apply(nap, 1).unwrap(), 1);
        }
        // A per-call limit too, and a job within its limit is not disturbed.
        let e = pool
            .with_timeout(Duration::from_millis(100))
            .apply(nap, 20_000)
            .unwrap_err();
        assert!(matches!(kind(&e), TaskErrorKind::TimedOut { .. }), "{e}");
        assert_eq!(pool.apply(nap, 50).unwrap(), 50);
    });
}

#[test]
fn a_wait_with_a_time_limit_on_a_direct_job_returns_and_can_be_repeated() {
    watchdog(Duration::from_secs(30), || {
        let pool = one_worker(Pool::builder());
        let mut h = pool.spawn(nap, 300).unwrap();
        assert!(matches!(
            h.join_timeout(Duration::from_millis(20)),
            Err(procpool::WaitError::Timeout)
        ));
        assert!(!h.is_finished());
        assert_eq!(h.join_timeout(Duration::from_secs(10)).unwrap(), 300);
    });
}

#[test]
fn dropping_or_cancelling_a_direct_job_frees_its_worker_for_the_next_call() {
    watchdog(Duration::from_secs(30), || {
        let dir = TempDir::new("direct-drop");
        let pool = one_worker(Pool::builder());
        // Dropped: the task still runs (a detached handle), then the worker serves.
        let path = dir.file("dropped");
        drop(pool.spawn(pid_then_sleep, (path.clone(), 200)).unwrap());
        assert_eq!(pool.apply(double, 21).unwrap(), 42);
        assert!(std::fs::metadata(&path).is_ok(), "the dropped task ran");
        // Cancelled while running: its worker is killed and replaced.
        let path = dir.file("cancelled");
        let h = pool.spawn(pid_then_sleep, (path.clone(), 20_000)).unwrap();
        let pid: u32 = wait_for_file(&path, Duration::from_secs(10))
            .trim()
            .parse()
            .unwrap();
        h.cancel();
        let t0 = Instant::now();
        let e = h.join().unwrap_err();
        assert_eq!(kind(&e), &TaskErrorKind::Cancelled, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(pool.apply(double, 4).unwrap(), 8);
        assert_ne!(pool.apply(pid_of_worker, 0).unwrap(), pid);
    });
}

#[test]
fn a_caller_thread_that_dies_with_a_direct_job_does_not_hold_its_worker() {
    watchdog(Duration::from_secs(30), || {
        let dir = TempDir::new("direct-thread");
        let pool = std::sync::Arc::new(one_worker(Pool::builder()));
        let p = pool.clone();
        let path = dir.file("ran");
        let path2 = path.clone();
        let died = std::thread::spawn(move || {
            let _h = p.spawn(pid_then_sleep, (path2, 100)).unwrap();
            panic!("the caller dies holding its handle");
        })
        .join();
        assert!(died.is_err());
        // The worker finishes the orphaned task, then takes the next call.
        assert_eq!(pool.apply(double, 5).unwrap(), 10);
        assert!(std::fs::metadata(&path).is_ok());
        // Async waiting on a direct job is answered through the supervisor.
        let h = pool.spawn(nap, 30).unwrap();
        assert_eq!(futures_lite_block_on(h).unwrap(), 30);
    });
}

/// Polls a future to completion on this thread (the test needs no runtime).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output
where
    F::Output: std::fmt::Debug,
{
    use std::task::{Context, Poll, Wake, Waker};
    struct Flag(std::sync::Mutex<bool>, std::sync::Condvar);
    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            *self.0.lock().unwrap() = true;
            self.1.notify_all();
        }
    }
    let flag = std::sync::Arc::new(Flag(
        std::sync::Mutex::new(false),
        std::sync::Condvar::new(),
    ));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let mut woken = flag.0.lock().unwrap();
        while !*woken {
            woken = flag.1.wait(woken).unwrap();
        }
        *woken = false;
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Forge {
    /// Bumps the caller's futex word and raises its waiting flag, over and over.
    Futex,
    /// Rings the bell and writes the direct-job word, over and over.
    Bell,
    /// Moves the ring's write position far ahead.
    RingAhead,
    /// Publishes a well-formed result for a job the worker does not hold.
    OtherSeq,
}

fn forger((how, x): (Forge, u64)) -> u64 {
    let ctl = common::control_pages(2);
    let me = ctl[STARTED_SEQ].load(SeqCst);
    match how {
        Forge::Futex | Forge::Bell => {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(150) {
                if matches!(how, Forge::Futex) {
                    ctl[DIRECT_WAKE].fetch_add(1, SeqCst);
                    ctl[DIRECT_WAITING].store(u64::MAX, SeqCst);
                } else {
                    ctl[BELL].fetch_add(1, SeqCst);
                    ctl[DIRECT_SEQ].store(me + 1, SeqCst);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Forge::RingAhead => {
            ctl[RING_WRITE].fetch_add(1 << 20, SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
        Forge::OtherSeq => {
            let write = ctl[RING_WRITE].load(SeqCst) as usize;
            // An entry: u32 length, 4 bytes unused, then seq, time, status 0, 0 bytes.
            let mut body = Vec::new();
            body.extend_from_slice(&(me + 7).to_le_bytes());
            body.extend_from_slice(&5u64.to_le_bytes());
            body.push(0);
            body.extend_from_slice(&0u32.to_le_bytes());
            let at = RING_OFFSET + write % (4 << 20);
            assert!(at + 8 + 24 <= 8192, "the ring's first page");
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
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    x * 3
}

#[test]
fn forged_futex_and_bell_words_only_cost_wake_ups() {
    watchdog(Duration::from_secs(30), || {
        let pool = one_worker(Pool::builder());
        for how in [Forge::Futex, Forge::Bell] {
            for i in 0..3 {
                assert_eq!(pool.apply(forger, (how, i)).unwrap(), 3 * i, "{how:?}");
                assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
            }
        }
    });
}

#[test]
fn forged_ring_entries_on_a_direct_job_are_protocol_errors_never_values() {
    watchdog(Duration::from_secs(30), || {
        let pool = one_worker(Pool::builder());
        for how in [Forge::RingAhead, Forge::OtherSeq] {
            let e = pool.apply(forger, (how, 1)).unwrap_err();
            assert!(
                matches!(kind(&e), TaskErrorKind::Protocol { .. }),
                "{how:?}: {e}"
            );
            // The worker was replaced; the next calls are served.
            for i in 0..5 {
                assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
            }
        }
    });
}

fn logged((path, i): (String, u64)) -> u64 {
    append(&path, i);
    i * 2
}

#[test]
fn many_callers_racing_for_one_idle_worker_each_get_their_own_answer_once() {
    watchdog(Duration::from_secs(60), || {
        for workers in [1, 2] {
            let dir = TempDir::new("direct-race");
            let path = dir.file("runs");
            let pool = Pool::builder().workers(workers).build().unwrap();
            const THREADS: u64 = 8;
            const CALLS: u64 = 150;
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let (pool, path) = (&pool, path.clone());
                    s.spawn(move || {
                        for k in 0..CALLS {
                            let i = t * CALLS + k;
                            assert_eq!(pool.apply(logged, (path.clone(), i)).unwrap(), 2 * i);
                        }
                    });
                }
            });
            let mut seen = vec![0u32; (THREADS * CALLS) as usize];
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                seen[line.parse::<usize>().unwrap()] += 1;
            }
            let wrong: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] != 1).collect();
            assert!(
                wrong.is_empty(),
                "{workers} workers: ran other than once: {wrong:?}"
            );
        }
    });
}

#[test]
fn the_recycling_quota_counts_direct_jobs() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(1).recycle_after(3).build().unwrap();
        let pids: Vec<u32> = (0..12)
            .map(|i| pool.apply(pid_of_worker, i).unwrap())
            .collect();
        for chunk in pids.chunks(3) {
            assert!(chunk.iter().all(|&p| p == chunk[0]), "{pids:?}");
        }
        let mut distinct = pids.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "a fresh worker every 3 tasks: {pids:?}");
    });
}

/// Calls one after the other from one thread go to the worker that answered the last one
/// (it spins for its next job), not round the pool, where each call found a worker
/// asleep and had to wake it. Two threads calling at once still get a worker each.
#[test]
fn calls_one_after_the_other_stay_with_the_worker_that_answered_the_last() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(3).build().unwrap();
        for i in 0..20 {
            assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
        }
        let pids: Vec<u32> = (0..100)
            .map(|i| pool.apply(pid_of_worker, i).unwrap())
            .collect();
        // The supervisor takes every lane back whenever it wakes, and a call made then
        // may find the next one open first: a few changes of worker, not one per call.
        let changes = pids.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 10, "calls went round the workers: {pids:?}");

        // Two threads at once, each task long enough that their calls overlap: neither
        // waits for the other's worker.
        let pool = &pool;
        let start = &std::sync::Barrier::new(2);
        let per_thread: Vec<Vec<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(move || {
                        start.wait();
                        (0..50)
                            .map(|_| pool.apply(pid_after_nap, 2).unwrap())
                            .collect::<Vec<u32>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u32> = per_thread.concat();
        all.sort_unstable();
        all.dedup();
        assert!(
            all.len() >= 2,
            "two callers shared one worker: {per_thread:?}"
        );
    });
}

#[test]
fn a_map_after_direct_calls_and_direct_calls_during_a_map_are_all_answered() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().unwrap();
        for i in 0..10 {
            assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                let v = pool.map(nap, vec![2u64; 200]).unwrap();
                assert_eq!(v, vec![2u64; 200]);
            });
            s.spawn(|| {
                for i in 0..100 {
                    assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
                }
            });
        });
        let v = pool.map(double, 0..1000u64).unwrap();
        assert!(v.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));
    });
}
