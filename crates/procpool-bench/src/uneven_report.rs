//! What the uneven-work section measured: its cells, its table and its CSV rows, and the
//! reading of the Python script's answer.

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::num;
use crate::uneven::{CROSS_OPS, DETACHED_KEY, Plan, SYSTEMS, Summary};

/// One system's figure for one row.
#[derive(Debug, Clone)]
pub(crate) enum Cell {
    /// Wall time of each run, ms.
    Runs(Vec<f64>),
    /// Given up after this many seconds.
    DidNotFinish(f64),
    /// The system cannot express the case.
    Missing,
    /// A failed run or a wrong result.
    Failed(String),
}

impl Cell {
    /// A short description for the progress output.
    pub(crate) fn brief(&self) -> String {
        match self {
            Cell::Runs(v) => v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(" ") + " ms",
            Cell::DidNotFinish(s) => format!("did not finish (> {s} s)"),
            Cell::Missing => "-".into(),
            Cell::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// How a row reduces a cell's runs to one makespan.
#[derive(Debug, Clone, Copy)]
enum Reduce {
    First,
    Sum,
    Median,
    Worst,
}

/// A row of the table.
#[derive(Debug, Clone)]
struct Line {
    key: String,
    label: String,
    reduce: Reduce,
    /// The greedy bound (ms) after the same reduction; `None` where it is 0.
    bound: Option<f64>,
}

/// The rows in case order: the batches of cases 1 to 3, then 4 and 5, then the rest.
fn lines(plan: &Plan) -> Vec<Line> {
    let mut out = Vec::new();
    for b in &plan.batches {
        if b.key.starts_with("c6") && !out.iter().any(|l: &Line| l.key == DETACHED_KEY) {
            other_lines(&mut out);
        }
        let bounds = b.bounds_ms();
        let line = |label: String, reduce, bound| Line {
            key: b.key.clone(),
            label,
            reduce,
            bound: Some(bound),
        };
        match b.summary {
            Summary::One => out.push(line(b.label.clone(), Reduce::First, bounds[0])),
            Summary::Total => out.push(line(
                format!("{} (total)", b.label),
                Reduce::Sum,
                bounds.iter().sum(),
            )),
            Summary::MedianWorst => {
                let n = b.runs.len();
                out.push(line(
                    format!("{}: median of {n}", b.label),
                    Reduce::Median,
                    bounds[0],
                ));
                out.push(line(
                    format!("{}: worst of {n}", b.label),
                    Reduce::Worst,
                    bounds[0],
                ));
            }
        }
    }
    if !out.iter().any(|l| l.key == DETACHED_KEY) {
        other_lines(&mut out);
    }
    out
}

/// The rows of cases 4 and 5 (no bound: their ideal is 0).
fn other_lines(out: &mut Vec<Line>) {
    for (_, key, label) in CROSS_OPS {
        out.push(Line {
            key: key.into(),
            label: label.into(),
            reduce: Reduce::First,
            bound: None,
        });
    }
    out.push(Line {
        key: DETACHED_KEY.into(),
        label: "5. endless task detached, then imap, 1 s limit".into(),
        reduce: Reduce::First,
        bound: None,
    });
}

fn reduce(v: &[f64], how: Reduce) -> Option<f64> {
    let mut v = v.to_vec();
    match how {
        Reduce::First => v.first().copied(),
        Reduce::Sum => (!v.is_empty()).then(|| v.iter().sum()),
        Reduce::Median => (!v.is_empty()).then(|| crate::work::median(&mut v)),
        Reduce::Worst => v.iter().copied().reduce(f64::max),
    }
}

/// Everything the section measured.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub(crate) plan: Plan,
    /// Per system: cells by row key.
    pub(crate) cells: Vec<(String, Vec<(String, Cell)>)>,
    /// Per system: (other processes' share of the cores, host's steal), percent.
    pub(crate) load: Vec<(String, f64, f64)>,
    pub(crate) notes: Vec<String>,
}

impl Section {
    pub(crate) fn new(plan: Plan) -> Self {
        Self {
            plan,
            cells: Vec::new(),
            load: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn cell(&self, system: &str, key: &str) -> Option<&Cell> {
        let (_, cells) = self.cells.iter().find(|(s, _)| s == system)?;
        cells.iter().find(|(k, _)| k == key).map(|(_, c)| c)
    }

    fn systems(&self) -> Vec<&'static str> {
        SYSTEMS
            .into_iter()
            .filter(|s| self.cells.iter().any(|(n, _)| n == s))
            .collect()
    }

    /// (makespan ms, efficiency) of a system on a row.
    fn figure(&self, system: &str, l: &Line) -> Option<(f64, Option<f64>)> {
        let Some(Cell::Runs(v)) = self.cell(system, &l.key) else {
            return None;
        };
        let ms = reduce(v, l.reduce)?;
        Some((ms, l.bound.map(|b| b / ms)))
    }

    /// The table: rows = cases, columns = systems, cells = makespan in ms and (in
    /// brackets) the greedy bound over it.
    pub(crate) fn table(&self) -> String {
        const LABEL_W: usize = 50;
        const CELL_W: usize = 23;
        let systems = self.systems();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nUneven work, {} workers: makespan in ms (in brackets: efficiency = greedy bound / \
             makespan; 1.00 is the bound)",
            crate::systems::WORKERS
        );
        let _ = write!(s, "{:<LABEL_W$} {:>8}", "case", "bound");
        for n in &systems {
            let _ = write!(s, " {n:>CELL_W$}");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "{}",
            "-".repeat(LABEL_W + 9 + systems.len() * (CELL_W + 1))
        );
        for l in lines(&self.plan) {
            let bound = l.bound.map_or("0".into(), num);
            let _ = write!(s, "{:<LABEL_W$} {bound:>8}", l.label);
            for n in &systems {
                let text = match (self.cell(n, &l.key), self.figure(n, &l)) {
                    (_, Some((ms, Some(e)))) => format!("{} ({e:.2})", num(ms)),
                    (_, Some((ms, None))) => num(ms),
                    (Some(Cell::DidNotFinish(secs)), _) => {
                        format!("did not finish (> {secs} s)")
                    }
                    (Some(Cell::Failed(_)), _) => "error".into(),
                    _ => "–".into(),
                };
                let _ = write!(s, " {text:>CELL_W$}");
            }
            s.push('\n');
        }
        let _ = write!(
            s,
            "{:<LABEL_W$} {:>8}",
            "other processes' CPU meanwhile", ""
        );
        for n in &systems {
            let text = self
                .load
                .iter()
                .find(|(m, _, _)| m == n)
                .map_or("-".into(), |(_, o, st)| format!("{o:.0}% (steal {st:.0}%)"));
            let _ = write!(s, " {text:>CELL_W$}");
        }
        s.push('\n');
        if let Some(line) = crate::uneven::heavy_tail_summary(&self.plan) {
            let _ = writeln!(s, "{line}");
        }
        for (n, cells) in &self.cells {
            for (k, c) in cells {
                if let Cell::Failed(e) = c {
                    let _ = writeln!(s, "error: {n}: {k}: {e}");
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        s
    }

    /// Rows for results.csv (same columns as the rest of the file).
    pub(crate) fn csv(&self) -> String {
        let mut s = String::new();
        let mut row =
            |metric: &str, unit: &str, higher: bool, sys: &str, v: f64, r: Option<f64>| {
                let better = if higher { "higher" } else { "lower" };
                let ratio = r.map_or(String::new(), |r| format!("{r}"));
                let _ = writeln!(s, "uneven,\"{metric}\",{unit},{better},{sys},{v},{ratio}");
            };
        for l in lines(&self.plan) {
            if let Some(b) = l.bound {
                row(
                    &format!("{}: makespan", l.label),
                    "ms",
                    false,
                    "greedy-bound",
                    b,
                    None,
                );
            }
            let pp = self.figure("procpool", &l).map(|f| f.0);
            for n in self.systems() {
                match (self.figure(n, &l), self.cell(n, &l.key)) {
                    (Some((ms, eff)), _) => {
                        let r = pp.filter(|p| *p > 0.0).map(|p| ms / p);
                        row(&format!("{}: makespan", l.label), "ms", false, n, ms, r);
                        if let Some(e) = eff {
                            row(&format!("{}: efficiency", l.label), "x", true, n, e, None);
                        }
                    }
                    (None, Some(Cell::DidNotFinish(secs))) => {
                        let m = format!("{}: did not finish within", l.label);
                        row(&m, "ms", false, n, secs * 1e3, None);
                    }
                    _ => {}
                }
            }
        }
        // The seeds of the multi-run rows, one by one.
        for b in self.plan.batches.iter().filter(|b| b.runs.len() > 1) {
            let bounds = b.bounds_ms();
            for n in self.systems() {
                let Some(Cell::Runs(v)) = self.cell(n, &b.key) else {
                    continue;
                };
                for (i, (ms, bound)) in v.iter().zip(&bounds).enumerate() {
                    let m = format!("{} run {}: makespan (bound {bound} ms)", b.label, i + 1);
                    row(&m, "ms", false, n, *ms, None);
                }
            }
        }
        for (n, other, steal) in &self.load {
            row(
                "other processes' CPU meanwhile",
                "% cores",
                false,
                n,
                *other,
                None,
            );
            row(
                "CPU stolen by the VM's host",
                "% cores",
                false,
                n,
                *steal,
                None,
            );
        }
        s
    }
}

/// The Python script's answer as cells by row key.
pub(crate) fn parse_python(v: &Value, plan: &Plan) -> (Vec<(String, Cell)>, Vec<String>) {
    let mut cells = Vec::new();
    let runs = |x: Option<&Value>| -> Cell {
        match x {
            Some(Value::Array(a)) => Cell::Runs(a.iter().filter_map(Value::as_f64).collect()),
            Some(Value::Object(o)) if o.contains_key("dnf") => {
                Cell::DidNotFinish(o["dnf"].as_f64().unwrap_or(0.0))
            }
            Some(Value::Object(o)) if o.contains_key("error") => {
                Cell::Failed(o["error"].as_str().unwrap_or("?").to_string())
            }
            Some(Value::Number(n)) => Cell::Runs(vec![n.as_f64().unwrap_or(0.0)]),
            Some(_) => Cell::Missing,
            None => Cell::Failed("no figure (see python's errors)".into()),
        }
    };
    let get = |k: &str| v.get("results").and_then(|r| r.get(k));
    for b in &plan.batches {
        cells.push((b.key.clone(), runs(get(&b.key))));
    }
    for (_, key, _) in CROSS_OPS {
        cells.push((key.to_string(), runs(get(key))));
    }
    cells.push((DETACHED_KEY.to_string(), runs(get(DETACHED_KEY))));
    let notes = v
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| format!("python-mp: {}", e.as_str().unwrap_or("?")))
        .collect();
    (cells, notes)
}
