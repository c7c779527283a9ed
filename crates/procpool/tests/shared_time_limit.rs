//! A `Shared` value whose decode in a worker outlasts the task's time limit: decoding is
//! not the task's time (the parent counts it apart, up to an allowance of its own), and a
//! task that really loops, or claims to be decoding, still dies in bounded time.

mod common;

procpool::enable_test_support!();

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use procpool::{Error, Pool, Shared, TaskErrorKind};
use serde::{Deserialize, Deserializer, Serialize};

const LIMIT: Duration = Duration::from_millis(40);
/// A hard limit against hangs (each test takes a few seconds; more on a loaded machine).
const HANG: Duration = Duration::from_secs(60);

fn lookup((table, i): (Shared<Vec<u64>>, usize)) -> u64 {
    table[i * 1000]
}

/// 8 Mi small numbers: 8 MiB encoded, 64 MiB decoded, a decode of several times the
/// limit (about 50 ms in a release build, 700 ms in a debug one).
fn big_table() -> Shared<Vec<u64>> {
    Shared::new((0..8u64 << 20).map(|i| i % 100).collect()).unwrap()
}

#[test]
fn a_decode_longer_than_the_limit_does_not_fail_the_tasks() {
    common::watchdog(HANG, || {
        let table = big_table();
        let pool = Pool::builder().workers(2).timeout(LIMIT).build().unwrap();
        let t0 = Instant::now();
        let got = pool
            .with_chunk_size(1)
            .map(lookup, (0..6).map(|i| (table.clone(), i)))
            .unwrap_or_else(|e| panic!("a task failed: {e}"));
        assert_eq!(
            got,
            (0..6).map(|i| (i * 1000 % 100) as u64).collect::<Vec<_>>()
        );
        eprintln!(
            "6 tasks, each worker decoding 64 MiB once: {:?}",
            t0.elapsed()
        );
        // Decoded once per worker, then cached: more tasks are quick and fine too.
        let more = pool
            .map(lookup, (0..100).map(|i| (table.clone(), i)))
            .unwrap();
        assert_eq!(more.len(), 100);
    });
}

/// Spins for ever once it has the table.
fn spin((table, _): (Shared<Vec<u64>>, usize)) -> u64 {
    let mut x = table[1];
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

#[test]
fn a_task_that_loops_after_the_decode_still_dies_at_its_limit() {
    common::watchdog(HANG, || {
        let table = big_table();
        let allowance = Duration::from_secs(30);
        let pool = Pool::builder()
            .workers(1)
            .timeout(LIMIT)
            .shared_decode_timeout(allowance)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let r = pool.apply(spin, (table.clone(), 0));
        let took = t0.elapsed();
        let Err(Error::Task(e)) = r else {
            panic!("a spinning task returned: {r:?}")
        };
        let TaskErrorKind::TimedOut { limit, ran } = e.kind() else {
            panic!("not a timeout: {e}")
        };
        assert_eq!(*limit, LIMIT);
        // Its own time (the decode not counted) reached the limit, no more than a
        // loaded machine's lateness past it.
        assert!(
            *ran >= LIMIT && *ran < LIMIT + Duration::from_secs(2),
            "{e}"
        );
        assert!(took < allowance, "killed only after {took:?}");
    });
}

/// A value whose decode takes `0` milliseconds (it sleeps): a stand-in for a huge table.
#[derive(Debug, Serialize)]
struct SlowToDecode(u64);

impl<'de> Deserialize<'de> for SlowToDecode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = u64::deserialize(d)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(SlowToDecode(ms))
    }
}

fn slow(s: Shared<SlowToDecode>) -> u64 {
    s.0
}

#[test]
fn a_decode_past_its_allowance_fails_with_an_error_naming_the_value() {
    common::watchdog(HANG, || {
        let allowance = Duration::from_millis(300);
        let pool = Pool::builder()
            .workers(1)
            .timeout(LIMIT)
            .shared_decode_timeout(allowance)
            .build()
            .unwrap();
        // Within the allowance, though far past the limit: fine.
        let quick = Shared::new(SlowToDecode(150)).unwrap();
        assert_eq!(pool.apply(slow, quick).unwrap(), 150);
        // Past the allowance: the error says which value, how large, and what to change.
        let t0 = Instant::now();
        let r = pool.apply(slow, Shared::new(SlowToDecode(5000)).unwrap());
        let took = t0.elapsed();
        let Err(Error::Task(e)) = r else {
            panic!("a decode of 5 s under a 300 ms allowance succeeded: {r:?}")
        };
        let TaskErrorKind::PreparationTimedOut {
            what,
            allowance: a,
            spent,
        } = e.kind()
        else {
            panic!("not a preparation timeout: {e}")
        };
        assert_eq!(*a, allowance);
        assert!(*spent > allowance, "{e}");
        assert!(
            what.contains("SlowToDecode") && what.contains("B (encoded)"),
            "{what}"
        );
        let text = e.to_string();
        assert!(text.contains("shared_decode_timeout"), "{text}");
        assert!(took < Duration::from_secs(3), "killed only after {took:?}");
        // The pool goes on.
        assert_eq!(
            pool.apply(slow, Shared::new(SlowToDecode(1)).unwrap())
                .unwrap(),
            1
        );
    });
}

/// Claims to be decoding for ever, through the engine's own marker (it carries a shared
/// value: a job without one has nothing to prepare and gets no allowance at all).
fn claims_to_decode(_: Shared<u32>) -> u32 {
    let _p = procpool_engine::preparing("nothing at all");
    loop {
        std::hint::spin_loop();
    }
}

/// Writes "preparing since boot" straight into its worker's control block, then spins.
fn forges_the_marks(_: Shared<u32>) -> u32 {
    let ctl = common::control_block();
    ctl[64].store(1, Ordering::Release); // preparing since (almost) boot
    ctl[65].store(u64::MAX / 2, Ordering::Release); // and plenty before
    loop {
        std::hint::spin_loop();
    }
}

#[test]
fn a_task_cannot_stretch_its_limit_past_the_allowance_by_claiming_to_decode() {
    common::watchdog(HANG, || {
        let allowance = Duration::from_millis(300);
        let pool = Pool::builder()
            .workers(1)
            .timeout(LIMIT)
            .shared_decode_timeout(allowance)
            .build()
            .unwrap();
        for f in [claims_to_decode as fn(Shared<u32>) -> u32, forges_the_marks] {
            let t0 = Instant::now();
            let r = pool.apply(f, Shared::new(0).unwrap());
            let took = t0.elapsed();
            let Err(Error::Task(e)) = r else {
                panic!("a spinning task returned: {r:?}")
            };
            assert!(
                matches!(e.kind(), TaskErrorKind::PreparationTimedOut { .. }),
                "{e}"
            );
            // At the latest limit + allowance (plus a loaded machine's lateness).
            assert!(
                took >= allowance && took < LIMIT + allowance + Duration::from_secs(2),
                "killed after {took:?}"
            );
        }
        // Without an allowance, claims count for nothing: the plain limit.
        let strict = Pool::builder()
            .workers(1)
            .timeout(LIMIT)
            .shared_decode_timeout(Duration::ZERO)
            .build()
            .unwrap();
        let r = strict.apply(forges_the_marks, Shared::new(0).unwrap());
        assert!(
            matches!(&r, Err(Error::Task(e)) if matches!(e.kind(), TaskErrorKind::TimedOut { .. })),
            "{r:?}"
        );
    });
}
