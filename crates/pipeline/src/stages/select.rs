//! The end of a learning-rate sweep: the run with the lowest final validation loss (mean over its
//! seeds) stands for the stage, so later stages grow from it and baselines are compared with it.

use anyhow::{anyhow, Result};

use super::Context;
use crate::events::PipelineEvent;
use crate::manifest::StageRecord;
use crate::plan::{PlannedStage, SelectWork};
use crate::runs::RunGroup;

pub fn run(ctx: &Context, stage: &PlannedStage, work: &SelectWork) -> Result<StageRecord> {
    let runs: Vec<StageRecord> = work.runs.iter().map(|n| ctx.record(n).cloned()).collect::<Result<_>>()?;
    let group = RunGroup::of(&stage.name, &runs).ok_or_else(|| anyhow!("stage {}: no runs to choose from", stage.name))?;
    let chosen = group.chosen_run().ok_or_else(|| anyhow!("stage {}: no run measured a validation loss", stage.name))?;
    let point = group.chosen().expect("a chosen run belongs to the chosen point");
    ctx.emit(PipelineEvent::Selected {
        lr: point.lr,
        val_loss: point.stats.map(|s| s.mean).unwrap_or(f64::NAN),
        run: chosen,
        edge: group.edge,
    });
    let record = ctx.record(chosen)?;
    // The chosen run's measurements under the stage's own name; its wall time was counted by the run.
    Ok(StageRecord {
        name: stage.name.clone(),
        method: stage.method.clone(),
        run_of: None,
        wall_s: 0.0,
        ..record.clone()
    })
}
