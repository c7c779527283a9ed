//! Fault injection: workers that die, at every point of their life.
//!
//! Each case ends with the right attribution: the task that was running when its worker
//! died (if any) fails with `WorkerDied` naming the signal or exit code; tasks sent to
//! the worker but not started go back to the queue and run once elsewhere; nothing else
//! fails, no task is lost or run twice (each run appends a line to a per-index marker
//! file), and the pool keeps its size. Also: start-up failures (an initializer that
//! always panics) and retries with a task that kills every worker it touches.

procpool::enable_test_support!();

mod common;
mod faults_common;

use std::time::{Duration, Instant};

use common::is_init_panic;
use faults_common::*;
use procpool::{Death, Error, Pool, PoolError, TaskErrorKind, WaitError};

const BIG: usize = 256 << 20;

fn whoami(_: u64) -> u32 {
    my_pid()
}

/// Counts its run, returns its index plus one.
fn counted((dir, i): (String, u64)) -> u64 {
    mark_run(&dir, i);
    i + 1
}

/// Checks that every index in `0..n` ran exactly once.
fn assert_ran_once(dir: &Scratch, n: u64, except: Option<u64>) {
    for i in 0..n {
        if Some(i) != except {
            assert_eq!(dir.runs(i), 1, "task {i} must run exactly once");
        }
    }
}

/// Runs `counted` over `0..n` and checks every result.
fn all_succeed(pool: &Pool, dir: &Scratch, n: u64) {
    let items: Vec<(String, u64)> = (0..n).map(|i| (dir.arg(), i)).collect();
    let mut seen = vec![0u32; n as usize];
    for (i, r) in pool.imap_unordered(counted, items) {
        seen[i] += 1;
        assert_eq!(r.unwrap(), i as u64 + 1);
    }
    assert!(seen.iter().all(|&c| c == 1), "each index once: {seen:?}");
    assert_ran_once(dir, n, None);
}

#[test]
fn death_worker_killed_while_idle_is_replaced_and_nothing_fails() {
    let _w = watchdog("idle", Duration::from_secs(60));
    let dir = Scratch::new("idle");
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = wait_pool_size(&pool, 2, &[]);
    kill(pids[0], libc::SIGKILL);
    let after = wait_pool_size(&pool, 2, &[pids[0]]);
    assert!(after.contains(&pids[1]), "the other worker is untouched");
    all_succeed(&pool, &dir, 100);
}

#[test]
fn death_worker_killed_during_handshake_pool_recovers() {
    let _w = watchdog("handshake", Duration::from_secs(60));
    let dir = Scratch::new("handshake");
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = wait_pool_size(&pool, 2, &[]);
    kill(pids[0], libc::SIGKILL);
    // Kill the replacement the moment it shows up: it is still starting (racy by nature:
    // it may already have finished its handshake, which is the idle case).
    let fresh = wait_for("a replacement worker", HANG, || {
        pool.worker_pids().into_iter().find(|p| !pids.contains(p))
    });
    kill(fresh, libc::SIGKILL);
    wait_pool_size(&pool, 2, &[pids[0], fresh]);
    all_succeed(&pool, &dir, 100);
}

fn slow_init(dir: String) {
    mark_started(&dir, &format!("init-{}", my_pid()));
    std::thread::sleep(Duration::from_secs(1));
}

#[test]
fn death_worker_killed_during_initializer_pool_recovers() {
    let _w = watchdog("initializer", Duration::from_secs(60));
    let dir = Scratch::new("init");
    let pool = Pool::builder()
        .workers(2)
        .initializer(slow_init, dir.arg())
        .build()
        .unwrap();
    // Queued while the workers are still in their initializers.
    let early = pool.spawn(counted, (dir.arg(), 1000)).unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    let (victim, _) = dir.wait_started(&format!("init-{}", pids[0]));
    kill(victim, libc::SIGKILL);
    assert_eq!(early.join().unwrap(), 1001);
    assert_eq!(dir.runs(1000), 1);
    wait_pool_size(&pool, 2, &[victim]);
    all_succeed(&pool, &dir, 50);
    let inits = dir.files_with_prefix("init-");
    assert!(
        inits.len() >= 3,
        "the replacement ran the initializer too: {inits:?}"
    );
}

/// Holds its worker until the file `release` exists.
fn hold(dir: String) -> u32 {
    mark_started(&dir, "held");
    let release = std::path::Path::new(&dir).join("release");
    while !release.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    my_pid()
}

/// Resident memory of a process, from `/proc/<pid>/statm`.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn big_argument((dir, s): (String, String)) -> u64 {
    mark_run(&dir, 0);
    s.len() as u64
}

/// Sends an argument of `size` bytes to one worker and kills that worker while it
/// receives it: at once, or (`watch_rss`) once its memory shows the bytes arriving.
fn kill_while_receiving(size: usize, watch_rss: bool) {
    let dir = Scratch::new("bigarg");
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = wait_pool_size(&pool, 2, &[]);
    // Occupy one worker, so that the large argument goes to the other.
    let holder = pool.spawn(hold, dir.arg()).unwrap();
    let (held, _) = dir.wait_started("held");
    let victim = *pids.iter().find(|&&p| p != held).unwrap();
    let big = "a".repeat(size);
    let base = rss_bytes(victim);
    let mut h = pool.spawn(big_argument, (dir.arg(), big)).unwrap();
    let t0 = Instant::now();
    if watch_rss {
        // Bytes that come through the socket grow the worker's memory as they arrive.
        // (Should they take a way that does not show, kill it shortly after anyway.)
        while rss_bytes(victim) < base + (32 << 20) && t0.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let grown = rss_bytes(victim).saturating_sub(base) >> 20;
    kill(victim, libc::SIGKILL);
    let waited = t0.elapsed();
    write_marker(&dir.file("release"), "go");
    assert_eq!(holder.join().unwrap(), held);
    let r = h.join_timeout(HANG);
    match &r {
        // Not started when its worker died: sent again to another worker.
        Ok(n) => {
            assert_eq!(*n, size as u64);
            assert_eq!(dir.runs(0), 1, "ran exactly once");
        }
        Err(WaitError::Failed(Error::Task(t))) => {
            assert!(
                matches!(
                    t.kind(),
                    TaskErrorKind::WorkerDied {
                        death: Death::Signal(9)
                    }
                ),
                "{t}"
            );
            assert!(dir.runs(0) <= 1, "never run twice");
        }
        Err(e) => panic!("the task must succeed or fail with WorkerDied, got {e:?}"),
    }
    eprintln!(
        "argument of {} MiB, killed {waited:?} after submitting (worker grew {grown} MiB): {:?}",
        size >> 20,
        r.map_err(|e| e.to_string())
    );
    wait_pool_size(&pool, 2, &[victim]);
    all_succeed(&pool, &Scratch::new("bigarg-after"), 20);
}

#[test]
fn death_worker_killed_while_receiving_a_large_argument_never_hangs_or_runs_twice() {
    let _w = watchdog("large argument", Duration::from_secs(120));
    kill_while_receiving(BIG, true);
    // Smaller than the per-worker shared data region: the bytes may go that way.
    kill_while_receiving(64 << 20, false);
}

/// How the victim task (index 7) ends its worker.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Ending {
    /// Waits to be killed from outside.
    External,
    Abort,
    Segfault,
    Exit3,
}

fn victim((dir, i, how): (String, u64, Ending)) -> u64 {
    mark_run(&dir, i);
    if i != 7 {
        return i * 10;
    }
    mark_started(&dir, "victim");
    match how {
        Ending::External => sleep_forever(),
        Ending::Abort => {
            no_core_dump();
            std::process::abort()
        }
        Ending::Segfault => {
            no_core_dump();
            // SAFETY: not safe at all, on purpose: a real invalid memory access.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            unreachable!()
        }
        Ending::Exit3 => std::process::exit(3),
    }
}

#[test]
fn death_worker_dying_while_running_fails_only_that_task_naming_the_signal() {
    let _w = watchdog("running", Duration::from_secs(90));
    let pool = Pool::builder().workers(2).build().unwrap();
    let cases = [
        (
            Ending::External,
            Some(libc::SIGKILL),
            Death::Signal(libc::SIGKILL),
        ),
        (
            Ending::External,
            Some(libc::SIGTERM),
            Death::Signal(libc::SIGTERM),
        ),
        (Ending::Abort, None, Death::Signal(libc::SIGABRT)),
        (Ending::Segfault, None, Death::Signal(libc::SIGSEGV)),
        (Ending::Exit3, None, Death::Exit(3)),
    ];
    for (how, signal, want) in cases {
        let dir = Scratch::new("running");
        let killer = signal.map(|sig| {
            let marker = dir.file("victim");
            std::thread::spawn(move || {
                let (pid, _) = wait_for("the victim to start", HANG, || read_start_marker(&marker));
                kill(pid, sig);
            })
        });
        let n = 40u64;
        let items: Vec<(String, u64, Ending)> = (0..n).map(|i| (dir.arg(), i, how)).collect();
        let mut seen = vec![0u32; n as usize];
        let mut failed = None;
        for (i, r) in pool.with_chunk_size(1).imap_unordered(victim, items) {
            seen[i] += 1;
            match r {
                Ok(v) => assert_eq!(v, i as u64 * 10),
                Err(Error::Task(t)) if i == 7 => failed = Some(t),
                Err(e) => panic!("{how:?}: only task 7 may fail, task {i}: {e}"),
            }
        }
        if let Some(k) = killer {
            k.join().unwrap();
        }
        assert!(seen.iter().all(|&c| c == 1), "{how:?}: each index once");
        let t = failed.unwrap_or_else(|| panic!("{how:?}: task 7 must fail"));
        let (pid, _) = read_start_marker(&dir.file("victim")).unwrap();
        let TaskErrorKind::WorkerDied { death } = t.kind() else {
            panic!("{how:?}: expected WorkerDied, got {t}");
        };
        assert_eq!(*death, want, "{how:?}: {t}");
        if let Death::Signal(s) = want {
            let name = death.signal_name().unwrap();
            assert_eq!(name, signal_name(s));
            assert!(
                t.to_string().contains(name),
                "the message names {name}: {t}"
            );
        }
        assert_eq!(t.pid(), Some(pid), "{t}");
        assert_eq!(t.attempts(), 1);
        assert_eq!(t.index(), 7);
        assert_ran_once(&dir, n, None);
        wait_pool_size(&pool, 2, &[pid]);
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        _ => "?",
    }
}

fn big_result(dir: String) -> String {
    mark_run(&dir, 0);
    let s = "b".repeat(BIG);
    mark_started(&dir, "computed");
    s
}

#[test]
fn death_worker_killed_while_sending_a_large_result_fails_that_task() {
    let _w = watchdog("large result", Duration::from_secs(120));
    let dir = Scratch::new("bigres");
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut h = pool.spawn(big_result, dir.arg()).unwrap();
    let (pid, _) = dir.wait_started("computed");
    kill(pid, libc::SIGKILL);
    let r = h.join_timeout(HANG);
    match &r {
        Err(WaitError::Failed(Error::Task(t))) => {
            assert!(
                matches!(
                    t.kind(),
                    TaskErrorKind::WorkerDied {
                        death: Death::Signal(9)
                    }
                ),
                "{t}"
            );
            assert_eq!(t.pid(), Some(pid));
        }
        // Only if the whole result was in the socket before the kill landed.
        Ok(s) => assert_eq!(s.len(), BIG),
        Err(e) => panic!("expected WorkerDied(SIGKILL), got {e:?}"),
    }
    eprintln!(
        "large result: {}",
        match &r {
            Ok(_) => "arrived whole before the kill".to_owned(),
            Err(e) => e.to_string(),
        }
    );
    drop(r);
    assert_eq!(dir.runs(0), 1, "ran once, not retried");
    wait_pool_size(&pool, 2, &[pid]);
    all_succeed(&pool, &Scratch::new("bigres-after"), 20);
}

/// Returns at once, and ends its worker (exit code 9) a moment after.
fn exit_after_returning(_: u64) -> u32 {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: ends the process at once, on purpose.
        unsafe { libc::_exit(9) };
    });
    my_pid()
}

#[test]
fn death_worker_dying_after_sending_its_result_loses_nothing() {
    let _w = watchdog("after result", Duration::from_secs(60));
    let dir = Scratch::new("after");
    let pool = Pool::builder().workers(2).build().unwrap();

    // Killed from outside right after its result came back.
    let pid = pool.apply(whoami, 0).unwrap();
    kill(pid, libc::SIGKILL);
    wait_pool_size(&pool, 2, &[pid]);
    all_succeed(&pool, &dir, 50);

    // Exits by itself once its result is sent, before any next task.
    let pid = pool.apply(exit_after_returning, 0).unwrap();
    wait_for("the worker to exit", HANG, || {
        (!is_alive(pid)).then_some(())
    });
    wait_pool_size(&pool, 2, &[pid]);
    let dir = Scratch::new("after2");
    all_succeed(&pool, &dir, 50);
}

fn panicking_init(dir: String) {
    mark_started(&dir, &format!("init-{}", my_pid()));
    panic!("initializer fails on purpose");
}

#[test]
fn startup_initializer_that_always_panics_breaks_the_pool_instead_of_respawning_forever() {
    let _w = watchdog("broken initializer", Duration::from_secs(60));
    let dir = Scratch::new("badinit");
    let t0 = Instant::now();
    match Pool::builder()
        .workers(2)
        .initializer(panicking_init, dir.arg())
        .build()
    {
        // Failing the build is acceptable, if the error names the initializer's panic.
        Err(Error::Pool(e)) => assert!(is_init_panic(&e, true), "{e}"),
        Err(e) => panic!("unexpected build error {e}"),
        Ok(pool) => {
            let r = match pool.spawn(|x: u64| x, 1) {
                Err(e) => Err(WaitError::Failed(e)),
                Ok(mut h) => h.join_timeout(Duration::from_secs(10)),
            };
            match r {
                Err(WaitError::Failed(Error::Pool(ref p @ PoolError::Broken { .. }))) => {
                    assert!(
                        is_init_panic(p, true),
                        "Broken must name the initializer's panic: {p}"
                    );
                }
                other => panic!(
                    "a task on a pool whose initializer always panics must fail with \
                     PoolError::Broken within 10 s, got {other:?}; initializer runs so \
                     far: {}, live workers: {:?}",
                    dir.files_with_prefix("init-").len(),
                    pool.worker_pids()
                ),
            }
            // Later calls are refused at once with the same error.
            match pool.spawn(|x: u64| x, 2) {
                Err(Error::Pool(p)) => assert!(is_init_panic(&p, true), "{p}"),
                Ok(mut h) => match h.join_timeout(Duration::from_secs(5)) {
                    Err(WaitError::Failed(Error::Pool(p))) => {
                        assert!(is_init_panic(&p, true), "{p}")
                    }
                    other => panic!("a broken pool must refuse work: {other:?}"),
                },
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    let spawned = dir.files_with_prefix("init-").len();
    std::thread::sleep(Duration::from_millis(300));
    let later = dir.files_with_prefix("init-").len();
    assert!(
        (1..=8).contains(&spawned),
        "few workers may be started, not {spawned}"
    );
    assert_eq!(spawned, later, "no worker is started once the pool gave up");
}

fn poison((dir, i): (String, u64)) -> u64 {
    mark_run(&dir, i);
    if i == 7 {
        no_core_dump();
        std::process::abort();
    }
    i * 2
}

#[test]
fn retries_poison_pill_fails_after_three_attempts_and_others_succeed() {
    let _w = watchdog("retries", Duration::from_secs(60));
    let dir = Scratch::new("poison");
    let pool = Pool::builder().workers(2).retries(2).build().unwrap();
    let n = 60u64;
    let items: Vec<(String, u64)> = (0..n).map(|i| (dir.arg(), i)).collect();
    let mut seen = vec![0u32; n as usize];
    let mut failed = None;
    for (i, r) in pool.with_chunk_size(1).imap_unordered(poison, items) {
        seen[i] += 1;
        match r {
            Ok(v) => assert_eq!(v, i as u64 * 2),
            Err(Error::Task(t)) if i == 7 => failed = Some(t),
            Err(e) => panic!("only task 7 may fail, task {i}: {e}"),
        }
    }
    assert!(seen.iter().all(|&c| c == 1), "each index once: {seen:?}");
    let t = failed.expect("task 7 must fail");
    assert_eq!(
        t.kind(),
        &TaskErrorKind::WorkerDied {
            death: Death::Signal(libc::SIGABRT)
        },
        "{t}"
    );
    assert_eq!(t.attempts(), 3, "{t}");
    assert_eq!(dir.runs(7), 3, "started 3 times");
    assert_ran_once(&dir, n, Some(7));
    wait_pool_size(&pool, 2, &[]);
    let dir = Scratch::new("poison2");
    all_succeed(&pool, &dir, 30);
}
