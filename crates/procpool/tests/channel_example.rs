//! The pipeline example runs: every line read is parsed by one of the two parser
//! processes and totalled once; a wrong argument is a sentence and exit code 2.

mod common;

use std::process::Command;

#[test]
fn the_pipeline_totals_every_line_once() {
    let out = Command::new(common::fresh_example("pipeline"))
        .arg("5000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("5000 lines read"), "{text}");
    assert!(text.contains("5000 records totalled"), "{text}");
}

#[test]
fn a_wrong_argument_is_a_usage_message() {
    let out = Command::new(common::fresh_example("pipeline"))
        .arg("many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: pipeline"));
}
