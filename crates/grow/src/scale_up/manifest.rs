//! The `escale_growth.json` manifest of a Scale-Up: enough to know exactly what was done (and to
//! redo it): the maps, scales, options, seeds and the exactness verdict.

use std::path::Path;

use serde_json::{json, Value};

use super::plan::ScaleUpPlan;

/// The manifest of `plan` applied to the source folder `source_dir`.
pub fn manifest_json(plan: &ScaleUpPlan, source_dir: &Path) -> Value {
    let (s, t, o) = (&plan.source, &plan.target, &plan.options);
    let dims = |c: &escale_formats::ModelConfig| {
        json!({
            "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim, "num_hidden_layers": c.num_hidden_layers, "rms_norm_eps": c.rms_norm_eps,
        })
    };
    let zeroed: Vec<usize> = (0..plan.depth.zeroed.len()).filter(|&l| plan.depth.zeroed[l]).collect();
    json!({
        "operation": "scale_up",
        "escale_version": env!("CARGO_PKG_VERSION"),
        "source": source_dir.display().to_string(),
        "model_type": s.model_type.as_str(),
        "source_dims": dims(s),
        "target_dims": dims(t),
        "method": o.method.as_str(),
        "preset": o.preset.as_str(),
        "depth": o.depth_method().as_str(),
        "options": o,
        "seeds": { "seed": o.seed, "hidden_map": o.hidden_map.as_str(), "head_map": o.head_map.as_str() },
        "exact": plan.exactness.exact,
        "exactness": plan.exactness,
        "maps": {
            "hidden_g": plan.hidden.map, "hidden_counts": plan.hidden.counts,
            "ffn_pi": plan.ffn.map, "ffn_counts": plan.ffn.counts,
            "heads_sigma": plan.heads.map, "heads_counts": plan.heads.counts,
            "depth": plan.depth.map, "depth_zeroed_layers": zeroed,
        },
        "scales": {
            "a": plan.scales.a, "norm_gamma_scale": plan.scales.norm_scale, "reader_b": plan.scales.b,
            "final_norm_gamma_scale": plan.scales.final_norm_scale, "eps_scale": plan.scales.eps_scale,
            "rms_norm_eps": t.rms_norm_eps,
        },
    })
}
