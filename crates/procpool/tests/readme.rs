//! The README's Rust blocks cannot drift from the code: `lib.rs` includes the README as
//! doc tests (every ```` ```rust ```` block compiles and runs), and the one block that
//! needs a feature (`rust,ignore`, MPI) must be, line for line, a doc example of
//! `lib.rs` that is compiled with that feature.

use std::path::Path;

fn read(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(rel)).unwrap()
}

/// The fenced blocks of a Markdown text: (info string, body lines).
fn blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut open: Option<(String, Vec<String>, usize)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), Vec::new(), indent)),
            (Some(_), Some("")) => {
                let (info, body, _) = open.take().unwrap();
                out.push((info, body));
            }
            (Some((_, body, ind)), _) => {
                body.push(line.get(*ind..).unwrap_or(line.trim_start()).to_owned())
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    out
}

#[test]
fn the_readme_is_compiled_as_doc_tests() {
    let lib = read("src/lib.rs");
    assert!(
        lib.contains("#[cfg(doctest)]\n#[doc = include_str!(\"../../../README.md\")]"),
        "lib.rs must include the README as doc tests"
    );
}

#[test]
fn every_rust_block_is_compiled() {
    let readme = read("../../README.md");
    let lib_docs: Vec<String> = read("src/lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l).to_owned())
        .collect();
    let mut compiled = 0;
    for (info, body) in blocks(&readme) {
        // rustdoc compiles an untagged block as Rust: each must say what it is.
        assert!(!info.is_empty(), "an untagged block: {body:?}");
        let tags: Vec<&str> = info.split(',').map(str::trim).collect();
        if tags[0] != "rust" {
            continue;
        }
        if !tags.contains(&"ignore") {
            compiled += 1;
            continue;
        }
        // An ignored block: its code (after its leading comments) must be a doc example
        // of lib.rs, which is compiled.
        let code: Vec<&String> = body.iter().skip_while(|l| l.starts_with("//")).collect();
        let found = lib_docs
            .windows(code.len())
            .any(|w| w.iter().zip(&code).all(|(a, b)| a == *b));
        assert!(
            found,
            "an ignored README block is not in lib.rs's docs:\n{}",
            body.join("\n")
        );
    }
    assert!(compiled >= 8, "only {compiled} Rust blocks");
}
