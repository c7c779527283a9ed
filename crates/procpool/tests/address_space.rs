//! The parent's address space per worker: a pool of many workers fits under an
//! address-space limit (`ulimit -v`), because a worker's data region is mapped in the
//! parent only as far as it is used.
//!
//! The limit is set in a child process (this test binary run again with a flag), so it
//! binds nothing else.

procpool::enable_test_support!();

use std::process::Command;

use procpool::Pool;

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
