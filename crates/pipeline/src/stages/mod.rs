//! One module per kind of stage; [`run`] dispatches a planned stage to its module. Every stage
//! reads what earlier stages left through [`Context`] and ends the same way ([`train`]): train
//! from its starting model if asked, measure the end point, describe the model.

mod baseline;
mod growth;
mod prepare;
mod reseed;
mod select;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};

use crate::engine::Engine;
use crate::events::{OnEvent, PipelineEvent};
use crate::manifest::{write_atomic, DataPaths, StageRecord};
use crate::metrics::Curve;
use crate::plan::{PlannedStage, Work};
use crate::schema::PipelineFile;

/// What a stage may read: the file, the folders, the engine, and what earlier stages left.
pub struct Context<'a> {
    pub file: &'a PipelineFile,
    /// Folder that relative paths in the file are relative to.
    pub base_dir: &'a Path,
    pub run_dir: &'a Path,
    /// Progress bars (terminals).
    pub progress: bool,
    pub engine: &'a dyn Engine,
    pub on_event: OnEvent<'a>,
    /// Finished stages, in order.
    pub records: &'a [StageRecord],
    /// The prepare stage's tokens, once it has run.
    pub data: Option<&'a DataPaths>,
}

/// Runs one planned stage in its folder `dir`.
pub fn run(ctx: &Context, stage: &PlannedStage, dir: &Path) -> Result<StageRecord> {
    match &stage.work {
        Work::Prepare(p) => prepare::run(ctx, stage, p, dir),
        Work::ScaleUp(s) => growth::run(ctx, stage, dir, |src, out| ctx.engine.scale_up(src, out, s)),
        Work::ScaleOut(s) => growth::run(ctx, stage, dir, |src, out| ctx.engine.scale_out(src, out, s)),
        Work::Baseline(b) => baseline::run(ctx, stage, b, dir),
        Work::Reseed(r) => reseed::run(ctx, stage, r, dir),
        Work::Select(s) => select::run(ctx, stage, s),
    }
}

impl Context<'_> {
    fn emit(&self, event: PipelineEvent) {
        (self.on_event)(event)
    }

    /// A path of the pipeline file, made absolute against the file's folder.
    pub fn abs(&self, p: &Path) -> PathBuf {
        absolute(self.base_dir, p)
    }

    /// A path recorded relative to the run directory, made usable.
    fn run_path(&self, p: &Path) -> PathBuf {
        self.run_dir.join(p)
    }

    /// A path to record: relative to the run directory when inside it.
    fn relative(&self, p: &Path) -> PathBuf {
        p.strip_prefix(self.run_dir).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf())
    }

    fn record(&self, name: &str) -> Result<&StageRecord> {
        self.records.iter().find(|r| r.name == name).ok_or_else(|| anyhow!("stage {name:?} has not run"))
    }

    /// The stage's source (or compared) stage record and its model folder.
    fn source(&self, stage: &PlannedStage) -> Result<(&StageRecord, PathBuf)> {
        let record = self.record(stage.source.as_deref().unwrap_or_default())?;
        Ok((record, self.run_path(&record.model_dir)))
    }

    fn data(&self) -> Result<&DataPaths> {
        self.data.ok_or_else(|| anyhow!("no data (the prepare stage has not run)"))
    }

    /// Sequence length of the transition measurements: the file's, else the stage's training one.
    pub(crate) fn eval_seq_len(&self, train: Option<&escale_train::TrainConfig>) -> usize {
        let default = || escale_train::TrainConfig::default().seq_len;
        self.file.eval.seq_len.or(train.map(|t| t.seq_len)).unwrap_or_else(default)
    }

    /// Validation loss of `model` on the file's evaluation tokens of `data`.
    fn evaluate(&self, data: &DataPaths, model: &Path, seq_len: usize) -> Result<f64> {
        self.engine.evaluate(model, &self.run_path(&data.valid), seq_len, self.file.eval.tokens)
    }

    /// Writes `<dir>/init-config/config.json` (and the tokenizer beside it) and initialises
    /// `<dir>/init` from it at random.
    fn init_from_config(&self, cfg: serde_json::Value, tokenizer: Option<&Path>, dir: &Path, seed: u64) -> Result<PathBuf> {
        let out = dir.join("init");
        let cfg_dir = dir.join("init-config");
        write_atomic(&cfg_dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        if let Some(t) = tokenizer {
            std::fs::copy(t, cfg_dir.join("tokenizer.json")).with_context(|| format!("copying {}", t.display()))?;
        }
        self.emit(PipelineEvent::InitialisingModel);
        self.engine.init_model(&cfg_dir.join("config.json"), &out, seed)?;
        Ok(out)
    }
}

/// `p`, made absolute against `base_dir` when relative.
pub fn absolute(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// The record of a stage before it has measured anything.
fn base_record(stage: &PlannedStage) -> StageRecord {
    StageRecord {
        name: stage.name.clone(),
        kind: stage.kind,
        source: stage.source.clone(),
        sweep: stage.sweep.clone(),
        method: stage.method.clone(),
        exact: None,
        arch: String::new(),
        params_total: 0,
        params_active: 0,
        tokens: 0,
        flops: 0.0,
        flops_start: 0.0,
        source_val_loss: None,
        val_loss_start: None,
        val_loss_end: None,
        wall_s: 0.0,
        model_dir: PathBuf::new(),
        curve: Curve::default(),
        key: String::new(),
        model_fingerprint: String::new(),
        data: None,
        lr: None,
        run_of: stage.run_of.clone(),
        accuracy: Vec::new(),
    }
}
