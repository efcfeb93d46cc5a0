//! `Qwen2MoeForCausalLM` output: routed experts `mlp.experts.N.gate/up/down_proj`, router
//! `mlp.gate`, a shared expert `mlp.shared_expert.*` with its sigmoid gate
//! `mlp.shared_expert_gate`, optional top-k renormalisation (`norm_topk_prob`), and QKV biases.
//! The only stock HF MoE class that can carry a qwen2 / Aquila source's QKV bias.

use escale_formats::{ModelConfig, ModelType};

use super::super::plan::SharedExpert;
use super::super::{Result, ScaleOutError, ScaleOutOptions};

pub(super) const MODEL_TYPE: ModelType = ModelType::Qwen2Moe;

/// A live shared expert must hold the whole dense MLP (at least `G` shards of `1/G`), or the
/// output could not be exact.
pub(super) fn check(o: &ScaleOutOptions) -> Result<()> {
    let (n, g) = (o.shared_experts, o.granularity);
    if n > 0 && n < g {
        return Err(ScaleOutError::option(
            "--shared-experts",
            format!(
                "{n} shards of 1/{g} of the FFN cannot hold the whole dense MLP, so the output could not be exact; \
                 use at least --granularity ({g}) shards, or 0 for the neutral shared expert"
            ),
        ));
    }
    Ok(())
}

/// The class always has a shared expert: neutral (inert) unless shards were asked for.
pub(super) fn shared_expert(o: &ScaleOutOptions) -> SharedExpert {
    match o.shared_experts {
        0 => SharedExpert::Neutral,
        shards => SharedExpert::Live { shards },
    }
}

/// transformers v4's Qwen2-MoE always has q/k/v biases; v5 reads `qkv_bias`. Writing biases
/// (zeros for a bias-free source) loads identically in both.
pub(super) fn edit_config(config: &mut ModelConfig) {
    config.qkv_bias = true;
}

pub(super) fn notes(source: &ModelConfig) -> Vec<String> {
    if source.sliding_window.is_some() && source.model_type == ModelType::Mistral {
        return vec!["the mistral source's sliding window is kept as written, but qwen2_moe applies it only with \
                     use_sliding_window; sequences longer than the window may differ"
            .into()];
    }
    Vec::new()
}
