//! A task's panic carries the worker's backtrace when the user asked for backtraces
//! (`RUST_BACKTRACE=1`), as Python carries a remote traceback; none otherwise. (A test
//! binary of its own: it changes the environment workers inherit.)

procpool::enable_test_support!();

use procpool::{Error, Pool, TaskError};

#[inline(never)]
fn fails_deep_inside(x: u64) -> u64 {
    if x > 0 {
        panic!("task {x} fails");
    }
    x
}

fn panic_error(r: Result<u64, Error>) -> TaskError {
    match r {
        Err(Error::Task(t)) => t,
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[test]
fn a_panic_carries_the_workers_backtrace_only_when_asked() {
    // SAFETY: the one test of this binary; no other thread reads the environment now.
    unsafe { std::env::set_var("RUST_BACKTRACE", "0") };
    let pool = Pool::builder().workers(1).build().unwrap();
    let t = panic_error(pool.apply(fails_deep_inside, 1));
    assert_eq!(t.backtrace(), None, "no backtrace unless asked: {t}");
    assert!(!t.to_string().contains("stack backtrace"), "{t}");
    drop(pool);

    // SAFETY: as above.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let pool = Pool::builder().workers(1).build().unwrap();
    for t in [
        panic_error(pool.apply(fails_deep_inside, 2)),
        panic_error(pool.map(fails_deep_inside, [0, 3]).map(|v| v[0])),
        panic_error(procpool::spawn(fails_deep_inside, 4).unwrap().join()),
    ] {
        let bt = t
            .backtrace()
            .unwrap_or_else(|| panic!("no backtrace in {t}"));
        assert!(bt.contains("fails_deep_inside"), "{bt}");
        let text = t.to_string();
        assert!(
            text.contains("fails\nstack backtrace of the worker:\n"),
            "{text}"
        );
    }
}
