//! The work a pipeline stage delegates to the other escale crates, behind one trait.
//!
//! The runner only sequences, records and resumes; everything that touches tokens or weights goes
//! through [`Engine`]. [`Escale`] is the real implementation (data, grow, model, train); the seam
//! also lets the runner's skip/resume logic be tested on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use escale_grow::Exactness;
use escale_train::{TrainConfig, TrainEvent};

use crate::plan::{OutSettings, UpSettings};

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
    fn scale_up(&self, src: &Path, out: &Path, settings: &UpSettings) -> Result<Exactness>;
    fn scale_out(&self, src: &Path, out: &Path, settings: &OutSettings) -> Result<Exactness>;
    /// Mean next-token loss on the first `tokens` tokens of the dataset at `valid`.
    fn evaluate(&self, model: &Path, valid: &Path, seq_len: usize, tokens: u64) -> Result<f64>;
    /// Trains as `cfg` says (resuming from its output folder when it holds checkpoints),
    /// reporting the trainer's events.
    fn train(&self, cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Trained>;
    /// Training FLOPs per token of the model at `model` (the trainer's convention).
    fn flops_per_token(&self, model: &Path, seq_len: usize) -> Result<f64>;
    /// Writes the built-in world's multiple-choice tasks (`per_task` items each) for the corpus
    /// `make_corpus(bytes, seed, ..)` generates, as JSONL at `out`.
    fn make_tasks(&self, bytes: u64, seed: u64, per_task: usize, out: &Path) -> Result<()> {
        let _ = (bytes, seed, per_task);
        anyhow::bail!("this engine cannot generate tasks ({})", out.display())
    }
    /// Multiple-choice accuracy per task of `model` on the task `files`, reading at most `window`
    /// tokens at once.
    fn evaluate_tasks(&self, model: &Path, files: &[PathBuf], window: usize) -> Result<Vec<escale_model::choice::TaskScore>> {
        let _ = (files, window);
        anyhow::bail!("this engine cannot evaluate tasks ({})", model.display())
    }
}

/// The real engine: escale-data, escale-grow, escale-model and escale-train.
pub struct Escale {
    /// Worker threads for training and evaluation (`None`: all cores).
    pub threads: Option<usize>,
    /// Set by the caller (the CLI, on SIGINT/SIGTERM) to stop training at the end of a step and
    /// every other stage before its next piece of work (see [`Escale::check_stop`]). Growths and
    /// tokenizing also stop part-way, on `escale_util::stop::flag()`: pass that flag.
    pub stop: &'static AtomicBool,
}

impl Escale {
    /// Refuses to start more work once a stop was requested. Called before every operation, so a
    /// stage stops between two of them: what the last one wrote is complete (each publishes
    /// atomically, and staging is cleaned by the next run), and a re-run reuses what the stage
    /// records as done (a growth's verdict, prepared data) and redoes the rest.
    fn check_stop(&self, next: &str) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted before {next}: {RESUME_HINT}");
        }
        Ok(())
    }

    /// `result`, saying how to resume when it failed because a stop was requested (growths and
    /// tokenizing poll `escale_util::stop`, the flag the CLI passes as `stop`).
    fn resumable<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(e) if self.stop.load(Ordering::SeqCst) => Err(e.context(format!("interrupted: {RESUME_HINT}"))),
            other => other,
        }
    }
}

/// What an interrupted pipeline tells the user.
const RESUME_HINT: &str = "run the same command again to resume (finished work is kept)";

impl Engine for Escale {
    fn make_corpus(&self, bytes: u64, seed: u64, dir: &Path) -> Result<Vec<PathBuf>> {
        self.check_stop("generating the corpus")?;
        let options = escale_data::CorpusOptions { size_bytes: bytes, seed, ..escale_data::CorpusOptions::default() };
        let summary =
            self.resumable(escale_data::make_corpus(dir, &options).with_context(|| format!("generating the corpus in {}", dir.display())))?;
        Ok(summary.files)
    }

    fn train_tokenizer(&self, inputs: &[PathBuf], vocab_size: usize, out: &Path) -> Result<()> {
        self.check_stop("training the tokenizer")?;
        let options = escale_data::BpeOptions { vocab_size, ..escale_data::BpeOptions::default() };
        let tokenizer = self.resumable(escale_data::train_bpe(inputs, &options).context("training the BPE tokenizer"))?;
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
        self.check_stop("tokenizing")?;
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
        self.resumable(
            escale_data::prepare_data(tokenizer, None, &options).with_context(|| format!("tokenizing into {}", prefix.display())),
        )?;
        Ok(escale_data::prepare::split_prefixes(prefix))
    }

    fn init_model(&self, config: &Path, out: &Path, seed: u64) -> Result<()> {
        self.check_stop("initialising the model")?;
        escale_train::init_model(config, out, seed, escale_formats::DType::F32, false)
            .with_context(|| format!("initialising {} from {}", out.display(), config.display()))?;
        Ok(())
    }

    fn scale_up(&self, src: &Path, out: &Path, s: &UpSettings) -> Result<Exactness> {
        self.check_stop("the scale-up")?;
        use escale_grow::scale_up::{self as up, ScaleUpOptions, Target, TargetDims};
        let target = Target::Dims(TargetDims {
            hidden_size: s.hidden_size,
            intermediate_size: s.intermediate_size,
            num_attention_heads: s.num_attention_heads,
            num_hidden_layers: s.num_hidden_layers,
        });
        let options = ScaleUpOptions {
            method: s.method,
            preset: s.preset,
            depth: s.depth,
            seed: s.seed,
            ..ScaleUpOptions::default()
        };
        let exec = up::ExecOptions { threads: self.threads, ..up::ExecOptions::default() };
        let (plan, _) = self.resumable(
            up::scale_up(src, out, &target, &options, &exec, None)
                .with_context(|| format!("scale-up of {} into {}", src.display(), out.display())),
        )?;
        Ok(plan.exactness)
    }

    fn scale_out(&self, src: &Path, out: &Path, s: &OutSettings) -> Result<Exactness> {
        self.check_stop("the scale-out")?;
        use escale_grow::scale_out::{self as so, ScaleOutOptions};
        let options = ScaleOutOptions {
            experts: s.experts,
            top_k: s.top_k,
            format: s.format,
            router_init: s.router_init,
            router_std: s.router_std,
            seed: s.seed,
            granularity: s.granularity,
            shared_experts: s.shared_experts,
            aux_loss_coef: s.aux_loss_coef,
            threads: self.threads,
            ..ScaleOutOptions::default()
        };
        let report = self.resumable(
            so::upcycle(src, out, &options, &escale_formats::WriterOptions::default(), &|_, _| {})
                .with_context(|| format!("scale-out of {} into {}", src.display(), out.display())),
        )?;
        Ok(report.plan.exactness)
    }

    fn evaluate(&self, model: &Path, valid: &Path, seq_len: usize, tokens: u64) -> Result<f64> {
        self.check_stop("the evaluation")?;
        escale_model::set_threads(self.threads);
        let m = escale_model::Model::load_dir(model, &candle_core::Device::Cpu, candle_core::DType::F32)
            .with_context(|| format!("loading {}", model.display()))?;
        let data = std::sync::Arc::new(
            escale_data::IndexedDataset::open(valid).with_context(|| format!("opening {}", valid.display()))?,
        );
        escale_train::evaluate(&m, &data, seq_len, 8, tokens).with_context(|| format!("evaluating {}", model.display()))
    }

    fn train(&self, cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Trained> {
        let cfg = TrainConfig { threads: self.threads, ..cfg.clone() };
        let resumed = escale_train::checkpoint::latest_checkpoint(&cfg.output)?.is_some();
        let interrupted = || {
            anyhow::anyhow!(
                "interrupted while training into {}: run the same command again to resume from its last checkpoint",
                cfg.output.display()
            )
        };
        if self.stop.load(Ordering::SeqCst) {
            return Err(interrupted());
        }
        if cfg.engine == escale_train::Engine::Megatron {
            return train_on_megatron(&cfg, on_event);
        }
        let summary = escale_train::train_until(&cfg, self.stop, on_event)
            .with_context(|| format!("training {} into {}", cfg.model.display(), cfg.output.display()))?;
        // A stopped run is not a finished stage: the runner must not record it as done.
        if summary.stopped_early && self.stop.load(Ordering::SeqCst) {
            return Err(interrupted());
        }
        Ok(Trained {
            final_model: summary.final_checkpoint,
            tokens: summary.tokens,
            flops: summary.flops,
            train_log: cfg.output.join(escale_train::trainer::TRAIN_LOG),
            eval_log: cfg.output.join(escale_train::trainer::EVAL_LOG),
            resumed,
        })
    }

    fn flops_per_token(&self, model: &Path, seq_len: usize) -> Result<f64> {
        let cfg = escale_formats::ModelConfig::from_file(&model.join("config.json"))?;
        Ok(escale_train::flops::training_flops_per_token(&cfg, seq_len))
    }

    fn make_tasks(&self, bytes: u64, seed: u64, per_task: usize, out: &Path) -> Result<()> {
        let corpus = escale_data::CorpusOptions { size_bytes: bytes, seed, ..escale_data::CorpusOptions::default() };
        let options = escale_data::TaskOptions { corpus, per_task, seed };
        escale_data::corpus::make_tasks(out, &options).with_context(|| format!("generating the built-in tasks into {}", out.display()))?;
        Ok(())
    }

    fn evaluate_tasks(&self, model: &Path, files: &[PathBuf], window: usize) -> Result<Vec<escale_model::choice::TaskScore>> {
        escale_model::set_threads(self.threads);
        let m = escale_model::Model::load_dir(model, &candle_core::Device::Cpu, candle_core::DType::F32)
            .with_context(|| format!("loading {}", model.display()))?;
        let tok = escale_data::TextTokenizer::from_file(model)?;
        let mut items = Vec::new();
        for f in files {
            items.extend(escale_data::read_choice_items(f)?);
        }
        let report = escale_model::choice::evaluate_choices(&m, &tok, &items, window, 16, &mut |_| {})
            .with_context(|| format!("scoring the tasks on {}", model.display()))?;
        Ok(report.tasks)
    }
}

/// `engine: megatron`: the stage's training on megatron-core, through the same library call as
/// `escale train --engine megatron`; the final checkpoint imported to `<output>/hf` is the
/// stage's model. Its events are the in-process trainer's records, read from the driver's lines.
fn train_on_megatron(cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Trained> {
    use escale_megatron::train::{latest_iteration, MegatronEvent, SAVE_DIR};
    use escale_train::{EvalRecord, StepRecord};

    let resumed = latest_iteration(&cfg.output.join(SAVE_DIR))?.is_some();
    let bridge = escale_megatron::Bridge::get()?;
    let summary = escale_megatron::train::train(cfg, &bridge, &mut |ev| match ev {
        MegatronEvent::Started { start_step, total_steps, resumed_from, .. } => {
            on_event(TrainEvent::Started { start_step, total_steps, resumed_from })
        }
        MegatronEvent::Step(v) => {
            if let Ok(r) = serde_json::from_value::<StepRecord>(v.clone()) {
                on_event(TrainEvent::Step(&r));
            }
        }
        MegatronEvent::Eval(v) => {
            if let Ok(r) = serde_json::from_value::<EvalRecord>(v.clone()) {
                on_event(TrainEvent::Eval(&r));
            }
        }
        MegatronEvent::Checkpoint { step, path } => on_event(TrainEvent::Checkpoint { step, path }),
        MegatronEvent::Exporting { .. } | MegatronEvent::Launching { .. } | MegatronEvent::Importing { .. } => {}
    })
    .with_context(|| format!("training {} into {} on megatron-core", cfg.model.display(), cfg.output.display()))?;
    let final_model = summary
        .final_model
        .ok_or_else(|| anyhow::anyhow!("the megatron run in {} stopped before its last step", cfg.output.display()))?;
    Ok(Trained { final_model, tokens: summary.run.tokens, flops: summary.run.flops, train_log: summary.train_log, eval_log: summary.eval_log, resumed })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once a stop is requested, no stage starts another piece of work, and the error says how
    /// to resume.
    #[test]
    fn a_requested_stop_starts_no_more_work() {
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(true)));
        let engine = Escale { threads: Some(1), stop };
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus");
        let err = format!("{:#}", engine.make_corpus(10_000, 1, &corpus).unwrap_err());
        assert!(err.starts_with("interrupted before generating the corpus: run the same command again"), "{err}");
        assert!(!corpus.exists());
        let missing = dir.path().join("missing");
        let err = format!("{:#}", engine.evaluate(&missing, &missing, 8, 8).unwrap_err());
        assert!(err.starts_with("interrupted before the evaluation"), "{err}");
        let err = format!("{:#}", engine.init_model(&missing, &dir.path().join("init"), 1).unwrap_err());
        assert!(err.starts_with("interrupted before initialising the model"), "{err}");
    }
}
