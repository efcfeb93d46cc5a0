//! escale's tokenization path: a Hugging Face `tokenizer.json` (the `tokenizers` crate, the same
//! Rust core as the Python package) plus the special tokens escale needs (EOS, BOS).
//!
//! Text is always encoded *without* the post-processor's special tokens (no BOS/EOS added by the
//! tokenizer) unless asked; `prepare_data` appends the EOS itself, like Megatron's `--append-eod`.
//! Truncation and padding stored in a `tokenizer.json` are switched off: a document is never cut.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{DataError, Result};

/// EOS names tried, in order, when neither a flag nor `tokenizer_config.json` names one.
pub const EOS_CANDIDATES: &[&str] = &["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>"];
/// BOS names tried likewise.
pub const BOS_CANDIDATES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]"];

/// A named special token and its id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialToken {
    pub token: String,
    pub id: u32,
    /// Where the choice came from (`flag`, `tokenizer_config.json`, `vocabulary`).
    pub source: String,
}

/// A loaded tokenizer with its EOS/BOS.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    eos: Option<SpecialToken>,
    bos: Option<SpecialToken>,
    max_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .field("bos", &self.bos)
            .finish()
    }
}

/// The `tokenizer.json` for a path that is either that file or a folder holding it.
pub fn tokenizer_json_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

/// Reads `eos_token` / `bos_token` of a `tokenizer_config.json` (plain string or `{"content": ..}`).
fn config_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (a path to the file or to its folder). EOS and BOS come from a
    /// `tokenizer_config.json` beside it when present, else from well-known names in the
    /// vocabulary ([`EOS_CANDIDATES`], [`BOS_CANDIDATES`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<TextTokenizer> {
        let json = tokenizer_json_path(path.as_ref());
        if !json.is_file() {
            return Err(DataError::io(&json, std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found")));
        }
        let tokenizer = Tokenizer::from_file(&json).map_err(|e| DataError::tokenizer(&json, e))?;
        let mut t = TextTokenizer::from_tokenizer_at(tokenizer, json.clone());
        let config_path = json.with_file_name("tokenizer_config.json");
        if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| DataError::io(&config_path, e))?;
            let config: Value = serde_json::from_str(&text)
                .map_err(|e| DataError::tokenizer(&config_path, format!("invalid JSON: {e}")))?;
            for (key, slot) in [("eos_token", &mut t.eos), ("bos_token", &mut t.bos)] {
                if let Some(name) = config_token(&config, key) {
                    if let Some(id) = t.tokenizer.token_to_id(&name) {
                        *slot = Some(SpecialToken { token: name, id, source: "tokenizer_config.json".into() });
                    }
                }
            }
        }
        Ok(t)
    }

    /// Wraps an in-memory tokenizer (EOS/BOS from well-known names).
    pub fn from_tokenizer(tokenizer: Tokenizer) -> TextTokenizer {
        TextTokenizer::from_tokenizer_at(tokenizer, PathBuf::from("<in-memory tokenizer>"))
    }

    fn from_tokenizer_at(mut tokenizer: Tokenizer, path: PathBuf) -> TextTokenizer {
        // A document must never be cut or padded.
        let _ = tokenizer.with_truncation(None);
        tokenizer.with_padding(None);
        let max_id = tokenizer.get_vocab(true).values().copied().max().unwrap_or(0);
        let find = |names: &[&str]| {
            names.iter().find_map(|n| {
                tokenizer.token_to_id(n).map(|id| SpecialToken { token: n.to_string(), id, source: "vocabulary".into() })
            })
        };
        let eos = find(EOS_CANDIDATES);
        let bos = find(BOS_CANDIDATES);
        TextTokenizer { tokenizer, path, eos, bos, max_id }
    }

    /// Uses `token` as EOS (it must be in the vocabulary).
    pub fn with_eos_token(mut self, token: &str) -> Result<TextTokenizer> {
        let id = self.tokenizer.token_to_id(token).ok_or_else(|| {
            DataError::tokenizer(&self.path, format!("EOS token `{token}` is not in the vocabulary"))
        })?;
        self.eos = Some(SpecialToken { token: token.to_string(), id, source: "flag".into() });
        Ok(self)
    }

    /// Uses `token` as BOS (it must be in the vocabulary).
    pub fn with_bos_token(mut self, token: &str) -> Result<TextTokenizer> {
        let id = self.tokenizer.token_to_id(token).ok_or_else(|| {
            DataError::tokenizer(&self.path, format!("BOS token `{token}` is not in the vocabulary"))
        })?;
        self.bos = Some(SpecialToken { token: token.to_string(), id, source: "flag".into() });
        Ok(self)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The `tokenizer.json` it came from (or `<in-memory tokenizer>`).
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn eos(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }
    pub fn bos(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|t| t.id)
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }
    /// Largest id of the vocabulary, added tokens included.
    pub fn max_id(&self) -> u32 {
        self.max_id
    }
    /// Number of ids the model's embedding must cover: largest id + 1.
    pub fn vocab_size(&self) -> usize {
        self.max_id as usize + 1
    }

    /// Encodes one text (no special tokens added by the tokenizer).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    /// Encodes one text, optionally with the post-processor's special tokens.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode_fast(text, add_special_tokens).map_err(|e| DataError::tokenizer(&self.path, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts in parallel (rayon's current pool), results in input order. Each
    /// `Encoding` is reduced to its ids on the worker thread, so only ids are kept.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode_with(t.as_ref(), add_special_tokens)).collect()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(|e| DataError::tokenizer(&self.path, e))
    }

    /// Whether encoding a long text in pieces cut at a single `\n` between two non-whitespace
    /// characters gives exactly the ids of encoding it whole. True for the byte-level BPE family
    /// (GPT-2, Llama 3, Qwen, Aquila...): their pre-tokenizers never join the characters on both
    /// sides of such a newline. False for anything that could (Metaspace/SentencePiece-style prefix
    /// spaces, `add_prefix_space`, normalizers other than Unicode forms/lowercase, added tokens that
    /// strip whitespace or contain newlines), in which case documents are encoded whole.
    pub fn piecewise_exact(&self) -> bool {
        let norm_ok = match self.tokenizer.get_normalizer() {
            None => true,
            Some(n) => serde_json::to_value(n).map(|v| normalizer_ok(&v)).unwrap_or(false),
        };
        let pre_ok = match self.tokenizer.get_pre_tokenizer() {
            None => false,
            Some(p) => serde_json::to_value(p)
                .map(|v| {
                    let mut splits = false;
                    pre_tokenizer_ok(&v, &mut splits) && splits
                })
                .unwrap_or(false),
        };
        let added_ok = self
            .tokenizer
            .get_added_tokens_decoder()
            .values()
            .all(|t| !t.lstrip && !t.rstrip && (!t.content.contains('\n') || t.content == "\n"));
        norm_ok && pre_ok && added_ok
    }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(|t| t.as_str()).unwrap_or("")
}

fn normalizer_ok(v: &Value) -> bool {
    match type_of(v) {
        "NFC" | "NFD" | "NFKC" | "NFKD" | "Lowercase" => true,
        "Sequence" => v.get("normalizers").and_then(|n| n.as_array()).is_some_and(|a| a.iter().all(normalizer_ok)),
        _ => false,
    }
}

/// `splits`: set when some part cuts the text into pre-tokens (otherwise the model would see whole
/// pieces and could merge across the newline).
fn pre_tokenizer_ok(v: &Value, splits: &mut bool) -> bool {
    match type_of(v) {
        "ByteLevel" => {
            if v.get("add_prefix_space").and_then(|b| b.as_bool()).unwrap_or(false) {
                return false;
            }
            if v.get("use_regex").and_then(|b| b.as_bool()).unwrap_or(true) {
                *splits = true;
            }
            true
        }
        "Split" => {
            let behavior = v.get("behavior").and_then(|b| b.as_str()).unwrap_or("");
            let invert = v.get("invert").and_then(|b| b.as_bool()).unwrap_or(false);
            let ok = matches!(behavior, "Isolated" | "Removed") && !invert;
            *splits |= ok;
            ok
        }
        "Whitespace" | "WhitespaceSplit" => {
            *splits = true;
            true
        }
        "Digits" | "Punctuation" => true,
        "Sequence" => v
            .get("pretokenizers")
            .and_then(|n| n.as_array())
            .is_some_and(|a| a.iter().all(|p| pre_tokenizer_ok(p, splits))),
        _ => false,
    }
}
