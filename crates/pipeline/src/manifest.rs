//! Stage manifests: the "done" marker of a stage, what it measured, and the hashes that decide
//! whether a re-run may skip it.
//!
//! A stage is finished when `stage.json` exists in its folder, its `key` equals the key the current
//! run computes (a hash of the stage's resolved settings and of the manifests of the stages it
//! depends on), and the model folder it names still fingerprints the same. Anything else means the
//! stage must run (again): settings changed, an upstream stage was re-run, or files were touched.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::metrics::Curve;
use crate::runs::RunOf;

/// File name of the stage manifest inside a stage folder.
pub const STAGE_MANIFEST: &str = "stage.json";

/// What kind of work a stage did (a sweep is expanded into scale-up stages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Prepare,
    ScaleUp,
    ScaleOut,
    Baseline,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Prepare => "prepare",
            StageKind::ScaleUp => "scale_up",
            StageKind::ScaleOut => "scale_out",
            StageKind::Baseline => "baseline",
        }
    }
}

/// Everything a finished stage measured, and how to recognise it on a re-run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: StageKind,
    /// Stage grown from (scale-up / scale-out) or whose architecture is trained (baseline).
    pub source: Option<String>,
    /// Sweep the stage belongs to, if any.
    pub sweep: Option<String>,
    /// Human description of the growth or initialisation ("aki-pro, preset fpi, depth interpolate").
    pub method: String,
    /// Growth verdict from `escale_growth.json`: function preserving or not (None: no growth).
    pub exact: Option<bool>,
    /// Architecture in one line ("llama d=64 L=4 heads=4/2 ffn=172").
    pub arch: String,
    pub params_total: u64,
    pub params_active: u64,
    /// Tokens trained in this stage.
    pub tokens: u64,
    /// Training FLOPs of this stage alone.
    pub flops: f64,
    /// Cumulative FLOPs of the chain at the start of this stage (0 for prepare and baselines).
    pub flops_start: f64,
    /// Final validation loss of the source stage (the other side of the transition).
    pub source_val_loss: Option<f64>,
    /// Validation loss of the model before this stage's training (grown or freshly initialised).
    pub val_loss_start: Option<f64>,
    /// Validation loss at the end of the stage.
    pub val_loss_end: Option<f64>,
    /// Wall time of the stage in seconds (growth, evaluations and training).
    pub wall_s: f64,
    /// Final model folder, relative to the run directory.
    pub model_dir: PathBuf,
    /// Loss curve on the cumulative-FLOPs axis.
    pub curve: Curve,
    /// Hash of the settings and upstream manifests this stage was run with.
    pub key: String,
    /// Fingerprint of the final model folder when the stage finished.
    pub model_fingerprint: String,
    /// Tokenized data and tokenizer (set by the prepare stage; later stages use them).
    #[serde(default)]
    pub data: Option<DataPaths>,
    /// Peak learning rate of the stage's training (None: it did not train).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Set on each run of a stage trained more than once (learning-rate sweep, seeds).
    #[serde(default)]
    pub run_of: Option<RunOf>,
    /// Multiple-choice accuracy on the start and end models (`eval.tasks`; empty without tasks).
    #[serde(default)]
    pub accuracy: Vec<crate::accuracy::StageAccuracy>,
}

/// Where the prepare stage left the tokens (absolute, or relative to the run directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPaths {
    pub train: PathBuf,
    pub valid: PathBuf,
    pub tokenizer: Option<PathBuf>,
}

impl StageRecord {
    /// Cumulative FLOPs at the end of the stage.
    pub fn flops_end(&self) -> f64 {
        self.flops_start + self.flops
    }
}

/// Hex SHA-256 of the canonical JSON of `value` (serde_json with sorted maps is stable enough:
/// the structs serialise their fields in declaration order).
pub fn hash_json<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("stage settings serialise to JSON");
    hex(&Sha256::digest(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files larger than this are fingerprinted by size and their first and last `EDGE` bytes: hashing
/// a 30 GB checkpoint on every re-run would cost minutes, and a file rewritten by another run of
/// escale differs in its safetensors header (at the start) or its tail.
const FULL_HASH_LIMIT: u64 = 64 << 20;
const EDGE: u64 = 4 << 20;

/// Fingerprint of one file (see [`FULL_HASH_LIMIT`]).
pub fn fingerprint_file(path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len <= FULL_HASH_LIMIT {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)?;
        h.update(&buf);
    } else {
        let mut buf = vec![0u8; EDGE as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        f.seek(SeekFrom::Start(len - EDGE))?;
        f.read_exact(&mut buf)?;
        h.update(&buf);
    }
    Ok(hex(&h.finalize()))
}

/// Fingerprint of a model folder: config.json and every safetensors file, by name.
pub fn fingerprint_model(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "config.json" || n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json"))
        .collect();
    names.sort();
    anyhow::ensure!(names.iter().any(|n| n == "config.json"), "{}: no config.json", dir.display());
    let mut h = Sha256::new();
    for n in &names {
        h.update(n.as_bytes());
        h.update(fingerprint_file(&dir.join(n))?.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// Writes `bytes` to `path` atomically (escale-util's temporary file then rename), so an
/// interrupted run never leaves a half-written manifest or report that a re-run would trust.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    escale_util::publish::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Why a stage cannot be skipped.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Finished with the same settings and inputs, model unchanged.
    Done(Box<StageRecord>),
    /// Never finished (or no manifest).
    NotDone,
    /// Finished, but with other settings or inputs, or its model changed since.
    Stale(String),
}

/// Reads a stage folder's manifest and decides whether the stage is done for `key`.
pub fn check_stage(run_dir: &Path, stage_dir: &Path, key: &str) -> Result<Verdict> {
    let path = stage_dir.join(STAGE_MANIFEST);
    if !path.exists() {
        return Ok(Verdict::NotDone);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let record: StageRecord = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => return Ok(Verdict::Stale(format!("unreadable manifest ({e})"))),
    };
    if record.key != key {
        return Ok(Verdict::Stale("its settings or the stages it depends on changed".into()));
    }
    let model = run_dir.join(&record.model_dir);
    match fingerprint_model(&model) {
        Ok(fp) if fp == record.model_fingerprint => Ok(Verdict::Done(Box::new(record))),
        Ok(_) => Ok(Verdict::Stale(format!("{} changed since the stage finished", model.display()))),
        Err(e) => Ok(Verdict::Stale(format!("its model is missing or unreadable ({e:#})"))),
    }
}

/// Writes a finished stage's manifest (atomically, last: it is the done marker).
pub fn write_record(stage_dir: &Path, record: &StageRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record)?;
    write_atomic(&stage_dir.join(STAGE_MANIFEST), &json)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(name: &str, model_dir: &str) -> StageRecord {
        StageRecord {
            name: name.into(),
            kind: StageKind::Prepare,
            source: None,
            sweep: None,
            method: "init".into(),
            exact: None,
            arch: "llama".into(),
            params_total: 10,
            params_active: 10,
            tokens: 100,
            flops: 1e9,
            flops_start: 0.0,
            source_val_loss: None,
            val_loss_start: Some(6.0),
            val_loss_end: Some(3.0),
            wall_s: 1.0,
            model_dir: model_dir.into(),
            curve: Curve::default(),
            key: "k1".into(),
            model_fingerprint: String::new(),
            data: None,
            lr: None,
            run_of: None,
            accuracy: Vec::new(),
        }
    }

    #[test]
    fn done_only_with_same_key_and_untouched_model() {
        let run = tempfile::tempdir().unwrap();
        let stage = run.path().join("base");
        let model = stage.join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        std::fs::write(model.join("model.safetensors"), b"weights").unwrap();
        assert_eq!(check_stage(run.path(), &stage, "k1").unwrap(), Verdict::NotDone);

        let mut r = record("base", "base/model");
        r.model_fingerprint = fingerprint_model(&model).unwrap();
        write_record(&stage, &r).unwrap();
        assert_eq!(check_stage(run.path(), &stage, "k1").unwrap(), Verdict::Done(Box::new(r)));
        assert!(matches!(check_stage(run.path(), &stage, "k2").unwrap(), Verdict::Stale(m) if m.contains("settings")));

        std::fs::write(model.join("model.safetensors"), b"weightz").unwrap();
        assert!(matches!(check_stage(run.path(), &stage, "k1").unwrap(), Verdict::Stale(m) if m.contains("changed")));
        std::fs::remove_dir_all(&model).unwrap();
        assert!(matches!(check_stage(run.path(), &stage, "k1").unwrap(), Verdict::Stale(m) if m.contains("missing")));
    }

    #[test]
    fn large_files_fingerprint_by_size_and_edges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let mut bytes = vec![7u8; (FULL_HASH_LIMIT + 1) as usize];
        std::fs::write(&p, &bytes).unwrap();
        let a = fingerprint_file(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = 8;
        std::fs::write(&p, &bytes).unwrap();
        assert_ne!(a, fingerprint_file(&p).unwrap(), "a change in the tail is seen");
        bytes.push(0);
        std::fs::write(&p, &bytes).unwrap();
        assert_ne!(a, fingerprint_file(&p).unwrap(), "a change of size is seen");
    }

    #[test]
    fn hash_json_depends_on_every_field() {
        let a = record("a", "a/model");
        let mut b = a.clone();
        assert_eq!(hash_json(&a), hash_json(&b));
        b.tokens += 1;
        assert_ne!(hash_json(&a), hash_json(&b));
    }
}
