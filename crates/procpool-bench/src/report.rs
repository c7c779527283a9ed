//! The table on stdout, the CSV file and the SVG chart of the crossover curve.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::figures::{Figures, Results};

/// One row of the table.
struct Metric {
    workload: &'static str,
    name: &'static str,
    unit: &'static str,
    higher_better: bool,
    /// Whether a ratio to procpool means something.
    compare: bool,
    get: fn(&Figures) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        workload: "seed",
        name: "seed: 8 tasks of ~10 ms",
        unit: "ms",
        higher_better: false,
        compare: true,
        get: |f| f.seed_ms,
    },
    Metric {
        workload: "seed",
        name: "seed: speedup over sequential",
        unit: "x",
        higher_better: true,
        compare: true,
        get: |f| f.seed_speedup,
    },
    Metric {
        workload: "tiny",
        name: "tiny: chunk size 1",
        unit: "tasks/s",
        higher_better: true,
        compare: true,
        get: |f| f.tiny1,
    },
    Metric {
        workload: "tiny",
        name: "tiny: automatic chunks",
        unit: "items/s",
        higher_better: true,
        compare: true,
        get: |f| f.tiny_auto,
    },
    Metric {
        workload: "bulk",
        name: "bulk: 16 x 32 MiB",
        unit: "MB/s",
        higher_better: true,
        compare: true,
        get: |f| f.bulk,
    },
    Metric {
        workload: "startup",
        name: "startup: create+1 task+stop",
        unit: "ms",
        higher_better: false,
        compare: true,
        get: |f| f.startup_ms,
    },
    Metric {
        workload: "startup",
        name: "  of which create",
        unit: "ms",
        higher_better: false,
        compare: true,
        get: |f| f.startup_parts.map(|p| p[0]),
    },
    Metric {
        workload: "startup",
        name: "  of which first task",
        unit: "ms",
        higher_better: false,
        compare: true,
        get: |f| f.startup_parts.map(|p| p[1]),
    },
    Metric {
        workload: "startup",
        name: "  of which shut down",
        unit: "ms",
        higher_better: false,
        compare: true,
        get: |f| f.startup_parts.map(|p| p[2]),
    },
    Metric {
        workload: "latency",
        name: "latency: median",
        unit: "us",
        higher_better: false,
        compare: true,
        get: |f| f.lat_med,
    },
    Metric {
        workload: "latency",
        name: "latency: p99",
        unit: "us",
        higher_better: false,
        compare: true,
        get: |f| f.lat_p99,
    },
    Metric {
        workload: "crossover",
        name: "crossover t (grid)",
        unit: "us",
        higher_better: false,
        compare: true,
        get: |f| f.crossover,
    },
    Metric {
        workload: "crossover",
        name: "crossover t (interpolated)",
        unit: "us",
        higher_better: false,
        compare: true,
        get: |f| f.crossover_interp,
    },
    Metric {
        workload: "machine",
        name: "other processes' CPU meanwhile",
        unit: "% cores",
        higher_better: false,
        compare: false,
        get: |f| f.other_load,
    },
    Metric {
        workload: "machine",
        name: "CPU stolen by the VM's host",
        unit: "% cores",
        higher_better: false,
        compare: false,
        get: |f| f.steal,
    },
];

/// A number with about three significant digits, and k/M/G for large ones.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(v: f64, base: Option<f64>) -> Option<f64> {
    base.filter(|b| *b != 0.0).map(|b| v / b)
}

const NAME_W: usize = 30;
const CELL_W: usize = 18;

/// The figures, each with its ratio to procpool's, and the crossover curve.
pub(crate) fn table(r: &Results) -> String {
    let mut s = String::new();
    let names: Vec<&str> = r.systems.iter().map(|(n, _)| n.as_str()).collect();
    let pp = r.get("procpool");
    let _ = writeln!(
        s,
        "\nFigures (in brackets: system / procpool; 'up' = higher is better, 'down' = lower is better)"
    );
    let _ = write!(s, "{:<NAME_W$} {:<8} {:<4}", "metric", "unit", "");
    for n in &names {
        let _ = write!(s, " {n:>CELL_W$}");
    }
    s.push('\n');
    let width = NAME_W + 14 + names.len() * (CELL_W + 1);
    let _ = writeln!(s, "{}", "-".repeat(width));
    for m in METRICS {
        if m.compare && r.systems.iter().all(|(_, f)| (m.get)(f).is_none()) {
            continue;
        }
        let dir = if m.higher_better { "up" } else { "down" };
        let _ = write!(s, "{:<NAME_W$} {:<8} {:<4}", m.name, m.unit, dir);
        for (_, f) in &r.systems {
            let cell = match (m.get)(f) {
                Some(v) => match ratio(v, pp.and_then(m.get)).filter(|_| m.compare) {
                    Some(q) => format!("{} ({q:.2}x)", num(v)),
                    None => num(v),
                },
                None => "-".into(),
            };
            let _ = write!(s, " {cell:>CELL_W$}");
        }
        s.push('\n');
    }

    let curves = curves(r);
    if !curves.is_empty() {
        let _ = writeln!(
            s,
            "\nCrossover: wall time per task (us) for tasks that spin t us, chunk size 1, {} workers",
            crate::systems::WORKERS
        );
        let _ = write!(s, "{:>8}", "t (us)");
        for (n, _) in &curves {
            let _ = write!(s, " {n:>11}");
        }
        s.push('\n');
        for &t in &crate::CROSSOVER_T_US {
            let _ = write!(s, "{t:>8}");
            for (_, f) in &curves {
                let cell = f
                    .cross
                    .iter()
                    .find(|p| p.0 == t)
                    .map_or("-".into(), |p| format!("{:.3}", p.1));
                let _ = write!(s, " {cell:>11}");
            }
            s.push('\n');
        }
    }

    let _ = writeln!(s, "\nseed n = {} (Rust)", r.seed_n);
    if let Some((same, across)) = r.socket_rtt_us {
        let _ = writeln!(
            s,
            "latency floor: a round trip between two threads over a Unix socket takes {} us \
             on one core, {} us across two cores (medians)",
            num(same),
            num(across)
        );
    }
    s.push_str(&round_trip_targets(r));
    if let Some(info) = &r.python_info {
        let _ = writeln!(s, "{info}");
    }
    for (n, f) in &r.systems {
        for note in &f.notes {
            let _ = writeln!(s, "note: {n}: {note}");
        }
    }
    s
}

/// Every system with a crossover curve, Python's sequential baseline included.
fn curves(r: &Results) -> Vec<(&str, &Figures)> {
    let mut v: Vec<(&str, &Figures)> = r
        .systems
        .iter()
        .map(|(n, f)| (n.as_str(), f))
        .filter(|(_, f)| !f.cross.is_empty())
        .collect();
    if let Some(f) = r.python_seq.as_ref().filter(|f| !f.cross.is_empty()) {
        let at = v
            .iter()
            .position(|(n, _)| *n == "python-mp")
            .unwrap_or(v.len());
        v.insert(at, ("python-seq", f));
    }
    v
}

/// All figures as CSV: one row per (metric, system), then the crossover curve.
pub(crate) fn csv(r: &Results) -> String {
    let mut s = String::from("workload,metric,unit,better,system,value,ratio_to_procpool\n");
    let pp = r.get("procpool");
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    let mut all: Vec<(&str, &Figures)> = r.systems.iter().map(|(n, f)| (n.as_str(), f)).collect();
    if let Some(f) = &r.python_seq {
        all.push(("python-seq", f));
    }
    for m in METRICS {
        for &(n, f) in &all {
            if let Some(v) = (m.get)(f) {
                let _ = writeln!(
                    s,
                    "{},\"{}\",{},{},{},{},{}",
                    m.workload,
                    m.name.trim(),
                    m.unit,
                    if m.higher_better { "higher" } else { "lower" },
                    n,
                    v,
                    opt(ratio(v, pp.and_then(m.get)).filter(|_| m.compare))
                );
            }
        }
    }
    if let Some((same, across)) = r.socket_rtt_us {
        let _ = writeln!(
            s,
            "latency,\"floor: socket round trip between two threads on one core\",us,lower,machine,{same},"
        );
        let _ = writeln!(
            s,
            "latency,\"floor: socket round trip between two threads on two cores\",us,lower,machine,{across},"
        );
    }
    for (n, f) in curves(r) {
        for &(t, per, tasks) in &f.cross {
            let base = pp.and_then(|p| p.cross.iter().find(|q| q.0 == t).map(|q| q.1));
            let _ = writeln!(
                s,
                "crossover,\"time per task at t={t} us ({tasks} tasks)\",us,lower,{n},{per},{}",
                opt(ratio(per, base))
            );
        }
    }
    s
}

fn color(name: &str) -> RGBColor {
    match name {
        "sequential" => RGBColor(0, 0, 0),
        "rayon" => RGBColor(230, 159, 0),
        "procspawn" => RGBColor(0, 114, 178),
        "procpool" => RGBColor(213, 94, 0),
        "python-mp" => RGBColor(0, 158, 115),
        "python-seq" => RGBColor(120, 120, 120),
        _ => RGBColor(204, 121, 167),
    }
}

/// The crossover curve, log-log, one line per system.
pub(crate) fn chart(r: &Results, path: &Path) -> Result<(), String> {
    let curves = curves(r);
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|(_, f)| f.cross.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .collect();
    if ys.is_empty() {
        return Ok(());
    }
    let lo = ys.iter().copied().fold(
        crate::CROSSOVER_T_US[0] / crate::systems::WORKERS as f64,
        f64::min,
    ) / 1.5;
    let hi = ys.iter().copied().fold(0.0, f64::max) * 1.5;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());

    let root = SVGBackend::new(path, (900, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Time per task vs task length ({} workers, chunk size 1)",
                crate::systems::WORKERS
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d((0.35f64..1500f64).log_scale(), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("task length t (µs of busy spinning)")
        .y_desc("wall time per task (µs)")
        .x_label_formatter(&|v| axis_label(*v))
        .y_label_formatter(&|v| axis_label(*v))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    for (name, f) in &curves {
        let c = color(name);
        let style = ShapeStyle::from(&c).stroke_width(2);
        let points: Vec<(f64, f64)> = f.cross.iter().map(|p| (p.0, p.1)).collect();
        let label = match f.crossover {
            Some(t) if *name != "sequential" && *name != "python-seq" => {
                format!("{name} (beats sequential from {t} µs)")
            }
            None if *name != "sequential" && *name != "python-seq" => {
                format!("{name} (never beats sequential)")
            }
            _ => name.to_string(),
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 3, ShapeStyle::from(&c).filled())),
            )
            .map_err(|e| err(&e))?;
    }
    // What a perfect pool would do: the task's time split over the workers.
    let w = crate::systems::WORKERS as f64;
    let ideal = crate::CROSSOVER_T_US.map(|t| (t, t / w));
    let grey = ShapeStyle::from(&RGBColor(150, 150, 150)).stroke_width(1);
    chart
        .draw_series(DashedLineSeries::new(ideal.iter().copied(), 6, 4, grey))
        .map_err(|e| err(&e))?
        .label(format!("ideal: t / {w} workers"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn axis_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The round-trip figures against their targets (issue 21): warm `apply` median and p99
/// against rayon's in the same run, create + 1 task + join, and what an idle pool burns.
pub(crate) fn round_trip_targets(r: &Results) -> String {
    let mut s = String::new();
    let (pp, ry) = (r.get("procpool"), r.get("rayon"));
    let both = |f: fn(&Figures) -> Option<f64>| Some((f(pp?)?, f(ry?)?));
    if let Some((n, fresh, again)) = r.output_ms {
        let per_s = |ms: f64| n as f64 / (ms / 1e3);
        let auto = pp.and_then(|f| f.tiny_auto);
        let _ = writeln!(
            s,
            "tiny automatic chunks: procpool {} items/s (target >= 350M); its output alone, a \
             new vector of {} u64s, takes {} ms to write fresh on one core ({} items/s; \
             {} ms to write again): two cores bound any pool returning a new vector at {} \
             items/s, before any of its own work",
            auto.map_or("-".into(), num),
            num(n as f64),
            num(fresh),
            num(per_s(fresh)),
            num(again),
            num(2.0 * per_s(fresh))
        );
    }
    if let Some((p, y)) = both(|f| f.lat_med) {
        let _ = writeln!(
            s,
            "warm apply median: procpool {} us = {:.2} x rayon's {} us (target <= 2 x)",
            num(p),
            p / y,
            num(y)
        );
    }
    if let Some((p, y)) = both(|f| f.lat_p99) {
        let _ = writeln!(
            s,
            "warm apply p99: procpool {} us = {:.2} x rayon's {} us (target <= 3 x)",
            num(p),
            p / y,
            num(y)
        );
    }
    if let Some(ms) = pp.and_then(|f| f.startup_ms) {
        let other = ["procspawn", "rayon"]
            .iter()
            .filter_map(|n| Some(format!("{n} {} ms", num(r.get(n)?.startup_ms?))))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "create + 1 task + join: procpool {} ms (target <= 2.0 ms); {other}",
            num(ms)
        );
    }
    if let Some((secs, sup, workers)) = r.idle_cpu {
        let _ = writeln!(
            s,
            "idle pool: over {secs} s with nothing to do, procpool's supervisor used {sup:.2}% \
             and its {} workers {workers:.2}% of a core, {:.2}% in all (target < 1%)",
            crate::systems::WORKERS,
            sup + workers
        );
    }
    s
}
