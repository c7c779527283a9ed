//! Attacks on taking jobs back ("revoke"): exactly-once execution under heavy stealing,
//! and revocation racing with worker deaths, time limits, recycling, retries, large
//! arguments in the data region and concurrent calls.
//!
//! Each task appends its index to a log file (`O_APPEND`: whole lines), so the test sees
//! how many times each item really ran, whatever the pool reports.

procpool::enable_test_support!();

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{append, watchdog};
use procpool::{Error, Pool, TaskErrorKind};

/// Sleeps `ms`, logs `i`, returns `i` and the pid that ran it.
fn log_sleep((path, i, ms): (String, u64, u64)) -> (u64, u32) {
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
    append(&path, i);
    (i, std::process::id())
}

/// How many times each index `0..n` appears in the log.
fn counts(path: &str, n: usize) -> Vec<u32> {
    let mut seen = vec![0u32; n];
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let i: usize = line.parse().expect("an index");
        seen[i] += 1;
    }
    seen
}

/// An `imap_unordered` answer of [`log_sleep`].
type Indexed = (usize, Result<(u64, u32), Error>);

/// Uneven times: mostly instant, some 5 ms, a few 40 ms.
fn uneven(i: u64) -> u64 {
    match i % 53 {
        7 => 40,
        11 | 29 | 41 => 5,
        _ => 0,
    }
}

#[test]
fn every_item_runs_exactly_once_under_heavy_stealing_in_a_1_worker_pool() {
    exactly_once(1);
}

#[test]
fn every_item_runs_exactly_once_under_heavy_stealing_in_a_2_worker_pool() {
    exactly_once(2);
}

#[test]
fn every_item_runs_exactly_once_under_heavy_stealing_in_a_4_worker_pool() {
    exactly_once(4);
}

fn exactly_once(workers: usize) {
    watchdog(Duration::from_secs(240), move || {
        let dir = common::TempDir::new("attack-once");
        {
            let pool = Pool::builder()
                .workers(workers)
                .build()
                .expect("build a pool");
            for chunk in [Some(1usize), None] {
                for how in ["map", "imap", "imap_unordered"] {
                    let path = dir.file(&format!("log-{workers}-{chunk:?}-{how}"));
                    let n = 800u64;
                    let items: Vec<(String, u64, u64)> =
                        (0..n).map(|i| (path.clone(), i, uneven(i))).collect();
                    let call = pool.with_chunk_size(chunk.unwrap_or(1));
                    // Automatic chunks: the plain pool call.
                    let out: Vec<(u64, u32)> = match (chunk, how) {
                        (None, "map") => pool.map(log_sleep, items).expect("map"),
                        (None, "imap") => pool
                            .imap(log_sleep, items)
                            .collect::<Result<_, _>>()
                            .expect("imap"),
                        (None, _) => {
                            let mut v: Vec<_> = pool
                                .imap_unordered(log_sleep, items)
                                .map(|(i, r)| {
                                    let r = r.expect("imap_unordered");
                                    assert_eq!(r.0, i as u64);
                                    r
                                })
                                .collect();
                            v.sort();
                            v
                        }
                        (Some(_), "map") => call.map(log_sleep, items).expect("map"),
                        (Some(_), "imap") => call
                            .imap(log_sleep, items)
                            .collect::<Result<_, _>>()
                            .expect("imap"),
                        (Some(_), _) => {
                            let mut v: Vec<_> = call
                                .imap_unordered(log_sleep, items)
                                .map(|(i, r)| {
                                    let r = r.expect("imap_unordered");
                                    assert_eq!(r.0, i as u64);
                                    r
                                })
                                .collect();
                            v.sort();
                            v
                        }
                    };
                    let got: Vec<u64> = out.iter().map(|r| r.0).collect();
                    assert_eq!(got, (0..n).collect::<Vec<_>>(), "{workers} {chunk:?} {how}");
                    for (i, k) in counts(&path, n as usize).into_iter().enumerate() {
                        assert_eq!(
                            k, 1,
                            "item {i} ran {k} times ({workers} workers, chunk {chunk:?}, {how})"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn sigkilling_workers_while_jobs_are_taken_back_never_runs_an_item_twice_or_loses_one() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-kill");
        let pool = Arc::new(Pool::builder().workers(2).build().expect("build a pool"));
        let killer =
            common::Killer::start(pool.clone(), |k| Duration::from_millis(23 + (k * 17) % 41));
        for (round, chunk) in [Some(1usize), None, Some(1)].into_iter().enumerate() {
            let path = dir.file(&format!("log-{round}"));
            let n = 1200u64;
            let items = (0..n).map(|i| (path.clone(), i, uneven(i)));
            let results: Vec<Indexed> = match chunk {
                Some(c) => pool
                    .with_chunk_size(c)
                    .imap_unordered(log_sleep, items)
                    .collect(),
                None => pool.imap_unordered(log_sleep, items).collect(),
            };
            assert_eq!(results.len(), n as usize);
            let seen = counts(&path, n as usize);
            let mut by_index: HashMap<usize, &Result<(u64, u32), Error>> = HashMap::new();
            for (i, r) in &results {
                assert!(by_index.insert(*i, r).is_none(), "index {i} answered twice");
            }
            let mut failed = 0;
            for (i, &ran) in seen.iter().enumerate() {
                let r = by_index.get(&i).unwrap_or_else(|| panic!("index {i} lost"));
                match r {
                    Ok((v, _)) => {
                        assert_eq!(*v, i as u64);
                        assert_eq!(
                            ran, 1,
                            "round {round}: item {i} succeeded, ran {} times",
                            ran
                        );
                    }
                    Err(Error::Task(e)) => {
                        failed += 1;
                        assert!(
                            matches!(e.kind(), TaskErrorKind::WorkerDied { .. }),
                            "item {i}: {e}"
                        );
                        assert!(ran <= 1, "round {round}: failed item {i} ran {} times", ran);
                    }
                    Err(e) => panic!("item {i}: {e}"),
                }
            }
            // A kill fails at most the item it interrupts; most items succeed.
            assert!(
                failed < n as usize / 4,
                "round {round}: {failed} items failed"
            );
        }
        let kills = killer.stop();
        assert!(kills > 0, "the killer never killed anything");
        assert_eq!(pool.apply(uneven, 7).expect("apply"), 40);
    });
}

#[test]
fn with_retries_random_kills_under_stealing_still_complete_every_item() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-retry");
        let pool = Arc::new(
            Pool::builder()
                .workers(2)
                .retries(5)
                .build()
                .expect("build a pool"),
        );
        let killer =
            common::Killer::start(pool.clone(), |k| Duration::from_millis(31 + (k * 13) % 37));
        let path = dir.file("log");
        let n = 800u64;
        let out = pool
            .with_chunk_size(1)
            .map(log_sleep, (0..n).map(|i| (path.clone(), i, uneven(i))))
            .expect("with 5 retries every item completes");
        killer.stop();
        assert_eq!(
            out.iter().map(|r| r.0).collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>()
        );
        for (i, k) in counts(&path, n as usize).into_iter().enumerate() {
            // A retried item may have logged before its worker died; at most 6 attempts.
            assert!((1..=6).contains(&k), "item {i} logged {k} times");
        }
    });
}

#[test]
fn recycling_under_stealing_keeps_the_per_worker_task_quota_and_runs_each_item_once() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-recycle");
        for (quota, chunk) in [(5u64, Some(1usize)), (7, None), (3, Some(1))] {
            let pool = Pool::builder()
                .workers(2)
                .recycle_after(quota)
                .build()
                .expect("build a pool");
            let path = dir.file(&format!("log-{quota}-{chunk:?}"));
            let n = 300u64;
            let items = (0..n).map(|i| (path.clone(), i, if i % 9 == 4 { 20 } else { 0 }));
            let out: Vec<(u64, u32)> = match chunk {
                Some(c) => pool.with_chunk_size(c).map(log_sleep, items),
                None => pool.map(log_sleep, items),
            }
            .expect("map");
            assert_eq!(
                out.iter().map(|r| r.0).collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>()
            );
            let mut per_pid: HashMap<u32, u64> = HashMap::new();
            for (_, pid) in &out {
                *per_pid.entry(*pid).or_default() += 1;
            }
            for (pid, k) in &per_pid {
                assert!(
                    *k <= quota,
                    "worker {pid} ran {k} tasks with recycle_after({quota}), chunk {chunk:?}"
                );
            }
            for (i, k) in counts(&path, n as usize).into_iter().enumerate() {
                assert_eq!(k, 1, "item {i} ran {k} times (recycle {quota})");
            }
        }
    });
}

/// A large argument (in the worker's data region): its index in the first 8 bytes, the
/// rest a pattern from the index. Returns the index if every byte is right.
fn check_big((path, buf): (String, Vec<u8>)) -> u64 {
    let i = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    for (k, b) in buf[8..].iter().enumerate() {
        assert_eq!(*b, (i as usize + k) as u8, "item {i}: byte {k} is wrong");
    }
    if i % 11 == 5 {
        std::thread::sleep(Duration::from_millis(30));
    }
    append(&path, i);
    i
}

fn big(i: u64, len: usize) -> Vec<u8> {
    let mut out = i.to_le_bytes().to_vec();
    out.extend((0..len - 8).map(|k| (i as usize + k) as u8));
    out
}

#[test]
fn large_arguments_taken_back_and_sent_again_arrive_intact_and_run_once() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-big");
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        for (round, len, n) in [(0, 300 << 10, 60u64), (1, 256 << 10, 60), (2, 1 << 20, 24)] {
            let path = dir.file(&format!("log-{round}"));
            let items: Vec<(String, Vec<u8>)> =
                (0..n).map(|i| (path.clone(), big(i, len))).collect();
            let out = pool
                .with_chunk_size(1)
                .map(check_big, items)
                .expect("map of large arguments");
            assert_eq!(out, (0..n).collect::<Vec<_>>());
            for (i, k) in counts(&path, n as usize).into_iter().enumerate() {
                assert_eq!(k, 1, "round {round}: item {i} ran {k} times");
            }
        }
    });
}

#[test]
fn large_arguments_with_a_worker_killed_mid_stream_run_at_most_once_each() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-bigkill");
        let pool = Arc::new(Pool::builder().workers(2).build().expect("build a pool"));
        let path = dir.file("log");
        let n = 200u64;
        let killer =
            common::Killer::start(pool.clone(), |k| Duration::from_millis(47 + (k * 7) % 29));
        let items = (0..n).map(|i| (path.clone(), big(i, 300 << 10)));
        let results: Vec<(usize, Result<u64, Error>)> = pool
            .with_chunk_size(1)
            .imap_unordered(check_big, items)
            .collect();
        killer.stop();
        assert_eq!(results.len(), n as usize);
        let seen = counts(&path, n as usize);
        for (i, r) in results {
            match r {
                Ok(v) => {
                    assert_eq!(v, i as u64);
                    assert_eq!(seen[i], 1, "item {i} ran {} times", seen[i]);
                }
                Err(Error::Task(e)) => {
                    assert!(
                        matches!(e.kind(), TaskErrorKind::WorkerDied { .. }),
                        "item {i}: {e}"
                    );
                    assert!(seen[i] <= 1, "failed item {i} ran {} times", seen[i]);
                }
                Err(e) => panic!("item {i}: {e}"),
            }
        }
    });
}

#[test]
fn concurrent_calls_from_four_threads_with_uneven_times_run_each_item_once() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-threads");
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        std::thread::scope(|s| {
            let mut hs = Vec::new();
            for t in 0..4u64 {
                let path = dir.file(&format!("log-{t}"));
                let pool = &pool;
                hs.push(s.spawn(move || {
                    let n = 600u64;
                    let items = (0..n).map(|i| (path.clone(), i, uneven(i + 13 * t)));
                    let out: Vec<(u64, u32)> = match t {
                        0 => pool.with_chunk_size(1).map(log_sleep, items).expect("map"),
                        1 => pool.map(log_sleep, items).expect("map"),
                        2 => pool
                            .imap(log_sleep, items)
                            .collect::<Result<_, _>>()
                            .expect("imap"),
                        _ => {
                            let mut v: Vec<_> = pool
                                .with_chunk_size(1)
                                .imap_unordered(log_sleep, items)
                                .map(|(_, r)| r.expect("item"))
                                .collect();
                            v.sort();
                            v
                        }
                    };
                    assert_eq!(
                        out.iter().map(|r| r.0).collect::<Vec<_>>(),
                        (0..n).collect::<Vec<_>>()
                    );
                    for (i, k) in counts(&path, n as usize).into_iter().enumerate() {
                        assert_eq!(k, 1, "thread {t}: item {i} ran {k} times");
                    }
                }));
            }
            // Meanwhile single calls and spawns with sleeps.
            for k in 0..20u64 {
                let path = dir.file("log-single");
                let (i, _) = pool.apply(log_sleep, (path, k, k % 3 * 10)).expect("apply");
                assert_eq!(i, k);
            }
            for h in hs {
                h.join().expect("a calling thread");
            }
        });
        for (i, k) in counts(&dir.file("log-single"), 20).into_iter().enumerate() {
            assert_eq!(k, 1, "apply {i} ran {k} times");
        }
    });
}

/// Sleeps forever when asked to, else `ms` milliseconds; logs its index when done.
fn maybe_forever((path, i, ms): (String, u64, u64)) -> u64 {
    if ms == u64::MAX {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::thread::sleep(Duration::from_millis(ms));
    append(&path, i);
    i
}

#[test]
fn a_time_limit_expiring_while_jobs_are_taken_back_fails_only_the_endless_item() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-limit");
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        for chunk in [None, Some(1usize)] {
            let path = dir.file(&format!("log-{chunk:?}"));
            let n = 400u64;
            let endless = [150u64, 333];
            let items = (0..n).map(|i| {
                let ms = if endless.contains(&i) {
                    u64::MAX
                } else if i % 37 == 3 {
                    60
                } else {
                    0
                };
                (path.clone(), i, ms)
            });
            let call = pool.with_timeout(Duration::from_millis(400));
            let call = match chunk {
                Some(c) => call.chunk_size(c),
                None => call,
            };
            let results: Vec<(usize, Result<u64, Error>)> =
                call.imap_unordered(maybe_forever, items).collect();
            assert_eq!(results.len(), n as usize);
            let seen = counts(&path, n as usize);
            for (i, r) in results {
                if endless.contains(&(i as u64)) {
                    match r {
                        Err(Error::Task(e)) => assert!(
                            matches!(e.kind(), TaskErrorKind::TimedOut { .. }),
                            "endless item {i}: {e}"
                        ),
                        other => panic!("endless item {i}: {other:?}"),
                    }
                } else {
                    assert_eq!(r.expect("a finite item"), i as u64, "chunk {chunk:?}");
                    assert_eq!(seen[i], 1, "item {i} ran {} times", seen[i]);
                }
            }
        }
    });
}

#[test]
fn cancelling_a_spawned_task_while_another_calls_jobs_are_taken_back_loses_nothing() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-cancel");
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let path = dir.file("log");
        let n = 1500u64;
        std::thread::scope(|s| {
            let mapper = s.spawn(|| {
                pool.with_chunk_size(1)
                    .map(log_sleep, (0..n).map(|i| (path.clone(), i, uneven(i))))
                    .expect("a map beside cancels")
            });
            for k in 0..15u64 {
                let mut h = pool
                    .spawn(maybe_forever, (dir.file("never"), 10_000 + k, u64::MAX))
                    .expect("spawn");
                std::thread::sleep(Duration::from_millis(10 + k * 3));
                h.cancel();
                match h.join_timeout(Duration::from_secs(10)) {
                    Err(procpool::WaitError::Failed(Error::Task(e))) => {
                        assert!(matches!(e.kind(), TaskErrorKind::Cancelled), "{e}")
                    }
                    other => panic!("cancel {k}: {other:?}"),
                }
            }
            let out = mapper.join().expect("mapper");
            assert_eq!(
                out.iter().map(|r| r.0).collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>()
            );
        });
        for (i, k) in counts(&path, n as usize).into_iter().enumerate() {
            assert_eq!(k, 1, "item {i} ran {k} times");
        }
    });
}

#[test]
fn chaos_recycling_kills_and_two_calling_threads_keep_exactly_once_and_the_quota() {
    watchdog(Duration::from_secs(120), || {
        let dir = common::TempDir::new("attack-chaos");
        let quota = 6u64;
        let pool = Arc::new(
            Pool::builder()
                .workers(4)
                .recycle_after(quota)
                .build()
                .expect("build a pool"),
        );
        let killer =
            common::Killer::start(pool.clone(), |k| Duration::from_millis(37 + (k * 11) % 43));
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u64)
                .map(|t| {
                    let path = dir.file(&format!("log-{t}"));
                    let pool = &pool;
                    s.spawn(move || {
                        let n = 400u64;
                        let items = (0..n).map(|i| (path.clone(), i, uneven(i + t) / 4));
                        let results: Vec<Indexed> = if t == 0 {
                            pool.with_chunk_size(1)
                                .imap_unordered(log_sleep, items)
                                .collect()
                        } else {
                            pool.imap_unordered(log_sleep, items).collect()
                        };
                        assert_eq!(results.len(), n as usize);
                        let seen = counts(&path, n as usize);
                        let mut per_pid: HashMap<u32, u64> = HashMap::new();
                        for (i, r) in results {
                            match r {
                                Ok((v, pid)) => {
                                    assert_eq!(v, i as u64);
                                    assert_eq!(
                                        seen[i], 1,
                                        "thread {t}: item {i} ran {} times",
                                        seen[i]
                                    );
                                    *per_pid.entry(pid).or_default() += 1;
                                }
                                Err(Error::Task(e)) => {
                                    assert!(
                                        matches!(e.kind(), TaskErrorKind::WorkerDied { .. }),
                                        "thread {t}: item {i}: {e}"
                                    );
                                    assert!(
                                        seen[i] <= 1,
                                        "thread {t}: failed item {i} ran {} times",
                                        seen[i]
                                    );
                                }
                                Err(e) => panic!("thread {t}: item {i}: {e}"),
                            }
                        }
                        per_pid
                    })
                })
                .collect();
            let mut all: HashMap<u32, u64> = HashMap::new();
            for h in hs {
                for (pid, k) in h.join().expect("a calling thread") {
                    *all.entry(pid).or_default() += k;
                }
            }
            for (pid, k) in all {
                assert!(
                    k <= quota,
                    "worker {pid} ran {k} tasks with recycle_after({quota})"
                );
            }
        });
        killer.stop();
    });
}

fn instant(x: u64) -> u64 {
    x
}

#[test]
fn cancel_right_after_spawn_in_a_loop_never_hangs_and_keeps_the_pool_whole() {
    watchdog(Duration::from_secs(120), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let mut cancelled = 0;
        for k in 0..300u64 {
            let mut h = pool.spawn(instant, k).expect("spawn");
            if k % 3 == 1 {
                std::thread::sleep(Duration::from_micros(200));
            }
            h.cancel();
            match h.join_timeout(Duration::from_secs(5)) {
                Ok(v) => assert_eq!(v, k),
                Err(procpool::WaitError::Failed(Error::Task(e)))
                    if matches!(e.kind(), TaskErrorKind::Cancelled) =>
                {
                    cancelled += 1
                }
                other => panic!("spawn {k}: {other:?}"),
            }
        }
        assert!(cancelled > 0);
        assert_eq!(pool.map(instant, 0..100u64).expect("map").len(), 100);
        common::wait_until("both workers are back", Duration::from_secs(10), || {
            pool.worker_pids().len() == 2
        });
    });
}

fn crash(_: u64) -> u64 {
    std::process::abort()
}

#[test]
fn cancel_racing_a_crashing_task_always_answers_the_handle() {
    watchdog(Duration::from_secs(120), || {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        pool.map(instant, 0..10u64).expect("warm up");
        for k in 0..100u64 {
            let mut h = pool.spawn(crash, k).expect("spawn");
            std::thread::sleep(Duration::from_micros(k * 37 % 900));
            h.cancel();
            match h.join_timeout(Duration::from_secs(5)) {
                Err(procpool::WaitError::Failed(Error::Task(e)))
                    if matches!(
                        e.kind(),
                        TaskErrorKind::Cancelled | TaskErrorKind::WorkerDied { .. }
                    ) => {}
                other => panic!("spawn {k}: {other:?}"),
            }
        }
    });
}
