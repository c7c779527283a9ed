//! The maps section: the per-call cost of short maps, serde records, and the calling
//! process's memory during a long `imap`, for procpool against sequential code, rayon and
//! procspawn, in one run.
//!
//! - `map200k`: `x * 2` over 200 000 `u64`s, one call: procpool with automatic chunks,
//!   procspawn with chunks made by hand (4 per worker, as Python's `Pool.map` makes them),
//!   rayon's own splitting. Items per second, the best of many calls (a short call is
//!   at the mercy of the scheduler; the best is the closest to the system's own cost),
//!   and the median.
//! - `serde`: 100 000 records (a struct of strings, a vector of floats and numbers) each
//!   summarised into a smaller struct, one call, automatic chunks; the figure is the
//!   system's time against sequential Rust's (higher is better; 2 is the bound of
//!   threads on two cores). With it, the bound of any pool of processes: the copying
//!   such a pool cannot avoid, timed on one core (encode the records, drop them, build
//!   each again from its encoding, summarise and encode it, decode the summaries), split
//!   over the machine's cores.
//! - `imaprss`: `imap` of 2 000 000 items, each result 1 KiB, which the consumer drops:
//!   the peak resident memory of the calling process (`VmHWM`), each system in a fresh
//!   process of its own (this binary started with [`CHILD_FLAG`]), and items per second.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::systems::{Procpool, Procspawn, Rayon, Res, WORKERS};
use crate::work::{double, double_chunk, median};

/// The flag that makes the benchmark binary an `imap` memory child: `FLAG SYSTEM ITEMS`.
pub(crate) const CHILD_FLAG: &str = "--maps-imap-child";

/// Items of the short map.
const SHORT_N: u64 = 200_000;
/// Records of the serde workload.
const RECORDS: usize = 100_000;
/// Items of the long `imap`, and the size of each result.
const IMAP_N: u64 = 2_000_000;
const IMAP_RESULT: usize = 1024;
/// Items of each procspawn task in the long `imap` (procspawn has no chunking; one
/// spawn per item would take minutes).
const PROCSPAWN_IMAP_CHUNK: u64 = 256;

/// A record of the serde workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    values: Vec<f64>,
    flag: bool,
}

/// What each record becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Summary {
    id: u64,
    label: String,
    mean: f64,
    max: f64,
}

/// The serde workload's task.
pub(crate) fn summarize(r: Record) -> Summary {
    let n = r.values.len().max(1) as f64;
    let sum: f64 = r.values.iter().sum();
    let max = r.values.iter().copied().fold(f64::MIN, f64::max);
    let mut label = r.name;
    if r.flag {
        label.push('*');
    }
    if let Some(t) = r.tags.first() {
        label.push(':');
        label.push_str(t);
    }
    Summary {
        id: r.id,
        label,
        mean: sum / n,
        max,
    }
}

/// The serde workload's input.
pub(crate) fn records(n: usize) -> Vec<Record> {
    (0..n as u64)
        .map(|i| Record {
            id: i,
            name: format!("record-{i:08}"),
            tags: (0..3).map(|k| format!("tag{}", (i + k) % 17)).collect(),
            values: (0..8).map(|k| ((i * 8 + k) % 1000) as f64 * 0.5).collect(),
            flag: i % 3 == 0,
        })
        .collect()
}

/// One result of the long `imap`.
pub(crate) fn kib(i: u64) -> Vec<u8> {
    vec![i as u8; IMAP_RESULT]
}

fn kib_chunk(range: (u64, u64)) -> Vec<Vec<u8>> {
    (range.0..range.1).map(kib).collect()
}

/// One system's figures.
#[derive(Debug, Default, Clone)]
pub(crate) struct Row {
    system: &'static str,
    /// Short map: best and median items/s.
    short_best: Option<f64>,
    short_median: Option<f64>,
    /// Serde records: best and median time, ms.
    serde_ms: Option<f64>,
    serde_median_ms: Option<f64>,
    /// Long `imap`: peak resident KiB of the calling process, and items/s.
    rss_kib: Option<u64>,
    imap_rate: Option<f64>,
    notes: Vec<String>,
}

/// The section's rows.
#[derive(Debug)]
pub(crate) struct Section {
    rows: Vec<Row>,
    other_load: Option<f64>,
    /// The serde records' copying, timed on one core (see [`Copying`]).
    copying: Option<Copying>,
}

/// What any pool of processes does to the serde records besides the work itself, timed
/// on one core, ms (the best of several runs, each part its best): encode every record,
/// drop the records, build each again from its encoding then summarise and encode the
/// summary (the workers' part), decode the summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Copying {
    encode: f64,
    drop: f64,
    rebuild: f64,
    decode: f64,
}

impl Copying {
    /// Times the copying of `input` `runs` times; `None` if a run's summaries differ from
    /// `expected`.
    fn measure(input: &[Record], expected: &[Summary], runs: usize) -> Option<Copying> {
        let mut best: Option<Copying> = None;
        // The encodings go into buffers kept from run to run, as a pool keeps its own:
        // what is timed is the copying, not the first touch of fresh pages.
        let (mut args, mut results) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            let owned = input.to_vec();
            let ms = |a: Instant| a.elapsed().as_secs_f64() * 1e3;
            args.clear();
            results.clear();
            let t = Instant::now();
            for r in &owned {
                args = postcard::to_extend(r, args).ok()?;
            }
            let encode = ms(t);
            let t = Instant::now();
            drop(owned);
            let drop_ms = ms(t);
            let t = Instant::now();
            let mut rest = &args[..];
            for _ in 0..input.len() {
                let (r, tail): (Record, &[u8]) = postcard::take_from_bytes(rest).ok()?;
                rest = tail;
                results = postcard::to_extend(&summarize(r), results).ok()?;
            }
            let rebuild = ms(t);
            let t = Instant::now();
            let mut rest = &results[..];
            let mut out = Vec::with_capacity(input.len());
            for _ in 0..input.len() {
                let (s, tail): (Summary, &[u8]) = postcard::take_from_bytes(rest).ok()?;
                rest = tail;
                out.push(s);
            }
            let decode = ms(t);
            if out != expected {
                return None;
            }
            let run = Copying {
                encode,
                drop: drop_ms,
                rebuild,
                decode,
            };
            best = Some(match best {
                None => run,
                Some(b) => Copying {
                    encode: b.encode.min(run.encode),
                    drop: b.drop.min(run.drop),
                    rebuild: b.rebuild.min(run.rebuild),
                    decode: b.decode.min(run.decode),
                },
            });
        }
        best
    }

    fn total(&self) -> f64 {
        self.encode + self.drop + self.rebuild + self.decode
    }

    /// The bound line, against sequential's time when known.
    fn line(&self, sequential_ms: Option<f64>) -> String {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.line_on(cores, sequential_ms)
    }

    fn line_on(&self, cores: usize, sequential_ms: Option<f64>) -> String {
        let at_best = self.total() / cores as f64;
        let ratio = sequential_ms.map_or("-".into(), |q| format!("{:.2}x", q / at_best));
        format!(
            "serde records, the copying any process pool does, on one core: encode {:.1} ms, \
             drop the records {:.1}, build them again + summarise + encode {:.1}, decode the \
             summaries {:.1}: {:.1} ms; split over {cores} cores at best {:.1} ms = {ratio} \
             sequential (target >= 0.6x)",
            self.encode,
            self.drop,
            self.rebuild,
            self.decode,
            self.total(),
            at_best
        )
    }
}

/// Which parts of the section run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts {
    pub(crate) short: bool,
    pub(crate) serde: bool,
    pub(crate) imap: bool,
}

/// Runs the section for the systems `wants` accepts.
pub(crate) fn section(quick: bool, parts: Parts, wants: impl Fn(&str) -> bool) -> Section {
    let mark = crate::load::mark();
    let calls = if quick { 30 } else { 200 };
    let serde_calls = if quick { 3 } else { 9 };
    let input = if parts.serde {
        records(RECORDS)
    } else {
        Vec::new()
    };
    let copying = if parts.serde {
        let expected: Vec<Summary> = input.iter().cloned().map(summarize).collect();
        Copying::measure(&input, &expected, serde_calls)
    } else {
        None
    };
    let mut rows = Vec::new();
    for system in ["sequential", "rayon", "procspawn", "procpool"] {
        if !wants(system) {
            continue;
        }
        let mut row = Row {
            system,
            ..Row::default()
        };
        let mut sys = match Sys::new(system) {
            Ok(s) => s,
            Err(e) => {
                row.notes.push(format!("could not start: {e}"));
                rows.push(row);
                continue;
            }
        };
        if parts.short {
            match measure(calls, || sys.short(SHORT_N)) {
                Ok(mut t) => {
                    let best = t.iter().copied().fold(f64::INFINITY, f64::min);
                    row.short_best = Some(SHORT_N as f64 / best);
                    row.short_median = Some(SHORT_N as f64 / median(&mut t));
                }
                Err(e) => row.notes.push(format!("map200k: {e}")),
            }
        }
        if parts.serde {
            let expected: Vec<Summary> = input.iter().cloned().map(summarize).collect();
            let mut times = Vec::new();
            let mut err = None;
            for _ in 0..serde_calls + 1 {
                let owned = input.clone();
                let t = Instant::now();
                match sys.serde(owned) {
                    Ok(v) if v == expected => times.push(t.elapsed().as_secs_f64()),
                    Ok(_) => err = Some("results differ from sequential ones".to_string()),
                    Err(e) => err = Some(e),
                }
                if err.is_some() {
                    break;
                }
            }
            match err {
                Some(e) => row.notes.push(format!("serde: {e}")),
                None => {
                    times.remove(0); // warm-up
                    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
                    row.serde_ms = Some(best * 1e3);
                    row.serde_median_ms = Some(median(&mut times) * 1e3);
                }
            }
        }
        drop(sys);
        if parts.imap && system != "sequential" {
            match imap_child(system, if quick { IMAP_N / 4 } else { IMAP_N }) {
                Ok((kib, rate)) => {
                    row.rss_kib = Some(kib);
                    row.imap_rate = Some(rate);
                }
                Err(e) => row.notes.push(format!("imap: {e}")),
            }
        }
        eprintln!(
            "maps: {system}: map200k best {} median {} items/s; serde {} ms; imap peak {} KiB at {} items/s",
            show(row.short_best),
            show(row.short_median),
            show(row.serde_ms),
            row.rss_kib.map_or("-".into(), |k| k.to_string()),
            show(row.imap_rate)
        );
        for n in &row.notes {
            eprintln!("maps: {system}: {n}");
        }
        rows.push(row);
    }
    let other_load = crate::load::foreign_share(mark, crate::load::mark()).map(|(o, _)| o * 100.0);
    Section {
        rows,
        other_load,
        copying,
    }
}

/// `calls` timed calls of `f` (after one warm-up), in seconds.
fn measure(calls: usize, mut f: impl FnMut() -> Res<()>) -> Res<Vec<f64>> {
    f()?;
    let mut t = Vec::with_capacity(calls);
    for _ in 0..calls {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(t)
}

/// The systems, warm.
enum Sys {
    Sequential,
    Rayon(Rayon),
    Procspawn(Procspawn),
    Procpool(Procpool),
}

impl Sys {
    fn new(name: &str) -> Res<Self> {
        let s = match name {
            "sequential" => Sys::Sequential,
            "rayon" => Sys::Rayon(Rayon::new()?),
            "procspawn" => Sys::Procspawn(Procspawn::new()?),
            "procpool" => Sys::Procpool(Procpool::new()?),
            other => return Err(format!("unknown system {other}")),
        };
        Ok(s)
    }

    fn short(&mut self, n: u64) -> Res<()> {
        let v: Vec<u64> = match self {
            Sys::Sequential => (0..n).map(|x| double(std::hint::black_box(x))).collect(),
            Sys::Rayon(r) => r.0.install(|| (0..n).into_par_iter().map(double).collect()),
            Sys::Procspawn(p) => {
                let per = n.div_ceil(4 * WORKERS as u64).max(1);
                let chunks = (0..n)
                    .step_by(per as usize)
                    .map(|lo| (lo..(lo + per).min(n)).collect::<Vec<u64>>());
                p.map(double_chunk, chunks)?.concat()
            }
            Sys::Procpool(p) => p.0.map(double, 0..n).map_err(|e| e.to_string())?,
        };
        if v.len() as u64 != n || v.iter().enumerate().any(|(i, &x)| x != 2 * i as u64) {
            return Err("wrong results".into());
        }
        Ok(())
    }

    fn serde(&mut self, input: Vec<Record>) -> Res<Vec<Summary>> {
        Ok(match self {
            Sys::Sequential => input.into_iter().map(summarize).collect(),
            Sys::Rayon(r) => {
                r.0.install(|| input.into_par_iter().map(summarize).collect())
            }
            Sys::Procspawn(p) => {
                let per = input.len().div_ceil(4 * WORKERS).max(1);
                let mut chunks = Vec::new();
                let mut it = input.into_iter();
                loop {
                    let c: Vec<Record> = it.by_ref().take(per).collect();
                    if c.is_empty() {
                        break;
                    }
                    chunks.push(c);
                }
                p.map(summarize_chunk, chunks)?.concat()
            }
            Sys::Procpool(p) => p.0.map(summarize, input).map_err(|e| e.to_string())?,
        })
    }
}

fn summarize_chunk(c: Vec<Record>) -> Vec<Summary> {
    c.into_iter().map(summarize).collect()
}

/// Runs the long `imap` of `system` in a fresh process; returns its peak resident KiB
/// and items/s.
fn imap_child(system: &str, n: u64) -> Res<(u64, f64)> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([CHILD_FLAG, system, &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                use std::io::Read;
                let _ = s.read_to_string(&mut out);
            }
            if !status.success() {
                return Err(format!("child: {status}: {}", out.trim()));
            }
            let mut w = out.split_whitespace();
            let kib = w.next().and_then(|s| s.parse().ok());
            let rate = w.next().and_then(|s| s.parse().ok());
            return kib.zip(rate).ok_or(format!("child said {out:?}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("child took over 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `imap` memory child (this binary started with [`CHILD_FLAG`]): prints its peak
/// resident KiB and the items/s of the `imap`, then exits.
pub(crate) fn imap_child_main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let (system, n) = match &args[..] {
        [_, _, s, n] => (s.clone(), n.parse::<u64>().unwrap_or(0)),
        _ => {
            eprintln!("{CHILD_FLAG} needs: SYSTEM ITEMS");
            std::process::exit(2);
        }
    };
    let r = (|| -> Res<f64> {
        let check = |i: u64, v: &[u8]| {
            if v.len() == IMAP_RESULT && v[0] == i as u8 && v[IMAP_RESULT - 1] == i as u8 {
                Ok(())
            } else {
                Err(format!("item {i}: wrong result"))
            }
        };
        match system.as_str() {
            "rayon" => {
                let r = Rayon::new()?;
                let t = Instant::now();
                let bad = r.0.install(|| {
                    (0..n)
                        .into_par_iter()
                        .map(|i| check(i, &kib(i)).is_err() as u64)
                        .sum::<u64>()
                });
                if bad > 0 {
                    return Err(format!("{bad} wrong results"));
                }
                Ok(n as f64 / t.elapsed().as_secs_f64())
            }
            "procspawn" => {
                let p = Procspawn::new()?;
                let t = Instant::now();
                let ranges = (0..n)
                    .step_by(PROCSPAWN_IMAP_CHUNK as usize)
                    .map(|lo| (lo, (lo + PROCSPAWN_IMAP_CHUNK).min(n)));
                let mut i = 0;
                procspawn_stream(&p, kib_chunk, ranges, |chunk| {
                    for v in chunk {
                        check(i, &v)?;
                        i += 1;
                    }
                    Ok(())
                })?;
                if i != n {
                    return Err(format!("{i} results for {n} items"));
                }
                Ok(n as f64 / t.elapsed().as_secs_f64())
            }
            "procpool" => {
                let p = Procpool::new()?;
                let t = Instant::now();
                let mut i = 0;
                for r in p.0.imap(kib, 0..n) {
                    check(i, &r.map_err(|e| e.to_string())?)?;
                    i += 1;
                }
                if i != n {
                    return Err(format!("{i} results for {n} items"));
                }
                Ok(n as f64 / t.elapsed().as_secs_f64())
            }
            other => Err(format!("no imap for {other}")),
        }
    })();
    match r {
        Ok(rate) => {
            println!("{} {rate}", peak_kib());
            std::process::exit(0);
        }
        Err(e) => {
            println!("{e}");
            std::process::exit(1);
        }
    }
}

/// procspawn's pool over `items`, each result handed to `each` in order as it comes (at
/// most a window of tasks outstanding, as `Procspawn::map`).
fn procspawn_stream<A, R>(
    p: &Procspawn,
    f: fn(A) -> R,
    items: impl IntoIterator<Item = A> + Send,
    mut each: impl FnMut(R) -> Res<()>,
) -> Res<()>
where
    A: Serialize + serde::de::DeserializeOwned,
    R: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let pool = &p.0;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<procspawn::JoinHandle<R>>(64);
        scope.spawn(move || {
            for a in items {
                if tx.send(pool.spawn(a, f)).is_err() {
                    break;
                }
            }
        });
        for h in rx {
            each(h.join().map_err(|e| e.to_string())?)?;
        }
        Ok(())
    })
}

/// This process's peak resident size, KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

impl Section {
    /// The table printed at the end of the run.
    pub(crate) fn table(&self) -> String {
        let seq = self.rows.iter().find(|r| r.system == "sequential");
        let rayon = self.rows.iter().find(|r| r.system == "rayon");
        let mut s = format!(
            "Maps: x * 2 over {SHORT_N} u64s in one call (best / median items/s); {RECORDS} serde records \
             (best time, and sequential's time over it); imap of {IMAP_N} x 1 KiB results dropped by the \
             consumer (peak resident MiB of the calling process, items/s); {WORKERS} workers\n"
        );
        let _ = writeln!(
            s,
            "{:<11} {:>10} {:>10} {:>8} {:>10} {:>8} {:>9} {:>10}",
            "system", "map best", "median", "vs rayon", "serde ms", "vs seq", "imap MiB", "imap /s"
        );
        for r in &self.rows {
            let vs_rayon = match (r.short_best, rayon.and_then(|x| x.short_best)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            let vs_seq = match (r.serde_ms, seq.and_then(|x| x.serde_ms)) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<11} {:>10} {:>10} {:>8} {:>10} {:>8} {:>9} {:>10}{}",
                r.system,
                show(r.short_best),
                show(r.short_median),
                vs_rayon,
                r.serde_ms.map_or("-".into(), |v| format!("{v:.1}")),
                vs_seq,
                r.rss_kib
                    .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                show(r.imap_rate),
                if r.notes.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", r.notes.join("; "))
                }
            );
        }
        match self.copying {
            Some(c) => {
                let _ = writeln!(s, "{}", c.line(seq.and_then(|x| x.serde_ms)));
            }
            None if self.rows.iter().any(|r| r.serde_ms.is_some()) => {
                let _ = writeln!(
                    s,
                    "serde records: the copying could not be timed (its summaries differ)"
                );
            }
            None => {}
        }
        if let Some(o) = self.other_load {
            let _ = writeln!(
                s,
                "other processes used {o:.0}% of the cores during this section"
            );
        }
        s
    }

    /// Rows for results.csv (same columns as the main table's).
    pub(crate) fn csv(&self) -> String {
        let mut s = String::new();
        for r in &self.rows {
            let mut put = |what: &str, unit: &str, better: &str, v: Option<f64>| {
                if let Some(v) = v {
                    let _ = writeln!(s, "maps,\"{what}\",{unit},{better},{},{v},", r.system);
                }
            };
            put("x*2 over 200k, best", "items/s", "higher", r.short_best);
            put("x*2 over 200k, median", "items/s", "higher", r.short_median);
            put("100k serde records", "ms", "lower", r.serde_ms);
            put(
                "imap 2M x 1 KiB peak RSS",
                "KiB",
                "lower",
                r.rss_kib.map(|k| k as f64),
            );
            put("imap 2M x 1 KiB", "items/s", "higher", r.imap_rate);
        }
        s
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".into(), crate::report::num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copying_is_timed_and_checked() {
        let input = records(200);
        let expected: Vec<Summary> = input.iter().cloned().map(summarize).collect();
        let c = Copying::measure(&input, &expected, 2).expect("summaries as sequential's");
        assert!(c.encode > 0.0 && c.rebuild > 0.0 && c.decode > 0.0, "{c:?}");
        // Wrong expectations are refused rather than timed.
        assert_eq!(Copying::measure(&input, &expected[1..], 1), None);
        let line = Copying {
            encode: 5.0,
            drop: 9.0,
            rebuild: 21.0,
            decode: 3.0,
        }
        .line_on(2, Some(7.6));
        assert!(line.contains("38.0 ms"), "{line}");
        assert!(
            line.contains("at best 19.0 ms = 0.40x sequential"),
            "{line}"
        );
    }

    #[test]
    fn summaries_follow_the_records() {
        let r = records(3);
        let s: Vec<Summary> = r.into_iter().map(summarize).collect();
        assert_eq!(s[0].label, "record-00000000*:tag0");
        assert_eq!(s[1].label, "record-00000001:tag1");
        assert_eq!(s[2].max, 11.5);
    }
}
