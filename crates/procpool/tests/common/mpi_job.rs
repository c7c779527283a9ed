//! Running this test binary as an MPI job (`mpirun -n 3`), for the harness-less MPI
//! tests: started by `cargo test`, they run each scenario as a job of their own and
//! check how it ended.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

fn mpirun() -> PathBuf {
    if let Some(p) = std::env::var_os("PROCPOOL_MPIRUN") {
        return p.into();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "mpirun not found on PATH: install an MPI (apt-get install openmpi-bin \
             libopenmpi-dev) or set PROCPOOL_MPIRUN"
        )
    })
}

/// Runs `mpirun -n 3` (`rank0` as rank 0, `agents` as ranks 1 and 2, each with the
/// argument `name`), killing the job past `limit`.
pub(crate) fn run_job(rank0: &Path, agents: &Path, name: &str, limit: Duration) -> Run {
    let start = Instant::now();
    let mut cmd = Command::new(mpirun());
    cmd.args(["-n", "1"])
        .arg(rank0)
        .arg(name)
        .args([":", "-n", "2"])
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
