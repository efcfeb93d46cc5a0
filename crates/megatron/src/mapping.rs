//! HF tensor <-> Megatron-Core tensor, as a plan of row blocks.
//!
//! Every Megatron-Core tensor (local layer spec names, as `GPTModel.state_dict()` spells them) is
//! the concatenation, along its first axis, of row ranges of HF tensors. A copy is one block; the
//! fused `linear_fc1` is `[gate; up]`; the fused `linear_qkv` is interleaved per query group:
//! for each KV group g, the q heads of g, then k_g, then v_g (plain `[q; k; v]` is wrong as soon as
//! there is more than one group). Rows of a 2-D `[r, c]` tensor are contiguous in row-major order
//! (a 1-D tensor's rows are its elements), so export and import are byte copies of row ranges in
//! opposite directions: HF -> Megatron -> HF is bit-identical by construction, and each tensor
//! streams from the memory map without a full copy.

use std::ops::Range;

use escale_formats::{ModelConfig, naming::{LayerParam, MlpPart, MlpSite, Param}};

/// Rows `rows` of HF parameter `param`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub param: Param,
    pub rows: Range<usize>,
}

/// One Megatron-Core tensor: its name, shape and the HF row blocks it is made of, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McoreTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub blocks: Vec<Block>,
}

impl McoreTensor {
    /// Elements per row (1 for a vector).
    pub fn row_len(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

fn whole(param: Param, rows: usize) -> Block {
    Block { param, rows: 0..rows }
}

/// `[q heads of group g; k_g; v_g]` for every group g: the order of mcore's fused QKV projection
/// (weight rows or bias elements, `head_dim` per head).
fn qkv_blocks(cfg: &ModelConfig, q: Param, k: Param, v: Param) -> Vec<Block> {
    let (d, per_group) = (cfg.head_dim, cfg.group_size());
    (0..cfg.num_key_value_heads)
        .flat_map(|g| {
            [
                Block { param: q, rows: g * per_group * d..(g + 1) * per_group * d },
                Block { param: k, rows: g * d..(g + 1) * d },
                Block { param: v, rows: g * d..(g + 1) * d },
            ]
        })
        .collect()
}

/// The SwiGLU MLP at `site` of layer `l` under the mcore prefix `prefix` (`mlp`,
/// `mlp.experts.local_experts.E`, `mlp.shared_experts`).
fn swiglu(out: &mut Vec<McoreTensor>, cfg: &ModelConfig, l: usize, site: MlpSite, prefix: &str, ffn: usize) {
    let p = |part| Param::Layer(l, LayerParam::Mlp(site, part));
    let h = cfg.hidden_size;
    out.push(McoreTensor {
        name: format!("decoder.layers.{l}.{prefix}.linear_fc1.weight"),
        shape: vec![2 * ffn, h],
        blocks: vec![whole(p(MlpPart::Gate), ffn), whole(p(MlpPart::Up), ffn)],
    });
    out.push(McoreTensor {
        name: format!("decoder.layers.{l}.{prefix}.linear_fc2.weight"),
        shape: vec![h, ffn],
        blocks: vec![whole(p(MlpPart::Down), h)],
    });
}

fn layer(out: &mut Vec<McoreTensor>, cfg: &ModelConfig, l: usize) {
    let (h, d) = (cfg.hidden_size, cfg.head_dim);
    let lp = |p| Param::Layer(l, p);
    let name = |suffix: &str| format!("decoder.layers.{l}.{suffix}");
    let qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d;
    out.push(McoreTensor { name: name("input_layernorm.weight"), shape: vec![h], blocks: vec![whole(lp(LayerParam::InputNorm), h)] });
    out.push(McoreTensor {
        name: name("self_attention.linear_qkv.weight"),
        shape: vec![qkv_rows, h],
        blocks: qkv_blocks(cfg, lp(LayerParam::Q), lp(LayerParam::K), lp(LayerParam::V)),
    });
    if cfg.qkv_bias {
        out.push(McoreTensor {
            name: name("self_attention.linear_qkv.bias"),
            shape: vec![qkv_rows],
            blocks: qkv_blocks(cfg, lp(LayerParam::QBias), lp(LayerParam::KBias), lp(LayerParam::VBias)),
        });
    }
    if cfg.model_type.has_qk_norm() {
        // qwen3's per-head RMSNorm of queries and keys (`[head_dim]`, before RoPE) is mcore's
        // `qk_layernorm` (`model_description` switches it on).
        out.push(McoreTensor { name: name("self_attention.q_layernorm.weight"), shape: vec![d], blocks: vec![whole(lp(LayerParam::QNorm), d)] });
        out.push(McoreTensor { name: name("self_attention.k_layernorm.weight"), shape: vec![d], blocks: vec![whole(lp(LayerParam::KNorm), d)] });
    }
    out.push(McoreTensor {
        name: name("self_attention.linear_proj.weight"),
        shape: vec![h, cfg.num_attention_heads * d],
        blocks: vec![whole(lp(LayerParam::O), h)],
    });
    out.push(McoreTensor { name: name("pre_mlp_layernorm.weight"), shape: vec![h], blocks: vec![whole(lp(LayerParam::PostAttnNorm), h)] });
    match (&cfg.moe, cfg.is_moe_layer(l)) {
        (Some(moe), true) => {
            out.push(McoreTensor {
                name: name("mlp.router.weight"),
                shape: vec![moe.num_experts, h],
                blocks: vec![whole(lp(LayerParam::Router), moe.num_experts)],
            });
            for e in 0..moe.num_experts {
                let prefix = format!("mlp.experts.local_experts.{e}");
                swiglu(out, cfg, l, MlpSite::Expert(e), &prefix, moe.expert_intermediate_size);
            }
            if moe.shared_expert_intermediate_size > 0 {
                swiglu(out, cfg, l, MlpSite::Shared, "mlp.shared_experts", moe.shared_expert_intermediate_size);
                out.push(McoreTensor {
                    name: name("mlp.shared_experts.gate_weight"),
                    shape: vec![1, h],
                    blocks: vec![whole(lp(LayerParam::SharedExpertGate), 1)],
                });
            }
        }
        _ => swiglu(out, cfg, l, MlpSite::Dense, "mlp", cfg.intermediate_size),
    }
}

/// Every Megatron-Core tensor of `cfg`'s model, in `GPTModel.state_dict()` order. The config must
/// have passed [`crate::args::check_supported`] (no o_proj / MLP biases).
pub fn plan(cfg: &ModelConfig) -> Vec<McoreTensor> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![McoreTensor { name: "embedding.word_embeddings.weight".into(), shape: vec![v, h], blocks: vec![whole(Param::Embed, v)] }];
    for l in 0..cfg.num_hidden_layers {
        layer(&mut out, cfg, l);
    }
    out.push(McoreTensor { name: "decoder.final_layernorm.weight".into(), shape: vec![h], blocks: vec![whole(Param::FinalNorm, h)] });
    if !cfg.tie_word_embeddings {
        out.push(McoreTensor { name: "output_layer.weight".into(), shape: vec![v, h], blocks: vec![whole(Param::LmHead, v)] });
    }
    out
}
