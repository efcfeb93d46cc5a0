//! The Scale-Out record of `escale_growth.json` ([`crate::GrowthManifest::ScaleOut`]):
//! everything needed to reproduce the output and to know what to expect from it (the exactness
//! verdict) without re-reading the weights.

use std::path::Path;

use super::plan::{ScaleOutPlan, SharedExpert};
use super::{MoeFormat, RouterInit};
use crate::plan::Exactness;

/// Router initialisation as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouterRecord {
    pub init: RouterInit,
    /// Standard deviation of the normal init (the paper's "variance 0.02" would be std 0.1414).
    pub std: f64,
    /// Bound of the uniform init (`1/√hidden`), when used.
    pub uniform_bound: Option<f64>,
    pub seed: u64,
    /// Router rows drawn independently per layer (`experts / granularity`); each is repeated for
    /// the `granularity` experts of its virtual group.
    pub independent_rows: usize,
}

/// A Scale-Out as recorded in `escale_growth.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScaleOutManifest {
    pub escale_version: String,
    pub source: String,
    pub source_model_type: String,
    pub format: MoeFormat,
    pub experts: usize,
    pub top_k: usize,
    pub router: RouterRecord,
    pub granularity: usize,
    pub dense_intermediate_size: usize,
    pub expert_intermediate_size: usize,
    /// Live shared-expert shards requested (`--shared-experts`); 0 for none / neutral.
    pub shared_experts: usize,
    pub shared_expert: SharedExpert,
    pub shared_expert_intermediate_size: usize,
    /// Factor applied to every routed `down_proj`.
    pub routed_down_scale: f64,
    pub noise_std: f64,
    pub drop_upcycling_ratio: f64,
    pub renormalize_topk: bool,
    pub router_aux_loss_coef: f64,
    pub dtype: Option<String>,
    pub exactness: Exactness,
    pub warnings: Vec<String>,
}

impl ScaleOutManifest {
    pub fn new(plan: &ScaleOutPlan, source_dir: &Path) -> ScaleOutManifest {
        let o = &plan.options;
        let moe = plan.config.moe.as_ref().expect("a scale-out plan always has an MoE config");
        ScaleOutManifest {
            escale_version: env!("CARGO_PKG_VERSION").to_string(),
            source: source_dir.display().to_string(),
            source_model_type: plan.source_type.to_string(),
            format: plan.format,
            experts: o.experts,
            top_k: o.top_k,
            router: RouterRecord {
                init: o.router_init,
                std: o.router_std,
                uniform_bound: (o.router_init == RouterInit::Uniform)
                    .then(|| 1.0 / (plan.config.hidden_size as f64).sqrt()),
                seed: o.seed,
                independent_rows: plan.router_groups(),
            },
            granularity: o.granularity,
            dense_intermediate_size: plan.dense_ffn,
            expert_intermediate_size: plan.expert_ffn,
            shared_experts: o.shared_experts,
            shared_expert: plan.shared,
            shared_expert_intermediate_size: plan.shared_ffn,
            routed_down_scale: plan.routed_down_scale,
            noise_std: o.noise,
            drop_upcycling_ratio: o.drop_ratio,
            renormalize_topk: moe.norm_topk_prob,
            router_aux_loss_coef: moe.router_aux_loss_coef,
            dtype: plan.config.dtype.map(|d| d.torch_name().to_string()),
            exactness: plan.exactness.clone(),
            warnings: plan.warnings.clone(),
        }
    }

}
