//! The procpool benchmark: procpool against sequential code, rayon, procspawn and
//! Python's `multiprocessing.Pool` on the same workloads. See README.md.
//!
//! ```text
//! cargo run --release -p procpool-bench -- --help
//! ```

mod channels;
mod cli;
mod figures;
mod idle;
mod load;
mod maps;
mod procs;
mod pyfront;
mod pyproc;
mod python;
mod report;
mod shared_table;
mod systems;
mod uneven;
mod uneven_report;
mod uneven_run;
mod work;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cli::{Command, Config};
use figures::{Figures, Results};
use systems::{Procpool, Procspawn, Rayon, Res, Sequential, System};
use work::{Sizing, median, percentile, throughput, timed};

/// Task durations of the crossover workload, in microseconds.
pub(crate) const CROSSOVER_T_US: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
];
/// Tasks of the seed workload.
pub(crate) const SEED_TASKS: usize = 8;
/// Run time of one seed task.
pub(crate) const SEED_TASK_TIME: Duration = Duration::from_millis(10);

/// The Rust systems, in table order.
const RUST_SYSTEMS: [&str; 4] = ["sequential", "rayon", "procspawn", "procpool"];

/// The workloads, by the names `--workloads` takes.
const WORKLOADS: [&str; 14] = [
    "seed",
    "tiny",
    "bulk",
    "startup",
    "latency",
    "idle",
    "crossover",
    "uneven",
    "channels",
    "pyfront",
    "pyproc",
    "map200k",
    "serde",
    "imaprss",
];

/// Workloads with a section of their own (not in the main table).
const SECTIONS: [&str; 8] = [
    "idle", "uneven", "channels", "pyfront", "pyproc", "map200k", "serde", "imaprss",
];

/// `target/bench` beside the `release` (or `debug`) folder holding this executable, or
/// `target/bench` under the current directory.
fn default_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let profile_dir = exe.parent()?;
            let name = profile_dir.file_name()?.to_str()?;
            (name == "release" || name == "debug")
                .then(|| profile_dir.parent().map(|t| t.join("bench")))
                .flatten()
        })
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// Sizes of every measurement, for a full or a quick run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub(crate) quick: bool,
    /// Which of [`WORKLOADS`] run.
    runs: [bool; WORKLOADS.len()],
    seed_reps: usize,
    tiny: Sizing,
    bulk_reps: usize,
    startup_runs: usize,
    latency_runs: usize,
    latency_warmup: usize,
    crossover: Sizing,
}

impl Params {
    fn runs(&self, workload: &str) -> bool {
        WORKLOADS
            .iter()
            .position(|w| *w == workload)
            .is_some_and(|i| self.runs[i])
    }

    fn new(quick: bool) -> Params {
        if quick {
            Params {
                quick,
                runs: [true; WORKLOADS.len()],
                seed_reps: 2,
                tiny: Sizing {
                    target: Duration::from_millis(150),
                    reps: 1,
                    start: 500,
                    max: 20_000_000,
                },
                bulk_reps: 1,
                startup_runs: 5,
                latency_runs: 300,
                latency_warmup: 50,
                crossover: Sizing {
                    target: Duration::from_millis(35),
                    reps: 1,
                    start: 16,
                    max: 1_000_000,
                },
            }
        } else {
            Params {
                quick,
                runs: [true; WORKLOADS.len()],
                seed_reps: 5,
                tiny: Sizing {
                    target: Duration::from_millis(400),
                    reps: 5,
                    start: 1000,
                    max: 50_000_000,
                },
                bulk_reps: 3,
                startup_runs: 20,
                latency_runs: 2000,
                latency_warmup: 200,
                crossover: Sizing {
                    target: Duration::from_millis(150),
                    reps: 3,
                    start: 16,
                    max: 4_000_000,
                },
            }
        }
    }
}

fn main() {
    procpool::init();
    procspawn::init();
    if std::env::args().nth(1).as_deref() == Some(uneven::CHILD_FLAG) {
        uneven_run::detached_child();
    }
    if std::env::args().nth(1).as_deref() == Some(channels::CHILD_FLAG) {
        channels::ipc_producer();
    }
    if std::env::args().nth(1).as_deref() == Some(maps::CHILD_FLAG) {
        maps::imap_child_main();
    }
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help(text)) => print!("{text}"),
        Ok(Command::Shared(settings)) => shared_table::main(settings),
        Ok(Command::Tables(cfg)) => {
            if cfg.progress {
                systems::PROGRESS.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if let Err(e) = run(&cfg) {
                eprintln!("procpool-bench: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("procpool-bench: {e}\nRun `procpool-bench --help` for the modes and flags.");
            std::process::exit(2);
        }
    }
}

fn run(cfg: &Config) -> Result<(), String> {
    let started = Instant::now();
    let mut p = Params::new(cfg.quick);
    p.runs = WORKLOADS.map(|w| cfg.runs(w));
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    eprintln!(
        "procpool-bench ({} run, {} workers per pool, {} cores, load average {})",
        if p.quick { "quick" } else { "full" },
        systems::WORKERS,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load::loadavg().map_or("?".into(), |l| format!("{l:.2}")),
    );
    let run_mark = load::mark();

    let seed_n = work::calibrate_seed(SEED_TASK_TIME);
    eprintln!("seed: n = {seed_n} (one task about {SEED_TASK_TIME:?})");
    let mut results = Results::new(seed_n);
    let main_table = WORKLOADS.iter().any(|w| !SECTIONS.contains(w) && p.runs(w));

    for name in RUST_SYSTEMS {
        if !main_table || !cfg.wants(name) {
            continue;
        }
        let t = Instant::now();
        let mark = load::mark();
        let mut figures = bench_rust_system(name, &p, &results);
        if let Some((other, steal)) = load::foreign_share(mark, load::mark()) {
            figures.other_load = Some(other * 100.0);
            figures.steal = Some(steal * 100.0);
        }
        eprintln!("{name}: done in {:.1} s", t.elapsed().as_secs_f64());
        results.add(name, figures);
    }

    if p.runs("tiny") && main_table {
        let n = p.tiny.max;
        let (fresh, again) = work::output_ms(n, p.tiny.reps.max(3));
        results.output_ms = Some((n, fresh, again));
    }
    if p.runs("latency") {
        results.socket_rtt_us = load::socket_round_trip_us(p.latency_runs);
    }
    if p.runs("idle") && cfg.wants("procpool") {
        let idle = if p.quick { 2 } else { 10 };
        match idle::idle_cpu(Duration::from_secs(idle)) {
            Ok((sup, workers)) => {
                eprintln!("procpool idle: supervisor {sup:.2}%, workers {workers:.2}% of a core");
                results.idle_cpu = Some((idle, sup, workers));
            }
            Err(e) => eprintln!("procpool idle: failed: {e}"),
        }
    }

    let python = cfg.python.as_deref().filter(|_| cfg.wants("python"));
    if let Some(py) = python.filter(|_| main_table) {
        let t = Instant::now();
        let mark = load::mark();
        match python::run(py, &cfg.out, p.quick, cfg.workloads.as_deref()) {
            Ok(mut py) => {
                if let Some((other, steal)) = load::foreign_share(mark, load::mark()) {
                    py.pool.other_load = Some(other * 100.0);
                    py.pool.steal = Some(steal * 100.0);
                }
                results.add("python-mp", py.pool);
                results.python_seq = Some(py.seq);
                results.python_info = Some(py.info);
                eprintln!("python: done in {:.1} s", t.elapsed().as_secs_f64());
            }
            Err(e) => eprintln!("python: skipped ({e})"),
        }
    }

    let uneven = p
        .runs("uneven")
        .then(|| uneven_run::section(cfg.quick, &cfg.out, python, |s| cfg.wants(s)));

    let maps_parts = maps::Parts {
        short: p.runs("map200k"),
        serde: p.runs("serde"),
        imap: p.runs("imaprss"),
    };
    let maps = (maps_parts.short || maps_parts.serde || maps_parts.imap)
        .then(|| maps::section(cfg.quick, maps_parts, |s| cfg.wants(s)));

    let chans = p
        .runs("channels")
        .then(|| channels::section(cfg.quick, python, &cfg.out));
    let pyfront = python.filter(|_| p.runs("pyfront")).map(|py| {
        let t = Instant::now();
        let r = pyfront::run(py, &cfg.out, p.quick);
        eprintln!("pyfront: done in {:.1} s", t.elapsed().as_secs_f64());
        r.unwrap_or_else(|e| format!("Python front: skipped ({e})"))
    });

    let pyproc = python.filter(|_| p.runs("pyproc")).map(|py| {
        let t = Instant::now();
        let r = pyproc::run(py, &cfg.out, p.quick);
        eprintln!("pyproc: done in {:.1} s", t.elapsed().as_secs_f64());
        r.unwrap_or_else(|e| format!("Python processes: skipped ({e})"))
    });

    results.finish();
    if main_table {
        println!("{}", report::table(&results));
    } else if results.idle_cpu.is_some() {
        print!("{}", report::round_trip_targets(&results));
    }
    if let Some(u) = &uneven {
        println!("{}", u.table());
    }
    if let Some(m) = &maps {
        println!("{}", m.table());
    }
    if let Some(c) = &chans {
        println!("{}", c.table());
    }
    if let Some(text) = &pyfront {
        println!("{text}");
    }
    if let Some(text) = &pyproc {
        println!("{text}");
    }
    if let Some((other, steal)) = load::foreign_share(run_mark, load::mark()) {
        println!(
            "other processes used {:.0}% of the cores during the run, the host stole {:.0}%{}",
            other * 100.0,
            steal * 100.0,
            if other + steal > 0.05 {
                " - too busy a machine: parallel figures are not reliable; run again when it is idle"
            } else {
                ""
            }
        );
    }
    let csv = cfg.out.join("results.csv");
    let mut text = report::csv(&results);
    if let Some(u) = &uneven {
        text.push_str(&u.csv());
    }
    if let Some(m) = &maps {
        text.push_str(&m.csv());
    }
    if let Some(c) = &chans {
        text.push_str(&c.csv());
    }
    std::fs::write(&csv, text).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut wrote = csv.display().to_string();
    if p.runs("crossover") {
        let svg = cfg.out.join("crossover.svg");
        report::chart(&results, &svg)?;
        wrote = format!("{wrote} and {}", svg.display());
    }
    println!(
        "wrote {wrote} ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Makes the system (a warm pool), runs every workload on it, then measures start-up.
fn bench_rust_system(name: &str, p: &Params, results: &Results) -> Figures {
    let mut f = Figures::default();
    let made: Res<Box<dyn System>> = match name {
        "sequential" => Ok(Box::new(Sequential)),
        "rayon" => Rayon::new().map(|s| Box::new(s) as Box<dyn System>),
        "procspawn" => Procspawn::new().map(|s| Box::new(s) as Box<dyn System>),
        "procpool" => Procpool::new().map(|s| Box::new(s) as Box<dyn System>),
        other => Err(format!("unknown system {other}")),
    };
    let mut sys = match made {
        Ok(s) => s,
        Err(e) => {
            f.note(format!("could not start: {e}"));
            eprintln!("{name}: could not start: {e}");
            return f;
        }
    };
    let step = |what: &str, r: Res<()>, f: &mut Figures| step(name, what, r, f);
    // Warm the workers up.
    let warm = (0..20).try_for_each(|i| sys.apply(i).map(drop));
    step("warm-up", warm, &mut f);

    if p.runs("seed") {
        let r = seed(sys.as_mut(), p, results, &mut f);
        step("seed", r, &mut f);
        eprintln!(
            "{name}: seed {} ms, speedup {}",
            show(f.seed_ms),
            show(f.seed_speedup)
        );
    }

    if p.runs("tiny") {
        tiny(sys.as_mut(), p, name, &mut f);
    }
    if sys.is_pool() && p.runs("bulk") {
        let r = bulk(sys.as_mut(), p, &mut f);
        step("bulk", r, &mut f);
        eprintln!("{name}: bulk {} MB/s", show(f.bulk));
    }
    if sys.is_pool() && p.runs("latency") {
        let r = latency(sys.as_mut(), p, &mut f);
        step("latency", r, &mut f);
        eprintln!(
            "{name}: latency median {} us, p99 {} us",
            show(f.lat_med),
            show(f.lat_p99)
        );
    }
    if p.runs("crossover") {
        crossover(sys.as_mut(), p, name, &mut f);
    }
    drop(sys);

    if name != "sequential" && p.runs("startup") {
        let r = startup(name, p, &mut f);
        step("startup", r, &mut f);
        eprintln!("{name}: startup {} ms", show(f.startup_ms));
    }
    f
}

fn step(name: &str, what: &str, r: Res<()>, f: &mut Figures) {
    if let Err(e) = r {
        eprintln!("{name}: {what} failed: {e}");
        f.note(format!("{what}: {e}"));
    }
}

fn tiny(sys: &mut dyn System, p: &Params, name: &str, f: &mut Figures) {
    let r = throughput(p.tiny, |n| {
        let (d, v) = timed(|| sys.tiny_chunk1(n as u64))?;
        check_doubles(&v, n)?;
        Ok(d)
    });
    step(
        name,
        "tiny chunk 1",
        r.map(|(rate, _)| f.tiny1 = Some(rate)),
        f,
    );
    let r = throughput(p.tiny, |n| {
        let (d, v) = timed(|| sys.tiny_auto(n as u64))?;
        check_doubles(&v, n)?;
        Ok(d)
    });
    step(
        name,
        "tiny auto",
        r.map(|(rate, _)| f.tiny_auto = Some(rate)),
        f,
    );
    eprintln!(
        "{name}: tiny chunk 1 {} tasks/s, auto {} items/s",
        show(f.tiny1),
        show(f.tiny_auto)
    );
}

fn crossover(sys: &mut dyn System, p: &Params, name: &str, f: &mut Figures) {
    for &t_us in &CROSSOVER_T_US {
        let t_ns = (t_us * 1000.0).round() as u64;
        let r = throughput(p.crossover, |n| {
            let (d, v) = timed(|| sys.spin_many(t_ns, n))?;
            if v.len() != n || v.contains(&0) {
                return Err(format!("spin gave {} results for {n} tasks", v.len()));
            }
            Ok(d)
        });
        match r {
            Ok((rate, n)) => f.cross.push((t_us, 1e6 / rate, n)),
            Err(e) => step(name, &format!("crossover t={t_us}"), Err(e), f),
        }
    }
    eprintln!(
        "{name}: crossover {}",
        f.cross
            .iter()
            .map(|(t, per, _)| format!("{t}:{per:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".into(), report::num)
}

fn check_doubles(v: &[u64], n: usize) -> Res<()> {
    if v.len() != n {
        return Err(format!("{} results for {n} items", v.len()));
    }
    match v.iter().enumerate().find(|&(i, &x)| x != 2 * i as u64) {
        Some((i, x)) => Err(format!("item {i}: got {x}")),
        None => Ok(()),
    }
}

fn seed(sys: &mut dyn System, p: &Params, results: &Results, f: &mut Figures) -> Res<()> {
    let inputs = vec![results.seed_n; SEED_TASKS];
    let expected = work::seq_map(work::compute, inputs.clone());
    sys.seed(inputs.clone())?; // warm-up
    let mut times = Vec::new();
    for _ in 0..p.seed_reps {
        let (d, got) = timed(|| sys.seed(inputs.clone()))?;
        if got != expected {
            return Err("results differ from sequential ones".into());
        }
        times.push(d.as_secs_f64() * 1e3);
    }
    let ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    f.seed_ms = Some(ms);
    let speedup = results.seq_seed_ms().unwrap_or(ms) / ms;
    f.seed_speedup = Some(speedup);
    if sys.is_pool() && speedup < 1.4 {
        f.note(format!(
            "seed speedup {speedup:.2}: the tasks ran about one at a time in every run; \
             the scheduler of this VM sometimes keeps both workers on one core (see README)"
        ));
    }
    Ok(())
}

fn bulk(sys: &mut dyn System, p: &Params, f: &mut Figures) -> Res<()> {
    let check = |v: Vec<u64>, count: usize| {
        if v.len() == count && v.iter().all(|&l| l == work::BLOB_BYTES as u64) {
            Ok(())
        } else {
            Err(format!("bad lengths {v:?}"))
        }
    };
    check(sys.bulk(work::make_blobs(2))?, 2)?; // warm-up
    let mut rates = Vec::new();
    for _ in 0..p.bulk_reps {
        let blobs = work::make_blobs(work::BLOBS);
        let (d, v) = timed(|| sys.bulk(blobs))?;
        check(v, work::BLOBS)?;
        rates.push((work::BLOBS * work::BLOB_BYTES) as f64 / 1e6 / d.as_secs_f64());
    }
    f.bulk = Some(rates.iter().copied().fold(0.0, f64::max));
    Ok(())
}

fn latency(sys: &mut dyn System, p: &Params, f: &mut Figures) -> Res<()> {
    for i in 0..p.latency_warmup {
        sys.apply(i as u64)?;
    }
    let mut us = Vec::with_capacity(p.latency_runs);
    for i in 0..p.latency_runs {
        let t = Instant::now();
        let r = sys.apply(i as u64)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if r != i as u64 + 1 {
            return Err(format!("trivial({i}) gave {r}"));
        }
    }
    f.lat_med = Some(median(&mut us));
    f.lat_p99 = Some(percentile(&mut us, 99.0));
    Ok(())
}

fn startup(name: &str, p: &Params, f: &mut Figures) -> Res<()> {
    systems::startup_once(name)?; // warm-up (page cache, first-time costs)
    let mut parts: [Vec<f64>; 3] = Default::default();
    let mut total = Vec::new();
    for _ in 0..p.startup_runs {
        let d = systems::startup_once(name)?;
        for (acc, x) in parts.iter_mut().zip(d) {
            acc.push(x.as_secs_f64() * 1e3);
        }
        total.push(d.iter().sum::<Duration>().as_secs_f64() * 1e3);
    }
    f.startup_ms = Some(median(&mut total));
    f.startup_parts = Some(parts.map(|mut v| median(&mut v)));
    Ok(())
}
