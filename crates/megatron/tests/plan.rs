//! The HF -> Megatron-Core plan and arguments, without Python: every HF row lands exactly once,
//! the fused QKV follows megatron-core's per-group order, the router convention and the refusals.

use std::collections::BTreeMap;
use std::path::Path;

use escale_formats::naming::{expected_params, LayerParam, Param};
use escale_formats::{DType, ModelConfig};
use escale_megatron::args::{check_supported, megatron_args, model_description, render_flagscale, render_shell};
use escale_megatron::mapping::plan;
use escale_megatron::MegatronError;
use serde_json::{json, Value};

fn config(extra: Value) -> ModelConfig {
    let mut base = json!({
        "model_type": "qwen2_moe", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "tie_word_embeddings": false,
        "hidden_act": "silu", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 48, "norm_topk_prob": false, "mlp_only_layers": [1],
        "qkv_bias": true
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    ModelConfig::from_json(base, Path::new("config.json")).unwrap()
}

#[test]
fn every_hf_row_is_placed_exactly_once() {
    for cfg in [
        config(json!({})),
        config(json!({"model_type": "llama", "tie_word_embeddings": true})),
        config(json!({"model_type": "mixtral", "num_local_experts": 4})),
        config(json!({"model_type": "qwen3", "head_dim": 16})),
        config(json!({"model_type": "qwen3_moe", "head_dim": 16, "norm_topk_prob": true}))] {
        let tensors = plan(&cfg);
        let mut rows: BTreeMap<Param, Vec<u32>> = expected_params(&cfg).into_iter().map(|(p, s)| (p, vec![0; s[0]])).collect();
        for t in &tensors {
            let placed: usize = t.blocks.iter().map(|b| b.rows.len()).sum();
            assert_eq!(placed, t.shape[0], "{}: blocks fill its rows", t.name);
            for b in &t.blocks {
                let r = rows.get_mut(&b.param).unwrap_or_else(|| panic!("{}: {:?} is not a parameter of the config", t.name, b.param));
                for c in &mut r[b.rows.clone()] {
                    *c += 1;
                }
            }
        }
        for (p, r) in rows {
            assert!(r.iter().all(|&c| c == 1), "{:?} ({}): rows placed {:?} times", p, cfg.model_type, r);
        }
    }
}

#[test]
fn fused_qkv_is_interleaved_per_query_group() {
    let cfg = config(json!({}));
    let qkv = plan(&cfg).into_iter().find(|t| t.name == "decoder.layers.0.self_attention.linear_qkv.weight").unwrap();
    // 4 query heads over 2 groups, head_dim 8: [q0 q1 k0 v0 | q2 q3 k1 v1].
    let q = |r: std::ops::Range<usize>| (Param::Layer(0, LayerParam::Q), r);
    let k = |r: std::ops::Range<usize>| (Param::Layer(0, LayerParam::K), r);
    let v = |r: std::ops::Range<usize>| (Param::Layer(0, LayerParam::V), r);
    let got: Vec<_> = qkv.blocks.iter().map(|b| (b.param, b.rows.clone())).collect();
    assert_eq!(got, vec![q(0..16), k(0..8), v(0..8), q(16..32), k(8..16), v(8..16)]);
    assert_eq!(qkv.shape, vec![(4 + 2 * 2) * 8, 32]);
}

#[test]
fn router_convention_layers_and_arguments() {
    let cfg = config(json!({}));
    let d = model_description(&cfg, DType::BF16).unwrap();
    let tc = &d["transformer_config"];
    assert_eq!(tc["moe_router_pre_softmax"], json!(true), "norm_topk_prob false = softmax over all experts");
    assert_eq!(tc["moe_layer_freq"], json!([1, 0, 1]), "mlp_only_layers [1]");
    assert_eq!(tc["moe_shared_expert_gate"], json!(true));
    assert_eq!(d["params_dtype"], json!("bfloat16"));
    let renorm = config(json!({"norm_topk_prob": true}));
    assert_eq!(model_description(&renorm, DType::F32).unwrap()["transformer_config"]["moe_router_pre_softmax"], json!(false));
    // qwen3's per-head q/k norms are mcore's qk_layernorm; no other family has them.
    assert_eq!(model_description(&cfg, DType::F32).unwrap()["transformer_config"]["qk_layernorm"], json!(false));
    let qwen3 = config(json!({"model_type": "qwen3_moe", "head_dim": 16, "norm_topk_prob": true}));
    assert_eq!(model_description(&qwen3, DType::F32).unwrap()["transformer_config"]["qk_layernorm"], json!(true));
    assert!(render_shell(&megatron_args(&qwen3, "/c", "/c/hf").unwrap(), "t").contains("--qk-layernorm\n"));

    let args = megatron_args(&cfg, "/ckpt", "/ckpt/hf").unwrap();
    let sh = render_shell(&args, "test");
    for needle in ["--num-query-groups 2", "--moe-router-pre-softmax\n", "--moe-layer-freq '[1,0,1]'", "--add-qkv-bias", "--load /ckpt", "--ckpt-format torch_dist", "--moe-shared-expert-intermediate-size 48", "--untie-embeddings-and-output-weights"] {
        assert!(sh.contains(needle), "megatron_args.sh lacks `{needle}`:\n{sh}");
    }
    let yaml = render_flagscale(&args, "test");
    let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(parsed["system"]["checkpoint"]["ckpt_format"], serde_yaml::Value::from("torch_dist"));
    assert_eq!(parsed["model"]["num_experts"], serde_yaml::Value::from(4));
    assert_eq!(parsed["model"]["moe_router_pre_softmax"], serde_yaml::Value::from(true));
    assert_eq!(parsed["data"]["tokenizer"]["tokenizer_model"], serde_yaml::Value::from("/ckpt/hf"));
}

fn refused_field(cfg: &ModelConfig) -> String {
    match check_supported(cfg) {
        Err(MegatronError::Unsupported { field, reason, .. }) => {
            assert!(!reason.is_empty());
            field
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn what_megatron_core_cannot_carry_is_refused_with_the_field() {
    assert_eq!(refused_field(&config(json!({"model_type": "llama", "attention_bias": true}))), "attention_bias");
    assert_eq!(refused_field(&config(json!({"model_type": "llama", "mlp_bias": true}))), "mlp_bias");
    assert_eq!(refused_field(&config(json!({"model_type": "mistral", "sliding_window": 64}))), "sliding_window");
    assert_eq!(refused_field(&config(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))), "rope_scaling");
    // Accepted: a window no shorter than the context, qwen2's unused window, linear RoPE scaling.
    check_supported(&config(json!({"model_type": "mistral", "sliding_window": 4096}))).unwrap();
    check_supported(&config(json!({"sliding_window": 64, "use_sliding_window": false}))).unwrap();
    let linear = config(json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}));
    assert_eq!(model_description(&linear, DType::F32).unwrap()["gpt_model"]["seq_len_interpolation_factor"], json!(2.0));
}
