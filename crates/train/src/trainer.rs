//! The training loop. Setup (model, data, optimizer, resume) is split into small helpers; the
//! loop itself is [`train`], readable top to bottom like nanoGPT's `train.py`:
//!
//! for each step: `grad_accum` micro-batches of forward (LM loss + MoE losses) and backward,
//! gradients summed; non-finite check; clip; AdamW with the scheduled lr; log; evaluate; save.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use escale_data::indexed::IndexedDataset;
use escale_data::sampler::{PackedSampler, SamplerConfig, SamplerState};
use escale_formats::{Checkpoint, ModelConfig, WeightChecks, WriterOptions};
use escale_model::Model;
use serde::Serialize;

use crate::checkpoint::{self, ResumePoint, TrainerState};
use crate::config::{ResumeMode, TrainConfig};
use crate::error::{Result, TrainError};
use crate::flops::training_flops_per_token;
use crate::moe_loss::moe_losses;
use crate::optim::{clip_scale, global_grad_norm, AdamW};
use crate::select::select_trainable;

pub const TRAIN_LOG: &str = "train_log.jsonl";
pub const EVAL_LOG: &str = "eval_log.jsonl";

/// One line of `train_log.jsonl` (read back through this type by escale-pipeline's metrics).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    /// Training tokens consumed so far (targets scored).
    pub tokens: u64,
    /// Mean next-token cross-entropy of this step's batch (before the MoE terms).
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Cumulative training FLOPs (see [`crate::flops`]).
    pub flops: f64,
    /// Load-balancing loss as logged by the convention (MoE only).
    pub aux_loss: Option<f64>,
    /// Router z-loss, mean over MoE layers (MoE only).
    pub z_loss: Option<f64>,
    /// Per MoE layer, the share of routed slots each expert received (sums to 1; uniform = 1/E).
    pub expert_load: Option<Vec<Vec<f64>>>,
    /// True when the update was skipped (non-finite loss or gradients).
    pub skipped: bool,
}

/// One line of `eval_log.jsonl` (read back through this type by escale-pipeline's metrics).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EvalRecord {
    pub step: u64,
    pub tokens: u64,
    pub flops: f64,
    pub val_loss: f64,
}

/// What the caller (CLI, pipeline) hears about while training runs.
pub enum TrainEvent<'a> {
    Started { start_step: u64, total_steps: u64, resumed_from: Option<&'a Path> },
    Step(&'a StepRecord),
    Eval(&'a EvalRecord),
    Checkpoint { step: u64, path: &'a Path },
    Warning(&'a str),
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub tokens: u64,
    pub flops: f64,
    /// Loss of the last non-skipped step.
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// Wall time of all sessions of the run (resumes included).
    pub wall_s: f64,
    pub final_checkpoint: PathBuf,
    /// True when `stop_after_step` or a stop request ended the run before `total_steps`.
    pub stopped_early: bool,
    pub skipped_steps: u64,
}

/// Everything set up and ready for the first (or resumed) step.
struct Session {
    model: Model,
    opt: AdamW,
    trainable: Vec<(String, Var)>,
    sampler: PackedSampler,
    valid: Option<Arc<IndexedDataset>>,
    state: TrainerState,
    resumed_from: Option<PathBuf>,
}

/// Trains per `cfg`, reporting progress through `on_event`. With `cfg.resume`, continues from the
/// newest valid checkpoint in `cfg.output` and reproduces the uninterrupted run exactly.
pub fn train(cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
    train_until(cfg, &AtomicBool::new(false), on_event)
}

/// [`train`], stopping cleanly once `stop` is set (the CLI sets it on SIGINT/SIGTERM): the
/// current step finishes, a checkpoint of it is written and the summary says `stopped_early`,
/// so `--resume` continues to the same weights as an uninterrupted run. Polled once per step;
/// the library installs no signal handler itself.
pub fn train_until(cfg: &TrainConfig, stop: &AtomicBool, on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
    cfg.validate()?;
    // The run folder must not hold the model it trains, and only one writer may own it.
    escale_util::output::check_apart(&cfg.model, &cfg.output).map_err(|e| TrainError::io(&cfg.output, e))?;
    let _lock = escale_util::lock::OutputLock::acquire(&cfg.output).map_err(|e| TrainError::io(&cfg.output, e))?;
    escale_model::set_threads(cfg.threads);
    let base = Checkpoint::open(&cfg.model)?;
    check_fits_model(cfg, &base.config)?;
    let mut s = setup(cfg, &base.config, on_event)?;
    let total_steps = cfg.total_steps()?;
    let tokens_per_step = cfg.tokens_per_step();
    let flops_per_token = training_flops_per_token(&s.model.config, cfg.seq_len);
    let moe = s.model.config.moe.clone();
    let mut train_log = open_log(&cfg.output.join(TRAIN_LOG), s.state.step)?;
    let mut eval_log = open_log(&cfg.output.join(EVAL_LOG), s.state.step)?;
    on_event(TrainEvent::Started { start_step: s.state.step, total_steps, resumed_from: s.resumed_from.as_deref() });

    let mut final_train_loss = None;
    let mut skipped_steps = 0;
    let mut batch: Vec<u32> = Vec::new();
    let session_start = Instant::now();
    let elapsed_before = s.state.elapsed_s;
    let mut last_checkpoint = s.resumed_from.clone();

    // Baseline validation loss before the first update: where a grown model starts from.
    if let (Some(valid), 0) = (&s.valid, s.state.step) {
        let val_loss = evaluate(&s.model, valid, cfg.seq_len, cfg.micro_batch, cfg.eval_tokens)?;
        s.state.best_val_loss = Some(val_loss);
        let rec = EvalRecord { step: 0, tokens: 0, flops: 0.0, val_loss };
        write_line(&mut eval_log, &cfg.output.join(EVAL_LOG), &rec)?;
        on_event(TrainEvent::Eval(&rec));
    }

    while s.state.step < total_steps {
        let step = s.state.step + 1;
        let t0 = Instant::now();
        let lr = s.state.schedule.lr(step);

        // Forward and backward over grad_accum micro-batches; gradients summed.
        let mut grads: Vec<Option<Tensor>> = vec![None; s.trainable.len()];
        let (mut loss_sum, mut aux_sum, mut z_sum) = (0.0, 0.0, 0.0);
        let mut load: Vec<Vec<u64>> = Vec::new();
        for _ in 0..cfg.grad_accum {
            s.sampler.next_batch_into(&mut batch);
            let window = Tensor::from_slice(&batch, (cfg.micro_batch, cfg.seq_len + 1), s.model.device())?;
            let input = window.narrow(1, 0, cfg.seq_len)?;
            let targets = window.narrow(1, 1, cfg.seq_len)?.contiguous()?;
            // The fused head + loss: the [tokens, vocab] logits are never held (escale_model::head_loss).
            let out = s.model.forward_hidden(&input)?;
            let lm = escale_model::head_cross_entropy(&out.hidden, s.model.lm_head_weight(), &targets)?;
            let mut objective = lm.clone();
            if let Some(m) = &moe {
                let l = moe_losses(
                    &out.router_logits,
                    &out.expert_counts,
                    m.num_experts_per_tok,
                    cfg.moe_loss_convention,
                    cfg.aux_loss_coef,
                    cfg.z_loss_coef,
                )?;
                objective = (objective + l.total)?;
                aux_sum += l.aux;
                z_sum += l.z;
                accumulate_counts(&mut load, &out.expert_counts);
            }
            loss_sum += lm.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let store = (objective / cfg.grad_accum as f64)?.backward()?;
            collect_grads(&store, &s.trainable, &mut grads, &s.model.config)?;
        }
        let micro = cfg.grad_accum as f64;
        let loss = loss_sum / micro;
        let grads = fill_missing(grads, &s.trainable)?;
        // One parallel pass for the norm, which is also the non-finite check (NaN/inf propagate);
        // the clipping factor is applied inside the AdamW pass rather than as a pass of its own.
        let grad_norm = global_grad_norm(&grads)?;

        // A non-finite loss or gradient skips the update (data and schedule still advance).
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        if skipped {
            s.state.nonfinite_in_row += 1;
            skipped_steps += 1;
            let msg = format!("step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); update skipped");
            on_event(TrainEvent::Warning(&msg));
        } else {
            s.state.nonfinite_in_row = 0;
            s.opt.step_scaled(&grads, lr, clip_scale(grad_norm, cfg.clip))?;
            final_train_loss = Some(loss);
        }

        s.state.step = step;
        s.state.tokens += tokens_per_step;
        s.state.flops += flops_per_token * tokens_per_step as f64;
        s.state.sampler = serde_json::to_value(s.sampler.state()).expect("sampler state serialises");
        let record = StepRecord {
            step,
            tokens: s.state.tokens,
            loss,
            lr,
            grad_norm,
            tokens_per_s: tokens_per_step as f64 / t0.elapsed().as_secs_f64(),
            flops: s.state.flops,
            aux_loss: moe.as_ref().map(|_| aux_sum / micro),
            z_loss: moe.as_ref().map(|_| z_sum / micro),
            expert_load: moe.as_ref().map(|_| load_shares(&load)),
            skipped,
        };
        write_line(&mut train_log, &cfg.output.join(TRAIN_LOG), &record)?;
        on_event(TrainEvent::Step(&record));
        if s.state.nonfinite_in_row >= cfg.max_nonfinite_steps {
            let what = format!("loss {loss}, gradient norm {grad_norm}");
            return Err(TrainError::NonFinite { step, count: s.state.nonfinite_in_row, what });
        }

        let last = step == total_steps;
        if let Some(valid) = &s.valid {
            if last || (cfg.eval_interval > 0 && step % cfg.eval_interval == 0) {
                let val_loss = evaluate(&s.model, valid, cfg.seq_len, cfg.micro_batch, cfg.eval_tokens)?;
                s.state.last_val_loss = Some(val_loss);
                s.state.best_val_loss = Some(s.state.best_val_loss.map_or(val_loss, |b| b.min(val_loss)));
                let rec = EvalRecord { step, tokens: s.state.tokens, flops: s.state.flops, val_loss };
                write_line(&mut eval_log, &cfg.output.join(EVAL_LOG), &rec)?;
                on_event(TrainEvent::Eval(&rec));
            }
        }
        // `stop_after_step` simulates a kill (no extra checkpoint); a stop request saves this step.
        let interrupted = stop.load(Ordering::Relaxed);
        let stop_now = cfg.stop_after_step == Some(step) || interrupted;
        if last || interrupted || (cfg.save_interval > 0 && step % cfg.save_interval == 0) {
            s.state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
            let dir = save_checkpoint(cfg, &s)?;
            on_event(TrainEvent::Checkpoint { step, path: &dir });
            last_checkpoint = Some(dir);
        }
        if stop_now && !last {
            break;
        }
    }

    let final_checkpoint = last_checkpoint.ok_or_else(|| TrainError::other("the run ended before any checkpoint was written"))?;
    Ok(TrainSummary {
        steps: s.state.step,
        tokens: s.state.tokens,
        flops: s.state.flops,
        final_train_loss,
        final_val_loss: s.state.last_val_loss,
        best_val_loss: s.state.best_val_loss,
        wall_s: elapsed_before + session_start.elapsed().as_secs_f64(),
        final_checkpoint,
        stopped_early: s.state.step < total_steps,
        skipped_steps,
    })
}

/// Mean next-token loss of `model` over the first `max_tokens` target tokens of `data`
/// (contiguous `seq_len + 1` windows in stream order, `batch` at a time; at least one window).
/// The same tokens every call, so values along a run are comparable.
pub fn evaluate(model: &Model, data: &Arc<IndexedDataset>, seq_len: usize, batch: usize, max_tokens: u64) -> Result<f64> {
    let sampler_cfg = SamplerConfig { seq_len, batch_size: 1, seed: 0, shuffle: false };
    let sampler = PackedSampler::new(data.clone(), sampler_cfg).map_err(|e| TrainError::data(data.prefix(), e.to_string()))?;
    let windows = (max_tokens.div_ceil(seq_len as u64)).clamp(1, sampler.samples_per_epoch());
    let (mut nll_sum, mut count) = (0.0f64, 0u64);
    let mut row = vec![0u32; seq_len + 1];
    let mut w = 0u64;
    while w < windows {
        let rows = (windows - w).min(batch as u64) as usize;
        let mut ids = Vec::with_capacity(rows * (seq_len + 1));
        for r in 0..rows {
            sampler.read_window(w + r as u64, &mut row);
            ids.extend_from_slice(&row);
        }
        let t = Tensor::from_vec(ids, (rows, seq_len + 1), model.device())?;
        let input = t.narrow(1, 0, seq_len)?;
        let out = escale_model::no_grad(|| model.forward_hidden(&input))?;
        nll_sum += escale_model::head_nll_sum(&out.hidden, model.lm_head_weight(), &t.narrow(1, 1, seq_len)?.contiguous()?)?;
        count += (rows * seq_len) as u64;
        w += rows as u64;
    }
    Ok(nll_sum / count as f64)
}

/// Clear errors for settings that cannot work with this model (before anything is loaded).
fn check_fits_model(cfg: &TrainConfig, model: &ModelConfig) -> Result<()> {
    if cfg.seq_len > model.max_position_embeddings {
        return Err(TrainError::config(
            "seq_len",
            format!(
                "{} exceeds the model's max_position_embeddings = {} ({})",
                cfg.seq_len,
                model.max_position_embeddings,
                model.source().display()
            ),
        ));
    }
    Ok(())
}

/// Opens a dataset and checks every token id fits the model's vocabulary (a dataset tokenized
/// for another model is the usual cause of a mismatch).
fn open_dataset(prefix: &Path, vocab_size: usize, what: &str) -> Result<Arc<IndexedDataset>> {
    let ds = IndexedDataset::open(prefix).map_err(|e| TrainError::data(prefix, format!("{what} data: {e}")))?;
    let stream = ds.token_stream().map_err(|e| TrainError::data(prefix, e.to_string()))?;
    let mut buf = vec![0u32; 1 << 16];
    let mut start = 0;
    while start < stream.len() {
        let end = (start + buf.len()).min(stream.len());
        let chunk = &mut buf[..end - start];
        stream.slice(start..end).copy_to_u32(chunk);
        if let Some(&bad) = chunk.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(TrainError::data(
                prefix,
                format!("{what} data holds token id {bad}, but the model's vocab_size is {vocab_size}: tokenized for another model?"),
            ));
        }
        start = end;
    }
    Ok(Arc::new(ds))
}

/// The checkpoint to continue from, per `cfg.resume`. Damaged newer checkpoints passed over,
/// and checkpoints too old to carry checksums, are reported as warnings.
fn resume_point(cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Option<ResumePoint>> {
    if cfg.resume == ResumeMode::Fresh {
        return match checkpoint::latest_checkpoint(&cfg.output)? {
            Some((step, dir)) => Err(TrainError::config(
                "output",
                format!("{} already holds checkpoints (latest: step {step}, {}); pass --resume to continue that run or choose another output", cfg.output.display(), dir.display()),
            )),
            None => Ok(None),
        };
    }
    let Some(point) = checkpoint::find_resume_point(&cfg.output)? else {
        return match cfg.resume {
            ResumeMode::ResumeOrStart => Ok(None),
            _ => Err(TrainError::config(
                "resume",
                format!(
                    "{} holds no checkpoint to resume from; pass --resume-or-start to start from scratch when there is none",
                    checkpoint::checkpoints_root(&cfg.output).display()
                ),
            )),
        };
    };
    for damaged in &point.skipped {
        on_event(TrainEvent::Warning(&format!("{damaged}; falling back to {}", point.dir.display())));
    }
    if point.state.checksums.is_empty() {
        let msg = format!("{} records no checksums (written by an older escale): resuming without verifying its files", point.dir.display());
        on_event(TrainEvent::Warning(&msg));
    }
    Ok(Some(point))
}

/// Loads the model (fresh or from the resumed checkpoint), data, optimizer and trainer state.
fn setup(cfg: &TrainConfig, base: &ModelConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Session> {
    let device = Device::Cpu;
    let resume = resume_point(cfg, on_event)?;
    let resume_dir = resume.as_ref().map(|p| p.dir.clone());
    let model_fp = checkpoint::model_fingerprint(base);
    let run_fp = cfg.run_fingerprint();
    let model_src = resume_dir.as_deref().unwrap_or(&cfg.model);
    // Unknown tensors are refused unless the run says to drop them; non-finite weights are
    // announced here and then caught by the non-finite step limit.
    let checks = WeightChecks { allow_nan: true, ignore_unknown: cfg.ignore_unknown };
    let (model, warnings) = Model::load_with(&Checkpoint::open(model_src)?, &device, cfg.dtype.candle(), checks)?;
    for w in &warnings {
        // The checks word them for printing as they are; the event's printer adds its own prefix.
        on_event(TrainEvent::Warning(w.strip_prefix("warning: ").unwrap_or(w)));
    }
    if checkpoint::model_fingerprint(&model.config) != model_fp {
        return Err(TrainError::checkpoint(
            model_src,
            format!("holds a different architecture than {} (another model's checkpoint?)", cfg.model.display()),
        ));
    }
    let trainable = select_trainable(model.named_parameters(), model.config.model_type, cfg.train_only, &cfg.model)?;
    let mut opt = AdamW::new(trainable.clone(), cfg.adamw())?;
    let train = open_dataset(&cfg.data, model.config.vocab_size, "training")?;
    let valid = cfg.valid.as_deref().map(|p| open_dataset(p, model.config.vocab_size, "validation")).transpose()?;
    let sampler_cfg = SamplerConfig { seq_len: cfg.seq_len, batch_size: cfg.micro_batch, seed: cfg.seed, shuffle: true };
    let mut sampler = PackedSampler::new(train, sampler_cfg).map_err(|e| TrainError::data(&cfg.data, e.to_string()))?;
    let names: Vec<String> = trainable.iter().map(|(n, _)| n.clone()).collect();

    let state = match resume {
        Some(ResumePoint { dir, state: st, .. }) => {
            let dir = dir.as_path();
            if st.model_fingerprint != model_fp {
                return Err(TrainError::checkpoint(dir, format!("was written for another model than {}", cfg.model.display())));
            }
            if st.run_fingerprint != run_fp {
                return Err(TrainError::checkpoint(
                    dir,
                    "was written with different training settings (data, batch, lr, schedule, seed, ...); resuming would not continue the same run",
                ));
            }
            if st.trainable != names {
                return Err(TrainError::checkpoint(dir, "trains a different set of parameters than this run"));
            }
            opt.load_state(&dir.join(checkpoint::OPTIMIZER_FILE), st.step)?;
            let pos: SamplerState = serde_json::from_value(st.sampler.clone())
                .map_err(|e| TrainError::checkpoint(dir, format!("sampler state: {e}")))?;
            sampler.set_state(pos).map_err(|e| TrainError::checkpoint(dir, e.to_string()))?;
            st
        }
        None => TrainerState {
            step: 0,
            tokens: 0,
            flops: 0.0,
            schedule: cfg.schedule()?,
            adamw: cfg.adamw(),
            sampler: serde_json::to_value(sampler.state()).expect("sampler state serialises"),
            seed: cfg.seed,
            model_fingerprint: model_fp,
            run_fingerprint: run_fp,
            trainable: names,
            best_val_loss: None,
            last_val_loss: None,
            nonfinite_in_row: 0,
            elapsed_s: 0.0,
            checksums: Default::default(),
        },
    };
    Ok(Session { model, opt, trainable, sampler, valid, state, resumed_from: resume_dir })
}

/// Writes `<output>/checkpoints/step-N` atomically: weights (in f32, the training precision, so
/// a resume starts from identical weights), optimizer moments, then the trainer state with the
/// checksums of both tensor files (the writer fsyncs them all before the rename); then rotates.
fn save_checkpoint(cfg: &TrainConfig, s: &Session) -> Result<PathBuf> {
    let dir = checkpoint::checkpoint_dir(&cfg.output, s.state.step);
    let options = WriterOptions { force: true, ..WriterOptions::default() };
    s.model.save(&dir, escale_formats::DType::F32, &options, Some(&cfg.model), |staging| {
        s.opt.save_state(&staging.join(checkpoint::OPTIMIZER_FILE)).map_err(escale_model::ModelError::other)?;
        let state = TrainerState { checksums: checkpoint::tensor_file_checksums(staging).map_err(escale_model::ModelError::other)?, ..s.state.clone() };
        checkpoint::write_state(staging, &state).map_err(escale_model::ModelError::other)
    })?;
    checkpoint::rotate_checkpoints(&cfg.output, cfg.keep_checkpoints)?;
    Ok(dir)
}

/// Adds this micro-batch's gradients of the trained parameters into `acc`. A parameter with no
/// gradient is an error (a cut graph, e.g. a fused op without backward), except routed experts,
/// which legitimately receive none when no token picked them.
fn collect_grads(store: &candle_core::backprop::GradStore, params: &[(String, Var)], acc: &mut [Option<Tensor>], cfg: &ModelConfig) -> Result<()> {
    for ((name, var), slot) in params.iter().zip(acc.iter_mut()) {
        match store.get(var.as_tensor()) {
            Some(g) => *slot = Some(match slot.take() { Some(a) => (a + g)?, None => g.clone() }),
            None if is_routed_expert(cfg, name) => {}
            None => {
                return Err(TrainError::other(format!(
                    "parameter `{name}` received no gradient: the computation graph is cut (an op without backward?)"
                )))
            }
        }
    }
    Ok(())
}

fn is_routed_expert(cfg: &ModelConfig, name: &str) -> bool {
    matches!(
        escale_formats::parse_hf_name(cfg.model_type, name),
        Some(escale_formats::Param::Layer(_, escale_formats::LayerParam::Mlp(escale_formats::MlpSite::Expert(_), _)))
    )
}

/// Zero gradients for experts no token reached during the whole step.
fn fill_missing(grads: Vec<Option<Tensor>>, params: &[(String, Var)]) -> Result<Vec<Tensor>> {
    grads
        .into_iter()
        .zip(params)
        .map(|(g, (_, v))| match g {
            Some(g) => Ok(g),
            None => Ok(v.as_tensor().zeros_like()?),
        })
        .collect()
}

fn accumulate_counts(acc: &mut Vec<Vec<u64>>, counts: &[Vec<u64>]) {
    if acc.is_empty() {
        *acc = counts.to_vec();
        return;
    }
    for (a, c) in acc.iter_mut().zip(counts) {
        for (x, y) in a.iter_mut().zip(c) {
            *x += y;
        }
    }
}

/// Counts -> shares of routed slots per layer.
fn load_shares(counts: &[Vec<u64>]) -> Vec<Vec<f64>> {
    counts
        .iter()
        .map(|layer| {
            let total: u64 = layer.iter().sum();
            layer.iter().map(|&c| c as f64 / total.max(1) as f64).collect()
        })
        .collect()
}

/// Opens a JSONL log for appending. Lines for steps after `keep_through` (written by a session
/// that died before its next checkpoint) are dropped first, so a resumed log reads as one run.
fn open_log(path: &Path, keep_through: u64) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    let kept: String = match std::fs::read_to_string(path) {
        Ok(text) if keep_through > 0 => text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= keep_through)
            })
            .map(|l| format!("{l}\n"))
            .collect(),
        _ => String::new(),
    };
    // Rewritten atomically, so a crash here cannot lose the kept lines.
    escale_util::publish::write_atomic(path, kept.as_bytes()).map_err(|e| TrainError::io(path, e))?;
    std::fs::OpenOptions::new().append(true).open(path).map_err(|e| TrainError::io(path, e))
}

fn write_line<T: Serialize>(file: &mut File, path: &Path, record: &T) -> Result<()> {
    let mut line = serde_json::to_string(record).expect("record serialises");
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(|e| TrainError::io(path, e))
}
