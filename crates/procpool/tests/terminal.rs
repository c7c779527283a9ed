//! Workers and a real terminal: no worker is ever stopped by job control, and a
//! terminal's Ctrl-C reaches only the parent.
//!
//! The test runs a helper parent (this test binary again, in helper mode) under
//! `script` (util-linux), which gives it a pseudo-terminal as its controlling terminal,
//! with `stty tostop` set: a process of a background group of that terminal's session
//! that writes to it is stopped by SIGTTOU. The helper's tasks print to the terminal and
//! change its modes (`stty -echo </dev/tty`); then the test types Ctrl-C into the
//! terminal. Skipped (with a message) where `script` is missing.

procpool::enable_test_support!();

mod faults_common;

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use faults_common::*;
use procpool::Pool;

const HELPER_ENV: &str = "PROCPOOL_TERMINAL_HELPER";

/// Prints to the terminal and changes its modes, as an interactive tool would.
fn print_and_touch_the_terminal(i: u64) -> u64 {
    println!("task {i} prints to the terminal");
    std::io::stdout().flush().unwrap();
    eprintln!("task {i} prints to standard error");
    let tty = || std::fs::File::open("/dev/tty").map(Stdio::from);
    if let Ok(t) = tty() {
        let _ = Command::new("stty").arg("-echo").stdin(t).status();
    }
    if let Ok(t) = tty() {
        let _ = Command::new("stty").arg("echo").stdin(t).status();
    }
    i + 1
}

/// Records a SIGINT if one reaches the worker, says it started, and blocks.
fn wait_for_ctrl_c((dir, i): (String, u64)) -> u64 {
    record_sigint_in(&dir);
    mark_started(&dir, &format!("task-{i}"));
    sleep_forever()
}

/// Not a test of its own: the helper parent, run under `script` when
/// `PROCPOOL_TERMINAL_HELPER=<dir>` is set.
#[test]
fn helper_terminal_parent() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    // A run started with SIGINT ignored (a background job of a non-interactive shell, or
    // under nohup) passes that on to this helper, which stands for a program run from a
    // terminal, where Ctrl-C has its usual meaning.
    // SAFETY: sets the default action of one signal; no handler is involved.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let pool = Pool::builder().workers(2).build().unwrap();
    let got = pool.map(print_and_touch_the_terminal, 0..4).unwrap();
    assert_eq!(got, vec![1, 2, 3, 4]);
    println!("ALL TASKS DONE");
    let _h: Vec<_> = (0..2)
        .map(|i| pool.spawn(wait_for_ctrl_c, (dir.clone(), i)).unwrap())
        .collect();
    let pids: Vec<u32> = (0..2)
        .map(|i| {
            let f = std::path::Path::new(&dir).join(format!("task-{i}"));
            wait_for("the long tasks", HANG, || read_start_marker(&f)).0
        })
        .collect();
    println!("WAITING FOR CTRL-C {} {}", pids[0], pids[1]);
    std::io::stdout().flush().unwrap();
    sleep_forever()
}

#[test]
fn workers_are_never_stopped_by_job_control_and_ctrl_c_spares_them() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let _w = watchdog("terminal", Duration::from_secs(60));
    let dir = Scratch::new("terminal");
    let exe = std::env::current_exe().unwrap();
    let cmd = format!(
        "stty tostop; exec '{}' --exact helper_terminal_parent --nocapture --test-threads 1",
        exe.display()
    );
    let child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env(HELPER_ENV, dir.arg())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut guard = ChildGuard {
        child,
        also_kill: Vec::new(),
    };
    let mut stdin = guard.child.stdin.take().unwrap();
    let mut stdout = guard.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(seen.clone());
        }
    });
    let mut seen = String::new();
    let mut wait_text = |what: &str, limit: Duration| -> String {
        let t0 = Instant::now();
        while !seen.contains(what) {
            let left = limit.saturating_sub(t0.elapsed());
            match rx.recv_timeout(left) {
                Ok(s) => seen = s,
                Err(_) => panic!(
                    "the helper never printed {what:?} within {limit:?} (a worker stopped by \
                     job control hangs it); the terminal showed:\n{seen}"
                ),
            }
        }
        seen.clone()
    };
    let shown = wait_text("ALL TASKS DONE", Duration::from_secs(15));
    assert!(shown.contains("task 3 prints to the terminal"), "{shown}");
    let shown = wait_text("WAITING FOR CTRL-C", HANG);
    let line = shown
        .lines()
        .find_map(|l| {
            l.split_once("WAITING FOR CTRL-C ")
                .map(|(_, r)| r.trim().to_owned())
        })
        .unwrap();
    let workers: Vec<u32> = line.split(' ').map(|p| p.parse().unwrap()).collect();
    guard.also_kill = workers.clone();
    // Ctrl-C typed at the terminal.
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < HANG, "Ctrl-C did not end the helper");
        std::thread::sleep(Duration::from_millis(5));
    };
    // `script -e` reports the helper's death by SIGINT as 128 + 2.
    assert!(
        status.code() == Some(130) || status.signal().is_some(),
        "the helper should die of the Ctrl-C: {status:?}"
    );
    wait_for(
        "the workers to die with the helper",
        Duration::from_secs(2),
        || workers.iter().all(|&w| !is_alive(w)).then_some(()),
    );
    let hit = dir.files_with_prefix("sigint-");
    assert!(
        hit.is_empty(),
        "the terminal's Ctrl-C reached workers {hit:?}"
    );
}
