//! The pipeline example runs: every line read is parsed by one of the two parser
//! processes and totalled once; a wrong argument is a sentence and exit code 2.

use std::path::PathBuf;
use std::process::Command;

fn pipeline() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let exe = deps
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/pipeline");
    // Built every time (a no-op when fresh): a stale binary would test old code.
    {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let ok = Command::new(cargo)
            .args(["build", "-q", "-p", "procpool", "--example", "pipeline"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building the pipeline example failed");
    }
    exe
}

#[test]
fn the_pipeline_totals_every_line_once() {
    let out = Command::new(pipeline()).arg("5000").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("5000 lines read"), "{text}");
    assert!(text.contains("5000 records totalled"), "{text}");
}

#[test]
fn a_wrong_argument_is_a_usage_message() {
    let out = Command::new(pipeline()).arg("many").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: pipeline"));
}
