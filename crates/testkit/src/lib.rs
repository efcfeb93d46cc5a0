//! Test helpers for escale: where the shared test data lives, and the Python `transformers` oracle.
//!
//! Two kinds of test input live outside the crate under test:
//! - `../shared` beside the workspace root: real models, tokenizers and corpora, too big for the
//!   repository. Tests that need it call [`require_shared!`], which skips them (with a printed
//!   reason) on a clone without it.
//! - the transformers oracle (`tests/oracle/oracle.py` in a cached virtualenv, see
//!   `tests/oracle/setup.sh`): Python `transformers` is the implementation every Hugging Face user
//!   trusts, so escale is checked against it rather than against itself. Tests call
//!   [`require_oracle!`]; a missing oracle skips the test locally but fails it in CI (`CI=true`), so
//!   CI can never go green by silently skipping the comparisons.

use std::path::{Path, PathBuf};

mod oracle;
mod tensors;

pub use oracle::{
    AdamWResult, AdamWSpec, AdamWStepRecord, Dtype, Family, MoeLayerLosses, MoeLosses, Oracle,
    OracleLogits, SeqLogits, TinyInfo, TinySpec,
};
pub use tensors::{read_checkpoint_f32, read_safetensors_f32, write_safetensors_f32, Tensor};

/// Root of the Cargo workspace (the folder holding the top-level `Cargo.toml`).
///
/// Derived from this crate's own manifest path at compile time, so it is right whatever the test
/// process's current directory is (cargo runs each test binary from its own crate's folder).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .expect("crates/testkit sits two levels below the workspace root")
        .to_path_buf()
}

/// The shared, read-only test data folder `../shared` beside the workspace root, if present.
///
/// `None` (after printing why) when the folder is absent, e.g. on a fresh clone: tests that need
/// real models skip instead of failing for a reason unrelated to the code.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = workspace_root().join("..").join("shared");
    if dir.is_dir() {
        Some(dir.canonicalize().unwrap_or(dir))
    } else {
        println!("skipping: ../shared not found (test data lives there)");
        None
    }
}

/// Where test helpers may keep build products between test processes: `$CARGO_TARGET_DIR` when
/// set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `let shared = require_shared!();` gives the `../shared` path, or returns from the test early
/// (printing why) when it is absent. For tests returning a value: `require_shared!(Ok(()))`.
#[macro_export]
macro_rules! require_shared {
    () => {
        match $crate::shared_dir() {
            Some(dir) => dir,
            None => return,
        }
    };
    ($ret:expr) => {
        match $crate::shared_dir() {
            Some(dir) => dir,
            None => return $ret,
        }
    };
}

/// `let oracle = require_oracle!();` gives the [`Oracle`], or returns from the test early when it is
/// not installed (outside CI; in CI a missing oracle panics). For tests returning a value:
/// `require_oracle!(Ok(()))`.
#[macro_export]
macro_rules! require_oracle {
    () => {
        match $crate::Oracle::get() {
            Some(oracle) => oracle,
            None => return,
        }
    };
    ($ret:expr) => {
        match $crate::Oracle::get() {
            Some(oracle) => oracle,
            None => return $ret,
        }
    };
}

/// Largest absolute element-wise difference; panics when the lengths differ (a shape bug is not
/// a numerical difference).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Largest absolute value (0 for an empty slice).
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}
