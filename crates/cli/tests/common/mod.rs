//! Helpers shared by the CLI test files that reproduce issue 13 (outputs, bounds).

use std::path::{Path, PathBuf};

/// The stories260K model of the shared test data, or `None` (after saying why) when it is absent.
pub fn stories() -> Option<PathBuf> {
    let dir = escale_testkit::shared_dir()?.join("testdata/models/stories260K");
    if dir.join("config.json").is_file() {
        Some(dir)
    } else {
        println!("skipping: {} not found (shared test data absent)", dir.display());
        None
    }
}

/// A scratch copy of a small model folder (config, weights, tokenizer) that a test may damage.
pub fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}
