//! A worker the system refuses to start again is retried, never the end of the pool:
//! the workers that live keep serving, and the pool recovers when starting works again.

procpool::enable_test_support!();

mod common;

use std::time::Duration;

use common::{TempDir, wait_until};
use procpool::{Error, Pool, PoolError};

fn double(x: u64) -> u64 {
    x * 2
}

fn sigkill(pid: u32) {
    // SAFETY: kill has no memory effects; the pid is one of this test's own workers.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}");
}

#[test]
fn refused_worker_starts_are_retried_and_the_pool_recovers() {
    // Workers start from a link to this test binary; while the link is missing, every
    // start is refused by the system (ENOENT), as a process limit would refuse it (EAGAIN).
    let dir = TempDir::new("respawn");
    let link = dir.path().join("worker-exe");
    let me = std::env::current_exe().unwrap();
    std::os::unix::fs::symlink(&me, &link).unwrap();
    let pool = Pool::builder()
        .workers(2)
        .executable(&link)
        .build()
        .unwrap();
    assert_eq!(pool.map(double, 0..10u64).unwrap().len(), 10);
    wait_until("both workers are up", Duration::from_secs(10), || {
        pool.worker_pids().len() == 2
    });
    let pids = pool.worker_pids();
    std::fs::remove_file(&link).unwrap();
    sigkill(pids[0]);
    wait_until("the killed worker is gone", Duration::from_secs(10), || {
        !pool.worker_pids().contains(&pids[0])
    });
    // Many refused starts later, the live worker still serves every call.
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(60));
        let out = pool
            .map(double, 0..100u64)
            .unwrap_or_else(|e| panic!("round {round}: a call failed while a worker lives: {e}"));
        assert_eq!(out, (0..100).map(double).collect::<Vec<_>>());
    }
    assert_eq!(
        pool.worker_pids(),
        vec![pids[1]],
        "no worker could have started"
    );
    // Starting works again: the pool is whole again within the longest wait (1 s).
    std::os::unix::fs::symlink(&me, &link).unwrap();
    wait_until("a replacement starts", Duration::from_secs(10), || {
        pool.worker_pids().len() == 2
    });
    let out = pool.with_chunk_size(1).map(double, 0..200u64).unwrap();
    assert_eq!(out.len(), 200);
    pool.join();
}

#[test]
fn a_pool_with_no_worker_alive_gives_up_after_a_while_and_says_so() {
    let dir = TempDir::new("respawn-none");
    let link = dir.path().join("worker-exe");
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &link).unwrap();
    let pool = Pool::builder()
        .workers(1)
        .executable(&link)
        .build()
        .unwrap();
    wait_until("the worker is up", Duration::from_secs(10), || {
        pool.worker_pids().len() == 1
    });
    std::fs::remove_file(&link).unwrap();
    sigkill(pool.worker_pids()[0]);
    // Queued work waits while starts are retried, then fails with the reason.
    let t0 = std::time::Instant::now();
    let e = pool.apply(double, 1).expect_err("no worker can run it");
    let waited = t0.elapsed();
    let Error::Pool(p @ PoolError::NoWorker { .. }) = &e else {
        panic!("expected NoWorker, got {e}");
    };
    let text = p.to_string();
    assert!(text.contains("no worker was alive"), "{text}");
    assert!(text.contains("No such file"), "{text}");
    assert!(
        waited >= Duration::from_secs(5),
        "gave up after only {waited:?}"
    );
    assert!(matches!(
        pool.apply(double, 1),
        Err(Error::Pool(PoolError::NoWorker { .. }))
    ));
}
