//! Everything that defines a training run, loadable from YAML (`--config train.yaml`); the CLI
//! overrides individual fields from flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
#[cfg(feature = "engine")]
use crate::optim::AdamWConfig;
use crate::schedule::{LrSchedule, ScheduleKind};

/// Which parameters receive updates (the rest are frozen: no gradient step, no optimizer state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TrainOnly {
    #[default]
    All,
    /// LLaMA-Pro style: only the layers scale-up inserted (listed in `escale_growth.json`).
    NewLayers,
    /// Only MoE experts and routers (shared experts included).
    Experts,
}

/// How the MoE load-balancing loss is normalised ([`crate::moe_loss`] has the formulas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LossConvention {
    /// Per layer, 1 when balanced (FlagScale/Megatron; the paper's).
    #[default]
    Megatron,
    /// Pooled over layers, k when balanced (transformers' Mixtral / Qwen2-MoE).
    Hf,
}

/// Which engine executes the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Engine {
    /// escale's in-process trainer (CPU, candle).
    #[default]
    Escale,
    /// megatron-core's training machinery under torchrun (escale-megatron): GPUs, several nodes.
    Megatron,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// How the megatron engine lays the run out over processes (`train: {engine: megatron,
/// megatron: {...}}`); the in-process trainer ignores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MegatronSettings {
    /// Tensor-parallel size.
    pub tp: usize,
    /// Pipeline-parallel size.
    pub pp: usize,
    /// Expert-parallel size (MoE; inside the data-parallel ranks).
    pub ep: usize,
    /// Data-parallel size; the world size is tp x pp x dp.
    pub dp: usize,
    /// The command that starts the ranks (default `torchrun --standalone --nproc-per-node <world>`).
    pub launcher: Option<String>,
}

impl Default for MegatronSettings {
    fn default() -> Self {
        MegatronSettings { tp: 1, pp: 1, ep: 1, dp: 1, launcher: None }
    }
}

/// What to do with checkpoints already in the output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResumeMode {
    /// Start a new run; an output that already holds checkpoints is refused.
    #[default]
    Fresh,
    /// Continue from the newest valid checkpoint (falling back past damaged ones with a
    /// warning); refused when there is none, so a mistyped output never restarts a run silently.
    Resume,
    /// Continue when there is a checkpoint, start from scratch when there is none (the
    /// pipeline's re-runs, which cannot know whether the stage got that far).
    ResumeOrStart,
}

/// YAML/JSON form: `resume: false | true | resume-or-start`. The two booleans keep older
/// configs loading and the run fingerprint of `Fresh` unchanged.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ResumeRepr {
    Flag(bool),
    Named(String),
}

const RESUME_OR_START: &str = "resume-or-start";

impl Serialize for ResumeMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ResumeMode::Fresh => ResumeRepr::Flag(false),
            ResumeMode::Resume => ResumeRepr::Flag(true),
            ResumeMode::ResumeOrStart => ResumeRepr::Named(RESUME_OR_START.into()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ResumeMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match ResumeRepr::deserialize(d)? {
            ResumeRepr::Flag(false) => Ok(ResumeMode::Fresh),
            ResumeRepr::Flag(true) => Ok(ResumeMode::Resume),
            ResumeRepr::Named(n) if n == RESUME_OR_START => Ok(ResumeMode::ResumeOrStart),
            ResumeRepr::Named(n) => {
                Err(serde::de::Error::custom(format!("`{n}`: expected true, false or {RESUME_OR_START}")))
            }
        }
    }
}

/// Compute precision of the trained weights (checkpoints are stored in the same precision, so a
/// resumed run continues from bit-identical weights): the model's own [`escale_model::Precision`].
pub type TrainDType = escale_model::Precision;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// HF folder of the model to continue training.
    pub model: PathBuf,
    /// Megatron indexed dataset prefix (`PREFIX.bin` / `PREFIX.idx`) for training.
    pub data: PathBuf,
    /// Held-out dataset prefix for validation loss; none = no evaluation.
    pub valid: Option<PathBuf>,
    /// Run folder: checkpoints/, train_log.jsonl, eval_log.jsonl.
    pub output: PathBuf,
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// Stop after this many optimizer steps (takes precedence over `total_tokens`).
    pub steps: Option<u64>,
    /// Or: stop after this many training tokens (rounded up to whole steps).
    pub total_tokens: Option<u64>,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub schedule: ScheduleKind,
    /// WSD: share of the run spent decaying.
    pub decay_fraction: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables.
    pub clip: f64,
    /// Seeds the data order (the only randomness in training: there is no dropout).
    pub seed: u64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_interval: u64,
    /// Tokens scored per evaluation (from the start of the validation set, same every time).
    pub eval_tokens: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_interval: u64,
    /// Keep this many most recent checkpoints (at least 1).
    pub keep_checkpoints: usize,
    pub aux_loss_coef: f64,
    pub z_loss_coef: f64,
    pub moe_loss_convention: LossConvention,
    pub train_only: TrainOnly,
    /// Abort after this many consecutive steps with non-finite loss or gradients.
    pub max_nonfinite_steps: u32,
    /// CPU threads (sets RAYON_NUM_THREADS before any work); none = all cores.
    pub threads: Option<usize>,
    pub dtype: TrainDType,
    /// Whether to continue from a checkpoint in `output` (see [`ResumeMode`]).
    pub resume: ResumeMode,
    /// Debug/testing: exit (as if killed) right after this step is logged and checkpointed if due.
    pub stop_after_step: Option<u64>,
    /// Show an indicatif progress bar (the CLI turns it on for terminals).
    pub progress_bar: bool,
    /// Drop tensors of `model` that its config does not declare (with a warning) instead of
    /// refusing the model. Left out of the YAML when false, so run fingerprints of earlier runs
    /// still match.
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_unknown: bool,
    /// The engine that runs the training; left out of the YAML when `escale`, so the run
    /// fingerprints and pipeline stage keys of in-process runs are unchanged.
    #[serde(skip_serializing_if = "is_default")]
    pub engine: Engine,
    /// The megatron engine's layout (`engine: megatron` only).
    #[serde(skip_serializing_if = "is_default")]
    pub megatron: MegatronSettings,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            valid: None,
            output: PathBuf::new(),
            seq_len: 256,
            micro_batch: 8,
            grad_accum: 1,
            steps: None,
            total_tokens: None,
            lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 0,
            schedule: ScheduleKind::Cosine,
            decay_fraction: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            clip: 1.0,
            seed: 1234,
            eval_interval: 0,
            eval_tokens: 32_768,
            save_interval: 0,
            keep_checkpoints: 2,
            aux_loss_coef: 0.001,
            z_loss_coef: 0.01,
            moe_loss_convention: LossConvention::Megatron,
            train_only: TrainOnly::All,
            max_nonfinite_steps: 5,
            threads: None,
            dtype: TrainDType::F32,
            resume: ResumeMode::Fresh,
            stop_after_step: None,
            progress_bar: false,
            ignore_unknown: false,
            engine: Engine::Escale,
            megatron: MegatronSettings::default(),
        }
    }
}

impl TrainConfig {
    pub fn from_yaml_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        serde_yaml::from_str(&text)
            .map_err(|e| TrainError::config(&path.display().to_string(), format!("invalid YAML: {e}")))
    }

    pub fn tokens_per_step(&self) -> u64 {
        (self.seq_len * self.micro_batch * self.grad_accum) as u64
    }

    /// Number of optimizer steps of the run.
    pub fn total_steps(&self) -> Result<u64> {
        match (self.steps, self.total_tokens) {
            (Some(s), _) => Ok(s),
            (None, Some(t)) => Ok(t.div_ceil(self.tokens_per_step())),
            (None, None) => Err(TrainError::config("steps", "give the run length as `steps` or `total_tokens`")),
        }
    }

    pub fn schedule(&self) -> Result<LrSchedule> {
        Ok(LrSchedule {
            kind: self.schedule,
            peak: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps()?,
            decay_fraction: self.decay_fraction,
        })
    }

    #[cfg(feature = "engine")]
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay }
    }

    /// Checks values that need no model or data; the trainer checks the rest against them.
    pub fn validate(&self) -> Result<()> {
        let positive = [("seq_len", self.seq_len), ("micro_batch", self.micro_batch), ("grad_accum", self.grad_accum)];
        for (field, v) in positive {
            if v == 0 {
                return Err(TrainError::config(field, "must be at least 1"));
            }
        }
        if self.seq_len < 2 {
            return Err(TrainError::config("seq_len", "must be at least 2 (next-token prediction)"));
        }
        if self.total_steps()? == 0 {
            return Err(TrainError::config("steps", "the run has zero steps"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(TrainError::config("lr", format!("{} must be positive", self.lr)));
        }
        if !(0.0..=self.lr).contains(&self.min_lr) {
            return Err(TrainError::config("min_lr", format!("{} must be in [0, lr = {}]", self.min_lr, self.lr)));
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainError::config(field, format!("{b} must be in [0, 1)")));
            }
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return Err(TrainError::config("decay_fraction", "must be in [0, 1]"));
        }
        if self.keep_checkpoints == 0 {
            return Err(TrainError::config("keep_checkpoints", "must be at least 1 (the final checkpoint)"));
        }
        if self.max_nonfinite_steps == 0 {
            return Err(TrainError::config("max_nonfinite_steps", "must be at least 1"));
        }
        for (field, p) in [("model", &self.model), ("data", &self.data), ("output", &self.output)] {
            if p.as_os_str().is_empty() {
                return Err(TrainError::config(field, "is required"));
            }
        }
        Ok(())
    }

    /// Fingerprint of the settings that determine the sequence of updates. Resuming with a
    /// different one would silently continue a different run, so it is refused. Length,
    /// logging, checkpointing and threading settings are excluded: changing them is legitimate.
    pub fn run_fingerprint(&self) -> String {
        let mut c = self.clone();
        c.model = PathBuf::new();
        c.output = PathBuf::new();
        c.valid = None;
        c.eval_interval = 0;
        c.eval_tokens = 0;
        c.save_interval = 0;
        c.keep_checkpoints = 1;
        c.threads = None;
        c.resume = ResumeMode::Fresh;
        c.stop_after_step = None;
        c.progress_bar = false;
        c.ignore_unknown = false;
        c.max_nonfinite_steps = 1;
        // Where the ranks run is not what they compute (the engine is).
        c.megatron = MegatronSettings::default();
        escale_util::hash::fnv1a_hex(serde_json::to_string(&c).expect("config serialises").as_bytes())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, "model: m\ndata: d\noutput: o\nseq_len: 64\nschedule: wsd\nmoe_loss_convention: hf\ntrain_only: new-layers\ntotal_tokens: 1000\n").unwrap();
        let c = TrainConfig::from_yaml_file(&p).unwrap();
        assert_eq!(c.seq_len, 64);
        assert_eq!(c.schedule, ScheduleKind::Wsd);
        assert_eq!(c.moe_loss_convention, LossConvention::Hf);
        assert_eq!(c.train_only, TrainOnly::NewLayers);
        assert_eq!(c.micro_batch, 8);
        // 1000 tokens / (64 * 8) per step = 1.95 -> 2 steps.
        assert_eq!(c.total_steps().unwrap(), 2);
        c.validate().unwrap();

        std::fs::write(&p, "seq_lenn: 64\n").unwrap();
        let err = TrainConfig::from_yaml_file(&p).unwrap_err().to_string();
        assert!(err.contains("seq_lenn"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let ok = TrainConfig { model: "m".into(), data: "d".into(), output: "o".into(), steps: Some(3), ..Default::default() };
        ok.validate().unwrap();
        let bad = TrainConfig { micro_batch: 0, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("micro_batch"));
        let bad = TrainConfig { steps: None, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("steps"));
        let bad = TrainConfig { min_lr: 1.0, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("min_lr"));
    }

    #[test]
    fn fingerprint_ignores_operational_settings_only() {
        let a = TrainConfig { steps: Some(3), ..Default::default() };
        let b = TrainConfig { save_interval: 7, threads: Some(1), resume: ResumeMode::Resume, output: "x".into(), ..a.clone() };
        assert_eq!(a.run_fingerprint(), b.run_fingerprint());
        let c = TrainConfig { lr: 1e-3, ..a.clone() };
        assert_ne!(a.run_fingerprint(), c.run_fingerprint());
    }

    #[test]
    fn resume_mode_reads_booleans_and_resume_or_start() {
        let parse = |v: &str| serde_yaml::from_str::<ResumeMode>(v);
        assert_eq!(parse("false").unwrap(), ResumeMode::Fresh);
        assert_eq!(parse("true").unwrap(), ResumeMode::Resume);
        assert_eq!(parse("resume-or-start").unwrap(), ResumeMode::ResumeOrStart);
        assert!(parse("maybe").unwrap_err().to_string().contains("resume-or-start"));
        // Fresh serialises as before the mode existed, so old run fingerprints still match.
        assert_eq!(serde_json::to_string(&ResumeMode::Fresh).unwrap(), "false");
        assert_eq!(serde_json::to_string(&ResumeMode::ResumeOrStart).unwrap(), "\"resume-or-start\"");
    }
}
