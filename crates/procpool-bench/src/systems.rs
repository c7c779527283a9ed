//! The Rust systems under test, behind one trait: each runs the workloads on a warm pool.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::work::{byte_len, compute, double, double_chunk, seq_map, spin, trivial};

/// Errors of a system, as text.
pub(crate) type Res<T> = Result<T, String>;

/// Workers of every pool.
pub(crate) const WORKERS: usize = 2;

/// Outstanding procspawn handles at most (each holds two IPC channels, four descriptors).
const PROCSPAWN_WINDOW: usize = 256;

/// A system with a warm pool (or none, for sequential code).
pub(crate) trait System {
    /// Runs `compute(n)` over `inputs`.
    fn seed(&mut self, inputs: Vec<u64>) -> Res<Vec<f64>>;
    /// `double` over `0..n`, one task per item.
    fn tiny_chunk1(&mut self, n: u64) -> Res<Vec<u64>>;
    /// `double` over `0..n`, chunked automatically (or by hand).
    fn tiny_auto(&mut self, n: u64) -> Res<Vec<u64>>;
    /// `byte_len` over the blobs, one task each.
    fn bulk(&mut self, blobs: Vec<Vec<u8>>) -> Res<Vec<u64>>;
    /// One `trivial(x)` round trip.
    fn apply(&mut self, x: u64) -> Res<u64>;
    /// `spin(t_ns)` `n` times, one task each.
    fn spin_many(&mut self, t_ns: u64, n: usize) -> Res<Vec<u64>>;
    /// Whether the system runs `bulk`, `apply` and start-up (a pool does).
    fn is_pool(&self) -> bool {
        true
    }
}

/// Plain code on the calling thread: the baseline.
#[derive(Debug, Default)]
pub(crate) struct Sequential;

impl System for Sequential {
    fn seed(&mut self, inputs: Vec<u64>) -> Res<Vec<f64>> {
        Ok(seq_map(compute, inputs))
    }
    fn tiny_chunk1(&mut self, n: u64) -> Res<Vec<u64>> {
        Ok(seq_map(double, 0..n))
    }
    fn tiny_auto(&mut self, n: u64) -> Res<Vec<u64>> {
        Ok(seq_map(double, 0..n))
    }
    fn bulk(&mut self, blobs: Vec<Vec<u8>>) -> Res<Vec<u64>> {
        Ok(seq_map(byte_len, blobs))
    }
    fn apply(&mut self, x: u64) -> Res<u64> {
        Ok(std::hint::black_box(trivial(x)))
    }
    fn spin_many(&mut self, t_ns: u64, n: usize) -> Res<Vec<u64>> {
        Ok(seq_map(spin, std::iter::repeat_n(t_ns, n)))
    }
    fn is_pool(&self) -> bool {
        false
    }
}

/// A rayon thread pool: the in-process bound (nothing is copied or serialized).
#[derive(Debug)]
pub(crate) struct Rayon(pub(crate) rayon::ThreadPool);

impl Rayon {
    pub(crate) fn new() -> Res<Self> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(WORKERS)
            .build()
            .map(Rayon)
            .map_err(|e| e.to_string())
    }
}

impl System for Rayon {
    fn seed(&mut self, inputs: Vec<u64>) -> Res<Vec<f64>> {
        Ok(self.0.install(|| {
            inputs
                .into_par_iter()
                .with_max_len(1)
                .map(compute)
                .collect()
        }))
    }
    fn tiny_chunk1(&mut self, n: u64) -> Res<Vec<u64>> {
        Ok(self.0.install(|| {
            (0..n as usize)
                .into_par_iter()
                .with_max_len(1)
                .map(|x| double(x as u64))
                .collect()
        }))
    }
    fn tiny_auto(&mut self, n: u64) -> Res<Vec<u64>> {
        Ok(self.0.install(|| {
            (0..n as usize)
                .into_par_iter()
                .map(|x| double(x as u64))
                .collect()
        }))
    }
    fn bulk(&mut self, blobs: Vec<Vec<u8>>) -> Res<Vec<u64>> {
        Ok(self.0.install(|| {
            blobs
                .into_par_iter()
                .with_max_len(1)
                .map(byte_len)
                .collect()
        }))
    }
    fn apply(&mut self, x: u64) -> Res<u64> {
        Ok(self.0.install(|| trivial(x)))
    }
    fn spin_many(&mut self, t_ns: u64, n: usize) -> Res<Vec<u64>> {
        Ok(self.0.install(|| {
            (0..n)
                .into_par_iter()
                .with_max_len(1)
                .map(|_| spin(t_ns))
                .collect()
        }))
    }
}

/// procspawn's `Pool`: one `spawn` per task, at most [`PROCSPAWN_WINDOW`] outstanding.
pub(crate) struct Procspawn(pub(crate) procspawn::Pool);

impl std::fmt::Debug for Procspawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Procspawn").field(&self.0).finish()
    }
}

impl Procspawn {
    pub(crate) fn new() -> Res<Self> {
        procspawn::Pool::new(WORKERS)
            .map(Procspawn)
            .map_err(|e| e.to_string())
    }

    /// Ordered map with at most [`PROCSPAWN_WINDOW`] outstanding tasks.
    ///
    /// A thread of its own calls `spawn` while this one joins in order: `spawn` blocks
    /// until a worker reads a large argument, and a worker's monitor thread waits for its
    /// previous result to be joined before it takes the next task, so spawning and joining
    /// on one thread deadlocks as soon as arguments are large.
    pub(crate) fn map<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A> + Send,
    ) -> Res<Vec<R>>
    where
        A: serde::Serialize + serde::de::DeserializeOwned,
        R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let pool = &self.0;
        std::thread::scope(|scope| {
            let (tx, rx) =
                std::sync::mpsc::sync_channel::<procspawn::JoinHandle<R>>(PROCSPAWN_WINDOW);
            scope.spawn(move || {
                for a in items {
                    if tx.send(pool.spawn(a, f)).is_err() {
                        break;
                    }
                }
            });
            let mut out = Vec::new();
            for h in rx {
                out.push(h.join().map_err(|e| e.to_string())?);
            }
            Ok(out)
        })
    }
}

impl System for Procspawn {
    fn seed(&mut self, inputs: Vec<u64>) -> Res<Vec<f64>> {
        self.map(compute, inputs)
    }
    fn tiny_chunk1(&mut self, n: u64) -> Res<Vec<u64>> {
        self.map(double, 0..n)
    }
    fn tiny_auto(&mut self, n: u64) -> Res<Vec<u64>> {
        // Chunks made by hand as Python's Pool.map makes them: 4 per worker.
        let per = n.div_ceil(4 * WORKERS as u64).max(1);
        let chunks = (0..n)
            .step_by(per as usize)
            .map(|lo| (lo..(lo + per).min(n)).collect::<Vec<u64>>());
        Ok(self.map(double_chunk, chunks)?.concat())
    }
    fn bulk(&mut self, blobs: Vec<Vec<u8>>) -> Res<Vec<u64>> {
        self.map(byte_len, blobs)
    }
    fn apply(&mut self, x: u64) -> Res<u64> {
        self.0.spawn(x, trivial).join().map_err(|e| e.to_string())
    }
    fn spin_many(&mut self, t_ns: u64, n: usize) -> Res<Vec<u64>> {
        self.map(spin, std::iter::repeat_n(t_ns, n))
    }
}

/// procpool's `Pool`.
#[derive(Debug)]
pub(crate) struct Procpool(pub(crate) procpool::Pool);

impl Procpool {
    pub(crate) fn new() -> Res<Self> {
        procpool::Pool::builder()
            .workers(WORKERS)
            .build()
            .map(Procpool)
            .map_err(|e| e.to_string())
    }
}

/// Whether procpool's map calls report progress (to a callback that does nothing), to
/// measure what progress costs: `--progress`.
pub(crate) static PROGRESS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `call`, reporting progress when `--progress` asked for it.
fn watched(call: procpool::Call<'_>) -> procpool::Call<'_> {
    if PROGRESS.load(std::sync::atomic::Ordering::Relaxed) {
        call.on_progress(|p| {
            std::hint::black_box(p);
        })
    } else {
        call
    }
}

fn pp<T>(r: Result<T, procpool::Error>) -> Res<T> {
    r.map_err(|e| e.to_string())
}

impl System for Procpool {
    fn seed(&mut self, inputs: Vec<u64>) -> Res<Vec<f64>> {
        pp(self.0.map(compute, inputs))
    }
    fn tiny_chunk1(&mut self, n: u64) -> Res<Vec<u64>> {
        pp(watched(self.0.with_chunk_size(1)).map(double, 0..n))
    }
    fn tiny_auto(&mut self, n: u64) -> Res<Vec<u64>> {
        if PROGRESS.load(std::sync::atomic::Ordering::Relaxed) {
            let call = self.0.on_progress(|p| {
                std::hint::black_box(p);
            });
            return pp(call.map(double, 0..n));
        }
        pp(self.0.map(double, 0..n))
    }
    fn bulk(&mut self, blobs: Vec<Vec<u8>>) -> Res<Vec<u64>> {
        pp(self.0.with_chunk_size(1).map(byte_len, blobs))
    }
    fn apply(&mut self, x: u64) -> Res<u64> {
        pp(self.0.apply(trivial, x))
    }
    fn spin_many(&mut self, t_ns: u64, n: usize) -> Res<Vec<u64>> {
        pp(self
            .0
            .with_chunk_size(1)
            .map(spin, std::iter::repeat_n(t_ns, n)))
    }
}

/// One start-up: create a pool of [`WORKERS`], run one trivial task, shut it down.
/// Returns (create, first task, shut down).
pub(crate) fn startup_once(system: &str) -> Res<[Duration; 3]> {
    let t0 = Instant::now();
    match system {
        "rayon" => {
            let pool = Rayon::new()?;
            let t1 = Instant::now();
            check(pool.0.install(|| trivial(1)))?;
            let t2 = Instant::now();
            drop(pool);
            Ok([t1 - t0, t2 - t1, t2.elapsed()])
        }
        "procspawn" => {
            let pool = Procspawn::new()?;
            let t1 = Instant::now();
            check(pool.0.spawn(1, trivial).join().map_err(|e| e.to_string())?)?;
            let t2 = Instant::now();
            pool.0.shutdown();
            drop(pool);
            Ok([t1 - t0, t2 - t1, t2.elapsed()])
        }
        "procpool" => {
            let pool = Procpool::new()?;
            let t1 = Instant::now();
            check(pp(pool.0.apply(trivial, 1))?)?;
            let t2 = Instant::now();
            pool.0.join();
            Ok([t1 - t0, t2 - t1, t2.elapsed()])
        }
        other => Err(format!("no start-up for {other}")),
    }
}

fn check(v: u64) -> Res<()> {
    if v == 2 {
        Ok(())
    } else {
        Err(format!("trivial(1) gave {v}"))
    }
}
