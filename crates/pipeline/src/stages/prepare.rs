//! The prepare stage: the text (built-in corpus or the user's), the tokenizer, the tokens, and the
//! starting model (random or the user's), optionally trained. Each step is skipped when its output
//! is already there, so an interrupted preparation continues where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::train::{train_and_measure, Start};
use super::{base_record, Context};
use crate::events::PipelineEvent;
use crate::manifest::{write_atomic, DataPaths, StageRecord};
use crate::plan::PlannedStage;
use crate::schema::{BuiltinCorpus, CorpusSpec, ModelSpec, PrepareSpec, TokenizerSpec};

pub fn run(ctx: &Context, stage: &PlannedStage, p: &PrepareSpec, dir: &Path) -> Result<StageRecord> {
    let data = prepare_data(ctx, p, dir)?;
    let start = match &p.model {
        ModelSpec::From(m) => ctx.abs(m),
        ModelSpec::Init(init) => {
            let tokenizer = data.tokenizer.as_ref().map(|t| ctx.run_path(t));
            init_model(ctx, &init.config, tokenizer.as_deref(), dir)?
        }
    };
    let val_loss = ctx.evaluate(&data, &start, ctx.eval_seq_len(stage.train.as_ref()))?;
    ctx.emit(PipelineEvent::ValLossBefore(val_loss));
    let base = StageRecord { data: Some(data.clone()), ..base_record(stage) };
    let start = Start { model: &start, flops: 0.0, val_loss: Some(val_loss) };
    train_and_measure(ctx, &data, dir, start, stage.train.as_ref(), base)
}

/// Tokenizer and `.bin/.idx` data of the prepare stage.
fn prepare_data(ctx: &Context, p: &PrepareSpec, dir: &Path) -> Result<DataPaths> {
    let texts: Vec<PathBuf> = match &p.corpus {
        CorpusSpec::Builtin(b) => builtin_corpus(ctx, b, dir)?,
        CorpusSpec::Text(t) => t.paths.iter().map(|p| ctx.abs(p)).collect(),
        CorpusSpec::Prepared(d) => {
            let tokenizer = match &p.tokenizer {
                Some(TokenizerSpec::Path(t)) => Some(ctx.abs(t)),
                _ => None,
            };
            return Ok(DataPaths { train: ctx.abs(&d.train), valid: ctx.abs(&d.valid), tokenizer });
        }
    };
    let tokenizer = tokenizer(ctx, p, &texts, dir)?;
    let prefix = dir.join("data").join("tokens");
    let (train, valid) = escale_data::prepare::split_prefixes(&prefix);
    if !(train.with_extension("idx").exists() && valid.with_extension("idx").exists()) {
        ctx.emit(PipelineEvent::Tokenizing { files: texts.len(), prefix: &prefix });
        std::fs::create_dir_all(dir.join("data"))?;
        let json_key = match &p.corpus {
            CorpusSpec::Text(t) => t.json_key.as_deref(),
            _ => None,
        };
        ctx.engine.prepare_data(&texts, json_key, &tokenizer, p.valid_fraction, ctx.file.seed, &prefix)?;
    }
    Ok(DataPaths { train: ctx.relative(&train), valid: ctx.relative(&valid), tokenizer: Some(ctx.relative(&tokenizer)) })
}

/// Generates the built-in corpus into `<dir>/corpus` once; returns its files.
fn builtin_corpus(ctx: &Context, b: &BuiltinCorpus, dir: &Path) -> Result<Vec<PathBuf>> {
    let corpus = dir.join("corpus");
    let done = corpus.join(".complete");
    if !done.exists() {
        ctx.emit(PipelineEvent::GeneratingCorpus { size_mb: b.size_mb });
        let files = ctx.engine.make_corpus((b.size_mb * 1e6) as u64, b.seed.unwrap_or(ctx.file.seed), &corpus)?;
        let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        write_atomic(&done, list.join("\n").as_bytes())?;
    }
    Ok(std::fs::read_to_string(&done)?.lines().map(PathBuf::from).collect())
}

/// The tokenizer.json to use: the file's, one trained on the text, or the model's own.
fn tokenizer(ctx: &Context, p: &PrepareSpec, texts: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    Ok(match (&p.tokenizer, &p.model) {
        (Some(TokenizerSpec::Path(t)), _) => ctx.abs(t),
        (Some(TokenizerSpec::Train(t)), _) => {
            let out = dir.join("tokenizer").join("tokenizer.json");
            if !out.exists() {
                ctx.emit(PipelineEvent::TrainingTokenizer { vocab_size: t.vocab_size });
                std::fs::create_dir_all(dir.join("tokenizer"))?;
                ctx.engine.train_tokenizer(texts, t.vocab_size, &out)?;
            }
            out
        }
        (None, ModelSpec::From(m)) => ctx.abs(m).join("tokenizer.json"),
        (None, ModelSpec::Init(_)) => bail!("a tokenizer is required for a model initialised at random"),
    })
}

/// Writes `<dir>/init-config/config.json` (escale defaults, then the file's fields, vocab from
/// the tokenizer) and initialises `<dir>/init` from it.
fn init_model(
    ctx: &Context,
    fields: &BTreeMap<String, serde_json::Value>,
    tokenizer: Option<&Path>,
    dir: &Path,
) -> Result<PathBuf> {
    let out = dir.join("init");
    if out.join("config.json").exists() {
        return Ok(out);
    }
    let mut cfg = default_init_config();
    if let Some(t) = tokenizer {
        cfg.insert("vocab_size".into(), vocab_size(t)?.into());
    }
    for (k, v) in fields {
        cfg.insert(k.clone(), v.clone());
    }
    ctx.init_from_config(serde_json::Value::Object(cfg), tokenizer, dir, ctx.file.seed)
}

/// Escale's defaults for a model trained from scratch: a small llama (overridden by the file).
fn default_init_config() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "torch_dtype": "float32"
    });
    v.as_object().cloned().expect("object literal")
}

/// Vocabulary size a model needs for a tokenizer.json: escale's one reading of tokenizers
/// ([`escale_data::TextTokenizer::vocab_size`], largest id + 1, added tokens included), whatever
/// the tokenizer's model type.
fn vocab_size(tokenizer: &Path) -> Result<usize> {
    let t = escale_data::TextTokenizer::from_file(tokenizer).with_context(|| format!("reading {}", tokenizer.display()))?;
    Ok(t.vocab_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer_json(model: serde_json::Value, added: serde_json::Value) -> String {
        serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": model})
        .to_string()
    }

    /// Qwen3's special tokens sit above its BPE vocabulary: the model must cover them. The
    /// expectation is read from the file's JSON independently (largest id + 1).
    #[test]
    fn vocab_size_counts_added_tokens() {
        let Some(shared) = shared_dir() else { return };
        let p = shared.join("testdata/tokenizers/qwen3/tokenizer.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let vocab_max = v["model"]["vocab"].as_object().unwrap().values().filter_map(|x| x.as_u64()).max().unwrap();
        let added_max = v["added_tokens"].as_array().unwrap().iter().filter_map(|t| t["id"].as_u64()).max().unwrap();
        assert!(added_max > vocab_max, "the test needs added tokens above the vocabulary");
        assert_eq!(vocab_size(&p).unwrap() as u64, added_max + 1);
    }

    /// `../shared` beside the workspace, or `None` (after saying why).
    fn shared_dir() -> Option<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
        if dir.join("testdata/tokenizers/qwen3/tokenizer.json").is_file() {
            Some(dir)
        } else {
            println!("skipping: ../shared not found (test data lives there)");
            None
        }
    }

    /// A Unigram (sentencepiece-style) tokenizer lists its vocabulary as `[piece, score]` pairs,
    /// not a map: the size comes from the tokenizer itself, not from one JSON layout.
    #[test]
    fn vocab_size_reads_every_tokenizer_model() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        let model = serde_json::json!({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -2.0], ["ab", -3.0]],
            "byte_fallback": false});
        std::fs::write(&p, tokenizer_json(model, serde_json::json!([]))).unwrap();
        assert_eq!(vocab_size(&p).unwrap(), 4);
    }
}
