//! The MPI benchmark: a procpool pool over the agents of an `mpirun` job, against a
//! local pool of the same total workers and against `mpi4py.futures` on the same ranks.
//!
//! ```text
//! cargo build --release -p procpool-bench --features mpi --bin mpi_bench
//! target/release/mpi_bench --help
//! ```
//!
//! Run without `mpirun`: it starts `mpirun -n N` (default 3) on itself, then on
//! `mpi4py_bench.py` when the interpreter has mpi4py, and prints one table. Under
//! `mpirun`, rank 0 measures and prints `RESULT name value` lines; the others serve.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::Pool;

/// The seed workload: a sum of square roots.
fn compute(n: u64) -> f64 {
    (1..=n).map(|i| (i as f64).sqrt()).sum()
}

fn double(x: u64) -> u64 {
    x * 2
}

fn trivial(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// Seed tasks per run, and each one's run time.
const SEED_TASKS: usize = 32;
const SEED_TASK_TIME: Duration = Duration::from_millis(10);
/// Items of the tiny workload.
const ITEMS: u64 = 10_000;

const USAGE: &str = "\
mpi_bench: a procpool pool over the agents of an `mpirun` job, against a local pool of the
same total workers and against mpi4py.futures on the same ranks. Run it without mpirun: it
starts `mpirun -n N` on itself (and on mpi4py_bench.py when the interpreter has mpi4py),
then prints one table on standard output.

Usage:
  mpi_bench [FLAGS]
  mpi_bench -h | --help    this text

Flags:
  --quick          a short run: fewer and shorter measurements
  --ranks N        the job's ranks, rank 0 included (default: 3); the launcher is told
                   to oversubscribe, so N may exceed the host's cores
  --python PATH    the Python interpreter for mpi4py.futures (default: python3)
  --no-python      skip mpi4py.futures
  --loss           instead: losing an agent (needs ULFM: Open MPI 5, run with
                   `mpirun --with-ft ulfm`, whose mpirun is PROCPOOL_MPIRUN, set by the
                   workspace to .venv's): the time from an agent's SIGKILL to its jobs
                   running on the other agent, and the share of a map's work lost when
                   one of two agents dies halfway through (a 20 s map, not 60 s)
";

/// Command-line settings.
#[derive(Debug)]
struct Args {
    quick: bool,
    loss: bool,
    /// Under mpirun with `--loss`: which measurement (each needs a job of its own, as a
    /// lost rank stays lost).
    part: String,
    ranks: usize,
    python: Option<String>,
}

fn parse() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        quick: false,
        loss: false,
        part: String::new(),
        ranks: 3,
        python: Some("python3".into()),
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("quick") => a.quick = true,
            Long("loss") => a.loss = true,
            Long("loss-part") => a.part = p.value()?.string()?,
            Long("ranks") => a.ranks = p.value()?.parse()?,
            Long("python") => a.python = Some(p.value()?.string()?),
            Long("no-python") => a.python = None,
            _ => return Err(arg.unexpected()),
        }
    }
    if a.ranks < 2 {
        return Err("--ranks must be 2 or more: rank 0 measures, the others serve".into());
    }
    Ok(Some(a))
}

fn main() {
    procpool::init();
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mpi_bench: {e}\nRun `mpi_bench --help` for the flags.");
            std::process::exit(2);
        }
    };
    if let Some((0, size)) = procpool::mpi_rank() {
        if args.loss {
            loss::measure(&args.part);
        } else {
            measure(args.quick, size);
        }
        return;
    }
    if args.loss {
        loss::drive(args.quick);
        return;
    }
    drive(&args);
}

/// Losing an agent: how fast its jobs run elsewhere, and how much of a map is lost.
mod loss {
    use std::io::Write;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use procpool::Pool;

    use super::result;

    fn rank() -> u32 {
        std::env::var("OMPI_COMM_WORLD_RANK")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(u32::MAX)
    }

    fn now_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// On rank 1, holds its worker for 30 s; elsewhere returns at once. Its start time,
    /// rank and agent's pid.
    fn hold(_: u32) -> (u64, u32, u32) {
        let start = now_ns();
        if rank() == 1 {
            std::thread::sleep(Duration::from_secs(30));
        }
        // SAFETY: getppid has no preconditions.
        (start, rank(), unsafe { libc::getppid() } as u32)
    }

    /// 20 ms of sleep, each start counted in the file `runs` (one byte a start: a run
    /// cut short by its agent's loss counts too).
    fn item((_, runs): (u64, String)) -> (u32, u32) {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&runs) {
            let _ = f.write_all(b".");
        }
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: getppid has no preconditions.
        (rank(), unsafe { libc::getppid() } as u32)
    }

    fn kill(pid: u32) {
        // SAFETY: signals an agent of this job.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }

    pub(super) fn measure(part: &str) {
        match part {
            "detect" => detect(),
            "c1" => map_loss("c1", Some(1), true),
            "auto" => map_loss("auto", None, true),
            "auto_nokill" => map_loss("auto_nokill", None, false),
            other => panic!("no --loss-part {other}"),
        }
    }

    fn detect() {
        // 1. Rank 1's workers hold their jobs, rank 2's are free: kill rank 1 and time
        // until its jobs start on rank 2.
        let pool = Pool::builder().mpi().workers(2).retries(1).build().unwrap();
        let agents = pool.stats().agents.unwrap();
        assert!(agents.survives_loss, "no ULFM: {:?}", agents.note);
        let handles: Vec<_> = (0..4).map(|i| pool.spawn(hold, i).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        // Rank 1's agent, found on this host (one host here).
        let agent1 = agent_pid_of_rank(1).expect("rank 1's agent pid");
        let t0 = Instant::now();
        let t0_ns = now_ns();
        kill(agent1);
        let mut detected = None;
        while detected.is_none() && t0.elapsed() < Duration::from_secs(20) {
            if pool.stats().agents.unwrap().alive == 1 {
                detected = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut restarted = Vec::new();
        for h in handles {
            let (start, r, _) = h.join().unwrap();
            if start > t0_ns && r == 2 {
                restarted.push(Duration::from_nanos(start - t0_ns));
            }
        }
        let last = restarted.iter().max().copied().unwrap_or_default();
        result(
            "loss_detected_s",
            detected.map_or(f64::NAN, |d| d.as_secs_f64()),
        );
        result("loss_rerun_jobs", restarted.len() as f64);
        result("loss_jobs_elsewhere_s", last.as_secs_f64());
    }

    fn map_loss(label: &str, chunk: Option<usize>, kills: bool) {
        // 2. A map of 1000 items of 20 ms on 2 agents of 2 workers (about 5 s), rank 1
        // killed halfway: how many item starts were lost (cut short, run again); and the
        // same map without a kill.
        {
            let dir = std::env::temp_dir().join(format!("procpool-loss-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let runs = dir.join(format!("runs-{label}"));
            std::fs::write(&runs, b"").unwrap();
            let runs_s = runs.display().to_string();
            let pool = Pool::builder().mpi().workers(2).retries(1).build().unwrap();
            let n = 1000u64;
            let items: Vec<(u64, String)> = (0..n).map(|i| (i, runs_s.clone())).collect();
            let t = Instant::now();
            let mut killed = false;
            let mut count = 0;
            let it = match chunk {
                Some(c) => pool.with_chunk_size(c).imap(item, items),
                None => pool.imap(item, items),
            };
            for r in it {
                let (rk, agent) = r.unwrap();
                count += 1;
                if kills && !killed && count >= n / 2 && rk == 1 {
                    kill(agent);
                    killed = true;
                }
            }
            let wall = t.elapsed();
            let ran = std::fs::metadata(&runs).map_or(0, |m| m.len());
            result(&format!("loss_map_{label}_wall_s"), wall.as_secs_f64());
            result(&format!("loss_map_{label}_runs"), ran as f64);
            result(
                &format!("loss_map_{label}_lost_share"),
                (ran as f64 - n as f64) / n as f64,
            );
            let _ = std::fs::remove_dir_all(&dir);
            drop(pool);
        }
    }

    /// The pid of the agent of `rank` on this host (its environment names the rank).
    fn agent_pid_of_rank(rank: u32) -> Option<u32> {
        let me = std::fs::read_link("/proc/self/exe").ok()?;
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&me) {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let want = format!("OMPI_COMM_WORLD_RANK={rank}");
            let is_rank = env.split(|&b| b == 0).any(|v| v == want.as_bytes());
            let parent_is_worker = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                .is_some_and(|pp| {
                    std::fs::read_link(format!("/proc/{pp}/exe")).ok().as_ref() == Some(&me)
                });
            if is_rank && !parent_is_worker {
                return Some(pid);
            }
        }
        None
    }

    pub(super) fn drive(quick: bool) {
        let mpirun = super::mpirun_path();
        let me = std::env::current_exe().expect("this program's path");
        let parts: &[&str] = if quick {
            &["detect"]
        } else {
            &["detect", "c1", "auto", "auto_nokill"]
        };
        let mut text = String::new();
        let mut ok = true;
        for part in parts {
            eprintln!("mpi_bench: losing an agent ({part}), {mpirun} --with-ft ulfm -n 3 ...");
            let out = std::process::Command::new(&mpirun)
                .args(["--with-ft", "ulfm", "--map-by", ":OVERSUBSCRIBE", "-n", "3"])
                .arg(&me)
                .args(["--loss", "--loss-part", part])
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run mpirun");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!("mpi_bench: the job ({part}) ended with {}", out.status);
                ok = false;
            }
        }
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("RESULT {k} "))?.parse::<f64>().ok())
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        println!("mpirun --with-ft ulfm -n 3: 2 agents of 2 workers; rank 1 SIGKILLed");
        println!(
            "agent loss seen by rank 0 (s)           {}",
            f(get("loss_detected_s"))
        );
        println!(
            "its {} held jobs running on rank 2 (s)     {}",
            f(get("loss_rerun_jobs")),
            f(get("loss_jobs_elsewhere_s"))
        );
        for label in ["c1", "auto", "auto_nokill"] {
            println!(
                "map of 1000 x 20 ms ({label}): wall {} s, {} starts, lost share {}",
                f(get(&format!("loss_map_{label}_wall_s"))),
                f(get(&format!("loss_map_{label}_runs"))),
                f(get(&format!("loss_map_{label}_lost_share"))),
            );
        }
        if !ok {
            std::process::exit(1);
        }
    }
}

/// The `n` for which `compute(n)` takes about `per_task`.
fn calibrate(per_task: Duration) -> u64 {
    let mut n = 100_000u64;
    loop {
        let t = Instant::now();
        black_box(compute(black_box(n)));
        let d = t.elapsed();
        if d >= Duration::from_millis(5) {
            return ((n as f64 * per_task.as_secs_f64() / d.as_secs_f64()) as u64).max(1);
        }
        n *= 4;
    }
}

fn result(name: &str, value: f64) {
    println!("RESULT {name} {value}");
}

/// Rank 0: every figure on the MPI pool, then on a local pool of as many workers.
fn measure(quick: bool, ranks: usize) {
    let seed_n = calibrate(SEED_TASK_TIME);
    result("seed_n", seed_n as f64);
    let t = Instant::now();
    for _ in 0..SEED_TASKS {
        black_box(compute(black_box(seed_n)));
    }
    result("seed_sequential_s", t.elapsed().as_secs_f64());
    let mpi = Pool::builder().mpi().build().expect("an MPI pool");
    let workers = mpi.stats().workers.len();
    result("ranks", ranks as f64);
    result("workers", workers as f64);
    run_all("mpi", &mpi, seed_n, quick);
    mpi.join();
    let local = Pool::builder()
        .workers(workers)
        .build()
        .expect("a local pool");
    run_all("local", &local, seed_n, quick);
}

fn run_all(sys: &str, pool: &Pool, seed_n: u64, quick: bool) {
    pool.with_chunk_size(1).map(trivial, 0..64).unwrap();
    let reps = if quick { 1 } else { 3 };
    let best = |f: &dyn Fn() -> Duration| (0..reps).map(|_| f()).min().unwrap();
    let d = best(&|| {
        let t = Instant::now();
        pool.map(compute, vec![seed_n; SEED_TASKS]).unwrap();
        t.elapsed()
    });
    result(&format!("{sys}_seed_wall_s"), d.as_secs_f64());
    for (name, chunk) in [("c1", Some(1)), ("auto", None)] {
        let d = best(&|| {
            let t = Instant::now();
            let out = match chunk {
                Some(c) => pool.with_chunk_size(c).map(double, 0..ITEMS),
                None => pool.map(double, 0..ITEMS),
            }
            .unwrap();
            assert_eq!(out[ITEMS as usize - 1], 2 * (ITEMS - 1));
            t.elapsed()
        });
        result(
            &format!("{sys}_double_{name}_items_s"),
            ITEMS as f64 / d.as_secs_f64(),
        );
    }
    let big = 1_000_000u64;
    let d = best(&|| {
        let t = Instant::now();
        let n = pool.imap_unordered(double, 0..big).count();
        assert_eq!(n as u64, big);
        t.elapsed()
    });
    result(
        &format!("{sys}_double_1m_unordered_items_s"),
        big as f64 / d.as_secs_f64(),
    );
    let mut lat: Vec<f64> = (0..if quick { 100 } else { 500 })
        .map(|i| {
            let t = Instant::now();
            pool.apply(trivial, i).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    result(&format!("{sys}_apply_latency_us"), lat[lat.len() / 2]);
}

// ---- driver --------------------------------------------------------------------------

/// The `mpirun` of the MPI this program was built against: `PROCPOOL_MPIRUN` (the
/// workspace sets it to .venv's, with `cargo run`) when it exists, else `mpirun`.
fn mpirun_path() -> String {
    std::env::var("PROCPOOL_MPIRUN")
        .ok()
        .filter(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| "mpirun".into())
}

fn mpirun(ranks: usize, program: &[String]) -> Result<BTreeMap<String, f64>, String> {
    let out = Command::new(mpirun_path())
        .args(["-n", &ranks.to_string()])
        .env("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
        .args(program)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run mpirun: {e}"))?;
    if !out.status.success() {
        return Err(format!("mpirun {program:?} failed: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("RESULT ")?.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect())
}

fn drive(args: &Args) {
    let (quick, ranks) = (args.quick, args.ranks);
    let me = std::env::current_exe().expect("this program's path");
    let mut prog = vec![me.display().to_string()];
    if quick {
        prog.push("--quick".into());
    }
    eprintln!("mpi_bench: procpool on mpirun -n {ranks} ...");
    let rs = match mpirun(ranks, &prog) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mpi_bench: {e}");
            std::process::exit(1);
        }
    };
    let mut py = BTreeMap::new();
    if let Some(python) = &args.python {
        let has = Command::new(python)
            .args(["-c", "import mpi4py.futures"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has {
            let script = std::env::temp_dir().join("procpool_mpi4py_bench.py");
            std::fs::write(&script, include_str!("../../mpi4py_bench.py")).expect("write script");
            eprintln!("mpi_bench: mpi4py.futures on mpirun -n {ranks} ...");
            let p = [
                python.clone(),
                "-m".into(),
                "mpi4py.futures".into(),
                script.display().to_string(),
                if quick { "1" } else { "0" }.into(),
            ];
            match mpirun(ranks, &p) {
                Ok(r) => py = r,
                Err(e) => eprintln!("mpi_bench: skipping mpi4py.futures: {e}"),
            }
        } else {
            eprintln!("mpi_bench: {python} has no mpi4py; skipping mpi4py.futures (--python PATH)");
        }
    }
    report(&rs, &py, ranks);
}

fn report(rs: &BTreeMap<String, f64>, py: &BTreeMap<String, f64>, ranks: usize) {
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}", v));
    let workers = get(rs, "workers").unwrap_or(0.0);
    println!(
        "mpirun -n {ranks}: {} agents, {workers} workers in all; local pool: {workers} workers",
        ranks - 1
    );
    println!(
        "seed: {SEED_TASKS} tasks of ~{SEED_TASK_TIME:?} (each language calibrates its own); \
         sequential {} s (Rust), {} s (Python)",
        fmt(get(rs, "seed_sequential_s")),
        fmt(get(py, "seed_sequential_s"))
    );
    println!(
        "{:<38} {:>14} {:>14} {:>16}",
        "figure", "procpool MPI", "procpool local", "mpi4py.futures"
    );
    let speedup =
        |m: &BTreeMap<String, f64>, k: &str| Some(get(m, "seed_sequential_s")? / get(m, k)?);
    println!(
        "{:<38} {:>14} {:>14} {:>16}",
        "seed speedup over sequential",
        fmt(speedup(rs, "mpi_seed_wall_s")),
        fmt(speedup(rs, "local_seed_wall_s")),
        fmt(speedup(py, "seed_wall_s")),
    );
    let rows: [(&str, &str, &str, bool); 6] = [
        ("seed wall time (s)", "seed_wall_s", "seed_wall_s", false),
        (
            "x*2 items/s, chunk 1",
            "double_c1_items_s",
            "double_c1_items_s",
            true,
        ),
        (
            "x*2 items/s, automatic (mpi4py: 100)",
            "double_auto_items_s",
            "double_c100_items_s",
            true,
        ),
        (
            "x*2 items/s, mpi4py chunk 1000",
            "-",
            "double_c1000_items_s",
            true,
        ),
        (
            "x*2 items/s, unordered (1M; mpi4py 10k/1000)",
            "double_1m_unordered_items_s",
            "double_c1000u_items_s",
            true,
        ),
        (
            "one call round trip (us, median)",
            "apply_latency_us",
            "apply_latency_us",
            false,
        ),
    ];
    for (label, ours, theirs, is_rate) in rows {
        let show = |v: Option<f64>| if is_rate { rate(v) } else { fmt(v) };
        println!(
            "{label:<38} {:>14} {:>14} {:>16}",
            show(get(rs, &format!("mpi_{ours}"))),
            show(get(rs, &format!("local_{ours}"))),
            show(get(py, theirs)),
        );
    }
    if let Some(r) = get(rs, "mpi_double_c1_items_s") {
        println!(
            "per-task overhead at chunk 1 over MPI: {:.1} us of dispatch per item ({} workers)",
            1e6 / r,
            workers
        );
    }
}
