//! What one run measured, per system, and the figures derived from it.

/// The figures of one system; `None` where it was not measured (or failed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// Seed: best wall time of the 8 tasks, ms.
    pub(crate) seed_ms: Option<f64>,
    /// Seed: sequential time over this system's time.
    pub(crate) seed_speedup: Option<f64>,
    /// Tiny, one task per item: tasks per second.
    pub(crate) tiny1: Option<f64>,
    /// Tiny, automatic (or hand-made) chunks: items per second.
    pub(crate) tiny_auto: Option<f64>,
    /// Bulk: MB (10^6 bytes) per second.
    pub(crate) bulk: Option<f64>,
    /// Start-up: median ms of create + one task + shut down.
    pub(crate) startup_ms: Option<f64>,
    /// Start-up parts: medians of create, first task, shut down (ms).
    pub(crate) startup_parts: Option<[f64; 3]>,
    /// Latency: median round trip, µs.
    pub(crate) lat_med: Option<f64>,
    /// Latency: 99th percentile, µs.
    pub(crate) lat_p99: Option<f64>,
    /// Crossover curve: (t µs, wall time per task µs, tasks in a timed run).
    pub(crate) cross: Vec<(f64, f64, usize)>,
    /// Smallest grid t from which on this system beats its sequential baseline.
    pub(crate) crossover: Option<f64>,
    /// The same, interpolated (log-log) between the grid points around it.
    pub(crate) crossover_interp: Option<f64>,
    /// Share of the cores (percent) that other processes used while this system ran.
    pub(crate) other_load: Option<f64>,
    /// Share of the cores (percent) the host stole from this virtual machine meanwhile.
    pub(crate) steal: Option<f64>,
    /// Problems met.
    pub(crate) notes: Vec<String>,
}

impl Figures {
    pub(crate) fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    fn per_task_at(&self, t: f64) -> Option<f64> {
        self.cross
            .iter()
            .find(|(x, _, _)| (x - t).abs() < 1e-9)
            .map(|&(_, y, _)| y)
    }

    /// Sets the crossover figures against a baseline curve.
    fn find_crossover(&mut self, base: &Figures) {
        // (t, ratio of this system's time per task to the baseline's)
        let ratios: Vec<(f64, f64)> = self
            .cross
            .iter()
            .filter_map(|&(t, y, _)| base.per_task_at(t).map(|b| (t, y / b)))
            .collect();
        let Some(first) = (0..ratios.len())
            .rev()
            .take_while(|&i| ratios[i].1 < 1.0)
            .last()
        else {
            return;
        };
        let t = ratios[first].0;
        self.crossover = Some(t);
        self.crossover_interp = Some(if first == 0 {
            t
        } else {
            let (t0, r0) = ratios[first - 1];
            let (t1, r1) = (t, ratios[first].1);
            // log r is linear in log t between the two points; find where it is 0.
            let (l0, l1) = (r0.ln(), r1.ln());
            let w = l0 / (l0 - l1);
            (t0.ln() + w * (t1.ln() - t0.ln())).exp()
        });
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    /// The seed workload's n.
    pub(crate) seed_n: u64,
    /// Systems in table order.
    pub(crate) systems: Vec<(String, Figures)>,
    /// Python's sequential figures (baseline of python-mp).
    pub(crate) python_seq: Option<Figures>,
    /// Python's details (version, start method, its seed n), for the report.
    pub(crate) python_info: Option<String>,
    /// Median round trip between two threads over a Unix socket, µs: (one core, two cores).
    pub(crate) socket_rtt_us: Option<(f64, f64)>,
    /// CPU an idle procpool pool used: (seconds idle, % of a core by its supervisor thread,
    /// % of a core by its workers together).
    pub(crate) idle_cpu: Option<(u64, f64, f64)>,
    /// What the tiny workload's output costs alone: (items, ms to write a fresh vector of
    /// that many `u64`s, ms to write the same vector again), best of a few.
    pub(crate) output_ms: Option<(usize, f64, f64)>,
}

impl Results {
    pub(crate) fn new(seed_n: u64) -> Self {
        Self {
            seed_n,
            systems: Vec::new(),
            python_seq: None,
            python_info: None,
            socket_rtt_us: None,
            idle_cpu: None,
            output_ms: None,
        }
    }

    pub(crate) fn add(&mut self, name: &str, f: Figures) {
        self.systems.push((name.to_string(), f));
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Figures> {
        self.systems.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    pub(crate) fn seq_seed_ms(&self) -> Option<f64> {
        self.get("sequential").and_then(|f| f.seed_ms)
    }

    /// Derives the crossover figures.
    pub(crate) fn finish(&mut self) {
        let seq = self.get("sequential").cloned().unwrap_or_default();
        let py_seq = self.python_seq.clone().unwrap_or_default();
        for (name, f) in &mut self.systems {
            match name.as_str() {
                "sequential" => {}
                "python-mp" => f.find_crossover(&py_seq),
                _ => f.find_crossover(&seq),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[(f64, f64)]) -> Figures {
        Figures {
            cross: points.iter().map(|&(t, y)| (t, y, 1)).collect(),
            ..Figures::default()
        }
    }

    #[test]
    fn crossover_is_where_the_pool_wins_from_then_on() {
        let base = curve(&[(1.0, 1.0), (10.0, 10.0), (100.0, 100.0), (1000.0, 1000.0)]);
        let mut pool = curve(&[(1.0, 0.9), (10.0, 20.0), (100.0, 50.0), (1000.0, 500.0)]);
        pool.find_crossover(&base);
        assert_eq!(pool.crossover, Some(100.0));
        let x = pool.crossover_interp.unwrap();
        assert!(x > 10.0 && x < 100.0, "{x}");
        // ratio 2 at 10, 0.5 at 100: log-midpoint
        assert!((x - 10f64.powf(1.5)).abs() < 1e-6, "{x}");

        let mut never = curve(&[(1.0, 2.0), (1000.0, 2000.0)]);
        never.find_crossover(&base);
        assert_eq!(never.crossover, None);

        let mut always = curve(&[(1.0, 0.5), (1000.0, 500.0)]);
        always.find_crossover(&base);
        assert_eq!(always.crossover, Some(1.0));
        assert_eq!(always.crossover_interp, Some(1.0));
    }
}
