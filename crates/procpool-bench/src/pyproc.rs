//! The Python front's processes section: runs `python_processes.py` (built into this
//! binary) with the chosen interpreter: `import procpool`, a whole script's first pool,
//! `Process` start, `Queue` throughput, later pools and worker replacement with NumPy
//! loaded, against `multiprocessing`. Its JSON goes to `pyproc.json`; this module prints
//! which of issue 19's targets hold.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// The script, written next to the other outputs before it runs.
const SCRIPT: &str = include_str!("../python_processes.py");

/// Runs the section with interpreter `python`; the lines to print after the other tables.
pub(crate) fn run(python: &str, out: &Path, quick: bool) -> Result<String, String> {
    let args = if quick {
        vec!["--quick".to_string()]
    } else {
        Vec::new()
    };
    let limit = Duration::from_secs(if quick { 300 } else { 900 });
    let v = crate::python::run_script(
        python,
        out,
        "python_processes.py",
        SCRIPT,
        &args,
        limit,
        "pyproc.json",
    )?;
    let mut lines = vec![format!(
        "Python processes and queues (CPython {}): issue 19's targets",
        v.get("python").and_then(Value::as_str).unwrap_or("?")
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
    lines.push(format!(
        "  (every figure: {})",
        out.join("pyproc.json").display()
    ));
    Ok(lines.join("\n"))
}
