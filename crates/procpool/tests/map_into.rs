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
    let pool = Pool::builder()
        .workers(2)
        .retries(1)
        .build()
        .expect("a pool");
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

    let strict = Pool::builder().workers(2).build().expect("a pool");
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

    let pool = Pool::builder()
        .workers(2)
        .retries(1)
        .build()
        .expect("a pool");
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

    let strict = Pool::builder().workers(2).build().expect("a pool");
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
