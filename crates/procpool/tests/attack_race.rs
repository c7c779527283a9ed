//! Precise races with a revocation: a task watches its worker's claim word until the
//! parent raises the stop flag (the parent is taking back the jobs queued behind it),
//! then dies, exits, or lowers the flag itself. Every other item must run exactly once,
//! nothing may hang, and only the task that misbehaved may fail.

procpool::enable_test_support!();

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::{append, control_block, watchdog};
use procpool::{Error, Pool};

const STARTED_SEQ: usize = 0;
const CLAIM: usize = 5;
const STOP: u64 = 1 << 63;

fn counts(path: &str, n: usize) -> Vec<u32> {
    let mut seen = vec![0u32; n];
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        seen[line.parse::<usize>().expect("an index")] += 1;
    }
    seen
}

/// What the watcher does once it sees the parent's stop flag.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
enum OnStop {
    Abort,
    Exit0,
    KillSelf,
    /// Lowers the parent's flag (a hostile task), then returns.
    Lower,
    /// Returns normally at once.
    Return,
    /// Aborts on the first attempt only (a marker file tells).
    AbortOnce,
    /// Until the flag comes, keeps the claim word at the job after its own (as if that
    /// one were claimed too, never raising or lowering the flag), then returns.
    ClaimNext(u64),
}

/// Every item logs itself; the watcher waits (up to 2 s) for the stop flag first.
fn item((path, i, watcher, how): (String, u64, u64, OnStop)) -> u64 {
    if i == watcher {
        let marker = format!("{path}.marker");
        let first = !std::path::Path::new(&marker).exists();
        std::fs::write(&marker, b"x").expect("marker");
        let ctl = control_block();
        let me = ctl[STARTED_SEQ].load(SeqCst);
        let t = Instant::now();
        loop {
            let v = ctl[CLAIM].load(SeqCst);
            if v & STOP != 0 || t.elapsed() > Duration::from_secs(2) {
                break;
            }
            if let OnStop::ClaimNext(k) = how
                && v != me + k
            {
                let _ = ctl[CLAIM].compare_exchange(v, me + k, SeqCst, SeqCst);
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        let saw = ctl[CLAIM].load(SeqCst) & STOP != 0;
        std::fs::write(format!("{path}.saw"), if saw { "1" } else { "0" }).expect("saw");
        match how {
            OnStop::Abort => std::process::abort(),
            OnStop::AbortOnce if first => std::process::abort(),
            OnStop::Exit0 => std::process::exit(0),
            // SAFETY: kill(2) on this very process.
            OnStop::KillSelf => unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            },
            OnStop::Lower => ctl[CLAIM].store(me, SeqCst),
            OnStop::Return | OnStop::AbortOnce | OnStop::ClaimNext(_) => {}
        }
    }
    append(&path, i);
    i
}

/// Runs 2000 items (chunk size 1) on two warm workers with the watcher at 1200; returns
/// the problems seen with innocent items, and what happened to the watcher.
fn race(how: OnStop, retries: u32) -> (Vec<String>, String) {
    let dir = common::TempDir::new("attack-race");
    let pool = Pool::builder()
        .workers(2)
        .retries(retries)
        .build()
        .expect("build a pool");
    pool.with_chunk_size(1)
        .map(|x: u64| x, 0..2000u64)
        .expect("warm up");
    let path = dir.file("log");
    let n = 2000u64;
    let watcher = 1200u64;
    let items = (0..n).map(|i| (path.clone(), i, watcher, how));
    let results: Vec<(usize, Result<u64, Error>)> = pool
        .with_chunk_size(1)
        .imap_unordered(item, items)
        .collect();
    assert_eq!(results.len(), n as usize);
    let seen = counts(&path, n as usize);
    let mut problems = Vec::new();
    let mut watcher_outcome = String::new();
    for (i, r) in results {
        if i as u64 == watcher {
            // The kind's name, then the sentence (an error's Debug is its sentence).
            let shown = match &r {
                Ok(v) => format!("Ok({v})"),
                Err(e) => format!("Err({}: {e})", kind_name(e)),
            };
            watcher_outcome = format!("{shown} (logged {} times)", seen[i]);
            continue;
        }
        match r {
            Ok(v) if v == i as u64 && seen[i] == 1 => {}
            Ok(v) => problems.push(format!("item {i}: got {v}, ran {} times", seen[i])),
            Err(e) => problems.push(format!("item {i} (ran {} times): {e}", seen[i])),
        }
    }
    let saw = std::fs::read_to_string(format!("{path}.saw")).unwrap_or_default();
    watcher_outcome.push_str(&format!("; saw the stop flag: {saw}"));
    assert_eq!(pool.apply(|x: u64| x + 1, 1).expect("apply after"), 2);
    (problems, watcher_outcome)
}

/// The name of a task error's kind (`WorkerDied`, `Protocol`...), or of the error.
fn kind_name(e: &Error) -> &'static str {
    use procpool::TaskErrorKind as K;
    match e.as_task().map(|t| t.kind()) {
        Some(K::Panic { .. }) => "Panic",
        Some(K::WorkerDied { .. }) => "WorkerDied",
        Some(K::TimedOut { .. }) => "TimedOut",
        Some(K::Cancelled) => "Cancelled",
        Some(K::Codec { .. }) => "Codec",
        Some(K::TooLarge { .. }) => "TooLarge",
        Some(K::Protocol { .. }) => "Protocol",
        Some(K::OutOfMemory { .. }) => "OutOfMemory",
        Some(K::Terminated) => "Terminated",
        Some(K::PoolBroken(_)) => "PoolBroken",
        Some(_) => "Task",
        None => "Pool",
    }
}

fn check(how: OnStop, retries: u32, watcher_ok: fn(&str) -> bool) {
    watchdog(Duration::from_secs(30), move || {
        for round in 0..3 {
            let (problems, watcher) = race(how, retries);
            assert!(
                problems.is_empty(),
                "{how:?} round {round}: {} innocent items hurt, first: {:?}; watcher: {watcher}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
            assert!(
                watcher_ok(&watcher),
                "{how:?} round {round}: watcher {watcher}"
            );
        }
    });
}

#[test]
fn a_task_that_aborts_as_its_queue_is_taken_back_fails_alone() {
    check(OnStop::Abort, 0, |w| w.contains("WorkerDied"));
}

#[test]
fn a_task_that_exits_0_as_its_queue_is_taken_back_fails_alone() {
    check(OnStop::Exit0, 0, |w| w.contains("WorkerDied"));
}

#[test]
fn a_task_sigkilled_as_its_queue_is_taken_back_fails_alone() {
    check(OnStop::KillSelf, 0, |w| w.contains("WorkerDied"));
}

#[test]
fn a_task_returning_as_its_queue_is_taken_back_succeeds_and_nothing_runs_twice() {
    check(OnStop::Return, 0, |w| {
        w.starts_with("Ok(1200) (logged 1 times)")
    });
}

#[test]
fn with_retries_a_task_dying_as_its_queue_is_taken_back_runs_again_and_succeeds() {
    check(OnStop::AbortOnce, 1, |w| {
        w.starts_with("Ok(1200) (logged 1 times)")
    });
}

#[test]
#[ignore = "known limit: a task that deliberately clears its worker's stop flag controls that worker; taken-back items it then runs also run elsewhere (their results are refused)"]
fn a_task_lowering_the_parents_stop_flag_never_makes_an_innocent_item_run_twice() {
    check(OnStop::Lower, 0, |w| {
        w.starts_with("Ok(1200)") || w.contains("Protocol") || w.contains("WorkerDied")
    });
}

/// Checks the watcher really raced a revocation (else the tests above prove little).
#[test]
fn the_watcher_sees_the_stop_flag() {
    watchdog(Duration::from_secs(60), || {
        let (problems, watcher) = race(OnStop::Return, 0);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(watcher.ends_with("saw the stop flag: 1"), "{watcher}");
    });
}

#[test]
fn a_claim_word_naming_the_next_job_as_the_queue_is_taken_back_neither_hangs_nor_loses_it() {
    check(OnStop::ClaimNext(1), 0, |w| {
        w.starts_with("Ok(1200)") || w.contains("Protocol") || w.contains("WorkerDied")
    });
}

#[test]
fn a_claim_word_naming_a_later_job_as_the_queue_is_taken_back_neither_hangs_nor_loses_it() {
    for k in [2, 3] {
        check(OnStop::ClaimNext(k), 0, |w| {
            w.starts_with("Ok(1200)") || w.contains("Protocol") || w.contains("WorkerDied")
        });
    }
}
