//! The `progress` example: a small run reports its progress on stderr and ends with the
//! pool's counters, every task counted once.

mod common;

use std::process::Command;

#[test]
fn a_small_run_reports_progress_and_stats() {
    let out = Command::new(common::example("progress", &[]))
        .arg("300")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("300 tasks: 300 succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("worker 0 (pid "), "{stdout}");
    // Built without the `indicatif` feature it prints lines; with it, the bar hides
    // itself when standard error is not a terminal.
    if stderr.contains(" done, ") {
        assert!(stderr.contains("300/300 done, 0 failed"), "{stderr}");
        assert!(stderr.contains("(finished)"), "{stderr}");
    }
}

#[test]
fn a_bad_count_is_refused() {
    let out = Command::new(common::example("progress", &[]))
        .arg("many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ITEMS must be a number"), "{stderr}");
}
