//! Pool calls: `map`, `imap`, `imap_unordered`, `apply`, `spawn`, joining with a time
//! limit, and cancelling.

procpool::enable_test_support!();

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;
use procpool::{Error, Pool, TaskErrorKind, WaitError};

fn pool() -> Pool {
    Pool::builder().workers(2).build().expect("start a pool")
}

fn affine(x: u64) -> u64 {
    x.wrapping_mul(3) + 1
}

fn expected(n: u64) -> Vec<u64> {
    (0..n).map(affine).collect()
}

#[test]
fn map_keeps_order_and_values_over_10k_items() {
    let pool = pool();
    assert_eq!(pool.map(affine, 0..10_000).unwrap(), expected(10_000));
}

#[test]
fn map_with_chunk_size_one() {
    let pool = pool();
    let got = pool.with_chunk_size(1).map(affine, 0..10_000).unwrap();
    assert_eq!(got, expected(10_000));
}

#[test]
fn map_with_a_big_chunk_size() {
    let pool = pool();
    // Bigger than a worker's share: one worker gets a full chunk, the other the rest.
    let got = pool.with_chunk_size(7_000).map(affine, 0..10_000).unwrap();
    assert_eq!(got, expected(10_000));
    // Bigger than the whole input.
    let got = pool.with_chunk_size(50_000).map(affine, 0..10_000).unwrap();
    assert_eq!(got, expected(10_000));
}

#[test]
fn map_of_an_empty_input() {
    let pool = pool();
    let got: Vec<u64> = pool.map(affine, Vec::<u64>::new()).unwrap();
    assert!(got.is_empty());
    // The pool still works after an empty call.
    assert_eq!(pool.map(affine, 0..3).unwrap(), expected(3));
}

static PULLED_AUTO: AtomicUsize = AtomicUsize::new(0);
static PULLED_ONE: AtomicUsize = AtomicUsize::new(0);

#[test]
fn imap_is_lazy_over_an_endless_input() {
    let pool = pool();
    let input = (0u64..).inspect(|_| {
        PULLED_AUTO.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = pool.imap(affine, input);
    let first: Vec<u64> = it.by_ref().take(10).collect::<Result<_, _>>().unwrap();
    assert_eq!(first, expected(10));
    let counted = PULLED_AUTO.load(Ordering::Relaxed);
    assert_eq!(
        it.pulled(),
        counted as u64,
        "pulled() agrees with the input"
    );
    assert!(counted >= 10);
    assert!(
        counted <= 100_000,
        "automatic chunking pulled {counted} items for 10 results"
    );
    drop(it);
    // The pool is still fine once the endless imap is dropped.
    assert_eq!(pool.map(affine, 0..100).unwrap(), expected(100));
}

#[test]
fn imap_with_chunk_size_one_is_lazy_over_an_endless_input() {
    let pool = pool();
    let input = (0u64..).inspect(|_| {
        PULLED_ONE.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = pool.with_chunk_size(1).imap(affine, input);
    let first: Vec<u64> = it.by_ref().take(10).collect::<Result<_, _>>().unwrap();
    assert_eq!(first, expected(10));
    let counted = PULLED_ONE.load(Ordering::Relaxed);
    assert_eq!(
        it.pulled(),
        counted as u64,
        "pulled() agrees with the input"
    );
    assert!(
        counted <= 5_000,
        "chunk size 1 pulled {counted} items for 10 results"
    );
}

static PULLED_NEXT_AUTO: AtomicUsize = AtomicUsize::new(0);
static PULLED_NEXT_ONE: AtomicUsize = AtomicUsize::new(0);

/// The same bounds as above, pulling results one `next()` at a time (no `size_hint` on
/// the way).
#[test]
fn imap_pulls_a_bounded_number_of_items_one_next_at_a_time() {
    let pool = pool();
    for (counter, chunk, bound) in [
        (&PULLED_NEXT_AUTO, None, 100_000),
        (&PULLED_NEXT_ONE, Some(1), 5_000),
    ] {
        let input = (0u64..).inspect(|_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = match chunk {
            Some(n) => pool.with_chunk_size(n).imap(affine, input),
            None => pool.imap(affine, input),
        };
        let mut first = Vec::new();
        for _ in 0..10 {
            first.push(it.next().expect("an endless imap ends").unwrap());
        }
        assert_eq!(first, expected(10));
        let counted = counter.load(Ordering::Relaxed);
        assert_eq!(
            it.pulled(),
            counted as u64,
            "pulled() agrees with the input"
        );
        assert!(
            counted <= bound,
            "chunk size {chunk:?}: pulled {counted} items for 10 results"
        );
    }
}

/// Early items are the slowest, so they finish last.
fn slow_early(i: u64) -> u64 {
    if i < 4 {
        std::thread::sleep(Duration::from_millis(200 - 40 * i));
    }
    i * 10
}

#[test]
fn imap_yields_in_input_order_when_early_items_are_slower() {
    let pool = pool();
    let got: Vec<u64> = pool
        .with_chunk_size(1)
        .imap(slow_early, 0..40)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..40).map(|i| i * 10).collect::<Vec<_>>());
    // Automatic chunking too.
    let got: Vec<u64> = pool
        .imap(slow_early, 0..40)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..40).map(|i| i * 10).collect::<Vec<_>>());
}

/// A string per item; the items of every fourth chunk of 8 (counting from the first)
/// take a while, so the chunks after them come back first; item `FAIL_AT`, in a chunk
/// that comes back early, fails.
fn labelled(i: u64) -> String {
    if (i / 8).is_multiple_of(4) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_ne!(i, FAIL_AT, "item {FAIL_AT} fails");
    format!("item-{i}-{}", "x".repeat((i % 13) as usize))
}

const FAIL_AT: u64 = 1_000_001;

#[test]
fn map_keeps_order_of_heap_values_when_later_chunks_come_back_first() {
    let pool = pool();
    let want = |n: u64| -> Vec<String> {
        (0..n)
            .map(|i| format!("item-{i}-{}", "x".repeat((i % 13) as usize)))
            .collect()
    };
    // Chunks that come back out of order are decoded into vectors `map` keeps and fills
    // again: several calls in a row, each checked whole.
    for _ in 0..3 {
        assert_eq!(
            pool.with_chunk_size(8).map(labelled, 0..600).unwrap(),
            want(600)
        );
    }
    // A failure in a chunk that came back early: the first failure in input order is the
    // one returned, and the values decoded so far are dropped with it.
    let err = pool
        .with_chunk_size(8)
        .map(
            labelled,
            (0..600).map(|i| if i == 500 { FAIL_AT } else { i }),
        )
        .unwrap_err();
    match err {
        Error::Task(e) => {
            assert_eq!(e.index(), 500, "{e}");
            assert!(matches!(e.kind(), TaskErrorKind::Panic { .. }), "{e}");
        }
        other => panic!("expected the task's failure, got {other}"),
    }
    // The pool goes on, with automatic chunks too.
    assert_eq!(pool.map(labelled, 0..600).unwrap(), want(600));
}

fn square_plus(x: u64) -> u64 {
    x * x + 7
}

#[test]
fn imap_unordered_returns_every_index_exactly_once() {
    let pool = pool();
    let input: Vec<u64> = (0..5000).map(|i| i * 2 + 1).collect();
    let mut seen = vec![false; input.len()];
    let mut n = 0;
    for (i, r) in pool.imap_unordered(square_plus, input.clone()) {
        let v = r.unwrap_or_else(|e| panic!("item {i} failed: {e}"));
        assert!(!seen[i], "index {i} came twice");
        seen[i] = true;
        assert_eq!(v, square_plus(input[i]), "value of index {i}");
        n += 1;
    }
    assert_eq!(n, input.len());
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn apply_runs_one_call() {
    let pool = pool();
    assert_eq!(pool.apply(square_plus, 12).unwrap(), 151);
    let s = pool
        .apply(|s: String| s.to_uppercase(), "procpool".to_string())
        .unwrap();
    assert_eq!(s, "PROCPOOL");
}

fn whoami(x: u64) -> (u64, u32) {
    (x, std::process::id())
}

#[test]
fn spawn_and_join() {
    let pool = pool();
    let handles: Vec<_> = (0..20).map(|i| pool.spawn(whoami, i).unwrap()).collect();
    let workers = pool.worker_pids();
    for (i, h) in handles.into_iter().enumerate() {
        let (x, pid) = h.join().unwrap();
        assert_eq!(x, i as u64);
        assert_ne!(pid, std::process::id(), "ran in a worker, not in the test");
        assert!(
            workers.contains(&pid),
            "ran in worker {pid}, not in {workers:?}"
        );
    }
}

fn sleep_then(x: (u64, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(x.0));
    x.1
}

#[test]
fn join_timeout_times_out_then_join_gives_the_value() {
    let pool = pool();
    let mut h = pool.spawn(sleep_then, (2000, 77)).unwrap();
    let t = Instant::now();
    match h.join_timeout(Duration::from_millis(50)) {
        Err(WaitError::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "join_timeout waited too long"
    );
    assert!(!h.is_finished());
    assert_eq!(h.join().unwrap(), 77);
}

#[test]
fn join_timeout_gives_the_value_when_in_time() {
    let pool = pool();
    let mut h = pool.spawn(sleep_then, (0, 5)).unwrap();
    assert_eq!(h.join_timeout(Duration::from_secs(20)).unwrap(), 5);
}

/// Writes its pid to `marker`, then sleeps 30 s (or until `release` appears).
fn mark_and_block(paths: (String, String)) -> u32 {
    common::write_file(&paths.0, &std::process::id().to_string());
    common::spin_until_exists(&paths.1, Duration::from_secs(30));
    std::process::id()
}

fn assert_cancelled(r: Result<u32, Error>) {
    match r {
        Err(Error::Task(t)) => assert_eq!(t.kind(), &TaskErrorKind::Cancelled, "{t}"),
        other => panic!("expected a cancellation, got {other:?}"),
    }
}

#[test]
fn cancel_of_a_running_task_kills_and_replaces_its_worker() {
    let dir = TempDir::new("cancel-running");
    let pool = pool();
    let before = pool.worker_pids();
    assert_eq!(before.len(), 2);
    let marker = dir.file("started");
    let h = pool
        .spawn(mark_and_block, (marker.clone(), dir.file("never")))
        .unwrap();
    let pid: u32 = common::wait_for_file(&marker, Duration::from_secs(20))
        .trim()
        .parse()
        .unwrap();
    assert!(before.contains(&pid));
    let t = Instant::now();
    h.cancel();
    assert_cancelled(h.join());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t.elapsed()
    );
    common::wait_until(
        "the cancelled task's worker is replaced",
        Duration::from_secs(20),
        || {
            let now = pool.worker_pids();
            now.len() == 2 && !now.contains(&pid)
        },
    );
    common::wait_until("the killed worker is gone", Duration::from_secs(10), || {
        !common::exists(pid)
    });
    assert_eq!(pool.apply(square_plus, 3).unwrap(), 16);
    assert_eq!(pool.map(affine, 0..1000).unwrap(), expected(1000));
}

#[test]
fn cancel_of_a_queued_task() {
    let dir = TempDir::new("cancel-queued");
    let pool = pool();
    let before = pool.worker_pids();
    let release = dir.file("release");
    // Occupy both workers.
    let blockers: Vec<_> = (0..2)
        .map(|k| {
            let marker = dir.file(&format!("started{k}"));
            pool.spawn(mark_and_block, (marker, release.clone()))
                .unwrap()
        })
        .collect();
    for k in 0..2 {
        common::wait_for_file(&dir.file(&format!("started{k}")), Duration::from_secs(20));
    }
    let queued_marker = dir.file("queued-started");
    let queued = pool
        .spawn(mark_and_block, (queued_marker.clone(), release.clone()))
        .unwrap();
    queued.cancel();
    let t = Instant::now();
    assert_cancelled(queued.join());
    assert!(t.elapsed() < Duration::from_secs(5));
    common::write_file(&release, "go");
    let mut pids: Vec<u32> = blockers.into_iter().map(|h| h.join().unwrap()).collect();
    pids.sort_unstable();
    let mut sorted = before.clone();
    sorted.sort_unstable();
    assert_eq!(pids, sorted, "each blocker ran on one of the first workers");
    assert!(
        !std::path::Path::new(&queued_marker).exists(),
        "the cancelled task never ran"
    );
    assert_eq!(
        pool.worker_pids(),
        before,
        "no worker was killed for a queued task"
    );
    assert_eq!(pool.apply(square_plus, 2).unwrap(), 11);
}

fn nap_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn instant_pid(_: u64) -> u32 {
    std::process::id()
}

#[test]
fn long_jobs_after_short_ones_are_spread_over_every_worker() {
    let pool = pool();
    // Many tiny tasks teach the pool that jobs are short (a deep window per worker).
    pool.with_chunk_size(1).map(instant_pid, 0..2000).unwrap();
    let pids = pool
        .with_chunk_size(1)
        .map(nap_then_pid, vec![30; 8])
        .unwrap();
    let mut counts = std::collections::HashMap::new();
    for p in pids {
        *counts.entry(p).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 2, "both workers ran some: {counts:?}");
    assert!(
        counts.values().all(|&n| (3..=5).contains(&n)),
        "the batch is split about evenly: {counts:?}"
    );
}
