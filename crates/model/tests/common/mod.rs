//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use escale_formats::ModelConfig;
use serde_json::{json, Value};

/// `../shared` next to the workspace root, or `None` (callers print a skip message).
pub fn shared_dir() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then(|| p.canonicalize().unwrap())
}

#[macro_export]
macro_rules! require_shared {
    () => {
        match common::shared_dir() {
            Some(d) => d,
            None => {
                eprintln!("SKIPPED: ../shared (test data) not found next to the workspace root");
                return;
            }
        }
    };
}

/// A tiny config of each family with every optional feature switched on that the family has.
pub fn tiny_config(model_type: &str) -> ModelConfig {
    let mut v = json!({
        "model_type": model_type, "vocab_size": 37, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "initializer_range": 0.2,
    });
    let o = v.as_object_mut().unwrap();
    match model_type {
        "llama" => {
            o.insert("attention_bias".into(), Value::Bool(true));
            o.insert("mlp_bias".into(), Value::Bool(true));
        }
        "mixtral" => {
            o.insert("num_local_experts".into(), json!(4));
            o.insert("num_experts_per_tok".into(), json!(2));
        }
        "qwen2_moe" => {
            o.insert("num_experts".into(), json!(4));
            o.insert("num_experts_per_tok".into(), json!(2));
            o.insert("moe_intermediate_size".into(), json!(12));
            o.insert("shared_expert_intermediate_size".into(), json!(20));
            o.insert("norm_topk_prob".into(), json!(false));
        }
        // head_dim 6 while hidden/heads is 4, with q/k/v/o biases.
        "qwen3" => {
            o.insert("head_dim".into(), json!(6));
            o.insert("attention_bias".into(), json!(true));
        }
        "qwen3_moe" => {
            o.insert("head_dim".into(), json!(6));
            o.insert("num_experts".into(), json!(4));
            o.insert("num_experts_per_tok".into(), json!(2));
            o.insert("moe_intermediate_size".into(), json!(12));
            o.insert("norm_topk_prob".into(), json!(false));
        }
        _ => {}
    }
    ModelConfig::from_json(v, std::path::Path::new("tiny/config.json")).unwrap()
}

pub fn ids(rows: &[&[u32]]) -> Tensor {
    Tensor::new(rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), &Device::Cpu).unwrap()
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// (max |a-b|, max |a|)
pub fn max_diff(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (to_f64(a), to_f64(b));
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    (d, a.iter().map(|x| x.abs()).fold(0.0, f64::max))
}
