//! The "uneven work" section: tasks of very different lengths, and what a pool makes of
//! them against the greedy bound (each task, in input order, to the first free worker,
//! with no overhead). See README.md for the cases.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::systems::WORKERS;

/// The hidden flag that makes this program the child of the detached-task case.
pub(crate) const CHILD_FLAG: &str = "--uneven-detached-child";

/// The systems of the section, in table order.
pub(crate) const SYSTEMS: [&str; 4] = ["rayon", "procspawn", "procpool", "python-mp"];

/// Bits of a task's duration (µs) in its encoding.
const US_BITS: u32 = 39;

/// One task as a single number: its index, its duration in µs and whether it spins (busy
/// waits) or sleeps. The task returns it unchanged, so every result names its item.
pub(crate) fn encode(index: usize, us: u64, spin: bool) -> u64 {
    ((index as u64) << (US_BITS + 1)) | (us << 1) | u64::from(spin)
}

/// The duration (µs) of an encoded task.
pub(crate) fn micros(x: u64) -> u64 {
    (x >> 1) & ((1 << US_BITS) - 1)
}

/// Runs an encoded task: sleeps, or spins on the clock, for its duration.
pub(crate) fn task(x: u64) -> u64 {
    let us = micros(x);
    if x & 1 == 1 {
        crate::work::spin(us * 1000);
    } else if us > 0 {
        std::thread::sleep(Duration::from_micros(us));
    }
    x
}

/// [`task`] over a hand-made chunk (procspawn has no chunking).
pub(crate) fn task_chunk(xs: Vec<u64>) -> Vec<u64> {
    xs.into_iter().map(task).collect()
}

/// The blocker of the cross-call case: waits until the file `path` exists, at most
/// `limit_ms`; returns the ms it waited.
pub(crate) fn hold(arg: (String, u64)) -> u64 {
    let (path, limit_ms) = arg;
    let t = Instant::now();
    let limit = Duration::from_millis(limit_ms);
    while t.elapsed() < limit && !std::path::Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed().as_millis() as u64
}

/// The task of the detached case: never ends.
pub(crate) fn forever(_: u64) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The makespan (µs) of the greedy schedule: each task, in input order, to the worker that
/// is free first (the lowest-numbered one on a tie), with no overhead.
pub(crate) fn greedy_bound_us(durations: impl IntoIterator<Item = u64>, workers: usize) -> u64 {
    let mut free = vec![0u64; workers.max(1)];
    for d in durations {
        let w = (0..free.len()).min_by_key(|&i| free[i]).unwrap_or(0);
        free[w] += d;
    }
    free.into_iter().max().unwrap_or(0)
}

/// A small seeded generator (splitmix64): the same cases on every machine and in Python.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // (0, 1]
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Which call runs a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Map,
    Imap,
    Unordered,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Map => "map",
            Api::Imap => "imap",
            Api::Unordered => "imap_unordered",
        }
    }
}

/// How a batch's figures are summed up in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Summary {
    /// One run.
    One,
    /// Several task lists (seeds): total makespan against total bound.
    Total,
    /// The same run repeated: median and worst.
    MedianWorst,
}

/// Tasks run by one call, once per task list in `runs`.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) api: Api,
    pub(crate) chunk1: bool,
    /// A new pool for each run, built just before the call (and timed with it).
    pub(crate) fresh: bool,
    pub(crate) runs: Vec<Vec<u64>>,
    pub(crate) summary: Summary,
}

impl Batch {
    /// The greedy bound of each run, ms.
    pub(crate) fn bounds_ms(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| greedy_bound_us(r.iter().map(|&x| micros(x)), WORKERS) as f64 / 1e3)
            .collect()
    }
}

/// The calls timed in the cross-call case, while a blocker holds one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrossOp {
    /// `map(double, 0..2)`, automatic chunking.
    Map2,
    /// The first 2 results of `imap_unordered(double, 0..n)`, automatic chunking.
    First2Auto,
    /// The same with chunk size 1.
    First2One,
}

/// Cross-call ops with their row keys and labels.
pub(crate) const CROSS_OPS: [(CrossOp, &str, &str); 3] = [
    (CrossOp::Map2, "c4.map2", "4. cross-call: map(double, 0..2)"),
    (
        CrossOp::First2Auto,
        "c4.first2.auto",
        "4. cross-call: 2 of imap_unordered, auto",
    ),
    (
        CrossOp::First2One,
        "c4.first2.one",
        "4. cross-call: 2 of imap_unordered, chunk 1",
    ),
];

/// Row key of the detached-task case.
pub(crate) const DETACHED_KEY: &str = "c5.detached";

/// Everything the section runs, the same for every system.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) batches: Vec<Batch>,
    /// Longest the cross-call blocker holds its worker.
    pub(crate) hold: Duration,
    /// Wait between submitting the blocker and the timed call.
    pub(crate) cross_delay: Duration,
    /// Items of the cross-call `imap_unordered`.
    pub(crate) cross_items: u64,
    /// Items of the detached case's `imap`, and its time limit per task.
    pub(crate) detached_items: u64,
    pub(crate) detached_limit: Duration,
    /// When the detached case is given up.
    pub(crate) deadline: Duration,
}

fn tasks(durations_us: &[u64], spin: bool) -> Vec<u64> {
    durations_us
        .iter()
        .enumerate()
        .map(|(i, &us)| encode(i, us, spin))
        .collect()
}

fn batch(key: &str, label: &str, api: Api, chunk1: bool, runs: Vec<Vec<u64>>) -> Batch {
    let summary = if runs.len() > 1 {
        Summary::Total
    } else {
        Summary::One
    };
    Batch {
        key: key.into(),
        label: label.into(),
        api,
        chunk1,
        fresh: false,
        runs,
        summary,
    }
}

const MODES: [(bool, &str, &str); 2] = [(false, "auto", "auto"), (true, "one", "chunk 1")];
const APIS: [Api; 3] = [Api::Map, Api::Imap, Api::Unordered];

/// Case 3: `n` items, 30 % of them sleeping 100 ms (scaled), in a seeded random order.
fn sleepers(seed: u64, n: usize, us: u64) -> Vec<u64> {
    let long = (n as f64 * 0.3).round() as usize;
    let mut d: Vec<u64> = (0..n).map(|i| if i < long { us } else { 0 }).collect();
    Rng(seed).shuffle(&mut d);
    d
}

/// Case 8: lognormal durations with a median of 1 ms (scaled), scaled so that they add up
/// to `total_us`, in a seeded order that is then sorted.
pub(crate) fn heavy_tail(seed: u64, n: usize, total_us: f64, median_us: f64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let raw: Vec<f64> = (0..n)
        .map(|_| median_us * (1.8 * rng.normal()).exp())
        .collect();
    let k = total_us / raw.iter().sum::<f64>();
    raw.iter()
        .map(|x| (x * k).round().max(1.0) as u64)
        .collect()
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Plan {
        let scale = if quick { 4 } else { 1 };
        let ms = |x: u64| x * 1000 / scale;
        let mut b = Vec::new();

        let mut fresh_tasks = vec![0];
        fresh_tasks.extend([ms(50); 20]);
        let mut c1 = batch(
            "c1",
            "1. fresh pool, [0]+20x50ms, chunk 1",
            Api::Map,
            true,
            vec![tasks(&fresh_tasks, false); if quick { 3 } else { 6 }],
        );
        c1.fresh = true;
        c1.summary = Summary::MedianWorst;
        b.push(c1);

        let odd: Vec<u64> = (0..12)
            .map(|i| if i % 2 == 1 { ms(300) } else { 0 })
            .collect();
        for api in APIS {
            b.push(batch(
                &format!("c2.{}", api.name()),
                &format!("2. odd items 300ms, chunk 1, {}", api.name()),
                api,
                true,
                vec![tasks(&odd, false)],
            ));
        }

        let seeds: Vec<Vec<u64>> = (1..=4)
            .map(|s| tasks(&sleepers(s, 64, ms(100)), false))
            .collect();
        for (chunk1, key, name) in MODES {
            b.push(batch(
                &format!("c3.{key}"),
                &format!("3. 30% sleep 100ms, 4 seeds, {name}"),
                Api::Map,
                chunk1,
                seeds.clone(),
            ));
        }

        let mut long_first = vec![ms(2000)];
        long_first.extend(std::iter::repeat_n(ms(1), 2000));
        for (case, (chunk1, _, name)) in [6, 7].into_iter().zip(MODES) {
            for api in APIS {
                b.push(batch(
                    &format!("c{case}.{}", api.name()),
                    &format!("{case}. 2s + 2000x1ms spin, {name}, {}", api.name()),
                    api,
                    chunk1,
                    vec![tasks(&long_first, true)],
                ));
            }
        }

        let tail = heavy_tail(8, 800, ms(4000) as f64, ms(1) as f64);
        for (order, name) in [("desc", "long first"), ("asc", "long last")] {
            let mut d = tail.clone();
            d.sort_unstable();
            if order == "desc" {
                d.reverse();
            }
            for (chunk1, key, mode) in MODES {
                b.push(batch(
                    &format!("c8.{order}.{key}"),
                    &format!("8. heavy tail, {name}, {mode}"),
                    Api::Map,
                    chunk1,
                    vec![tasks(&d, true)],
                ));
            }
        }

        Plan {
            quick,
            batches: b,
            hold: Duration::from_millis(3000 / scale),
            cross_delay: Duration::from_millis(50),
            cross_items: 20_000,
            detached_items: 100,
            detached_limit: Duration::from_secs(1),
            deadline: Duration::from_secs(if quick { 5 } else { 10 }),
        }
    }

    /// The plan as JSON, for the Python script.
    pub(crate) fn to_json(&self) -> Value {
        let batches: Vec<Value> = self
            .batches
            .iter()
            .map(|b| {
                json!({
                    "key": b.key,
                    "api": b.api.name(),
                    "chunk1": b.chunk1,
                    "fresh": b.fresh,
                    "runs": b.runs,
                })
            })
            .collect();
        json!({
            "workers": WORKERS,
            "batches": batches,
            "cross": {
                "hold_ms": self.hold.as_millis() as u64,
                "delay_s": self.cross_delay.as_secs_f64(),
                "items": self.cross_items,
                "keys": CROSS_OPS.map(|(_, k, _)| k),
            },
            "detached": {
                "key": DETACHED_KEY,
                "items": self.detached_items,
                "deadline_s": self.deadline.as_secs_f64(),
            },
        })
    }
}

/// A line of the case-8 description, for the progress output.
pub(crate) fn heavy_tail_summary(plan: &Plan) -> Option<String> {
    let b = plan.batches.iter().find(|b| b.key.starts_with("c8."))?;
    let d: Vec<u64> = b.runs[0].iter().map(|&x| micros(x)).collect();
    let mut sorted = d.clone();
    sorted.sort_unstable();
    Some(format!(
        "case 8: {} tasks, {:.2} s in all, median {:.2} ms, {} over 100 ms, longest {:.0} ms",
        d.len(),
        d.iter().sum::<u64>() as f64 / 1e6,
        sorted[sorted.len() / 2] as f64 / 1e3,
        d.iter().filter(|&&x| x > 100_000).count(),
        *sorted.last().unwrap_or(&0) as f64 / 1e3,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let x = encode(12_345, 2_000_000, true);
        assert_eq!(micros(x), 2_000_000);
        assert_eq!(x & 1, 1);
        assert_eq!(x >> (US_BITS + 1), 12_345);
        assert_eq!(task(encode(3, 0, false)), encode(3, 0, false));
    }

    #[test]
    fn greedy_bounds() {
        let ms = |v: &[u64]| greedy_bound_us(v.iter().map(|x| x * 1000), 2) / 1000;
        let mut fresh = vec![0];
        fresh.extend([50; 20]);
        assert_eq!(ms(&fresh), 500);
        let odd: Vec<u64> = (0..12).map(|i| if i % 2 == 1 { 300 } else { 0 }).collect();
        assert_eq!(ms(&odd), 900);
        let mut long_first = vec![2000];
        long_first.extend([1; 2000]);
        assert_eq!(ms(&long_first), 2000);
        let mut long_last = vec![1; 2000];
        long_last.push(2000);
        assert_eq!(ms(&long_last), 3000);
    }

    #[test]
    fn cases_have_their_shapes() {
        let plan = Plan::new(false);
        let c3 = plan.batches.iter().find(|b| b.key == "c3.one").unwrap();
        assert_eq!(c3.runs.len(), 4);
        for r in &c3.runs {
            assert_eq!(r.len(), 64);
            assert_eq!(r.iter().filter(|&&x| micros(x) == 100_000).count(), 19);
        }
        assert_ne!(c3.runs[0], c3.runs[1]);
        let c8 = plan
            .batches
            .iter()
            .find(|b| b.key == "c8.desc.one")
            .unwrap();
        let d: Vec<u64> = c8.runs[0].iter().map(|&x| micros(x)).collect();
        let total = d.iter().sum::<u64>() as f64 / 1e6;
        assert!((total - 4.0).abs() < 0.01, "{total}");
        let long = d.iter().filter(|&&x| x > 100_000).count();
        assert!((2..=10).contains(&long), "{long} tasks over 100 ms");
        assert!(d.windows(2).all(|w| w[0] >= w[1]));
    }
}
