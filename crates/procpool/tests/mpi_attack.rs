//! Attacks on pools over MPI (feature `mpi`): combinations the other MPI test does not
//! try. Like `mpi_pool`, this test runs itself: started by `cargo test`, it runs each
//! scenario as `mpirun -n 3 <this binary> <scenario>` and checks how the job ended;
//! started by `mpirun`, rank 0 runs the scenario (its asserts are the checks) and the
//! other ranks serve as agents. A scenario name as argument runs the scenarios whose
//! names contain it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mpi_job::{
    PER_AGENT, agent_rank, both_agents_serve, check_ok, job_pids, main_with, mpi_pool, pids_in,
    show, sleeps, traced, verbose,
};
use common::{
    TempDir, Trace, append, append_line, check_work_conserving, exists, is_init_panic, now_nanos,
    sleep_ms, stat, timeline, wait_for_file, wait_until, write_file,
};
use procpool::{Error, Pool, TaskErrorKind};

/// How long one `mpirun` may take before it counts as hung.
const HARD_LIMIT: Duration = Duration::from_secs(60);
/// 64 MiB.
const HUGE: usize = 64 << 20;
/// How long a worker may idle while a 64 MiB message travels: the copies at its ends
/// take up to a few hundred ms on a loaded host; the transfer, seconds.
const IDLE_BOUND: Duration = Duration::from_millis(1500);

fn main() {
    main_with(scenario, drive);
}

// ---- tasks (they run on the agents' workers) ------------------------------------------

/// Sleeps, then writes its trace as a line `pid start end` to `path` (for tasks whose
/// results nobody reads).
fn logged((ms, path): (u64, String)) {
    let t = sleep_ms(ms);
    append_line(&path, &format!("{} {} {}\n", t.pid, t.start, t.end));
}

/// Starts a child process of its own (`sleep 60`), writes the child's pid to `path`,
/// and sleeps (it is killed before it could wait for the child: the point of the test).
#[allow(clippy::zombie_processes)]
fn with_grandchild(path: String) -> u32 {
    let child = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    write_file(&path, &child.id().to_string());
    std::thread::sleep(Duration::from_secs(60));
    child.id()
}

/// Logs its run, then: item 7 aborts, the others return `(item, pid)`.
fn logs_run((i, path): (u64, String)) -> (u64, u32) {
    append(&path, i);
    if i == 7 {
        std::process::abort();
    }
    (i, std::process::id())
}

fn echo(s: String) -> String {
    s
}

fn picky(x: u32) -> u32 {
    match x {
        37 => panic!("37 is refused"),
        61 => std::process::abort(),
        _ => x * 3,
    }
}

fn tagged((generation, i): (u32, u32)) -> (u32, u32) {
    (generation, i)
}

fn double(x: u64) -> u64 {
    x * 2
}

// ---- scenarios (rank 0 of an `mpirun` job) --------------------------------------------

fn scenario(name: &str) {
    match name {
        "descendants" => grandchildren_end_with_their_task(),
        "dropped" => dropped_calls_and_detached_tasks(),
        "recycle_retry" => recycling_and_retries_on_agents(),
        "huge" => huge_arguments_and_results(),
        "chunks" => one_bad_item_in_automatic_chunks(),
        "chunk_crash" => a_crash_in_an_automatic_chunk_costs_one_task(0),
        "chunk_crash_retry" => a_crash_in_an_automatic_chunk_costs_one_task(1),
        "huge_among_short" => a_huge_argument_among_short_tasks(),
        "huge_result_among_short" => a_huge_result_among_short_tasks(),
        "uneven" => a_long_task_first_then_short_ones(),
        "many_pools" => many_pools_in_a_row(),
        "limits" => extreme_time_limits(),
        "thread_panic" => a_caller_thread_panics(),
        "caught_panic" => a_panic_main_catches(),
        "refusals" => agents_refuse_to_start(),
        "panic_mid_send" => panic_while_a_large_job_is_sent(),
        "kill_agent" => a_rank_is_killed(1),
        "kill_rank0" => a_rank_is_killed(0),
        "hard_exit_rank0" => rank_0_leaves_without_finalize(),
        "exit_busy" => exit_while_busy(false),
        "exit_thread" => exit_while_busy(true),
        "exit_join" => exit_during_join(),
        other => panic!("no scenario {other}"),
    }
}

/// Whether a process is gone (a zombie waiting for a reaper counts as gone: it runs no
/// more code and holds no resources but its entry).
fn gone(pid: u32) -> bool {
    !exists(pid) || stat(pid).is_some_and(|(_, state)| state == 'Z')
}

/// Waits until every pid the scenario printed (`pids: {…}`) is gone (10 s at most).
fn all_ended(what: &str, stdout: &str) {
    let pids = pids_in(stdout);
    wait_until(what, Duration::from_secs(10), || {
        pids.iter().all(|&p| gone(p))
    });
}

fn wait_gone(what: &str, pid: u32) {
    wait_until(what, Duration::from_secs(10), || gone(pid));
}

fn read_pid(path: &str) -> u32 {
    wait_for_file(path, Duration::from_secs(20))
        .trim()
        .parse()
        .expect("a pid")
}

fn kind(r: &Result<impl std::fmt::Debug, Error>) -> Option<&TaskErrorKind> {
    r.as_ref().err().and_then(|e| e.as_task()).map(|t| t.kind())
}

/// A task that started its own child and is timed out, cancelled, or running when its
/// pool is terminated: the child goes with its worker, on the agent's host.
fn grandchildren_end_with_their_task() {
    let dir = TempDir::new("mpi-descendants");
    let pool = mpi_pool();

    let h = pool
        .with_timeout(Duration::from_millis(500))
        .spawn(with_grandchild, dir.file("timeout"))
        .unwrap();
    let child = read_pid(&dir.file("timeout"));
    let r = h.join();
    assert!(
        matches!(kind(&r), Some(TaskErrorKind::TimedOut { .. })),
        "{r:?}"
    );
    wait_gone("the timed-out task's child is gone", child);

    let h = pool.spawn(with_grandchild, dir.file("cancel")).unwrap();
    let child = read_pid(&dir.file("cancel"));
    h.cancel();
    let r = h.join();
    assert!(matches!(kind(&r), Some(TaskErrorKind::Cancelled)), "{r:?}");
    wait_gone("the cancelled task's child is gone", child);

    // Detached, then the pool terminated while it runs.
    drop(pool.spawn(with_grandchild, dir.file("terminate")).unwrap());
    let child = read_pid(&dir.file("terminate"));
    pool.terminate();
    wait_gone("the terminated pool's task's child is gone", child);

    // The agents serve on.
    both_agents_serve();
}

fn read_traces(path: &str) -> Vec<Trace> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            Trace {
                pid: v[0] as u32,
                start: v[1],
                end: v[2],
            }
        })
        .collect()
}

/// A call dropped while its tasks run: they run on (as in a local pool), and an agent
/// whose workers run them gets no new work until they end — work must not wait there
/// while another worker idles. Detached tasks all run before `join` returns; an `imap`
/// forgotten half-read does not keep a dropped pool from ending.
fn dropped_calls_and_detached_tasks() {
    let dir = TempDir::new("mpi-dropped");
    let log = dir.file("abandoned");
    let pool = mpi_pool();
    pool.with_chunk_size(1).map(sleeps, [20; 8]).unwrap();
    {
        let long = [50u64, 1500, 1500, 1500].map(|ms| (ms, log.clone()));
        let mut it = pool.with_chunk_size(1).imap_unordered(logged, long);
        let (i, r) = it.next().unwrap();
        assert_eq!(i, 0, "the short task ends first");
        r.unwrap();
    }
    let submitted = now_nanos();
    let out = pool.with_chunk_size(1).map(traced, [400u64; 3]).unwrap();
    // The abandoned tasks ran to their end (a pool's join would wait for them).
    wait_until(
        "the dropped call's tasks logged their end",
        Duration::from_secs(10),
        || read_traces(&log).len() == 4,
    );
    let mut traces: Vec<Trace> = read_traces(&log);
    traces.extend(out.iter().map(|o| o.0));
    check_work_conserving("after a dropped call", &traces, submitted);

    // Detached tasks, more than the workers: join waits for every one.
    for i in 0..10u64 {
        drop(pool.spawn(logged, (200, dir.file(&format!("detached-{i}")))));
    }
    pool.join();
    for i in 0..10 {
        let f = dir.file(&format!("detached-{i}"));
        assert_eq!(read_traces(&f).len(), 1, "detached task {i} ran once");
    }

    // An imap forgotten half-read, then its pool dropped: the job goes on, promptly.
    let pool = mpi_pool();
    let mut it = pool.with_chunk_size(1).imap(sleeps, [200u64; 100]);
    it.next().unwrap().unwrap();
    std::mem::forget(it);
    let t = Instant::now();
    drop(pool);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    both_agents_serve();
}

/// `recycle_after(1)` and `retries(2)` on the agents: every task runs once, on a fresh
/// worker, except the one that aborts, which runs three times and fails.
fn recycling_and_retries_on_agents() {
    let dir = TempDir::new("mpi-recycle");
    let runs = dir.file("runs");
    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .recycle_after(1)
        .retries(2)
        .build()
        .unwrap();
    let out: Vec<Result<(u64, u32), Error>> = pool
        .with_chunk_size(1)
        .imap(logs_run, (0..30u64).map(|i| (i, runs.clone())))
        .collect();
    let mut pids = BTreeSet::new();
    for (i, r) in out.iter().enumerate() {
        if i == 7 {
            let e = r.as_ref().unwrap_err().as_task().expect("a task error");
            assert!(
                matches!(e.kind(), TaskErrorKind::WorkerDied { death } if death.signal_name() == Some("SIGABRT")),
                "{e}"
            );
            assert_eq!(e.attempts(), 3, "{e}");
        } else {
            let &(j, pid) = r.as_ref().unwrap();
            assert_eq!(j, i as u64);
            assert!(pids.insert(pid), "worker {pid} ran two tasks: not recycled");
        }
    }
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for l in std::fs::read_to_string(&runs).unwrap().lines() {
        *count.entry(l.parse().unwrap()).or_default() += 1;
    }
    for i in 0..30 {
        let want = if i == 7 { 3 } else { 1 };
        assert_eq!(count.get(&i), Some(&want), "runs of task {i}: {count:?}");
    }
}

/// A 64 MiB argument and result, large ones on both agents at once, and an item over
/// the message limit failing alone.
fn huge_arguments_and_results() {
    let pool = mpi_pool();
    let big = "x".repeat(HUGE);
    let t = Instant::now();
    assert_eq!(pool.apply(|s: String| s.len(), &big).unwrap(), HUGE);
    let made = pool.apply(|n: usize| "y".repeat(n), HUGE).unwrap();
    assert!(made.len() == HUGE && made.bytes().all(|b| b == b'y'));
    drop(made);
    println!(
        "huge: {} MiB one way and back {:.1?}",
        HUGE >> 20,
        t.elapsed()
    );
    let t = Instant::now();
    drop(big);
    // Both agents at once (smaller: a 64 MiB transfer takes seconds on a loaded host).
    let big = "v".repeat(HUGE / 4);
    let both = pool
        .with_chunk_size(1)
        .map(echo, [big.clone(), big.clone()])
        .unwrap();
    assert!(both.iter().all(|s| *s == big));
    drop(both);
    println!(
        "huge: two echoes of {} MiB {:.1?}",
        (HUGE / 4) >> 20,
        t.elapsed()
    );
    drop(big);
    pool.join();

    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .max_message_size(1 << 20)
        .build()
        .unwrap();
    let args = [10usize, 2 << 20, 10, 10].map(|n| "z".repeat(n));
    let out: Vec<Result<usize, Error>> = pool.imap(|s: String| s.len(), &args).collect();
    for (i, r) in out.iter().enumerate() {
        if i == 1 {
            assert!(
                matches!(kind(r), Some(TaskErrorKind::TooLarge { .. })),
                "{r:?}"
            );
        } else {
            assert_eq!(*r.as_ref().unwrap(), 10);
        }
    }
    let made: Vec<Result<String, Error>> = pool
        .imap(|n: usize| "w".repeat(n), [10usize, 10, 2 << 20, 10])
        .collect();
    for (i, r) in made.iter().enumerate() {
        if i == 2 {
            assert!(
                matches!(kind(r), Some(TaskErrorKind::TooLarge { .. })),
                "{r:?}"
            );
        } else {
            assert_eq!(r.as_ref().unwrap().len(), 10);
        }
    }
}

fn sized_trace(s: String) -> (Trace, usize) {
    (sleep_ms(40), s.len())
}

/// A 64 MiB argument, then 40 ms tasks: while it travels (seconds, on a loaded host),
/// the other workers, on its agent too, still get work.
fn a_huge_argument_among_short_tasks() {
    let pool = mpi_pool();
    pool.with_chunk_size(1).map(sleeps, [20; 8]).unwrap();
    let huge = pool.spawn(sized_trace, "x".repeat(HUGE)).unwrap();
    let submitted = now_nanos();
    let short = vec!["s".to_string(); 80];
    let out = pool.with_chunk_size(1).map(sized_trace, &short).unwrap();
    let (big, len) = huge.join().unwrap();
    assert_eq!(len, HUGE);
    // The worker that waited for the huge argument is left out: its wait is the
    // transfer. The others may wait for the copies of 64 MiB at both ends (up to a few
    // hundred ms on a loaded host, as the caller's encoding does for a local pool), not
    // for the transfer (seconds).
    let traces: Vec<Trace> = out
        .iter()
        .map(|o| o.0)
        .filter(|t| t.pid != big.pid)
        .collect();
    let gap = longest_idle(&traces, submitted);
    assert!(
        gap < IDLE_BOUND,
        "a worker sat idle {gap:?} while items waited\n{}",
        timeline(&traces, submitted)
    );
}

fn huge_result(ms: u64) -> (Trace, u32, String) {
    (sleep_ms(ms), agent_rank(), "r".repeat(HUGE))
}

/// A 64 MiB result among 40 ms tasks: while it travels back, the other agent's workers
/// still get work (the agent that sends it copies 64 MiB meanwhile: left out).
fn a_huge_result_among_short_tasks() {
    let pool = mpi_pool();
    pool.with_chunk_size(1).map(sleeps, [20; 8]).unwrap();
    let huge = pool.spawn(huge_result, 200).unwrap();
    let submitted = now_nanos();
    let out = pool.with_chunk_size(1).map(traced, [40u64; 120]).unwrap();
    let (_, rank, s) = huge.join().unwrap();
    assert_eq!(s.len(), HUGE);
    let traces: Vec<Trace> = out.iter().filter(|o| o.1 != rank).map(|o| o.0).collect();
    // Not the common check: decoding 64 MiB on the caller's rank takes it a moment (a
    // few hundred ms on a loaded host), not the seconds of the transfer.
    let gap = longest_idle(&traces, submitted);
    assert!(
        gap < IDLE_BOUND,
        "a worker of the other agent sat idle {gap:?} while items waited\n{}",
        timeline(&traces, submitted)
    );
}

/// The longest time a worker sat idle while an item had not started.
fn longest_idle(traces: &[Trace], submitted: u64) -> Duration {
    let last_start = traces.iter().map(|t| t.start).max().unwrap_or(0);
    let mut by_pid: BTreeMap<u32, Vec<Trace>> = BTreeMap::new();
    for t in traces {
        by_pid.entry(t.pid).or_default().push(*t);
    }
    let mut longest = 0;
    for ts in by_pid.values_mut() {
        ts.sort_by_key(|t| t.start);
        let mut free_since = submitted;
        for t in ts.iter() {
            longest = longest.max(t.start.saturating_sub(free_since));
            free_since = free_since.max(t.end);
        }
        longest = longest.max(last_start.saturating_sub(free_since));
    }
    Duration::from_nanos(longest)
}

/// Outcome of each item, as a word: what a local pool and an MPI pool must agree on.
fn outcomes(pool: &Pool) -> Vec<String> {
    pool.imap(picky, 0..200u32)
        .map(|r| match r {
            Ok(v) => format!("ok {v}"),
            Err(e) => match e.as_task().map(|t| t.kind()) {
                Some(TaskErrorKind::Panic { message, .. }) => format!("panic {message}"),
                Some(TaskErrorKind::WorkerDied { death }) => format!("died {death:?}"),
                _ => format!("error {e}"),
            },
        })
        .collect()
}

/// One item that panics and one that aborts inside automatic chunks, as in a local
/// pool: the panic fails its item alone; the abort kills its worker, which fails at most
/// a run of items around it (since a crash costs one task, that run is the item alone:
/// see `chunk_crash`, which checks it exactly).
fn one_bad_item_in_automatic_chunks() {
    let pool = mpi_pool();
    let local = Pool::builder().workers(2 * PER_AGENT).build().unwrap();
    for (what, out) in [("mpi", outcomes(&pool)), ("local", outcomes(&local))] {
        let died: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].starts_with("died"))
            .collect();
        assert!(died.contains(&61), "{what}: {out:?}");
        let (first, last) = (died[0], died[died.len() - 1]);
        assert_eq!(died.len(), last - first + 1, "{what}: one run: {died:?}");
        for (i, o) in out.iter().enumerate() {
            match i {
                37 => assert!(o.starts_with("panic 37 is refused"), "{what}: {o}"),
                i if died.contains(&i) => {}
                _ => assert_eq!(*o, format!("ok {}", i * 3), "{what}"),
            }
        }
    }
}

/// Item 50 segfaults, item 120 aborts, the others append their index to a file as their
/// last step (the work before it keeps automatic chunks several items long).
fn flags_item((i, path): (u64, String)) -> u64 {
    let mut x = i;
    for _ in 0..20_000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    match i {
        50 => {
            let p = std::ptr::without_provenance_mut::<u8>(16);
            // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
        120 => std::process::abort(),
        _ => {}
    }
    append(&path, i);
    std::hint::black_box(x);
    i * 3
}

/// A crash inside an automatic chunk on an agent's worker costs that one item: the items
/// the worker finished cross back to rank 0 and are delivered, the ones not started run
/// once elsewhere; with a retry, only the killing item runs again.
fn a_crash_in_an_automatic_chunk_costs_one_task(retries: u32) {
    let dir = TempDir::new("mpi-chunk-crash");
    let path = dir.path().join("flags").to_str().unwrap().to_owned();
    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .retries(retries)
        .build()
        .expect("an MPI pool");
    let out: Vec<Result<u64, Error>> = pool
        .imap(flags_item, (0..200u64).map(|i| (i, path.clone())))
        .collect();
    assert_eq!(out.len(), 200);
    for (i, r) in out.iter().enumerate() {
        match (i, r) {
            (50 | 120, Err(e)) => {
                let t = e.as_task().expect("a task error");
                let want = if i == 50 { "SIGSEGV" } else { "SIGABRT" };
                assert!(
                    matches!(t.kind(), TaskErrorKind::WorkerDied { death } if death.signal_name() == Some(want)),
                    "item {i}: {t}"
                );
                assert_eq!((t.index(), t.attempts()), (i as u64, retries + 1), "{t}");
            }
            (50 | 120, Ok(v)) => panic!("item {i} gave {v}"),
            (_, Ok(v)) => assert_eq!(*v, i as u64 * 3),
            (_, Err(e)) => panic!("item {i} failed with another's crash: {e}"),
        }
    }
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    for l in std::fs::read_to_string(&path).unwrap().lines() {
        *runs.entry(l.parse().unwrap()).or_default() += 1;
    }
    for i in 0..200u64 {
        let want = usize::from(i != 50 && i != 120);
        assert_eq!(
            runs.get(&i).copied().unwrap_or(0),
            want,
            "item {i} ran to its end"
        );
    }
    println!("chunk crash (retries {retries}): 2 of 200 failed, the others ran once");
}

/// A 2 s task first, then hundreds of 1 ms tasks, one item per job: no worker idles
/// while any waits.
fn a_long_task_first_then_short_ones() {
    let pool = mpi_pool();
    pool.with_chunk_size(1).map(sleeps, [20; 8]).unwrap();
    let mut ms = vec![2000u64];
    ms.extend([1u64; 600]);
    let submitted = now_nanos();
    let out = pool.with_chunk_size(1).map(traced, ms).unwrap();
    let traces: Vec<Trace> = out.iter().map(|o| o.0).collect();
    check_work_conserving("2 s then 1 ms tasks", &traces, submitted);
    let ranks: BTreeSet<u32> = out.iter().map(|o| o.1).collect();
    assert_eq!(ranks, BTreeSet::from([1, 2]));
    if std::env::var_os("PROCPOOL_MPI_VERBOSE").is_some() {
        println!("{}", timeline(&traces, submitted));
    }
}

/// Pools created and dropped in a row, each dropped with answers still on their way:
/// no answer of one pool is taken for one of the next.
fn many_pools_in_a_row() {
    for generation in 0..12u32 {
        let pool = mpi_pool();
        let items = (0..3000u32).map(move |i| (generation, i));
        let mut it = pool.with_chunk_size(1).imap_unordered(tagged, items);
        let mut seen = BTreeSet::new();
        for _ in 0..(generation * 37 % 300) {
            let (i, r) = it.next().unwrap();
            let (g, v) = r.unwrap();
            assert_eq!((g, v), (generation, i as u32), "pool {generation}");
            assert!(seen.insert(v));
        }
        if generation % 2 == 0 {
            drop(it);
        } else {
            std::mem::forget(it);
        }
        if generation % 3 == 0 {
            pool.terminate();
        }
    }
    let pool = mpi_pool();
    let out = pool.with_chunk_size(1).map(double, 0..2000u64).unwrap();
    assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
}

/// A time limit far below an MPI round trip (1 ns), and one so long that it only fits
/// a `Duration`.
fn extreme_time_limits() {
    // A start-up limit as long as a `Duration` goes.
    let forever = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .handshake_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(forever.apply(double, 4).unwrap(), 8);
    forever.join();
    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .timeout(Duration::from_nanos(1))
        .build()
        .unwrap();
    let out: Vec<Result<(u32, u32), Error>> = pool
        .with_chunk_size(1)
        .imap(sleeps, [0, 50, 0, 50, 0])
        .collect();
    for (i, r) in out.iter().enumerate() {
        let timed_out = matches!(kind(r), Some(TaskErrorKind::TimedOut { .. }));
        if i % 2 == 1 {
            assert!(timed_out, "item {i}: {r:?}");
        } else {
            assert!(r.is_ok() || timed_out, "item {i}: {r:?}");
        }
    }
    // About 584 years: far beyond any task, and past u64 nanoseconds.
    let long = Duration::from_secs(18_446_744_074);
    let out = pool
        .with_timeout(long)
        .chunk_size(1)
        .map(sleeps, [800, 800, 800, 800]);
    assert!(out.is_ok(), "{out:?}");
}

/// A thread other than main panics while it uses the pool, or while it owns one: the
/// job goes on, and the agents serve the next pool.
fn a_caller_thread_panics() {
    let pool = mpi_pool();
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let mut it = pool.with_chunk_size(1).imap(sleeps, [100u64; 20]);
            it.next().unwrap().unwrap();
            panic!("a caller thread gives up");
        })
        .join()
    });
    assert!(r.is_err());
    assert_eq!(pool.map(double, [1, 2]).unwrap(), [2, 4]);
    drop(pool);

    let r = std::thread::spawn(|| {
        let pool = mpi_pool();
        let _running = pool.spawn(sleeps, 60_000).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        panic!("the pool's owner thread gives up");
    })
    .join();
    assert!(r.is_err());
    both_agents_serve();
}

/// Whether `e` is a worker's handshake past its time (possibly wrapped in `Broken`).
fn is_handshake_timeout(e: &procpool::PoolError) -> bool {
    use procpool::{HandshakeError, PoolError};
    match e {
        PoolError::Broken { first, .. } => is_handshake_timeout(first),
        PoolError::Handshake { reason, .. } => matches!(reason, HandshakeError::TimedOut(_)),
        _ => false,
    }
}

/// A panic that main catches (`catch_unwind`) is the program's business: the job goes
/// on.
fn a_panic_main_catches() {
    let pool = mpi_pool();
    let r = std::panic::catch_unwind(|| -> u32 { panic!("a panic main catches") });
    assert!(r.is_err());
    assert_eq!(pool.map(double, [1, 2]).unwrap(), [2, 4]);
}

fn panicking_init(_: u32) {
    panic!("initializer fails on purpose");
}

/// Settings the agents' pools cannot start with: the caller gets the error a local pool
/// gives (or one that names the rank), and the next pool starts.
fn agents_refuse_to_start() {
    let local = Pool::builder().workers(0).build().unwrap_err();
    let remote = Pool::builder().mpi().workers(0).build().unwrap_err();
    assert!(
        matches!(remote, Error::Pool(procpool::PoolError::Config(_))),
        "mpi: {remote:?}; local: {local:?}"
    );
    // Workers given 1 ns to start: as in a local pool, the pool fails to start, or its
    // tasks fail, or (a worker answering before the supervisor looks) they run.
    let r = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .handshake_timeout(Duration::from_nanos(1))
        .build()
        .and_then(|p| p.apply(double, 1));
    println!("handshake 1 ns: {r:?}");
    match r {
        Ok(v) => assert_eq!(v, 2),
        Err(e) => assert!(
            matches!(&e, Error::Pool(p) if is_handshake_timeout(p)),
            "{e:?}"
        ),
    }
    let t = Instant::now();
    let r = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .initializer(panicking_init, 0)
        .build()
        .and_then(|p| p.apply(double, 1));
    let e = r.unwrap_err();
    println!("initializer panics: {e} ({:?})", t.elapsed());
    // The error a local pool gives, variants and all.
    assert!(
        matches!(&e, Error::Pool(p) if is_init_panic(p, true)),
        "{e:?}"
    );
    both_agents_serve();
}

/// The caller's main panics while another thread sends a 64 MiB job: the job ends with
/// the panic's code, promptly, and nothing of it is left (the driver checks).
fn panic_while_a_large_job_is_sent() {
    let pool = mpi_pool();
    let (_, pids) = job_pids(&pool);
    println!("pids: {pids:?}");
    let big = "x".repeat(HUGE);
    std::thread::scope(|s| {
        s.spawn(|| pool.with_chunk_size(1).map(|s: String| s.len(), [&big]));
        std::thread::sleep(Duration::from_millis(300));
        panic!("main gives up during a large send");
    });
}

/// A rank killed outright (its host lost, or the batch system's kill) while every
/// worker runs a task with a child of its own: the job ends (Open MPI ends it), and no
/// worker nor task child is left on any host.
fn a_rank_is_killed(rank: u32) {
    let dir = TempDir::new("mpi-kill");
    let pool = mpi_pool();
    let (who, mut pids) = job_pids(&pool);
    let handles: Vec<_> = (0..2 * PER_AGENT)
        .map(|i| {
            pool.spawn(with_grandchild, dir.file(&format!("child-{i}")))
                .unwrap()
        })
        .collect();
    for i in 0..2 * PER_AGENT {
        pids.insert(read_pid(&dir.file(&format!("child-{i}"))));
    }
    println!("pids: {pids:?}");
    let victim = if rank == 0 {
        std::process::id()
    } else {
        who.iter()
            .find(|w| w.0 == rank)
            .expect("the rank ran a task")
            .2
    };
    // SAFETY: signals a process of this job.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    drop(handles);
    std::thread::sleep(Duration::from_secs(120));
}

/// `_exit(4)` on rank 0 (no exit handler, no `MPI_Finalize`) while a task with a child
/// of its own runs: under ULFM the runtime tells no one, and the agents, which watch
/// rank 0's process on its host, end the job; every process of it is gone.
fn rank_0_leaves_without_finalize() {
    let dir = TempDir::new("mpi-hard-exit");
    let pool = mpi_pool();
    let (_, mut pids) = job_pids(&pool);
    let _running = pool.spawn(with_grandchild, dir.file("child")).unwrap();
    pids.insert(read_pid(&dir.file("child")));
    println!("pids: {pids:?}");
    // SAFETY: `_exit` ends the process; nothing of it is used after.
    unsafe { libc::_exit(4) };
}

/// `std::process::exit` on rank 0 (from main, or from another thread) while a thread
/// streams calls and a task with a child of its own runs: the job ends with that code,
/// promptly, and every process of it is gone.
fn exit_while_busy(from_thread: bool) {
    let dir = TempDir::new("mpi-exit");
    let pool = mpi_pool();
    let (_, mut pids) = job_pids(&pool);
    let _running = pool.spawn(with_grandchild, dir.file("child")).unwrap();
    pids.insert(read_pid(&dir.file("child")));
    println!("pids: {pids:?}");
    std::thread::scope(|s| {
        s.spawn(|| {
            loop {
                let _ = pool.with_chunk_size(1).map(double, 0..1000u64);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        if from_thread {
            s.spawn(|| std::process::exit(4));
            std::thread::sleep(Duration::from_secs(120));
        }
        std::process::exit(3);
    });
}

/// `std::process::exit` from another thread while main waits in `join` for a detached
/// task of a minute: the job ends with that code, promptly.
fn exit_during_join() {
    let pool = mpi_pool();
    let (_, pids) = job_pids(&pool);
    println!("pids: {pids:?}");
    drop(pool.spawn(sleeps, 60_000).unwrap());
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(500));
        std::process::exit(5);
    });
    pool.join();
    panic!("join returned before the detached task ended");
}

// ---- the driver (`cargo test`) --------------------------------------------------------

const NAMES: [&str; 22] = [
    "descendants",
    "dropped",
    "recycle_retry",
    "huge",
    "chunks",
    "chunk_crash",
    "chunk_crash_retry",
    "huge_among_short",
    "huge_result_among_short",
    "uneven",
    "many_pools",
    "limits",
    "thread_panic",
    "caught_panic",
    "refusals",
    "panic_mid_send",
    "kill_agent",
    "kill_rank0",
    "hard_exit_rank0",
    "exit_busy",
    "exit_thread",
    "exit_join",
];

fn drive() {
    common::mpi_job::drive("mpi attack", &NAMES, |me, name| Some(check(me, name)));
}

fn check(me: &Path, name: &str) -> Duration {
    // `kill_agent` is the job without ULFM (an MPI library that lacks it): a lost agent
    // ends it. With ULFM the pool survives (tests/mpi_ulfm.rs); rank 0's loss ends the
    // job either way.
    let ft = common::mpi_job::fault_tolerant() && name != "kill_agent";
    let run = common::mpi_job::run_job_with(me, me, name, HARD_LIMIT, 2, ft);
    let show = show(name, &run);
    match name {
        "kill_agent" | "kill_rank0" | "hard_exit_rank0" => {
            assert_ne!(run.code, Some(0), "{show}");
            if name == "hard_exit_rank0" {
                // It hung until the hard limit when the agents did not watch rank 0.
                assert!(run.took < Duration::from_secs(20), "{show}");
            }
            all_ended(
                &format!("{name}: every rank, worker and task child of the job is gone"),
                &run.stdout,
            );
        }
        "panic_mid_send" => {
            // The panic unwinds out of main (after the scope's thread ends its call).
            assert_eq!(run.code, Some(101), "{show}");
            assert!(run.took < Duration::from_secs(40), "{show}");
            all_ended(
                &format!("{name}: every rank and worker of the job is gone"),
                &run.stdout,
            );
        }
        "exit_busy" | "exit_thread" | "exit_join" => {
            let code = match name {
                "exit_busy" => 3,
                "exit_thread" => 4,
                _ => 5,
            };
            assert!(run.took < Duration::from_secs(30), "{show}");
            assert_eq!(run.code, Some(code), "{show}");
            all_ended(
                &format!("{name}: every rank, worker and task child of the job is gone"),
                &run.stdout,
            );
        }
        _ => check_ok(name, &run, &show),
    }
    verbose(&show);
    run.took
}
