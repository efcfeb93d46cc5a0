//! The Scale-Up record of `escale_growth.json` ([`crate::GrowthManifest::ScaleUp`]): enough to
//! know exactly what was done (and to redo it): the maps, scales, options, seeds and the
//! exactness verdict. Every field has a default so a reader that needs only part of it (the
//! trainer's `train_only: new-layers` reads the depth maps) accepts a partial record.

use std::path::Path;

use escale_formats::ModelConfig;
use serde::{Deserialize, Serialize};

use super::maps::{DepthMethod, MapKind};
use super::options::{Method, Preset, ScaleUpOptions};
use super::plan::ScaleUpPlan;
use crate::plan::Exactness;

/// The grown sizes of one side of a Scale-Up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DimsRecord {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_hidden_layers: usize,
    pub rms_norm_eps: f64,
}

impl DimsRecord {
    fn of(c: &ModelConfig) -> DimsRecord {
        DimsRecord {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            num_hidden_layers: c.num_hidden_layers,
            rms_norm_eps: c.rms_norm_eps,
        }
    }
}

/// The seed and the map kinds it drove.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedsRecord {
    pub seed: u64,
    pub hidden_map: MapKind,
    pub head_map: MapKind,
}

/// Every index map of the growth (spec §1-3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapsRecord {
    /// Hidden channel map `g` and its copy counts.
    pub hidden_g: Vec<usize>,
    pub hidden_counts: Vec<usize>,
    /// FFN neuron map `π` and its copy counts.
    pub ffn_pi: Vec<usize>,
    pub ffn_counts: Vec<usize>,
    /// Query head map `σ` and its copy counts.
    pub heads_sigma: Vec<usize>,
    pub heads_counts: Vec<usize>,
    /// `depth[l']` = the source layer copied into target layer `l'`.
    pub depth: Vec<usize>,
    /// Target layers whose residual writers were zeroed (identity-style depth copies).
    pub depth_zeroed_layers: Vec<usize>,
}

/// The residual-stream scales of the preset (spec §2.1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalesRecord {
    pub a: Vec<f32>,
    pub norm_gamma_scale: Vec<f32>,
    pub reader_b: Vec<f32>,
    pub final_norm_gamma_scale: Vec<f32>,
    pub eps_scale: f64,
    pub rms_norm_eps: f64,
}

/// A Scale-Up as recorded in `escale_growth.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleUpManifest {
    pub escale_version: String,
    /// The source folder.
    pub source: String,
    pub model_type: String,
    pub source_dims: DimsRecord,
    pub target_dims: DimsRecord,
    pub method: Method,
    pub preset: Preset,
    pub depth: DepthMethod,
    pub options: ScaleUpOptions,
    pub seeds: SeedsRecord,
    /// Same as `exactness.exact`, at the top level for a quick look.
    pub exact: bool,
    pub exactness: Exactness,
    pub maps: MapsRecord,
    pub scales: ScalesRecord,
}

impl ScaleUpManifest {
    /// The record of `plan` applied to the source folder `source_dir`.
    pub fn new(plan: &ScaleUpPlan, source_dir: &Path) -> ScaleUpManifest {
        let (s, t, o) = (&plan.source, &plan.target, &plan.options);
        let zeroed: Vec<usize> = (0..plan.depth.zeroed.len()).filter(|&l| plan.depth.zeroed[l]).collect();
        ScaleUpManifest {
            escale_version: env!("CARGO_PKG_VERSION").to_string(),
            source: source_dir.display().to_string(),
            model_type: s.model_type.as_str().to_string(),
            source_dims: DimsRecord::of(s),
            target_dims: DimsRecord::of(t),
            method: o.method,
            preset: o.preset,
            depth: o.depth_method(),
            options: o.clone(),
            seeds: SeedsRecord { seed: o.seed, hidden_map: o.hidden_map, head_map: o.head_map },
            exact: plan.exactness.exact,
            exactness: plan.exactness.clone(),
            maps: MapsRecord {
                hidden_g: plan.hidden.map.clone(),
                hidden_counts: plan.hidden.counts.clone(),
                ffn_pi: plan.ffn.map.clone(),
                ffn_counts: plan.ffn.counts.clone(),
                heads_sigma: plan.heads.map.clone(),
                heads_counts: plan.heads.counts.clone(),
                depth: plan.depth.map.clone(),
                depth_zeroed_layers: zeroed,
            },
            scales: ScalesRecord {
                a: plan.scales.a.clone(),
                norm_gamma_scale: plan.scales.norm_scale.clone(),
                reader_b: plan.scales.b.clone(),
                final_norm_gamma_scale: plan.scales.final_norm_scale.clone(),
                eps_scale: plan.scales.eps_scale,
                rms_norm_eps: t.rms_norm_eps,
            },
        }
    }

    /// Target layers the growth added: the zero-initialised copies when the depth method made
    /// them, otherwise every repeat of a source layer after its first occurrence in `maps.depth`.
    pub fn new_layers(&self) -> Vec<usize> {
        if !self.maps.depth_zeroed_layers.is_empty() {
            return self.maps.depth_zeroed_layers.clone();
        }
        let mut seen = std::collections::HashSet::new();
        (0..self.maps.depth.len()).filter(|&l| !seen.insert(self.maps.depth[l])).collect()
    }
}
