//! The work a pipeline stage delegates to the other escale crates, behind one trait.
//!
//! The runner only sequences, records and resumes; everything that touches tokens or weights goes
//! through [`Engine`]. [`Escale`] is the real implementation (data, grow, model, train); the seam
//! also lets the runner's skip/resume logic be tested on its own.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::schema::{MoeFormatSpec, RouterInitSpec, UpDepth, UpMethod, UpPreset};

/// A growth's verdict, from the grow crate's plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Growth {
    /// Function preserving up to floating-point rounding.
    pub exact: bool,
    /// Why not, when not.
    pub reasons: Vec<String>,
}

/// Resolved settings of a Scale-Up (hashed into the stage key, so every field matters).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpSettings {
    pub method: UpMethod,
    pub preset: UpPreset,
    pub depth: Option<UpDepth>,
    pub seed: u64,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_hidden_layers: Option<usize>,
}

/// Resolved settings of a Scale-Out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutSettings {
    pub experts: usize,
    pub top_k: usize,
    pub router_init: RouterInitSpec,
    pub router_std: f64,
    pub format: Option<MoeFormatSpec>,
    pub granularity: usize,
    pub shared_experts: usize,
    pub seed: u64,
    /// Load-balancing coefficient written into config.json (the trainer uses the same value).
    pub aux_loss_coef: f64,
}

/// Fully resolved training settings of one stage (hashed into the stage key).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSettings {
    pub tokens: u64,
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub schedule: crate::schema::Schedule,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    pub eval_interval: u64,
    pub eval_tokens: u64,
    pub save_interval: u64,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub aux_loss_coef: f64,
    pub z_loss_coef: f64,
    pub moe_loss: crate::schema::MoeLossConvention,
}

/// One training run of a stage.
#[derive(Clone, Debug)]
pub struct TrainJob {
    pub model: PathBuf,
    pub data: PathBuf,
    pub valid: PathBuf,
    pub output: PathBuf,
    pub settings: TrainSettings,
    /// Show a progress bar (terminals only).
    pub progress: bool,
}

/// What a finished training run produced.
#[derive(Clone, Debug)]
pub struct Trained {
    /// HF folder of the final weights.
    pub final_model: PathBuf,
    pub tokens: u64,
    pub flops: f64,
    pub train_log: PathBuf,
    pub eval_log: PathBuf,
    /// True when it continued from a checkpoint left by an interrupted run.
    pub resumed: bool,
}

/// Everything a pipeline asks of the rest of escale.
pub trait Engine {
    /// Writes the built-in bilingual corpus (about `bytes` of text) into `dir`; returns its files.
    fn make_corpus(&self, bytes: u64, seed: u64, dir: &Path) -> Result<Vec<PathBuf>>;
    /// Trains a byte-level BPE tokenizer on `inputs`, writing `out` (a tokenizer.json).
    fn train_tokenizer(&self, inputs: &[PathBuf], vocab_size: usize, out: &Path) -> Result<()>;
    /// Tokenizes `inputs` into `PREFIX_train` / `PREFIX_valid`; returns both prefixes.
    fn prepare_data(
        &self,
        inputs: &[PathBuf],
        json_key: Option<&str>,
        tokenizer: &Path,
        valid_fraction: f64,
        seed: u64,
        prefix: &Path,
    ) -> Result<(PathBuf, PathBuf)>;
    /// A randomly initialised model from `config` (a config.json, tokenizer files beside it).
    fn init_model(&self, config: &Path, out: &Path, seed: u64) -> Result<()>;
    fn scale_up(&self, src: &Path, out: &Path, settings: &UpSettings) -> Result<Growth>;
    fn scale_out(&self, src: &Path, out: &Path, settings: &OutSettings) -> Result<Growth>;
    /// Mean next-token loss on the first `tokens` tokens of the dataset at `valid`.
    fn evaluate(&self, model: &Path, valid: &Path, seq_len: usize, tokens: u64) -> Result<f64>;
    /// Trains (resuming from the job's output folder when it holds checkpoints).
    fn train(&self, job: &TrainJob) -> Result<Trained>;
    /// Training FLOPs per token of the model at `model` (the trainer's convention).
    fn flops_per_token(&self, model: &Path, seq_len: usize) -> Result<f64>;
}

/// The real engine: escale-data, escale-grow, escale-model and escale-train.
pub struct Escale {
    /// Worker threads for training and evaluation (`None`: all cores).
    pub threads: Option<usize>,
}

fn up_method(m: UpMethod) -> escale_grow::scale_up::Method {
    use escale_grow::scale_up::Method;
    match m {
        UpMethod::Fpi => Method::Fpi,
        UpMethod::Aki => Method::Aki,
        UpMethod::AkiPro => Method::AkiPro,
    }
}

fn up_preset(p: UpPreset) -> escale_grow::scale_up::Preset {
    use escale_grow::scale_up::Preset;
    match p {
        UpPreset::Fpi => Preset::Fpi,
        UpPreset::FpiScaled => Preset::FpiScaled,
        UpPreset::ZeroPad => Preset::ZeroPad,
    }
}

fn up_depth(d: UpDepth) -> escale_grow::scale_up::DepthMethod {
    use escale_grow::scale_up::DepthMethod;
    match d {
        UpDepth::Interpolate => DepthMethod::Interpolate,
        UpDepth::Stack => DepthMethod::Stack,
        UpDepth::StackMod => DepthMethod::StackMod,
        UpDepth::Identity => DepthMethod::Identity,
        UpDepth::InterpolateIdentity => DepthMethod::InterpolateIdentity,
    }
}

fn schedule(s: crate::schema::Schedule) -> escale_train::ScheduleKind {
    use crate::schema::Schedule;
    use escale_train::ScheduleKind;
    match s {
        Schedule::Cosine => ScheduleKind::Cosine,
        Schedule::Linear => ScheduleKind::Linear,
        Schedule::Constant => ScheduleKind::Constant,
        Schedule::Wsd => ScheduleKind::Wsd,
    }
}

impl Escale {
    fn train_config(&self, job: &TrainJob) -> escale_train::TrainConfig {
        use crate::schema::MoeLossConvention;
        let s = &job.settings;
        escale_train::TrainConfig {
            model: job.model.clone(),
            data: job.data.clone(),
            valid: Some(job.valid.clone()),
            output: job.output.clone(),
            seq_len: s.seq_len,
            micro_batch: s.micro_batch,
            grad_accum: s.grad_accum,
            steps: None,
            total_tokens: Some(s.tokens),
            lr: s.lr,
            min_lr: s.min_lr,
            warmup_steps: s.warmup,
            schedule: schedule(s.schedule),
            beta1: s.beta1,
            beta2: s.beta2,
            weight_decay: s.weight_decay,
            clip: s.grad_clip,
            seed: s.seed,
            eval_interval: s.eval_interval,
            eval_tokens: s.eval_tokens,
            save_interval: s.save_interval,
            keep_checkpoints: s.keep_checkpoints,
            aux_loss_coef: s.aux_loss_coef,
            z_loss_coef: s.z_loss_coef,
            moe_loss_convention: match s.moe_loss {
                MoeLossConvention::Megatron => escale_train::LossConvention::Megatron,
                MoeLossConvention::Hf => escale_train::LossConvention::Hf,
            },
            threads: self.threads,
            resume: true,
            progress_bar: job.progress,
            ..escale_train::TrainConfig::default()
        }
    }
}

/// Training defaults come from the trainer itself, so `escale run` and `escale train` agree.
pub fn trainer_defaults() -> escale_train::TrainConfig {
    escale_train::TrainConfig::default()
}

impl Engine for Escale {
    fn make_corpus(&self, bytes: u64, seed: u64, dir: &Path) -> Result<Vec<PathBuf>> {
        let options = escale_data::CorpusOptions { size_bytes: bytes, seed, ..escale_data::CorpusOptions::default() };
        let summary = escale_data::make_corpus(dir, &options).with_context(|| format!("generating the corpus in {}", dir.display()))?;
        Ok(summary.files)
    }

    fn train_tokenizer(&self, inputs: &[PathBuf], vocab_size: usize, out: &Path) -> Result<()> {
        let options = escale_data::BpeOptions { vocab_size, ..escale_data::BpeOptions::default() };
        let tokenizer = escale_data::train_bpe(inputs, &options).context("training the BPE tokenizer")?;
        escale_data::save_tokenizer(&tokenizer, &options, out).with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }

    fn prepare_data(
        &self,
        inputs: &[PathBuf],
        json_key: Option<&str>,
        tokenizer: &Path,
        valid_fraction: f64,
        seed: u64,
        prefix: &Path,
    ) -> Result<(PathBuf, PathBuf)> {
        let options = escale_data::PrepareOptions {
            inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
            output: prefix.to_path_buf(),
            json_key: json_key.unwrap_or("text").to_string(),
            split: Some(1.0 - valid_fraction),
            split_seed: seed,
            threads: self.threads,
            progress: true,
            ..escale_data::PrepareOptions::default()
        };
        escale_data::prepare_data(tokenizer, None, &options)
            .with_context(|| format!("tokenizing into {}", prefix.display()))?;
        Ok(escale_data::prepare::split_prefixes(prefix))
    }

    fn init_model(&self, config: &Path, out: &Path, seed: u64) -> Result<()> {
        escale_train::init_model(config, out, seed, escale_formats::DType::F32, false)
            .with_context(|| format!("initialising {} from {}", out.display(), config.display()))?;
        Ok(())
    }

    fn scale_up(&self, src: &Path, out: &Path, s: &UpSettings) -> Result<Growth> {
        use escale_grow::scale_up::{self as up, ScaleUpOptions, Target, TargetDims};
        let target = Target::Dims(TargetDims {
            hidden_size: s.hidden_size,
            intermediate_size: s.intermediate_size,
            num_attention_heads: s.num_attention_heads,
            num_hidden_layers: s.num_hidden_layers,
        });
        let options = ScaleUpOptions {
            method: up_method(s.method),
            preset: up_preset(s.preset),
            depth: s.depth.map(up_depth),
            seed: s.seed,
            ..ScaleUpOptions::default()
        };
        let exec = up::ExecOptions { threads: self.threads, ..up::ExecOptions::default() };
        let (plan, _) = up::scale_up(src, out, &target, &options, &exec, None)
            .with_context(|| format!("scale-up of {} into {}", src.display(), out.display()))?;
        Ok(Growth { exact: plan.exactness.exact, reasons: plan.exactness.reasons.clone() })
    }

    fn scale_out(&self, src: &Path, out: &Path, s: &OutSettings) -> Result<Growth> {
        use escale_grow::scale_out::{self as so, MoeFormat, RouterInit, ScaleOutOptions};
        let options = ScaleOutOptions {
            experts: s.experts,
            top_k: s.top_k,
            format: s.format.map(|f| match f {
                MoeFormatSpec::Mixtral => MoeFormat::Mixtral,
                MoeFormatSpec::Qwen2Moe => MoeFormat::Qwen2Moe,
            }),
            router_init: match s.router_init {
                RouterInitSpec::Normal => RouterInit::Normal,
                RouterInitSpec::Zeros => RouterInit::Zeros,
                RouterInitSpec::Uniform => RouterInit::Uniform,
            },
            router_std: s.router_std,
            seed: s.seed,
            granularity: s.granularity,
            shared_experts: s.shared_experts,
            aux_loss_coef: s.aux_loss_coef,
            threads: self.threads,
            ..ScaleOutOptions::default()
        };
        let report = so::upcycle(src, out, &options, &escale_formats::WriterOptions::default(), &|_, _| {})
            .with_context(|| format!("scale-out of {} into {}", src.display(), out.display()))?;
        let e = &report.plan.exactness;
        Ok(Growth { exact: e.exact, reasons: e.broken_by.clone() })
    }

    fn evaluate(&self, model: &Path, valid: &Path, seq_len: usize, tokens: u64) -> Result<f64> {
        escale_model::set_threads(self.threads);
        let m = escale_model::Model::load_dir(model, &candle_core::Device::Cpu, candle_core::DType::F32)
            .with_context(|| format!("loading {}", model.display()))?;
        let data = std::sync::Arc::new(
            escale_data::IndexedDataset::open(valid).with_context(|| format!("opening {}", valid.display()))?,
        );
        escale_train::evaluate(&m, &data, seq_len, 8, tokens).with_context(|| format!("evaluating {}", model.display()))
    }

    fn train(&self, job: &TrainJob) -> Result<Trained> {
        let cfg = self.train_config(job);
        let resumed = escale_train::checkpoint::latest_checkpoint(&job.output)?.is_some();
        let mut on_event = |ev: escale_train::TrainEvent| match ev {
            escale_train::TrainEvent::Started { start_step, total_steps, resumed_from: Some(p) } => {
                eprintln!("  resuming from {} (step {start_step} of {total_steps})", p.display())
            }
            escale_train::TrainEvent::Eval(e) if !job.progress => {
                eprintln!("  step {:>6}  tokens {:>10}  val loss {:.4}", e.step, e.tokens, e.val_loss)
            }
            escale_train::TrainEvent::Warning(w) => eprintln!("  warning: {w}"),
            _ => {}
        };
        let summary = escale_train::train(&cfg, &mut on_event)
            .with_context(|| format!("training {} into {}", job.model.display(), job.output.display()))?;
        Ok(Trained {
            final_model: summary.final_checkpoint,
            tokens: summary.tokens,
            flops: summary.flops,
            train_log: job.output.join(escale_train::trainer::TRAIN_LOG),
            eval_log: job.output.join(escale_train::trainer::EVAL_LOG),
            resumed,
        })
    }

    fn flops_per_token(&self, model: &Path, seq_len: usize) -> Result<f64> {
        let cfg = escale_formats::ModelConfig::from_file(&model.join("config.json"))?;
        Ok(escale_train::flops::training_flops_per_token(&cfg, seq_len))
    }
}
