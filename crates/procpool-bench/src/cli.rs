//! The command line (parsed with `lexopt`): the benchmark tables by default, or the
//! `shared` mode (the shared-table workload alone). `--help` prints every mode and flag.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::WORKLOADS;
use crate::shared_table;

/// The systems `--only` takes (`python-mp` is another name of `python`).
pub(crate) const SYSTEMS: [&str; 5] = ["sequential", "rayon", "procspawn", "procpool", "python"];

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    /// The benchmark tables.
    Tables(Config),
    /// The shared-table workload alone.
    Shared(shared_table::Settings),
    /// The help text, for standard output.
    Help(String),
}

/// Settings of the benchmark tables.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) quick: bool,
    pub(crate) out: PathBuf,
    pub(crate) python: Option<String>,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) workloads: Option<Vec<String>>,
    pub(crate) progress: bool,
}

impl Config {
    /// Whether `workload` is to run.
    pub(crate) fn runs(&self, workload: &str) -> bool {
        self.workloads
            .as_ref()
            .is_none_or(|l| l.iter().any(|w| w == workload))
    }

    /// Whether `system` is to run.
    pub(crate) fn wants(&self, system: &str) -> bool {
        system == "sequential"
            || self.only.as_ref().is_none_or(|l| {
                l.iter()
                    .any(|s| s == system || s == "python-mp" && system == "python")
            })
    }
}

/// The help text.
pub(crate) fn usage() -> String {
    format!(
        "\
procpool-bench: procpool against sequential code, rayon, procspawn and Python's pools on
the same workloads. Tables go to standard output, progress to standard error.

Usage:
  procpool-bench [FLAGS]           the benchmark tables (every workload by default)
  procpool-bench shared [FLAGS]    the shared-table workload alone: SharedSlice and Shared
                                   against sending the table with every task
  procpool-bench -h | --help       this text

Flags of the tables:
  --quick             a short run: fewer and shorter measurements (noisier figures)
  --out DIR           where results.csv, crossover.svg and the Python scripts and their
                      JSON go (default: target/bench/ of the build's target directory)
  --python PATH       the Python interpreter for the Python figures (default: python3)
  --no-python         skip Python (skipped anyway, with a message, when it is missing)
  --only LIST         comma-separated systems to run: {systems}
                      (python-mp = python; sequential always runs: it is the baseline)
  --workloads LIST    comma-separated workloads to run (default: all):
                      {workloads}
                      (latency: a warm apply's round trip; startup: create + 1 task +
                      join; idle: the CPU an idle procpool pool burns over 10 s (2 s with
                      --quick); the three are also printed against their targets;
                      pyfront: procpool's Python pools against the other Python pools;
                      pyproc: its Process, Queue and start-up against multiprocessing;
                      both run by the --python interpreter, which must import procpool;
                      map200k: x * 2 over 200k items in one call; serde: 100k records
                      against sequential Rust; imaprss: the calling process's peak
                      memory during an imap of 2M x 1 KiB results)
  --progress          procpool's map calls report progress (to a callback that does
                      nothing), to measure its cost

Flags of `shared`:
  --tasks N           tasks in the map (default: 10000)
  --mib M             the table's size in MiB (default: 256)
  --copy-tasks K      tasks the systems that send the table with every task run; their
                      time for N tasks is extrapolated (default: 8)

The MPI benchmark is a program of its own: `mpi_bench --help` (feature `mpi`).
",
        systems = SYSTEMS.join(","),
        workloads = WORKLOADS.join(","),
    )
}

/// Parses the arguments (without the program's name).
///
/// # Errors
/// A message naming the flag or value that is wrong.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    parse_inner(args).map_err(|e| e.to_string())
}

fn parse_inner(args: impl IntoIterator<Item = OsString>) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut cfg = Config {
        quick: false,
        out: crate::default_out_dir(),
        python: Some("python3".into()),
        only: None,
        workloads: None,
        progress: false,
    };
    let mut p = lexopt::Parser::from_args(args);
    let mut first = true;
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if first && v == "shared" => return parse_shared(p),
            Short('h') | Long("help") => return Ok(Command::Help(usage())),
            Long("quick") => cfg.quick = true,
            Long("out") => cfg.out = p.value()?.into(),
            Long("python") => cfg.python = Some(p.value()?.string()?),
            Long("no-python") => cfg.python = None,
            Long("progress") => cfg.progress = true,
            Long("only") => {
                let list = p
                    .value()?
                    .parse_with(|s| list(s, &SYSTEMS, &["python-mp"]))?;
                cfg.only = Some(list);
            }
            Long("workloads") => {
                let list = p.value()?.parse_with(|s| list(s, &WORKLOADS, &[]))?;
                cfg.workloads = Some(list);
            }
            _ => return Err(arg.unexpected()),
        }
        first = false;
    }
    Ok(Command::Tables(cfg))
}

fn parse_shared(mut p: lexopt::Parser) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut s = shared_table::Settings::default();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(usage())),
            Long("tasks") => s.tasks = p.value()?.parse()?,
            Long("mib") => s.mib = p.value()?.parse()?,
            Long("copy-tasks") => s.copy_tasks = p.value()?.parse()?,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::Shared(s))
}

/// A comma-separated list of names, each one of `known` or `aliases`.
fn list(s: &str, known: &[&str], aliases: &[&str]) -> Result<Vec<String>, String> {
    let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
    match names
        .iter()
        .find(|n| !known.contains(&n.as_str()) && !aliases.contains(&n.as_str()))
    {
        Some(bad) => Err(format!("unknown name {bad:?}; known: {}", known.join(","))),
        None => Ok(names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn every_earlier_flag_still_parses() {
        let Ok(Command::Tables(c)) = parse_strs(&[
            "--quick",
            "--workloads",
            "tiny,pyfront",
            "--only=procpool,python-mp",
            "--python",
            "/x/python",
            "--progress",
            "--out",
            "/tmp/o",
        ]) else {
            panic!("did not parse");
        };
        assert!(c.quick && c.progress);
        assert!(c.runs("tiny") && c.runs("pyfront") && !c.runs("bulk"));
        assert!(c.wants("python") && c.wants("procpool") && !c.wants("rayon"));
        assert_eq!(c.python.as_deref(), Some("/x/python"));
        assert_eq!(c.out, PathBuf::from("/tmp/o"));
        let Ok(Command::Tables(c)) = parse_strs(&["--no-python"]) else {
            panic!("did not parse");
        };
        assert_eq!(c.python, None);
    }

    #[test]
    fn shared_is_a_mode_with_flags_of_its_own() {
        let Ok(Command::Shared(s)) =
            parse_strs(&["shared", "--tasks", "5", "--mib=2", "--copy-tasks", "1"])
        else {
            panic!("did not parse");
        };
        assert_eq!((s.tasks, s.mib, s.copy_tasks), (5, 2, 1));
        assert!(parse_strs(&["shared", "--tasks", "x"]).is_err());
        assert!(parse_strs(&["--quick", "shared"]).is_err());
    }

    #[test]
    fn help_lists_every_mode_and_flag_and_bad_input_is_an_error() {
        let Ok(Command::Help(h)) = parse_strs(&["--help"]) else {
            panic!("no help");
        };
        for word in [
            "shared",
            "--quick",
            "--out",
            "--python",
            "--no-python",
            "--only",
            "--workloads",
            "--progress",
            "--tasks",
            "--mib",
            "--copy-tasks",
            "mpi_bench",
        ]
        .iter()
        .chain(&WORKLOADS)
        .chain(&SYSTEMS)
        {
            assert!(h.contains(word), "help does not mention {word}");
        }
        assert!(matches!(
            parse_strs(&["shared", "-h"]),
            Ok(Command::Help(_))
        ));
        assert!(parse_strs(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(
            parse_strs(&["--workloads", "tiny,nope"])
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            parse_strs(&["--only", "nope"])
                .unwrap_err()
                .contains("nope")
        );
        assert!(parse_strs(&["--out"]).is_err());
    }
}
