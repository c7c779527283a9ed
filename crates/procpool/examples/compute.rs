//! The seed program: sums of square roots, run sequentially and on a pool.
//!
//! ```text
//! cargo run --release --example compute -- [--tasks 8] [--n 10000000] [--workers N]
//! ```

use std::process::ExitCode;
use std::time::Instant;

fn compute(n: u64) -> f64 {
    (1..=n).map(|i| (i as f64).sqrt()).sum()
}

const USAGE: &str = "usage: compute [--tasks 8] [--n 10000000] [--workers N]

Sums the square roots of 1..=n, --tasks times: first sequentially, then on a pool
of --workers processes (default: one per available core), and prints the speedup.";

struct Args {
    tasks: usize,
    n: u64,
    workers: Option<usize>,
}

/// The arguments, or `None` when the user asked for help.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        tasks: 8,
        n: 10_000_000,
        workers: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => args.tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--n" => args.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--workers" => {
                args.workers = Some(value()?.parse().map_err(|e| format!("--workers: {e}"))?)
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    procpool::init();
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("compute: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compute: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), procpool::Error> {
    let inputs = vec![args.n; args.tasks];

    let t = Instant::now();
    let sequential: Vec<f64> = inputs.iter().map(|&n| compute(n)).collect();
    let t_seq = t.elapsed();

    let mut builder = procpool::Pool::builder();
    if let Some(w) = args.workers {
        builder = builder.workers(w);
    }
    let pool = builder.build()?;
    let t = Instant::now();
    let parallel: Vec<f64> = pool.map(compute, inputs)?;
    let t_pool = t.elapsed();
    pool.join();

    assert_eq!(
        sequential, parallel,
        "pool results differ from sequential ones"
    );
    println!(
        "{} tasks of compute({}) on {} workers",
        args.tasks,
        args.n,
        args.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    );
    println!("sequential: {:>9.1} ms", t_seq.as_secs_f64() * 1e3);
    println!("pool:       {:>9.1} ms", t_pool.as_secs_f64() * 1e3);
    println!(
        "speedup:    {:>9.2}x",
        t_seq.as_secs_f64() / t_pool.as_secs_f64()
    );
    Ok(())
}
