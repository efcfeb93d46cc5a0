//! Scale-Up (sweep variants included) and Scale-Out stages: grow the source stage's model, measure
//! the transition (the source's final validation loss against the grown model's initial one, with
//! the same evaluation), then continue training.

use std::path::Path;

use anyhow::Result;

use super::train::{train_and_measure, Start};
use super::{base_record, Context};
use escale_grow::Exactness;
use crate::events::PipelineEvent;
use crate::manifest::{write_atomic, StageRecord};
use crate::plan::PlannedStage;

/// The growth's verdict, kept beside the grown model so a resumed stage need not grow again.
const VERDICT_FILE: &str = "growth.json";

/// Runs a growth stage; `grow(source model, output folder)` is the growth itself.
pub fn run(
    ctx: &Context,
    stage: &PlannedStage,
    dir: &Path,
    grow: impl Fn(&Path, &Path) -> Result<Exactness>,
) -> Result<StageRecord> {
    let data = ctx.data()?;
    let (source, source_model) = ctx.source(stage)?;
    let grown = dir.join("grown");
    let growth = grow_once(ctx, &source_model, &grown, &dir.join(VERDICT_FILE), grow)?;
    let grown_val_loss = ctx.evaluate(data, &grown, ctx.eval_seq_len(stage.train.as_ref()))?;
    ctx.emit(PipelineEvent::Transition {
        source: &source.name,
        source_val_loss: source.val_loss_end,
        grown_val_loss,
        exactness: &growth,
    });
    let base = StageRecord { exact: Some(growth.exact_as_stored()), source_val_loss: source.val_loss_end, ..base_record(stage) };
    let start = Start { model: &grown, flops: source.flops_end(), val_loss: Some(grown_val_loss) };
    train_and_measure(ctx, data, dir, start, stage.train.as_ref(), base)
}

/// Grows `source` into `grown` unless a previous run of the stage already did (its verdict file
/// is written after the model, so its presence means the model is complete).
fn grow_once(
    ctx: &Context,
    source: &Path,
    grown: &Path,
    verdict_file: &Path,
    grow: impl Fn(&Path, &Path) -> Result<Exactness>,
) -> Result<Exactness> {
    if grown.join("config.json").exists() && verdict_file.exists() {
        if let Ok(growth) = serde_json::from_slice(&std::fs::read(verdict_file)?) {
            return Ok(growth);
        }
    }
    if grown.exists() {
        std::fs::remove_dir_all(grown)?;
    }
    ctx.emit(PipelineEvent::Growing { source, out: grown });
    let growth = grow(source, grown)?;
    write_atomic(verdict_file, serde_json::to_string_pretty(&growth)?.as_bytes())?;
    Ok(growth)
}
