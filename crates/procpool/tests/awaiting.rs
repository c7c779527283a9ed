//! Awaiting tasks: `TaskHandle` and `Process` as futures on real executors (a
//! `futures` executor and a tokio runtime), many awaits at once, a dropped future, a
//! worker killed while awaited; `wait_any` and `as_completed`; and, with the `futures`
//! feature, `imap` and `imap_unordered` as streams.

procpool::enable_test_support!();

// `as_completed` and the streams are named in full, as users name them.

mod common;

use common::nap;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use procpool::{Error, Pool, TaskErrorKind};

fn square(x: u64) -> u64 {
    x * x
}

/// Writes `path` after `ms` milliseconds.
fn write_later((path, ms): (String, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, "done").expect("write the marker");
}

/// Runs `f` on a thread of its own, failing the test if it takes longer than `limit`
/// (so that a lost wake-up fails instead of hanging).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("an await never finished: a wake-up was lost")
}

#[test]
fn many_pool_tasks_awaited_at_once_on_a_futures_executor() {
    let out = within(Duration::from_secs(60), || {
        let pool = Pool::builder().workers(2).build().expect("pool");
        let handles: Vec<_> = (0..200u64)
            .map(|i| pool.spawn(square, i).expect("spawn"))
            .collect();
        futures::executor::block_on(futures::future::join_all(handles))
    });
    for (i, r) in out.into_iter().enumerate() {
        assert_eq!(r.expect("result"), (i * i) as u64);
    }
}

#[test]
fn pool_tasks_and_one_off_processes_awaited_on_tokio() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let pool = Pool::builder().workers(2).build().expect("pool");
    let t = Instant::now();
    let (a, b, c) = rt.block_on(async {
        let a = pool.spawn(nap, 300).expect("spawn");
        let b = pool.spawn(nap, 300).expect("spawn");
        let c = procpool::spawn(square, 12).expect("a one-off process");
        let timeout = Duration::from_secs(30);
        tokio::time::timeout(timeout, async { tokio::join!(a, b, c) })
            .await
            .expect("awaits finished")
    });
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (300, 300, 144));
    // Both naps ran at once: awaiting does not serialize them.
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_worker_killed_while_its_task_is_awaited_fails_that_await() {
    let pool = Pool::builder().workers(2).build().expect("pool");
    let h = pool.spawn(nap, 30_000).expect("spawn");
    let pids = pool.worker_pids();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        for pid in pids {
            common::sigkill(pid);
        }
    });
    let r = within(Duration::from_secs(20), move || procpool::block_on(h));
    killer.join().expect("killer");
    match r {
        Err(Error::Task(e)) => assert!(matches!(e.kind(), TaskErrorKind::WorkerDied { .. }), "{e}"),
        other => panic!("expected a dead worker, got {other:?}"),
    }
    assert_eq!(pool.apply(square, 5).expect("the pool goes on"), 25);
}

#[test]
fn a_one_off_process_killed_while_awaited_fails_that_await() {
    let p = procpool::spawn(nap, 30_000).expect("spawn");
    let pid = p.pid();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        common::sigkill(pid);
    });
    let r = within(Duration::from_secs(20), move || procpool::block_on(p));
    match r {
        Err(Error::Task(e)) => assert!(matches!(e.kind(), TaskErrorKind::WorkerDied { .. }), "{e}"),
        other => panic!("expected a dead process, got {other:?}"),
    }
}

#[test]
fn many_one_off_processes_awaited_at_once() {
    let out = within(Duration::from_secs(60), || {
        let ps: Vec<_> = (0..12u64)
            .map(|i| procpool::spawn(square, i).expect("spawn"))
            .collect();
        futures::executor::block_on(futures::future::join_all(ps))
    });
    for (i, r) in out.into_iter().enumerate() {
        assert_eq!(r.expect("result"), (i * i) as u64);
    }
}

#[test]
fn dropping_an_awaited_future_detaches_its_task_and_the_pool_goes_on() {
    let dir = common::TempDir::new("await-drop");
    let marker = dir.file("marker");
    let pool = Pool::builder().workers(2).build().expect("pool");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let h = pool
        .spawn(write_later, (marker.clone(), 300))
        .expect("spawn");
    let r = rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), h).await });
    assert!(r.is_err(), "the task cannot have finished in 50 ms");
    // The future (and the handle in it) is gone; the task still runs to its end.
    common::wait_until(
        "the detached task wrote its marker",
        Duration::from_secs(10),
        || std::path::Path::new(&marker).exists(),
    );
    assert_eq!(pool.apply(square, 7).expect("apply"), 49);
}

#[test]
fn wait_any_and_as_completed_follow_the_finishing_order() {
    let pool = Pool::builder().workers(3).build().expect("pool");
    let mut hs = vec![
        pool.spawn(nap, 1500).expect("spawn"),
        pool.spawn(nap, 20).expect("spawn"),
        pool.spawn(nap, 600).expect("spawn"),
    ];
    let (i, r) = procpool::wait_any(&mut hs).expect("three handles");
    assert_eq!((i, r.expect("result")), (1, 20));
    assert_eq!(hs.len(), 2);
    let order: Vec<(usize, u64)> = procpool::as_completed(hs)
        .map(|(i, r)| (i, r.expect("result")))
        .collect();
    assert_eq!(order, [(1, 600), (0, 1500)]);
    assert!(procpool::wait_any::<procpool::TaskHandle<u64>>(&mut Vec::new()).is_none());
    // One-off processes too, and failures come out as results.
    let ps = vec![
        procpool::spawn(nap, 400).expect("spawn"),
        procpool::spawn(nap, 10).expect("spawn"),
    ];
    let order: Vec<usize> = procpool::as_completed(ps).map(|(i, _)| i).collect();
    assert_eq!(order, [1, 0]);
}

#[cfg(feature = "futures")]
#[test]
fn imap_and_imap_unordered_are_streams() {
    use futures::StreamExt;
    let pool = Pool::builder().workers(2).build().expect("pool");
    let ordered: Vec<u64> = futures::executor::block_on(
        pool.imap(square, 0..5000u64)
            .into_stream()
            .map(|r| r.expect("item"))
            .collect(),
    );
    assert_eq!(ordered, (0..5000u64).map(square).collect::<Vec<_>>());
    let mut unordered: Vec<(usize, u64)> = futures::executor::block_on(
        pool.with_chunk_size(1)
            .imap_unordered(nap, [200u64, 1, 1, 1])
            .into_stream()
            .map(|(i, r)| (i, r.expect("item")))
            .collect(),
    );
    assert_eq!(unordered.len(), 4);
    assert_eq!(unordered[3].0, 0, "the long item comes last: {unordered:?}");
    unordered.sort();
    assert_eq!(unordered, [(0, 200), (1, 1), (2, 1), (3, 1)]);
    // On tokio, next to other async work.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let n = rt.block_on(async {
        let mut s = pool.imap_unordered(square, 0..20_000u64).into_stream();
        let mut n = 0;
        while let Some((_, r)) = s.next().await {
            r.expect("item");
            n += 1;
        }
        n
    });
    assert_eq!(n, 20_000);
}
