//! Mixed attacks: calls with and without time limits interleaved on one worker, lazy
//! calls dropped while their jobs are held and taken back, and large results (past the
//! results ring) racing with revocations and kills.

procpool::enable_test_support!();

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{nap, watchdog};
use procpool::{Error, Pool, TaskErrorKind};

#[test]
fn a_limited_endless_task_behind_another_calls_unlimited_jobs_is_still_killed() {
    watchdog(Duration::from_secs(90), || {
        let pool = Pool::builder().workers(1).build().expect("build a pool");
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // An unlimited call of instant items keeps the worker's window full.
            let bg = s.spawn(|| {
                let mut rounds = 0;
                while !stop.load(Ordering::SeqCst) {
                    let out = pool
                        .with_chunk_size(1)
                        .map(nap, vec![0u64; 2000])
                        .expect("background map");
                    assert_eq!(out.len(), 2000);
                    rounds += 1;
                }
                rounds
            });
            std::thread::sleep(Duration::from_millis(100));
            for round in 0..3 {
                let mut items = vec![0u64; 1000];
                items.push(u64::MAX);
                items.extend([0u64; 100]);
                let t = Instant::now();
                let out: Vec<(usize, Result<u64, Error>)> = pool
                    .with_timeout(Duration::from_millis(300))
                    .chunk_size(1)
                    .imap_unordered(nap, items)
                    .collect();
                let took = t.elapsed();
                for (i, r) in out {
                    if i == 1000 {
                        match r {
                            Err(Error::Task(e)) => assert!(
                                matches!(e.kind(), TaskErrorKind::TimedOut { .. }),
                                "round {round}: {e}"
                            ),
                            other => panic!("round {round}: {other:?}"),
                        }
                    } else {
                        r.expect("an instant item");
                    }
                }
                assert!(
                    took < Duration::from_secs(20),
                    "round {round}: took {took:?}"
                );
            }
            stop.store(true, Ordering::SeqCst);
            assert!(bg.join().expect("background") > 0);
        });
    });
}

fn uneven(i: u64) -> u64 {
    if i % 7 == 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    i
}

#[test]
fn lazy_calls_dropped_midway_while_jobs_are_held_leave_the_pool_sound() {
    watchdog(Duration::from_secs(90), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        for round in 0..8u64 {
            let take = (round * 7) % 40 + 1;
            let got: Vec<u64> = if round % 2 == 0 {
                pool.with_chunk_size(1)
                    .imap(uneven, 0..)
                    .take(take as usize)
                    .map(|r| r.expect("item"))
                    .collect()
            } else {
                pool.imap_unordered(uneven, 0..10_000u64)
                    .take(take as usize)
                    .map(|(_, r)| r.expect("item"))
                    .collect()
            };
            assert_eq!(got.len(), take as usize);
            let t = Instant::now();
            let out = pool
                .with_chunk_size(1)
                .map(uneven, 0..50u64)
                .expect("a map after a dropped lazy call");
            assert_eq!(out, (0..50).collect::<Vec<_>>());
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "round {round}: the next map took {:?}",
                t.elapsed()
            );
        }
    });
}

/// A 5 MiB result (past the 4 MiB results ring), tagged with the index.
fn five_mib(i: u64) -> Vec<u8> {
    if i % 5 == 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut v = vec![(i % 251) as u8; 5 << 20];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

#[test]
fn results_larger_than_the_ring_survive_revocations_and_kills() {
    watchdog(Duration::from_secs(90), || {
        let pool = Arc::new(Pool::builder().workers(2).build().expect("build a pool"));
        let killer =
            common::Killer::start(pool.clone(), |k| Duration::from_millis(150 + (k * 37) % 90));
        let n = 60u64;
        let mut ok = 0;
        for (i, r) in pool.with_chunk_size(1).imap_unordered(five_mib, 0..n) {
            match r {
                Ok(v) => {
                    assert_eq!(v.len(), 5 << 20);
                    assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()), i as u64);
                    assert!(
                        v[8..].iter().all(|&b| b == (i as u64 % 251) as u8),
                        "item {i} corrupt"
                    );
                    ok += 1;
                }
                Err(Error::Task(e)) => assert!(
                    matches!(e.kind(), TaskErrorKind::WorkerDied { .. }),
                    "item {i}: {e}"
                ),
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        killer.stop();
        assert!(ok > n / 2, "only {ok} of {n} succeeded");
    });
}

fn traced(i: u64) -> (u32, u64, u64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let start = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    uneven(i);
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (
        std::process::id(),
        start,
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
    )
}

#[test]
fn after_an_imap_unordered_is_dropped_early_the_next_call_starts_at_once() {
    // Dropping a lazy call abandons it: its queued jobs are dropped and the jobs workers
    // hold run to completion (about a millisecond of work each with automatic chunks).
    // The next call must not wait long for them.
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let mut worst = Duration::ZERO;
        let mut report = String::new();
        for round in 0..4 {
            let got = pool.imap_unordered(uneven, 0..10_000u64).take(20).count();
            assert_eq!(got, 20);
            let t = Instant::now();
            let out = pool.with_chunk_size(1).map(traced, 0..50u64).expect("map");
            assert_eq!(out.len(), 50);
            let took = t.elapsed();
            report.push_str(&format!("round {round}: map of 50 took {took:?}\n"));
            worst = worst.max(took);
        }
        // 50 items, 7 of them 10 ms: ~40 ms on two workers; allow 400 ms.
        assert!(worst < Duration::from_millis(400), "{report}");
    });
}

#[test]
fn join_finishes_every_spawned_task_while_windows_are_taken_back() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        pool.with_chunk_size(1)
            .map(uneven, 0..500u64)
            .expect("warm up");
        let handles: Vec<_> = (0..300u64)
            .map(|i| pool.spawn(uneven, i).expect("spawn"))
            .collect();
        pool.join();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().expect("a task queued before join"), i as u64);
        }
    });
}

#[test]
fn terminate_while_jobs_are_held_and_taken_back_answers_every_handle() {
    watchdog(Duration::from_secs(60), || {
        for round in 0..5u64 {
            let pool = Pool::builder().workers(2).build().expect("build a pool");
            pool.with_chunk_size(1)
                .map(uneven, 0..500u64)
                .expect("warm up");
            let handles: Vec<_> = (0..300u64)
                .map(|i| pool.spawn(uneven, i).expect("spawn"))
                .collect();
            std::thread::sleep(Duration::from_millis(5 + round * 7));
            pool.terminate();
            let mut terminated = 0;
            for (i, h) in handles.into_iter().enumerate() {
                match h.join() {
                    Ok(v) => assert_eq!(v, i as u64),
                    Err(Error::Task(e)) if matches!(e.kind(), TaskErrorKind::Terminated) => {
                        terminated += 1
                    }
                    Err(e) => panic!("round {round}, task {i}: {e}"),
                }
            }
            assert!(
                terminated > 0,
                "round {round}: nothing was left to terminate"
            );
        }
    });
}

fn panicky(i: u64) -> u64 {
    if i % 500 == 250 {
        panic!("item {i} panics");
    }
    uneven(i)
}

#[test]
fn imap_keeps_order_and_per_item_errors_while_jobs_are_taken_back() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        for chunk in [None, Some(1usize), Some(7)] {
            let out: Vec<Result<u64, Error>> = match chunk {
                Some(c) => pool.with_chunk_size(c).imap(panicky, 0..1500u64).collect(),
                None => pool.imap(panicky, 0..1500u64).collect(),
            };
            assert_eq!(out.len(), 1500);
            for (i, r) in out.into_iter().enumerate() {
                if i % 500 == 250 {
                    match r {
                        Err(Error::Task(e)) => {
                            assert!(matches!(e.kind(), TaskErrorKind::Panic { .. }), "{e}");
                            assert_eq!(e.index(), i as u64, "chunk {chunk:?}");
                        }
                        other => panic!("chunk {chunk:?}, item {i}: {other:?}"),
                    }
                } else {
                    assert_eq!(r.expect("an item"), i as u64, "chunk {chunk:?}");
                }
            }
        }
    });
}

fn log_or_panic((path, i): (String, u64)) -> u64 {
    use std::io::Write;
    if i == 5 {
        panic!("item 5");
    }
    std::thread::sleep(Duration::from_millis(2));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .expect("open the log");
    f.write_all(format!("{i}\n").as_bytes()).expect("log");
    i
}

#[test]
fn a_map_that_stops_at_its_first_failure_stops_its_other_jobs_too() {
    watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let path = std::env::temp_dir()
            .join(format!("attack-mapstop-{}", std::process::id()))
            .to_str()
            .expect("utf-8")
            .to_owned();
        let _ = std::fs::remove_file(&path);
        let t = Instant::now();
        let r = pool
            .with_chunk_size(1)
            .map(log_or_panic, (0..2000u64).map(|i| (path.clone(), i)));
        assert!(r.is_err());
        let returned = t.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let ran = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count();
        let _ = std::fs::remove_file(&path);
        assert!(
            ran < 200,
            "map returned its error after {returned:?}, but {ran} of 2000 items ran"
        );
    });
}
