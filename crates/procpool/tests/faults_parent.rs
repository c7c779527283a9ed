//! Fault injection: the parent dies.
//!
//! A helper parent (this test binary run again in helper mode: the test
//! `helper_parent_process` with an environment variable set) makes a pool of two,
//! starts a long task on each worker, prints the worker pids, and waits. The test then
//! ends the helper (SIGKILL, SIGTERM, Ctrl-C to its process group, or an exit that skips
//! every destructor) and checks that within a second no worker is left alive, nor any
//! process the tasks started (a `sleep` and a plain `fork` child each): a dead parent
//! leaves no descendant of its workers behind.

procpool::enable_test_support!();

mod faults_common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use faults_common::*;
use procpool::Pool;

const HELPER_ENV: &str = "PROCPOOL_FAULTS_PARENT_HELPER";

/// The helper's long task: records a SIGINT if one reaches the worker, starts two
/// children of its own (`sleep 37` and a plain `fork`), says it started (with the
/// children's pids in `kids-<i>`), and blocks.
fn long_task((dir, i): (String, u64)) -> u64 {
    record_sigint_in(&dir);
    let mut sleep = Command::new("sleep")
        .arg("37")
        .spawn()
        .expect("start sleep");
    // SAFETY: the child calls only pause(2), which is async-signal-safe.
    let forked = unsafe { libc::fork() };
    if forked == 0 {
        loop {
            // SAFETY: as above.
            unsafe { libc::pause() };
        }
    }
    let kids = format!("{} {forked}", sleep.id());
    write_marker(&std::path::Path::new(&dir).join(format!("kids-{i}")), &kids);
    mark_started(&dir, &format!("task-{i}"));
    // As `Command::status` does: wait for the child.
    let _ = sleep.wait();
    sleep_forever()
}

/// The pids of the helper's tasks' children, with their command names (so that a
/// recycled pid is never taken for one of them).
fn task_children(dir: &Scratch) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for i in 0..2 {
        let s = std::fs::read_to_string(dir.file(&format!("kids-{i}"))).expect("kids marker");
        for (j, p) in s.split_whitespace().enumerate() {
            let pid: u32 = p.parse().unwrap();
            let comm = wait_for("a child's command name", HANG, || {
                let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                (j != 0 || c.trim() == "sleep").then(|| c.trim().to_owned())
            });
            out.push((pid, comm));
        }
    }
    out
}

/// Whether `pid` is alive and still has the command name `comm`.
fn still_runs(pid: u32, comm: &str) -> bool {
    is_alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
}

/// Not a test of its own: the body of the helper parent, run only when the test binary
/// is started again with `PROCPOOL_FAULTS_PARENT_HELPER=<mode>:<dir>`.
#[test]
fn helper_parent_process() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let (mode, dir) = spec.split_once(':').expect("mode:dir");
    // A run started with SIGINT ignored (a background job of a non-interactive shell, or
    // under nohup) passes that on to this helper, which stands for a program run from a
    // terminal, where Ctrl-C has its usual meaning.
    // SAFETY: sets the default action of one signal; no handler is involved.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let pool = Pool::builder().workers(2).build().unwrap();
    let _handles: Vec<_> = (0..2)
        .map(|i| pool.spawn(long_task, (dir.to_owned(), i)).unwrap())
        .collect();
    let path = std::path::Path::new(dir);
    let mut pids: Vec<u32> = (0..2)
        .map(|i| {
            let f = path.join(format!("task-{i}"));
            wait_for("the helper's tasks", HANG, || read_start_marker(&f)).0
        })
        .collect();
    pids.sort();
    let mut listed = pool.worker_pids();
    listed.sort();
    assert_eq!(pids, listed, "one long task on each worker");
    println!("\nPIDS {} {}", pids[0], pids[1]);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    if mode == "exit" {
        let go = path.join("go");
        wait_for("the test to say go", HANG, || go.exists().then_some(()));
        // Ends the process without running any destructor: the pool is never dropped.
        std::process::exit(0);
    }
    sleep_forever()
}

/// Starts a helper parent in its own process group; returns it and its workers' pids.
fn start_helper(mode: &str, dir: &Scratch) -> (ChildGuard, Vec<u32>) {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "helper_parent_process", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(HELPER_ENV, format!("{mode}:{}", dir.arg()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut guard = ChildGuard {
        child,
        also_kill: Vec::new(),
    };
    let stdout = guard.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may print "test helper_parent_process ... " on the same line.
            if let Some(rest) = line.split_once("PIDS ").map(|(_, r)| r) {
                let pids: Vec<u32> = rest.split(' ').map(|p| p.parse().unwrap()).collect();
                let _ = tx.send(pids);
            }
        }
    });
    let pids = rx
        .recv_timeout(HANG)
        .expect("the helper parent must print its workers' pids");
    guard.also_kill = pids.clone();
    (guard, pids)
}

/// Ends the helper with `how`, then checks that every worker is gone within a second.
fn end_parent_and_check(mode: &str, how: impl FnOnce(u32, &Scratch), want_signal: Option<i32>) {
    let _w = watchdog(mode, Duration::from_secs(60));
    let dir = Scratch::new(mode);
    let (mut helper, workers) = start_helper(mode, &dir);
    let hpid = helper.child.id();
    for &w in &workers {
        let (_, ppid, pgrp) = proc_stat(w).expect("worker alive");
        assert_eq!(ppid, hpid, "worker {w} is the helper's child");
        assert_ne!(
            pgrp, hpid,
            "worker {w} must not be in the parent's process group"
        );
    }
    let kids = task_children(&dir);
    helper
        .also_kill
        .extend(kids.iter().filter(|(_, c)| c != "sleep").map(|(p, _)| *p));
    let t0 = Instant::now();
    how(hpid, &dir);
    let status = helper.child.wait().unwrap();
    assert_eq!(status.signal(), want_signal, "helper ended by {status:?}");
    let left = loop {
        let mut alive: Vec<u32> = workers.iter().copied().filter(|&w| is_alive(w)).collect();
        alive.extend(
            kids.iter()
                .filter(|(p, c)| still_runs(*p, c))
                .map(|(p, _)| *p),
        );
        if alive.is_empty() || t0.elapsed() > Duration::from_secs(1) {
            break alive;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        left.is_empty(),
        "{mode}: workers or their tasks' children {left:?} outlived the parent by more than 1 s"
    );
    eprintln!(
        "{mode}: all workers gone {:?} after the parent",
        t0.elapsed()
    );
    let hit = dir.files_with_prefix("sigint-");
    assert!(hit.is_empty(), "{mode}: SIGINT reached workers {hit:?}");
}

#[test]
fn parent_sigkill_leaves_no_orphan_workers() {
    end_parent_and_check(
        "sigkill",
        |pid, _| kill(pid, libc::SIGKILL),
        Some(libc::SIGKILL),
    );
}

#[test]
fn parent_sigterm_leaves_no_orphan_workers() {
    end_parent_and_check(
        "sigterm",
        |pid, _| kill(pid, libc::SIGTERM),
        Some(libc::SIGTERM),
    );
}

#[test]
fn parent_ctrl_c_to_its_process_group_leaves_no_orphans_and_spares_workers_the_sigint() {
    // Ctrl-C in a terminal sends SIGINT to the foreground process group: the helper's.
    end_parent_and_check(
        "sigint",
        |pid, _| {
            // SAFETY: kill(2) on the helper's own process group (its pgid is its pid).
            let rc = unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGINT) };
            assert_eq!(rc, 0);
        },
        Some(libc::SIGINT),
    );
}

#[test]
fn parent_exit_without_dropping_the_pool_leaves_no_orphan_workers() {
    end_parent_and_check("exit", |_, dir| write_marker(&dir.file("go"), "go"), None);
}
