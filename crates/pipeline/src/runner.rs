//! Runs a pipeline: plans the stages, skips the finished ones, runs (or resumes) the rest, and
//! writes the report.
//!
//! Layout of a run directory: one folder per stage (`<run>/<stage>/`) holding its inputs
//! (`grown/`, `init/`, ...), its training run (`train/`, with checkpoints and JSONL logs) and, last,
//! `stage.json` (the done marker, see [`crate::manifest`]); the report files sit at the top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};

use crate::engine::Engine;
use crate::events::{OnEvent, PipelineEvent};
use crate::keys::stage_key;
use crate::manifest::{check_stage, fingerprint_model, write_atomic, write_record, StageKind, StageRecord, Verdict};
use crate::plan::{plan, PlannedStage, Work};
use crate::report::{write_report, ReportFiles, Summary};
use crate::schema::PipelineFile;
use crate::stages::{self, absolute, Context};

/// How to run a pipeline file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// Folder that relative paths in the pipeline file are relative to (the file's folder).
    pub base_dir: PathBuf,
    /// Progress bars (terminals).
    pub progress: bool,
}

/// A finished run.
pub struct RunOutcome {
    pub summary: Summary,
    pub files: ReportFiles,
    /// Stages found finished and skipped.
    pub skipped: Vec<String>,
}

/// Runs every stage of `file` in order, then writes the report.
pub fn run(file: &PipelineFile, opts: &RunOptions, engine: &dyn Engine, on_event: OnEvent) -> Result<RunOutcome> {
    let plan = plan(file)?;
    let run_dir = &opts.run_dir;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let _lock = escale_util::lock::OutputLock::acquire(run_dir).with_context(|| format!("run directory {}", run_dir.display()))?;
    let mut records: Vec<StageRecord> = Vec::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (i, stage) in plan.iter().enumerate() {
        on_event(PipelineEvent::StageStarted { index: i + 1, total: plan.len(), stage });
        let key = stage_key(stage, file, &upstream_keys(stage, &records, &keys)?, &|p| absolute(&opts.base_dir, p))?;
        let dir = run_dir.join(&stage.name);
        let record = match check_stage(run_dir, &dir, &key)? {
            Verdict::Done(r) => {
                on_event(PipelineEvent::Skipped);
                skipped.push(stage.name.clone());
                *r
            }
            verdict => {
                if let Verdict::Stale(why) = verdict {
                    set_aside(&dir, &why, on_event)?;
                }
                claim_stage_dir(&dir, &key, on_event)?;
                let data = records.iter().rev().find_map(|r| r.data.as_ref());
                let ctx = Context {
                    file,
                    base_dir: &opts.base_dir,
                    run_dir,
                    progress: opts.progress,
                    engine,
                    on_event,
                    records: &records,
                    data,
                };
                let r = run_stage(&ctx, stage, &dir, &key)?;
                write_record(&dir, &r)?;
                r
            }
        };
        on_event(PipelineEvent::StageFinished(&record));
        keys.insert(stage.name.clone(), key);
        records.push(record);
    }
    let name = file.name.clone().unwrap_or_else(|| "pipeline".into());
    let (summary, files) = write_report(run_dir, &name, &records)?;
    Ok(RunOutcome { summary, files, skipped })
}

/// The keys of what a stage reads: the prepare stage's (its data), its source's and, for the
/// choice at the end of a sweep, its runs'.
fn upstream_keys<'k>(
    stage: &PlannedStage,
    records: &[StageRecord],
    keys: &'k BTreeMap<String, String>,
) -> Result<Vec<&'k str>> {
    let mut upstream: Vec<&str> = Vec::new();
    if stage.kind != StageKind::Prepare {
        let prepare = records.first().map(|r| r.name.as_str()).unwrap_or_default();
        upstream.push(keys.get(prepare).map(String::as_str).unwrap_or_default());
    }
    let runs = match &stage.work {
        Work::Select(s) => s.runs.as_slice(),
        _ => &[],
    };
    for name in stage.source.iter().chain(runs) {
        upstream.push(keys.get(name).map(String::as_str).ok_or_else(|| anyhow!("stage {name:?} has not run"))?);
    }
    Ok(upstream)
}

/// Runs a stage and stamps its record with its key, wall time and model fingerprint.
fn run_stage(ctx: &Context, stage: &PlannedStage, dir: &Path, key: &str) -> Result<StageRecord> {
    let started = Instant::now();
    let record = stages::run(ctx, stage, dir)?;
    let model_fingerprint = fingerprint_model(&ctx.run_dir.join(&record.model_dir))?;
    Ok(StageRecord { key: key.to_string(), wall_s: started.elapsed().as_secs_f64(), model_fingerprint, ..record })
}

/// An unfinished stage folder may be resumed only if it was started with the same key; marks the
/// folder with the key of the run about to start.
fn claim_stage_dir(dir: &Path, key: &str, on_event: OnEvent) -> Result<()> {
    let marker = dir.join("stage.key");
    match std::fs::read_to_string(&marker) {
        Ok(old) if old.trim() == key => on_event(PipelineEvent::Resuming),
        Ok(_) => set_aside(dir, "it was started with other settings or inputs", on_event)?,
        Err(_) if dir.exists() => set_aside(dir, "it has no settings marker", on_event)?,
        Err(_) => {}
    }
    write_atomic(&marker, key.as_bytes())
}

/// Moves a stage folder that cannot be trusted aside (`<stage>.stale`), never deleting work the
/// user might want to inspect beyond the previous stale copy.
fn set_aside(dir: &Path, why: &str, on_event: OnEvent) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let aside = dir.with_extension("stale");
    if aside.exists() {
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
    }
    on_event(PipelineEvent::SetAside { dir, aside: &aside, why });
    std::fs::rename(dir, &aside).with_context(|| format!("moving {} aside", dir.display()))
}
