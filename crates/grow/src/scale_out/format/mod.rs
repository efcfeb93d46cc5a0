//! The MoE output formats of a scale-out, one file each (as mergekit keeps one writer per output
//! format): what each format is called, which sources and options it refuses and why, its
//! shared expert and its `config.json` fields. Tensor names follow from the format's model type
//! through [`escale_formats::naming`], which the reader and the model engine share.

mod mixtral;
mod qwen2_moe;
mod qwen3_moe;

use escale_formats::{ModelConfig, ModelType};

use super::plan::{ScaleOutPlan, SharedExpert};
use super::{Result, ScaleOutError, ScaleOutOptions};

/// Output layout of the MoE checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MoeFormat {
    /// `MixtralForCausalLM`, classic hub names (`block_sparse_moe.experts.N.w1/w2/w3`). Always
    /// renormalises top-k weights; cannot carry attention biases.
    Mixtral,
    /// `Qwen2MoeForCausalLM`: the only stock HF MoE class with QKV bias (Aquila's case). Always
    /// has a shared expert, which escale either neutralises or fills (see [`SharedExpert`]).
    #[cfg_attr(feature = "clap", value(name = "qwen2_moe", alias = "qwen2-moe"))]
    Qwen2Moe,
    /// `Qwen3MoeForCausalLM`: per-head q/k RMSNorm, no shared expert, optional renormalisation;
    /// the default, and the only format, for a qwen3 source.
    #[cfg_attr(feature = "clap", value(name = "qwen3_moe", alias = "qwen3-moe"))]
    Qwen3Moe,
}

impl MoeFormat {
    pub fn model_type(self) -> ModelType {
        match self {
            MoeFormat::Mixtral => mixtral::MODEL_TYPE,
            MoeFormat::Qwen2Moe => qwen2_moe::MODEL_TYPE,
            MoeFormat::Qwen3Moe => qwen3_moe::MODEL_TYPE,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.model_type().as_str()
    }

    /// `--format`, or when unset the format that can hold the source: qwen3_moe for a qwen3
    /// source (q/k norms), qwen2_moe for a source with QKV bias, else mixtral.
    pub fn resolve(source: &ModelConfig, options: &ScaleOutOptions) -> MoeFormat {
        match options.format {
            Some(f) => f,
            None if source.model_type.has_qk_norm() => MoeFormat::Qwen3Moe,
            None if source.qkv_bias => MoeFormat::Qwen2Moe,
            None => MoeFormat::Mixtral,
        }
    }

    /// Refuses a source or options this format cannot hold, saying why.
    pub fn check(self, source: &ModelConfig, options: &ScaleOutOptions) -> Result<()> {
        if source.model_type.has_qk_norm() && !self.model_type().has_qk_norm() {
            return Err(ScaleOutError::option(
                "--format",
                format!(
                    "{self} has no per-head q/k RMSNorm, which the {} source applies on every layer (q_norm / k_norm); \
                     dropping it would change the model; use --format qwen3_moe",
                    source.model_type
                ),
            ));
        }
        match self {
            MoeFormat::Mixtral => mixtral::check(source, options),
            MoeFormat::Qwen2Moe => qwen2_moe::check(options),
            MoeFormat::Qwen3Moe => qwen3_moe::check(source, options),
        }
    }

    /// The shared expert of this format for checked `options`.
    pub fn shared_expert(self, options: &ScaleOutOptions) -> SharedExpert {
        match self {
            MoeFormat::Mixtral | MoeFormat::Qwen3Moe => SharedExpert::Absent,
            MoeFormat::Qwen2Moe => qwen2_moe::shared_expert(options),
        }
    }

    /// Whether experts' top-k routing weights are renormalised (`norm_topk_prob`).
    pub fn renormalizes(self, options: &ScaleOutOptions) -> bool {
        match self {
            MoeFormat::Mixtral => true,
            MoeFormat::Qwen2Moe | MoeFormat::Qwen3Moe => options.renormalize,
        }
    }

    /// Sets the format's own `config.json` fields (beyond the shared MoE block).
    pub fn edit_config(self, config: &mut ModelConfig, plan: &ScaleOutPlan) {
        match self {
            MoeFormat::Mixtral => mixtral::edit_config(config, plan),
            MoeFormat::Qwen2Moe => qwen2_moe::edit_config(config),
            // Attention biases, q/k norms and the dense intermediate_size carry over as they are.
            MoeFormat::Qwen3Moe => {}
        }
    }

    /// Caveats of converting `source` to this format that do not break exactness in general.
    pub fn notes(self, source: &ModelConfig) -> Vec<String> {
        match self {
            MoeFormat::Mixtral => Vec::new(),
            MoeFormat::Qwen2Moe => qwen2_moe::notes(source),
            MoeFormat::Qwen3Moe => qwen3_moe::notes(source),
        }
    }
}

impl std::fmt::Display for MoeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
