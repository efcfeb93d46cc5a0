//! The one place that knows Hugging Face tensor names.
//!
//! A checkpoint tensor is identified logically by a [`Param`] (which layer, which weight, which
//! expert); [`hf_name`] and [`parse_hf_name`] translate to and from the HF spelling of each family,
//! and [`expected_params`] lists every tensor (with its shape) that a config implies, in the order
//! transformers' `state_dict()` produces them. Readers validate against it, writers follow it.

use crate::config::{ModelConfig, ModelType};

/// Where an MLP's weights live: the dense MLP, routed expert `e`, or the qwen2_moe shared expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MlpSite {
    Dense,
    Expert(usize),
    Shared,
}

/// One of the three SwiGLU matrices (gate, up, down), weight or bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MlpPart {
    Gate,
    Up,
    Down,
    GateBias,
    UpBias,
    DownBias,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerParam {
    InputNorm,
    PostAttnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    OBias,
    /// qwen3 / qwen3_moe per-head RMSNorm weights `[head_dim]` on queries and keys.
    QNorm,
    KNorm,
    Mlp(MlpSite, MlpPart),
    /// Router `[experts, hidden]` (mixtral `block_sparse_moe.gate`, qwen2_moe `mlp.gate`).
    Router,
    /// qwen2_moe `mlp.shared_expert_gate.weight` `[1, hidden]`.
    SharedExpertGate,
}

/// A logical parameter of a decoder-only LM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    Embed,
    Layer(usize, LayerParam),
    FinalNorm,
    LmHead,
}

fn mlp_part_name(model_type: ModelType, site: MlpSite, part: MlpPart) -> &'static str {
    // Mixtral's classic hub layout names expert matrices w1 (gate), w3 (up), w2 (down).
    if model_type == ModelType::Mixtral && matches!(site, MlpSite::Expert(_)) {
        return match part {
            MlpPart::Gate => "w1.weight",
            MlpPart::Up => "w3.weight",
            MlpPart::Down => "w2.weight",
            MlpPart::GateBias => "w1.bias",
            MlpPart::UpBias => "w3.bias",
            MlpPart::DownBias => "w2.bias",
        };
    }
    match part {
        MlpPart::Gate => "gate_proj.weight",
        MlpPart::Up => "up_proj.weight",
        MlpPart::Down => "down_proj.weight",
        MlpPart::GateBias => "gate_proj.bias",
        MlpPart::UpBias => "up_proj.bias",
        MlpPart::DownBias => "down_proj.bias",
    }
}

fn moe_block(model_type: ModelType) -> &'static str {
    if model_type == ModelType::Mixtral {
        "block_sparse_moe"
    } else {
        "mlp"
    }
}

/// HF tensor name of a logical parameter for the given family.
pub fn hf_name(model_type: ModelType, param: Param) -> String {
    match param {
        Param::Embed => "model.embed_tokens.weight".into(),
        Param::FinalNorm => "model.norm.weight".into(),
        Param::LmHead => "lm_head.weight".into(),
        Param::Layer(l, p) => {
            let suffix = match p {
                LayerParam::InputNorm => "input_layernorm.weight".to_string(),
                LayerParam::PostAttnNorm => "post_attention_layernorm.weight".to_string(),
                LayerParam::Q => "self_attn.q_proj.weight".to_string(),
                LayerParam::K => "self_attn.k_proj.weight".to_string(),
                LayerParam::V => "self_attn.v_proj.weight".to_string(),
                LayerParam::O => "self_attn.o_proj.weight".to_string(),
                LayerParam::QBias => "self_attn.q_proj.bias".to_string(),
                LayerParam::KBias => "self_attn.k_proj.bias".to_string(),
                LayerParam::VBias => "self_attn.v_proj.bias".to_string(),
                LayerParam::OBias => "self_attn.o_proj.bias".to_string(),
                LayerParam::QNorm => "self_attn.q_norm.weight".to_string(),
                LayerParam::KNorm => "self_attn.k_norm.weight".to_string(),
                LayerParam::Router => format!("{}.gate.weight", moe_block(model_type)),
                LayerParam::SharedExpertGate => "mlp.shared_expert_gate.weight".to_string(),
                LayerParam::Mlp(site, part) => {
                    let leaf = mlp_part_name(model_type, site, part);
                    match site {
                        MlpSite::Dense => format!("mlp.{leaf}"),
                        MlpSite::Expert(e) => format!("{}.experts.{e}.{leaf}", moe_block(model_type)),
                        MlpSite::Shared => format!("mlp.shared_expert.{leaf}"),
                    }
                }
            };
            format!("model.layers.{l}.{suffix}")
        }
    }
}

/// Inverse of [`hf_name`]; `None` for names this family does not use.
pub fn parse_hf_name(model_type: ModelType, name: &str) -> Option<Param> {
    match name {
        "model.embed_tokens.weight" => return Some(Param::Embed),
        "model.norm.weight" => return Some(Param::FinalNorm),
        "lm_head.weight" => return Some(Param::LmHead),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, _) = rest.split_once('.')?;
    let l: usize = layer.parse().ok()?;
    // Reconstructing and comparing keeps this exactly the inverse of `hf_name` without a
    // second hand-written grammar; the candidate set per layer is small.
    candidate_layer_params(rest).find(|p| hf_name(model_type, Param::Layer(l, *p)) == name).map(|p| Param::Layer(l, p))
}

fn candidate_layer_params(rest: &str) -> impl Iterator<Item = LayerParam> {
    // Expert index, if the name mentions one.
    let expert = rest
        .split_once(".experts.")
        .and_then(|(_, tail)| tail.split_once('.'))
        .and_then(|(e, _)| e.parse::<usize>().ok());
    let parts = [MlpPart::Gate, MlpPart::Up, MlpPart::Down, MlpPart::GateBias, MlpPart::UpBias, MlpPart::DownBias];
    let mut sites = vec![MlpSite::Dense, MlpSite::Shared];
    if let Some(e) = expert {
        sites.push(MlpSite::Expert(e));
    }
    let fixed = [
        LayerParam::InputNorm,
        LayerParam::PostAttnNorm,
        LayerParam::Q,
        LayerParam::K,
        LayerParam::V,
        LayerParam::O,
        LayerParam::QBias,
        LayerParam::KBias,
        LayerParam::VBias,
        LayerParam::OBias,
        LayerParam::QNorm,
        LayerParam::KNorm,
        LayerParam::Router,
        LayerParam::SharedExpertGate,
    ];
    let mlp: Vec<LayerParam> =
        sites.iter().flat_map(|s| parts.iter().map(move |p| LayerParam::Mlp(*s, *p))).collect();
    fixed.into_iter().chain(mlp)
}

fn mlp_params(cfg: &ModelConfig, l: usize, site: MlpSite, ffn: usize, out: &mut Vec<(Param, Vec<usize>)>) {
    let h = cfg.hidden_size;
    let mut push = |p: MlpPart, shape: Vec<usize>| out.push((Param::Layer(l, LayerParam::Mlp(site, p)), shape));
    push(MlpPart::Gate, vec![ffn, h]);
    if cfg.mlp_bias {
        push(MlpPart::GateBias, vec![ffn]);
    }
    push(MlpPart::Up, vec![ffn, h]);
    if cfg.mlp_bias {
        push(MlpPart::UpBias, vec![ffn]);
    }
    push(MlpPart::Down, vec![h, ffn]);
    if cfg.mlp_bias {
        push(MlpPart::DownBias, vec![h]);
    }
}

/// Every parameter a config implies, with its shape, in transformers' `state_dict()` order.
/// `lm_head` is omitted when embeddings are tied.
pub fn expected_params(cfg: &ModelConfig) -> Vec<(Param, Vec<usize>)> {
    let h = cfg.hidden_size;
    let q_out = cfg.num_attention_heads * cfg.head_dim;
    let kv_out = cfg.num_key_value_heads * cfg.head_dim;
    let mut out = vec![(Param::Embed, vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        let mut push = |p: LayerParam, shape: Vec<usize>| out.push((Param::Layer(l, p), shape));
        push(LayerParam::Q, vec![q_out, h]);
        if cfg.qkv_bias {
            push(LayerParam::QBias, vec![q_out]);
        }
        push(LayerParam::K, vec![kv_out, h]);
        if cfg.qkv_bias {
            push(LayerParam::KBias, vec![kv_out]);
        }
        push(LayerParam::V, vec![kv_out, h]);
        if cfg.qkv_bias {
            push(LayerParam::VBias, vec![kv_out]);
        }
        push(LayerParam::O, vec![h, q_out]);
        if cfg.o_bias {
            push(LayerParam::OBias, vec![h]);
        }
        if cfg.model_type.has_qk_norm() {
            push(LayerParam::QNorm, vec![cfg.head_dim]);
            push(LayerParam::KNorm, vec![cfg.head_dim]);
        }
        match (&cfg.moe, cfg.is_moe_layer(l)) {
            (Some(m), true) => {
                out.push((Param::Layer(l, LayerParam::Router), vec![m.num_experts, h]));
                for e in 0..m.num_experts {
                    mlp_params(cfg, l, MlpSite::Expert(e), m.expert_intermediate_size, &mut out);
                }
                if cfg.model_type == ModelType::Qwen2Moe {
                    mlp_params(cfg, l, MlpSite::Shared, m.shared_expert_intermediate_size, &mut out);
                    out.push((Param::Layer(l, LayerParam::SharedExpertGate), vec![1, h]));
                }
            }
            _ => mlp_params(cfg, l, MlpSite::Dense, cfg.intermediate_size, &mut out),
        }
        out.push((Param::Layer(l, LayerParam::InputNorm), vec![h]));
        out.push((Param::Layer(l, LayerParam::PostAttnNorm), vec![h]));
    }
    out.push((Param::FinalNorm, vec![h]));
    if !cfg.tie_word_embeddings {
        out.push((Param::LmHead, vec![cfg.vocab_size, h]));
    }
    out
}

/// Parameter counts as people quote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParamCounts {
    /// Every stored parameter (tied embeddings counted once).
    pub total: u64,
    /// Parameters used for one token: routed experts counted `top_k` times out of `num_experts`.
    pub active: u64,
    /// Input embedding parameters.
    pub embedding: u64,
    /// Untied LM head parameters (0 when tied).
    pub lm_head: u64,
}

impl ParamCounts {
    /// Active parameters outside the embedding and LM head: the `N` of the `6N` FLOPs rule.
    pub fn active_non_embedding(&self) -> u64 {
        self.active - self.embedding - self.lm_head
    }
}

pub fn param_counts(cfg: &ModelConfig) -> ParamCounts {
    let (mut total, mut active, mut embedding, mut lm_head) = (0u64, 0u64, 0u64, 0u64);
    let top_k_share = cfg.moe.as_ref().map(|m| (m.num_experts_per_tok as u64, m.num_experts as u64));
    for (param, shape) in expected_params(cfg) {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        total += n;
        match param {
            Param::Embed => embedding += n,
            Param::LmHead => lm_head += n,
            _ => {}
        }
        active += match (param, top_k_share) {
            (Param::Layer(_, LayerParam::Mlp(MlpSite::Expert(_), _)), Some((k, e))) => n * k / e,
            _ => n,
        };
    }
    ParamCounts { total, active, embedding, lm_head }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn cfg(v: serde_json::Value) -> ModelConfig {
        ModelConfig::from_json(v, Path::new("config.json")).unwrap()
    }

    #[test]
    fn mixtral_and_qwen2_moe_names() {
        let p = Param::Layer(3, LayerParam::Mlp(MlpSite::Expert(5), MlpPart::Up));
        assert_eq!(hf_name(ModelType::Mixtral, p), "model.layers.3.block_sparse_moe.experts.5.w3.weight");
        assert_eq!(hf_name(ModelType::Qwen2Moe, p), "model.layers.3.mlp.experts.5.up_proj.weight");
        let r = Param::Layer(0, LayerParam::Router);
        assert_eq!(hf_name(ModelType::Mixtral, r), "model.layers.0.block_sparse_moe.gate.weight");
        assert_eq!(hf_name(ModelType::Qwen2Moe, r), "model.layers.0.mlp.gate.weight");
        let s = Param::Layer(1, LayerParam::Mlp(MlpSite::Shared, MlpPart::Down));
        assert_eq!(hf_name(ModelType::Qwen2Moe, s), "model.layers.1.mlp.shared_expert.down_proj.weight");
        assert_eq!(
            hf_name(ModelType::Qwen2Moe, Param::Layer(1, LayerParam::SharedExpertGate)),
            "model.layers.1.mlp.shared_expert_gate.weight"
        );
    }

    #[test]
    fn parse_inverts_hf_name_for_every_expected_tensor() {
        let configs = [
            json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "attention_bias": true, "mlp_bias": true}),
            json!({"model_type": "mixtral", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "num_local_experts": 3}),
            json!({"model_type": "qwen2_moe", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "num_experts": 12, "moe_intermediate_size": 4,
                   "shared_expert_intermediate_size": 8, "num_experts_per_tok": 2}),
            json!({"model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 6, "attention_bias": true}),
            json!({"model_type": "qwen3_moe", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
                   "num_hidden_layers": 3, "num_attention_heads": 2, "num_experts": 3, "moe_intermediate_size": 4,
                   "num_experts_per_tok": 2, "mlp_only_layers": [1]}),
        ];
        for c in configs {
            let c = cfg(c);
            for (p, _) in expected_params(&c) {
                let name = hf_name(c.model_type, p);
                assert_eq!(parse_hf_name(c.model_type, &name), Some(p), "{name}");
            }
        }
        assert_eq!(parse_hf_name(ModelType::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn qwen3_q_and_k_norms_act_on_head_dim() {
        let c = cfg(json!({"model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 6}));
        let params = expected_params(&c);
        let names: Vec<String> = params.iter().map(|(p, _)| hf_name(c.model_type, *p)).collect();
        // transformers' state_dict order: projections, then q_norm and k_norm, then the MLP.
        assert_eq!(names[1..7], [
            "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"]);
        assert_eq!((params[1].1.clone(), params[5].1.clone(), params[6].1.clone()), (vec![24, 8], vec![6], vec![6]));
        let moe = cfg(json!({"model_type": "qwen3_moe", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_experts": 3, "moe_intermediate_size": 4,
            "num_experts_per_tok": 1}));
        let names: Vec<String> = expected_params(&moe).iter().map(|(p, _)| hf_name(moe.model_type, *p)).collect();
        assert!(names.contains(&"model.layers.0.mlp.gate.weight".to_string()));
        assert!(names.contains(&"model.layers.0.mlp.experts.2.down_proj.weight".to_string()));
        assert!(names.iter().all(|n| !n.contains("shared_expert")), "qwen3_moe has no shared expert: {names:?}");
    }

    #[test]
    fn stories260k_counts() {
        // The real model in shared/testdata: 260,032 parameters, tied.
        let c = cfg(json!({"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
            "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
            "tie_word_embeddings": true}));
        let n = param_counts(&c);
        assert_eq!(n.total, 260_032);
        assert_eq!(n.active, n.total);
        assert_eq!(n.lm_head, 0);
        assert_eq!(n.embedding, 512 * 64);
    }

    #[test]
    fn moe_active_counts_only_top_k_experts() {
        let c = cfg(json!({"model_type": "mixtral", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2}));
        let n = param_counts(&c);
        let expert = 3 * 8 * 12;
        assert_eq!(n.total - n.active, 6 * expert);
    }
}
