//! A long map with its progress shown, then the pool's counters.
//!
//! ```text
//! cargo run --release --example progress -- [ITEMS]                      # callback
//! cargo run --release --example progress --features indicatif -- [ITEMS] # a bar
//! ```
//!
//! With the `indicatif` feature the map draws a progress bar (done / total, rate, time
//! left); without it a callback prints a line about four times a second. Either way the
//! pool's [`Stats`](procpool::Stats) are printed at the end.

use std::process::ExitCode;

/// A task of about a fifth of a millisecond, which says which worker ran it.
fn work(x: u64) -> u64 {
    let mut h = x;
    for _ in 0..20_000 {
        h = h
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    std::hint::black_box(h);
    procpool::current_worker().map_or(u64::MAX, |w| w.index as u64)
}

fn main() -> ExitCode {
    procpool::init();
    let items: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 20_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("progress: ITEMS must be a number ({e})");
            return ExitCode::from(2);
        }
    };
    let pool = match procpool::Pool::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("progress: cannot start the pool: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(feature = "indicatif")]
    let call = pool.with_progress();
    #[cfg(not(feature = "indicatif"))]
    let call = pool
        .on_progress(|p| {
            let total = p.total.map_or("?".to_string(), |t| t.to_string());
            let rate = p.done as f64 / p.elapsed.as_secs_f64().max(1e-9);
            let end = if p.finished { " (finished)" } else { "" };
            eprintln!(
                "{}/{total} done, {} failed, {rate:.0}/s{end}",
                p.done, p.failed
            );
        })
        .progress_interval(std::time::Duration::from_millis(250));
    let ran_on = match call.map(work, 0..items) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("progress: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut per_index = vec![0u64; pool.workers()];
    for i in ran_on {
        if let Some(n) = per_index.get_mut(i as usize) {
            *n += 1;
        }
    }
    let s = pool.stats();
    println!(
        "{} tasks: {} succeeded, {} failed; {} workers started",
        s.done(),
        s.succeeded,
        s.failed.total(),
        s.workers_started
    );
    for w in &s.workers {
        println!(
            "  worker {} (pid {}): {} tasks ({} seen by current_worker), busy {:?}, {} restarts",
            w.index,
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.tasks,
            per_index.get(w.index).copied().unwrap_or(0),
            w.busy,
            w.restarts
        );
    }
    pool.join();
    ExitCode::SUCCESS
}
