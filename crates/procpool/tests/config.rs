//! Invalid settings are errors a user can match (`PoolError::Config`), never silently
//! replaced; a worker that cannot start says why with the OS error code kept.

procpool::enable_test_support!();

use std::time::Duration;

use procpool::{Error, Pool, PoolError};

fn double(x: u64) -> u64 {
    x * 2
}

fn is_config<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::Pool(PoolError::Config(m))) => assert!(!m.is_empty(), "{what}"),
        other => panic!("{what}: expected PoolError::Config, got {other:?}"),
    }
}

#[test]
fn invalid_builder_settings_are_config_errors() {
    is_config(Pool::builder().chunk_size(0).build(), "chunk_size(0)");
    is_config(
        Pool::builder().timeout(Duration::ZERO).build(),
        "timeout(0)",
    );
    is_config(
        Pool::builder().handshake_timeout(Duration::ZERO).build(),
        "handshake_timeout(0)",
    );
    // A mistaken huge count is refused before any process starts or memory is taken.
    is_config(
        Pool::builder().workers(usize::MAX).build(),
        "workers(usize::MAX)",
    );
    is_config(
        Pool::builder()
            .workers(procpool_engine::MAX_WORKERS + 1)
            .build(),
        "workers(MAX_WORKERS + 1)",
    );
}

#[test]
fn invalid_per_call_settings_are_config_errors() {
    let pool = Pool::builder().workers(1).build().unwrap();
    is_config(
        pool.with_chunk_size(0).map(double, 0..10),
        "with_chunk_size(0).map",
    );
    is_config(
        pool.with_chunk_size(0).apply(double, 1),
        "with_chunk_size(0).apply",
    );
    is_config(
        pool.with_timeout(Duration::ZERO).apply(double, 1),
        "with_timeout(0).apply",
    );
    is_config(
        pool.with_timeout(Duration::ZERO).spawn(double, 1),
        "with_timeout(0).spawn",
    );
    // The lazy calls say so as their first and only item.
    let imap: Vec<_> = pool.with_chunk_size(0).imap(double, 0..3).collect();
    assert_eq!(imap.len(), 1, "imap with a chunk size of 0 must not run");
    is_config(imap.into_iter().next().unwrap(), "with_chunk_size(0).imap");
    let un: Vec<_> = pool
        .with_timeout(Duration::ZERO)
        .imap_unordered(double, 0..3)
        .collect();
    assert_eq!(un.len(), 1, "imap_unordered with a zero limit must not run");
    is_config(
        un.into_iter().next().unwrap().1,
        "with_timeout(0).imap_unordered",
    );
    // Valid settings still work.
    assert_eq!(
        pool.with_chunk_size(2).map(double, 0..3).unwrap(),
        [0, 2, 4]
    );
}

#[test]
fn a_spawn_error_keeps_the_os_error_code() {
    let r = Pool::builder()
        .workers(1)
        .executable("/nonexistent/procpool-worker")
        .build();
    match r {
        Err(Error::Pool(PoolError::Spawn(e))) => {
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
}

#[test]
fn timeouts_too_long_for_the_clock_mean_no_limit() {
    // `Duration::MAX` overflows `Instant`: it must wait as long as needed, never panic
    // (in the supervisor thread, the caller, or a one-off process's join).
    let pool = Pool::builder()
        .workers(1)
        .handshake_timeout(Duration::MAX)
        .build()
        .expect("build a pool");
    assert_eq!(pool.map(double, 0..4u64).expect("map"), vec![0, 2, 4, 6]);
    let mut h = pool.spawn(double, 21).expect("spawn");
    assert_eq!(h.join_timeout(Duration::MAX).expect("join"), 42);
    let mut p = procpool::spawn(double, 5).expect("a one-off process");
    assert_eq!(p.join_timeout(Duration::MAX).expect("join"), 10);
}
