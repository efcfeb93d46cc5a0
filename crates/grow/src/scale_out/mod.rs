//! Scale-Out: sparse upcycling of a dense llama / mistral / qwen2 / qwen3 model into a Mixture of
//! Experts (Mixtral, Qwen2-MoE or Qwen3-MoE layout), as in AquilaMoE's second phase.
//!
//! The work is split in two, like every growth in this crate:
//!
//! * [`ScaleOutPlan::new`] looks only at the source config and the [`ScaleOutOptions`]: it
//!   validates them, builds the output `config.json`, decides what every output tensor is made
//!   of, and states whether the result is function-preserving ([`crate::Exactness`]). Every bad input is
//!   rejected here, before a byte is written.
//! * [`upcycle`] executes a plan as a stream: each dense tensor is read once (memory-mapped) and
//!   written to all the outputs derived from it. Plain expert copies are byte-range copies of the
//!   mapped source; only tensors that need arithmetic (granular `down_proj` scaling, noise,
//!   drop-upcycling, dtype conversion) are decoded, one output tensor at a time.
//!
//! Why the result is exact (see the growth-algorithms spec, §4): with renormalised top-k routing
//! the routing weights of the chosen experts sum to one, so `Σ w_e · MLP(x) = MLP(x)` whatever the
//! router says. Granular experts split the FFN into `G` shards; routers repeat each row for the
//! `G` experts of a virtual group, top-k (a multiple of `G`) selects whole groups, and `down_proj`
//! scaled by `G` restores the dense output. A live qwen2_moe shared expert (gate `sigmoid(0) = ½`)
//! carries a full copy of the MLP while routed `down_proj`s are halved: `½·MLP + ½·MLP = MLP`.

mod exec;
mod format;
mod init;
mod manifest;
mod plan;

use std::path::PathBuf;

use escale_formats::{DType, FormatError};

pub use exec::{execute, upcycle, UpcycleReport};
pub use format::MoeFormat;
pub use init::{drop_neurons, router_weights, sample_router, RouterSpec};
pub use manifest::{RouterRecord, ScaleOutManifest};
pub use plan::{ScaleOutPlan, SharedExpert, TensorRule};

/// How router weights are initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RouterInit {
    /// i.i.d. `N(0, router_std²)` (AquilaMoE; HF/Megatron convention std 0.02).
    Normal,
    /// All zeros: uniform routing at the start (every expert ties).
    #[serde(alias = "zero")]
    #[cfg_attr(feature = "clap", value(alias = "zero"))]
    Zeros,
    /// i.i.d. `U(-1/√D, 1/√D)` with `D` the hidden size (PyTorch's default `nn.Linear` scale).
    Uniform,
}

impl RouterInit {
    pub fn as_str(self) -> &'static str {
        match self {
            RouterInit::Normal => "normal",
            RouterInit::Zeros => "zeros",
            RouterInit::Uniform => "uniform",
        }
    }
}

/// Everything the user can choose; the fields mirror the `escale scale-out` flags, and error
/// messages name the flags because that is what a user types.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleOutOptions {
    /// Routed experts per layer (`--experts`).
    pub experts: usize,
    /// Experts used per token (`--top-k`).
    pub top_k: usize,
    /// Output layout; `None` picks qwen3_moe for a qwen3 source, qwen2_moe for a source with QKV
    /// bias, else mixtral.
    pub format: Option<MoeFormat>,
    pub router_init: RouterInit,
    /// Standard deviation of the normal router. 0.02 is the HF `initializer_range` / Megatron
    /// `init_method_std` convention; AquilaMoE's wording "variance 0.02" would mean 0.1414.
    pub router_std: f64,
    /// Seed of every random draw (router, noise, drop-upcycling), derived per layer and expert.
    pub seed: u64,
    /// `G`: each expert holds a `1/G` shard of the dense FFN (1 = plain copies).
    pub granularity: usize,
    /// qwen2_moe only: number of FFN shards (of `I/G` each) in the live shared expert; 0 gives
    /// the neutralised (inert, exact) shared expert.
    pub shared_experts: usize,
    /// Standard deviation of Gaussian noise added to each routed expert (0 = none).
    pub noise: f64,
    /// Drop-Upcycling ratio `r`: per expert, `floor(r·I_e)` neurons re-initialised (0 = none).
    pub drop_ratio: f64,
    /// Renormalise the top-k routing weights (qwen2_moe / qwen3_moe `norm_topk_prob`; mixtral always does).
    pub renormalize: bool,
    /// qwen2_moe / qwen3_moe `decoder_sparse_step`: layer `l` becomes sparse when `(l + 1) % step == 0`
    /// (1 = every layer); the other layers keep the dense MLP unchanged.
    pub sparse_step: usize,
    /// qwen2_moe / qwen3_moe `mlp_only_layers`: layers (0-based) that keep the dense MLP.
    pub dense_layers: Vec<usize>,
    /// `router_aux_loss_coef` written into config.json.
    pub aux_loss_coef: f64,
    /// Output storage dtype; `None` keeps each source tensor's dtype.
    pub dtype: Option<DType>,
    /// Worker threads for the streaming copy; `None` picks from the available cores.
    #[serde(skip)]
    pub threads: Option<usize>,
}

impl Default for ScaleOutOptions {
    fn default() -> Self {
        ScaleOutOptions {
            experts: 8,
            top_k: 2,
            format: None,
            router_init: RouterInit::Normal,
            router_std: 0.02,
            seed: 0,
            granularity: 1,
            shared_experts: 0,
            noise: 0.0,
            drop_ratio: 0.0,
            renormalize: true,
            sparse_step: 1,
            dense_layers: Vec::new(),
            aux_loss_coef: 0.001,
            dtype: None,
            threads: None,
        }
    }
}

/// What can go wrong in a scale-out; every message names the flag, file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ScaleOutError {
    #[error(transparent)]
    Format(#[from] FormatError),
    /// An option value that can never work, whatever the source.
    #[error("{flag}: {message}")]
    Option { flag: &'static str, message: String },
    /// The source model cannot be upcycled as asked.
    #[error("{path}: {message}")]
    Source { path: PathBuf, message: String },
}

impl ScaleOutError {
    fn option(flag: &'static str, message: impl Into<String>) -> Self {
        ScaleOutError::Option { flag, message: message.into() }
    }
}

pub type Result<T, E = ScaleOutError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_serde_with_their_names() {
        let o = ScaleOutOptions { format: Some(MoeFormat::Qwen2Moe), router_init: RouterInit::Zeros, ..Default::default() };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!((v["format"].as_str(), v["router_init"].as_str()), (Some("qwen2_moe"), Some("zeros")));
        assert_eq!(serde_json::from_value::<ScaleOutOptions>(v).unwrap(), o);
        let partial: ScaleOutOptions = serde_json::from_str(r#"{"experts": 4}"#).unwrap();
        assert_eq!(partial, ScaleOutOptions { experts: 4, ..Default::default() });
    }
}
