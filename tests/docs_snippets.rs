//! The code in the documentation is compiled: every Rust block of
//! README.md and docs/*.md is a doctest (`cargo test --doc`), and the
//! guide's whole service is examples/guide.rs, which a test runs.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn docs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
}

/// The info strings of the code fences that open a block.
fn fence_tags(markdown: &str) -> Vec<(usize, String)> {
    let mut open = false;
    let mut tags = Vec::new();
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(tag) = trimmed.strip_prefix("```") {
            if !open {
                tags.push((n + 1, tag.trim().to_string()));
            }
            open = !open;
        }
    }
    assert!(!open, "an unclosed code block");
    tags
}

#[test]
fn every_docs_file_is_compiled_as_doctests() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    assert!(lib.contains(r#"#![doc = include_str!("../README.md")]"#));
    for file in docs() {
        let name = file.file_name().unwrap().to_str().unwrap();
        let include = format!(r#"include_str!("../docs/{name}")"#);
        assert!(
            lib.contains(&include),
            "src/lib.rs does not compile the blocks of docs/{name}: add a #[cfg(doctest)] module with #[doc = {include}]"
        );
    }
}

#[test]
fn every_code_block_says_its_language_and_no_rust_block_is_ignored() {
    let mut files = docs();
    files.push(root().join("README.md"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, tag) in fence_tags(&text) {
            let at = format!("{}:{line}", file.display());
            // An untagged block is compiled as Rust; say what it is.
            assert!(
                !tag.is_empty(),
                "{at}: tag the block (rust, toml, sh, text, ...)"
            );
            if tag.starts_with("rust") {
                assert!(
                    !tag.contains("ignore"),
                    "{at}: `{tag}` is not compiled; make it compile (hidden `# ` lines, `no_run`)"
                );
            }
        }
    }
}

#[test]
fn the_guide_shows_examples_guide_rs_verbatim() {
    let example = std::fs::read_to_string(root().join("examples/guide.rs")).unwrap();
    // The file without its `//!` header.
    let code: String = example
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let guide = std::fs::read_to_string(root().join("docs/guide.md")).unwrap();
    let whole = guide
        .split("## The whole service")
        .nth(1)
        .expect("docs/guide.md has a section `## The whole service`");
    let block = whole
        .split_once("```rust,no_run\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("a rust,no_run block in `## The whole service`");
    assert!(
        block.trim_end() == code.trim_end(),
        "docs/guide.md's whole service differs from examples/guide.rs: copy the file (without its //! header) into the block"
    );
}
