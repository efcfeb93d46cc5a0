//! The scale-out plan: validation, the output config, a rule for every output tensor and the
//! exactness verdict, all computed from the source config and the options alone.

use escale_formats::naming::{expected_params, hf_name};
use escale_formats::{LayerParam, MlpPart, MlpSite, ModelConfig, ModelType, MoeConfig, Param};

use super::{MoeFormat, Result, RouterInit, ScaleOutError, ScaleOutOptions};
use crate::plan::{stored_dtype_rounding, Exactness};

/// The qwen2_moe shared expert (mixtral has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SharedExpert {
    /// The format has no shared expert (mixtral).
    Absent,
    /// One neuron, all weights zero and shared gate zero: contributes exactly nothing and receives
    /// zero gradient, so the model behaves (and trains) as a shared-expert-free MoE such as
    /// AquilaMoE. A zero-sized expert would be simpler but is untested in transformers.
    Neutral,
    /// `shards` FFN shards of `I/G` neurons each, laid out circularly (shard `j` is dense shard
    /// `j mod G`); `shards >= G`, so every dense neuron is present, and each copy's `down_proj`
    /// column is divided by its copy count so the shared MLP equals the dense MLP.
    Live { shards: usize },
}

/// What one output tensor is made of. Source names are HF names in the source checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorRule {
    /// The source tensor unchanged (attention, norms, embeddings, head).
    Copy { source: String },
    /// Routed expert `expert` of `layer`: FFN shard `shard` (of `G`) of the dense `part`.
    Expert { source: String, layer: usize, expert: usize, part: MlpPart, shard: usize },
    /// Part of the live shared expert, assembled from dense FFN shards.
    Shared { source: String, part: MlpPart },
    /// The router of `layer`.
    Router { layer: usize },
    /// All zeros: the neutral shared expert and its gate, the shared-expert gate of a live
    /// shared expert (`sigmoid(0) = ½`), and QKV biases a bias-free source lacks.
    Zeros,
}

/// One tensor of the output checkpoint, with the scale-out rule that makes it.
pub type PlannedTensor = crate::plan::PlannedTensor<TensorRule>;

/// A validated scale-out, ready to execute with [`super::upcycle`].
#[derive(Clone, Debug)]
pub struct ScaleOutPlan {
    pub options: ScaleOutOptions,
    pub format: MoeFormat,
    pub source_type: ModelType,
    /// The output config.json (a clone of the source's, edited).
    pub config: ModelConfig,
    /// Dense FFN size `I`.
    pub dense_ffn: usize,
    /// Routed expert FFN size `I / G`.
    pub expert_ffn: usize,
    pub shared: SharedExpert,
    /// Shared expert FFN size (0 when absent).
    pub shared_ffn: usize,
    /// Factor applied to every routed `down_proj`: `G · α`, with `α = ½` next to a live shared
    /// expert and 1 otherwise.
    pub routed_down_scale: f64,
    pub exactness: Exactness,
    /// Things the user must hear about (non-renormalised routing, partial groups, ...).
    pub warnings: Vec<String>,
    /// Every output tensor in transformers' `state_dict` order.
    pub tensors: Vec<PlannedTensor>,
}

fn check_finite(flag: &'static str, value: f64, max: Option<f64>) -> Result<()> {
    if !value.is_finite() || value < 0.0 || max.is_some_and(|m| value > m) {
        let range = match max {
            Some(m) => format!("between 0 and {m}"),
            None => "a finite number >= 0".to_string(),
        };
        return Err(ScaleOutError::option(flag, format!("{value} must be {range}")));
    }
    Ok(())
}

/// Rejects sources that are already MoE or carry biases no stock MoE class can hold.
fn check_source(src: &ModelConfig) -> Result<()> {
    let err = |message: String| ScaleOutError::Source { path: src.source().to_path_buf(), message };
    if src.model_type.is_moe() || src.moe.is_some() {
        return Err(err(format!(
            "the source is already a Mixture of Experts (model_type {}); scale-out upcycles dense llama, \
             mistral, qwen2 or qwen3 models",
            src.model_type
        )));
    }
    // qwen3's attention_bias covers o_proj too, and so does qwen3_moe's (the only format for it).
    if src.o_bias && !src.model_type.has_qk_norm() {
        return Err(err(
            "the source has an o_proj bias (llama attention_bias=true); neither Mixtral nor Qwen2-MoE can carry it".into(),
        ));
    }
    if src.mlp_bias {
        return Err(err("the source has MLP biases (mlp_bias=true); neither Mixtral nor Qwen2-MoE experts can carry them".into()));
    }
    Ok(())
}

/// Checks the layer pattern: a step of at least 1, dense layers that exist, and one sparse layer.
fn check_layer_pattern(src: &ModelConfig, o: &ScaleOutOptions) -> Result<()> {
    let n = src.num_hidden_layers;
    if o.sparse_step == 0 {
        return Err(ScaleOutError::option("--sparse-step", "must be at least 1 (1 makes every layer sparse)"));
    }
    if let Some(&l) = o.dense_layers.iter().find(|&&l| l >= n) {
        return Err(ScaleOutError::option(
            "--dense-layers",
            format!("layer {l} does not exist: the source has {n} layers (0..{})", n.saturating_sub(1)),
        ));
    }
    let sparse = (0..n).filter(|&l| (l + 1) % o.sparse_step == 0 && !o.dense_layers.contains(&l)).count();
    if sparse == 0 {
        return Err(ScaleOutError::option(
            if o.dense_layers.is_empty() { "--sparse-step" } else { "--dense-layers" },
            format!("no layer of the {n} would be sparse (step {}, dense layers {:?})", o.sparse_step, o.dense_layers),
        ));
    }
    Ok(())
}

/// Checks the sizes: top-k, granularity.
fn check_sizes(src: &ModelConfig, o: &ScaleOutOptions) -> Result<()> {
    if o.experts == 0 {
        return Err(ScaleOutError::option("--experts", "must be at least 1"));
    }
    let max_experts = escale_formats::config::limits::MAX_EXPERTS;
    if o.experts > max_experts {
        return Err(ScaleOutError::option("--experts", format!("{} is not plausible (escale accepts at most {max_experts})", o.experts)));
    }
    if o.top_k == 0 || o.top_k > o.experts {
        return Err(ScaleOutError::option(
            "--top-k",
            format!("{} must be between 1 and --experts ({})", o.top_k, o.experts),
        ));
    }
    let g = o.granularity;
    if g == 0 {
        return Err(ScaleOutError::option("--granularity", "must be at least 1"));
    }
    if !src.intermediate_size.is_multiple_of(g) {
        return Err(ScaleOutError::option(
            "--granularity",
            format!(
                "{g} does not divide the FFN size {} (intermediate_size in {}); each expert must hold a whole 1/{g} shard",
                src.intermediate_size,
                src.source().display()
            ),
        ));
    }
    if !o.experts.is_multiple_of(g) {
        return Err(ScaleOutError::option(
            "--granularity",
            format!("{g} does not divide --experts {}; experts form virtual groups of {g} shards", o.experts),
        ));
    }
    Ok(())
}

/// The output config: the source's, with the MoE fields set and everything else untouched.
fn output_config(src: &ModelConfig, plan: &ScaleOutPlan) -> ModelConfig {
    let o = &plan.options;
    let mut cfg = src.clone();
    cfg.model_type = plan.format.model_type();
    cfg.moe = Some(MoeConfig {
        num_experts: o.experts,
        num_experts_per_tok: o.top_k,
        expert_intermediate_size: plan.expert_ffn,
        shared_expert_intermediate_size: plan.shared_ffn,
        norm_topk_prob: plan.format.renormalizes(o),
        router_aux_loss_coef: o.aux_loss_coef,
        decoder_sparse_step: o.sparse_step,
        mlp_only_layers: o.dense_layers.clone(),
    });
    plan.format.edit_config(&mut cfg, plan);
    if let Some(d) = o.dtype {
        cfg.dtype = Some(d);
    }
    cfg
}

impl ScaleOutPlan {
    /// Validates `options` against the dense `source` config and plans the output.
    pub fn new(source: &ModelConfig, options: &ScaleOutOptions) -> Result<ScaleOutPlan> {
        check_source(source)?;
        check_sizes(source, options)?;
        check_layer_pattern(source, options)?;
        check_finite("--router-std", options.router_std, None)?;
        check_finite("--noise", options.noise, None)?;
        check_finite("--drop-upcycling", options.drop_ratio, Some(1.0))?;
        check_finite("--aux-loss-coef", options.aux_loss_coef, None)?;
        let format = MoeFormat::resolve(source, options);
        format.check(source, options)?;
        let shared = format.shared_expert(options);
        let g = options.granularity;
        let expert_ffn = source.intermediate_size / g;
        let (shared_ffn, alpha) = match shared {
            SharedExpert::Absent => (0, 1.0),
            SharedExpert::Neutral => (1, 1.0),
            // sigmoid(0)·S + α·MLP with S = MLP: α = ½.
            SharedExpert::Live { shards } => (shards.saturating_mul(expert_ffn), 0.5),
        };
        let mut plan = ScaleOutPlan {
            options: options.clone(),
            format,
            source_type: source.model_type,
            config: source.clone(),
            dense_ffn: source.intermediate_size,
            expert_ffn,
            shared,
            shared_ffn,
            routed_down_scale: g as f64 * alpha,
            exactness: Exactness::default(),
            warnings: Vec::new(),
            tensors: Vec::new(),
        };
        plan.config = output_config(source, &plan);
        // Bound the output (experts x layers x FFN) before listing a rule per tensor.
        plan.config.check_sizes().map_err(|e| {
            let flag = if e.field == "shared_expert_intermediate_size" { "--shared-experts" } else { "--experts" };
            ScaleOutError::option(flag, format!("the output's {}: {}", e.field, e.message))
        })?;
        plan.judge_exactness(source);
        plan.tensors = plan_tensors(source, &plan);
        Ok(plan)
    }

    /// Router rows per layer drawn independently (`experts / G`).
    pub fn router_groups(&self) -> usize {
        self.options.experts / self.options.granularity
    }

    /// Scale of each of the `N` live shared-expert shards' `down_proj` columns: `1 / copies` of
    /// that dense shard, so the shared MLP sums to exactly the dense MLP.
    pub fn shared_shard_scales(&self) -> Vec<(usize, f64)> {
        let SharedExpert::Live { shards } = self.shared else { return Vec::new() };
        let g = self.options.granularity;
        let copies = |s: usize| shards / g + usize::from(s < shards % g);
        (0..shards).map(|j| (j % g, 1.0 / copies(j % g) as f64)).collect()
    }

    fn judge_exactness(&mut self, source: &ModelConfig) {
        let o = &self.options;
        let mut broken = Vec::new();
        let mut notes = Vec::new();
        if o.noise > 0.0 {
            broken.push(format!("--noise {} adds Gaussian noise to every routed expert", o.noise));
        }
        if o.drop_ratio > 0.0 && (o.drop_ratio * self.expert_ffn as f64).floor() >= 1.0 {
            broken.push(format!("--drop-upcycling {} re-initialises neurons of every expert", o.drop_ratio));
        }
        if !self.config.moe.as_ref().is_some_and(|m| m.norm_topk_prob) && o.top_k < o.experts {
            let msg = "routing weights are not renormalised (norm_topk_prob=false): each token's MLP output is scaled \
                       by its top-k probability mass, so the model is NOT function-preserving";
            broken.push(msg.to_string());
            self.warnings.push(format!("WARNING: {msg}"));
        }
        if !o.top_k.is_multiple_of(o.granularity) {
            let msg = format!(
                "--top-k {} is not a multiple of --granularity {}: routing selects partial FFN groups",
                o.top_k, o.granularity
            );
            self.warnings.push(format!("WARNING: {msg}; the output is not the dense output"));
            broken.push(msg);
        } else if o.granularity > 1 && o.router_init == RouterInit::Zeros && o.top_k < o.experts {
            let msg = "a zeros router with --granularity > 1 makes every expert tie, so top-k may split virtual groups";
            self.warnings.push(format!("WARNING: {msg}"));
            broken.push(msg.to_string());
        }
        if !self.expert_ffn.is_multiple_of(8) {
            // Found by the oracle tests: transformers 5 runs experts through torch's grouped_mm,
            // which rejects row strides that are not a multiple of 16 bytes.
            self.warnings.push(format!(
                "note: expert FFN size {} is not a multiple of 8; transformers 5's grouped-matmul experts kernel \
                 needs 16-byte strides and may refuse this model (escale's own engine does not mind)",
                self.expert_ffn
            ));
        }
        let scale = self.routed_down_scale;
        if scale != 1.0 && scale.log2().fract() != 0.0 {
            notes.push(format!("routed down_proj scaled by {scale} (one rounding per weight)"));
        }
        if let Some(d) = o.dtype.filter(|d| Some(*d) != source.dtype) {
            notes.push(format!("weights converted to {d} (one rounding per weight when narrowing)"));
        }
        notes.push(
            "exact up to the rounding of the routing weights (transformers casts them to the model dtype: in bf16 \
             the top-k weights sum to 1 within about 2^-8)"
                .into(),
        );
        notes.extend(self.format.notes(source));
        self.exactness = Exactness::from_reasons(broken, notes);
        if self.exactness.exact {
            let scales = std::iter::once(scale).chain(self.shared_shard_scales().into_iter().map(|(_, s)| s)).map(|s| s as f32);
            self.exactness.stored_dtype_rounding = stored_dtype_rounding(source.dtype, o.dtype.or(source.dtype), scales);
        }
    }
}

/// The rule for every output tensor, in the output's `state_dict` order.
fn plan_tensors(source: &ModelConfig, plan: &ScaleOutPlan) -> Vec<PlannedTensor> {
    let out_type = plan.config.model_type;
    let src_name = |p: Param| hf_name(source.model_type, p);
    expected_params(&plan.config)
        .into_iter()
        .map(|(param, shape)| {
            let rule = match param {
                Param::Layer(l, LayerParam::Router) => TensorRule::Router { layer: l },
                Param::Layer(_, LayerParam::SharedExpertGate) => TensorRule::Zeros,
                Param::Layer(l, LayerParam::Mlp(MlpSite::Expert(e), part)) => TensorRule::Expert {
                    source: src_name(Param::Layer(l, LayerParam::Mlp(MlpSite::Dense, part))),
                    layer: l,
                    expert: e,
                    part,
                    shard: e % plan.options.granularity,
                },
                Param::Layer(l, LayerParam::Mlp(MlpSite::Shared, part)) => match plan.shared {
                    SharedExpert::Live { .. } => TensorRule::Shared {
                        source: src_name(Param::Layer(l, LayerParam::Mlp(MlpSite::Dense, part))),
                        part,
                    },
                    _ => TensorRule::Zeros,
                },
                Param::Layer(_, LayerParam::QBias | LayerParam::KBias | LayerParam::VBias) if !source.qkv_bias => {
                    TensorRule::Zeros
                }
                other => TensorRule::Copy { source: src_name(other) },
            };
            PlannedTensor { name: hf_name(out_type, param), dtype: plan.options.dtype, shape, rule }
        })
        .collect()
}
