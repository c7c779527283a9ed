//! `map` decodes each finished chunk that comes next in input order straight into the
//! vector it returns (and faults a large vector's pages in on a helper thread). A worker
//! SIGKILLed in the middle of a chunk must still cost that one item only, on the path of
//! packed numbers and on the path of serde records: with a retry, the map returns every
//! result, right and in order, each item having run to its end once; without, it fails
//! with the killing item's death, at its index.

procpool::enable_test_support!();

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use common::TempDir;
use procpool::{Death, Error, Pool, TaskErrorKind};

/// The marker the item `i` creates the first time it runs, before its worker is killed,
/// in the temporary directory, named after the test process (the workers' parent).
fn marker(parent: u32, i: u64) -> PathBuf {
    std::env::temp_dir().join(format!("procpool-map-into-{parent}-{i}"))
}

/// SIGKILLs this worker the first time item `i` runs (the marker did not exist yet).
fn die_once(i: u64) {
    let parent = std::os::unix::process::parent_id();
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker(parent, i))
        .is_ok()
    {
        // SAFETY: a signal to this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// A pool of two workers that runs again, `retries` times, an item whose worker died.
fn two_workers(retries: u32) -> Pool {
    Pool::builder()
        .workers(2)
        .retries(retries)
        .build()
        .expect("a pool")
}

/// Items of the plain test whose worker dies the first time they run.
const PLAIN_KILLER_RETRY: u64 = 2_500_123;
const PLAIN_KILLER_FAIL: u64 = 1_700_321;

fn double_or_die(x: u64) -> u64 {
    if x == PLAIN_KILLER_RETRY || x == PLAIN_KILLER_FAIL {
        die_once(x);
    }
    x * 2
}

/// A record of the serde test.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Rec {
    id: u64,
    name: String,
    values: Vec<f64>,
    flags: String,
    killer: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sum {
    id: u64,
    label: String,
    total: f64,
}

fn summarize(r: Rec) -> Sum {
    // A little work, so that chunks are sized from a real measurement.
    let mut x = r.id;
    for _ in 0..500 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(x);
    if r.id == r.killer {
        die_once(r.id);
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&r.flags)
        .expect("the flag file");
    f.write_all(format!("{}\n", r.id).as_bytes())
        .expect("a flag");
    Sum {
        id: r.id,
        label: format!("{}!", r.name),
        total: r.values.iter().sum(),
    }
}

fn records(n: u64, flags: &str, killer: u64) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            id: i,
            name: format!("rec-{i}"),
            values: (0..4).map(|k| (i * 4 + k) as f64).collect(),
            flags: flags.to_owned(),
            killer,
        })
        .collect()
}

fn flags(path: &std::path::Path) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *seen.entry(l.parse::<u64>().expect("an index")).or_default() += 1;
    }
    seen
}

fn assert_death_at(r: Result<impl std::fmt::Debug, Error>, index: u64) {
    match r {
        Err(Error::Task(t)) => {
            assert_eq!(t.index(), index, "{t}");
            match t.kind() {
                TaskErrorKind::WorkerDied { death } => {
                    assert_eq!(*death, Death::Signal(libc::SIGKILL), "{t}")
                }
                other => panic!("expected the worker's death, got {other:?}"),
            }
        }
        other => panic!("expected item {index} to fail, got {other:?}"),
    }
}

#[test]
fn plain_numbers_a_worker_killed_mid_chunk_costs_one_item() {
    // 3 M results: 24 MiB, enough for the helper that faults the vector in.
    let n = 3_000_000u64;
    let me = std::process::id();
    let pool = two_workers(1);
    let out = pool
        .map(double_or_die, 0..n)
        .expect("the map, with a retry");
    // Both items killed their worker once, and ran again.
    for k in [PLAIN_KILLER_RETRY, PLAIN_KILLER_FAIL] {
        assert!(marker(me, k).exists(), "item {k} never ran");
        std::fs::remove_file(marker(me, k)).expect("the marker");
    }
    assert_eq!(out.len() as u64, n);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 2 * i as u64, "item {i}");
    }

    let strict = two_workers(0);
    let r = strict.map(double_or_die, 0..n);
    let died = marker(me, PLAIN_KILLER_FAIL).exists();
    for k in [PLAIN_KILLER_RETRY, PLAIN_KILLER_FAIL] {
        let _ = std::fs::remove_file(marker(me, k));
    }
    assert!(died, "the killing item never ran");
    // The first failure in input order.
    assert_death_at(r, PLAIN_KILLER_FAIL);
    // The pool goes on, on the same path.
    let again = strict.map(double_or_die, 0..100_000).expect("a map after");
    assert!(again.iter().enumerate().all(|(i, v)| *v == 2 * i as u64));
}

#[test]
fn serde_records_a_worker_killed_mid_chunk_costs_one_item() {
    let n = 3_000u64;
    let killer = 2_111u64;
    let me = std::process::id();
    let dir = TempDir::new("map-into");
    let path = dir.path().join("flags");
    let p = path.to_str().unwrap().to_owned();
    let input = records(n, &p, killer);
    let expected: Vec<Sum> = input
        .iter()
        .map(|r| Sum {
            id: r.id,
            label: format!("{}!", r.name),
            total: r.values.iter().sum(),
        })
        .collect();

    let pool = two_workers(1);
    let out = pool
        .map(summarize, input.clone())
        .expect("the map, with a retry");
    let died = marker(me, killer).exists();
    let _ = std::fs::remove_file(marker(me, killer));
    assert!(died, "the killing item never ran");
    assert_eq!(out, expected);
    let seen = flags(&path);
    for i in 0..n {
        assert_eq!(
            seen.get(&i).copied().unwrap_or(0),
            1,
            "item {i} ran to its end"
        );
    }

    let strict = two_workers(0);
    let other = killer + 7;
    let r = strict.map(summarize, records(n, &p, other));
    let died = marker(me, other).exists();
    let _ = std::fs::remove_file(marker(me, other));
    assert!(died, "the killing item never ran");
    assert_death_at(r, other);
    let calm = records(n, &p, u64::MAX);
    let again = strict.map(summarize, calm).expect("a map after");
    assert_eq!(again, expected);
}

fn triple(x: u64) -> u64 {
    x * 3
}

fn tagged(x: u32) -> (u32, u64) {
    (x, u64::from(x) << 20)
}

/// A result of about 600 KiB: two make a chunk's answer too large for the results ring,
/// which then comes through the socket (the other copy into a reused buffer).
fn blob(x: u32) -> (u32, Vec<u8>) {
    (x, vec![x as u8; 600 * 1024 + x as usize])
}

/// Result buffers go back to a process-wide store once decoded and are reused for the
/// next results: maps on two pools from four threads at once, of packed numbers, of
/// encoded tuples and of results through the socket, with one pool's workers SIGKILLed
/// from outside meanwhile, must each
/// get their own values and no other's (a buffer handed out twice, or not cleared,
/// would show here as a wrong value or a wrong length).
#[test]
fn reused_result_buffers_never_mix_calls() {
    let (a, b) = (two_workers(0), two_workers(3));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(40));
                if let Some(pid) = b.worker_pids().first() {
                    // SAFETY: a signal to one of this test's workers.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    kills += 1;
                }
            }
            kills
        });
        // Stops the killer however the scope ends (a failed assertion included).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stopper = Stop(&stop);
        let runs: Vec<_> = (0..4u64)
            .map(|t| {
                let (a, b) = (&a, &b);
                s.spawn(move || {
                    for round in 0..4u64 {
                        let n = 400_000 + t * 10_007 + round * 77;
                        if t % 2 == 0 {
                            let out = a.map(double_or_die, 0..n).expect("map on a");
                            assert_eq!(out.len() as u64, n);
                            assert!(out.iter().enumerate().all(|(i, v)| *v == 2 * i as u64));
                        } else {
                            let m = n as u32 / 2;
                            let out = b.map(tagged, 0..m).expect("map on b, with retries");
                            assert_eq!(out.len() as u32, m);
                            assert!(out.iter().enumerate().all(|(i, v)| *v == tagged(i as u32)));
                            let out = a.map(triple, 0..n).expect("map on a");
                            assert!(out.iter().enumerate().all(|(i, v)| *v == 3 * i as u64));
                            let out = a.with_chunk_size(2).map(blob, 0..12).expect("blobs");
                            assert_eq!(out.len(), 12);
                            assert!(out.iter().enumerate().all(|(i, v)| *v == blob(i as u32)));
                        }
                    }
                })
            })
            .collect();
        let failed = runs
            .into_iter()
            .map(|r| r.join())
            .filter(Result::is_err)
            .count();
        drop(stopper);
        let kills = killer.join().expect("the killer");
        assert_eq!(failed, 0, "a mapping thread failed");
        assert!(kills > 0, "no worker was killed");
    });
}
