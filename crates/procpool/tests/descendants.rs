//! A task's own child processes die with its worker, on every parent-side kill path: the
//! time limit, cancel, terminating or dropping the pool, killing a one-off process, and a
//! worker that ends on its own. (The parent's death is tested in `faults_parent`.)
//!
//! Each task starts `sleep 37` (as `Command::status` does: and waits for it) and a
//! plain `fork()` child that only sleeps, records both pids, and blocks. After the kill
//! the test checks that both are gone within a second. A child that left the worker's
//! session on purpose (`setsid`) is left alone.

procpool::enable_test_support!();

mod faults_common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use faults_common::*;
use procpool::{Error, Pool, TaskErrorKind};

/// Whether `pid` still runs a program whose command name is `comm`: never a recycled
/// pid.
fn runs(pid: u32, comm: &str) -> bool {
    is_alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
}

/// In a task: a forked child that sleeps until killed (only async-signal-safe calls after
/// the fork); returns its pid.
fn fork_sleeper() -> u32 {
    // SAFETY: the child calls only pause(2) and _exit(2), both async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        loop {
            // SAFETY: as above.
            unsafe { libc::pause() };
        }
    }
    assert!(pid > 0, "fork failed");
    pid as u32
}

/// The task: starts the two children (and, when `leave`, a third in a session of its
/// own), writes `<dir>/kids` as `sleep-pid fork-pid [setsid-pid]`, then waits for
/// `sleep` as `Command::status` would.
#[allow(
    clippy::zombie_processes,
    reason = "the detached child is left running on purpose"
)]
fn start_children_and_wait((dir, leave): (String, bool)) -> u64 {
    let mut sleep = Command::new("sleep")
        .arg("37")
        .spawn()
        .expect("start sleep");
    let forked = fork_sleeper();
    let mut line = format!("{} {forked}", sleep.id());
    if leave {
        let mut c = Command::new("sleep");
        c.arg("38");
        // SAFETY: setsid(2) is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let d = c.spawn().expect("start the detached sleep");
        line.push_str(&format!(" {}", d.id()));
    }
    mark_started(&dir, "worker");
    write_marker(&std::path::Path::new(&dir).join("kids"), &line);
    let _ = sleep.wait();
    sleep_forever()
}

/// In a task: starts the children and returns at once, leaving them running.
#[allow(
    clippy::zombie_processes,
    reason = "the children are left running on purpose"
)]
fn start_children_and_return(dir: String) -> u64 {
    let sleep = Command::new("sleep")
        .arg("37")
        .spawn()
        .expect("start sleep");
    let forked = fork_sleeper();
    write_marker(
        &std::path::Path::new(&dir).join("kids"),
        &format!("{} {forked}", sleep.id()),
    );
    7
}

/// The task's children: their pids and command names, once they run.
struct Kids {
    pids: Vec<u32>,
    comms: Vec<String>,
}

/// Waits for the kids marker and the children's command names.
fn kids(dir: &Scratch) -> Kids {
    let path = dir.file("kids");
    let pids: Vec<u32> = wait_for("the task's children", HANG, || {
        let s = std::fs::read_to_string(&path).ok()?;
        Some(s.split_whitespace().map(|p| p.parse().unwrap()).collect())
    });
    let comms = pids
        .iter()
        .map(|p| {
            wait_for("a child's command name", HANG, || {
                let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/comm")) else {
                    return Some(String::from("(gone)"));
                };
                // A child between fork and exec still has its parent's name.
                (pids[0] != *p || c.trim() == "sleep").then(|| c.trim().to_owned())
            })
        })
        .collect();
    Kids { pids, comms }
}

/// Checks that the task's `sleep` and forked child die within a second of `t0`.
fn assert_children_die(what: &str, kids: &Kids, t0: Instant) {
    let alive = || {
        (0..2)
            .filter(|&i| runs(kids.pids[i], &kids.comms[i]))
            .map(|i| kids.pids[i])
            .collect::<Vec<u32>>()
    };
    let left = loop {
        let left = alive();
        if left.is_empty() || t0.elapsed() > Duration::from_secs(1) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    for &k in &left {
        kill(k, libc::SIGKILL);
    }
    assert!(
        left.is_empty(),
        "{what}: the task's children {left:?} outlived their worker by more than 1 s"
    );
}

#[test]
fn descendants_die_with_a_task_past_its_time_limit() {
    let _s = serial();
    let dir = Scratch::new("limit");
    let pool = Pool::builder().workers(1).build().unwrap();
    let h = pool
        .with_timeout(Duration::from_secs(1))
        .spawn(start_children_and_wait, (dir.arg(), false))
        .unwrap();
    let kids = kids(&dir);
    let r = h.join();
    let t0 = Instant::now();
    match r {
        Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::TimedOut { .. }) => {}
        other => panic!("expected a time-out, got {other:?}"),
    }
    assert!(
        kids.comms.iter().all(|c| c != "(gone)"),
        "the children died before the time limit"
    );
    assert_children_die("time limit", &kids, t0);
}

#[test]
fn descendants_die_with_a_cancelled_task() {
    let _s = serial();
    let dir = Scratch::new("cancel");
    let pool = Pool::builder().workers(1).build().unwrap();
    let h = pool
        .spawn(start_children_and_wait, (dir.arg(), false))
        .unwrap();
    let kids = kids(&dir);
    let t0 = Instant::now();
    h.cancel();
    assert_children_die("cancel", &kids, t0);
}

#[test]
fn descendants_die_when_the_pool_is_dropped_or_terminated() {
    let _s = serial();
    for terminate in [false, true] {
        let dir = Scratch::new("drop");
        let pool = Pool::builder().workers(1).build().unwrap();
        let _h = pool
            .spawn(start_children_and_wait, (dir.arg(), false))
            .unwrap();
        let kids = kids(&dir);
        let t0 = Instant::now();
        if terminate {
            pool.terminate();
        } else {
            drop(pool);
        }
        let what = if terminate { "terminate" } else { "drop" };
        assert_children_die(what, &kids, t0);
    }
}

#[test]
fn descendants_die_with_a_killed_one_off_process() {
    let _s = serial();
    let dir = Scratch::new("oneoff");
    let mut p = procpool::spawn(start_children_and_wait, (dir.arg(), false)).unwrap();
    let kids = kids(&dir);
    let t0 = Instant::now();
    p.kill();
    let _ = p.join();
    assert_children_die("one-off kill", &kids, t0);
}

#[test]
fn descendants_left_behind_by_a_finished_task_die_with_their_worker() {
    let _s = serial();
    let dir = Scratch::new("left");
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.apply(start_children_and_return, dir.arg()).unwrap(), 7);
    let kids = kids(&dir);
    let t0 = Instant::now();
    pool.join();
    assert_children_die("pool join", &kids, t0);
}

#[test]
fn a_child_that_made_its_own_session_is_left_alone() {
    let _s = serial();
    let dir = Scratch::new("setsid");
    let pool = Pool::builder().workers(1).build().unwrap();
    let _h = pool
        .spawn(start_children_and_wait, (dir.arg(), true))
        .unwrap();
    let kids = kids(&dir);
    let t0 = Instant::now();
    drop(pool);
    assert_children_die("drop", &kids, t0);
    let detached = kids.pids[2];
    let alive = runs(detached, "sleep");
    kill(detached, libc::SIGKILL);
    assert!(
        alive,
        "a child in its own session is not procpool's to kill"
    );
}
