//! Shared helpers for the trainer's integration tests: tiny random models and token datasets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use escale_data::indexed::write_dataset;
use escale_formats::{ModelConfig, WriterOptions};
use escale_model::Model;
use escale_train::{TrainConfig, TrainDType};
use serde_json::{json, Value};

pub fn tiny_llama_config() -> Value {
    json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, "initializer_range": 0.1, "tie_word_embeddings": false})
}

pub fn tiny_mixtral_config() -> Value {
    json!({"model_type": "mixtral", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 16,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_local_experts": 4, "num_experts_per_tok": 2,
           "max_position_embeddings": 64, "initializer_range": 0.1, "tie_word_embeddings": false})
}

/// qwen3 with head_dim 6 (hidden/heads is 4): per-head q/k norms, no biases.
pub fn tiny_qwen3_config() -> Value {
    json!({"model_type": "qwen3", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 6,
           "max_position_embeddings": 64, "initializer_range": 0.1, "tie_word_embeddings": true})
}

/// qwen3_moe with layer 0 dense (`mlp_only_layers`) and unrenormalised top-2 routing.
pub fn tiny_qwen3_moe_config() -> Value {
    json!({"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 6,
           "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "norm_topk_prob": false,
           "mlp_only_layers": [0], "max_position_embeddings": 64, "initializer_range": 0.1,
           "tie_word_embeddings": false})
}

/// Writes a randomly initialised model (seeded) to `dir` and returns the path.
pub fn write_model(config: Value, dir: &Path, seed: u64) -> PathBuf {
    let cfg = ModelConfig::from_json(config, &dir.join("config.json")).unwrap();
    let model = Model::init_random(&cfg, seed, &Device::Cpu, DType::F32).unwrap();
    model.save(dir, escale_formats::DType::F32, &WriterOptions::default(), None, |_| Ok(())).unwrap();
    dir.to_path_buf()
}

/// A learnable token stream: documents that count upwards mod `period` from a random start,
/// so the next token is predictable from the previous one (loss can fall far below ln(V)).
pub fn write_counting_data(prefix: &Path, docs: usize, len: usize, period: u32, seed: u64) -> PathBuf {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let documents: Vec<Vec<u32>> = (0..docs)
        .map(|_| {
            let start = (next() % period as u64) as u32;
            (0..len as u32).map(|i| (start + i) % period).collect()
        })
        .collect();
    write_dataset(prefix, escale_data::DType::U16, &documents).unwrap();
    prefix.to_path_buf()
}

/// A small, fast run configuration on `model` / `data` writing to `output`.
pub fn small_run(model: &Path, data: &Path, output: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        output: output.to_path_buf(),
        seq_len: 16,
        micro_batch: 4,
        grad_accum: 1,
        steps: Some(steps),
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 2,
        threads: Some(1),
        dtype: TrainDType::F32,
        ..TrainConfig::default()
    }
}

/// Parsed lines of a JSONL log.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The fields of a step record that must be reproduced exactly (timing excluded).
pub fn deterministic_fields(v: &Value) -> Value {
    json!({"step": v["step"], "loss": v["loss"], "lr": v["lr"], "grad_norm": v["grad_norm"],
           "tokens": v["tokens"], "flops": v["flops"], "aux_loss": v["aux_loss"], "z_loss": v["z_loss"],
           "expert_load": v["expert_load"], "skipped": v["skipped"]})
}
