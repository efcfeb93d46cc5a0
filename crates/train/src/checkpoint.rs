//! Training checkpoints: `<output>/checkpoints/step-NNNNNNNN/`, each a complete HF model folder
//! (loadable by transformers and every escale command) plus the trainer state beside the weights:
//!
//! * `trainer_state.json`: step, tokens, FLOPs, schedule, data sampler position, fingerprints;
//! * `optimizer.safetensors`: AdamW moments (`exp_avg.<param>`, `exp_avg_sq.<param>`).
//!
//! The folder is filled in a hidden staging folder and renamed into place in one step (the model's
//! `save`), so a folder named `step-*` is complete by construction, whenever the process dies.
//! Discovery still checks for the state file, so a folder made some other way is never resumed.
//!
//! Durability: every file is fsynced before the rename and the parent folder after it (the
//! writer's `finish`), and the state records the SHA-256 of each tensor file. Resuming verifies
//! them, so a file the disk never received (a zero-filled optimizer after a power cut) is found
//! and the previous checkpoint is used instead ([`find_resume_point`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use escale_util::publish;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::AdamWConfig;
use crate::schedule::LrSchedule;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const PREFIX: &str = "step-";

/// Everything besides weights and moments needed to continue a run exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens: u64,
    pub flops: f64,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    /// The data sampler's own serialised position (its RNG and cursor).
    pub sampler: serde_json::Value,
    pub seed: u64,
    /// Architecture fingerprint (see [`model_fingerprint`]).
    pub model_fingerprint: String,
    /// `TrainConfig::run_fingerprint` of the run that wrote it.
    pub run_fingerprint: String,
    /// Names of the parameters being trained (the rest are frozen).
    pub trainable: Vec<String>,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Consecutive skipped (non-finite) steps at save time.
    pub nonfinite_in_row: u32,
    /// Wall time spent training so far (seconds), for the final summary.
    pub elapsed_s: f64,
    /// SHA-256 (hex) of each tensor file of the checkpoint, by file name. Empty in checkpoints
    /// written before escale recorded them; those are resumed unverified.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
}

/// Identity of an architecture: model type plus every tensor name and shape it implies. Two
/// models with the same fingerprint can exchange weights and optimizer state.
pub fn model_fingerprint(cfg: &escale_formats::ModelConfig) -> String {
    let mut s = format!("{}|{}|{}|", cfg.model_type, cfg.rope_theta, cfg.tie_word_embeddings);
    for (param, shape) in escale_formats::expected_params(cfg) {
        s.push_str(&escale_formats::hf_name(cfg.model_type, param));
        s.push_str(&format!("{shape:?};"));
    }
    escale_util::hash::fnv1a_hex(s.as_bytes())
}

pub fn checkpoints_root(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

pub fn checkpoint_dir(output: &Path, step: u64) -> PathBuf {
    checkpoints_root(output).join(format!("{PREFIX}{step:08}"))
}

/// Complete checkpoints under `output`, oldest first.
pub fn list_checkpoints(output: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = checkpoints_root(output);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(&root, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(&root, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let dir = entry.path();
        if dir.join(STATE_FILE).is_file() && dir.join(OPTIMIZER_FILE).is_file() && dir.join("config.json").is_file() {
            out.push((step, dir));
        }
    }
    out.sort();
    Ok(out)
}

/// The most recent complete checkpoint, if any.
pub fn latest_checkpoint(output: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list_checkpoints(output)?.pop())
}

/// Deletes all but the `keep` most recent checkpoints. Each is first moved into the
/// `checkpoints/.escale-tmp` area, so an interrupted deletion never leaves something that looks
/// like a checkpoint, and the next rotation finishes what a killed run did not.
pub fn rotate_checkpoints(output: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(output)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, dir) in all.into_iter().take(excess) {
        publish::remove_dir_through_area(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    Ok(())
}

pub fn write_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).expect("state serialises");
    publish::write_atomic(&path, text.as_bytes()).map_err(|e| TrainError::io(&path, e))
}

/// SHA-256 of every `*.safetensors` file in `dir` (model shards and optimizer state).
pub fn tensor_file_checksums(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.ends_with(".safetensors") && path.is_file() {
            let sum = escale_util::hash::sha256_file(&path).map_err(|e| TrainError::io(&path, e))?;
            sums.insert(name.to_string(), sum);
        }
    }
    Ok(sums)
}

/// Reads the state of the checkpoint in `dir` and checks every tensor file against the
/// checksum recorded in it. The error names the damaged file.
pub fn verify_checkpoint(dir: &Path) -> Result<TrainerState> {
    let state = read_state(dir)?;
    for (name, expected) in &state.checksums {
        let path = dir.join(name);
        let found = escale_util::hash::sha256_file(&path)
            .map_err(|e| TrainError::checkpoint(dir, format!("{name} is listed in {STATE_FILE} but cannot be read: {e}")))?;
        if &found != expected {
            return Err(TrainError::checkpoint(
                dir,
                format!("{name} is damaged: its SHA-256 is {found}, {STATE_FILE} recorded {expected} (a file the disk never fully received, after a crash or power cut?)"),
            ));
        }
    }
    Ok(state)
}

/// The checkpoint a resume continues from.
#[derive(Debug)]
pub struct ResumePoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    /// Newer checkpoints passed over because they failed verification, newest first.
    pub skipped: Vec<TrainError>,
}

/// The newest checkpoint under `output` that passes [`verify_checkpoint`]. `Ok(None)` when there
/// is no checkpoint at all; an error (listing each one's fault) when all of them are damaged.
pub fn find_resume_point(output: &Path) -> Result<Option<ResumePoint>> {
    let all = list_checkpoints(output)?;
    if all.is_empty() {
        return Ok(None);
    }
    let mut skipped = Vec::new();
    for (_, dir) in all.into_iter().rev() {
        match verify_checkpoint(&dir) {
            Ok(state) => return Ok(Some(ResumePoint { dir, state, skipped })),
            Err(e) => skipped.push(e),
        }
    }
    let faults: Vec<String> = skipped.iter().map(|e| e.to_string()).collect();
    Err(TrainError::checkpoint(
        checkpoints_root(output),
        format!(
            "no valid checkpoint to resume from: {}; remove the damaged folders (or choose another output) to start again",
            faults.join("; ")
        ),
    ))
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(dir, format!("{STATE_FILE} is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_checkpoint(output: &Path, step: u64, complete: bool) {
        let d = checkpoint_dir(output, step);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), "{}").unwrap();
        std::fs::write(d.join(OPTIMIZER_FILE), "").unwrap();
        if complete {
            std::fs::write(d.join(STATE_FILE), "{}").unwrap();
        }
    }

    #[test]
    fn latest_skips_incomplete_and_rotation_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        assert_eq!(latest_checkpoint(out).unwrap(), None);
        for s in [2, 10, 4] {
            fake_checkpoint(out, s, true);
        }
        fake_checkpoint(out, 12, false);
        std::fs::create_dir_all(checkpoints_root(out).join("notes")).unwrap();
        assert_eq!(latest_checkpoint(out).unwrap().unwrap().0, 10);
        rotate_checkpoints(out, 2).unwrap();
        let steps: Vec<u64> = list_checkpoints(out).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![4, 10]);
        assert!(!checkpoint_dir(out, 2).exists());
        assert!(checkpoint_dir(out, 12).exists(), "incomplete folders are left alone");
    }

    /// Issue 13: rotation moves old checkpoints into `checkpoints/.escale-tmp`, and finishes the
    /// deletion a killed run left there.
    #[test]
    fn rotation_deletes_through_the_staging_area_and_finishes_a_dead_runs_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for s in [2, 4, 6] {
            fake_checkpoint(out, s, true);
        }
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let area = checkpoints_root(out).join(publish::TMP_DIR);
        let leftover = area.join(format!("{PREFIX}00000001.old-{dead}"));
        std::fs::create_dir_all(leftover.join("half-deleted")).unwrap();
        rotate_checkpoints(out, 2).unwrap();
        let mut names: Vec<_> =
            std::fs::read_dir(checkpoints_root(out)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let expected: Vec<_> = [4, 6].map(|s| checkpoint_dir(out, s).file_name().unwrap().to_str().unwrap().to_string()).into();
        assert_eq!(names, expected, "old checkpoint, dead leftover and area removed");
    }

    #[test]
    fn fingerprint_tells_architectures_apart() {
        let base = serde_json::json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2});
        let a = escale_formats::ModelConfig::from_json(base.clone(), Path::new("a")).unwrap();
        let mut wider = base;
        wider["intermediate_size"] = serde_json::json!(16);
        let b = escale_formats::ModelConfig::from_json(wider, Path::new("b")).unwrap();
        assert_eq!(model_fingerprint(&a), model_fingerprint(&a.clone()));
        assert_ne!(model_fingerprint(&a), model_fingerprint(&b));
    }
}
