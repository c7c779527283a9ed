//! Fault injection: resource hygiene over many pools and many tasks.
//!
//! Creating and dropping pools leaves no descriptor, child process or shared-memory file
//! behind; `imap` over an endless input with a slow consumer holds a bounded amount of
//! work; and a soak of 100,000 tasks, some panicking and some aborting their worker,
//! gives back every index exactly once with the right kind of result.
//!
//! The tests of this file look at process-wide state (descriptors, children), so they
//! run one at a time.

procpool::enable_test_support!();

mod faults_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use faults_common::*;
use procpool::{Death, Error, Pool, TaskErrorKind};

fn shm_names() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn one_cycle() {
    let pool = Pool::builder().workers(2).build().unwrap();
    assert_eq!(pool.apply(|x: u64| x + 1, 1).unwrap(), 2);
}

#[test]
fn hygiene_500_pool_create_drop_cycles_leave_no_descriptor_child_or_shm_file() {
    let _serial = serial();
    let _w = watchdog("500 cycles", Duration::from_secs(150));
    one_cycle(); // warm-up: anything created once per process is created now
    let fds_before = open_fds();
    let shm_before = shm_names();
    let t0 = Instant::now();
    for i in 0..500 {
        one_cycle();
        if i == 249 {
            assert_eq!(open_fds(), fds_before, "descriptors after 250 cycles");
        }
    }
    eprintln!("500 pool cycles took {:?}", t0.elapsed());
    // Dropping a pool reaps its workers before it returns: nothing to wait for.
    let kids = children_of(my_pid());
    assert!(kids.is_empty(), "child processes left: {kids:?}");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    let mut new: Vec<String> = shm_names().difference(&shm_before).cloned().collect();
    if !new.is_empty() {
        // Not ours if it goes away by itself (another program on the machine).
        std::thread::sleep(Duration::from_millis(200));
        new.retain(|n| shm_names().contains(n));
    }
    assert!(new.is_empty(), "new files in /dev/shm: {new:?}");
}

/// About 20 microseconds of work; every 97th item takes 3 ms, so that later items
/// finish first and wait in the reorder buffer.
fn steady(i: u64) -> u64 {
    let t = Instant::now();
    let d = if i.is_multiple_of(97) {
        Duration::from_millis(3)
    } else {
        Duration::from_micros(20)
    };
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
    i * 2
}

#[test]
fn hygiene_imap_over_an_endless_input_with_a_slow_consumer_stays_bounded() {
    let _serial = serial();
    let _w = watchdog("endless imap", Duration::from_secs(60));
    let pool = Pool::builder().workers(2).build().unwrap();
    for chunk in [Some(1), None] {
        let mut it = match chunk {
            Some(c) => pool.with_chunk_size(c).imap(steady, 0u64..),
            None => pool.imap(steady, 0u64..),
        };
        let (mut max_in_flight, mut max_buffered, mut max_ahead) = (0, 0, 0);
        for consumed in 1..=500u64 {
            let v = it.next().unwrap().unwrap();
            assert_eq!(v, (consumed - 1) * 2, "in order");
            std::thread::sleep(Duration::from_millis(1));
            max_in_flight = max_in_flight.max(it.in_flight());
            max_buffered = max_buffered.max(it.buffered());
            max_ahead = max_ahead.max(it.pulled() - consumed);
        }
        eprintln!(
            "chunk {chunk:?}: max in flight {max_in_flight} jobs, buffered {max_buffered} \
             jobs, pulled ahead of the consumer {max_ahead} items"
        );
        // The workers could run ~100,000 items in the time the consumer takes 500: a
        // feeder that pulled as fast as they run would be far past these bounds.
        assert!(max_in_flight <= 4096, "in flight: {max_in_flight}");
        assert!(max_buffered <= 4096, "buffered: {max_buffered}");
        assert!(max_ahead <= 4096, "pulled ahead: {max_ahead}");
    }
}

const SOAK: u64 = 100_000;

fn soak_task(i: u64) -> u64 {
    if i % 300 == 150 {
        no_core_dump();
        std::process::abort();
    }
    if i % 100 == 37 {
        panic!("soak panic {i}");
    }
    i * 2
}

#[test]
fn hygiene_soak_100k_tasks_with_panics_and_aborts_returns_every_index_once() {
    let _serial = serial();
    let _w = watchdog("soak", Duration::from_secs(120));
    let pool = Pool::builder().workers(2).build().unwrap();
    let t0 = Instant::now();
    let mut seen = vec![0u8; SOAK as usize];
    let (mut oks, mut panics, mut deaths) = (0u32, 0u32, 0u32);
    for (i, r) in pool.with_chunk_size(1).imap_unordered(soak_task, 0..SOAK) {
        seen[i] += 1;
        let i = i as u64;
        match r {
            Ok(v) => {
                assert!(i % 300 != 150 && i % 100 != 37, "task {i} should fail");
                assert_eq!(v, i * 2);
                oks += 1;
            }
            Err(Error::Task(t)) => {
                assert_eq!(t.index(), i, "{t}");
                match t.kind() {
                    TaskErrorKind::Panic { message, .. } if i % 100 == 37 => {
                        assert_eq!(message, &format!("soak panic {i}"));
                        panics += 1;
                    }
                    TaskErrorKind::WorkerDied {
                        death: Death::Signal(libc::SIGABRT),
                    } if i % 300 == 150 => deaths += 1,
                    other => panic!("task {i}: wrong kind of failure {other:?}"),
                }
            }
            Err(e) => panic!("task {i}: pool error {e}"),
        }
    }
    let took = t0.elapsed();
    eprintln!("soak: {oks} ok, {panics} panics, {deaths} worker deaths in {took:?}");
    let wrong: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] != 1).take(10).collect();
    assert!(wrong.is_empty(), "indices not seen exactly once: {wrong:?}");
    assert_eq!(deaths as u64, SOAK / 300 + u64::from(SOAK % 300 > 150));
    assert_eq!(panics as u64, SOAK / 100);
    wait_pool_size(&pool, 2, &[]);
    assert!(took < Duration::from_secs(60), "the soak took {took:?}");
}

#[test]
fn hygiene_soak_100k_tasks_in_automatic_chunks_returns_every_index_once() {
    // With automatic chunking an abort takes the items sharing its chunk down with it
    // (they fail with WorkerDied too); panics stay per item; nothing is lost or doubled.
    let _serial = serial();
    let _w = watchdog("soak (chunks)", Duration::from_secs(120));
    let pool = Pool::builder().workers(2).build().unwrap();
    let t0 = Instant::now();
    let mut seen = vec![0u8; SOAK as usize];
    let mut died = vec![false; SOAK as usize];
    for (i, r) in pool.imap_unordered(soak_task, 0..SOAK) {
        seen[i] += 1;
        let i = i as u64;
        match r {
            Ok(v) => {
                assert!(i % 300 != 150 && i % 100 != 37, "task {i} should fail");
                assert_eq!(v, i * 2);
            }
            Err(Error::Task(t)) => {
                assert_eq!(t.index(), i, "{t}");
                match t.kind() {
                    TaskErrorKind::Panic { message, .. } if i % 100 == 37 => {
                        assert_eq!(message, &format!("soak panic {i}"));
                    }
                    TaskErrorKind::WorkerDied {
                        death: Death::Signal(libc::SIGABRT),
                    } => died[i as usize] = true,
                    other => panic!("task {i}: wrong kind of failure {other:?}"),
                }
            }
            Err(e) => panic!("task {i}: pool error {e}"),
        }
    }
    let took = t0.elapsed();
    let n_died = died.iter().filter(|&&d| d).count();
    eprintln!("soak in chunks: {n_died} items failed with their worker in {took:?}");
    let wrong: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] != 1).take(10).collect();
    assert!(wrong.is_empty(), "indices not seen exactly once: {wrong:?}");
    for i in (150..SOAK).step_by(300) {
        assert!(died[i as usize], "task {i} aborts its worker");
    }
    wait_pool_size(&pool, 2, &[]);
    assert!(took < Duration::from_secs(60), "the soak took {took:?}");
}
