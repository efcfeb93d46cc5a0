//! Another seed of the prepare stage: its starting model again (a random one initialised with
//! another seed, or the same `from` folder) trained on the same data in another order.

use std::path::Path;

use anyhow::{bail, Result};

use super::train::{train_and_measure, Start};
use super::{base_record, Context};
use crate::events::PipelineEvent;
use crate::manifest::StageRecord;
use crate::plan::{PlannedStage, ReseedWork};

pub fn run(ctx: &Context, stage: &PlannedStage, work: &ReseedWork, dir: &Path) -> Result<StageRecord> {
    let data = ctx.data()?;
    let (first, _) = ctx.source(stage)?;
    let start = match (&work.from, work.init_seed) {
        (Some(m), _) => ctx.abs(m),
        (None, Some(seed)) => {
            let init = dir.join("init");
            if init.join("config.json").exists() {
                init
            } else {
                // The first seed's configuration, written when it initialised its model.
                let cfg_file = ctx.run_path(Path::new(&first.name)).join("init-config").join("config.json");
                let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_file)?)?;
                let tokenizer = data.tokenizer.as_ref().map(|t| ctx.run_path(t));
                ctx.init_from_config(cfg, tokenizer.as_deref(), dir, seed)?
            }
        }
        (None, None) => bail!("stage {}: neither a starting model nor an initialisation seed", stage.name),
    };
    let val_loss = ctx.evaluate(data, &start, ctx.eval_seq_len(stage.train.as_ref()))?;
    ctx.emit(PipelineEvent::ValLossBefore(val_loss));
    let start = Start { model: &start, flops: 0.0, val_loss: Some(val_loss) };
    train_and_measure(ctx, data, dir, start, stage.train.as_ref(), base_record(stage))
}
