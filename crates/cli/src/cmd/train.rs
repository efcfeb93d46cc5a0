//! `escale train`: continued pretraining of a dense or MoE model. Settings come from
//! `--config train.yaml` (any field of `escale_train::TrainConfig`) and/or flags; a flag
//! overrides the file.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::ArgMatches;
use escale_train::{Engine, LossConvention, ResumeMode, ScheduleKind, TrainConfig, TrainDType, TrainEvent, TrainOnly, TrainSummary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::flags::choice;

/// The defaults shown in `--help`: a flag left out keeps the `--config` file's value, or this.
fn default() -> TrainConfig {
    TrainConfig::default()
}

#[derive(clap::Args)]
pub struct Args {
    /// HF model folder to continue training (may come from --config instead).
    pub model: Option<PathBuf>,
    /// YAML file with training settings (the keys of `escale_train::TrainConfig`: the flags'
    /// names with underscores, and `warmup_steps` for --warmup).
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
    /// Tokens per training sequence (at most the model's max_position_embeddings).
    #[arg(long, default_value_t = default().seq_len)]
    pub seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = default().micro_batch)]
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = default().grad_accum)]
    pub grad_accum: usize,
    /// Run length in optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run length in training tokens (rounded up to whole steps); --steps wins if both are given.
    #[arg(long)]
    pub total_tokens: Option<u64>,
    /// Peak learning rate.
    #[arg(long, default_value_t = default().lr)]
    pub lr: f64,
    /// Final learning rate of decaying schedules.
    #[arg(long, default_value_t = default().min_lr)]
    pub min_lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = default().warmup_steps)]
    pub warmup: u64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, ignore_case = true, value_parser = choice::<ScheduleKind>(), default_value_t = default().schedule)]
    pub schedule: ScheduleKind,
    /// WSD: fraction of the run spent decaying.
    #[arg(long, default_value_t = default().decay_fraction)]
    pub decay_fraction: f64,
    /// AdamW beta1.
    #[arg(long, default_value_t = default().beta1)]
    pub beta1: f64,
    /// AdamW beta2.
    #[arg(long, default_value_t = default().beta2)]
    pub beta2: f64,
    /// AdamW epsilon.
    #[arg(long, default_value_t = default().eps)]
    pub eps: f64,
    /// Decoupled weight decay (not applied to norms and biases).
    #[arg(long, default_value_t = default().weight_decay)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0 disables).
    #[arg(long, default_value_t = default().clip)]
    pub clip: f64,
    /// Seed of the data order.
    #[arg(long, default_value_t = default().seed)]
    pub seed: u64,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = default().eval_interval)]
    pub eval_interval: u64,
    /// Validation tokens scored per evaluation.
    #[arg(long, default_value_t = default().eval_tokens)]
    pub eval_tokens: u64,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = default().save_interval)]
    pub save_interval: u64,
    /// How many most recent checkpoints to keep.
    #[arg(long, default_value_t = default().keep_checkpoints)]
    pub keep_checkpoints: usize,
    /// MoE load-balancing loss coefficient.
    #[arg(long, default_value_t = default().aux_loss_coef)]
    pub aux_loss_coef: f64,
    /// MoE router z-loss coefficient.
    #[arg(long, default_value_t = default().z_loss_coef)]
    pub z_loss_coef: f64,
    /// Load-balancing convention: megatron (per layer, 1 when balanced) or hf (pooled, k when balanced).
    #[arg(long, value_enum, ignore_case = true, value_parser = choice::<LossConvention>(), default_value_t = default().moe_loss_convention)]
    pub moe_loss_convention: LossConvention,
    /// Train only some parameters: all, new-layers (from escale_growth.json) or experts.
    #[arg(long, value_enum, value_parser = choice::<TrainOnly>(), default_value_t = default().train_only)]
    pub train_only: TrainOnly,
    /// Abort after this many consecutive steps with non-finite loss/gradients.
    #[arg(long, default_value_t = default().max_nonfinite_steps)]
    pub max_nonfinite_steps: u32,
    /// CPU threads (exact resume needs the same number as the original run).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Training precision (checkpoints are stored in the same precision).
    #[arg(long, value_enum, value_parser = choice::<TrainDType>(), default_value_t = default().dtype)]
    pub dtype: TrainDType,
    /// Continue from the newest valid checkpoint in --output (a damaged newer one is skipped with
    /// a warning); refused when there is none.
    #[arg(long, conflicts_with = "resume_or_start")]
    pub resume: bool,
    /// Like --resume, but start from scratch when --output holds no checkpoint yet.
    #[arg(long)]
    pub resume_or_start: bool,
    /// Debugging: stop after this step (checkpoints due at it are written), as if interrupted.
    #[arg(long, hide = true)]
    pub stop_after_step: Option<u64>,
    /// Never show the progress bar (it is shown only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Drop tensors the model's config does not declare (with a warning naming them) instead of
    /// refusing the model.
    #[arg(long)]
    pub ignore_unknown: bool,
    /// Training engine: escale (in-process, CPU) or megatron (megatron-core's DDP, distributed
    /// optimizer and schedules under torchrun: GPUs, several nodes; same logs, the final model
    /// imported to <output>/hf).
    #[arg(long, value_enum, value_parser = choice::<Engine>(), default_value_t = default().engine)]
    pub engine: Engine,
    /// megatron engine: tensor-parallel size.
    #[arg(long, default_value_t = default().megatron.tp)]
    pub tp: usize,
    /// megatron engine: pipeline-parallel size.
    #[arg(long, default_value_t = default().megatron.pp)]
    pub pp: usize,
    /// megatron engine: expert-parallel size (MoE; experts split inside the data-parallel ranks).
    #[arg(long, default_value_t = default().megatron.ep)]
    pub ep: usize,
    /// megatron engine: data-parallel size; the world size is tp x pp x dp, and --grad-accum must
    /// be a multiple of it (a step stays micro_batch x grad_accum sequences).
    #[arg(long, default_value_t = default().megatron.dp)]
    pub dp: usize,
    /// megatron engine: the command that starts the ranks (default `torchrun --standalone
    /// --nproc-per-node <tp x pp x dp>`). Several nodes: torchrun's own flags, run on each node,
    /// e.g. "torchrun --nnodes 2 --node-rank 0 --master-addr host0 --master-port 29500 --nproc-per-node 8".
    #[arg(long)]
    pub launcher: Option<String>,
    /// megatron engine: the Python with megatron-core (default: $ESCALE_MEGATRON_PYTHON, else the
    /// virtualenv `bash python/setup.sh` creates).
    #[arg(long)]
    pub megatron_python: Option<PathBuf>,
}

/// File settings (or defaults), then every flag given on the command line (`given` holds this
/// subcommand's parsed flags: a flag with a default overrides the file only when typed).
fn build_config(a: Args, given: &ArgMatches) -> anyhow::Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_yaml_file(p)?,
        None => TrainConfig::default(),
    };
    let typed = |flag: &str| given.value_source(flag) == Some(ValueSource::CommandLine);
    macro_rules! set {
        ($($field:ident <- $flag:ident),* $(,)?) => { $( if typed(stringify!($flag)) { c.$field = a.$flag; } )* };
    }
    set!(seq_len <- seq_len, micro_batch <- micro_batch, grad_accum <- grad_accum, lr <- lr, min_lr <- min_lr,
        warmup_steps <- warmup, schedule <- schedule, decay_fraction <- decay_fraction, beta1 <- beta1,
        beta2 <- beta2, eps <- eps, weight_decay <- weight_decay, clip <- clip, seed <- seed,
        eval_interval <- eval_interval, eval_tokens <- eval_tokens, save_interval <- save_interval,
        keep_checkpoints <- keep_checkpoints, aux_loss_coef <- aux_loss_coef, z_loss_coef <- z_loss_coef,
        moe_loss_convention <- moe_loss_convention, train_only <- train_only,
        max_nonfinite_steps <- max_nonfinite_steps, dtype <- dtype, engine <- engine);
    macro_rules! set_layout {
        ($($field:ident),* $(,)?) => { $( if typed(stringify!($field)) { c.megatron.$field = a.$field; } )* };
    }
    set_layout!(tp, pp, ep, dp);
    if a.launcher.is_some() {
        c.megatron.launcher = a.launcher;
    }
    macro_rules! set_some {
        ($($field:ident),* $(,)?) => { $( if let Some(v) = a.$field { c.$field = v; } )* };
    }
    set_some!(model, data, output);
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
    if a.ignore_unknown {
        c.ignore_unknown = true;
    }
    if a.resume {
        c.resume = ResumeMode::Resume;
    } else if a.resume_or_start {
        c.resume = ResumeMode::ResumeOrStart;
    }
    c.progress_bar = !a.no_progress && std::io::stderr().is_terminal();
    Ok(c)
}

pub fn run(args: Args, given: &ArgMatches) -> anyhow::Result<()> {
    // The allocator is tuned once in main().
    let megatron_python = args.megatron_python.clone();
    let cfg = build_config(args, given)?;
    if cfg.engine == Engine::Megatron {
        return run_megatron(&cfg, megatron_python);
    }
    let total = cfg.total_steps()?;
    let bar = if cfg.progress_bar {
        ProgressBar::with_draw_target(Some(total), escale_util::progress::stderr_target(20))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let quiet = cfg.progress_bar;
    let summary = escale_train::train_until(&cfg, crate::signals::STOP, &mut |ev| match ev {
        TrainEvent::Started { start_step, total_steps, resumed_from } => {
            bar.set_position(start_step);
            match resumed_from {
                Some(dir) => err!("resuming from {} (step {start_step} of {total_steps})", dir.display()),
                None => err!("training {} for {total_steps} steps", cfg.model.display()),
            }
        }
        TrainEvent::Step(r) => {
            bar.set_position(r.step);
            let moe = r.aux_loss.map(|a| format!(" aux {a:.3} z {:.3}", r.z_loss.unwrap_or(0.0))).unwrap_or_default();
            let msg = format!("loss {:.4}{moe}  lr {:.2e}  {:.0} tok/s", r.loss, r.lr, r.tokens_per_s);
            if quiet {
                bar.set_message(msg);
            } else if r.step == 1 || r.step % 10 == 0 || r.step == total {
                err!("step {}/{total}: {msg}", r.step);
            }
        }
        TrainEvent::Eval(r) => bar.suspend(|| err!("step {}: validation loss {:.4}", r.step, r.val_loss)),
        TrainEvent::Checkpoint { step, path } => bar.suspend(|| err!("step {step}: checkpoint {}", path.display())),
        TrainEvent::Warning(w) => bar.suspend(|| err!("warning: {w}")),
    })?;
    bar.finish_and_clear();
    print_summary(&summary);
    if summary.stopped_early && crate::signals::stop_requested() {
        anyhow::bail!(
            "interrupted at step {} of {total}; the checkpoint above holds it: run the same command with --resume to continue",
            summary.steps
        );
    }
    Ok(())
}

/// `--engine megatron`: the run on megatron-core ([`escale_megatron::train`]), printed like the
/// in-process trainer's.
fn run_megatron(cfg: &TrainConfig, python: Option<PathBuf>) -> anyhow::Result<()> {
    use escale_megatron::train::MegatronEvent;

    // Settings the engine cannot carry are refused before looking for Python.
    let model = escale_formats::ModelConfig::from_file(&cfg.model.join("config.json"))?;
    escale_megatron::train::check_settings(cfg, &model)?;
    let bridge = match python {
        Some(p) => escale_megatron::Bridge::with_python(p)?,
        None => escale_megatron::Bridge::get()?,
    };
    let total = cfg.total_steps()?;
    let summary = escale_megatron::train::train(cfg, &bridge, &mut |ev| match ev {
        MegatronEvent::Exporting { model } => err!("exporting {} to a Megatron-Core checkpoint", model.display()),
        MegatronEvent::Launching { command } => err!("starting the ranks: {command}"),
        MegatronEvent::Started { start_step, total_steps, resumed_from, world_size } => match resumed_from {
            Some(dir) => err!("resuming from {} (step {start_step} of {total_steps}) on {world_size} ranks", dir.display()),
            None => err!("training {} for {total_steps} steps on megatron-core, {world_size} ranks", cfg.model.display()),
        },
        MegatronEvent::Step(r) => {
            let step = r["step"].as_u64().unwrap_or(0);
            if step == 1 || step % 10 == 0 || step == total {
                let moe = r["aux_loss"].as_f64().map(|a| format!(" aux {a:.3} z {:.3}", r["z_loss"].as_f64().unwrap_or(0.0))).unwrap_or_default();
                let (loss, lr, speed) = (r["loss"].as_f64().unwrap_or(f64::NAN), r["lr"].as_f64().unwrap_or(0.0), r["tokens_per_s"].as_f64().unwrap_or(0.0));
                err!("step {step}/{total}: loss {loss:.4}{moe}  lr {lr:.2e}  {speed:.0} tok/s");
            }
        }
        MegatronEvent::Eval(r) => err!("step {}: validation loss {:.4}", r["step"].as_u64().unwrap_or(0), r["val_loss"].as_f64().unwrap_or(f64::NAN)),
        MegatronEvent::Checkpoint { step, path } => err!("step {step}: checkpoint {}", path.display()),
        MegatronEvent::Importing { out } => err!("importing the final checkpoint into {}", out.display()),
    })?;
    print_summary(&summary.run);
    if let Some(model) = &summary.final_model {
        out!("model: {}", model.display());
    }
    Ok(())
}

/// The closing line of a run, the same for both engines.
fn print_summary(summary: &TrainSummary) {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    out!(
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
}
