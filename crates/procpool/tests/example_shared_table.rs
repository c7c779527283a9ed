//! The `shared_table` example runs: a small table, a few thousand tasks, a histogram the
//! tasks wrote in place that counts every task once; a wrong flag exits 2 with a sentence.

mod common;

use std::process::Command;

#[test]
fn a_small_run_counts_every_task_once() {
    let out = Command::new(common::example("shared_table", &[]))
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
    let out = Command::new(common::example("shared_table", &[]))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown argument --bogus"), "{stderr}");
}
