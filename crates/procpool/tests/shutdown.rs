//! What `close()`, `join()` and dropping a task handle promise about work already
//! under way: detached tasks run, calls started before `close()` finish, and `join()`
//! never kills a worker that is only starting.

procpool::enable_test_support!();

mod common;

use std::io::Write;
use std::time::Duration;

use common::TempDir;
use procpool::{Error, Pool, TaskErrorKind};

/// Appends `i` as a line to the file at `path`.
fn append_line((path, i): (String, u64)) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log");
    // One write per line, so that lines of different processes never interleave.
    f.write_all(format!("{i}\n").as_bytes())
        .expect("write the log");
}

fn lines(path: &str) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a number"))
        .collect();
    v.sort_unstable();
    v
}

/// Inputs large enough (64 KiB each) that the pool's bound on bytes in flight keeps
/// most of them back: a call over them is still feeding its input for a while.
fn big_items(n: u64) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 64 << 10])
}

fn slow_first_byte(v: Vec<u8>) -> u8 {
    std::thread::sleep(Duration::from_millis(1));
    v[0]
}

fn expected_first_bytes(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(|i| i as u8).collect()
}

fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x * 2
}

#[test]
fn dropped_task_handles_still_run_and_join_waits_for_them() {
    let dir = TempDir::new("detached");
    let log = dir.file("log");
    let pool = Pool::builder().workers(2).build().unwrap();
    for i in 0..100 {
        drop(pool.spawn(append_line, (log.clone(), i)).unwrap());
    }
    pool.join();
    assert_eq!(
        lines(&log),
        (0..100).collect::<Vec<_>>(),
        "every detached task ran once"
    );
}

#[test]
fn a_cancelled_then_dropped_handle_does_not_run() {
    let dir = TempDir::new("cancelled");
    let log = dir.file("log");
    let pool = Pool::builder().workers(1).build().unwrap();
    // Occupy the only worker so that the next task is still queued when cancelled.
    let busy = pool.spawn(slow_double, 1).unwrap();
    let h = pool.spawn(append_line, (log.clone(), 7)).unwrap();
    h.cancel();
    drop(h);
    assert_eq!(busy.join().unwrap(), 2);
    pool.join();
    assert!(lines(&log).is_empty(), "a cancelled task ran");
}

#[test]
fn close_from_another_thread_lets_a_running_map_finish() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let out = std::thread::scope(|s| {
        let m = s.spawn(|| {
            pool.with_chunk_size(1)
                .map(slow_first_byte, big_items(1500))
        });
        std::thread::sleep(Duration::from_millis(100));
        pool.close();
        m.join().unwrap()
    });
    let out = out.expect("a map started before close() completes");
    assert_eq!(out, expected_first_bytes(0..1500));
    // New calls are refused.
    match pool.map(slow_double, 0..2u64) {
        Err(Error::Pool(procpool::PoolError::Closed)) => {}
        other => panic!("a call after close() gave {other:?}"),
    }
    pool.join();
}

#[test]
fn close_lets_an_imap_started_earlier_finish() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut it = pool
        .with_chunk_size(1)
        .imap(slow_first_byte, big_items(1500));
    let first = it.next().unwrap().unwrap();
    pool.close();
    let rest: Vec<u8> = it.map(Result::unwrap).collect();
    assert_eq!(first, 0);
    assert_eq!(rest, expected_first_bytes(1..1500));
    pool.join();
}

#[test]
fn join_does_not_wait_for_an_imap_nobody_drains() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut it = pool
        .with_chunk_size(1)
        .imap(slow_first_byte, big_items(u64::MAX));
    assert_eq!(it.next().unwrap().unwrap(), 0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pool.join();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("join waited for an imap iterator nobody drains");
    // The items not sent before the workers stopped fail with Closed.
    let rest: Vec<_> = it.by_ref().take(100_000).collect();
    assert!(
        rest.iter()
            .any(|r| matches!(r, Err(Error::Pool(procpool::PoolError::Closed)))),
        "the iterator went on after join"
    );
}

/// Logs "start PID" and, half a second later, "end PID".
fn slow_init(path: String) {
    let pid = std::process::id();
    let log = |what: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open the log");
        f.write_all(format!("{what} {pid}\n").as_bytes())
            .expect("write the log");
    };
    log("start");
    std::thread::sleep(Duration::from_millis(500));
    log("end");
}

fn exit_worker(_: ()) {
    std::process::exit(3);
}

#[test]
fn join_lets_a_replacement_worker_finish_its_initializer() {
    let dir = TempDir::new("join-init");
    let log = dir.file("log");
    let pool = Pool::builder()
        .workers(2)
        .initializer(slow_init, log.clone())
        .build()
        .unwrap();
    // Both workers through their initializer.
    assert_eq!(pool.map(slow_double, 0..4u64).unwrap().len(), 4);
    // Kill one: its replacement starts at once and sits in the initializer.
    match pool.apply(exit_worker, ()) {
        Err(Error::Task(e)) if matches!(e.kind(), TaskErrorKind::WorkerDied { .. }) => {}
        other => panic!("the exiting task gave {other:?}"),
    }
    common::wait_until(
        "the replacement is in its initializer",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
                >= 5
        },
    );
    pool.join();
    let text = std::fs::read_to_string(&log).unwrap();
    let starts = text.lines().filter(|l| l.starts_with("start")).count();
    let ends = text.lines().filter(|l| l.starts_with("end")).count();
    assert_eq!(starts, 3, "three initializers started:\n{text}");
    assert_eq!(starts, ends, "join() cut an initializer short:\n{text}");
}
