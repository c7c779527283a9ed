//! The seed example's command line: `--help` prints usage and succeeds; a wrong flag
//! says so in a sentence (never a Debug-quoted error) and exits 2; a small run works.

mod common;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(common::example("compute", &[]))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_prints_usage_and_exits_0() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("usage: compute"), "{flag}: {text}");
    }
}

#[test]
fn a_wrong_flag_is_a_plain_message_and_exit_code_2() {
    let out = run(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(text.trim(), "compute: unknown flag --bogus; try --help");
}

#[test]
fn a_small_run_prints_the_speedup() {
    let out = run(&["--tasks", "2", "--n", "1000", "--workers", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("speedup:"));
}
