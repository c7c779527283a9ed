//! The uneven-work section on the Rust systems: one warm pool per system for the batches
//! and the cross-call case, new pools for the fresh-pool case, and the detached-task case
//! (in a child process for procpool, since it may never return).

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::systems::{Procpool, Procspawn, Rayon, Res, WORKERS};
use crate::uneven::{
    Api, Batch, CHILD_FLAG, CROSS_OPS, CrossOp, DETACHED_KEY, Plan, forever, hold, task, task_chunk,
};
use crate::uneven_report::{Cell, Section};
use crate::work::{double, trivial};

/// What a call gave back, before it is checked.
enum Got {
    Ordered(Vec<u64>),
    Unordered(Vec<(usize, u64)>),
}

/// Every result must be its own item (a task returns its encoded item), in order unless
/// the call is unordered.
fn check(tasks: &[u64], got: Got) -> Res<()> {
    let mut v = match got {
        Got::Ordered(v) => v,
        Got::Unordered(mut pairs) => {
            pairs.sort_unstable();
            if let Some(&(i, x)) = pairs.iter().find(|&&(i, x)| tasks.get(i) != Some(&x)) {
                return Err(format!("item {i}: got {x}"));
            }
            pairs.into_iter().map(|(_, x)| x).collect()
        }
    };
    if v.len() != tasks.len() {
        return Err(format!("{} results for {} items", v.len(), tasks.len()));
    }
    match v.iter_mut().zip(tasks).position(|(a, b)| a != b) {
        Some(i) => Err(format!("item {i}: got {}", v[i])),
        None => Ok(()),
    }
}

fn pp<T>(r: Result<T, procpool::Error>) -> Res<T> {
    r.map_err(|e| e.to_string())
}

/// A warm pool of one Rust system.
enum Warm {
    Rayon(Rayon),
    Procspawn(Procspawn),
    Procpool(Procpool),
}

impl Warm {
    fn new(name: &str) -> Res<Warm> {
        let w = match name {
            "rayon" => Warm::Rayon(Rayon::new()?),
            "procspawn" => Warm::Procspawn(Procspawn::new()?),
            "procpool" => Warm::Procpool(Procpool::new()?),
            other => return Err(format!("no uneven runs for {other}")),
        };
        w.settle()?;
        Ok(w)
    }

    /// 20 trivial tasks: warms the workers up, and waits until they are idle.
    fn settle(&self) -> Res<()> {
        let ok = |v: Vec<u64>| {
            (v == (1..=20).collect::<Vec<u64>>())
                .then_some(())
                .ok_or("wrong warm-up results".to_string())
        };
        match self {
            Warm::Rayon(r) => {
                ok(r.0.install(|| (0..20u64).into_par_iter().map(trivial).collect()))
            }
            Warm::Procspawn(p) => ok(p.map(trivial, 0..20u64)?),
            Warm::Procpool(p) => ok(pp(p.0.with_chunk_size(1).map(trivial, 0..20u64))?),
        }
    }

    /// Runs the tasks with `api`; `None` where the system has no such call.
    fn call(&self, tasks: &[u64], api: Api, chunk1: bool) -> Option<Res<Got>> {
        let items = tasks.to_vec();
        Some(match (self, api) {
            (Warm::Rayon(r), Api::Map) => Ok(Got::Ordered(r.0.install(|| {
                let it = items.into_par_iter();
                if chunk1 {
                    it.with_max_len(1).map(task).collect()
                } else {
                    it.map(task).collect()
                }
            }))),
            (Warm::Procspawn(p), Api::Map) if chunk1 => p.map(task, items).map(Got::Ordered),
            (Warm::Procspawn(p), Api::Map) => {
                // Hand-made chunks, as the rest of the bench makes them: 4 per worker.
                let per = items.len().div_ceil(4 * WORKERS).max(1);
                let chunks: Vec<Vec<u64>> = items.chunks(per).map(<[u64]>::to_vec).collect();
                p.map(task_chunk, chunks).map(|c| Got::Ordered(c.concat()))
            }
            (Warm::Procpool(p), api) => procpool_call(&p.0, items, api, chunk1),
            _ => return None,
        })
    }

    /// The cross-call case: the time (ms) of `op` while a blocker holds one worker.
    fn cross(&self, plan: &Plan, op: CrossOp) -> Option<Res<f64>> {
        if op != CrossOp::Map2 && !matches!(self, Warm::Procpool(_)) {
            return None;
        }
        let path =
            std::env::temp_dir().join(format!("procpool-bench-hold-{}-{op:?}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let arg = (
            path.to_string_lossy().into_owned(),
            plan.hold.as_millis() as u64,
        );
        let release = || std::fs::write(&path, b"").map_err(|e| e.to_string());
        let r = (|| match self {
            Warm::Rayon(r) => {
                let (tx, rx) = std::sync::mpsc::channel();
                r.0.spawn(move || {
                    let _ = tx.send(hold(arg));
                });
                std::thread::sleep(plan.cross_delay);
                let t = Instant::now();
                let v: Vec<u64> =
                    r.0.install(|| (0..2u64).into_par_iter().map(double).collect());
                let ms = t.elapsed().as_secs_f64() * 1e3;
                release()?;
                rx.recv().map_err(|e| e.to_string())?;
                check_doubles(&v).map(|()| ms)
            }
            Warm::Procspawn(p) => {
                let h = p.0.spawn(arg, hold);
                std::thread::sleep(plan.cross_delay);
                let t = Instant::now();
                let v = p.map(double, 0..2u64)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                release()?;
                h.join().map_err(|e| e.to_string())?;
                check_doubles(&v).map(|()| ms)
            }
            Warm::Procpool(p) => {
                let h = pp(p.0.spawn(hold, arg))?;
                std::thread::sleep(plan.cross_delay);
                let r = procpool_cross(&p.0, op, plan.cross_items);
                release()?;
                pp(h.join())?;
                r
            }
        })();
        let _ = std::fs::remove_file(&path);
        Some(r.and_then(|ms| self.settle().map(|()| ms)))
    }
}

fn check_doubles(v: &[u64]) -> Res<()> {
    (v == [0, 2])
        .then_some(())
        .ok_or_else(|| format!("map(double, 0..2) gave {v:?}"))
}

fn procpool_call(pool: &procpool::Pool, items: Vec<u64>, api: Api, chunk1: bool) -> Res<Got> {
    // `Pool` (automatic chunking) and `Call` (chunk size 1) have the same methods.
    macro_rules! run {
        ($c:expr) => {
            match api {
                Api::Map => pp($c.map(task, items)).map(Got::Ordered),
                Api::Imap => pp($c.imap(task, items).collect()).map(Got::Ordered),
                Api::Unordered => $c
                    .imap_unordered(task, items)
                    .map(|(i, r)| pp(r).map(|x| (i, x)))
                    .collect::<Res<_>>()
                    .map(Got::Unordered),
            }
        };
    }
    if chunk1 {
        run!(pool.with_chunk_size(1))
    } else {
        run!(pool)
    }
}

/// One timed cross-call op on procpool (the blocker already holds a worker).
fn procpool_cross(pool: &procpool::Pool, op: CrossOp, n: u64) -> Res<f64> {
    let t = Instant::now();
    match op {
        CrossOp::Map2 => {
            let v = pp(pool.map(double, 0..2u64))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            check_doubles(&v).map(|()| ms)
        }
        CrossOp::First2Auto | CrossOp::First2One => {
            let first: Vec<(usize, Result<u64, procpool::Error>)> = if op == CrossOp::First2Auto {
                pool.imap_unordered(double, 0..n).take(2).collect()
            } else {
                let call = pool.with_chunk_size(1);
                call.imap_unordered(double, 0..n).take(2).collect()
            };
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if first.len() != 2 {
                return Err(format!("{} results", first.len()));
            }
            for (i, r) in first {
                let x = pp(r)?;
                if x != 2 * i as u64 {
                    return Err(format!("item {i}: got {x}"));
                }
            }
            Ok(ms)
        }
    }
}

/// A new pool, built and then given the tasks at once: the time of both, ms.
fn fresh(name: &str, tasks: &[u64]) -> Res<f64> {
    let t = Instant::now();
    let got = match name {
        "rayon" => {
            let r = Rayon::new()?;
            r.0.install(|| tasks.par_iter().with_max_len(1).map(|&x| task(x)).collect())
        }
        "procspawn" => {
            let p = Procspawn::new()?;
            let v = p.map(task, tasks.to_vec())?;
            let ms = t.elapsed();
            p.0.shutdown();
            check(tasks, Got::Ordered(v))?;
            return Ok(ms.as_secs_f64() * 1e3);
        }
        "procpool" => {
            let p = Procpool::new()?;
            let v = pp(p.0.with_chunk_size(1).map(task, tasks.to_vec()))?;
            let ms = t.elapsed();
            p.0.join();
            check(tasks, Got::Ordered(v))?;
            return Ok(ms.as_secs_f64() * 1e3);
        }
        other => return Err(format!("no fresh pool for {other}")),
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    check(tasks, Got::Ordered(got)).map(|()| ms)
}

fn run_batch(warm: &Warm, name: &str, b: &Batch) -> Cell {
    let mut ms = Vec::new();
    for tasks in &b.runs {
        let r = if b.fresh {
            fresh(name, tasks)
        } else {
            let t = Instant::now();
            match warm.call(tasks, b.api, b.chunk1) {
                None => return Cell::Missing,
                Some(r) => r.and_then(|got| {
                    let d = t.elapsed().as_secs_f64() * 1e3;
                    check(tasks, got).map(|()| d)
                }),
            }
        };
        match r {
            Ok(d) => ms.push(d),
            Err(e) => return Cell::Failed(e),
        }
    }
    Cell::Runs(ms)
}

/// The uneven-work section on every system `wants` (Python when `python` names an
/// interpreter), one at a time.
pub(crate) fn section(
    quick: bool,
    out: &std::path::Path,
    python: Option<&str>,
    wants: impl Fn(&str) -> bool,
) -> Section {
    let t0 = Instant::now();
    let mut section = Section::new(Plan::new(quick));
    if let Some(line) = crate::uneven::heavy_tail_summary(&section.plan) {
        eprintln!("{line}");
    }
    for name in crate::uneven::SYSTEMS {
        let want = if name == "python-mp" {
            python.is_some()
        } else {
            wants(name)
        };
        if !want {
            continue;
        }
        let t = Instant::now();
        let mark = crate::load::mark();
        let cells = match python.filter(|_| name == "python-mp") {
            Some(py) => match crate::python::run_uneven(py, out, &section.plan) {
                Ok(v) => {
                    let (cells, notes) = crate::uneven_report::parse_python(&v, &section.plan);
                    section.notes.extend(notes);
                    cells
                }
                Err(e) => {
                    eprintln!("python: uneven skipped ({e})");
                    section.notes.push(format!("python-mp: skipped ({e})"));
                    continue;
                }
            },
            None => {
                let (cells, notes) = run_system(name, &section.plan);
                section.notes.extend(notes);
                cells
            }
        };
        if let Some((other, steal)) = crate::load::foreign_share(mark, crate::load::mark()) {
            section
                .load
                .push((name.to_string(), other * 100.0, steal * 100.0));
        }
        eprintln!("{name}: uneven done in {:.1} s", t.elapsed().as_secs_f64());
        section.cells.push((name.to_string(), cells));
    }
    eprintln!("uneven: done in {:.1} s", t0.elapsed().as_secs_f64());
    section
}

/// Runs the whole plan on one Rust system: cells by row key, and notes.
pub(crate) fn run_system(name: &str, plan: &Plan) -> (Vec<(String, Cell)>, Vec<String>) {
    let warm = match Warm::new(name) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{name}: uneven: could not start: {e}");
            return (vec![], vec![format!("{name}: could not start: {e}")]);
        }
    };
    let mut notes = Vec::new();
    let mut out = Vec::new();
    for b in &plan.batches {
        let cell = run_batch(&warm, name, b);
        eprintln!("{name}: uneven {}: {}", b.key, cell.brief());
        out.push((b.key.clone(), cell));
    }
    for (op, key, _) in CROSS_OPS {
        let cell = match warm.cross(plan, op) {
            None => Cell::Missing,
            Some(Ok(ms)) => Cell::Runs(vec![ms]),
            Some(Err(e)) => Cell::Failed(e),
        };
        eprintln!("{name}: uneven {key}: {}", cell.brief());
        out.push((key.to_string(), cell));
    }
    let cell = match &warm {
        Warm::Rayon(_) => Cell::Missing,
        Warm::Procspawn(p) => procspawn_detached(p, plan),
        Warm::Procpool(_) => {
            let (cell, note) = detached_in_child(plan);
            notes.push(format!("{name}: case 5: {note}"));
            cell
        }
    };
    eprintln!("{name}: uneven {DETACHED_KEY}: {}", cell.brief());
    out.push((DETACHED_KEY.to_string(), cell));
    (out, notes)
}

/// The detached case on procspawn, in this process: its pool shares one queue, and its
/// handles have `join_timeout`, so a stuck run ends at the deadline.
fn procspawn_detached(p: &Procspawn, plan: &Plan) -> Cell {
    let mut h = p.0.spawn(0u64, forever);
    if h.join_timeout(Duration::from_millis(100)).is_ok() {
        return Cell::Failed("the endless task ended".into());
    }
    drop(h);
    let t = Instant::now();
    let handles: Vec<_> = (0..plan.detached_items)
        .map(|i| p.0.spawn(i, double))
        .collect();
    for (i, mut h) in handles.into_iter().enumerate() {
        let left = plan.deadline.saturating_sub(t.elapsed());
        match h.join_timeout(plan.detached_limit.min(left)) {
            Ok(x) if x == 2 * i as u64 => {}
            Ok(x) => return Cell::Failed(format!("item {i}: got {x}")),
            Err(e) if e.is_timeout() && left <= plan.detached_limit => {
                return Cell::DidNotFinish(plan.deadline.as_secs_f64());
            }
            Err(e) => return Cell::Failed(format!("item {i}: {e}")),
        }
    }
    Cell::Runs(vec![t.elapsed().as_secs_f64() * 1e3])
    // The pool is dropped by the caller, which kills the endless task's worker.
}

/// Body of the child process of the detached case (procpool): prints `ok MS` or
/// `error MESSAGE` and exits.
pub(crate) fn detached_child() -> ! {
    let plan = Plan::new(std::env::args().any(|a| a == "--quick"));
    let r = (|| -> Res<f64> {
        let pool = Procpool::new()?.0;
        let mut h = pp(pool.spawn(forever, 0u64))?;
        if h.join_timeout(Duration::from_millis(100)).is_ok() {
            return Err("the endless task ended".into());
        }
        drop(h);
        let t = Instant::now();
        let call = pool.with_timeout(plan.detached_limit);
        for (i, r) in call.imap(double, 0..plan.detached_items).enumerate() {
            let x = pp(r)?;
            if x != 2 * i as u64 {
                return Err(format!("item {i}: got {x}"));
            }
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    })();
    match r {
        Ok(ms) => println!("ok {ms}"),
        Err(e) => println!("error {e}"),
    }
    std::process::exit(0)
}

/// Runs [`detached_child`] in a child process, killed at the deadline; then checks that
/// none of its descendants (the pool's workers) outlived it. Returns the cell and what
/// became of the processes.
fn detached_in_child(plan: &Plan) -> (Cell, String) {
    let fail = |e: String| (Cell::Failed(e), "no child process".to_string());
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("this program's path: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_FLAG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    if plan.quick {
        cmd.arg("--quick");
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("starting the child: {e}")),
    };
    let root = child.id();
    let mut seen = HashSet::new();
    let started = Instant::now();
    let finished = loop {
        seen.extend(crate::procs::descendants(root));
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if started.elapsed() > plan.deadline => break false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return fail(format!("waiting for the child: {e}")),
        }
    };
    if !finished {
        seen.extend(crate::procs::descendants(root));
        // SAFETY: kill(2) on the process group of a child this process started and has
        // not reaped (so its id cannot have been reused).
        unsafe { libc::kill(-(root as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    let left = crate::procs::outlived(&seen, Duration::from_secs(2));
    let leftover = (!left.is_empty()).then(|| {
        crate::procs::kill_all(&left);
        format!(
            "{} of the child's {} descendants outlived it (killed): {left:?}",
            left.len(),
            seen.len()
        )
    });
    let cell = if !finished {
        Cell::DidNotFinish(plan.deadline.as_secs_f64())
    } else if let Some(ms) = text.trim().strip_prefix("ok ") {
        ms.parse()
            .map_or_else(|e| Cell::Failed(format!("{e}")), |ms| Cell::Runs(vec![ms]))
    } else {
        Cell::Failed(text.trim().trim_start_matches("error ").to_string())
    };
    let how = if finished {
        "the child process finished"
    } else {
        "the child process was killed at the deadline"
    };
    match leftover {
        Some(msg) => (Cell::Failed(msg.clone()), format!("{how}; {msg}")),
        None => (
            cell,
            format!(
                "{how}; its {} descendants (the pool's workers) ended with it",
                seen.len()
            ),
        ),
    }
}
