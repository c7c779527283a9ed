//! The Python front's section: runs `python_pools.py` (built into this binary) with
//! the chosen interpreter, which measures `procpool.Pool` and `procpool.ProcessPoolExecutor`
//! against `multiprocessing`, `concurrent.futures`, loky, mpire and pebble. The script
//! prints its own table and the targets on stderr; its JSON goes to `pyfront.json`,
//! and this module prints which targets hold.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The script, written next to the other outputs before it runs.
const SCRIPT: &str = include_str!("../python_pools.py");

/// Runs the section with interpreter `python`; the lines to print after the other tables.
pub(crate) fn run(python: &str, out: &Path, quick: bool) -> Result<String, String> {
    importable(python)?;
    let args = if quick {
        vec!["--quick".to_string()]
    } else {
        Vec::new()
    };
    let limit = Duration::from_secs(if quick { 420 } else { 1200 });
    let v = crate::python::run_script(
        python,
        out,
        "python_pools.py",
        SCRIPT,
        &args,
        limit,
        "pyfront.json",
    )?;
    Ok(summary(&v, &out.join("pyfront.json")))
}

/// `Ok` when `python` can import procpool (built with `maturin develop` or installed).
fn importable(python: &str) -> Result<(), String> {
    let status = Command::new(python)
        .args(["-c", "import procpool"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{python}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{python} cannot import procpool: build it into that interpreter's environment \
             (maturin develop, or pip install .) or pass --python PATH"
        ))
    }
}

/// The targets as the script judged them, and where its JSON went.
fn summary(v: &Value, json: &Path) -> String {
    let mut lines = vec![format!(
        "Python front ({} {}, {} workers): issue 9's targets",
        v.get("implementation")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        v.get("python").and_then(Value::as_str).unwrap_or("?"),
        v.get("workers").and_then(Value::as_u64).unwrap_or(0),
    )];
    for t in v
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let holds = t.get("holds").and_then(Value::as_bool).unwrap_or(false);
        lines.push(format!(
            "  {:7} {}: {}",
            if holds { "holds" } else { "MISSED" },
            t.get("target").and_then(Value::as_str).unwrap_or("?"),
            t.get("value")
                .and_then(Value::as_f64)
                .map_or("?".into(), crate::report::num),
        ));
    }
    if let Some(other) = v.get("other_cpu_pct").and_then(Value::as_f64) {
        lines.push(format!(
            "  other processes used {other:.0}% of the cores during the Python front's section"
        ));
    }
    lines.push(format!("  every figure: {}", json.display()));
    lines.join("\n")
}
