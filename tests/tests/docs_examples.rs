//! The documentation's examples are checked: every ```yaml block in
//! README.md and docs/ parses as what it shows (a lab file, a hosts file or
//! an image recipe), and every key a lab file may use is named in
//! docs/lab-file.md. Needs no root: part of the `fast` tier.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::path::{Path, PathBuf};

use labspan_proto::lab;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The ```yaml blocks of a markdown page, with the line each starts on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match open.as_mut() {
            None if fence.starts_with("```yaml") => open = Some((n + 2, String::new())),
            Some(_) if fence.starts_with("```") => blocks.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "a ```yaml block is never closed");
    blocks
}

/// What a block shows, from its top-level keys.
#[derive(Debug, PartialEq)]
enum Kind {
    Lab,
    Hosts,
    Recipe,
    /// Part of a lab file (a node, say): it must be YAML with known keys.
    Fragment,
}

fn kind(body: &str) -> Kind {
    let top: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '-']) && !l.is_empty())
        .filter_map(|l| l.split(':').next())
        .collect();
    if top.contains(&"hosts") {
        Kind::Hosts
    } else if top.contains(&"suite") || top.contains(&"packages") {
        Kind::Recipe
    } else if top.contains(&"name") && top.contains(&"nodes") {
        Kind::Lab
    } else {
        Kind::Fragment
    }
}

fn check_block(page: &Path, line: usize, body: &str) -> Result<(), String> {
    let at = format!("{} (the example at line {line})", page.display());
    match kind(body) {
        Kind::Lab => lab::parse(&at, body)
            .map(drop)
            .map_err(|e| format!("{at}: this lab example is invalid:\n{e}")),
        Kind::Hosts => labspan_coordinator::hosts::parse_hosts(body, &at)
            .map(drop)
            .map_err(|e| format!("{at}: this hosts example is invalid: {e}")),
        Kind::Recipe => {
            let dir = tempfile_dir();
            let path = dir.join("image.yaml");
            std::fs::write(&path, body).expect("writing the recipe");
            let res = labspan_image::Recipe::load(&path)
                .map(drop)
                .map_err(|e| format!("{at}: this image recipe example is invalid: {e}"));
            std::fs::remove_dir_all(&dir).expect("removing the recipe folder");
            res
        }
        Kind::Fragment => marked_yaml_check(&at, body),
    }
}

/// A fragment must at least be YAML.
fn marked_yaml_check(at: &str, body: &str) -> Result<(), String> {
    // Indented fragments (a node under `nodes:`) parse once wrapped.
    let wrapped = format!("name: docs\nnodes:\n{body}");
    match lab::parse(at, &wrapped) {
        Ok(_) => Ok(()),
        // Only syntax matters here: a fragment may name nodes it leaves out.
        Err(e) if !e.to_string().contains("YAML") => Ok(()),
        Err(e) => Err(format!("{at}: this example is not YAML:\n{e}")),
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labspan-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temporary folder");
    dir
}

#[test]
fn every_yaml_example_in_the_docs_is_valid() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("reading a page");
        for (line, body) in yaml_blocks(&text) {
            checked += 1;
            if let Err(e) = check_block(&page, line, &body) {
                problems.push(e);
            }
        }
    }
    assert!(checked >= 4, "found only {checked} yaml examples");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn every_lab_file_key_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/lab-file.md")).expect("docs/lab-file.md");
    let missing: Vec<String> = lab::LAB_FILE_KEYS
        .iter()
        .flat_map(|(place, keys)| {
            keys.iter()
                .filter(|k| !doc.contains(&format!("{k}:")) && !doc.contains(&format!("`{k}`")))
                .map(move |k| format!("`{k}` ({place})"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/lab-file.md does not name these lab-file keys: {}",
        missing.join(", ")
    );
}

#[test]
fn the_block_reader_finds_blocks_and_their_lines() {
    let page = "text\n```yaml\na: 1\n```\n\n```sh\nls\n```\n```yaml\nb: 2\n```\n";
    assert_eq!(
        yaml_blocks(page),
        [(3, "a: 1\n".to_string()), (10, "b: 2\n".to_string())]
    );
    assert_eq!(kind("name: x\nnodes: {}\n"), Kind::Lab);
    assert_eq!(kind("hosts:\n  h: {}\n"), Kind::Hosts);
    assert_eq!(kind("name: img\nsuite: bookworm\n"), Kind::Recipe);
    assert_eq!(kind("  r1:\n    image: tiny\n"), Kind::Fragment);
}
