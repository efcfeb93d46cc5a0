//! `escale train --engine megatron`: escale's training run executed by megatron-core.
//!
//! The run folder is the in-process trainer's (`train_log.jsonl`, `eval_log.jsonl` with the same
//! records) plus:
//! * `megatron-init/`: the input model exported to a torch_dist checkpoint ([`crate::export`]),
//!   also the record (model description, config.json, tokenizer) the final import reads;
//! * `megatron/`: Megatron-LM's save folder (`iter_NNNNNNN/`, `latest_checkpointed_iteration.txt`),
//!   the run's spec (`escale_train_spec.json`) and the driver's stderr (`driver.log`);
//! * `hf/`: the final checkpoint imported back to a Hugging Face folder (the next stage's input).
//!
//! The launcher (torchrun by default) starts the bridge's driver (`python/escale_megatron/driver.py`)
//! on every rank; rank 0 prints one JSON line per event, which this module turns into
//! [`MegatronEvent`]s.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use escale_formats::{Checkpoint, ModelConfig};
use escale_train::{LossConvention, MegatronSettings, ResumeMode, ScheduleKind, TrainConfig, TrainDType, TrainOnly, TrainSummary};
use escale_util::lock::OutputLock;
use serde_json::{json, Value};

use crate::{Bridge, ExportOptions, ImportOptions, MegatronError, Result};

/// The exported starting model inside the run folder.
pub const INIT_DIR: &str = "megatron-init";
/// Megatron-LM's save folder inside the run folder.
pub const SAVE_DIR: &str = "megatron";
/// The final checkpoint as a Hugging Face folder, inside the run folder.
pub const FINAL_MODEL_DIR: &str = "hf";
pub const SPEC_FILE: &str = "escale_train_spec.json";
pub const DRIVER_LOG: &str = "driver.log";
/// Lines of the driver's stderr shown when it fails.
const STDERR_TAIL: usize = 30;

/// The number of processes of a layout: tp x pp x dp (experts are split `ep` ways inside the
/// data-parallel ranks, megatron-core's expert parallelism).
pub fn world_size(par: &MegatronSettings) -> usize {
    par.tp * par.pp * par.dp
}

/// What the caller hears while the run goes on.
pub enum MegatronEvent<'a> {
    /// The input model is being exported to a torch_dist checkpoint (fresh runs).
    Exporting { model: &'a Path },
    /// The ranks are being started.
    Launching { command: &'a str },
    Started { start_step: u64, total_steps: u64, resumed_from: Option<&'a Path>, world_size: u64 },
    /// A `train_log.jsonl` record (escale_train's `StepRecord` fields).
    Step(&'a Value),
    /// An `eval_log.jsonl` record (escale_train's `EvalRecord` fields).
    Eval(&'a Value),
    Checkpoint { step: u64, path: &'a Path },
    /// The final checkpoint is being imported into `out`.
    Importing { out: &'a Path },
}

/// The in-process trainer's summary of the run (the same fields, so reports and the CLI read both
/// engines alike), plus what only this engine has.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MegatronTrainSummary {
    /// `final_checkpoint` is the last torch_dist checkpoint (`<output>/megatron/iter_NNNNNNN`).
    #[serde(flatten)]
    pub run: TrainSummary,
    /// The final checkpoint imported as a Hugging Face folder; `None` when the run stopped early.
    pub final_model: Option<PathBuf>,
    pub train_log: PathBuf,
    pub eval_log: PathBuf,
}

fn config_error(field: &str, message: impl Into<String>) -> MegatronError {
    MegatronError::invalid(format!("train setting `{field}`"), message)
}

/// Refuses settings the megatron engine does not carry, and layouts the model cannot be split into.
pub fn check_settings(cfg: &TrainConfig, model: &ModelConfig) -> Result<()> {
    let par = &cfg.megatron;
    cfg.validate().map_err(|e| config_error("config", e.to_string()))?;
    if cfg.train_only != TrainOnly::All {
        return Err(config_error("train_only", "the megatron engine trains every parameter (freezing parameters is the in-process trainer's)"));
    }
    if cfg.moe_loss_convention != LossConvention::Megatron {
        return Err(config_error("moe_loss_convention", "megatron-core computes the load-balancing loss in the Megatron convention only"));
    }
    if cfg.dtype != TrainDType::F32 {
        return Err(config_error("dtype", "the megatron engine trains in the model's own dtype (float32, or bfloat16 with float32 master weights); --dtype is the in-process trainer's"));
    }
    if cfg.seq_len > model.max_position_embeddings {
        return Err(config_error("seq_len", format!("{} exceeds the model's max_position_embeddings = {}", cfg.seq_len, model.max_position_embeddings)));
    }
    for (name, v) in [("tp", par.tp), ("pp", par.pp), ("ep", par.ep), ("dp", par.dp)] {
        if v == 0 {
            return Err(config_error(name, "must be at least 1"));
        }
    }
    if !cfg.grad_accum.is_multiple_of(par.dp) {
        return Err(config_error(
            "grad_accum",
            format!("{} is not a multiple of dp = {}: a step is micro_batch x grad_accum sequences, split over the data-parallel ranks", cfg.grad_accum, par.dp),
        ));
    }
    let divides = |what: &str, n: usize, by: usize, flag: &str| -> Result<()> {
        if !n.is_multiple_of(by) {
            return Err(config_error(flag, format!("{by} does not divide the model's {what} ({n})")));
        }
        Ok(())
    };
    divides("attention heads", model.num_attention_heads, par.tp, "tp")?;
    divides("key/value heads", model.num_key_value_heads, par.tp, "tp")?;
    divides("layers", model.num_hidden_layers, par.pp, "pp")?;
    match &model.moe {
        Some(m) => {
            divides("experts", m.num_experts, par.ep, "ep")?;
            if !(par.dp * par.tp).is_multiple_of(par.ep) {
                return Err(config_error("ep", format!("{} must divide dp x tp = {} (experts are split inside the data-parallel ranks)", par.ep, par.dp * par.tp)));
            }
        }
        None if par.ep > 1 => return Err(config_error("ep", "expert parallelism needs an MoE model")),
        None => {}
    }
    Ok(())
}

/// The step of the newest checkpoint in `save_dir`, per Megatron-LM's tracker file.
pub fn latest_iteration(save_dir: &Path) -> Result<Option<u64>> {
    let tracker = save_dir.join(crate::TRACKER_FILE);
    match std::fs::read_to_string(&tracker) {
        Ok(text) => {
            let step = text.trim().parse::<u64>().map_err(|_| MegatronError::invalid(&tracker, format!("expected an iteration number, found `{}`", text.trim())))?;
            let dir = save_dir.join(format!("iter_{step:07}"));
            if !dir.join(".metadata").is_file() {
                return Err(MegatronError::invalid(&dir, "named by the tracker file but holds no torch_dist checkpoint (.metadata missing)"));
            }
            Ok(Some(step))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MegatronError::io(tracker, e)),
    }
}

/// Whether this session resumes, per `cfg.resume` and what the save folder holds.
fn resumes(cfg: &TrainConfig, save_dir: &Path) -> Result<bool> {
    let latest = latest_iteration(save_dir)?;
    match (cfg.resume, latest) {
        (ResumeMode::Fresh, Some(step)) => Err(config_error(
            "output",
            format!("{} already holds checkpoints (latest: step {step}); pass --resume to continue that run or choose another output", save_dir.display()),
        )),
        (ResumeMode::Resume, None) => Err(config_error(
            "resume",
            format!("{} holds no checkpoint to resume from; pass --resume-or-start to start from scratch when there is none", save_dir.display()),
        )),
        (_, latest) => Ok(latest.is_some()),
    }
}

fn eos_id(model: &ModelConfig) -> u64 {
    match model.raw().get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64).unwrap_or(0),
        _ => 0,
    }
}

fn schedule_name(kind: ScheduleKind) -> &'static str {
    match kind {
        ScheduleKind::Cosine => "cosine",
        ScheduleKind::Linear => "linear",
        ScheduleKind::Constant => "constant",
        ScheduleKind::Wsd => "wsd",
    }
}

fn abs(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| MegatronError::io(p, e))
}

/// The driver's spec: every setting of the run, with absolute paths (the ranks may start elsewhere).
pub fn spec_json(cfg: &TrainConfig, model: &ModelConfig, resume: bool) -> Result<Value> {
    let par = &cfg.megatron;
    let out = abs(&cfg.output)?;
    let total = cfg.total_steps().map_err(|e| config_error("steps", e.to_string()))?;
    let schedule = cfg.schedule().map_err(|e| config_error("schedule", e.to_string()))?;
    // escale's WSD decays over the last round(fraction x total) steps, never inside the warmup.
    let decay_steps = (cfg.decay_fraction * total as f64).round() as u64;
    let wsd_decay_steps = total - total.saturating_sub(decay_steps).max(schedule.warmup_steps).min(total);
    let init = out.join(INIT_DIR);
    Ok(json!({
        "escale_megatron_protocol": crate::PROTOCOL,
        "model": init.join(crate::MODEL_FILE),
        "load": init.join("release"),
        "save": out.join(SAVE_DIR),
        "output": out,
        "data": abs(&cfg.data)?,
        "valid": cfg.valid.as_deref().map(abs).transpose()?,
        "vocab_size": model.vocab_size,
        "eod": eos_id(model),
        "seq_len": cfg.seq_len,
        "micro_batch": cfg.micro_batch,
        "grad_accum": cfg.grad_accum,
        "steps": total,
        "lr": cfg.lr,
        "min_lr": cfg.min_lr,
        "warmup_steps": cfg.warmup_steps,
        "schedule": schedule_name(cfg.schedule),
        "wsd_decay_steps": wsd_decay_steps.max(1),
        "beta1": cfg.beta1,
        "beta2": cfg.beta2,
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
        "clip": cfg.clip,
        "aux_loss_coef": cfg.aux_loss_coef,
        "z_loss_coef": cfg.z_loss_coef,
        "seed": cfg.seed,
        "eval_interval": cfg.eval_interval,
        "eval_tokens": cfg.eval_tokens,
        "save_interval": cfg.save_interval,
        "keep_checkpoints": cfg.keep_checkpoints,
        "max_nonfinite_steps": cfg.max_nonfinite_steps,
        "tp": par.tp,
        "pp": par.pp,
        "ep": par.ep,
        "dp": par.dp,
        "flops_per_token": escale_train::flops::training_flops_per_token(model, cfg.seq_len),
        "resume": resume,
        "stop_after_step": cfg.stop_after_step,
        "run_fingerprint": cfg.run_fingerprint(),
    }))
}

/// The launcher's command line with the driver appended. The launcher is split on whitespace,
/// e.g. `torchrun --nnodes 2 --node-rank 0 --master-addr host0 --nproc-per-node 8`; a leading
/// `torchrun` runs the bridge interpreter's own (`python -m torch.distributed.run`), so the ranks
/// use the torch that megatron-core was installed with.
pub fn launch_command(bridge: &Bridge, par: &MegatronSettings, spec_file: &Path) -> Result<Command> {
    let default = format!("torchrun --standalone --nproc-per-node {}", world_size(par));
    let launcher = par.launcher.clone().unwrap_or(default);
    let mut words = launcher.split_whitespace();
    let first = words.next().ok_or_else(|| config_error("launcher", "is empty"))?;
    let mut c = if first == "torchrun" {
        let mut c = Command::new(bridge.python());
        c.args(["-m", "torch.distributed.run"]);
        c
    } else {
        Command::new(first)
    };
    c.args(words);
    c.args(["-m", "escale_megatron", "train", "--spec"]).arg(spec_file);
    bridge.set_env(&mut c);
    Ok(c)
}

/// What the driver's `done` line reports.
#[derive(serde::Deserialize)]
struct Done {
    steps: u64,
    tokens: u64,
    flops: f64,
    final_train_loss: Option<f64>,
    final_val_loss: Option<f64>,
    best_val_loss: Option<f64>,
    wall_s: f64,
    checkpoint: Option<PathBuf>,
    stopped_early: bool,
    skipped_steps: u64,
}

/// Keeps the last lines of the driver's stderr (for errors) and writes all of it to a log file.
fn drain_stderr(stderr: impl std::io::Read + Send + 'static, log: PathBuf) -> (std::thread::JoinHandle<()>, Arc<Mutex<VecDeque<String>>>) {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let keep = Arc::clone(&tail);
    let handle = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&log).ok();
        for line in BufReader::new(stderr).lines().map_while(std::io::Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            let mut t = keep.lock().expect("stderr tail lock");
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
    (handle, tail)
}

/// Runs the driver to its end, passing its events on; returns its `done` report.
fn run_driver(mut command: Command, log: &Path, on_event: &mut dyn FnMut(MegatronEvent)) -> Result<Done> {
    let describe = format!("{command:?}");
    on_event(MegatronEvent::Launching { command: &describe });
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| MegatronError::Bridge { command: "train".into(), message: format!("could not start the launcher {describe}: {e}") })?;
    let (stderr_thread, tail) = drain_stderr(child.stderr.take().expect("piped stderr"), log.to_path_buf());
    let mut done = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines().map_while(std::io::Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        match v["event"].as_str() {
            Some("started") => on_event(MegatronEvent::Started {
                start_step: v["start_step"].as_u64().unwrap_or(0),
                total_steps: v["total_steps"].as_u64().unwrap_or(0),
                resumed_from: v["resumed_from"].as_str().map(Path::new),
                world_size: v["world_size"].as_u64().unwrap_or(1),
            }),
            Some("step") => on_event(MegatronEvent::Step(&v["record"])),
            Some("eval") => on_event(MegatronEvent::Eval(&v["record"])),
            Some("checkpoint") => on_event(MegatronEvent::Checkpoint { step: v["step"].as_u64().unwrap_or(0), path: Path::new(v["path"].as_str().unwrap_or("")) }),
            Some("done") => done = Some(v),
            _ => {}
        }
    }
    let status = child.wait().map_err(|e| MegatronError::Bridge { command: "train".into(), message: e.to_string() })?;
    let _ = stderr_thread.join();
    let tail: Vec<String> = tail.lock().expect("stderr tail lock").iter().cloned().collect();
    let failed = |why: String| MegatronError::Bridge {
        command: "train".into(),
        message: format!("{why}; the end of its stderr (all of it in {}):\n{}", log.display(), tail.join("\n")),
    };
    if !status.success() {
        return Err(failed(format!("the ranks exited with {status}")));
    }
    let done = done.ok_or_else(|| failed("the driver ended without its final report".into()))?;
    serde_json::from_value(done).map_err(|e| failed(format!("unreadable final report: {e}")))
}

/// Trains as `cfg` says on megatron-core, resuming from `<output>/megatron` per `cfg.resume`, and
/// imports the final checkpoint into `<output>/hf`.
/// The layout comes from `cfg.megatron`.
pub fn train(cfg: &TrainConfig, bridge: &Bridge, on_event: &mut dyn FnMut(MegatronEvent)) -> Result<MegatronTrainSummary> {
    let base = Checkpoint::open(&cfg.model)?;
    check_settings(cfg, &base.config)?;
    escale_util::output::check_apart(&cfg.model, &cfg.output).map_err(|e| MegatronError::io(&cfg.output, e))?;
    std::fs::create_dir_all(&cfg.output).map_err(|e| MegatronError::io(&cfg.output, e))?;
    let _lock = OutputLock::acquire(&cfg.output).map_err(|e| MegatronError::io(&cfg.output, e))?;
    let save_dir = cfg.output.join(SAVE_DIR);
    let resume = resumes(cfg, &save_dir)?;
    let init_dir = cfg.output.join(INIT_DIR);
    if !resume {
        on_event(MegatronEvent::Exporting { model: &cfg.model });
        // The run folder is this run's: a leftover export of an attempt that saved nothing is replaced.
        crate::export(&cfg.model, &init_dir, bridge, &ExportOptions { force: true }, &|_| {})?;
    }
    std::fs::create_dir_all(&save_dir).map_err(|e| MegatronError::io(&save_dir, e))?;
    let spec = spec_json(cfg, &base.config, resume)?;
    let spec_file = save_dir.join(SPEC_FILE);
    escale_util::publish::write_atomic(&spec_file, format!("{}\n", serde_json::to_string_pretty(&spec).expect("json")).as_bytes())
        .map_err(|e| MegatronError::io(&spec_file, e))?;
    let mut command = launch_command(bridge, &cfg.megatron, &spec_file)?;
    if let Some(t) = cfg.threads {
        command.env("OMP_NUM_THREADS", t.to_string());
    }
    let done = run_driver(command, &save_dir.join(DRIVER_LOG), on_event)?;
    let final_checkpoint = done.checkpoint.ok_or_else(|| MegatronError::invalid(&save_dir, "the run ended before any checkpoint was written"))?;
    let final_model = if done.stopped_early {
        None
    } else {
        let out = cfg.output.join(FINAL_MODEL_DIR);
        on_event(MegatronEvent::Importing { out: &out });
        crate::import(&final_checkpoint, &out, bridge, &ImportOptions { force: true, record: Some(init_dir) })?;
        Some(out)
    };
    Ok(MegatronTrainSummary {
        run: TrainSummary {
            steps: done.steps,
            tokens: done.tokens,
            flops: done.flops,
            final_train_loss: done.final_train_loss,
            final_val_loss: done.final_val_loss,
            best_val_loss: done.best_val_loss,
            wall_s: done.wall_s,
            final_checkpoint,
            stopped_early: done.stopped_early,
            skipped_steps: done.skipped_steps,
        },
        final_model,
        train_log: cfg.output.join("train_log.jsonl"),
        eval_log: cfg.output.join("eval_log.jsonl"),
    })
}
