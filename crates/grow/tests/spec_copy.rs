//! docs/growth-algorithms.md is the specification every "spec §N" comment in the code points at.
//! It is escale's copy of the team's design note in `../shared/docs`, extended where escale grew
//! beyond it (qwen3's q/k norms); this test keeps the two in step (every line of the shared note is
//! in the copy, in order: an upstream change must be copied over, escale's additions may sit
//! between), and that the sections the code cites exist.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The document's text lines without the repository copy's block-quoted note (lines starting with
/// `>`) and without blank lines (the note needs one of its own).
fn body(text: &str) -> String {
    text.lines().filter(|l| !l.starts_with('>') && !l.trim().is_empty()).collect::<Vec<_>>().join("\n")
}

fn spec() -> String {
    let path = repo_root().join("docs/growth-algorithms.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn repository_copy_matches_the_shared_design_note() {
    let Some(shared) = escale_testkit::shared_dir() else { return };
    let note = shared.join("docs/growth-algorithms.md");
    let Ok(theirs) = std::fs::read_to_string(&note) else {
        println!("skipping: {} not found", note.display());
        return;
    };
    let ours = spec();
    assert!(ours.contains("spec §N"), "the repository copy lost its note on how the code cites it");
    let ours = body(&ours);
    let mut our_lines = ours.lines();
    for line in body(&theirs).lines() {
        assert!(
            our_lines.any(|l| l == line),
            "docs/growth-algorithms.md lacks (or reorders) this line of {}: copy the update over:\n{line}",
            note.display()
        );
    }
}

/// Every `spec §X.Y` cited in the crates' sources names a heading of the specification.
#[test]
fn every_cited_section_exists() {
    let spec = spec();
    let headings: Vec<&str> = spec.lines().filter(|l| l.starts_with('#')).collect();
    let has_section = |s: &str| {
        let s = s.trim_end_matches('.');
        headings.iter().any(|h| {
            let title = h.trim_start_matches('#').trim_start();
            title.strip_prefix(s).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('.'))
        })
    };
    let mut missing = Vec::new();
    let mut cited = 0;
    visit(&repo_root().join("crates"), &mut |path, text| {
        for (at, _) in text.match_indices("§") {
            let tail = &text[at + "§".len()..];
            let section: String = tail.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            if section.is_empty() {
                continue;
            }
            cited += 1;
            if !has_section(&section) {
                missing.push(format!("{}: §{section}", path.display()));
            }
        }
    });
    assert!(cited > 10, "expected the growth code to cite the spec, found {cited} citations");
    assert!(missing.is_empty(), "citations of sections the spec does not have:\n{}", missing.join("\n"));
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path, &str)) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            visit(&path, f);
        } else if path.extension().is_some_and(|e| e == "rs") {
            f(&path, &std::fs::read_to_string(&path).unwrap());
        }
    }
}
