//! Helpers shared by the CLI test files. Each test file includes this module and uses only some
//! of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `escale` binary under test.
pub fn escale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_escale"))
}

/// Runs `escale ARGS` to completion.
pub fn run_escale(args: &[&str]) -> Output {
    escale().args(args).output().expect("run escale")
}

/// stdout then stderr of a run that must have succeeded.
pub fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "escale failed ({}):\n{stderr}", out.status);
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

/// `shared/testdata`, or `None` (after saying why) when the shared test data is absent.
pub fn testdata() -> Option<PathBuf> {
    Some(escale_testkit::shared_dir()?.join("testdata"))
}

/// The stories260K model of the shared test data, or `None` (after saying why) when it is absent.
pub fn stories() -> Option<PathBuf> {
    let dir = testdata()?.join("models/stories260K");
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

/// `DIR/config.json` of a tiny llama (vocabulary 64, two layers, GQA) that trains in milliseconds.
pub fn tiny_config(dir: &Path) -> PathBuf {
    let cfg = serde_json::json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "initializer_range": 0.1});
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// `escale init` of the tiny llama into `DIR/NAME`.
pub fn init(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let out = dir.join(name);
    let cfg = tiny_config(dir);
    ok(escale().args(["init", "--config"]).arg(&cfg).arg("--output").arg(&out).args(["--seed", &seed.to_string()]).output().unwrap());
    out
}

/// Counting documents (mod 16) as the Megatron dataset `DIR/data`.
pub fn dataset(dir: &Path) -> PathBuf {
    let prefix = dir.join("data");
    let docs: Vec<Vec<u32>> = (0..32u32).map(|d| (0..40).map(|i| (d + i) % 16).collect()).collect();
    escale_data::indexed::write_dataset(&prefix, escale_data::DType::U16, &docs).unwrap();
    prefix
}
