//! Running this test binary as an MPI job (`mpirun -n 3`), for the harness-less MPI
//! tests: started by `cargo test`, they run each scenario as a job of their own and
//! check how it ended.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::Pool;

use super::{Trace, sleep_ms};

/// Workers of each of the two agents.
pub(crate) const PER_AGENT: usize = 2;

/// How one `mpirun` ended.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) took: Duration,
}

/// The MPI rank of the agent whose worker runs a task (workers inherit its environment).
pub(crate) fn agent_rank() -> u32 {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The `main` of a harness-less MPI test: started by `mpirun` with a scenario name,
/// runs `scenario` (then prints `scenario NAME: ok`); started otherwise, runs `drive`.
pub(crate) fn main_with(scenario: fn(&str), drive: fn()) {
    procpool::init();
    match (procpool::mpi_rank(), std::env::args().nth(1)) {
        (Some(_), Some(name)) => {
            scenario(&name);
            println!("scenario {name}: ok");
        }
        _ => drive(),
    }
}

// ---- tasks (they run on the agents' workers) ------------------------------------------

/// The rank, pid and parent pid (the agent) of the worker that runs it.
pub(crate) fn where_and_who(_: u32) -> (u32, u32, u32) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    (agent_rank(), std::process::id(), parent)
}

/// Sleeps `ms`, then returns the rank and pid of the worker that ran it.
pub(crate) fn sleeps(ms: u64) -> (u32, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (agent_rank(), std::process::id())
}

/// Sleeps `ms`, then returns its trace and the rank of the worker that ran it.
pub(crate) fn traced(ms: u64) -> (Trace, u32) {
    (sleep_ms(ms), agent_rank())
}

// ---- scenario helpers (rank 0 of an `mpirun` job) -------------------------------------

/// A pool over MPI, `PER_AGENT` workers on each agent.
pub(crate) fn mpi_pool() -> Pool {
    Pool::builder()
        .mpi()
        .workers(PER_AGENT)
        .build()
        .expect("an MPI pool")
}

/// Runs 100 one-item tasks on `pool`: what each saw (rank, worker, agent), and the pids
/// of every worker and agent that ran one.
pub(crate) fn job_pids(pool: &Pool) -> (Vec<(u32, u32, u32)>, BTreeSet<u32>) {
    let who = pool.with_chunk_size(1).map(where_and_who, 0..100).unwrap();
    let mut pids: BTreeSet<u32> = who.iter().map(|w| w.1).collect();
    pids.extend(who.iter().map(|w| w.2));
    (who, pids)
}

/// Checks that both agents (ranks 1 and 2) serve a new pool.
pub(crate) fn both_agents_serve() {
    let pool = mpi_pool();
    let who = pool.with_chunk_size(1).map(where_and_who, 0..40).unwrap();
    let ranks: BTreeSet<u32> = who.iter().map(|w| w.0).collect();
    assert_eq!(ranks, BTreeSet::from([1, 2]));
}

// ---- the driver (`cargo test`) --------------------------------------------------------

/// Runs the scenarios among `names` that contain the first non-flag argument (all
/// without one), each through `check`, prints a line a scenario (`test {label} {name}
/// ... ok`, with the time `check` returns if any) and the closing count; exits 1 if any
/// failed.
pub(crate) fn drive(label: &str, names: &[&str], check: impl Fn(&Path, &str) -> Option<Duration>) {
    let me = std::env::current_exe().unwrap();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0, Vec::new());
    for &name in names {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        print!("test {label} {name} ... ");
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&me, name))) {
            Ok(Some(took)) => {
                println!("ok ({took:.1?})");
                passed += 1;
            }
            Ok(None) => {
                println!("ok");
                passed += 1;
            }
            Err(_) => {
                println!("FAILED");
                failed.push(name);
            }
        }
    }
    // The same closing line as the other harness-less tests (summed by `.ci/run`).
    println!("{passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        eprintln!("failed {label} scenarios: {failed:?}");
        std::process::exit(1);
    }
}

/// How scenario `name`'s job ended, for assert messages.
pub(crate) fn show(name: &str, run: &Run) -> String {
    format!(
        "scenario {name}: exit {:?} after {:.1?}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.took, run.stdout, run.stderr
    )
}

/// Checks that scenario `name` ended well (exit 0, its closing line printed).
pub(crate) fn check_ok(name: &str, run: &Run, show: &str) {
    assert_eq!(run.code, Some(0), "{show}");
    assert!(
        run.stdout.contains(&format!("scenario {name}: ok")),
        "{show}"
    );
}

/// Prints `show` if `PROCPOOL_MPI_VERBOSE` is set.
pub(crate) fn verbose(show: &str) {
    if std::env::var_os("PROCPOOL_MPI_VERBOSE").is_some() {
        println!("{show}");
    }
}

/// The Open MPI major version these tests were built against (its headers).
pub(crate) fn built_major() -> u32 {
    mpi::ffi::OMPI_MAJOR_VERSION
}

/// Whether jobs run with ULFM (`--with-ft ulfm`): built against Open MPI 5 or later.
pub(crate) fn fault_tolerant() -> bool {
    built_major() >= 5
}

/// The `mpirun` of the Open MPI these tests were built against: `PROCPOOL_MPIRUN` (set
/// to the .venv's by the workspace's .cargo/config.toml), else the one on `PATH`; the
/// first whose major version matches (a binary built against one Open MPI's headers
/// must load that one's library, which its `mpirun` sets up).
fn mpirun() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PROCPOOL_MPIRUN") {
        candidates.push(p.into());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|d| d.join("mpirun")));
    }
    let want = built_major();
    let mut seen = Vec::new();
    for c in candidates.into_iter().filter(|p| p.exists()) {
        let out = Command::new(&c).arg("--version").output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let major = text.split(|ch: char| ch.is_whitespace()).find_map(|w| {
            w.split('.')
                .next()?
                .parse::<u32>()
                .ok()
                .filter(|_| w.contains('.'))
        });
        if major == Some(want) {
            return c;
        }
        seen.push(format!(
            "{} ({})",
            c.display(),
            text.lines().next().unwrap_or("?")
        ));
    }
    panic!(
        "no mpirun of Open MPI {want} (which these tests were built against) found; seen: \
         {seen:?}. Run scripts/setup (it installs Open MPI 5 into .venv), or set \
         PROCPOOL_MPIRUN; after installing another MPI, `cargo clean -p mpi-sys` rebuilds \
         the bindings against it"
    )
}

/// Runs `mpirun -n 3` (`rank0` as rank 0, `agents` as ranks 1 and 2, each with the
/// argument `name`), killing the job past `limit`; with ULFM when the build has it.
pub(crate) fn run_job(rank0: &Path, agents: &Path, name: &str, limit: Duration) -> Run {
    run_job_with(rank0, agents, name, limit, 2, fault_tolerant())
}

/// Runs `mpirun` with `rank0` as rank 0 and `n_agents` ranks of `agents`, each with the
/// argument `name`, with ULFM on when `ft`, killing the job past `limit`.
///
/// A job whose runtime failed to start (`mpirun` says so before any rank ran: Open MPI's
/// PMIx server could not start its listener thread, seen once in a CI run while the
/// machine was busy) is started again, up to twice, with a line on stderr: no rank ran,
/// so there is nothing of procpool's to check in it.
pub(crate) fn run_job_with(
    rank0: &Path,
    agents: &Path,
    name: &str,
    limit: Duration,
    n_agents: usize,
    ft: bool,
) -> Run {
    let mut attempt = 0;
    loop {
        let run = run_job_once(rank0, agents, name, limit, n_agents, ft);
        let runtime_failed = run.code != Some(0)
            && run.stdout.is_empty()
            && run.stderr.contains("listener thread failed to start");
        if !runtime_failed || attempt == 2 {
            return run;
        }
        attempt += 1;
        eprintln!(
            "scenario {name}: mpirun's runtime failed to start (no rank ran); starting the job again\n{}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_job_once(
    rank0: &Path,
    agents: &Path,
    name: &str,
    limit: Duration,
    n_agents: usize,
    ft: bool,
) -> Run {
    let start = Instant::now();
    let mut cmd = Command::new(mpirun());
    if built_major() >= 5 {
        cmd.args(["--map-by", ":OVERSUBSCRIBE"]);
        if ft {
            cmd.args(["--with-ft", "ulfm"]);
        }
    }
    cmd.args(["-n", "1"])
        .arg(rank0)
        .arg(name)
        .args([":", "-n", &n_agents.to_string()])
        .arg(agents)
        .arg(name)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("start mpirun");
    let group = child.id() as i32;
    let out_reader = read_all(child.stdout.take().unwrap());
    let err_reader = read_all(child.stderr.take().unwrap());
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            // SAFETY: signals the process group of the job this test started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "scenario {name}: the MPI job hung (killed after {limit:?})\n{}",
                err_reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        took: start.elapsed(),
    }
}

fn read_all(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The pids a scenario printed on a line `pids: {1, 2, 3}`.
pub(crate) fn pids_in(stdout: &str) -> Vec<u32> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids: "))
        .expect("the scenario printed its pids");
    line.trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

/// Waits until none of `pids` exists (10 s at most).
pub(crate) fn all_gone(name: &str, pids: &[u32]) {
    super::wait_until(
        &format!("scenario {name}: every rank and worker of the job is gone"),
        Duration::from_secs(10),
        || pids.iter().all(|&p| !super::exists(p)),
    );
}
