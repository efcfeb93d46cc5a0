//! Which parameters a run trains (`train_only`): all, only MoE experts/routers, or only the
//! layers a Scale-Up inserted (LLaMA-Pro style block expansion: the copies are tuned, the
//! original layers keep what they know).

use std::path::Path;

use escale_formats::{parse_hf_name, LayerParam, MlpSite, ModelType, Param};
use escale_grow::scale_up::ScaleUpManifest;
use escale_grow::MANIFEST_FILE;

use crate::config::TrainOnly;
use crate::error::{Result, TrainError};

/// Layers that Scale-Up added, from its manifest ([`ScaleUpManifest::new_layers`]): the
/// zero-initialised copies when the depth method made them (identity / interpolate-identity),
/// otherwise every repeat of a source layer after its first occurrence in `maps.depth` (stack /
/// interpolate duplicate layers).
pub fn new_layers_from_manifest(model_dir: &Path) -> Result<Vec<usize>> {
    let path = model_dir.join(MANIFEST_FILE);
    let manifest: ScaleUpManifest = escale_grow::plan::read_record(model_dir).map_err(|e| match e {
        escale_formats::FormatError::Io { cause: source, .. } => TrainError::config(
            "train_only",
            format!("new-layers needs the Scale-Up manifest {}: {source}", path.display()),
        ),
        other => TrainError::config("train_only", other.to_string()),
    })?;
    if manifest.maps.depth.is_empty() {
        return Err(TrainError::config(
            "train_only",
            format!("{}: `maps.depth` missing or empty; is this a Scale-Up manifest?", path.display()),
        ));
    }
    let layers = manifest.new_layers();
    if layers.is_empty() {
        return Err(TrainError::config(
            "train_only",
            format!(
                "{}: this Scale-Up added no layers (depth map {:?}), so new-layers would train nothing",
                path.display(),
                manifest.maps.depth
            ),
        ));
    }
    Ok(layers)
}

fn is_expert_param(p: Param) -> bool {
    matches!(
        p,
        Param::Layer(_, LayerParam::Mlp(MlpSite::Expert(_) | MlpSite::Shared, _))
            | Param::Layer(_, LayerParam::Router | LayerParam::SharedExpertGate)
    )
}

/// Filters `(hf_name, value)` pairs down to the trained ones; errors if none remain.
pub fn select_trainable<T>(
    params: Vec<(String, T)>,
    model_type: ModelType,
    train_only: TrainOnly,
    model_dir: &Path,
) -> Result<Vec<(String, T)>> {
    let keep: Box<dyn Fn(Param) -> bool> = match train_only {
        TrainOnly::All => return Ok(params),
        TrainOnly::Experts => Box::new(is_expert_param),
        TrainOnly::NewLayers => {
            let layers = new_layers_from_manifest(model_dir)?;
            Box::new(move |p| matches!(p, Param::Layer(l, _) if layers.contains(&l)))
        }
    };
    let mut out = Vec::new();
    for (name, v) in params {
        let p = parse_hf_name(model_type, &name)
            .ok_or_else(|| TrainError::other(format!("parameter `{name}` has no logical name for {model_type}")))?;
        if keep(p) {
            out.push((name, v));
        }
    }
    if out.is_empty() {
        return Err(TrainError::config("train_only", format!("{train_only:?} selects no parameter of this {model_type} model")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(model_type: ModelType, layers: usize) -> Vec<(String, ())> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), ())];
        for l in 0..layers {
            v.push((format!("model.layers.{l}.self_attn.q_proj.weight"), ()));
            if model_type == ModelType::Mixtral {
                v.push((format!("model.layers.{l}.block_sparse_moe.gate.weight"), ()));
                v.push((format!("model.layers.{l}.block_sparse_moe.experts.0.w1.weight"), ()));
            }
        }
        v
    }

    #[test]
    fn experts_only_keeps_routers_and_experts() {
        let dir = tempfile::tempdir().unwrap();
        let kept = select_trainable(names(ModelType::Mixtral, 2), ModelType::Mixtral, TrainOnly::Experts, dir.path()).unwrap();
        let kept: Vec<String> = kept.into_iter().map(|(n, _)| n).collect();
        assert_eq!(kept.len(), 4);
        assert!(kept.iter().all(|n| n.contains("block_sparse_moe")));
        let err = select_trainable(names(ModelType::Llama, 2), ModelType::Llama, TrainOnly::Experts, dir.path()).unwrap_err();
        assert!(err.to_string().contains("selects no parameter"), "{err}");
    }

    #[test]
    fn new_layers_from_zeroed_copies_or_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join(MANIFEST_FILE);
        let err = select_trainable(names(ModelType::Llama, 4), ModelType::Llama, TrainOnly::NewLayers, dir.path()).unwrap_err();
        assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
        std::fs::write(&m, r#"{"maps": {"depth": [0, 0, 1, 1], "depth_zeroed_layers": [1, 3]}}"#).unwrap();
        assert_eq!(new_layers_from_manifest(dir.path()).unwrap(), vec![1, 3]);
        std::fs::write(&m, r#"{"maps": {"depth": [0, 1, 0, 1], "depth_zeroed_layers": []}}"#).unwrap();
        assert_eq!(new_layers_from_manifest(dir.path()).unwrap(), vec![2, 3]);
        let kept = select_trainable(names(ModelType::Llama, 4), ModelType::Llama, TrainOnly::NewLayers, dir.path()).unwrap();
        let kept: Vec<String> = kept.into_iter().map(|(n, _)| n).collect();
        assert_eq!(kept, vec!["model.layers.2.self_attn.q_proj.weight", "model.layers.3.self_attn.q_proj.weight"]);
        std::fs::write(&m, r#"{"maps": {"depth": [0, 1], "depth_zeroed_layers": []}}"#).unwrap();
        assert!(new_layers_from_manifest(dir.path()).unwrap_err().to_string().contains("added no layers"));
    }
}
