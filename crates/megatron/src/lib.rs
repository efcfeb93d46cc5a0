//! escale-megatron: Megatron-Core as escale's distributed engine.
//!
//! escale grows models on one machine; their continued pretraining at scale runs on Megatron-Core
//! (Megatron-LM, FlagScale). This crate makes the hand-off a tested feature:
//! * [`mapping`]: every Megatron-Core tensor as row blocks of HF tensors (fused QKV per query
//!   group, `[gate; up]`, router, experts, shared expert), used in both directions;
//! * [`args`]: the `TransformerConfig` / `GPTModel` arguments of a config.json, the Megatron-LM
//!   flags and the FlagScale fragment, and the refusals for what megatron-core cannot carry;
//! * [`export`] / [`import`]: HF folder <-> torch_dist distributed checkpoint written and read by
//!   megatron-core itself (through [`bridge`]);
//! * [`train`]: `escale train --engine megatron`, the run executed by megatron-core's own
//!   training machinery under torchrun, logging like the in-process trainer;
//! * [`bridge`]: the Python package `python/escale_megatron` (compiled in) and its interpreter.
//!
//! Rust decides what goes where; the Python bridge only drives megatron-core.

use std::path::PathBuf;

pub mod args;
pub mod bridge;
pub mod export;
pub mod import;
pub mod mapping;
pub mod train;

pub use bridge::Bridge;
pub use export::{export, ExportOptions, ExportReport};
pub use import::{import, ImportOptions, ImportReport};

/// Version of the JSON files escale and the bridge exchange (`escale_megatron.PROTOCOL`).
pub const PROTOCOL: u32 = 1;
/// The model description the bridge builds GPTModel from.
pub const MODEL_FILE: &str = "megatron_model.json";
/// Megatron-LM arguments (a bash array) and the FlagScale fragment written beside the checkpoint.
pub const ARGS_FILE: &str = "megatron_args.sh";
pub const FLAGSCALE_FILE: &str = "flagscale.yaml";
/// config.json and tokenizer files of the exported model, for `escale import megatron`.
pub const HF_RECORD_DIR: &str = "hf";
/// What was exported, from where, with which megatron-core.
pub const RECORD_FILE: &str = "escale_megatron.json";
/// Megatron-LM's tracker of the latest checkpoint (`release` or an iteration number).
pub const TRACKER_FILE: &str = "latest_checkpointed_iteration.txt";

#[derive(Debug, thiserror::Error)]
pub enum MegatronError {
    #[error(transparent)]
    Format(#[from] escale_formats::FormatError),
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: `{field}` cannot be carried to Megatron-Core: {reason}")]
    Unsupported { path: PathBuf, field: String, reason: String },
    #[error("megatron-core's Python is not available: {why}; {}", bridge::SETUP_HINT)]
    NoPython { why: String },
    #[error("the megatron-core bridge (`{command}`) failed: {message}")]
    Bridge { command: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub type Result<T, E = MegatronError> = std::result::Result<T, E>;

impl MegatronError {
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        MegatronError::Io { path: path.into(), cause }
    }
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        MegatronError::Invalid { path: path.into(), message: message.into() }
    }
}

/// The folder of the checkpoint Megatron-LM would load from `dir`: `dir` itself when it holds a
/// torch_dist checkpoint (`.metadata`), else the one its tracker file names (`release` or
/// `iter_0000100`).
pub fn checkpoint_iteration_dir(dir: &std::path::Path) -> Result<PathBuf> {
    if dir.join(".metadata").is_file() {
        return Ok(dir.to_path_buf());
    }
    let tracker = dir.join(TRACKER_FILE);
    let text = std::fs::read_to_string(&tracker)
        .map_err(|e| MegatronError::invalid(dir, format!("not a Megatron checkpoint folder: no .metadata and no {TRACKER_FILE} ({e})")))?;
    let text = text.trim();
    let sub = if text == "release" {
        "release".to_string()
    } else {
        let it: u64 = text.parse().map_err(|_| MegatronError::invalid(&tracker, format!("expected `release` or an iteration number, found `{text}`")))?;
        format!("iter_{it:07}")
    };
    let iter_dir = dir.join(sub);
    if !iter_dir.join(".metadata").is_file() {
        return Err(MegatronError::invalid(&iter_dir, "named by the tracker file but holds no torch_dist checkpoint (.metadata missing)"));
    }
    Ok(iter_dir)
}
