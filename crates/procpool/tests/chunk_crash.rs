//! A crash inside an automatic chunk costs exactly one task: with default chunking, one
//! item of 400 segfaults, aborts or exits its worker. Each item appends its index to a
//! file as its last step; every item that did is delivered, only the killing item fails
//! (with its true cause), and the items not started run once (they are sent again).

procpool::enable_test_support!();

mod common;

use std::collections::HashMap;
use std::io::Write;

use common::TempDir;
use procpool::{Death, Error, Pool, TaskErrorKind};

const N: u64 = 400;
const KILLER: u64 = 300;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Kill {
    Segfault,
    Abort,
    Exit,
}

/// Runs item `i`: the killer crashes its worker the way it is told; the others append
/// their index to the file at `path` as their last step.
fn item((i, kill, path): (u64, Kill, String)) -> u64 {
    // A little work, so that chunks are sized from a real measurement.
    let mut x = i;
    for _ in 0..2000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    if i == KILLER {
        match kill {
            Kill::Segfault => {
                let p = std::ptr::without_provenance_mut::<u8>(16);
                // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
                unsafe { std::ptr::write_volatile(p, 1) };
            }
            Kill::Abort => std::process::abort(),
            Kill::Exit => std::process::exit(7),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .expect("the flag file");
    f.write_all(format!("{i}\n").as_bytes()).expect("a flag");
    std::hint::black_box(x);
    i * 2
}

fn flags(path: &std::path::Path) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *seen.entry(l.parse::<u64>().expect("an index")).or_default() += 1;
    }
    seen
}

fn one_crash(kill: Kill, death: Death, retries: u32) {
    let dir = TempDir::new("chunk-crash");
    let path = dir.path().join("flags");
    let pool = Pool::builder()
        .workers(2)
        .retries(retries)
        .build()
        .expect("a pool");
    let p = path.to_str().unwrap().to_owned();
    let input: Vec<(u64, Kill, String)> = (0..N).map(|i| (i, kill, p.clone())).collect();
    let mut got: HashMap<usize, Result<u64, Error>> = HashMap::new();
    for (i, r) in pool.imap_unordered(item, input) {
        assert!(got.insert(i, r).is_none(), "index {i} came twice");
    }
    assert_eq!(got.len(), N as usize);
    for (i, r) in &got {
        let i = *i as u64;
        if i == KILLER {
            match r {
                Err(Error::Task(t)) => {
                    assert_eq!(t.index(), KILLER, "{t}");
                    assert_eq!(t.attempts(), retries + 1, "{t}");
                    match t.kind() {
                        TaskErrorKind::WorkerDied { death: d } => assert_eq!(*d, death, "{t}"),
                        other => panic!("item {i}: expected its worker's death, got {other:?}"),
                    }
                }
                other => panic!("the killing item gave {other:?}"),
            }
        } else {
            match r {
                Ok(v) => assert_eq!(*v, i * 2, "item {i}"),
                Err(e) => panic!("item {i} failed with the killer's crash: {e}"),
            }
        }
    }
    let seen = flags(&path);
    for i in 0..N {
        let n = seen.get(&i).copied().unwrap_or(0);
        if i == KILLER {
            assert_eq!(n, 0);
        } else {
            assert_eq!(n, 1, "item {i} ran {n} times to its end");
        }
    }
    // The pool goes on.
    assert_eq!(
        pool.map(item, [(1, kill, p.clone()), (2, kill, p)])
            .unwrap(),
        vec![2, 4]
    );
}

#[test]
fn a_segfault_in_an_automatic_chunk_costs_one_task() {
    one_crash(Kill::Segfault, Death::Signal(libc::SIGSEGV), 0);
}

#[test]
fn an_abort_in_an_automatic_chunk_costs_one_task() {
    one_crash(Kill::Abort, Death::Signal(libc::SIGABRT), 0);
}

#[test]
fn an_exit_in_an_automatic_chunk_costs_one_task() {
    one_crash(Kill::Exit, Death::Exit(7), 0);
}

#[test]
fn with_retries_only_the_killing_item_runs_again() {
    one_crash(Kill::Segfault, Death::Signal(libc::SIGSEGV), 1);
}
