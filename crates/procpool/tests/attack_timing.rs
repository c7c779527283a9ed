//! Attacks on time limits with jobs held in a worker's window: a job queued behind
//! others must not be charged for its wait, and a limit must still fire for an endless
//! task that comes after many tiny jobs on the same worker.

procpool::enable_test_support!();

mod common;

use std::time::{Duration, Instant};

use common::{nap, watchdog};
use procpool::{Error, Pool, TaskErrorKind};

/// Many instant items, then several long ones in a row (each under the limit alone,
/// together far over it), then instant ones again.
fn tiny_then_long(long: u64, count: usize) -> Vec<u64> {
    let mut items = vec![0u64; 400];
    items.extend(std::iter::repeat_n(long, count));
    items.extend([0u64; 50]);
    items
}

#[test]
fn a_job_waiting_behind_long_ones_on_a_one_worker_pool_is_not_charged_for_its_wait() {
    watchdog(Duration::from_secs(120), || {
        let pool = Pool::builder().workers(1).build().expect("build a pool");
        for how in ["map", "imap", "imap_unordered"] {
            // Chunk size 1 with a limit: the instant items make the window hold several
            // long ones at once.
            let call = pool.with_timeout(Duration::from_millis(600)).chunk_size(1);
            let items = tiny_then_long(250, 4);
            let out: Vec<Result<u64, Error>> = match how {
                "map" => match call.map(nap, items.clone()) {
                    Ok(v) => v.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                },
                "imap" => call.imap(nap, items.clone()).collect(),
                _ => {
                    let mut v: Vec<(usize, Result<u64, Error>)> =
                        call.imap_unordered(nap, items.clone()).collect();
                    v.sort_by_key(|p| p.0);
                    v.into_iter().map(|p| p.1).collect()
                }
            };
            for (i, r) in out.iter().enumerate() {
                assert!(r.is_ok(), "{how}: item {i} failed: {r:?}");
            }
            assert_eq!(out.len(), items.len(), "{how}");
        }
    });
}

#[test]
fn a_job_waiting_behind_long_ones_with_a_busy_second_worker_is_not_charged_for_its_wait() {
    watchdog(Duration::from_secs(120), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        std::thread::scope(|s| {
            // The other worker is busy the whole time, so nothing is taken back.
            let blocker = s.spawn(|| pool.apply(nap, 4000));
            std::thread::sleep(Duration::from_millis(200));
            let items = tiny_then_long(250, 4);
            let out = pool
                .with_timeout(Duration::from_millis(600))
                .chunk_size(1)
                .map(nap, items.clone());
            match out {
                Ok(v) => assert_eq!(v, items),
                Err(e) => panic!("a job was charged for waiting: {e}"),
            }
            assert_eq!(blocker.join().expect("join").expect("blocker"), 4000);
        });
    });
}

#[test]
fn a_builder_limit_still_fires_for_an_endless_task_after_many_tiny_jobs_on_one_worker() {
    watchdog(Duration::from_secs(120), || {
        for workers in [1usize, 2] {
            let pool = Pool::builder()
                .workers(workers)
                .timeout(Duration::from_millis(300))
                .build()
                .expect("build a pool");
            for chunk in [Some(1usize), None] {
                let mut items = vec![0u64; 3000];
                items.push(u64::MAX);
                items.extend([0u64; 200]);
                let endless = 3000usize;
                let t = Instant::now();
                let call = pool.with_chunk_size(chunk.unwrap_or(1));
                let results: Vec<(usize, Result<u64, Error>)> = match chunk {
                    Some(_) => call.imap_unordered(nap, items).collect(),
                    None => pool.imap_unordered(nap, items).collect(),
                };
                let took = t.elapsed();
                assert_eq!(results.len(), 3201);
                for (i, r) in results {
                    if i == endless {
                        match r {
                            Err(Error::Task(e)) => assert!(
                                matches!(e.kind(), TaskErrorKind::TimedOut { .. }),
                                "{workers} workers, chunk {chunk:?}: {e}"
                            ),
                            other => panic!("{workers} workers, chunk {chunk:?}: {other:?}"),
                        }
                    } else {
                        assert_eq!(r.expect("an instant item"), 0);
                    }
                }
                assert!(
                    took < Duration::from_secs(20),
                    "{workers} workers, chunk {chunk:?}: took {took:?}"
                );
            }
        }
    });
}

#[test]
fn a_limit_fires_on_time_for_an_endless_task_in_the_middle_of_a_window() {
    // The endless item sits among instant ones in the same window; it must be killed at
    // about its limit after it became due, not never, and not much later.
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(1).build().expect("build a pool");
        let limit = Duration::from_millis(300);
        let mut items = vec![0u64; 2000];
        items[1500] = u64::MAX;
        let t = Instant::now();
        let out: Vec<(usize, Result<u64, Error>)> = pool
            .with_timeout(limit)
            .chunk_size(1)
            .imap_unordered(nap, items)
            .collect();
        let took = t.elapsed();
        for (i, r) in out {
            if i == 1500 {
                match r {
                    Err(Error::Task(e)) => match e.kind() {
                        TaskErrorKind::TimedOut { ran, .. } => assert!(
                            *ran >= limit && *ran < limit + Duration::from_secs(2),
                            "reported as having run {ran:?}"
                        ),
                        k => panic!("{k:?}"),
                    },
                    other => panic!("{other:?}"),
                }
            } else {
                r.expect("an instant item");
            }
        }
        assert!(took < Duration::from_secs(15), "took {took:?}");
    });
}

#[test]
fn with_a_fixed_chunk_size_the_limit_covers_the_whole_chunk_as_documented() {
    // Builder::timeout: "With a chunk size above 1, the limit applies to the whole
    // chunk" (the API tour says "per task"). Ten tasks of 100 ms in a chunk of ten with a
    // 300 ms limit: the chunk passes its limit; the items its worker finished are
    // delivered (a finished result is never thrown away), the one it was running fails
    // TimedOut, and the others go out again as a job under the same limit. (Before a
    // crash cost one task, every item of the chunk failed TimedOut.)
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let items = vec![100u64; 10];
        let out: Vec<(usize, Result<u64, Error>)> = pool
            .with_timeout(Duration::from_millis(300))
            .chunk_size(10)
            .imap_unordered(nap, items)
            .collect();
        assert_eq!(out.len(), 10);
        let mut timed_out = 0;
        for (i, r) in out {
            match r {
                Ok(v) => assert_eq!(v, 100),
                Err(Error::Task(e)) => {
                    assert!(
                        matches!(e.kind(), TaskErrorKind::TimedOut { .. }),
                        "{i}: {e}"
                    );
                    timed_out += 1;
                }
                other => panic!("item {i}: {other:?}"),
            }
        }
        // Each job of the chunk's items runs at most 3 naps within its limit.
        assert!((1..10).contains(&timed_out), "{timed_out} of 10 timed out");
        // The same tasks one per job all pass.
        let items = vec![100u64; 10];
        let out = pool
            .with_timeout(Duration::from_millis(300))
            .chunk_size(1)
            .map(nap, items.clone())
            .expect("one task per job");
        assert_eq!(out, items);
    });
}

/// Ignores SIGTERM, then sleeps forever (only SIGKILL ends it).
fn stubborn(_: u64) -> u64 {
    // SAFETY: sets SIGTERM to be ignored in this worker process.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    nap(u64::MAX)
}

fn nap_or_stubborn(ms: u64) -> u64 {
    if ms == u64::MAX {
        stubborn(ms)
    } else {
        nap(ms)
    }
}

#[test]
fn jobs_held_behind_a_task_in_its_kill_grace_go_to_an_idle_worker() {
    // Worker B runs another call's 800 ms task; worker A holds a window of instant items
    // behind an endless one that ignores SIGTERM. At 300 ms A's task is past its limit
    // and gets SIGTERM, then 3 s of grace before SIGKILL. From 800 ms B is idle: the
    // items A holds and has not started must move to B, not wait for A's SIGKILL.
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .workers(2)
            .kill_grace(Duration::from_secs(3))
            .build()
            .expect("build a pool");
        pool.with_chunk_size(1)
            .map(nap, vec![0u64; 2000])
            .expect("warm up");
        std::thread::scope(|s| {
            let blocker = s.spawn(|| pool.apply(nap, 800));
            std::thread::sleep(Duration::from_millis(100));
            let mut items = vec![0u64; 1000];
            items.push(u64::MAX);
            items.extend([0u64; 1000]);
            let t = Instant::now();
            let out: Vec<(usize, Result<u64, Error>)> = pool
                .with_timeout(Duration::from_millis(300))
                .chunk_size(1)
                .imap_unordered(nap_or_stubborn, items)
                .collect();
            let took = t.elapsed();
            for (i, r) in &out {
                if *i == 1000 {
                    assert!(r.is_err(), "the endless item: {r:?}");
                } else {
                    assert!(r.is_ok(), "item {i}: {r:?}");
                }
            }
            assert_eq!(blocker.join().expect("join").expect("blocker"), 800);
            // The endless item ends at 300 ms + 3 s grace; everything else could be done
            // by about 1 s.
            let done_at: Vec<usize> = out.iter().map(|p| p.0).collect();
            let pos = done_at
                .iter()
                .position(|&i| i == 1000)
                .expect("the endless item");
            assert_eq!(
                pos,
                out.len() - 1,
                "{} items came after the endless one, i.e. waited for its SIGKILL (call took {took:?})",
                out.len() - 1 - pos
            );
        });
    });
}
