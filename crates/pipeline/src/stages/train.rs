//! The common tail of every stage: train from the starting model (if the stage trains), measure
//! the end point, and fill the record.

use std::path::Path;

use anyhow::Result;
use escale_train::{ResumeMode, TrainConfig};

use super::Context;
use crate::events::PipelineEvent;
use crate::manifest::{DataPaths, StageRecord};
use crate::metrics::{read_curve, Curve};

/// Where a stage's training starts on the pipeline's axes.
pub struct Start<'a> {
    pub model: &'a Path,
    /// Cumulative FLOPs of the chain before this stage.
    pub flops: f64,
    pub val_loss: Option<f64>,
}

/// Trains (if `train` is set) from `start` into `<dir>/train`, evaluates the end point and
/// completes `base` with what was measured.
pub fn train_and_measure(
    ctx: &Context,
    data: &DataPaths,
    dir: &Path,
    start: Start,
    train: Option<&TrainConfig>,
    base: StageRecord,
) -> Result<StageRecord> {
    let (model, tokens, flops, curve) = match train {
        Some(t) => {
            let cfg = TrainConfig {
                model: start.model.to_path_buf(),
                data: ctx.run_path(&data.train),
                valid: Some(ctx.run_path(&data.valid)),
                output: dir.join("train"),
                // A re-run cannot know whether the stage got to its first checkpoint.
                resume: ResumeMode::ResumeOrStart,
                progress_bar: ctx.progress,
                ..t.clone()
            };
            ctx.emit(PipelineEvent::Training(&cfg));
            let trained = ctx.engine.train(&cfg, &mut |ev| ctx.emit(PipelineEvent::Train(ev)))?;
            let curve = read_curve(&trained.train_log, Some(&trained.eval_log))?;
            (trained.final_model, trained.tokens, trained.flops, curve)
        }
        None => (start.model.to_path_buf(), 0, 0.0, Curve::default()),
    };
    let val_loss_end = match train {
        Some(_) => Some(ctx.evaluate(data, &model, ctx.eval_seq_len(train))?),
        None => start.val_loss,
    };
    let accuracy = crate::accuracy::measure(ctx, &base.name, train, start.model, train.map(|_| model.as_path()))?;
    let (arch, params_total, params_active) = describe_arch(&model)?;
    let curve = curve.shifted(start.flops).with_start(start.flops, start.val_loss);
    Ok(StageRecord {
        arch,
        params_total,
        params_active,
        tokens,
        flops,
        flops_start: start.flops,
        val_loss_start: start.val_loss,
        val_loss_end,
        model_dir: ctx.relative(&model),
        curve,
        lr: train.map(|t| t.lr),
        accuracy,
        ..base
    })
}

/// One-line architecture of a model folder, with its total and active parameter counts.
fn describe_arch(model: &Path) -> Result<(String, u64, u64)> {
    let cfg = escale_formats::ModelConfig::from_file(&model.join("config.json"))?;
    let counts = escale_formats::param_counts(&cfg);
    let mut s = format!(
        "{} d={} L={} heads={}/{} ffn={}",
        cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    );
    if let Some(m) = &cfg.moe {
        s.push_str(&format!(" experts={} top-{}", m.num_experts, m.num_experts_per_tok));
    }
    Ok((s, counts.total, counts.active))
}
