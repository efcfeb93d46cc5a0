//! `escale generate`: continue a prompt with a model (greedy, or temperature / top-p sampling), using
//! a KV cache so each new token costs one incremental forward.

use std::path::PathBuf;

use anyhow::bail;
use escale_data::TextTokenizer;
use escale_model::generate::{generate, Decoding};
use escale_model::Precision;
use serde_json::Value;

use super::verify::load_model;
use crate::flags::choice;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model folder (with tokenizer.json).
    pub model: PathBuf,
    /// Prompt text. The tokenizer's special tokens (e.g. BOS) are added; "" starts from BOS alone.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Number of tokens to generate (fewer if EOS comes first or the context fills up).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Random seed for sampling (same seed, same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going after the EOS token (config.json `eos_token_id`).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Compute precision.
    #[arg(long, value_enum, value_parser = choice::<Precision>(), default_value_t = Precision::default())]
    pub dtype: Precision,
    /// Print JSON (prompt ids, new ids, text) instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Written so that NaN fails both checks.
    let temperature_ok = args.temperature >= 0.0;
    let top_p_ok = args.top_p > 0.0 && args.top_p <= 1.0;
    if !(temperature_ok && top_p_ok) {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let model = load_model(&args.model, args.dtype.candle())?;
    let tok = TextTokenizer::from_file(&args.model)?;
    let prompt = tok.encode_with(&args.prompt, true)?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens (this tokenizer adds no BOS): give some prompt text");
    }
    let max_pos = model.config.max_position_embeddings;
    if prompt.len() > max_pos {
        bail!("the prompt has {} tokens, more than max_position_embeddings = {max_pos}", prompt.len());
    }
    let decoding = if args.temperature == 0.0 {
        Decoding::Greedy
    } else {
        Decoding::Sample { temperature: args.temperature, top_p: args.top_p, seed: args.seed }
    };
    let stop: Vec<u32> = if args.ignore_eos {
        Vec::new()
    } else {
        match model.config.raw().get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|x| x as u32).collect(),
            _ => Vec::new(),
        }
    };
    let new = generate(&model, &prompt, args.max_new_tokens, &decoding, &stop, |_| {})?;
    let mut all = prompt.clone();
    all.extend(&new);
    let text = tok.decode(&all, true)?;
    if args.json {
        let v = serde_json::json!({"prompt_ids": prompt, "new_ids": new, "text": text});
        out!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{text}");
    }
    Ok(())
}
