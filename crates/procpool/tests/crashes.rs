//! Tasks that fail: panics, workers killed by SIGKILL, aborts and segfaults. Each fails
//! alone; the pool replaces dead workers and goes on.

procpool::enable_test_support!();

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TempDir;
use procpool::{Death, Error, Pool, TaskError, TaskErrorKind};

fn pool() -> Pool {
    Pool::builder().workers(2).build().expect("start a pool")
}

fn double(x: u64) -> u64 {
    x * 2
}

fn panics_on_seven(x: u64) -> u64 {
    if x == 7 {
        panic!("bad item {x}: seven is not allowed");
    }
    x * 2
}

/// The 1-based line of this file holding `needle` (once).
fn line_of(needle: &str) -> usize {
    let src = include_str!("crashes.rs");
    let lines: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle) && !l.contains("line_of("))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} is on lines {lines:?}");
    lines[0]
}

fn task_error(r: Result<impl std::fmt::Debug, Error>) -> TaskError {
    match r {
        Err(Error::Task(t)) => t,
        other => panic!("expected a task error, got {other:?}"),
    }
}

fn assert_died_of(t: &TaskError, signal: i32, name: &str) {
    match t.kind() {
        TaskErrorKind::WorkerDied { death } => {
            assert_eq!(*death, Death::Signal(signal), "{t}");
            assert_eq!(death.signal_name(), Some(name), "{t}");
        }
        other => panic!("expected the worker's death by {name}, got {other:?} ({t})"),
    }
}

/// Waits until the pool has two live workers, none of them in `dead`.
fn wait_restored(pool: &Pool, dead: &[u32]) {
    common::wait_until(
        "the pool has two new workers",
        Duration::from_secs(20),
        || {
            let now = pool.worker_pids();
            now.len() == 2 && now.iter().all(|p| !dead.contains(p))
        },
    );
}

#[test]
fn a_panic_reports_its_message_and_location_and_the_pool_goes_on() {
    let pool = pool();
    let before = pool.worker_pids();
    let t = task_error(pool.apply(panics_on_seven, 7));
    match t.kind() {
        TaskErrorKind::Panic {
            message, location, ..
        } => {
            assert_eq!(message, "bad item 7: seven is not allowed");
            let location = location.as_deref().expect("a panic location");
            let line = line_of("panic!(\"bad item {x}: seven is not allowed\")");
            assert!(
                location.contains(&format!("crashes.rs:{line}:")),
                "location {location:?} should name crashes.rs:{line}"
            );
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(t.index(), 0);
    assert!(before.contains(&t.pid().expect("the worker's pid")));
    // A panic does not cost the worker.
    assert_eq!(pool.worker_pids(), before);
    assert_eq!(pool.apply(panics_on_seven, 8).unwrap(), 16);
    assert_eq!(
        pool.map(double, 0..100).unwrap(),
        (0..100).map(double).collect::<Vec<_>>()
    );
}

static MAP_PULLED: AtomicUsize = AtomicUsize::new(0);

fn panics_on_500(x: u64) -> u64 {
    if x == 500 {
        panic!("item 500 fails");
    }
    x
}

#[test]
fn map_stops_at_the_first_failure_and_names_its_index() {
    let pool = pool();
    // Far more items than a busy machine's caller encodes (at ~100 M items/s) while the
    // failure travels back from the worker: the map must stop well before the end.
    let n = 50_000_000u64;
    let input = (0..n).inspect(|_| {
        MAP_PULLED.fetch_add(1, Ordering::Relaxed);
    });
    let t = task_error(pool.map(panics_on_500, input));
    assert_eq!(t.index(), 500, "{t}");
    assert!(
        matches!(t.kind(), TaskErrorKind::Panic { message, .. } if message == "item 500 fails"),
        "{t}"
    );
    let pulled = MAP_PULLED.load(Ordering::Relaxed);
    assert!(
        pulled < n as usize,
        "map pulled all {pulled} items after item 500 failed"
    );
    // With chunk size 1 as well.
    let t = task_error(pool.with_chunk_size(1).map(panics_on_500, 0..2000));
    assert_eq!(t.index(), 500, "{t}");
    // Items after the failure that panic too do not hide the first one.
    let t = task_error(pool.map(panics_on_seven, [1, 2, 7, 3, 7, 4]));
    assert_eq!(t.index(), 2, "{t}");
    assert_eq!(
        pool.map(double, 0..10).unwrap(),
        (0..10).map(double).collect::<Vec<_>>()
    );
}

/// Item `victim` writes its pid to `dir/victim` and waits (to be killed); every other
/// item returns its double.
fn wait_to_be_killed(x: (u64, u64, String)) -> u64 {
    let (i, victim, dir) = x;
    if i == victim {
        common::write_file(&format!("{dir}/victim"), &std::process::id().to_string());
        std::thread::sleep(Duration::from_secs(60));
    }
    i * 2
}

#[test]
fn sigkill_of_a_worker_mid_task_fails_that_task_alone() {
    let dir = TempDir::new("sigkill");
    let pool = pool();
    let before = pool.worker_pids();
    let d = dir.path().to_str().unwrap().to_owned();
    let marker = dir.file("victim");
    let items: Vec<(u64, u64, String)> = (0..20).map(|i| (i, 7, d.clone())).collect();
    let (results, killed) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let pid: u32 = common::wait_for_file(&marker, Duration::from_secs(30))
                .trim()
                .parse()
                .unwrap();
            assert!(before.contains(&pid), "{pid} is not a worker of {before:?}");
            common::sigkill(pid);
            pid
        });
        let results: Vec<(usize, Result<u64, Error>)> = pool
            .with_chunk_size(1)
            .imap_unordered(wait_to_be_killed, items)
            .collect();
        (results, killer.join().unwrap())
    });
    assert_eq!(results.len(), 20);
    let mut seen = HashSet::new();
    for (i, r) in results {
        assert!(seen.insert(i), "index {i} came twice");
        if i == 7 {
            let t = task_error(r);
            assert_died_of(&t, libc::SIGKILL, "SIGKILL");
            assert_eq!(t.pid(), Some(killed), "{t}");
            assert_eq!(t.index(), 7, "{t}");
        } else {
            assert_eq!(r.unwrap(), i as u64 * 2, "item {i}");
        }
    }
    wait_restored(&pool, &[killed]);
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
    assert_eq!(
        pool.map(double, 0..500).unwrap(),
        (0..500).map(double).collect::<Vec<_>>()
    );
}

fn aborts_on_three(x: u64) -> u64 {
    if x == 3 {
        std::process::abort();
    }
    x * 2
}

fn segfaults_on_three(x: u64) -> u64 {
    if x == 3 {
        // An unmapped address (the first page is never mapped): the write faults.
        let p = std::ptr::without_provenance_mut::<u8>(16);
        // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
    x * 2
}

fn crash_one_of_ten(f: fn(u64) -> u64, signal: i32, name: &str) {
    let pool = pool();
    let before = pool.worker_pids();
    let results: Vec<(usize, Result<u64, Error>)> =
        pool.with_chunk_size(1).imap_unordered(f, 0..10).collect();
    assert_eq!(results.len(), 10);
    let mut dead = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in results {
        assert!(seen.insert(i), "index {i} came twice");
        if i == 3 {
            let t = task_error(r);
            assert_died_of(&t, signal, name);
            assert_eq!(t.index(), 3);
            let pid = t.pid().expect("the dead worker's pid");
            assert!(before.contains(&pid), "{pid} is not a worker of {before:?}");
            dead.push(pid);
        } else {
            assert_eq!(r.unwrap(), i as u64 * 2, "item {i}");
        }
    }
    wait_restored(&pool, &dead);
    assert_eq!(pool.map(f, [0, 1, 2]).unwrap(), vec![0, 2, 4]);
}

#[test]
fn abort_in_a_task_is_reported_as_sigabrt() {
    crash_one_of_ten(aborts_on_three, libc::SIGABRT, "SIGABRT");
}

#[test]
fn segfault_in_a_task_is_reported_as_sigsegv() {
    crash_one_of_ten(segfaults_on_three, libc::SIGSEGV, "SIGSEGV");
}
