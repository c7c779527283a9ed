//! The shared-table workload: a map of many tasks that each read a few entries of one
//! large table (256 MiB of `u64` by default). procpool's `SharedSlice` (read in place)
//! and `Shared` (decoded once per worker) against sending the table with every task
//! (procpool without shared memory, and procspawn, which has none), and against threads
//! reading the table directly (rayon: the bound).
//!
//! ```text
//! cargo run --release -p procpool-bench -- shared [--tasks N] [--mib M] [--copy-tasks K]
//! ```
//!
//! Sending 256 MiB with each of 10 000 tasks would take hours: those systems run
//! `--copy-tasks` tasks (default 8) and the time of 10 000 is extrapolated (linearly,
//! from the per-task time), and the table says so.

use std::time::{Duration, Instant};

use procpool::{Pool, Shared, SharedSlice};
use rayon::prelude::*;

use crate::systems::{Procspawn, WORKERS};

/// Lookups per task.
const LOOKUPS: u64 = 16;

/// Index `i` of task `k`'s lookups in a table of `len` entries.
fn index(k: u64, i: u64, len: u64) -> usize {
    (k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        % len) as usize
}

fn lookups(table: &[u64], k: u64) -> u64 {
    let len = table.len() as u64;
    (0..LOOKUPS).map(|i| table[index(k, i, len)]).sum()
}

fn task_slice((t, k): (SharedSlice<u64>, u64)) -> u64 {
    lookups(&t, k)
}

fn task_shared((t, k): (Shared<Vec<u64>>, u64)) -> u64 {
    lookups(&t, k)
}

fn task_copy((t, k): (Vec<u64>, u64)) -> u64 {
    lookups(&t, k)
}

struct Row {
    system: &'static str,
    setup: Duration,
    tasks: u64,
    run: Duration,
    extrapolated: bool,
}

/// The workload's settings (flags of `procpool-bench shared`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Tasks in the map.
    pub(crate) tasks: u64,
    /// The table's size in MiB.
    pub(crate) mib: u64,
    /// Tasks run by the systems that send the table with every task.
    pub(crate) copy_tasks: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tasks: 10_000,
            mib: 256,
            copy_tasks: 8,
        }
    }
}

/// Runs the workload, prints its table and exits.
pub(crate) fn main(s: Settings) -> ! {
    let len = (s.mib << 20) / 8;
    let table: Vec<u64> = (0..len).map(|i| i ^ (i >> 7)).collect();
    let expect: u64 = (0..s.tasks).map(|k| lookups(&table, k)).sum();
    let mut rows = Vec::new();

    let pool = Pool::builder().workers(WORKERS).build().expect("a pool");
    // Start the workers before the clock does.
    pool.map(|x: u64| x, 0..(WORKERS as u64 * 4))
        .expect("warm-up");

    eprintln!("shared table: SharedSlice");
    let t = Instant::now();
    let slice = SharedSlice::new(&table).expect("a shared slice");
    let setup = t.elapsed();
    let t = Instant::now();
    let got: u64 = pool
        .map(task_slice, (0..s.tasks).map(|k| (slice.clone(), k)))
        .expect("map over SharedSlice")
        .iter()
        .sum();
    rows.push(Row {
        system: "procpool SharedSlice<u64>",
        setup,
        tasks: s.tasks,
        run: t.elapsed(),
        extrapolated: false,
    });
    assert_eq!(got, expect, "SharedSlice gave another sum");
    drop(slice);

    eprintln!("shared table: Shared");
    let t = Instant::now();
    let shared = Shared::new(table.clone()).expect("a shared value");
    let setup = t.elapsed();
    let t = Instant::now();
    let got: u64 = pool
        .map(task_shared, (0..s.tasks).map(|k| (shared.clone(), k)))
        .expect("map over Shared")
        .iter()
        .sum();
    rows.push(Row {
        system: "procpool Shared<Vec<u64>>",
        setup,
        tasks: s.tasks,
        run: t.elapsed(),
        extrapolated: false,
    });
    assert_eq!(got, expect, "Shared gave another sum");
    drop(shared);

    eprintln!("shared table: rayon");
    let t = Instant::now();
    let got: u64 = (0..s.tasks)
        .into_par_iter()
        .map(|k| lookups(&table, k))
        .sum();
    rows.push(Row {
        system: "threads (rayon, the bound)",
        setup: Duration::ZERO,
        tasks: s.tasks,
        run: t.elapsed(),
        extrapolated: false,
    });
    assert_eq!(got, expect);

    eprintln!("shared table: table with each task (procpool)");
    let k = s.copy_tasks.min(s.tasks).max(1);
    let t = Instant::now();
    let got: Vec<u64> = pool
        .map(task_copy, (0..k).map(|i| (table.clone(), i)))
        .expect("map sending the table");
    rows.push(Row {
        system: "procpool, table sent with each task",
        setup: Duration::ZERO,
        tasks: k,
        run: t.elapsed(),
        extrapolated: k < s.tasks,
    });
    assert_eq!(got.len() as u64, k);
    drop(pool);

    eprintln!("shared table: table with each task (procspawn)");
    let ps = Procspawn::new().expect("a procspawn pool");
    let t = Instant::now();
    let got = ps
        .map(task_copy, (0..k).map(|i| (table.clone(), i)))
        .expect("procspawn tasks");
    rows.push(Row {
        system: "procspawn, table sent with each task",
        setup: Duration::ZERO,
        tasks: k,
        run: t.elapsed(),
        extrapolated: k < s.tasks,
    });
    assert_eq!(got.len() as u64, k);
    drop(ps);

    print(&s, &rows);
    std::process::exit(0);
}

fn print(s: &Settings, rows: &[Row]) {
    println!(
        "shared table: {} MiB of u64, {} tasks of {LOOKUPS} lookups, {WORKERS} workers",
        s.mib, s.tasks
    );
    println!(
        "{:<40} {:>10} {:>14} {:>14} {:>12}",
        "system", "setup s", "tasks run", "time s", "tasks/s"
    );
    for r in rows {
        let per = r.run.as_secs_f64() / r.tasks as f64;
        let total = per * s.tasks as f64;
        let time = if r.extrapolated {
            format!("{total:.1} (est.)")
        } else {
            format!("{total:.3}")
        };
        println!(
            "{:<40} {:>10.3} {:>14} {:>14} {:>12.0}",
            r.system,
            r.setup.as_secs_f64(),
            r.tasks,
            time,
            1.0 / per
        );
    }
    println!(
        "(est.: measured on the tasks run, extrapolated linearly to {} tasks)",
        s.tasks
    );
}
