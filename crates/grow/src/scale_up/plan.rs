//! The Scale-Up plan: everything about a growth that follows from the two configs and the options
//! (maps, scales, the output config, the list of output tensors and the exactness verdict),
//! computed before any weight is read. Executing it is [`super::execute`].

use std::path::Path;

use escale_formats::naming::{expected_params, hf_name, LayerParam, Param};
use escale_formats::ModelConfig;
use serde::Serialize;

use super::maps::{depth_map, head_map, DepthMap, DepthMethod, MapKind, UnitMap};
use super::options::{sub_seed, Method, Preset, ScaleUpOptions};
use super::ScaleUpError;
use crate::plan::{stored_dtype_rounding, Exactness};

/// Target sizes; `None` keeps the source's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetDims {
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_hidden_layers: Option<usize>,
}

/// What to grow into: explicit sizes, or a target config.json whose sizes are used.
#[derive(Clone, Debug)]
pub enum Target {
    Dims(TargetDims),
    /// The target's architecture must match the source apart from the four grown sizes.
    Config(Box<ModelConfig>),
}

/// Residual-stream scales of one preset (spec §2.1): `x'_j = a_j·x_{g(j)}`, norm weights
/// `γ'_j = γ_{g(j)}·norm_scale_j`, reader columns `R'[:,j] = b_j·R[:,g(j)]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HiddenScales {
    pub a: Vec<f32>,
    pub norm_scale: Vec<f32>,
    pub b: Vec<f32>,
    /// Final-norm scale; with tied embeddings the reader scale `b/a` is folded in here because the
    /// LM head is the (writer-scaled) embedding.
    pub final_norm_scale: Vec<f32>,
    /// `κ²`: `rms_norm_eps` is multiplied by it (1 except for zero-pad).
    pub eps_scale: f64,
    /// Columns that carry the residual stream (`a_j ≠ 0`); zero-pad's pad channels do not.
    pub live: Vec<bool>,
}

/// Which output tensor comes from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSource {
    Embed,
    FinalNorm,
    LmHead,
    /// Target layer `out_layer` is source layer `src_layer` widened; `zeroed` for o/down of a
    /// zero-initialised depth copy.
    Layer { out_layer: usize, src_layer: usize, param: LayerParam, zeroed: bool },
}

/// One tensor of the output checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub source: OutputSource,
}

/// A complete, validated Scale-Up plan.
#[derive(Clone, Debug)]
pub struct ScaleUpPlan {
    pub source: ModelConfig,
    /// The output config.json (source config with the grown sizes and, for zero-pad, scaled eps).
    pub target: ModelConfig,
    pub options: ScaleUpOptions,
    /// Hidden-channel map `g` and counts `c`.
    pub hidden: UnitMap,
    /// FFN neuron map `π` and counts `cI`.
    pub ffn: UnitMap,
    /// Query-head map `σ` and counts `C`.
    pub heads: UnitMap,
    pub scales: HiddenScales,
    pub depth: DepthMap,
    pub exactness: Exactness,
    /// Output tensors in transformers `state_dict` order.
    pub tensors: Vec<OutputTensor>,
    /// Things the user must hear about the output (e.g. a shape transformers will not load).
    pub warnings: Vec<String>,
}

fn invalid(context: &Path, message: impl Into<String>) -> ScaleUpError {
    ScaleUpError::Invalid { context: context.display().to_string(), message: message.into() }
}

/// Sizes of a config that a Scale-Up can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    hidden: usize,
    ffn: usize,
    heads: usize,
    layers: usize,
}

impl ScaleUpPlan {
    /// Validates the request and computes the plan. `source` is the source config (its path is
    /// used in error messages and the manifest).
    pub fn new(source: &ModelConfig, target: &Target, options: &ScaleUpOptions) -> Result<ScaleUpPlan, ScaleUpError> {
        check_source(source)?;
        let dims = target_dims(source, target)?;
        check_growth(source, dims)?;
        check_target_sizes(source, dims)?;
        check_loadable(source, dims)?;
        check_options(source, dims, options)?;

        let seed = options.seed;
        let hidden = UnitMap::new(options.hidden_map, source.hidden_size, dims.hidden, sub_seed(seed, 1));
        let ffn = UnitMap::new(options.hidden_map, source.intermediate_size, dims.ffn, sub_seed(seed, 2));
        let n_kv = source.num_key_value_heads;
        let heads = head_map(n_kv, source.group_size(), dims.heads / n_kv, options.head_map, sub_seed(seed, 3));
        let scales = hidden_scales(&hidden, options.preset, source.tie_word_embeddings);
        let depth = depth_map(options.depth_method(), source.num_hidden_layers, dims.layers)
            .map_err(|m| invalid(source.source(), m))?;

        let mut cfg = source.clone();
        cfg.hidden_size = dims.hidden;
        cfg.intermediate_size = dims.ffn;
        cfg.num_attention_heads = dims.heads;
        cfg.num_hidden_layers = dims.layers;
        cfg.rms_norm_eps = source.rms_norm_eps * scales.eps_scale;
        if let Some(dt) = options.dtype {
            cfg.dtype = Some(dt);
        }
        remap_per_layer_fields(&mut cfg, source, &depth);

        let mut exactness = exactness(source, dims, options, &hidden);
        if exactness.exact {
            // q/k rows of a qwen3 carry κ under zero-pad (spec §2.4); it rounds like the other scales.
            let qk = source.model_type.has_qk_norm().then(|| scales.eps_scale.sqrt() as f32);
            let weight_scales = [&scales.a, &scales.norm_scale, &scales.b, &scales.final_norm_scale]
                .into_iter()
                .flatten()
                .copied()
                .chain(qk);
            let consumer_scales = [&ffn.counts, &heads.counts].into_iter().flatten().map(|&c| 1.0 / c as f32);
            exactness.stored_dtype_rounding = stored_dtype_rounding(source.dtype, cfg.dtype, weight_scales.chain(consumer_scales));
        }
        let tensors = output_tensors(&cfg, &depth);
        // Nothing to announce about the target today (what transformers would refuse is refused above).
        let warnings = Vec::new();
        Ok(ScaleUpPlan { source: source.clone(), target: cfg, options: options.clone(), hidden, ffn, heads, scales, depth, exactness, tensors, warnings })
    }

    /// Number of new units per kind, for summaries.
    pub fn summary_line(&self) -> String {
        let (s, t) = (&self.source, &self.target);
        format!(
            "{}: hidden {} -> {}, FFN {} -> {}, heads {} -> {} ({} KV groups, head_dim {}), layers {} -> {}",
            s.model_type,
            s.hidden_size,
            t.hidden_size,
            s.intermediate_size,
            t.intermediate_size,
            s.num_attention_heads,
            t.num_attention_heads,
            s.num_key_value_heads,
            s.head_dim,
            s.num_hidden_layers,
            t.num_hidden_layers
        )
    }
}

fn check_source(source: &ModelConfig) -> Result<(), ScaleUpError> {
    if source.model_type.is_moe() || source.moe.is_some() {
        return Err(invalid(
            source.source(),
            format!(
                "model_type `{}` is a Mixture of Experts; Scale-Up grows dense models only (llama, mistral, \
                 qwen2, qwen3). Grow the dense model first, then upcycle it with scale-out",
                source.model_type
            ),
        ));
    }
    Ok(())
}

fn target_dims(source: &ModelConfig, target: &Target) -> Result<Dims, ScaleUpError> {
    match target {
        Target::Dims(t) => Ok(Dims {
            hidden: t.hidden_size.unwrap_or(source.hidden_size),
            ffn: t.intermediate_size.unwrap_or(source.intermediate_size),
            heads: t.num_attention_heads.unwrap_or(source.num_attention_heads),
            layers: t.num_hidden_layers.unwrap_or(source.num_hidden_layers),
        }),
        Target::Config(t) => {
            check_target_config(source, t)?;
            Ok(Dims {
                hidden: t.hidden_size,
                ffn: t.intermediate_size,
                heads: t.num_attention_heads,
                layers: t.num_hidden_layers,
            })
        }
    }
}

/// A target config may differ from the source only in the four sizes Scale-Up grows.
fn check_target_config(source: &ModelConfig, t: &ModelConfig) -> Result<(), ScaleUpError> {
    if t.model_type.is_moe() {
        return Err(invalid(
            t.source(),
            format!("target model_type `{}` is a Mixture of Experts: Scale-Up produces dense models; use scale-out", t.model_type),
        ));
    }
    check_fixed_heads(source, t.num_key_value_heads, t.head_dim, t.source())?;
    let mismatch = |field: &str, s: String, v: String| {
        invalid(
            t.source(),
            format!("field `{field}` is {v} but the source has {s}; Scale-Up only changes hidden_size, intermediate_size, num_attention_heads and num_hidden_layers"),
        )
    };
    if t.model_type != source.model_type {
        return Err(mismatch("model_type", source.model_type.to_string(), t.model_type.to_string()));
    }
    let pairs = [
        ("vocab_size", source.vocab_size.to_string(), t.vocab_size.to_string()),
        ("tie_word_embeddings", source.tie_word_embeddings.to_string(), t.tie_word_embeddings.to_string()),
        ("attention_bias", source.qkv_bias.to_string(), t.qkv_bias.to_string()),
        ("mlp_bias", source.mlp_bias.to_string(), t.mlp_bias.to_string()),
        ("rope_theta", source.rope_theta.to_string(), t.rope_theta.to_string()),
    ];
    for (field, s, v) in pairs {
        if s != v {
            return Err(mismatch(field, s, v));
        }
    }
    Ok(())
}

/// KV heads and head_dim cannot change without breaking the function (spec §2.4).
fn check_fixed_heads(source: &ModelConfig, kv: usize, head_dim: usize, at: &Path) -> Result<(), ScaleUpError> {
    if kv != source.num_key_value_heads {
        return Err(invalid(
            at,
            format!(
                "num_key_value_heads {} -> {kv}: Scale-Up keeps the KV groups fixed, because each query head \
                 attends with its group's shared K/V and changing the groups would need a non-preserving merge \
                 (grow the number of query heads per group instead)",
                source.num_key_value_heads
            ),
        ));
    }
    if head_dim != source.head_dim {
        return Err(invalid(
            at,
            format!(
                "head_dim {} -> {head_dim}: Scale-Up keeps head_dim fixed, because the rotary frequencies depend \
                 on it and heads are moved whole, never split (grow the number of heads instead)",
                source.head_dim
            ),
        ));
    }
    Ok(())
}

fn check_growth(source: &ModelConfig, d: Dims) -> Result<(), ScaleUpError> {
    let at = source.source();
    let pairs = [
        ("hidden_size", source.hidden_size, d.hidden),
        ("intermediate_size", source.intermediate_size, d.ffn),
        ("num_attention_heads", source.num_attention_heads, d.heads),
        ("num_hidden_layers", source.num_hidden_layers, d.layers),
    ];
    for (field, s, t) in pairs {
        if t < s {
            return Err(invalid(at, format!("target {field} {t} is smaller than the source's {s}: Scale-Up only grows")));
        }
    }
    let kv = source.num_key_value_heads;
    if !d.heads.is_multiple_of(kv) {
        return Err(invalid(
            at,
            format!(
                "target num_attention_heads {} is not divisible by the {kv} KV groups: every group must get the \
                 same number of query heads (try a multiple of {kv})",
                d.heads
            ),
        ));
    }
    Ok(())
}

/// Bounds the target before any map or tensor list is allocated for it (an absurd `--layers` or
/// `--hidden` must be an instant error, not an allocation failure).
fn check_target_sizes(source: &ModelConfig, d: Dims) -> Result<(), ScaleUpError> {
    let mut target = source.clone();
    target.hidden_size = d.hidden;
    target.intermediate_size = d.ffn;
    target.num_attention_heads = d.heads;
    target.num_hidden_layers = d.layers;
    target.check_sizes().map_err(|e| {
        let flag = match e.field {
            "hidden_size" => " (--hidden)",
            "intermediate_size" => " (--intermediate)",
            "num_attention_heads" => " (--heads)",
            "num_hidden_layers" => " (--layers)",
            _ => "",
        };
        invalid(source.source(), format!("target {}{flag}: {}", e.field, e.message))
    })?;
    Ok(())
}

/// Refuses a target that the family's main consumer cannot load. transformers 5's LlamaConfig
/// refuses `hidden_size % num_attention_heads != 0` even with an explicit `head_dim` (checked with
/// the oracle, transformers 5.24), so escale must not write one; mistral and qwen2 honour the
/// explicit `head_dim` that `ModelConfig::to_json` writes once the width changes.
fn check_loadable(source: &ModelConfig, d: Dims) -> Result<(), ScaleUpError> {
    if source.model_type == escale_formats::ModelType::Llama && !d.hidden.is_multiple_of(d.heads) {
        let (below, above) = (d.hidden / d.heads * d.heads, d.hidden.div_ceil(d.heads) * d.heads);
        return Err(invalid(
            source.source(),
            format!(
                "target hidden_size {} (--hidden) is not a multiple of num_attention_heads {} (--heads): transformers \
                 refuses such a llama config even with an explicit head_dim, so the checkpoint could not be loaded \
                 there (pick a multiple of the head count, e.g. {}, or another head count)",
                d.hidden,
                d.heads,
                if below >= source.hidden_size { format!("{below} or {above}") } else { above.to_string() }
            ),
        ));
    }
    Ok(())
}

fn check_options(source: &ModelConfig, d: Dims, o: &ScaleUpOptions) -> Result<(), ScaleUpError> {
    let at = source.source();
    if o.method == Method::AkiPro && !matches!(o.depth_method(), DepthMethod::Interpolate | DepthMethod::InterpolateIdentity) {
        return Err(invalid(
            at,
            format!(
                "method aki-pro is AKI width growth plus interpolation depth growth; depth `{}` contradicts it \
                 (use method aki with that depth)",
                o.depth_method().as_str()
            ),
        ));
    }
    if o.preset == Preset::ZeroPad && o.hidden_map == MapKind::Random && d.hidden != source.hidden_size {
        return Err(invalid(
            at,
            "preset zero-pad keeps whole copies of the hidden channels and zero pads the rest, which is defined \
             for the circular hidden map only (use fpi-scaled for a random map)",
        ));
    }
    if let super::options::Fanout::Lemon { scale } = o.fanout {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(invalid(at, format!("LEMON fan-out scale must be a positive number, got {scale}")));
        }
    }
    Ok(())
}

/// The per-preset scales of spec §2.1.
pub fn hidden_scales(g: &UnitMap, preset: Preset, tied: bool) -> HiddenScales {
    let (d, dd) = (g.src_len(), g.dst_len());
    let counts: Vec<f64> = g.map.iter().map(|&i| g.counts[i] as f64).collect();
    let (a, norm_scale, b, eps_scale, live): (Vec<f64>, Vec<f64>, Vec<f64>, f64, Vec<bool>) = match preset {
        Preset::Fpi => (vec![1.0; dd], vec![1.0; dd], counts.iter().map(|c| 1.0 / c).collect(), 1.0, vec![true; dd]),
        Preset::FpiScaled => {
            let a: Vec<f64> = counts.iter().map(|c| (dd as f64 / (d as f64 * c)).sqrt()).collect();
            let inv: Vec<f64> = a.iter().map(|a| 1.0 / a).collect();
            (a, inv, counts.iter().map(|c| 1.0 / c).collect(), 1.0, vec![true; dd])
        }
        Preset::ZeroPad => {
            let k = dd / d;
            let live: Vec<bool> = g.copy_rank().iter().map(|&r| r < k).collect();
            let kappa2 = (k * d) as f64 / dd as f64;
            let a = live.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
            (a, vec![kappa2.sqrt(); dd], vec![1.0 / k as f64; dd], kappa2, live)
        }
    };
    // Tied: the LM head is the embedding, whose columns carry `a_j` instead of `b_j`; move `b/a`
    // into the final norm (pad channels carry no signal, any nonzero value keeps them trainable).
    let final_norm_scale: Vec<f64> = if tied {
        (0..dd).map(|j| if a[j] != 0.0 { norm_scale[j] * b[j] / a[j] } else { norm_scale[j] * b[j] }).collect()
    } else {
        norm_scale.clone()
    };
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    HiddenScales { a: f(a), norm_scale: f(norm_scale), b: f(b), final_norm_scale: f(final_norm_scale), eps_scale, live }
}

fn exactness(source: &ModelConfig, d: Dims, o: &ScaleUpOptions, hidden: &UnitMap) -> Exactness {
    let mut reasons = Vec::new();
    let width_exact = match o.preset {
        Preset::Fpi => hidden.is_uniform(),
        Preset::FpiScaled | Preset::ZeroPad => true,
    };
    if !width_exact {
        reasons.push(format!(
            "preset fpi with hidden {} -> {} gives channels unequal copy counts, so every RMSNorm output is off \
             by a per-token factor (use fpi-scaled or zero-pad for an exact result)",
            source.hidden_size, d.hidden
        ));
    }
    let new_units = d.ffn > source.intermediate_size
        || d.heads > source.num_attention_heads
        || (o.aki_scope == super::options::AkiScope::All && d.hidden > source.hidden_size);
    let aki_active = o.method.is_aki() && new_units && source.num_hidden_layers > 1;
    if aki_active {
        reasons.push("AKI fills new heads / FFN neurons from the next layer's weights, which changes the function".into());
    }
    let depth_exact = d.layers == source.num_hidden_layers || o.depth_method().zero_inits_copies();
    if !depth_exact {
        reasons.push(format!(
            "depth `{}` repeats layers whose residual updates then apply twice (use identity or interpolate-identity \
             for an exact result)",
            o.depth_method().as_str()
        ));
    }
    Exactness {
        width_exact: Some(width_exact && !aki_active),
        depth_exact: Some(depth_exact),
        ..Exactness::from_reasons(reasons, Vec::new())
    }
}

/// qwen2 v5 `layer_types` lists one entry per layer: follow the depth map so it stays consistent.
fn remap_per_layer_fields(cfg: &mut ModelConfig, source: &ModelConfig, depth: &DepthMap) {
    if let Some(serde_json::Value::Array(types)) = source.raw().get("layer_types") {
        if types.len() == source.num_hidden_layers {
            let mapped = depth.map.iter().map(|&l| types[l].clone()).collect();
            cfg.set_extra("layer_types", Some(serde_json::Value::Array(mapped)));
        }
    }
}

fn output_tensors(target: &ModelConfig, depth: &DepthMap) -> Vec<OutputTensor> {
    expected_params(target)
        .into_iter()
        .map(|(param, shape)| {
            let source_kind = match param {
                Param::Embed => OutputSource::Embed,
                Param::FinalNorm => OutputSource::FinalNorm,
                Param::LmHead => OutputSource::LmHead,
                Param::Layer(l, p) => OutputSource::Layer {
                    out_layer: l,
                    src_layer: depth.map[l],
                    param: p,
                    zeroed: depth.zeroed[l] && is_residual_writer(p),
                },
            };
            OutputTensor { name: hf_name(target.model_type, param), shape, source: source_kind }
        })
        .collect()
}

/// The parameters whose zeroing makes a block add nothing to the residual stream.
pub fn is_residual_writer(p: LayerParam) -> bool {
    use escale_formats::naming::MlpPart;
    matches!(p, LayerParam::O | LayerParam::OBias | LayerParam::Mlp(_, MlpPart::Down | MlpPart::DownBias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale_up::options::{AkiScope, Fanout};
    use escale_formats::naming::MlpPart;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> ModelConfig {
        ModelConfig::from_json(v, Path::new("src/config.json")).unwrap()
    }

    /// mistral, not llama: the targets below include widths that are not a multiple of the
    /// head count, which llama refuses (`check_loadable`).
    fn tiny() -> ModelConfig {
        cfg(json!({"model_type": "mistral", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4}))
    }

    fn dims(h: usize, i: usize, q: usize, l: usize) -> Target {
        Target::Dims(TargetDims {
            hidden_size: Some(h),
            intermediate_size: Some(i),
            num_attention_heads: Some(q),
            num_hidden_layers: Some(l),
        })
    }

    fn fpi() -> ScaleUpOptions {
        ScaleUpOptions { method: Method::Fpi, ..Default::default() }
    }

    /// Spec §2.7: RMSNorm (γ=1, ε=0) then one reader row, through each preset's expansion.
    fn worked_example(preset: Preset) -> (Vec<f64>, Vec<f64>, f64, HiddenScales) {
        let g = UnitMap::circular(4, 6);
        let s = hidden_scales(&g, preset, false);
        let (x, r) = ([1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 2.0, 0.5]);
        let xp: Vec<f64> = (0..6).map(|j| s.a[j] as f64 * x[g.map[j]]).collect();
        let rms = (xp.iter().map(|v| v * v).sum::<f64>() / 6.0).sqrt();
        let n: Vec<f64> = (0..6).map(|j| s.norm_scale[j] as f64 * xp[j] / rms).collect();
        let rp: Vec<f64> = (0..6).map(|j| s.b[j] as f64 * r[g.map[j]]).collect();
        let dot = n.iter().zip(&rp).map(|(a, b)| a * b).sum();
        (xp, n, dot, s)
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn worked_example_fpi_is_off_by_rho() {
        let (xp, n, dot, s) = worked_example(Preset::Fpi);
        close(&xp, &[1.0, 2.0, 3.0, 4.0, 1.0, 2.0]);
        close(&n, &[0.41404, 0.82808, 1.24212, 1.65616, 0.41404, 0.82808]);
        close(&s.b.iter().map(|&b| b as f64).collect::<Vec<_>>(), &[0.5, 0.5, 1.0, 1.0, 0.5, 0.5]);
        assert!((dot - 2.89828).abs() < 1e-5, "{dot}");
        assert!((dot / 2.55604 - 1.13389).abs() < 1e-4);
        assert_eq!(s.eps_scale, 1.0);
    }

    #[test]
    fn worked_example_fpi_scaled_is_exact() {
        let (xp, n, dot, s) = worked_example(Preset::FpiScaled);
        close(&s.a.iter().map(|&a| a as f64).collect::<Vec<_>>(), &[0.86603, 0.86603, 1.22474, 1.22474, 0.86603, 0.86603]);
        close(&xp, &[0.86603, 1.73205, 3.67423, 4.89898, 0.86603, 1.73205]);
        close(&n, &[0.36515, 0.73030, 1.09545, 1.46059, 0.36515, 0.73030]);
        assert!((dot - 2.55604).abs() < 1e-5, "{dot}");
    }

    #[test]
    fn worked_example_zero_pad_is_exact_and_scales_eps() {
        let (xp, n, dot, s) = worked_example(Preset::ZeroPad);
        close(&xp, &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0]);
        close(&n[..4], &[0.36515, 0.73030, 1.09545, 1.46059]);
        close(&n[4..], &[0.0, 0.0]);
        assert!((dot - 2.55604).abs() < 1e-5, "{dot}");
        assert!((s.norm_scale[0] as f64 - 0.81650).abs() < 1e-5);
        assert!((s.eps_scale - 2.0 / 3.0).abs() < 1e-12);
        assert!(s.norm_scale.iter().all(|&v| v != 0.0), "pad gammas must stay nonzero (liveness)");
    }

    #[test]
    fn tied_final_norm_folds_reader_scale() {
        let g = UnitMap::circular(4, 6);
        let fpi = hidden_scales(&g, Preset::Fpi, true);
        assert_eq!(fpi.final_norm_scale, vec![0.5, 0.5, 1.0, 1.0, 0.5, 0.5]);
        let scaled = hidden_scales(&g, Preset::FpiScaled, true);
        for v in scaled.final_norm_scale {
            assert!((v - 4.0 / 6.0).abs() < 1e-6, "fpi-scaled tied final norm is γ·d/D, got {v}");
        }
    }

    fn aquila_7b() -> ModelConfig {
        cfg(json!({"model_type": "qwen2", "vocab_size": 151851, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": false, "torch_dtype": "bfloat16"}))
    }

    #[test]
    fn aquila_7b_to_16b_plan_shapes_without_weights() {
        let src = aquila_7b();
        let plan = ScaleUpPlan::new(&src, &dims(5120, 20480, 40, 40), &ScaleUpOptions::default()).unwrap();
        let t = &plan.target;
        assert_eq!((t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_hidden_layers), (5120, 20480, 40, 40));
        assert_eq!((t.num_key_value_heads, t.head_dim), (8, 128));
        let json = t.to_json();
        assert_eq!(json["head_dim"], 128, "head_dim must be explicit");
        let shape = |name: &str| plan.tensors.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name}")).shape.clone();
        assert_eq!(shape("model.embed_tokens.weight"), vec![151851, 5120]);
        assert_eq!(shape("lm_head.weight"), vec![151851, 5120]);
        assert_eq!(shape("model.norm.weight"), vec![5120]);
        for l in [0, 39] {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            assert_eq!(shape(&p("self_attn.q_proj.weight")), vec![5120, 5120]);
            assert_eq!(shape(&p("self_attn.q_proj.bias")), vec![5120]);
            assert_eq!(shape(&p("self_attn.k_proj.weight")), vec![1024, 5120]);
            assert_eq!(shape(&p("self_attn.v_proj.bias")), vec![1024]);
            assert_eq!(shape(&p("self_attn.o_proj.weight")), vec![5120, 5120]);
            assert_eq!(shape(&p("mlp.gate_proj.weight")), vec![20480, 5120]);
            assert_eq!(shape(&p("mlp.down_proj.weight")), vec![5120, 20480]);
            assert_eq!(shape(&p("input_layernorm.weight")), vec![5120]);
        }
        // 40 layers x (q,qb,k,kb,v,vb,o,gate,up,down,2 norms) + embed + norm + lm_head.
        assert_eq!(plan.tensors.len(), 40 * 12 + 3);
        // Depth: interpolation duplicates source layers 0,4,...,28.
        let dup: Vec<usize> = (1..40).filter(|&l| plan.depth.map[l] == plan.depth.map[l - 1]).map(|l| plan.depth.map[l]).collect();
        assert_eq!(dup, (0..8).map(|k| 4 * k).collect::<Vec<_>>());
        assert_eq!(&plan.heads.map[..10], &[0, 1, 2, 3, 0, 4, 5, 6, 7, 4]);
        // Every rule (computed from the configs alone) covers its tensor exactly.
        for t in &plan.tensors {
            let rule = plan.rule_for(t);
            assert_eq!(rule.rows.len() * rule.cols.len(), t.shape.iter().product::<usize>(), "{}", t.name);
        }
        // The paper's combination (AKI-Pro with plain FPI) is not function preserving.
        assert!(!plan.exactness.exact && plan.exactness.reasons.len() == 3, "{:?}", plan.exactness);
    }

    #[test]
    fn every_rule_covers_its_tensor_shape_and_stays_in_range() {
        let src = cfg(json!({"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
            "attention_bias": true, "mlp_bias": true}));
        for method in Method::ALL {
            let o = ScaleUpOptions { method, fanout: Fanout::Lemon { scale: 0.1 }, aki_scope: AkiScope::All, ..Default::default() };
            let plan = ScaleUpPlan::new(&src, &dims(12, 15, 6, 5), &o).unwrap();
            for t in &plan.tensors {
                let rule = plan.rule_for(t);
                assert_eq!(rule.rows.len() * rule.cols.len(), t.shape.iter().product::<usize>(), "{}", t.name);
                assert!(rule.rows.iter().all(|r| (r.tensor as usize) < rule.sources.len()));
                assert!(rule.cols.iter().all(|c| c.tensor.is_none_or(|k| (k as usize) < rule.sources.len())));
                let uses_upper = rule.sources.len() == 2;
                if let OutputSource::Layer { src_layer, .. } = t.source {
                    assert_eq!(uses_upper, method != Method::Fpi && src_layer < 2, "{} {method:?}", t.name);
                }
            }
        }
    }

    #[test]
    fn zeroed_depth_copies_zero_only_residual_writers() {
        let o = ScaleUpOptions { method: Method::Fpi, depth: Some(DepthMethod::InterpolateIdentity), ..Default::default() };
        let plan = ScaleUpPlan::new(&tiny(), &dims(8, 12, 4, 6), &o).unwrap();
        let zeroed: Vec<(usize, LayerParam)> = plan
            .tensors
            .iter()
            .filter_map(|t| match t.source {
                OutputSource::Layer { out_layer, param, zeroed: true, .. } => Some((out_layer, param)),
                _ => None,
            })
            .collect();
        let down = LayerParam::Mlp(escale_formats::MlpSite::Dense, MlpPart::Down);
        assert_eq!(zeroed, vec![(1, LayerParam::O), (1, down), (4, LayerParam::O), (4, down)]);
        assert!(plan.exactness.exact);
    }

    #[test]
    fn exactness_verdicts() {
        let verdict = |o: ScaleUpOptions, t: Target| ScaleUpPlan::new(&tiny(), &t, &o).unwrap().exactness.exact;
        assert!(verdict(fpi(), dims(16, 12, 4, 4)), "fpi at 2x width is exact");
        assert!(!verdict(fpi(), dims(10, 12, 4, 4)), "fpi at 1.25x is not");
        for preset in [Preset::FpiScaled, Preset::ZeroPad] {
            assert!(verdict(ScaleUpOptions { preset, ..fpi() }, dims(10, 20, 6, 4)), "{preset:?}");
        }
        assert!(verdict(ScaleUpOptions { depth: Some(DepthMethod::Identity), ..fpi() }, dims(16, 12, 4, 8)));
        assert!(!verdict(fpi(), dims(16, 12, 4, 8)), "interpolation repeats layers");
        assert!(!verdict(ScaleUpOptions { method: Method::Aki, ..fpi() }, dims(16, 16, 4, 4)), "AKI with new neurons");
        // AKI with nothing new to fill is plain FPI.
        assert!(verdict(ScaleUpOptions { method: Method::Aki, ..fpi() }, dims(16, 12, 4, 4)));
    }

    fn err(src: &ModelConfig, t: Target, o: ScaleUpOptions) -> String {
        ScaleUpPlan::new(src, &t, &o).unwrap_err().to_string()
    }

    #[test]
    fn bad_targets_are_named() {
        let e = err(&tiny(), dims(6, 12, 4, 4), fpi());
        assert!(e.contains("hidden_size 6 is smaller") && e.contains("src/config.json"), "{e}");
        let e = err(&tiny(), dims(8, 10, 4, 4), fpi());
        assert!(e.contains("intermediate_size 10 is smaller"), "{e}");
        let e = err(&tiny(), dims(8, 12, 2, 4), fpi());
        assert!(e.contains("num_attention_heads 2 is smaller"), "{e}");
        let e = err(&tiny(), dims(8, 12, 4, 3), fpi());
        assert!(e.contains("num_hidden_layers 3 is smaller"), "{e}");
        let e = err(&tiny(), dims(8, 12, 5, 4), fpi());
        assert!(e.contains("not divisible by the 2 KV groups"), "{e}");
    }

    fn target_cfg(edit: impl FnOnce(&mut serde_json::Value)) -> Target {
        let mut v = json!({"model_type": "mistral", "vocab_size": 16, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4});
        edit(&mut v);
        Target::Config(Box::new(ModelConfig::from_json(v, Path::new("target/config.json")).unwrap()))
    }

    #[test]
    fn target_config_must_keep_kv_heads_head_dim_and_architecture() {
        let plan = ScaleUpPlan::new(&tiny(), &target_cfg(|_| {}), &fpi()).unwrap();
        assert_eq!((plan.target.hidden_size, plan.target.num_attention_heads), (16, 8));
        let e = err(&tiny(), target_cfg(|v| v["num_key_value_heads"] = 4.into()), fpi());
        assert!(e.contains("target/config.json") && e.contains("num_key_value_heads 2 -> 4") && e.contains("KV groups"), "{e}");
        let e = err(&tiny(), target_cfg(|v| v["head_dim"] = 2.into()), fpi());
        assert!(e.contains("head_dim 4 -> 2") && e.contains("rotary"), "{e}");
        let e = err(&tiny(), target_cfg(|v| v["vocab_size"] = 32.into()), fpi());
        assert!(e.contains("vocab_size"), "{e}");
        let e = err(&tiny(), target_cfg(|v| v["model_type"] = "qwen2".into()), fpi());
        assert!(e.contains("model_type"), "{e}");
    }

    /// transformers refuses a llama with hidden % heads != 0 even with an explicit head_dim; the
    /// same target on mistral (which honours head_dim) is fine.
    #[test]
    fn llama_targets_transformers_refuses_are_refused() {
        let llama = cfg(json!({"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4}));
        let e = err(&llama, dims(10, 12, 4, 4), fpi());
        assert!(e.contains("hidden_size 10 (--hidden) is not a multiple of num_attention_heads 4") && e.contains("e.g. 8 or 12"), "{e}");
        assert!(ScaleUpPlan::new(&llama, &dims(12, 12, 4, 4), &fpi()).is_ok());
        assert!(ScaleUpPlan::new(&tiny(), &dims(10, 12, 4, 4), &fpi()).is_ok(), "mistral takes the explicit head_dim");
    }

    #[test]
    fn moe_source_and_contradictory_options_are_rejected() {
        let moe = cfg(json!({"model_type": "mixtral", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_local_experts": 4}));
        let e = err(&moe, dims(16, 24, 4, 2), fpi());
        assert!(e.contains("Mixture of Experts") && e.contains("dense"), "{e}");
        let o = ScaleUpOptions { method: Method::AkiPro, depth: Some(DepthMethod::Stack), ..Default::default() };
        let e = err(&tiny(), dims(8, 12, 4, 8), o);
        assert!(e.contains("aki-pro") && e.contains("stack"), "{e}");
        let o = ScaleUpOptions { preset: Preset::ZeroPad, hidden_map: MapKind::Random, ..fpi() };
        assert!(err(&tiny(), dims(12, 12, 4, 4), o).contains("circular"));
        let o = ScaleUpOptions { depth: Some(DepthMethod::Identity), ..fpi() };
        assert!(err(&tiny(), dims(8, 12, 4, 7), o).contains("must divide"));
        let o = ScaleUpOptions { fanout: Fanout::Lemon { scale: -1.0 }, ..fpi() };
        assert!(err(&tiny(), dims(8, 12, 4, 4), o).contains("LEMON"));
    }

    #[test]
    fn zero_pad_scales_eps_in_the_output_config() {
        let o = ScaleUpOptions { preset: Preset::ZeroPad, ..fpi() };
        let plan = ScaleUpPlan::new(&tiny(), &dims(12, 12, 4, 4), &o).unwrap();
        assert!((plan.target.rms_norm_eps - 1e-6 * 8.0 / 12.0).abs() < 1e-18);
        let plan = ScaleUpPlan::new(&tiny(), &dims(12, 12, 4, 4), &fpi()).unwrap();
        assert_eq!(plan.target.rms_norm_eps, 1e-6);
    }

    #[test]
    fn layer_types_follow_the_depth_map() {
        let src = cfg(json!({"model_type": "qwen2", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "layer_types": ["full_attention", "sliding_attention"]}));
        let plan = ScaleUpPlan::new(&src, &dims(8, 12, 4, 4), &fpi()).unwrap();
        assert_eq!(plan.target.to_json()["layer_types"], json!(["full_attention", "full_attention", "sliding_attention", "sliding_attention"]));
    }
}
