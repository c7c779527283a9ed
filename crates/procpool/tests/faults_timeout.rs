//! Fault injection: per-task time limits.
//!
//! A task stuck in a loop or in a system call is stopped by killing its worker; only that
//! task fails, with `TimedOut { limit, ran }`, soon after its limit; the pool replaces the
//! worker. Each test writes a start marker from inside the task holding the monotonic
//! time it started, and measures from there to the moment the error reaches the caller.

procpool::enable_test_support!();

mod faults_common;

use std::ffi::CString;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use faults_common::*;
use procpool::{Error, Pool, TaskError, TaskErrorKind};

/// How late after its limit a timeout may be detected (`ran - limit`).
const DETECT: Duration = Duration::from_millis(100);
/// Extra slack for the wall-clock measurement on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(300);

fn spin_forever((dir, name): (String, String)) -> u64 {
    mark_started(&dir, &name);
    loop {
        std::hint::spin_loop();
    }
}

fn sleep_in_syscall((dir, name): (String, String)) -> u64 {
    mark_started(&dir, &name);
    sleep_forever()
}

fn read_silent_pipe((dir, name): (String, String)) -> u64 {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two-element array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    mark_started(&dir, &name);
    let mut b = [0u8; 1];
    // SAFETY: reading into a live buffer; we hold the write end, so this blocks forever.
    let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    n as u64
}

/// Index 5 spins forever, the others are quick; every run is counted.
fn five_spins((dir, i): (String, u64)) -> u64 {
    mark_run(&dir, i);
    if i == 5 {
        spin_forever((dir, "started".into()));
    }
    i * 3
}

/// Index 2 blocks in a system call, the others are quick.
fn two_blocks((dir, i): (String, u64)) -> u64 {
    mark_run(&dir, i);
    if i == 2 {
        sleep_in_syscall((dir, "started".into()));
    }
    i + 100
}

/// Checks a timeout error: the right kind and limit, `ran >= limit`, detected promptly,
/// and delivered well before the task could have ended (it never would).
fn assert_timely(err: &TaskError, limit: Duration, started: (u32, u64), arrived: u64) -> Duration {
    let TaskErrorKind::TimedOut { limit: l, ran } = err.kind() else {
        panic!("expected TimedOut, got {err}");
    };
    assert_eq!(*l, limit, "{err}");
    assert!(*ran >= limit, "ran {ran:?} < limit {limit:?}: {err}");
    assert!(
        *ran <= limit + DETECT,
        "timeout detected late: ran {ran:?}, limit {limit:?}"
    );
    assert_eq!(
        err.pid(),
        Some(started.0),
        "the error names the worker: {err}"
    );
    let wall = Duration::from_nanos(arrived.saturating_sub(started.1));
    assert!(
        wall + Duration::from_millis(5) >= limit,
        "error arrived {wall:?} after the task started, before its limit {limit:?}"
    );
    assert!(
        wall <= limit + DETECT + SLACK,
        "error arrived {wall:?} after the task started (limit {limit:?})"
    );
    assert!(
        !is_alive(started.0),
        "the worker {} that ran the task must be dead",
        started.0
    );
    wall
}

fn task_err(r: Result<u64, Error>) -> TaskError {
    match r {
        Err(Error::Task(t)) => t,
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[test]
fn timeout_builder_limit_kills_task_spinning_in_a_loop() {
    let _serial = serial();
    let _w = watchdog(module_path!(), Duration::from_secs(60));
    let dir = Scratch::new("spin");
    let limit = Duration::from_millis(300);
    let pool = Pool::builder().workers(2).timeout(limit).build().unwrap();
    let before = pool.worker_pids();
    let h = pool
        .spawn(spin_forever, (dir.arg(), "started".into()))
        .unwrap();
    let started = dir.wait_started("started");
    let err = task_err(h.join());
    let wall = assert_timely(&err, limit, started, mono_nanos());
    eprintln!("spin: error {wall:?} after start (limit {limit:?})");
    assert_eq!(err.attempts(), 1);
    let after = wait_pool_size(&pool, 2, &[started.0]);
    assert!(
        before.iter().any(|p| after.contains(p)),
        "the other worker was untouched"
    );
    assert_eq!(pool.apply(|x: u64| x + 1, 1).unwrap(), 2);
}

#[test]
fn timeout_builder_limit_kills_task_blocked_in_a_system_call() {
    let _serial = serial();
    let _w = watchdog(module_path!(), Duration::from_secs(60));
    let dir = Scratch::new("sleep");
    let limit = Duration::from_millis(250);
    let pool = Pool::builder().workers(2).timeout(limit).build().unwrap();
    for (name, f) in [
        ("sleep", sleep_in_syscall as fn((String, String)) -> u64),
        ("pipe", read_silent_pipe),
    ] {
        let h = pool.spawn(f, (dir.arg(), name.into())).unwrap();
        let started = dir.wait_started(name);
        let err = task_err(h.join());
        let wall = assert_timely(&err, limit, started, mono_nanos());
        eprintln!("{name}: error {wall:?} after start (limit {limit:?})");
        wait_pool_size(&pool, 2, &[started.0]);
    }
    assert_eq!(pool.map(|x: u64| x * 2, 0..10).unwrap().len(), 10);
}

#[test]
fn timeout_per_call_with_timeout_applies_to_apply_spawn_and_map() {
    let _serial = serial();
    let _w = watchdog(module_path!(), Duration::from_secs(60));
    let dir = Scratch::new("percall");
    let limit = Duration::from_millis(200);
    // No limit on the pool itself: only calls made through with_timeout have one.
    let pool = Pool::builder().workers(2).build().unwrap();

    // apply
    let r = pool
        .with_timeout(limit)
        .apply(spin_forever, (dir.arg(), "apply".into()));
    let arrived = mono_nanos();
    let started = dir.wait_started("apply");
    assert_timely(&task_err(r), limit, started, arrived);
    wait_pool_size(&pool, 2, &[started.0]);

    // spawn
    let h = pool
        .with_timeout(limit)
        .spawn(read_silent_pipe, (dir.arg(), "spawn".into()))
        .unwrap();
    let started = dir.wait_started("spawn");
    assert_timely(&task_err(h.join()), limit, started, mono_nanos());
    wait_pool_size(&pool, 2, &[started.0]);

    // map: stops at the task that timed out and names it.
    let items: Vec<(String, u64)> = (0..6).map(|i| (dir.arg(), i)).collect();
    let r = pool.with_timeout(limit).map(two_blocks, items);
    let arrived = mono_nanos();
    let started = dir.wait_started("started");
    let err = match r {
        Err(Error::Task(t)) => t,
        other => panic!("map should fail on task 2: {other:?}"),
    };
    assert_eq!(err.index(), 2, "{err}");
    assert_timely(&err, limit, started, arrived);
    wait_pool_size(&pool, 2, &[started.0]);

    // The same call without a limit is not limited by the earlier ones.
    assert_eq!(pool.apply(|x: u64| x, 7).unwrap(), 7);
}

#[test]
fn timeout_fails_only_the_slow_task_of_an_imap_unordered() {
    let _serial = serial();
    let _w = watchdog(module_path!(), Duration::from_secs(60));
    let dir = Scratch::new("imapu");
    let limit = Duration::from_millis(400);
    let pool = Pool::builder().workers(2).build().unwrap();
    let n = 200u64;
    let items: Vec<(String, u64)> = (0..n).map(|i| (dir.arg(), i)).collect();
    let mut seen = vec![0u32; n as usize];
    let mut timed_out = None;
    for (i, r) in pool.with_timeout(limit).imap_unordered(five_spins, items) {
        seen[i] += 1;
        match r {
            Ok(v) => assert_eq!(v, i as u64 * 3, "task {i}"),
            Err(Error::Task(t)) => {
                assert_eq!(i, 5, "only task 5 may fail, but task {i}: {t}");
                assert_eq!(t.index(), 5);
                timed_out = Some((t, mono_nanos()));
            }
            Err(e) => panic!("task {i}: pool error {e}"),
        }
    }
    assert!(
        seen.iter().all(|&c| c == 1),
        "every index exactly once: {seen:?}"
    );
    let (err, arrived) = timed_out.expect("task 5 must time out");
    let started = read_start_marker(&dir.file("started")).expect("task 5 started");
    assert_timely(&err, limit, started, arrived);
    for i in 0..n {
        assert_eq!(dir.runs(i), 1, "task {i} must run exactly once");
    }
    wait_pool_size(&pool, 2, &[started.0]);
}

static TERM_MARKER: OnceLock<CString> = OnceLock::new();
static EXIT_ON_TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_sig: libc::c_int) {
    // Only async-signal-safe calls here: open, write, close, _exit.
    if let Some(p) = TERM_MARKER.get() {
        // SAFETY: a NUL-terminated path that lives for the whole process; raw syscalls.
        unsafe {
            let fd = libc::open(
                p.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                libc::write(fd, b"term\n".as_ptr().cast(), 5);
                libc::close(fd);
            }
        }
    }
    if EXIT_ON_TERM.load(Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
}

/// Handles SIGTERM (marker file, then exit or not), then spins forever.
fn spin_handling_sigterm((dir, exit): (String, bool)) -> u64 {
    let path = CString::new(format!("{dir}/sigterm")).unwrap();
    assert!(TERM_MARKER.set(path).is_ok(), "one such task per worker");
    EXIT_ON_TERM.store(exit, Ordering::SeqCst);
    let handler = on_sigterm as extern "C" fn(libc::c_int);
    // SAFETY: installing a handler that makes only async-signal-safe calls.
    unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
    mark_started(&dir, "started");
    loop {
        std::hint::spin_loop();
    }
}

#[test]
fn timeout_kill_grace_lets_a_sigterm_handler_run_before_sigkill() {
    let _serial = serial();
    let _w = watchdog(module_path!(), Duration::from_secs(60));
    let limit = Duration::from_millis(200);
    let grace = Duration::from_millis(500);
    let pool = Pool::builder()
        .workers(2)
        .timeout(limit)
        .kill_grace(grace)
        .build()
        .unwrap();

    // A handler that returns: the worker keeps spinning and gets SIGKILL after the grace.
    let dir = Scratch::new("grace");
    let h = pool
        .spawn(spin_handling_sigterm, (dir.arg(), false))
        .unwrap();
    let started = dir.wait_started("started");
    let err = task_err(h.join());
    let arrived = mono_nanos();
    assert!(
        dir.file("sigterm").exists(),
        "the SIGTERM handler must have run"
    );
    let TaskErrorKind::TimedOut { limit: l, ran } = err.kind() else {
        panic!("expected TimedOut, got {err}");
    };
    assert_eq!(*l, limit);
    assert!(*ran >= limit && *ran <= limit + DETECT, "ran {ran:?}");
    let wall = Duration::from_nanos(arrived - started.1);
    assert!(
        wall >= limit + grace - Duration::from_millis(20),
        "SIGKILL came before the grace ran out: {wall:?}"
    );
    assert!(wall <= limit + grace + DETECT + SLACK, "late: {wall:?}");
    assert!(!is_alive(started.0));
    wait_pool_size(&pool, 2, &[started.0]);

    // A handler that exits: still TimedOut, and no need to wait out the grace.
    let dir = Scratch::new("grace-exit");
    let h = pool
        .spawn(spin_handling_sigterm, (dir.arg(), true))
        .unwrap();
    let started = dir.wait_started("started");
    let err = task_err(h.join());
    let arrived = mono_nanos();
    assert!(dir.file("sigterm").exists(), "the SIGTERM handler must run");
    assert!(
        matches!(err.kind(), TaskErrorKind::TimedOut { limit: l, .. } if *l == limit),
        "a worker that exits on SIGTERM after a timeout still reports TimedOut: {err}"
    );
    let wall = Duration::from_nanos(arrived - started.1);
    assert!(
        wall < limit + grace,
        "the error should come when the worker exits, not after the grace: {wall:?}"
    );
    wait_pool_size(&pool, 2, &[started.0]);
    assert_eq!(pool.apply(|x: u64| x * 5, 5).unwrap(), 25);
}
