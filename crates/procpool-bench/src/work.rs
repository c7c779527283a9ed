//! The task functions every system runs, and the timing helpers.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The seed workload: a sum of square roots.
pub(crate) fn compute(n: u64) -> f64 {
    (1..=n).map(|i| (i as f64).sqrt()).sum()
}

/// The tiny workload.
pub(crate) fn double(x: u64) -> u64 {
    x * 2
}

/// The tiny workload on a hand-made chunk (for procspawn, which has no chunking).
pub(crate) fn double_chunk(xs: Vec<u64>) -> Vec<u64> {
    xs.into_iter().map(double).collect()
}

/// The bulk workload: the worker answers with the length of what it received.
pub(crate) fn byte_len(data: Vec<u8>) -> u64 {
    data.len() as u64
}

/// A trivial task for the start-up and latency workloads.
pub(crate) fn trivial(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// Busy-waits `ns` nanoseconds on the monotonic clock; returns how many times it looked.
pub(crate) fn spin(ns: u64) -> u64 {
    let start = Instant::now();
    let limit = Duration::from_nanos(ns);
    let mut looks = 1u64;
    while start.elapsed() < limit {
        looks += 1;
    }
    looks
}

/// Size of one bulk message.
pub(crate) const BLOB_BYTES: usize = 32 << 20;
/// Bulk messages per run.
pub(crate) const BLOBS: usize = 16;

/// `count` distinct blobs, each filled (so its pages are really there before timing).
pub(crate) fn make_blobs(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut v = vec![(i % 251) as u8 + 1; BLOB_BYTES];
            // Distinct content at both ends too.
            v[0] = i as u8;
            v[BLOB_BYTES - 1] = (i >> 8) as u8;
            v
        })
        .collect()
}

/// Median of the values (sorts them).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`-th percentile (nearest rank) of the values (sorts them).
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    assert!(!v.is_empty(), "percentile of nothing");
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// How a throughput measurement is sized.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizing {
    /// Aim of one timed run.
    pub(crate) target: Duration,
    /// Timed runs (the fastest is kept).
    pub(crate) reps: usize,
    /// Items of the first (warm-up and probe) run.
    pub(crate) start: usize,
    /// Most items in one run.
    pub(crate) max: usize,
}

/// Measures items per second: `run(n)` processes `n` items and returns how long it took.
///
/// Probe runs, growing from `start` items, warm up and estimate the rate; then `reps`
/// runs sized to take about `target` each are timed. Returns the best rate (other work on
/// the machine only ever slows a run down, so the fastest run is the closest to the
/// system's own cost) and the item count of a timed run.
pub(crate) fn throughput<E>(
    s: Sizing,
    mut run: impl FnMut(usize) -> Result<Duration, E>,
) -> Result<(f64, usize), E> {
    let mut n = s.start.max(1).min(s.max);
    let rate = loop {
        let d = run(n)?.as_secs_f64().max(1e-9);
        if d >= s.target.as_secs_f64() / 8.0 || n >= s.max {
            break n as f64 / d;
        }
        n = (n * 8).min(s.max);
    };
    let n = ((rate * s.target.as_secs_f64()) as usize).clamp(1, s.max);
    let mut rates = Vec::with_capacity(s.reps);
    for _ in 0..s.reps.max(1) {
        let d = run(n)?.as_secs_f64().max(1e-9);
        rates.push(n as f64 / d);
    }
    Ok((rates.iter().copied().fold(0.0, f64::max), n))
}

/// What a call returning `n` `u64`s in a new vector spends on the vector alone, on one
/// core: (ms to write a fresh vector, whose pages the kernel faults in one by one, ms to
/// write the same vector again), best of `reps`. The first bounds any such call: two
/// cores fault pages in at best twice as fast, whatever else the call does.
pub(crate) fn output_ms(n: usize, reps: usize) -> (f64, f64) {
    let (mut fresh, mut again) = (f64::MAX, f64::MAX);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let mut v: Vec<u64> = Vec::with_capacity(n);
        v.extend((0..n as u64).map(|x| black_box(x) * 2));
        fresh = fresh.min(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        for (i, x) in v.iter_mut().enumerate() {
            *x = black_box(i as u64) * 2;
        }
        again = again.min(t.elapsed().as_secs_f64() * 1e3);
        black_box(&v);
    }
    (fresh, again)
}

/// Time of `f()`.
pub(crate) fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<(Duration, T), E> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed(), out))
}

/// Runs `f` sequentially over `items`, keeping every result alive.
pub(crate) fn seq_map<A, R>(f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Vec<R> {
    items
        .into_iter()
        .map(|a| black_box(f(black_box(a))))
        .collect()
}

/// The `n` chosen for the seed workload so that one task takes about `per_task`.
pub(crate) fn calibrate_seed(per_task: Duration) -> u64 {
    let mut n = 100_000u64;
    loop {
        let t = Instant::now();
        black_box(compute(black_box(n)));
        let d = t.elapsed();
        if d >= Duration::from_millis(2) {
            let scale = per_task.as_secs_f64() / d.as_secs_f64();
            // Once more at the estimate, to correct for warm-up.
            let n2 = ((n as f64 * scale) as u64).max(1);
            let t = Instant::now();
            black_box(compute(black_box(n2)));
            let d2 = t.elapsed();
            let scale2 = per_task.as_secs_f64() / d2.as_secs_f64();
            return ((n2 as f64 * scale2) as u64).max(1);
        }
        n *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median(&mut v), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [3.0], 99.0), 3.0);
    }

    #[test]
    fn spin_waits() {
        let t = Instant::now();
        assert!(spin(200_000) >= 1);
        assert!(t.elapsed() >= Duration::from_micros(200));
    }

    #[test]
    fn throughput_sizes_runs() {
        let s = Sizing {
            target: Duration::from_millis(8),
            reps: 2,
            start: 10,
            max: 1_000_000,
        };
        let (rate, n) = throughput::<()>(s, |n| {
            let t = Instant::now();
            for _ in 0..n {
                spin(1_000);
            }
            Ok(t.elapsed())
        })
        .unwrap();
        assert!(rate > 100.0 && rate < 1_100_000.0, "{rate}");
        assert!(n >= 1);
    }
}
