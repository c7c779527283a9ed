//! One large table given to every task without a copy per task, and results written in
//! place: `SharedSlice` (plain numbers, read in place), `Shared` (any value, decoded once
//! per worker) and `SharedArray` (written by the tasks, atomically).
//!
//! ```text
//! cargo run --release -p procpool --example shared_table -- [--mib 64] [--tasks 10000]
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use procpool::{Pool, Shared, SharedArray, SharedSlice};

/// A few lookups in the table, for task `k`.
fn lookups(table: &[u64], k: u64) -> u64 {
    let len = table.len() as u64;
    (0..16)
        .map(|i| table[((k * 7919 + i * 104_729) % len) as usize])
        .sum()
}

/// Reads the table in place; counts the task in its bucket of the histogram.
fn task((table, hist, k): (SharedSlice<u64>, SharedArray<u64>, u64)) -> u64 {
    let sum = lookups(&table, k);
    hist.fetch_add((sum / 16 % hist.len() as u64) as usize, 1);
    sum
}

/// Names the buckets from a table decoded once per worker.
fn name_of((names, bucket): (Shared<HashMap<u64, String>>, u64)) -> String {
    names.get(&bucket).cloned().unwrap_or_default()
}

const USAGE: &str = "usage: shared_table [--mib 64] [--tasks 10000]";

fn parse() -> Result<(u64, u64), String> {
    let (mut mib, mut tasks) = (64u64, 10_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value =
            || -> Result<u64, String> { Err(format!("{a} takes a positive number\n{USAGE}")) };
        let num = |v: Option<String>| v.and_then(|v| v.parse().ok()).filter(|&n| n > 0);
        match a.as_str() {
            "--mib" => mib = num(args.next()).map_or_else(value, Ok)?,
            "--tasks" => tasks = num(args.next()).map_or_else(value, Ok)?,
            "--help" | "-h" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Ok((mib, tasks))
}

fn main() -> ExitCode {
    procpool::init();
    let (mib, tasks) = match parse() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let data: Vec<u64> = (0..(mib << 20) / 8).map(|i| i % 1000).collect();
    let t = Instant::now();
    let table = SharedSlice::new(&data).expect("shared memory for the table");
    drop(data);
    println!(
        "{mib} MiB table in shared memory in {:.3} s",
        t.elapsed().as_secs_f64()
    );

    let hist = SharedArray::<u64>::new(4).expect("shared memory for the histogram");
    let pool = Pool::new().expect("a pool");
    let t = Instant::now();
    let sums = pool
        .map(task, (0..tasks).map(|k| (table.clone(), hist.clone(), k)))
        .expect("the map");
    println!(
        "{tasks} tasks read it in place in {:.3} s; histogram written by the tasks: {:?}",
        t.elapsed().as_secs_f64(),
        hist.to_vec()
    );
    assert_eq!(hist.to_vec().iter().sum::<u64>(), tasks);
    assert_eq!(sums[1], lookups(&table, 1));

    let names: HashMap<u64, String> = (0..4).map(|b| (b, format!("bucket {b}"))).collect();
    let names = Shared::new(names).expect("a shared map");
    let named = pool
        .map(name_of, (0..4).map(|b| (names.clone(), b)))
        .expect("the names");
    println!("{}", named.join(", "));
    ExitCode::SUCCESS
}
