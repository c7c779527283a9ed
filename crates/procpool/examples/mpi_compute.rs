//! A pool across the ranks of an MPI job.
//!
//! ```sh
//! cargo build --release -p procpool --features mpi --example mpi_compute
//! mpirun -n 3 target/release/examples/mpi_compute          # one host of 3 cores or more
//! mpirun -n 5 --map-by node --hostfile hosts target/release/examples/mpi_compute  # 4 hosts
//! ```
//!
//! Open MPI's `mpirun` wants `--oversubscribe` to start more ranks than the host has cores
//! (`-n 3` on 2 cores), and `--allow-run-as-root` to run as root (in a container, say):
//! `mpirun --allow-run-as-root --oversubscribe -n 3 target/release/examples/mpi_compute`.
//!
//! Rank 0 runs `main`; every other rank is a node agent with a local pool of worker
//! processes. A task that crashes kills one remote worker, never a rank.

use std::time::{Duration, Instant};

/// Counts the primes below `n`, slowly on purpose.
fn primes_below(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

/// A task that dies of SIGSEGV on its worker when asked to.
fn fragile(x: i32) -> i32 {
    if x == 3 {
        // An unmapped address (the first page is never mapped): the write faults.
        let p = std::ptr::without_provenance_mut::<u8>(16);
        // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
    x * 10
}

fn main() -> Result<(), procpool::Error> {
    procpool::init(); // ranks other than 0 serve here and never return
    let (rank, size) = procpool::mpi_rank().unwrap_or((0, 1));
    let pool = procpool::Pool::builder()
        .mpi()
        .timeout(Duration::from_secs(60))
        .build()?;
    println!(
        "rank {rank} of {size}: pool of {} workers",
        pool.stats().workers.len()
    );

    let t = Instant::now();
    let counts = pool.map(primes_below, (0..200).map(|i| 2_000 + 50 * i))?;
    println!(
        "{} primes counted in {:.2?} over {} agents",
        counts.iter().sum::<u64>(),
        t.elapsed(),
        size.saturating_sub(1)
    );

    // A crash fails its own task only; the others complete.
    for (i, r) in pool.imap(fragile, 0..6).enumerate() {
        match r {
            Ok(v) => println!("task {i}: {v}"),
            Err(e) => println!("task {i} failed: {e}"),
        }
    }
    Ok(())
}
