//! `escale train-tokenizer`: a small byte-level BPE for models trained from scratch (see
//! `escale_data::bpe`).

use std::path::PathBuf;

use anyhow::Context;
use escale_data::bpe::{save_tokenizer, train_bpe, BpeOptions};
use escale_data::TextTokenizer;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  escale make-corpus --size 20MB --output corpus\n  \
    escale train-tokenizer corpus/corpus.txt --vocab-size 4096 --output tok\n  \
    escale prepare-data corpus/corpus.txt --tokenizer tok --output data/tokens --split 0.99")]
pub struct Args {
    /// Text files to learn from (read line by line).
    #[arg(required = true, value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
    /// Vocabulary size, including the special tokens and the 256 byte tokens.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Output: a folder (tokenizer.json and tokenizer_config.json are written into it) or a path
    /// ending in .json.
    #[arg(long)]
    pub output: PathBuf,
    /// Pairs seen fewer times are not merged.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Beginning-of-sequence token (id 0); `none` for none.
    #[arg(long, default_value = "<s>")]
    pub bos_token: String,
    /// End-of-sequence token, appended after each document by prepare-data.
    #[arg(long, default_value = "</s>")]
    pub eos_token: String,
    /// Padding token; `none` for none.
    #[arg(long, default_value = "<pad>")]
    pub pad_token: String,
    /// More special tokens (repeatable).
    #[arg(long = "special-token", value_name = "TOKEN")]
    pub special_tokens: Vec<String>,
}

fn optional(s: String) -> Option<String> {
    (s != "none" && !s.is_empty()).then_some(s)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = BpeOptions {
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
        bos_token: optional(args.bos_token),
        eos_token: args.eos_token,
        pad_token: optional(args.pad_token),
        extra_special_tokens: args.special_tokens,
    };
    let start = std::time::Instant::now();
    let tokenizer = train_bpe(&args.inputs, &options).context("training the tokenizer")?;
    let path = save_tokenizer(&tokenizer, &options, &args.output)?;
    let t = TextTokenizer::from_file(&path)?;
    let specials: Vec<String> =
        options.special_tokens().iter().map(|s| format!("{s} = {}", t.tokenizer().token_to_id(s).unwrap_or(u32::MAX))).collect();
    out!(
        "wrote {} (byte-level BPE, vocabulary {}, special tokens {}) in {:.1} s",
        path.display(),
        t.vocab_size(),
        specials.join(", "),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
