//! The `shared_table` example runs: a small table, a few thousand tasks, a histogram the
//! tasks wrote in place that counts every task once; a wrong flag exits 2 with a sentence.

use std::path::PathBuf;
use std::process::Command;

/// The example's binary, built if this test run did not build it.
fn example() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let exe = deps
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/shared_table");
    if !exe.exists() {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let ok = Command::new(cargo)
            .args(["build", "-q", "-p", "procpool", "--example", "shared_table"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building the shared_table example failed");
    }
    exe
}

#[test]
fn a_small_run_counts_every_task_once() {
    let out = Command::new(example())
        .args(["--mib", "4", "--tasks", "3000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hist = stdout
        .lines()
        .find_map(|l| l.split_once("histogram written by the tasks: "))
        .map(|(_, h)| h.trim_matches(|c| c == '[' || c == ']').to_string())
        .expect("a histogram line");
    let total: u64 = hist.split(", ").map(|n| n.parse::<u64>().unwrap()).sum();
    assert_eq!(total, 3000, "{stdout}");
    assert!(stdout.contains("bucket 3"), "{stdout}");
}

#[test]
fn a_wrong_flag_says_so_and_exits_2() {
    let out = Command::new(example()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown argument --bogus"), "{stderr}");
}
