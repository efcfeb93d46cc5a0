//! The fused kernels (RMSNorm, SwiGLU, RoPE, linear, causal attention) against the composite ops
//! through whole models: same logits and same gradients for every parameter, in f64, for families
//! that take each branch (GQA with biases, a sliding window shorter than the sequence, qwen3's
//! per-head q/k norms, MoE experts).

mod common;

use candle_core::{DType, Device, Tensor};
use escale_model::ops::set_fused_kernels;
use escale_model::{next_token_loss, Model};
use serde_json::json;

fn logits_and_grads(model: &Model, ids: &Tensor, fused: bool) -> (Tensor, Vec<(String, Tensor)>) {
    set_fused_kernels(fused);
    let out = model.forward(ids).unwrap();
    let grads = next_token_loss(&out.logits, ids).unwrap().backward().unwrap();
    set_fused_kernels(true);
    let per_param = model
        .named_parameters()
        .into_iter()
        .map(|(n, v)| {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{n}: no gradient (fused = {fused})")).clone();
            (n, g)
        })
        .collect();
    (out.logits, per_param)
}

fn check(label: &str, cfg: escale_formats::ModelConfig) {
    let model = Model::init_random(&cfg, 3, &Device::Cpu, DType::F64).unwrap();
    let ids = common::ids(&[&[1, 5, 9, 2, 33, 7, 7, 20, 4, 18], &[3, 3, 14, 0, 36, 11, 25, 4, 9, 9]]);
    let (lf, gf) = logits_and_grads(&model, &ids, true);
    let (lc, gc) = logits_and_grads(&model, &ids, false);
    let (d, scale) = common::max_diff(&lf, &lc);
    assert!(d <= 1e-12 * (1.0 + scale), "{label}: logits differ by {d}");
    for ((name, a), (_, b)) in gf.iter().zip(&gc) {
        let (d, scale) = common::max_diff(a, b);
        assert!(d <= 1e-11 * (1.0 + scale), "{label}: gradient of {name} differs by {d} (scale {scale})");
    }
}

#[test]
fn fused_and_composite_paths_agree_on_logits_and_gradients() {
    check("llama (biases, GQA)", common::tiny_config("llama"));
    check("qwen3 (q/k norms, head_dim 6)", common::tiny_config("qwen3"));
    check("mixtral", common::tiny_config("mixtral"));
    // mistral with a window of 3 over 10 positions: keys older than the window are masked.
    let mut raw = common::tiny_config("mistral").raw().clone();
    raw.insert("sliding_window".into(), json!(3));
    let cfg = escale_formats::ModelConfig::from_json(raw.into(), std::path::Path::new("tiny/config.json")).unwrap();
    assert_eq!(cfg.sliding_window, Some(3));
    check("mistral (sliding window 3)", cfg);
}
