//! Pools over MPI (feature `mpi`). MPI initializes once per process, so this test runs
//! itself: started by `cargo test`, it runs each scenario as `mpirun -n 3 <this binary>
//! <scenario>` (oversubscribed, with a hard time limit) and checks how the job ended;
//! started by `mpirun`, rank 0 runs the scenario (its asserts are the checks) and the
//! other ranks serve as agents.
//!
//! Needs `mpirun` on `PATH` (Open MPI: `apt-get install openmpi-bin libopenmpi-dev`), or
//! its path in `PROCPOOL_MPIRUN`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::mpi_job::{
    PER_AGENT, agent_rank, all_gone, check_ok, job_pids, main_with, mpi_pool, pids_in, run_job,
    show, sleeps, traced, verbose, where_and_who,
};
use common::{Trace, check_work_conserving, exists, now_nanos, timeline};
use procpool::{Error, Pool, TaskErrorKind, TaskHandle};

/// How long one `mpirun` may take before it counts as hung.
const HARD_LIMIT: Duration = Duration::from_secs(90);

fn main() {
    main_with(scenario, drive);
}

// ---- tasks (they run on the agents' workers) ------------------------------------------

fn double_where(x: u64) -> (u64, u32) {
    (x * 2, agent_rank())
}

fn crashes(x: u32) -> u32 {
    match x {
        3 => std::process::abort(),
        5 => {
            // An unmapped address (the first page is never mapped): the write faults.
            let p = std::ptr::without_provenance_mut::<u8>(16);
            // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
            unsafe { std::ptr::write_volatile(p, 1) };
            x
        }
        7 => panic!("seven is refused"),
        _ => x + 100,
    }
}

// ---- scenarios (rank 0 of an `mpirun` job) --------------------------------------------

fn scenario(name: &str) {
    match name {
        "map" => map_across_agents(),
        "faults" => faults_fail_their_task_only(),
        "timeout" => time_limit_on_an_agent(),
        "uneven" => uneven_work_is_balanced(),
        "panic" => panic_in_main(),
        "error" => error_from_main(),
        "mismatch" => other_binary_is_refused(),
        "lose_agent" => losing_an_agent_ends_the_job(),
        other => panic!("no scenario {other}"),
    }
}

fn map_across_agents() {
    let pool = mpi_pool();
    assert_eq!(pool.stats().workers.len(), 2 * PER_AGENT);
    let n = 20_000u64;
    let out = pool.map(double_where, 0..n).unwrap();
    assert_eq!(out.len(), n as usize);
    assert!(out.iter().enumerate().all(|(i, &(v, _))| v == 2 * i as u64));
    let ranks: BTreeSet<u32> = out.iter().map(|&(_, r)| r).collect();
    assert!(ranks.is_subset(&BTreeSet::from([1, 2])), "{ranks:?}");

    // One item per job: both agents take part.
    let one: Vec<(u64, u32)> = pool
        .with_chunk_size(1)
        .imap(double_where, 0..400u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(one.iter().enumerate().all(|(i, &(v, _))| v == 2 * i as u64));
    let ranks: BTreeSet<u32> = one.iter().map(|&(_, r)| r).collect();
    assert_eq!(ranks, BTreeSet::from([1, 2]), "both agents ran items");

    let mut un: Vec<(usize, u64)> = pool
        .imap_unordered(|x: u64| x + 1, 0..1000u64)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    un.sort_unstable();
    assert!(
        un.iter()
            .enumerate()
            .all(|(i, &(j, v))| i == j && v == i as u64 + 1)
    );

    assert_eq!(
        pool.apply(|s: String| s.len(), "four".to_string()).unwrap(),
        4
    );
    let h = pool.spawn(|x: u32| x * 3, 7).unwrap();
    assert_eq!(h.join().unwrap(), 21);

    // Cancelling a long remote task kills its worker; the pool goes on.
    let h = pool.spawn(sleeps, 60_000).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    h.cancel();
    let e = h.join().unwrap_err();
    assert!(
        matches!(
            e.as_task().map(|t| t.kind()),
            Some(TaskErrorKind::Cancelled)
        ),
        "{e}"
    );
    let killed = e
        .as_task()
        .and_then(|t| t.pid())
        .expect("the remote worker's pid");
    common::wait_until(
        "the cancelled task's worker is gone",
        Duration::from_secs(10),
        || !exists(killed),
    );
    assert_eq!(pool.map(|x: u8| x, [1, 2, 3]).unwrap(), [1, 2, 3]);

    // An imap dropped half-way: the agents drop its jobs, and their room comes back.
    let first: Vec<_> = pool
        .with_chunk_size(1)
        .imap(sleeps, [30u64; 400])
        .take(3)
        .collect();
    assert_eq!(first.len(), 3);
    common::wait_until(
        "the dropped call's jobs are gone",
        Duration::from_secs(20),
        || pool.stats().in_flight == 0,
    );
    let after = pool.with_chunk_size(1).map(where_and_who, 0..100).unwrap();
    let ranks: BTreeSet<u32> = after.iter().map(|w| w.0).collect();
    assert_eq!(ranks, BTreeSet::from([1, 2]));

    // Errors are those of a local pool: the first failed item, by index.
    let e = pool.with_chunk_size(1).map(crashes, 0..10).unwrap_err();
    assert_eq!(e.as_task().map(|t| t.index()), Some(3), "{e}");

    // One MPI pool at a time; another once it is joined, with an initializer that runs
    // in every remote worker.
    let second = Pool::builder().mpi().build().unwrap_err();
    assert!(
        matches!(second, Error::Pool(procpool::PoolError::Config(_))),
        "{second}"
    );
    pool.join();
    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .initializer(remember, 41)
        .build()
        .unwrap();
    let seen = pool.with_chunk_size(1).map(remembered, 0..100).unwrap();
    assert!(seen.iter().all(|&(v, _)| v == 42), "{seen:?}");
    let ranks: BTreeSet<u32> = seen.iter().map(|&(_, r)| r).collect();
    assert_eq!(ranks, BTreeSet::from([1, 2]));
}

static REMEMBERED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn remember(v: u32) {
    REMEMBERED.store(v + 1, std::sync::atomic::Ordering::Relaxed);
}

fn remembered(_: u32) -> (u32, u32) {
    (
        REMEMBERED.load(std::sync::atomic::Ordering::Relaxed),
        agent_rank(),
    )
}

fn faults_fail_their_task_only() {
    let pool = mpi_pool();
    let out: Vec<Result<u32, Error>> = pool.with_chunk_size(1).imap(crashes, 0..10).collect();
    for (i, r) in out.iter().enumerate() {
        match (i, r) {
            (3, Err(e)) => assert!(
                matches!(
                    e.as_task().map(|t| t.kind()),
                    Some(TaskErrorKind::WorkerDied { death }) if death.signal_name() == Some("SIGABRT")
                ),
                "{e}"
            ),
            (5, Err(e)) => assert!(
                matches!(
                    e.as_task().map(|t| t.kind()),
                    Some(TaskErrorKind::WorkerDied { death }) if death.signal_name() == Some("SIGSEGV")
                ),
                "{e}"
            ),
            (7, Err(e)) => {
                assert!(e.to_string().contains("seven is refused"), "{e}");
            }
            (i, Ok(v)) => assert_eq!(*v, i as u32 + 100),
            (i, Err(e)) => panic!("item {i} failed: {e}"),
        }
    }
    // The agents replaced their workers and serve on, every one of them.
    let after = pool.with_chunk_size(1).map(where_and_who, 0..200).unwrap();
    let ranks: BTreeSet<u32> = after.iter().map(|w| w.0).collect();
    assert_eq!(ranks, BTreeSet::from([1, 2]));
    println!("faults: {}", out.iter().filter(|r| r.is_err()).count());
}

fn time_limit_on_an_agent() {
    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let before = pool.with_chunk_size(1).map(where_and_who, 0..50).unwrap();
    let out: Vec<Result<(u32, u32), Error>> = pool.imap(sleeps, [10, 20_000, 10, 30]).collect();
    assert!(
        out[0].is_ok() && out[2].is_ok() && out[3].is_ok(),
        "{out:?}"
    );
    let e = out[1].as_ref().unwrap_err();
    match e.as_task().map(|t| t.kind()) {
        Some(TaskErrorKind::TimedOut { limit, ran }) => {
            assert_eq!(*limit, Duration::from_millis(500));
            assert!(*ran >= *limit, "{e}");
        }
        _ => panic!("expected a time-out, got {e}"),
    }
    // The killed worker was one of those seen before, and it is gone.
    let pid = e.as_task().and_then(|t| t.pid()).expect("the worker's pid");
    assert!(
        before.iter().any(|w| w.1 == pid),
        "{pid} is not a worker seen"
    );
    common::wait_until(
        "the timed-out worker is gone",
        Duration::from_secs(10),
        || !exists(pid),
    );
    assert_eq!(pool.map(|x: u8| x + 1, [1, 2]).unwrap(), [2, 3]);
}

fn uneven_work_is_balanced() {
    let pool = mpi_pool();
    // Warm up: every worker started.
    pool.with_chunk_size(1).map(sleeps, [20; 8]).unwrap();
    // Long items first and every other one: dealing them out in turn (or in halves)
    // would leave one agent with most of the work.
    let mut ms: Vec<u64> = Vec::new();
    for i in 0..24 {
        ms.push(if i % 2 == 0 && i < 12 { 400 } else { 30 });
    }
    let submitted = now_nanos();
    let out = pool.with_chunk_size(1).map(traced, ms.clone()).unwrap();
    let end = now_nanos();
    let traces: Vec<Trace> = out.iter().map(|o| o.0).collect();
    let mut per_agent: BTreeMap<u32, u64> = BTreeMap::new();
    for (o, m) in out.iter().zip(&ms) {
        *per_agent.entry(o.1).or_default() += m;
    }
    assert_eq!(per_agent.len(), 2, "both agents got work: {per_agent:?}");
    check_work_conserving("uneven over MPI", &traces, submitted);
    let busy: u64 = traces.iter().map(|t| t.end - t.start).sum();
    let wall = end - submitted;
    let workers = 2 * PER_AGENT as u64;
    let bound = (ms.iter().sum::<u64>() as f64 / workers as f64).max(400.0) * 1e6;
    println!(
        "uneven: work per agent (ms) {per_agent:?}; efficiency {:.2} (busy / workers x wall), \
         wall {:.0} ms, lower bound {:.0} ms\n{}",
        busy as f64 / (workers * wall) as f64,
        wall as f64 / 1e6,
        bound / 1e6,
        timeline(&traces, submitted)
    );
}

/// A pool whose pids (the ranks', workers and agents) are printed, for the driver to
/// check that none is left, with a task of a minute running on it (the task's handle
/// first: it drops before the pool, as it would declared after it).
fn busy_pool() -> (TaskHandle<(u32, u32)>, Pool) {
    let pool = mpi_pool();
    let (_, pids) = job_pids(&pool);
    println!("pids: {pids:?}");
    let running = pool.spawn(sleeps, 60_000).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (running, pool)
}

fn panic_in_main() {
    let _busy = busy_pool();
    panic!("the caller's main gives up");
}

fn error_from_main() {
    let _busy = busy_pool();
    // What returning an error from `main` does: the runtime prints it, exits with 1.
    eprintln!("Error: the caller's main returns an error");
    std::process::exit(1);
}

fn losing_an_agent_ends_the_job() {
    let pool = mpi_pool();
    // Launched without ULFM: the pool says a lost agent ends the job, and why.
    let agents = pool
        .stats()
        .agents
        .expect("an MPI pool's stats name its agents");
    assert!(!agents.survives_loss, "{agents:?}");
    assert!(
        agents.note.as_deref().is_some_and(|n| n.contains("ulfm")),
        "{agents:?}"
    );
    let (who, pids) = job_pids(&pool);
    println!("pids: {pids:?}");
    let agent = who.iter().find(|w| w.0 == 1).expect("rank 1 ran a task").2;
    let _running = pool.spawn(sleeps, 60_000).unwrap();
    // As if rank 1's host died.
    // SAFETY: signals a process of this job.
    unsafe { libc::kill(agent as i32, libc::SIGKILL) };
    // The MPI library ends the job; this never completes.
    let _ = pool.with_chunk_size(1).map(sleeps, [50; 200]);
    std::thread::sleep(Duration::from_secs(120));
}

fn other_binary_is_refused() {
    let e = Pool::builder().mpi().build().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Pool(procpool::PoolError::Handshake {
                reason: procpool::HandshakeError::BinaryMismatch { .. },
                ..
            })
        ),
        "{e}"
    );
    // A local pool still works.
    let local = Pool::builder().workers(1).build().unwrap();
    assert_eq!(local.apply(|x: u8| x, 5).unwrap(), 5);
}

// ---- the driver (`cargo test`) --------------------------------------------------------

fn drive() {
    let names = [
        "map",
        "faults",
        "timeout",
        "uneven",
        "panic",
        "error",
        "mismatch",
        "lose_agent",
        "example",
    ];
    common::mpi_job::drive("mpi", &names, |me, name| {
        check(me, name);
        None
    });
}

fn check(me: &Path, name: &str) {
    if name == "example" {
        let exe = common::example("mpi_compute", &["mpi"]);
        let run = run_job(&exe, &exe, "", HARD_LIMIT);
        let show = format!("exit {:?}\n{}\n{}", run.code, run.stdout, run.stderr);
        assert_eq!(run.code, Some(0), "{show}");
        assert!(run.stdout.contains("primes counted"), "{show}");
        assert!(
            run.stdout.contains("task 3 failed") && run.stdout.contains("SIGSEGV"),
            "{show}"
        );
        assert!(run.stdout.contains("task 5: 50"), "{show}");
        return;
    }
    let copy;
    let agents = if name == "mismatch" {
        // The same program with one byte more: another executable.
        copy = common::TempDir::new("mpi-mismatch");
        let other = copy.path().join("other");
        let mut bytes = std::fs::read(me).unwrap();
        bytes.push(0);
        std::fs::write(&other, bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        other
    } else {
        me.to_path_buf()
    };
    // Losing an agent without ULFM (as over an MPI library that lacks it) ends the job.
    let ft = common::mpi_job::fault_tolerant() && name != "lose_agent";
    let run = common::mpi_job::run_job_with(me, &agents, name, HARD_LIMIT, 2, ft);
    let show = show(name, &run);
    match name {
        "panic" => {
            assert_ne!(run.code, Some(0), "{show}");
            assert_eq!(run.code, Some(101), "{show}");
            assert!(run.stderr.contains("the caller's main gives up"), "{show}");
            all_gone(name, &pids_in(&run.stdout));
        }
        "error" => {
            assert_eq!(run.code, Some(1), "{show}");
            all_gone(name, &pids_in(&run.stdout));
        }
        "lose_agent" => {
            assert_ne!(run.code, Some(0), "{show}");
            // Open MPI names the rank, its pid and the signal.
            assert!(run.stderr.contains("rank 1"), "{show}");
            all_gone(name, &pids_in(&run.stdout));
        }
        "mismatch" => {
            assert_eq!(run.code, Some(0), "{show}");
            assert!(run.stderr.contains("runs a different executable"), "{show}");
            assert!(run.stdout.contains("scenario mismatch: ok"), "{show}");
        }
        _ => check_ok(name, &run, &show),
    }
    verbose(&show);
}
