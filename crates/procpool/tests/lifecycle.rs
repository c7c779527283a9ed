//! The life of workers and pools: initializers, recycling, retries after a worker's
//! death, the binary fingerprint check, nested pools, dropping, closing and joining.

procpool::enable_test_support!();

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;
use procpool::{Death, Error, HandshakeError, Pool, PoolError, TaskErrorKind};

fn double(x: u64) -> u64 {
    x * 2
}

static INIT_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Counts its runs in this process and appends this process's pid to `dir/<pid>`.
fn init_worker(dir: String) {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
    use std::io::Write;
    let pid = std::process::id();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/{pid}"))
        .expect("open the initializer's file");
    writeln!(f, "{pid}").expect("write the initializer's file");
}

fn pid_and_init_runs(_: u64) -> (u32, usize) {
    (std::process::id(), INIT_RUNS.load(Ordering::SeqCst))
}

#[test]
fn the_initializer_runs_once_in_each_worker() {
    let dir = TempDir::new("init");
    let d = dir.path().to_str().unwrap().to_owned();
    let pool = Pool::builder()
        .workers(2)
        .initializer(init_worker, d)
        .build()
        .unwrap();
    let workers = pool.worker_pids();
    assert_eq!(workers.len(), 2);
    let mut results = pool
        .with_chunk_size(1)
        .map(pid_and_init_runs, 0..300)
        .unwrap();
    results.extend(pool.map(pid_and_init_runs, 0..3000).unwrap());
    for h in (0..20).map(|i| pool.spawn(pid_and_init_runs, i).unwrap()) {
        results.push(h.join().unwrap());
    }
    let mut pids = HashSet::new();
    for (pid, runs) in &results {
        assert_eq!(*runs, 1, "worker {pid} ran the initializer {runs} times");
        assert!(workers.contains(pid), "{pid} is not one of {workers:?}");
        pids.insert(*pid);
    }
    assert_eq!(
        INIT_RUNS.load(Ordering::SeqCst),
        0,
        "the initializer ran in the parent"
    );
    // Every worker ran it, once. A worker that took no task (the other took all, under
    // load) may still be in its initializer: it has 10 s to write its file.
    let mut expected: Vec<String> = workers.iter().map(u32::to_string).collect();
    expected.sort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let files = loop {
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let written = |pid: &String| {
            std::fs::read_to_string(dir.path().join(pid)).is_ok_and(|c| c.ends_with('\n'))
        };
        if (files == expected && expected.iter().all(written))
            || std::time::Instant::now() > deadline
        {
            break files;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(files, expected, "one file per worker");
    for pid in &workers {
        let content = std::fs::read_to_string(dir.path().join(pid.to_string())).unwrap();
        assert_eq!(
            content,
            format!("{pid}\n"),
            "worker {pid} ran the initializer once"
        );
    }
}

fn my_pid(_: u64) -> u32 {
    std::process::id()
}

fn check_recycling(pids: &[u32], limit: usize) {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for p in pids {
        *counts.entry(*p).or_default() += 1;
    }
    for (pid, n) in &counts {
        assert!(
            *n <= limit,
            "worker {pid} ran {n} tasks, over the limit of {limit}: {counts:?}"
        );
    }
    assert!(
        counts.len() > 2,
        "only {} distinct workers: {counts:?}",
        counts.len()
    );
}

#[test]
fn recycling_replaces_workers_after_n_tasks() {
    let pool = Pool::builder().workers(2).recycle_after(5).build().unwrap();
    let pids = pool.map(my_pid, 0..40).unwrap();
    assert_eq!(pids.len(), 40);
    check_recycling(&pids, 5);
    common::wait_until("two workers are live", Duration::from_secs(20), || {
        pool.worker_pids().len() == 2
    });
}

#[test]
fn recycling_with_chunk_size_one() {
    let pool = Pool::builder().workers(2).recycle_after(5).build().unwrap();
    let pids = pool.with_chunk_size(1).map(my_pid, 0..40).unwrap();
    check_recycling(&pids, 5);
    let mut spawned = Vec::new();
    for h in (0..20).map(|i| pool.spawn(my_pid, i).unwrap()) {
        spawned.push(h.join().unwrap());
    }
    check_recycling(&spawned, 5);
}

/// The first attempt (no marker yet) writes its pid to `marker` and kills its own
/// worker; later attempts return their pid.
fn die_once(marker: String) -> u32 {
    if !Path::new(&marker).exists() {
        common::write_file(&marker, &std::process::id().to_string());
        // SAFETY: kill(2) on our own pid: this worker dies here, on purpose.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(30));
    }
    std::process::id()
}

fn poison(_: u64) -> u64 {
    std::process::abort()
}

#[test]
fn retries_rerun_a_task_whose_worker_died() {
    let dir = TempDir::new("retries");
    let pool = Pool::builder().workers(2).retries(2).build().unwrap();
    let marker = dir.file("first-attempt");
    let pid = pool.apply(die_once, marker.clone()).unwrap();
    let first: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, first, "the retry ran on another worker");

    let before = pool.worker_pids();
    match pool.apply(poison, 1) {
        Err(Error::Task(t)) => {
            assert_eq!(
                t.kind(),
                &TaskErrorKind::WorkerDied {
                    death: Death::Signal(libc::SIGABRT)
                },
                "{t}"
            );
            assert_eq!(t.attempts(), 3, "{t}");
        }
        other => panic!("expected the poison pill to fail, got {other:?}"),
    }
    common::wait_until("two live workers", Duration::from_secs(20), || {
        pool.worker_pids().len() == 2
    });
    assert_ne!(
        pool.worker_pids(),
        before,
        "workers killed by the poison pill were replaced"
    );
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    assert_eq!(
        pool.map(double, 0..100).unwrap(),
        (0..100).map(double).collect::<Vec<_>>()
    );
}

#[test]
fn a_different_executable_is_refused_at_the_handshake() {
    let dir = TempDir::new("fingerprint");
    let exe = std::env::current_exe().unwrap();
    let copy = dir.path().join("copy-of-the-test-binary");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A child forked by another test between the copy's open and close may hold it open
    // for writing a moment longer (ETXTBSY): try again then.
    let mut attempts = 0;
    let r = loop {
        attempts += 1;
        let r = Pool::builder().workers(2).executable(&copy).build();
        match &r {
            Err(Error::Pool(PoolError::Spawn(e)))
                if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break r,
        }
    };
    match r {
        Err(Error::Pool(PoolError::Handshake {
            reason: HandshakeError::BinaryMismatch { parent, worker },
            ..
        })) => assert_ne!(parent, worker),
        other => panic!("expected a binary mismatch, got {other:?}"),
    }
    // The same executable is accepted.
    let pool = Pool::builder().workers(1).executable(&exe).build().unwrap();
    assert_eq!(pool.apply(double, 1).unwrap(), 2);
}

fn nested(n: u64) -> (u32, Vec<u64>) {
    let inner = Pool::builder()
        .workers(1)
        .build()
        .expect("a pool inside a task");
    let v = inner.map(double, 0..n).expect("a map inside a task");
    let pids = inner.worker_pids();
    (pids[0], v)
}

#[test]
fn a_task_can_run_a_pool_of_its_own() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let outer = pool.worker_pids();
    let results = pool.map(nested, [10, 100]).unwrap();
    for ((inner_pid, v), n) in results.into_iter().zip([10u64, 100]) {
        assert_eq!(v, (0..n).map(double).collect::<Vec<_>>());
        assert!(!outer.contains(&inner_pid));
        assert!(
            !common::exists(inner_pid),
            "the inner pool's worker was reaped"
        );
    }
}

fn block(path: String) -> u32 {
    common::write_file(&path, &std::process::id().to_string());
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

#[test]
fn dropping_a_busy_pool_is_prompt_and_leaves_no_process() {
    let dir = TempDir::new("drop");
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    for p in &pids {
        assert_eq!(common::stat(*p).map(|s| s.0), Some(std::process::id()));
    }
    let handles: Vec<_> = (0..2)
        .map(|k| pool.spawn(block, dir.file(&format!("busy{k}"))).unwrap())
        .collect();
    let queued = pool.spawn(double, 5).unwrap();
    for k in 0..2 {
        common::wait_for_file(&dir.file(&format!("busy{k}")), Duration::from_secs(20));
    }
    let t = Instant::now();
    drop(pool);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "dropping a busy pool took {took:?}"
    );
    for p in &pids {
        assert!(
            !common::exists(*p),
            "worker {p} still exists after the drop (state {:?})",
            common::stat(*p)
        );
    }
    let children = common::children();
    for p in &pids {
        assert!(!children.contains(p), "worker {p} is still our child");
    }
    for h in handles {
        match h.join() {
            Err(Error::Task(t)) => assert_eq!(t.kind(), &TaskErrorKind::Terminated, "{t}"),
            other => panic!("expected Terminated, got {other:?}"),
        }
    }
    match queued.join() {
        Err(Error::Task(t)) => assert_eq!(t.kind(), &TaskErrorKind::Terminated, "{t}"),
        other => panic!("expected Terminated, got {other:?}"),
    }
}

fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(150));
    x * 2
}

#[test]
fn close_refuses_work_and_join_waits_for_spawned_tasks() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = pool.worker_pids();
    let handles: Vec<_> = (0..6)
        .map(|i| pool.spawn(slow_double, i).unwrap())
        .collect();
    pool.close();
    match pool.map(double, 0..10) {
        Err(Error::Pool(PoolError::Closed)) => {}
        other => panic!("expected PoolError::Closed, got {other:?}"),
    }
    match pool.spawn(double, 1) {
        Err(Error::Pool(PoolError::Closed)) => {}
        other => panic!("expected PoolError::Closed, got {other:?}"),
    }
    match pool.apply(double, 1) {
        Err(Error::Pool(PoolError::Closed)) => {}
        other => panic!("expected PoolError::Closed, got {other:?}"),
    }
    pool.join();
    for h in &handles {
        assert!(
            h.is_finished(),
            "join returned before a queued task finished"
        );
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i as u64 * 2);
    }
    for p in &pids {
        assert!(!common::exists(*p), "worker {p} was not reaped by join");
    }
}

fn my_comm(_: ()) -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn workers_carry_the_programs_name() {
    // `ps` and `pgrep <program>` find workers under the program's name, not `exe`, with
    // a worker mark where the kernel's 15 bytes leave room.
    let mine = my_comm(());
    let named = |w: String| {
        let ok = w == mine || w == format!("{mine}-worker") || w == format!("{mine}-w");
        assert!(ok, "worker named {w:?}, program {mine:?}");
    };
    let pool = Pool::builder().workers(1).build().unwrap();
    named(pool.apply(my_comm, ()).unwrap());
    named(procpool::spawn(my_comm, ()).unwrap().join().unwrap());
}
