//! Python's `multiprocessing.Pool` on the same workloads: runs `python_bench.py` (built
//! into this binary) and turns the JSON it prints into [`Figures`]; and runs
//! `python_uneven.py` for the uneven-work section.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::figures::Figures;
use crate::uneven::Plan;

/// The script, written next to the other outputs before it runs.
const SCRIPT: &str = include_str!("../python_bench.py");
/// The uneven-work section's script.
const UNEVEN_SCRIPT: &str = include_str!("../python_uneven.py");

/// What the Python side measured.
#[derive(Debug)]
pub(crate) struct Python {
    /// `multiprocessing.Pool` figures.
    pub(crate) pool: Figures,
    /// Python's own sequential figures (the pool's baseline).
    pub(crate) seq: Figures,
    /// Version, start method and the seed workload's n, as one line.
    pub(crate) info: String,
}

/// Runs the Python benchmark with interpreter `python`, within a time limit.
pub(crate) fn run(
    python: &str,
    out: &Path,
    quick: bool,
    workloads: Option<&[String]>,
) -> Result<Python, String> {
    let mut args = Vec::new();
    if quick {
        args.push("--quick".to_string());
    }
    if let Some(list) = workloads {
        args.push("--workloads".into());
        args.push(list.join(","));
    }
    let limit = Duration::from_secs(if quick { 60 } else { 240 });
    let v = run_script(
        python,
        out,
        "python_bench.py",
        SCRIPT,
        &args,
        limit,
        "python.json",
    )?;
    Ok(parse(&v))
}

/// Runs the uneven-work section's script on `plan`; its JSON answer.
pub(crate) fn run_uneven(python: &str, out: &Path, plan: &Plan) -> Result<Value, String> {
    let spec = out.join("uneven_spec.json");
    std::fs::write(&spec, plan.to_json().to_string())
        .map_err(|e| format!("{}: {e}", spec.display()))?;
    let args = ["--spec".to_string(), spec.to_string_lossy().into_owned()];
    let limit = Duration::from_secs(if plan.quick { 90 } else { 240 });
    let script = "python_uneven.py";
    run_script(
        python,
        out,
        script,
        UNEVEN_SCRIPT,
        &args,
        limit,
        "python_uneven.json",
    )
}

/// Writes `text` as `out/name`, runs it with `args` and parses the JSON it prints (also
/// saved as `out/json_name`). Its process group is killed after `limit`.
pub(crate) fn run_script(
    python: &str,
    out: &Path,
    name: &str,
    text: &str,
    args: &[String],
    limit: Duration,
    json_name: &str,
) -> Result<Value, String> {
    let script = out.join(name);
    std::fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, so that on a timeout its pool's workers go too.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{python} not found"),
        _ => format!("{python}: {e}"),
    })?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                // SAFETY: kill(2) on the process group of a child this process started and
                // has not reaped (so its id cannot have been reused).
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                let _ = reader.join();
                return Err(format!("killed after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {python}: {e}")),
        }
    };
    let text = reader
        .join()
        .map_err(|_| "the reader thread panicked".to_string())?
        .map_err(|e| format!("reading its output: {e}"))?;
    if !status.success() {
        return Err(format!("{python} exited with {status}"));
    }
    let json_path = out.join(json_name);
    std::fs::write(&json_path, &text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    serde_json::from_str(text.trim()).map_err(|e| format!("its JSON: {e}"))
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn parse(v: &Value) -> Python {
    let mut pool = Figures {
        seed_speedup: num(v, &["seed", "speedup"]),
        tiny1: num(v, &["tiny_chunk1", "rate"]),
        tiny_auto: num(v, &["tiny_auto", "rate"]),
        bulk: num(v, &["bulk_mb_s"]),
        startup_ms: num(v, &["startup_ms", "total"]),
        lat_med: num(v, &["latency_us", "median"]),
        lat_p99: num(v, &["latency_us", "p99"]),
        ..Figures::default()
    };
    if let (Some(a), Some(b), Some(c)) = (
        num(v, &["startup_ms", "create"]),
        num(v, &["startup_ms", "first_task"]),
        num(v, &["startup_ms", "shutdown"]),
    ) {
        pool.startup_parts = Some([a, b, c]);
    }
    let mut seq = Figures {
        seed_speedup: num(v, &["seed", "seq_ms"]).map(|_| 1.0),
        tiny1: num(v, &["tiny_seq", "rate"]),
        tiny_auto: num(v, &["tiny_seq", "rate"]),
        ..Figures::default()
    };
    for p in v
        .get("crossover")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(t) = num(p, &["t_us"]) else { continue };
        let count = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        if let Some(y) = num(p, &["pool_us"]) {
            pool.cross.push((t, y, count("pool_n")));
        }
        if let Some(y) = num(p, &["seq_us"]) {
            seq.cross.push((t, y, count("seq_n")));
        }
    }
    for e in v
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pool.note(e.as_str().unwrap_or("?").to_string());
    }
    let s = |path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .map_or("?".into(), |x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    };
    let info = if v.get("seed").is_none() {
        format!(
            "python-mp: {} {}, start method {}",
            s(&["implementation"]),
            s(&["python"]),
            s(&["start_method"])
        )
    } else {
        format!(
            "python-mp: {} {}, start method {}, seed n = {} (Python's own ~10 ms), \
         sequential {} ms, pool {} ms; python-seq is Python's sequential baseline",
            s(&["implementation"]),
            s(&["python"]),
            s(&["start_method"]),
            s(&["seed", "n"]),
            num(v, &["seed", "seq_ms"]).map_or("?".into(), crate::report::num),
            num(v, &["seed", "pool_ms"]).map_or("?".into(), crate::report::num),
        )
    };
    Python { pool, seq, info }
}
