//! `escale inspect`: what a model folder holds, for people (`text`) and machines (`--json`).

use std::path::PathBuf;

use anyhow::Context;
use escale_formats::{summary::summarize, Checkpoint};

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model folder (config.json + model.safetensors or a sharded index).
    pub model: PathBuf,
    /// Also list every tensor: name, dtype, shape and shard file.
    #[arg(long)]
    pub tensors: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.model).with_context(|| format!("inspecting {}", args.model.display()))?;
    let summary = summarize(&ckpt, args.tensors);
    if args.json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        crate::out::write_text(std::io::stdout().lock(), &summary.to_text());
    }
    Ok(())
}
