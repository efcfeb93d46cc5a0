//! `escale prepare-data`: tokenize text/JSONL into a Megatron indexed dataset (see
//! `escale_data::prepare` for every rule).

use std::path::PathBuf;

use anyhow::Context;
use escale_data::{prepare_data, DType, InputFormat, OnError, PrepareOptions, TextDocs};

use crate::flags::choice;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    escale prepare-data corpus/ --tokenizer tok/tokenizer.json --output data/tokens --split 0.99\n  \
    escale prepare-data 'shards/*.jsonl' --tokenizer qwen3/ --output data/qwen --json-key content\n\n\
    Outputs PREFIX.bin/PREFIX.idx in Megatron's MMapIndexedDataset layout (readable by Megatron-LM \
    and FlagScale), or with --split PREFIX_train.* and PREFIX_valid.*.")]
pub struct Args {
    /// Input files, folders (searched recursively for .txt/.text/.md/.jsonl/.ndjson) and glob
    /// patterns (quote them). Read in the order given; folder and glob matches sorted.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// tokenizer.json, or the folder holding it (its tokenizer_config.json names the EOS).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output prefix: writes PREFIX.bin and PREFIX.idx (parent folders are created); an output
    /// file that is one of the inputs is refused.
    #[arg(long, value_name = "PREFIX")]
    pub output: PathBuf,
    /// Input format: `auto` (.jsonl/.ndjson/.json are JSONL, the rest plain text), `text` or `jsonl`.
    #[arg(long, value_enum, value_parser = choice::<InputFormat>(), default_value_t = InputFormat::default())]
    pub format: InputFormat,
    /// Plain-text documents: `paragraph` (blocks separated by blank lines), `file` (one document
    /// per file) or `line` (one per non-empty line).
    #[arg(long, value_enum, value_parser = choice::<TextDocs>(), default_value_t = TextDocs::default())]
    pub text_docs: TextDocs,
    /// JSONL field holding the text (one document per line).
    #[arg(long, default_value_t = PrepareOptions::default().json_key)]
    pub json_key: String,
    /// EOS token appended after each document (default: eos_token of tokenizer_config.json, else
    /// a well-known name found in the vocabulary such as </s> or <|endoftext|>).
    #[arg(long)]
    pub eos_token: Option<String>,
    /// Do not append an EOS after each document.
    #[arg(long)]
    pub no_eos: bool,
    /// Let the tokenizer's post-processor add its special tokens (e.g. a BOS) to each document.
    #[arg(long)]
    pub add_special_tokens: bool,
    /// Token dtype: `auto` (uint16 if the vocabulary is below 65,500 ids, else int32, as Megatron),
    /// or uint8, int16, uint16, int32, int64.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Hold out documents for validation: keep this fraction for PREFIX_train and write the rest
    /// to PREFIX_valid (a seeded hash of the document number decides, so it is reproducible).
    #[arg(long, value_name = "TRAIN_FRACTION")]
    pub split: Option<f64>,
    /// Seed of the --split hash.
    #[arg(long, default_value_t = PrepareOptions::default().split_seed)]
    pub split_seed: u64,
    /// On an unreadable file, invalid UTF-8 or a bad JSONL line: `abort` (nothing is written) or
    /// `skip` the document (the whole file with --text-docs file) and report it.
    #[arg(long, value_enum, value_parser = choice::<OnError>(), default_value_t = OnError::default())]
    pub on_error: OnError,
    /// Encoding threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Text per parallel encoding batch, in MB (10^6 bytes).
    #[arg(long, default_value_t = PrepareOptions::default().batch_bytes as f64 / MB)]
    pub batch_mb: f64,
    /// No progress bar or warnings on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--batch-mb`'s unit.
const MB: f64 = 1e6;

pub fn run(args: Args) -> anyhow::Result<()> {
    let dtype = match args.dtype.as_str() {
        "auto" => None,
        s => Some(s.parse::<DType>().map_err(anyhow::Error::msg).context("--dtype")?),
    };
    if args.batch_mb.is_nan() || args.batch_mb <= 0.0 {
        anyhow::bail!("--batch-mb must be positive");
    }
    let options = PrepareOptions {
        inputs: args.inputs,
        output: args.output.clone(),
        format: args.format,
        text_docs: args.text_docs,
        json_key: args.json_key,
        append_eos: !args.no_eos,
        add_special_tokens: args.add_special_tokens,
        dtype,
        split: args.split,
        split_seed: args.split_seed,
        on_error: args.on_error,
        threads: args.threads,
        batch_bytes: (args.batch_mb * MB).max(1.0) as usize,
        progress: !args.quiet,
    };
    let summary = prepare_data(&args.tokenizer, args.eos_token.as_deref(), &options)
        .with_context(|| format!("preparing {}", args.output.display()))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        crate::out::write_text(std::io::stdout().lock(), &summary.to_text());
    }
    Ok(())
}
