//! A from-scratch baseline: the architecture of an earlier stage, initialised at random and
//! trained for the same compute (cumulative or the stage's own), the paper's comparison.

use std::path::Path;

use anyhow::Result;

use super::train::{train_and_measure, Start};
use super::{base_record, Context};
use crate::events::PipelineEvent;
use crate::flops::{baseline_flops, tokens_for_flops};
use crate::manifest::StageRecord;
use crate::plan::{resolve_train, BaselineWork, PlannedStage};

pub fn run(ctx: &Context, stage: &PlannedStage, work: &BaselineWork, dir: &Path) -> Result<StageRecord> {
    let data = ctx.data()?;
    let (of, of_model) = ctx.source(stage)?;
    let at = format!("stages[{}].baseline", stage.index);
    // The token budget follows from the FLOPs at the compared model's cost per token.
    let shape = resolve_train(&work.train.clone().with("total_tokens", 1), ctx.file, stage.index, &at)?;
    let flops = baseline_flops(work.budget, of);
    let flops_per_token = ctx.engine.flops_per_token(&of_model, shape.seq_len)?;
    let tokens = tokens_for_flops(flops, flops_per_token, shape.tokens_per_step());
    let train = resolve_train(&work.train.clone().with("total_tokens", tokens), ctx.file, stage.index, &at)?;
    ctx.emit(PipelineEvent::Budget { flops, tokens, flops_per_token });

    let init = dir.join("init");
    let start = if init.join("config.json").exists() { init } else { init_like(ctx, &of_model, dir, work.seed)? };
    let val_loss = ctx.evaluate(data, &start, ctx.eval_seq_len(Some(&train)))?;
    let start = Start { model: &start, flops: 0.0, val_loss: Some(val_loss) };
    train_and_measure(ctx, data, dir, start, Some(&train), base_record(stage))
}

/// A random model with the architecture of `model` (its growth record dropped: it was not grown).
fn init_like(ctx: &Context, model: &Path, dir: &Path, seed: u64) -> Result<std::path::PathBuf> {
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("config.json"))?)?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.remove("escale_growth");
    }
    let tokenizer = ctx.data()?.tokenizer.as_ref().map(|t| ctx.run_path(t));
    ctx.init_from_config(cfg, tokenizer.as_deref(), dir, seed)
}
