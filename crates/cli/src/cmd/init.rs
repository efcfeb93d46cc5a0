//! `escale init`: a randomly initialised model (HF initialisation) from a config.json, for
//! training from scratch.

use std::path::PathBuf;

use anyhow::Context;
use escale_formats::DType;

#[derive(clap::Args)]
pub struct Args {
    /// config.json describing the architecture (llama, mistral, qwen2, qwen3, mixtral,
    /// qwen2_moe or qwen3_moe).
    /// Tokenizer files in the same folder are copied to the output.
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder (a complete HF model folder is written atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the random initialisation (same seed, same weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Storage precision of the weights: f32, bf16 or f16.
    #[arg(long, default_value_t = DType::F32)]
    pub dtype: DType,
    /// Replace a non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = escale_train::init_model(&args.config, &args.output, args.seed, args.dtype, args.force)
        .with_context(|| format!("initialising a model from {}", args.config.display()))?;
    out!("wrote a randomly initialised model (seed {}) to {}", args.seed, out.display());
    Ok(())
}
