//! Helpers shared by the escale-data integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared` beside the clone (test data nobody on the team wrote), if present; prints why not.
pub fn shared_dir() -> Option<PathBuf> {
    escale_testkit::shared_dir()
}

/// A tokenizer folder under shared/testdata/tokenizers.
pub fn tokenizer_dir(name: &str) -> Option<PathBuf> {
    let p = shared_dir()?.join("testdata/tokenizers").join(name);
    if p.join("tokenizer.json").is_file() {
        Some(p)
    } else {
        eprintln!("SKIP: {} missing", p.display());
        None
    }
}

/// The repository's independent Python reader of the Megatron format.
pub fn oracle_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracle/megatron_idx_reader.py")
}

/// `python3`, if it runs.
pub fn python3() -> Option<&'static str> {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => Some("python3"),
        _ => {
            eprintln!("SKIP: python3 not available; the independent Megatron reader check is skipped");
            None
        }
    }
}

/// Runs the Python reader on `prefix` and parses its JSON.
pub fn python_read(prefix: &Path) -> Option<Result<serde_json::Value, String>> {
    let py = python3()?;
    let out = Command::new(py).arg(oracle_script()).arg("read").arg(prefix).output().expect("run python3");
    if !out.status.success() {
        return Some(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Some(Ok(serde_json::from_slice(&out.stdout).expect("reader prints JSON")))
}
