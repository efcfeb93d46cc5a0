//! `escale train`: continued pretraining of a dense or MoE model. Settings come from
//! `--config train.yaml` (any field of `escale_train::TrainConfig`) and/or flags; a flag
//! overrides the file.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use escale_train::{LossConvention, ScheduleKind, TrainConfig, TrainDType, TrainEvent, TrainOnly};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// HF model folder to continue training (may come from --config instead).
    pub model: Option<PathBuf>,
    /// YAML file with training settings (field names as in the flags, with underscores).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training data: Megatron indexed dataset prefix (PREFIX.bin / PREFIX.idx).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation data prefix; validation loss is logged at each eval.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Run folder: checkpoints/, train_log.jsonl, eval_log.jsonl.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Tokens per training sequence (at most the model's max_position_embeddings). Default 256.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences per micro-batch. Default 8.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Micro-batches per optimizer step. Default 1.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Run length in optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run length in training tokens (rounded up to whole steps); --steps wins if both are given.
    #[arg(long)]
    pub total_tokens: Option<u64>,
    /// Peak learning rate. Default 3e-4.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of decaying schedules. Default 3e-5.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps. Default 0.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Learning-rate schedule: cosine, linear, constant or wsd. Default cosine.
    #[arg(long)]
    pub schedule: Option<String>,
    /// WSD: fraction of the run spent decaying. Default 0.1.
    #[arg(long)]
    pub decay_fraction: Option<f64>,
    /// AdamW beta1. Default 0.9.
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdamW beta2. Default 0.95.
    #[arg(long)]
    pub beta2: Option<f64>,
    /// AdamW epsilon. Default 1e-8.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Decoupled weight decay (not applied to norms and biases). Default 0.1.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip gradients to this global norm (0 disables). Default 1.0.
    #[arg(long)]
    pub clip: Option<f64>,
    /// Seed of the data order. Default 1234.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps (0: only at the end). Default 0.
    #[arg(long)]
    pub eval_interval: Option<u64>,
    /// Validation tokens scored per evaluation. Default 32768.
    #[arg(long)]
    pub eval_tokens: Option<u64>,
    /// Checkpoint every N steps (0: only at the end). Default 0.
    #[arg(long)]
    pub save_interval: Option<u64>,
    /// How many most recent checkpoints to keep. Default 2.
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// MoE load-balancing loss coefficient. Default 0.001.
    #[arg(long)]
    pub aux_loss_coef: Option<f64>,
    /// MoE router z-loss coefficient. Default 0.01.
    #[arg(long)]
    pub z_loss_coef: Option<f64>,
    /// Load-balancing convention: megatron (per layer, 1 when balanced) or hf (pooled, k when balanced).
    #[arg(long)]
    pub moe_loss_convention: Option<String>,
    /// Train only some parameters: all, new-layers (from escale_growth.json) or experts.
    #[arg(long)]
    pub train_only: Option<String>,
    /// Abort after this many consecutive steps with non-finite loss/gradients. Default 5.
    #[arg(long)]
    pub max_nonfinite_steps: Option<u32>,
    /// CPU threads (exact resume needs the same number as the original run).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Training precision: f32 or f64 (checkpoints are stored in f32). Default f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Continue from the latest complete checkpoint in --output.
    #[arg(long)]
    pub resume: bool,
    /// Debugging: stop after this step (checkpoints due at it are written), as if interrupted.
    #[arg(long, hide = true)]
    pub stop_after_step: Option<u64>,
    /// Never show the progress bar (it is shown only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

fn parse<T>(value: Option<String>, flag: &str, f: impl Fn(&str) -> Option<T>, allowed: &str) -> anyhow::Result<Option<T>> {
    value.map(|v| f(&v).with_context(|| format!("--{flag} {v}: expected one of {allowed}"))).transpose()
}

/// File settings (or defaults), then every flag given on the command line.
fn build_config(a: Args) -> anyhow::Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_yaml_file(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident <- $val:expr),* $(,)?) => { $( if let Some(v) = $val { c.$field = v; } )* };
    }
    set!(model <- a.model, data <- a.data, output <- a.output, seq_len <- a.seq_len, micro_batch <- a.micro_batch,
        grad_accum <- a.grad_accum, lr <- a.lr, min_lr <- a.min_lr, warmup_steps <- a.warmup,
        decay_fraction <- a.decay_fraction, beta1 <- a.beta1, beta2 <- a.beta2, eps <- a.eps,
        weight_decay <- a.weight_decay, clip <- a.clip, seed <- a.seed, eval_interval <- a.eval_interval,
        eval_tokens <- a.eval_tokens, save_interval <- a.save_interval, keep_checkpoints <- a.keep_checkpoints,
        aux_loss_coef <- a.aux_loss_coef, z_loss_coef <- a.z_loss_coef, max_nonfinite_steps <- a.max_nonfinite_steps);
    if a.valid.is_some() {
        c.valid = a.valid;
    }
    if a.steps.is_some() {
        c.steps = a.steps;
    }
    if a.total_tokens.is_some() {
        c.total_tokens = a.total_tokens;
        if a.steps.is_none() {
            c.steps = None;
        }
    }
    if a.threads.is_some() {
        c.threads = a.threads;
    }
    if a.stop_after_step.is_some() {
        c.stop_after_step = a.stop_after_step;
    }
    set!(schedule <- parse(a.schedule, "schedule", ScheduleKind::parse, "cosine, linear, constant, wsd")?,
        moe_loss_convention <- parse(a.moe_loss_convention, "moe-loss-convention", LossConvention::parse, "megatron, hf")?,
        train_only <- parse(a.train_only, "train-only", TrainOnly::parse, "all, new-layers, experts")?,
        dtype <- parse(a.dtype, "dtype", |s| match s { "f32" => Some(TrainDType::F32), "f64" => Some(TrainDType::F64), _ => None }, "f32, f64")?);
    c.resume |= a.resume;
    c.progress_bar = !a.no_progress && std::io::stderr().is_terminal();
    Ok(c)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // The allocator is tuned once in main().
    let cfg = build_config(args)?;
    let total = cfg.total_steps()?;
    let bar = if cfg.progress_bar { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let quiet = cfg.progress_bar;
    let summary = escale_train::train(&cfg, &mut |ev| match ev {
        TrainEvent::Started { start_step, total_steps, resumed_from } => {
            bar.set_position(start_step);
            match resumed_from {
                Some(dir) => eprintln!("resuming from {} (step {start_step} of {total_steps})", dir.display()),
                None => eprintln!("training {} for {total_steps} steps", cfg.model.display()),
            }
        }
        TrainEvent::Step(r) => {
            bar.set_position(r.step);
            let moe = r.aux_loss.map(|a| format!(" aux {a:.3} z {:.3}", r.z_loss.unwrap_or(0.0))).unwrap_or_default();
            let msg = format!("loss {:.4}{moe}  lr {:.2e}  {:.0} tok/s", r.loss, r.lr, r.tokens_per_s);
            if quiet {
                bar.set_message(msg);
            } else if r.step == 1 || r.step % 10 == 0 || r.step == total {
                eprintln!("step {}/{total}: {msg}", r.step);
            }
        }
        TrainEvent::Eval(r) => bar.suspend(|| eprintln!("step {}: validation loss {:.4}", r.step, r.val_loss)),
        TrainEvent::Checkpoint { step, path } => bar.suspend(|| eprintln!("step {step}: checkpoint {}", path.display())),
        TrainEvent::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
    })?;
    bar.finish_and_clear();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "{} after {} steps, {} tokens, {:.3e} FLOPs, {:.1} s: train loss {}, validation loss {} (best {}), {} skipped steps\ncheckpoint: {}",
        if summary.stopped_early { "stopped" } else { "done" },
        summary.steps,
        summary.tokens,
        summary.flops,
        summary.wall_s,
        fmt(summary.final_train_loss),
        fmt(summary.final_val_loss),
        fmt(summary.best_val_loss),
        summary.skipped_steps,
        summary.final_checkpoint.display()
    );
    Ok(())
}
