//! What a running pipeline reports, as values: the library prints nothing; the caller (the CLI)
//! decides how to show each event, as it does for the trainer's [`TrainEvent`].

use std::path::Path;

use escale_grow::Exactness;
use escale_train::{TrainConfig, TrainEvent};

use crate::manifest::StageRecord;
use crate::plan::PlannedStage;
use crate::runs::SweepEdge;

/// One thing that happened while a pipeline ran, in order.
pub enum PipelineEvent<'a> {
    /// Stage `index` (from 1) of `total` begins.
    StageStarted { index: usize, total: usize, stage: &'a PlannedStage },
    /// The stage's manifest matches: nothing to do.
    Skipped,
    /// An unfinished folder of this stage, started with the same settings, is continued.
    Resuming,
    /// A stage folder that cannot be trusted was moved aside to `aside`.
    SetAside { dir: &'a Path, aside: &'a Path, why: &'a str },
    GeneratingCorpus { size_mb: f64 },
    TrainingTokenizer { vocab_size: usize },
    Tokenizing { files: usize, prefix: &'a Path },
    InitialisingModel,
    Growing { source: &'a Path, out: &'a Path },
    /// Validation loss of the starting model of a prepare stage, before any training.
    ValLossBefore(f64),
    /// A growth measured: the source's final validation loss and the grown model's.
    Transition { source: &'a str, source_val_loss: Option<f64>, grown_val_loss: f64, exactness: &'a Exactness },
    /// A baseline's compute budget turned into tokens.
    Budget { flops: f64, tokens: u64, flops_per_token: f64 },
    /// A learning-rate sweep chose the point `lr` (mean final validation loss `val_loss` over its
    /// seeds); `run` stands for the stage. `edge` is set when `lr` is an end of the sweep.
    Selected { lr: f64, val_loss: f64, run: &'a str, edge: Option<SweepEdge> },
    /// A stage's training starts with these settings.
    Training(&'a TrainConfig),
    /// What the trainer reports while it trains.
    Train(TrainEvent<'a>),
    /// The stage is finished (or was found finished).
    StageFinished(&'a StageRecord),
}

/// The callback a pipeline reports through.
pub type OnEvent<'a> = &'a dyn Fn(PipelineEvent<'_>);
