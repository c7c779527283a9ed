//! An MPI pool that survives losing agents (ULFM, `mpirun --with-ft ulfm`): agent ranks
//! SIGKILLed in the middle of maps, two of three one after the other, all of them, one
//! while it sends a 64 MiB result, one while its pool starts. Like the other MPI tests,
//! this binary runs itself: started by `cargo test`, it runs each scenario as an
//! `mpirun` job with a hard time limit and checks it ended well (exit 0, its closing
//! line); under `mpirun`, rank 0 runs the scenario (its asserts are the checks).
//!
//! Needs an MPI with ULFM (Open MPI 5: `scripts/setup` installs it into .venv, and the
//! workspace's .cargo/config.toml builds against it). Built against an MPI without it,
//! the scenarios are skipped, saying so (a lost agent ends the job there: `mpi_pool`'s
//! `lose_agent` checks that).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::mpi_job::{
    PER_AGENT, agent_rank, check_ok, fault_tolerant, main_with, run_job_with, show, sleeps,
    verbose, where_and_who,
};
use procpool::{Error, Pool, PoolError, TaskErrorKind};

/// How long one `mpirun` may take before it counts as hung.
const HARD_LIMIT: Duration = Duration::from_secs(60);

/// Items of the maps an agent is killed in.
const N: u64 = 10_000;

/// Items per job in those maps.
const CHUNK: usize = 10;

fn main() {
    main_with(scenario, drive);
}

// ---- tasks (they run on the agents' workers) ------------------------------------------

/// A short task: its value and the rank that ran it.
fn work(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_micros(200));
    (3 * x + 1, agent_rank())
}

/// 64 MiB of `i`; on rank 1, the worker kills its agent `i` ms after the task returns,
/// while the result is on its way to rank 0.
fn big(i: u8) -> Vec<u8> {
    if agent_rank() == 1 {
        // SAFETY: getppid has no preconditions.
        let agent = unsafe { libc::getppid() };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(u64::from(i)));
            // SAFETY: signals this worker's own agent, a process of this job.
            unsafe { libc::kill(agent, libc::SIGKILL) };
        });
    }
    vec![i; 64 << 20]
}

/// A worker initializer that kills its agent on rank 2, while the agent's pool starts.
fn kill_agent_on_rank_2(_: ()) {
    if agent_rank() == 2 {
        // SAFETY: signals this worker's own agent, a process of this job.
        unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(5));
    }
}

// ---- scenarios (rank 0 of an `mpirun` job) --------------------------------------------

fn scenario(name: &str) {
    match name {
        "kill_mid_map" => kill_mid_map(1),
        "kill_mid_map_no_retry" => kill_mid_map(0),
        "two_of_three" => two_of_three(),
        "all_lost" => all_lost(),
        "kill_mid_send" => kill_mid_send(),
        "kill_at_start" => kill_at_start(),
        other => panic!("no scenario {other}"),
    }
}

fn pool(retries: u32) -> Pool {
    Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .retries(retries)
        .build()
        .expect("an MPI pool")
}

/// Each agent's pid, by rank (every agent runs some of 200 one-item tasks).
fn agent_pids(pool: &Pool, ranks: usize) -> BTreeMap<u32, u32> {
    let who = pool.with_chunk_size(1).map(where_and_who, 0..200).unwrap();
    let pids: BTreeMap<u32, u32> = who.iter().map(|w| (w.0, w.2)).collect();
    assert_eq!(pids.len(), ranks, "every agent ran a task: {pids:?}");
    pids
}

fn kill(pid: u32) {
    // SAFETY: signals a process of this job.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Runs the map of `N` items in jobs of `CHUNK`, killing the agent of rank `r` (its pid
/// in `pids`) after `at` results for each `(at, r)` of `kills`; checks every item came
/// back once, right, or (without retries) failed because its agent was lost; returns
/// how many failed.
fn map_with_kills(
    pool: &Pool,
    pids: &BTreeMap<u32, u32>,
    kills: &[(usize, u32)],
    retries: u32,
) -> usize {
    let mut failed = 0;
    let mut n = 0;
    let started = Instant::now();
    for (i, r) in pool.with_chunk_size(CHUNK).imap(work, 0..N).enumerate() {
        for &(at, rank) in kills {
            if i == at {
                kill(pids[&rank]);
            }
        }
        n += 1;
        match r {
            Ok((v, _)) => assert_eq!(v, 3 * i as u64 + 1, "item {i}"),
            Err(e) => {
                let task = e.as_task().unwrap_or_else(|| panic!("item {i}: {e}"));
                assert!(
                    matches!(task.kind(), TaskErrorKind::AgentLost { agent } if agent.starts_with("MPI rank ")),
                    "item {i}: {e}"
                );
                assert!(retries == 0, "item {i} failed within the retries: {e}");
                assert_eq!(task.attempts(), 1, "{e}");
                assert!(
                    e.to_string().contains("host"),
                    "the error names the host: {e}"
                );
                failed += 1;
            }
        }
    }
    assert_eq!(n, N as usize, "every item came back once");
    println!(
        "map of {N} with {} kills: {:.2?}, {failed} failed",
        kills.len(),
        started.elapsed()
    );
    failed
}

fn kill_mid_map(retries: u32) {
    let pool = pool(retries);
    let pids = agent_pids(&pool, 2);
    let agents = pool
        .stats()
        .agents
        .expect("an MPI pool's stats name its agents");
    assert!(agents.survives_loss, "{agents:?}");
    assert_eq!((agents.started, agents.alive), (2, 2));
    let failed = map_with_kills(&pool, &pids, &[(N as usize / 3, 1)], retries);
    // Only the jobs that may have been running on the lost agent's workers fail (none
    // with retries); those sent ahead of them run elsewhere.
    assert!(failed <= PER_AGENT * CHUNK, "{failed} items failed");
    let agents = pool.stats().agents.unwrap();
    assert_eq!(
        (agents.alive, agents.workers_alive),
        (1, PER_AGENT),
        "{agents:?}"
    );
    assert!(
        agents.lost[0].starts_with("MPI rank 1 (host "),
        "{agents:?}"
    );
    // A second map runs on the agent left.
    let out = pool.map(work, 0..1000u64).unwrap();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &(v, r))| v == 3 * i as u64 + 1 && r == 2)
    );
}

fn two_of_three() {
    let pool = pool(2);
    let pids = agent_pids(&pool, 3);
    let failed = map_with_kills(&pool, &pids, &[(N as usize / 4, 1), (N as usize / 2, 2)], 2);
    assert_eq!(failed, 0);
    let agents = pool.stats().agents.unwrap();
    assert_eq!((agents.started, agents.alive), (3, 1), "{agents:?}");
    let out = pool.with_chunk_size(1).map(work, 0..200u64).unwrap();
    let ranks: BTreeSet<u32> = out.iter().map(|w| w.1).collect();
    assert_eq!(ranks, BTreeSet::from([3]));
}

fn all_lost() {
    let pool = pool(0);
    let pids = agent_pids(&pool, 2);
    let handles: Vec<_> = (0..2 * PER_AGENT)
        .map(|_| pool.spawn(sleeps, 30_000).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for &p in pids.values() {
        kill(p);
    }
    for h in handles {
        let e = h.join().unwrap_err();
        let ok = match &e {
            Error::Task(t) => matches!(t.kind(), TaskErrorKind::AgentLost { .. }),
            _ => e.to_string().contains("every agent of the pool was lost"),
        };
        assert!(ok, "{e}");
    }
    // The pool is broken, and says why.
    let e = pool.apply(|x: u32| x, 1).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("every agent of the pool was lost"), "{text}");
    assert!(
        text.contains("MPI rank 1") && text.contains("MPI rank 2"),
        "{text}"
    );
    drop(pool);
    // So is a new one: no agent is left.
    let e = Pool::builder().mpi().build().unwrap_err();
    assert!(
        matches!(&e, Error::Pool(PoolError::AgentsLost { lost }) if lost.len() == 2),
        "{e}"
    );
}

fn kill_mid_send() {
    let pool = pool(1);
    agent_pids(&pool, 2);
    let delays: Vec<u8> = vec![0, 3, 10, 30];
    let started = Instant::now();
    let out = pool.with_chunk_size(1).map(big, delays.clone()).unwrap();
    for (d, v) in delays.iter().zip(&out) {
        assert_eq!(v.len(), 64 << 20);
        assert!(v.iter().all(|b| b == d), "result {d} is whole and right");
    }
    println!(
        "4 results of 64 MiB with rank 1 killed: {:.2?}",
        started.elapsed()
    );
    let agents = pool.stats().agents.unwrap();
    assert_eq!(agents.alive, 1, "{agents:?}");
}

fn kill_at_start() {
    let pool = Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .retries(1)
        .initializer(kill_agent_on_rank_2, ())
        .build()
        .expect("the pool starts with the agent left");
    let out = pool.with_chunk_size(1).map(work, 0..500u64).unwrap();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &(v, r))| v == 3 * i as u64 + 1 && r == 1)
    );
    let until = Instant::now() + Duration::from_secs(10);
    while pool.stats().agents.unwrap().alive != 1 {
        assert!(Instant::now() < until, "{:?}", pool.stats().agents);
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- the driver (`cargo test`) --------------------------------------------------------

const NAMES: [&str; 6] = [
    "kill_mid_map",
    "kill_mid_map_no_retry",
    "two_of_three",
    "all_lost",
    "kill_mid_send",
    "kill_at_start",
];

fn drive() {
    if !fault_tolerant() {
        println!(
            "mpi_ulfm: built against an MPI without ULFM (Open MPI {}), whose jobs end with a \
             lost agent; skipped. scripts/setup installs Open MPI 5 into .venv.",
            common::mpi_job::built_major()
        );
        println!("0 passed, 0 failed");
        return;
    }
    common::mpi_job::drive("mpi ulfm", &NAMES, |me, name| {
        let agents = if name == "two_of_three" { 3 } else { 2 };
        let run = run_job_with(me, me, name, HARD_LIMIT, agents, true);
        let show = show(name, &run);
        check_ok(name, &run, &show);
        verbose(&show);
        Some(run.took)
    });
}
