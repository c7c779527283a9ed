//! Scheduling: no worker idles while a job that has not started waits, and no call waits
//! behind another's long job.
//!
//! Balance is checked by what happened, not by wall time alone: each task returns the pid
//! that ran it and when it started and ended (system-wide monotonic clock), and
//! [`check_work_conserving`] looks for a worker that sat idle while an item waited.

procpool::enable_test_support!();

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Trace, check_work_conserving, now_nanos, sleep_ms, timeline};
use procpool::{Error, Pool, TaskErrorKind};

fn double(x: u64) -> u64 {
    x * 2
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A warm pool of two workers (each has run a task).
fn warm_pool() -> Pool {
    let pool = Pool::builder().workers(2).build().expect("build a pool");
    pool.with_chunk_size(1)
        .map(sleep_ms, [30, 30])
        .expect("warm-up");
    assert_eq!(pool.worker_pids().len(), 2);
    pool
}

#[test]
fn a_fresh_pool_spreads_work_over_workers_as_they_become_ready() {
    // The first item is instant: its result comes before the second worker is ready, and
    // must not make the first worker take everything.
    for round in 0..3 {
        let pool = Pool::builder().workers(2).build().expect("build a pool");
        let mut items = vec![0u64];
        items.extend([50; 12]);
        let traces = pool.with_chunk_size(1).map(sleep_ms, items).expect("map");
        let slow_on = |pid: u32| traces[1..].iter().filter(|t| t.pid == pid).count();
        let first = traces[1].pid;
        assert!(
            slow_on(first) <= 8,
            "round {round}: one worker ran {} of the 12 slow items\n{}",
            slow_on(first),
            timeline(&traces, traces[0].start)
        );
    }
}

#[test]
fn uneven_items_keep_both_workers_busy_in_map_imap_and_imap_unordered() {
    let pool = warm_pool();
    let items: Vec<u64> = (0..12).map(|i| if i % 2 == 1 { 150 } else { 0 }).collect();
    for how in ["map", "imap", "imap_unordered"] {
        let call = pool.with_chunk_size(1);
        let t0 = now_nanos();
        let traces: Vec<Trace> = match how {
            "map" => call.map(sleep_ms, items.clone()).expect("map"),
            "imap" => call
                .imap(sleep_ms, items.clone())
                .collect::<Result<_, _>>()
                .expect("imap"),
            _ => call
                .imap_unordered(sleep_ms, items.clone())
                .map(|(_, r)| r.expect("imap_unordered"))
                .collect(),
        };
        check_work_conserving("", &traces, t0);
    }
}

#[test]
fn automatic_chunking_does_not_queue_short_items_behind_a_long_one() {
    let pool = warm_pool();
    let mut items = vec![600u64];
    items.extend([1; 300]);
    let t0 = now_nanos();
    let traces = pool.map(sleep_ms, items.clone()).expect("map");
    check_work_conserving("", &traces, t0);
    let t0 = now_nanos();
    let traces: Vec<Trace> = pool
        .imap(sleep_ms, items)
        .collect::<Result<_, _>>()
        .expect("imap");
    check_work_conserving("", &traces, t0);
}

#[test]
fn a_call_never_waits_behind_another_calls_long_job() {
    let pool = warm_pool();
    std::thread::scope(|s| {
        let long = s.spawn(|| pool.apply(sleep_ms, 2000).expect("the long task"));
        // Let the long task start on one worker.
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let out = pool.map(double, 0..2u64).expect("map");
        assert_eq!(out, vec![0, 2]);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "a two-item map took {:?} while another call's task ran",
            t.elapsed()
        );
        // A long lazy call: its first items come while the long task still runs.
        let t = Instant::now();
        let first: Vec<_> = pool
            .imap_unordered(double, 0..20_000u64)
            .take(2)
            .map(|(_, r)| r.expect("item"))
            .collect();
        assert_eq!(first.len(), 2);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "the first items of an imap_unordered took {:?}",
            t.elapsed()
        );
        let long = long.join().expect("join");
        assert!(long.end > long.start);
    });
}

#[test]
fn a_detached_endless_task_occupies_one_worker_never_the_pool() {
    let pool = std::sync::Arc::new(warm_pool());
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    // On a thread of its own, so that a hang fails the test instead of blocking it.
    std::thread::spawn(move || {
        let mut h = p.spawn(sleep_forever, ()).expect("spawn");
        assert!(h.join_timeout(Duration::from_millis(100)).is_err());
        drop(h);
        let r: Vec<Result<u64, Error>> = p
            .with_timeout(Duration::from_secs(5))
            .imap(double, 0..100u64)
            .collect();
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the map behind a detached endless task never finished");
    assert_eq!(r.len(), 100);
    for (i, x) in r.into_iter().enumerate() {
        assert_eq!(x.expect("item"), 2 * i as u64);
    }
}

/// Appends its index to a file (O_APPEND: whole lines), sleeping a little on some items.
fn log_index((path, i, abort_at): (String, u64, u64)) -> u64 {
    use std::io::Write;
    if i % 97 == 13 {
        std::thread::sleep(Duration::from_millis(15));
    }
    if i == abort_at {
        std::process::abort();
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .expect("open the log");
    f.write_all(format!("{i}\n").as_bytes()).expect("log");
    i
}

#[test]
fn jobs_taken_back_from_a_busy_worker_run_exactly_once() {
    let dir = common::TempDir::new("revoke");
    let path = dir.file("log");
    let pool = warm_pool();
    let n = 3000u64;
    // One item per job, with a worker dying at item 1500; then automatic chunks.
    for (chunk, abort_at) in [(Some(1), 1500), (None, u64::MAX)] {
        let _ = std::fs::remove_file(&path);
        let items = (0..n).map(|i| (path.clone(), i, abort_at));
        let results: Vec<(usize, Result<u64, Error>)> = match chunk {
            Some(c) => pool
                .with_chunk_size(c)
                .imap_unordered(log_index, items)
                .collect(),
            None => pool.imap_unordered(log_index, items).collect(),
        };
        assert_eq!(results.len(), n as usize);
        let mut seen = vec![0u32; n as usize];
        for (i, r) in &results {
            match r {
                Ok(v) => assert_eq!(*v, *i as u64),
                Err(Error::Task(e)) => {
                    assert_eq!(*i as u64, abort_at, "only the aborting item fails: {e}");
                    assert!(matches!(e.kind(), TaskErrorKind::WorkerDied { .. }));
                }
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        for line in std::fs::read_to_string(&path)
            .expect("read the log")
            .lines()
        {
            seen[line.parse::<usize>().expect("an index")] += 1;
        }
        for (i, &k) in seen.iter().enumerate() {
            let want = u32::from(i as u64 != abort_at);
            assert_eq!(k, want, "item {i} ran {k} times (chunk {chunk:?})");
        }
    }
}
