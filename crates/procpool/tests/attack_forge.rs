//! Hostile tasks that scribble on their worker's control block (claim word, stop flag,
//! ring positions, start words) while other jobs are queued behind them on the same
//! worker. The parent must never hang or panic, an innocent item must never run twice,
//! and innocent items must not be lost.

procpool::enable_test_support!();

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{append, control_block, watchdog};
use procpool::{Error, Pool, TaskErrorKind};

const STARTED_SEQ: usize = 0;
const STARTED_AT: usize = 1;
const RING_WRITE: usize = 2;
const RING_READ: usize = 3;
const SLEEPING: usize = 4;
const CLAIM: usize = 5;

/// What item `forger` does to the control block.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
enum Forgery {
    /// Claim word: the job after the running one (as if it had been claimed too).
    ClaimAhead(u64),
    /// Claim word: the job before the running one.
    ClaimBehind,
    /// Claim word: 0.
    ClaimZero,
    /// The stop flag with the current job.
    Stop,
    /// Ring positions far ahead.
    Ring,
    /// The read position one back.
    RingReadBack,
    /// The sleeping word, then start words, repeatedly.
    Sleeping,
}

/// Item `i` logs itself; the forger scribbles and then sleeps 80 ms (so that the other
/// worker goes idle and takes its queue back), scribbling again as it goes.
fn item((path, i, forger, how): (String, u64, u64, Forgery)) -> u64 {
    if i == forger {
        let ctl = control_block();
        let me = ctl[STARTED_SEQ].load(SeqCst);
        let scribble = || match how {
            Forgery::ClaimAhead(k) => ctl[CLAIM].store(me + k, SeqCst),
            Forgery::ClaimBehind => ctl[CLAIM].store(me.saturating_sub(1), SeqCst),
            Forgery::ClaimZero => ctl[CLAIM].store(0, SeqCst),
            Forgery::Stop => ctl[CLAIM].store(me | 1 << 63, SeqCst),
            Forgery::Ring => {
                ctl[RING_WRITE].fetch_add(1 << 20, SeqCst);
            }
            Forgery::RingReadBack => {
                ctl[RING_READ].fetch_sub(1, SeqCst);
            }
            Forgery::Sleeping => {
                ctl[SLEEPING].store(u64::MAX, SeqCst);
                ctl[STARTED_AT].store(0, SeqCst);
                ctl[STARTED_SEQ].store(me + 3, SeqCst);
            }
        };
        for _ in 0..8 {
            scribble();
            std::thread::sleep(Duration::from_millis(10));
        }
    } else if i % 61 == 17 {
        std::thread::sleep(Duration::from_millis(15));
    }
    append(&path, i);
    i
}

fn counts(path: &str, n: usize) -> Vec<u32> {
    let mut seen = vec![0u32; n];
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        seen[line.parse::<usize>().expect("an index")] += 1;
    }
    seen
}

fn attack(how: Forgery, workers: usize) -> Vec<String> {
    let dir = common::TempDir::new("attack-forge");
    let pool = Pool::builder()
        .workers(workers)
        .build()
        .expect("build a pool");
    let path = dir.file("log");
    let n = 3000u64;
    let forger = 1700u64;
    let items = (0..n).map(|i| (path.clone(), i, forger, how));
    let results: Vec<(usize, Result<u64, Error>)> = pool
        .with_chunk_size(1)
        .imap_unordered(item, items)
        .collect();
    assert_eq!(results.len(), n as usize, "{how:?}");
    let seen = counts(&path, n as usize);
    let mut problems = Vec::new();
    for (i, r) in results {
        let ran = seen[i];
        if i as u64 == forger {
            eprintln!("{how:?} {workers} workers: forger ran {ran} times: {r:?}");
        }
        match r {
            Ok(v) => {
                assert_eq!(v, i as u64);
                if ran != 1 {
                    problems.push(format!("item {i} succeeded and ran {ran} times"));
                }
            }
            Err(Error::Task(e)) if i as u64 == forger => {
                assert!(
                    matches!(
                        e.kind(),
                        TaskErrorKind::Protocol { .. } | TaskErrorKind::WorkerDied { .. }
                    ),
                    "{how:?}: the forger: {e}"
                );
            }
            Err(e) => problems.push(format!("innocent item {i} (ran {ran} times): {e}")),
        }
    }
    assert_eq!(pool.apply(|x: u64| x + 1, 41).expect("apply"), 42);
    problems
}

fn check(how: Forgery) {
    watchdog(Duration::from_secs(60), move || {
        for workers in [2usize, 1] {
            let problems = attack(how, workers);
            assert!(
                problems.is_empty(),
                "{how:?}, {workers} workers: {} problems, first: {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
        }
    });
}

#[test]
fn a_claim_word_pointing_past_the_running_job_neither_hangs_nor_hurts_innocent_items() {
    check(Forgery::ClaimAhead(1));
    check(Forgery::ClaimAhead(3));
}

#[test]
fn a_claim_word_pointing_before_the_running_job_neither_hangs_nor_hurts_innocent_items() {
    check(Forgery::ClaimBehind);
}

#[test]
fn a_zero_claim_word_neither_hangs_nor_hurts_innocent_items() {
    check(Forgery::ClaimZero);
}

#[test]
fn a_forged_stop_flag_with_jobs_queued_neither_hangs_nor_hurts_innocent_items() {
    check(Forgery::Stop);
}

#[test]
fn forged_sleeping_and_start_words_with_jobs_queued_neither_hang_nor_hurt_innocent_items() {
    check(Forgery::Sleeping);
}

#[test]
fn forged_ring_positions_with_jobs_queued_never_hang_or_run_an_item_twice() {
    // Results the worker published before the forgery may be lost with its ring (they
    // cannot be run again without running twice); what must hold: no hang, nothing runs
    // twice, every index is answered.
    for how in [Forgery::Ring, Forgery::RingReadBack] {
        watchdog(Duration::from_secs(60), move || {
            for workers in [2usize, 1] {
                for p in attack(how, workers) {
                    assert!(
                        !p.contains("times")
                            || p.contains("ran 1 times")
                            || p.contains("ran 0 times"),
                        "{how:?}: {p}"
                    );
                }
            }
        });
    }
}

/// The forger writes its started-job word (ahead of its own job by `ahead`, or 0 when
/// `ahead` is `None`) and aborts; the others log themselves.
fn forge_started_then_abort((path, i, forger, ahead): (String, u64, u64, Option<u64>)) -> u64 {
    if i == forger {
        let ctl = control_block();
        let me = ctl[STARTED_SEQ].load(SeqCst);
        ctl[STARTED_SEQ].store(ahead.map_or(0, |k| me + k), SeqCst);
        std::process::abort();
    }
    append(&path, i);
    i
}

fn started_forgery(workers: usize, ahead: Option<u64>) -> Vec<String> {
    let dir = common::TempDir::new("attack-started");
    let pool = Pool::builder()
        .workers(workers)
        .build()
        .expect("build a pool");
    // Warm: the window holds many instant jobs at once.
    pool.with_chunk_size(1)
        .map(|x: u64| x, 0..2000u64)
        .expect("warm up");
    let path = dir.file("log");
    let (n, forger) = (2000u64, 1500u64);
    let items = (0..n).map(|i| (path.clone(), i, forger, ahead));
    let results: Vec<(usize, Result<u64, Error>)> = pool
        .with_chunk_size(1)
        .imap_unordered(forge_started_then_abort, items)
        .collect();
    let seen = counts(&path, n as usize);
    let mut problems = Vec::new();
    for (i, r) in results {
        match r {
            Ok(v) if v == i as u64 && seen[i] == 1 => {}
            Err(Error::Task(_)) if i as u64 == forger => {}
            other => problems.push(format!("item {i} (ran {} times): {other:?}", seen[i])),
        }
    }
    problems
}

#[test]
fn a_started_word_pointing_ahead_then_a_crash_fails_only_the_forger() {
    watchdog(Duration::from_secs(60), || {
        for workers in [1usize, 2] {
            let problems = started_forgery(workers, Some(3));
            assert!(
                problems.is_empty(),
                "{workers} workers: {} innocent items hurt: {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
        }
    });
}

#[test]
fn a_started_word_of_zero_then_a_crash_neither_hangs_nor_reruns_forever() {
    watchdog(Duration::from_secs(60), || {
        for workers in [1usize, 2] {
            let problems = started_forgery(workers, None);
            assert!(
                problems.is_empty(),
                "{workers} workers: {} innocent items hurt: {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
        }
    });
}
