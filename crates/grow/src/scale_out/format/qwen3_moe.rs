//! `Qwen3MoeForCausalLM` output: routed experts `mlp.experts.N.gate/up/down_proj`, router
//! `mlp.gate`, no shared expert, optional top-k renormalisation (`norm_topk_prob`), the layer
//! pattern fields (`decoder_sparse_step`, `mlp_only_layers`: the dense layers keep the source MLP
//! as `mlp.gate/up/down_proj` of size `intermediate_size`), and the per-head q/k RMSNorm of qwen3
//! (`self_attn.q_norm` / `k_norm`, copied). The default, and the only possible, format for a qwen3
//! source: no other stock MoE class normalises queries and keys.

use escale_formats::{ModelConfig, ModelType};

use super::super::{Result, ScaleOutError, ScaleOutOptions};

pub(super) const MODEL_TYPE: ModelType = ModelType::Qwen3Moe;

/// Qwen3-MoE applies q/k norms on every layer and has no shared expert: it can carry only a
/// source that has them (qwen3), and refuses shared-expert shards.
pub(super) fn check(source: &ModelConfig, o: &ScaleOutOptions) -> Result<()> {
    if !source.model_type.has_qk_norm() {
        return Err(ScaleOutError::option(
            "--format",
            format!(
                "qwen3_moe RMS-normalises every query and key head (q_norm / k_norm); a {} source has no such norm and \
                 no weight makes it the identity, so the output could not equal the source; use --format mixtral or \
                 qwen2_moe",
                source.model_type
            ),
        ));
    }
    if o.shared_experts > 0 {
        return Err(ScaleOutError::option("--shared-experts", "Qwen3-MoE has no shared expert; use 0 (or a qwen2 source and --format qwen2_moe)"));
    }
    Ok(())
}

/// The layers escale treats as sliding-window ones in the source, against qwen3_moe's rule: one
/// window on every layer when `use_sliding_window`. A qwen3 source whose window covers only the
/// layers from `max_window_layers` on cannot be reproduced on sequences longer than the window.
pub(super) fn notes(source: &ModelConfig) -> Vec<String> {
    let raw = source.raw();
    let on = raw.get("use_sliding_window").and_then(serde_json::Value::as_bool).unwrap_or(false);
    let from = raw.get("max_window_layers").and_then(serde_json::Value::as_u64).unwrap_or(28) as usize;
    if on && source.sliding_window.is_some() && from > 0 {
        return vec![format!(
            "the qwen3 source slides its attention window only from layer {from} on; qwen3_moe slides it on every layer, \
             so sequences longer than the window ({}) may differ",
            source.sliding_window.unwrap_or_default()
        )];
    }
    Vec::new()
}
