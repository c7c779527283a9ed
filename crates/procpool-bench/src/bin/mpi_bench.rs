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
";

/// Command-line settings.
#[derive(Debug)]
struct Args {
    quick: bool,
    ranks: usize,
    python: Option<String>,
}

fn parse() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        quick: false,
        ranks: 3,
        python: Some("python3".into()),
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("quick") => a.quick = true,
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
        measure(args.quick, size);
        return;
    }
    drive(&args);
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

fn mpirun(ranks: usize, program: &[String]) -> Result<BTreeMap<String, f64>, String> {
    let out = Command::new("mpirun")
        .args(["-n", &ranks.to_string()])
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
