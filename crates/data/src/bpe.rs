//! Training a small byte-level BPE tokenizer (for models trained from scratch), with the Hugging
//! Face `tokenizers` trainer.
//!
//! The tokenizer is the GPT-2/Qwen family: text is split by a regular expression (contractions,
//! letter runs with at most one leading non-letter, **single digits** so that arithmetic is
//! learnable, punctuation runs, newlines, spaces), mapped to byte-level characters, and merged by
//! BPE. All 256 bytes are in the vocabulary, so any text encodes with no unknown token. Special
//! tokens come first: by default `<s>` = 0 (BOS), `</s>` = 1 (EOS), `<pad>` = 2. No BOS/EOS is added
//! by the post-processor (`prepare_data` appends the EOS itself).
//!
//! [`save_tokenizer`] writes `tokenizer.json` and a `tokenizer_config.json` naming the special
//! tokens, which `prepare_data` (and `transformers.AutoTokenizer`) read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, Tokenizer, TokenizerBuilder, TokenizerImpl,
};

use crate::error::{DataError, Result};

/// Pre-tokenization pattern: English contractions, letter runs (with one leading non-letter, e.g.
/// a space or a Chinese comma), single digits, punctuation runs (with trailing newlines), newline
/// runs, spaces. Never joins the characters on both sides of a newline.
pub const SPLIT_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Options of [`train_bpe`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpeOptions {
    /// Final vocabulary size, special tokens and the 256 byte tokens included.
    pub vocab_size: usize,
    /// Merges of pairs seen fewer times are not learnt.
    pub min_frequency: u64,
    pub bos_token: Option<String>,
    pub eos_token: String,
    pub pad_token: Option<String>,
    /// More special tokens, after BOS, EOS and PAD.
    pub extra_special_tokens: Vec<String>,
}

impl Default for BpeOptions {
    fn default() -> Self {
        BpeOptions {
            vocab_size: 4096,
            min_frequency: 2,
            bos_token: Some("<s>".into()),
            eos_token: "</s>".into(),
            pad_token: Some("<pad>".into()),
            extra_special_tokens: Vec::new(),
        }
    }
}

impl BpeOptions {
    /// BOS, EOS, PAD, extras, without duplicates, in id order.
    pub fn special_tokens(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self.bos_token.iter().chain(std::iter::once(&self.eos_token)).chain(self.pad_token.iter()).chain(&self.extra_special_tokens);
        for t in all {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

type Impl = TokenizerImpl<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

fn untrained(options: &BpeOptions) -> Result<(Impl, TrainerWrapper)> {
    let specials = options.special_tokens();
    let min = 256 + specials.len();
    if options.vocab_size < min {
        return Err(DataError::Invalid(format!(
            "vocab_size {} is too small: a byte-level BPE needs at least 256 byte tokens + {} special tokens = {min}",
            options.vocab_size,
            specials.len()
        )));
    }
    let split = Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| DataError::Invalid(format!("BPE split pattern: {e}")))?;
    let pre = Sequence::new(vec![split.into(), ByteLevel::default().add_prefix_space(false).use_regex(false).into()]);
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .show_progress(false)
        .special_tokens(specials.iter().map(|s| AddedToken::from(s.clone(), true)).collect())
        .initial_alphabet(alphabet)
        .build();
    let tokenizer = TokenizerBuilder::<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
        .with_model(BPE::default().into())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(pre.into()))
        .with_post_processor(Some(ByteLevel::default().add_prefix_space(false).trim_offsets(false).into()))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
        .build()
        .map_err(|e| DataError::Invalid(format!("building the BPE tokenizer: {e}")))?;
    Ok((tokenizer, trainer.into()))
}

/// Trains a byte-level BPE on text files (read line by line; any UTF-8 text).
pub fn train_bpe(files: &[PathBuf], options: &BpeOptions) -> Result<Tokenizer> {
    if files.is_empty() {
        return Err(DataError::EmptyInput("no files to train the tokenizer on".into()));
    }
    let mut bytes = 0u64;
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| DataError::io(f, e))?;
        bytes += meta.len();
    }
    if bytes == 0 {
        return Err(DataError::EmptyInput("the tokenizer training files are empty".into()));
    }
    let (mut tokenizer, mut trainer) = untrained(options)?;
    let names: Vec<String> = files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
    tokenizer
        .train_from_files(&mut trainer, names)
        .map_err(|e| DataError::tokenizer(files.first().expect("non-empty"), format!("training failed: {e}")))?;
    Ok(tokenizer.into())
}

/// Trains a byte-level BPE on in-memory texts.
pub fn train_bpe_from_texts<I, S>(texts: I, options: &BpeOptions) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let (mut tokenizer, mut trainer) = untrained(options)?;
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| DataError::tokenizer(Path::new("<texts>"), format!("training failed: {e}")))?;
    Ok(tokenizer.into())
}

/// Writes `tokenizer.json` (at `path`, or inside it when `path` is a folder or has no `.json`
/// extension) and `tokenizer_config.json` beside it. Returns the `tokenizer.json` path.
pub fn save_tokenizer(tokenizer: &Tokenizer, options: &BpeOptions, path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    let json_path = if path.is_dir() || path.extension().is_none_or(|e| e != "json") {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    let dir = json_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let text = tokenizer.to_string(true).map_err(|e| DataError::tokenizer(&json_path, e))?;
    write_atomic(&json_path, text.as_bytes())?;
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    if let Some(b) = &options.bos_token {
        config.insert("bos_token".into(), b.clone().into());
    }
    config.insert("eos_token".into(), options.eos_token.clone().into());
    if let Some(p) = &options.pad_token {
        config.insert("pad_token".into(), p.clone().into());
    }
    config.insert("add_bos_token".into(), false.into());
    config.insert("add_eos_token".into(), false.into());
    config.insert("clean_up_tokenization_spaces".into(), false.into());
    config.insert("model_max_length".into(), 1_000_000_000_000_000_000u64.into());
    let config_path = json_path.with_file_name("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(config)).expect("serialises") + "\n";
    write_atomic(&config_path, text.as_bytes())?;
    Ok(json_path)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    escale_util::publish::write_atomic(path, bytes).map_err(|e| DataError::io(path, e))
}
