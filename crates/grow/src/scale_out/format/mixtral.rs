//! `MixtralForCausalLM` output: routed experts `block_sparse_moe.experts.N.w1/w2/w3`, router
//! `block_sparse_moe.gate`, no shared expert, always-renormalised top-k routing, and no attention
//! biases at all; every layer is sparse.

use escale_formats::{ModelConfig, ModelType};

use super::super::plan::ScaleOutPlan;
use super::super::{Result, ScaleOutError, ScaleOutOptions};

pub(super) const MODEL_TYPE: ModelType = ModelType::Mixtral;

/// Mixtral refuses what it has no field for: QKV biases, un-renormalised routing, a shared expert.
pub(super) fn check(source: &ModelConfig, o: &ScaleOutOptions) -> Result<()> {
    if source.qkv_bias {
        return Err(ScaleOutError::option(
            "--format",
            format!(
                "mixtral cannot carry the source's QKV bias ({} has q/k/v_proj biases and Mixtral has no attention-bias \
                 option); use --format qwen2_moe",
                source.model_type
            ),
        ));
    }
    if !o.renormalize {
        return Err(ScaleOutError::option(
            "--no-renormalize",
            "Mixtral always renormalises its top-k weights; use --format qwen2_moe for norm_topk_prob=false",
        ));
    }
    if o.shared_experts > 0 {
        return Err(ScaleOutError::option("--shared-experts", "Mixtral has no shared expert; use --format qwen2_moe"));
    }
    if o.sparse_step != 1 || !o.dense_layers.is_empty() {
        let flag = if o.sparse_step != 1 { "--sparse-step" } else { "--dense-layers" };
        return Err(ScaleOutError::option(
            flag,
            "Mixtral makes every layer sparse (no decoder_sparse_step or mlp_only_layers); use --format qwen2_moe or qwen3_moe",
        ));
    }
    Ok(())
}

/// Mixtral has a single FFN size, the expert's.
pub(super) fn edit_config(config: &mut ModelConfig, plan: &ScaleOutPlan) {
    config.intermediate_size = plan.expert_ffn;
}
