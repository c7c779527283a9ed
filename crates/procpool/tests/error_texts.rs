//! Error texts read as sentences a user can act on, and say nothing untrue: a one-off
//! process has no pool to replace it.

procpool::enable_test_support!();

mod common;

use common::nap;

use std::time::Duration;

use procpool::{Error, Pool};

fn boom(_: ()) -> u64 {
    panic!("boom")
}

/// The error's sentence (without the worker's backtrace, shown when `RUST_BACKTRACE`
/// asks for it).
fn text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(e) => {
            let t = e.to_string();
            match t.split_once("\nstack backtrace of the worker:") {
                Some((sentence, _)) => sentence.to_owned(),
                None => t,
            }
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn a_killed_one_off_process_says_so_without_mentioning_a_pool() {
    let mut p = procpool::spawn(nap, 60_000).unwrap();
    let pid = p.pid();
    p.kill();
    let t = text(p.join());
    assert_eq!(
        t,
        format!(
            "task 0, run by process {pid}, failed because the process running it was killed \
             by SIGKILL (signal 9)"
        )
    );
    assert!(!t.contains("pool"), "{t}");
}

#[test]
fn pool_task_errors_read_as_sentences() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let pid = pool.worker_pids()[0];
    let t = text(pool.apply(boom, ()));
    assert!(
        t.starts_with(&format!("task 0, run by process {pid}, panicked at "))
            && t.ends_with(": boom"),
        "{t}"
    );
    let t = text(
        pool.with_timeout(Duration::from_millis(50))
            .apply(nap, 60_000),
    );
    assert!(
        t.contains(", run by process ")
            && t.contains(" ran past its time limit of 50ms (it had run ")
            && t.ends_with("), so the process running it was killed"),
        "{t}"
    );
}
