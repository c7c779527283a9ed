//! The parent under an address-space limit (`ulimit -v`): a pool of many workers fits,
//! because a worker's data region is mapped in the parent only as far as it is used;
//! a large result is held once (no copy in the supervisor or the front), and one the
//! parent cannot allocate fails its task instead of aborting the process.
//!
//! The limit is set in a child process (this test binary run again with a flag), so it
//! binds nothing else.

procpool::enable_test_support!();

use std::process::Command;

use procpool::{Error, Pool, TaskErrorKind};

/// Set in the child that runs under the limit.
const CHILD: &str = "PROCPOOL_TEST_ADDRESS_SPACE_CHILD";
/// The address-space limit: 1.5 GiB.
const LIMIT: u64 = 3 << 29;
const WORKERS: usize = 24;

fn len(v: Vec<u8>) -> usize {
    v.len()
}

fn set_address_space_limit(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct it is given and touches no other memory.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Runs `test` again in a child process with [`CHILD`] set; checks that it passed.
fn run_in_child(test: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child under `ulimit -v` failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn many_workers_fit_under_an_address_space_limit() {
    if std::env::var_os(CHILD).is_none() {
        return run_in_child("many_workers_fit_under_an_address_space_limit");
    }
    set_address_space_limit(LIMIT);
    let pool = Pool::builder()
        .workers(WORKERS)
        .build()
        .unwrap_or_else(|e| panic!("{WORKERS} workers under a 1.5 GiB limit: {e}"));
    // Large arguments go through the workers' data regions.
    let lens = pool
        .with_chunk_size(1)
        .map(len, (0..2 * WORKERS).map(|_| vec![7u8; 1 << 20]))
        .unwrap();
    assert_eq!(lens, vec![1 << 20; 2 * WORKERS]);
    assert_eq!(pool.worker_pids().len(), WORKERS, "every worker started");
    pool.join();
}

/// `n` bytes, marked at both ends (a result handed over at a wrong offset shows).
fn bytes(n: usize) -> Vec<u8> {
    let mut v = vec![1u8; n];
    v[0] = 7;
    v[n - 1] = 9;
    v
}

fn check_marks(v: &[u8], n: usize) {
    assert_eq!(v.len(), n);
    assert_eq!((v[0], v[1], v[n - 2], v[n - 1]), (7, 1, 1, 9));
}

/// This process's address space in bytes (`VmSize`).
fn address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn a_large_result_is_held_once_and_one_that_cannot_fit_fails_its_task() {
    if std::env::var_os(CHILD).is_none() {
        return run_in_child("a_large_result_is_held_once_and_one_that_cannot_fit_fails_its_task");
    }
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.apply(bytes, 10).unwrap().len(), 10);
    // The limit binds the parent only (its worker started before it): 600 MiB more than
    // it uses now.
    set_address_space_limit(address_space() + (600 << 20));
    // A result of 400 MiB is held once: received into a buffer that becomes the
    // result itself (a copy in the supervisor and one in the front would need 1.2 GiB).
    check_marks(&pool.apply(bytes, 400 << 20).unwrap(), 400 << 20);
    // One of 800 MiB cannot fit: its task fails, the process lives.
    match pool.apply(bytes, 800 << 20) {
        Err(Error::Task(e)) if matches!(e.kind(), TaskErrorKind::OutOfMemory { .. }) => {
            let text = e.to_string();
            assert!(text.contains("could not allocate"), "{text}");
        }
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(v) => panic!(
            "a result of {} bytes fitted: the test needs a lower limit",
            v.len()
        ),
    }
    // The pool goes on.
    check_marks(&pool.apply(bytes, 1000).unwrap(), 1000);
    check_marks(&pool.apply(bytes, 3 << 20).unwrap(), 3 << 20);
    pool.join();
}

#[test]
fn a_one_off_result_that_cannot_fit_fails_its_join_not_the_process() {
    if std::env::var_os(CHILD).is_none() {
        return run_in_child("a_one_off_result_that_cannot_fit_fails_its_join_not_the_process");
    }
    // Started before the limit, so the process itself may build its result.
    let p = procpool::spawn(bytes, 800 << 20).unwrap();
    set_address_space_limit(address_space() + (600 << 20));
    match p.join() {
        Err(Error::Task(e)) if matches!(e.kind(), TaskErrorKind::OutOfMemory { .. }) => {}
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(v) => panic!(
            "a result of {} bytes fitted: the test needs a lower limit",
            v.len()
        ),
    }
}
