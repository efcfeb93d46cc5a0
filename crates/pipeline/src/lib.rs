//! escale-pipeline: the EfficientScale method end to end.
//!
//! A pipeline file ([`schema`]; its `train:` blocks are the trainer's config, [`train_block`])
//! names stages (prepare, scale_up, sweep, scale_out, baseline). [`plan`] turns it into the
//! ordered list of stages with their resolved settings, without running anything (a stage trained
//! at several learning rates or seeds becomes one stage per run, [`runs`], and a choice among
//! them); [`runner`] runs
//! them in order ([`stages`], one module per kind), each in its own folder of the run directory
//! with a manifest ([`manifest`]) whose key ([`keys`]) lets a re-run skip finished stages and
//! resume an interrupted training. Progress is reported as [`events::PipelineEvent`]s. At every transition the
//! source's final validation loss and the grown model's initial one are measured with the same
//! evaluation, and the run ends with a report ([`report`], [`plot`]): report.md, summary.json and
//! the loss-vs-FLOPs figure.
//!
//! Without the default `engine` feature only [`schema`] and [`train_block`] build (no candle, no
//! plotters): the pipeline file's parser and validation, which the fuzz target uses.

pub mod schema;
pub mod train_block;
#[cfg(feature = "engine")]
pub mod plan;
#[cfg(feature = "engine")]
pub mod runs;
#[cfg(feature = "engine")]
pub mod keys;
#[cfg(feature = "engine")]
pub mod flops;
#[cfg(feature = "engine")]
pub mod events;
#[cfg(feature = "engine")]
pub mod manifest;
#[cfg(feature = "engine")]
pub mod metrics;
#[cfg(feature = "engine")]
pub mod plot;
#[cfg(feature = "engine")]
pub mod report;
#[cfg(feature = "engine")]
pub mod accuracy;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod stages;
#[cfg(feature = "engine")]
pub mod runner;
#[cfg(feature = "engine")]
pub mod demo;

#[cfg(feature = "engine")]
pub use events::PipelineEvent;

#[cfg(feature = "engine")]
use std::path::{Path, PathBuf};
#[cfg(feature = "engine")]
use std::sync::atomic::AtomicBool;

/// Runs a pipeline file with the real engine. `output` overrides the file's `run_dir`; without
/// either, the run goes to `runs/<file stem>` beside the file.
/// Progress is reported through `on_event`; setting `stop` ends a training stage cleanly at the
/// end of a step, with a checkpoint, and the run with an "interrupted" error.
#[cfg(feature = "engine")]
pub fn run_file(
    path: &Path,
    output: Option<&Path>,
    threads: Option<usize>,
    progress: bool,
    stop: &'static AtomicBool,
    on_event: events::OnEvent,
) -> anyhow::Result<runner::RunOutcome> {
    let file = schema::PipelineFile::load(path)?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
    let run_dir = match (output, &file.run_dir) {
        (Some(o), _) => o.to_path_buf(),
        (None, Some(r)) => base_dir.join(r),
        (None, None) => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into());
            base_dir.join("runs").join(stem)
        }
    };
    run(&file, &base_dir, &run_dir, threads, progress, stop, on_event)
}

/// Runs a parsed pipeline with the real engine into `run_dir`, reporting through `on_event`.
#[cfg(feature = "engine")]
pub fn run(
    file: &schema::PipelineFile,
    base_dir: &Path,
    run_dir: &Path,
    threads: Option<usize>,
    progress: bool,
    stop: &'static AtomicBool,
    on_event: events::OnEvent,
) -> anyhow::Result<runner::RunOutcome> {
    let engine = engine::Escale { threads, stop };
    let opts = runner::RunOptions { run_dir: run_dir.to_path_buf(), base_dir: base_dir.to_path_buf(), progress };
    runner::run(file, &opts, &engine, on_event)
}
