//! `escale init`: a randomly initialised model (HF initialisation) from a config.json, for
//! training from scratch.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// config.json describing the architecture (llama, mistral, qwen2, mixtral or qwen2_moe).
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
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Replace a non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let storage = escale_formats::DType::parse(&args.dtype)
        .with_context(|| format!("--dtype {}: expected f32, bf16 or f16", args.dtype))?;
    let out = escale_train::init_model(&args.config, &args.output, args.seed, storage, args.force)
        .with_context(|| format!("initialising a model from {}", args.config.display()))?;
    println!("wrote a randomly initialised model (seed {}) to {}", args.seed, out.display());
    Ok(())
}
