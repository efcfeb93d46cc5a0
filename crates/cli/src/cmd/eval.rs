//! `escale eval`: next-token loss and perplexity of a model on a text file, streamed in windows of
//! the context length, with per-layer expert load for MoE models; or, with `--tasks`,
//! multiple-choice accuracy (`eval_tasks.rs`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use escale_data::TextTokenizer;
use escale_model::evaluate::Evaluator;
use escale_model::{text, Precision};

use super::verify::{load_model_with, WeightArgs};
use crate::flags::choice;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "tasks"])))]
pub struct Args {
    /// Hugging Face model folder (its tokenizer.json tokenizes the text).
    pub model: PathBuf,
    /// Text file to score. Read and tokenized in chunks, so it may be larger than memory.
    #[arg(long, conflicts_with = "tasks")]
    pub text: Option<PathBuf>,
    /// Multiple-choice task files (JSONL: context, choices, answer, optional task; see the README):
    /// accuracy per task in perplexity mode instead of the loss.
    #[arg(long, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// Tokens per window (default and maximum: the model's max_position_embeddings). Windows
    /// overlap by one token so every token after the first is predicted once.
    #[arg(long)]
    pub window: Option<usize>,
    /// Windows (with --tasks: choices) per forward pass (at least 1).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Stop after this many tokens (0: the whole file).
    #[arg(long, default_value_t = 0)]
    pub max_tokens: usize,
    /// Compute precision.
    #[arg(long, value_enum, value_parser = choice::<Precision>(), default_value_t = Precision::default())]
    pub dtype: Precision,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub weights: WeightArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = load_model_with(&args.model, args.dtype.candle(), args.weights.checks())?;
    let tok = TextTokenizer::from_file(&args.model)?;
    let window = args.window.unwrap_or(model.config.max_position_embeddings);
    if window < 2 {
        bail!("--window must be at least 2");
    }
    let Some(text_path) = &args.text else {
        return super::eval_tasks::run(&model, &tok, &args.tasks, window, args.batch as usize, args.json);
    };
    let mut ev = Evaluator::new(&model, window, args.batch as usize)?;
    let mut stream = text::TokenStream::open(&tok, text_path)?;
    let mut seen = 0usize;
    while let Some(mut ids) = stream.next_chunk().with_context(|| format!("reading {}", text_path.display()))? {
        if args.max_tokens > 0 {
            ids.truncate(args.max_tokens - seen);
        }
        seen += ids.len();
        ev.push(&ids)?;
        if args.max_tokens > 0 && seen >= args.max_tokens {
            break;
        }
    }
    let report = ev.finish().with_context(|| format!("evaluating {}", text_path.display()))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    out!("model       {}", args.model.display());
    out!("text        {}", text_path.display());
    out!("tokens      {} predicted in {} window(s) of <= {}", report.tokens, report.windows, window.min(model.config.max_position_embeddings));
    out!("loss        {:.6}", report.loss);
    out!("perplexity  {:.4}", report.perplexity);
    for l in &report.expert_load {
        let f: Vec<String> = l.fractions.iter().map(|x| format!("{:.3}", x)).collect();
        out!("layer {:>3} expert load  [{}]", l.layer, f.join(" "));
    }
    Ok(())
}
