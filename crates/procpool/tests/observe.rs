//! Observing a pool: progress callbacks, counters (`Pool::stats`) and the worker identity
//! a task sees (`current_worker`), with real workers.

procpool::enable_test_support!();

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procpool::{Error, Pool, Progress, TaskErrorKind, WorkerInfo};

fn inc(x: u64) -> u64 {
    x + 1
}

fn fail_at_seven(x: u32) -> u32 {
    assert!(x != 7, "seven is bad");
    x
}

fn panics(_: u32) -> u32 {
    panic!("on purpose")
}

fn kill_self(_: u32) -> u32 {
    // SAFETY: getpid and kill have no preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn whoami(ms: u64) -> Option<(usize, u32)> {
    std::thread::sleep(Duration::from_millis(ms));
    procpool::current_worker().map(|WorkerInfo { index, pid }| (index, pid))
}

fn recorder() -> (
    Arc<Mutex<Vec<Progress>>>,
    impl Fn(Progress) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |p| s.lock().unwrap().push(p))
}

#[test]
fn progress_reaches_the_total_exactly_with_few_calls() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let (seen, f) = recorder();
    let start = Instant::now();
    let n = 100_000u64;
    let v = pool.on_progress(f).map(inc, 0..n).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(v.len() as u64, n);
    let seen = seen.lock().unwrap();
    let last = seen.last().expect("a final report");
    assert!(last.finished);
    assert_eq!((last.done, last.total, last.failed), (n, Some(n), 0));
    // At most one report per 50 ms, plus the last one (with slack for timer edges).
    let bound = 2 + 2 * (elapsed.as_millis() as usize / 50);
    assert!(seen.len() <= bound, "{} reports in {elapsed:?}", seen.len());
    assert_eq!(seen.iter().filter(|p| p.finished).count(), 1);
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
}

#[test]
fn progress_of_imap_unordered_and_unknown_length() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let (seen, f) = recorder();
    let it = pool
        .with_chunk_size(7)
        .on_progress(f)
        .progress_interval(Duration::ZERO)
        .imap_unordered(inc, (0..1000u64).filter(|x| x % 2 == 0));
    assert_eq!(it.count(), 500);
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert!(last.finished);
    assert_eq!((last.done, last.total), (500, None));
}

#[test]
fn progress_ends_once_on_an_error_and_counts_failures() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let (seen, f) = recorder();
    let r = pool
        .with_chunk_size(1)
        .on_progress(f)
        .map(fail_at_seven, 0..20u32);
    assert!(matches!(r, Err(Error::Task(t)) if t.index() == 7));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().filter(|p| p.finished).count(), 1);
    let last = seen.last().unwrap();
    assert!(last.finished);
    assert!(last.failed >= 1, "{last:?}");
    assert_eq!(last.total, Some(20));
}

#[test]
fn stats_count_failures_replacements_and_recycling() {
    let pool = Pool::builder()
        .workers(2)
        .recycle_after(25)
        .build()
        .unwrap();
    assert!(
        matches!(pool.apply(panics, 1), Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::Panic { .. }))
    );
    assert!(
        matches!(pool.apply(kill_self, 1), Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::WorkerDied { .. }))
    );
    let r = pool
        .with_timeout(Duration::from_millis(200))
        .apply(sleep_ms, 10_000);
    assert!(matches!(r, Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::TimedOut { .. })));
    let h = pool.spawn(sleep_ms, 10_000).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    h.cancel();
    assert!(
        matches!(h.join(), Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::Cancelled))
    );
    let v = pool.with_chunk_size(1).map(inc, 0..100u64).unwrap();
    assert_eq!(v.len(), 100);

    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = pool.stats();
        let all_up = s.workers.iter().all(|w| w.pid.is_some());
        // Stats are a snapshot the supervisor publishes: a worker retiring after its 25th
        // task may still show what it held for a moment after the map returned.
        let settled = (s.queued, s.in_flight) == (0, 0);
        if all_up && settled && s.workers_started >= 2 + s.workers_replaced + s.workers_recycled {
            break s;
        }
        assert!(Instant::now() < deadline, "workers not replaced: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(s.succeeded, 100, "{s:?}");
    let f = s.failed;
    assert_eq!(
        (
            f.panicked,
            f.died,
            f.timed_out,
            f.cancelled,
            f.codec,
            f.other
        ),
        (1, 1, 1, 1, 0, 0)
    );
    assert_eq!(s.done(), 104);
    assert_eq!(s.workers_replaced, 3, "{s:?}");
    // 104 tasks ran, 25 per worker life: at least 3 retirements.
    assert!(s.workers_recycled >= 3, "{s:?}");
    assert_eq!(
        s.workers_started,
        2 + s.workers_replaced + s.workers_recycled,
        "{s:?}"
    );
    let restarts: u64 = s.workers.iter().map(|w| u64::from(w.restarts)).sum();
    assert_eq!(restarts, s.workers_replaced + s.workers_recycled, "{s:?}");
    let pids: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    let slot_pids: BTreeSet<u32> = s.workers.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids, slot_pids);
    assert_eq!((s.queued, s.in_flight), (0, 0));
    for (i, w) in s.workers.iter().enumerate() {
        assert_eq!(w.index, i);
        assert!(w.tasks <= 25, "{w:?}");
    }
}

#[test]
fn stats_busy_time_and_queue() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let handles: Vec<_> = (0..3).map(|_| pool.spawn(sleep_ms, 100).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(50));
    let s = pool.stats();
    assert_eq!(s.in_flight + s.queued, 3, "{s:?}");
    for h in handles {
        h.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.workers[0].tasks, 3);
    assert!(s.workers[0].busy >= Duration::from_millis(290), "{s:?}");
}

#[test]
fn current_worker_gives_the_slot_and_pid() {
    assert_eq!(procpool::current_worker(), None);
    let workers = 3;
    let pool = Pool::builder().workers(workers).build().unwrap();
    let seen = pool
        .with_chunk_size(1)
        .map(whoami, vec![3u64; 150])
        .unwrap();
    let pids: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    let mut by_index: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for w in seen {
        let (index, pid) = w.expect("a task runs in a worker");
        assert!(index < workers);
        assert!(pids.contains(&pid), "{pid} not in {pids:?}");
        by_index.entry(index).or_default().insert(pid);
    }
    assert_eq!(by_index.len(), workers, "{by_index:?}");
    assert!(by_index.values().all(|p| p.len() == 1), "{by_index:?}");
    let s = pool.stats();
    for (i, p) in &by_index {
        assert_eq!(s.workers[*i].pid, p.first().copied());
    }
}
