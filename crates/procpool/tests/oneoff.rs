//! One-off processes: `procpool::spawn`, joined like threads.

procpool::enable_test_support!();

mod common;

use std::time::{Duration, Instant};

use common::TempDir;
use procpool::{Death, Error, TaskErrorKind, WaitError};

fn triple(x: u64) -> u64 {
    x * 3
}

fn whoami(_: ()) -> (u32, u32) {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() } as u32;
    (std::process::id(), ppid)
}

#[test]
fn spawn_and_join() {
    let p = procpool::spawn(triple, 14).unwrap();
    assert_eq!(p.join().unwrap(), 42);
}

#[test]
fn the_process_is_a_live_child_of_ours() {
    let p = procpool::spawn(whoami, ()).unwrap();
    let pid = p.pid();
    let me = std::process::id();
    assert_ne!(pid, me);
    // Alive (or at worst a zombie not yet reaped) and our child.
    assert!(common::exists(pid), "pid {pid} does not exist");
    if let Some((ppid, _)) = common::stat(pid) {
        assert_eq!(ppid, me, "pid {pid} is not our child");
    }
    let (child, parent) = p.join().unwrap();
    assert_eq!(child, pid, "the task ran in the process pid() names");
    assert_eq!(parent, me);
    assert!(!common::exists(pid), "pid {pid} was not reaped by join");
}

/// Waits until `release` exists (at most 30 s), then returns 9.
fn wait_for_release(release: String) -> u64 {
    common::spin_until_exists(&release, Duration::from_secs(30));
    9
}

#[test]
fn join_timeout_times_out_then_join_gives_the_value() {
    let dir = TempDir::new("oneoff-timeout");
    let release = dir.file("release");
    let mut p = procpool::spawn(wait_for_release, release.clone()).unwrap();
    let t = Instant::now();
    match p.join_timeout(Duration::from_millis(50)) {
        Err(WaitError::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!p.is_finished());
    assert!(
        common::exists(p.pid()),
        "the process still runs after a timeout"
    );
    common::write_file(&release, "go");
    assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 9);
}

#[test]
fn join_after_a_join_timeout_that_timed_out() {
    let dir = TempDir::new("oneoff-timeout-join");
    let release = dir.file("release");
    let mut p = procpool::spawn(wait_for_release, release.clone()).unwrap();
    assert!(matches!(
        p.join_timeout(Duration::from_millis(20)),
        Err(WaitError::Timeout)
    ));
    common::write_file(&release, "go");
    assert_eq!(p.join().unwrap(), 9);
}

#[test]
fn kill_then_join_reports_sigkill() {
    let dir = TempDir::new("oneoff-kill");
    let mut p = procpool::spawn(wait_for_release, dir.file("never")).unwrap();
    let pid = p.pid();
    let t = Instant::now();
    p.kill();
    match p.join() {
        Err(Error::Task(e)) => match e.kind() {
            TaskErrorKind::WorkerDied { death } => {
                assert_eq!(*death, Death::Signal(9), "{e}");
                assert_eq!(death.signal_name(), Some("SIGKILL"));
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        },
        other => panic!("expected a task error, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "kill + join took {:?}",
        t.elapsed()
    );
    assert!(!common::exists(pid), "pid {pid} was not reaped");
}

/// Writes its pid to `marker`, then waits for `release` (at most 30 s).
fn mark_and_wait(paths: (String, String)) -> u64 {
    common::write_file(&paths.0, &std::process::id().to_string());
    common::spin_until_exists(&paths.1, Duration::from_secs(30));
    9
}

#[test]
fn kill_of_a_running_task_then_join_reports_sigkill() {
    let dir = TempDir::new("oneoff-kill-running");
    let marker = dir.file("started");
    let mut p = procpool::spawn(mark_and_wait, (marker.clone(), dir.file("never"))).unwrap();
    let pid: u32 = common::wait_for_file(&marker, Duration::from_secs(20))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, p.pid());
    p.kill();
    match p.join() {
        Err(Error::Task(e)) => {
            assert_eq!(
                e.kind(),
                &TaskErrorKind::WorkerDied {
                    death: Death::Signal(libc::SIGKILL)
                },
                "{e}"
            );
            assert_eq!(e.pid(), Some(pid));
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    assert!(!common::exists(pid), "pid {pid} was not reaped");
}

fn panics(x: u32) -> u32 {
    if x > 0 {
        panic!("one-off failure number {x}");
    }
    x
}

#[test]
fn a_panic_in_a_one_off_process() {
    let p = procpool::spawn(panics, 5).unwrap();
    match p.join() {
        Err(Error::Task(e)) => match e.kind() {
            TaskErrorKind::Panic {
                message, location, ..
            } => {
                assert_eq!(message, "one-off failure number 5");
                let location = location.as_deref().expect("a panic location");
                assert!(location.contains("oneoff.rs:"), "{location}");
            }
            other => panic!("expected a panic, got {other:?}"),
        },
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[test]
fn dropping_a_running_one_off_kills_and_reaps_it() {
    let dir = TempDir::new("oneoff-drop");
    let p = procpool::spawn(wait_for_release, dir.file("never")).unwrap();
    let pid = p.pid();
    let t = Instant::now();
    drop(p);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!common::exists(pid), "pid {pid} outlived its handle");
}

fn nap_then_triple(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(150));
    x * 3
}

#[test]
fn a_one_off_process_outlives_the_thread_that_spawned_it() {
    // The kernel's parent-death signal follows the thread that started a child: a process
    // started from a thread that ends at once must still live until joined.
    for i in 0..3 {
        let p = std::thread::spawn(move || procpool::spawn(nap_then_triple, i).unwrap())
            .join()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(p.join().unwrap(), i * 3, "run {i}");
    }
}
