//! Typed view of a Hugging Face `config.json` for the LLaMA family and its MoE forms.
//!
//! The typed fields are what escale reasons about; the original JSON object is kept verbatim so
//! that a read-then-write round trip loses nothing (rope scaling, sliding window, dtype keys, token
//! ids, anything a future transformers adds). On write, only fields whose typed value changed are
//! written back, so untouched configs come out key-for-key identical.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::dtype::DType;
use crate::error::{FormatError, Result};

/// The HF `model_type`s escale understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    Mixtral,
    Qwen2Moe,
    Qwen3,
    Qwen3Moe,
}

impl ModelType {
    pub const ALL: [ModelType; 7] = [
        ModelType::Llama,
        ModelType::Mistral,
        ModelType::Qwen2,
        ModelType::Mixtral,
        ModelType::Qwen2Moe,
        ModelType::Qwen3,
        ModelType::Qwen3Moe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Mixtral => "mixtral",
            ModelType::Qwen2Moe => "qwen2_moe",
            ModelType::Qwen3 => "qwen3",
            ModelType::Qwen3Moe => "qwen3_moe",
        }
    }

    pub fn parse(s: &str) -> Option<ModelType> {
        ModelType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_moe(self) -> bool {
        matches!(self, ModelType::Mixtral | ModelType::Qwen2Moe | ModelType::Qwen3Moe)
    }

    /// Qwen3 and Qwen3-MoE RMS-normalise every query and key head over `head_dim` (weights
    /// `self_attn.q_norm` / `self_attn.k_norm`, shape `[head_dim]`) before RoPE.
    pub fn has_qk_norm(self) -> bool {
        matches!(self, ModelType::Qwen3 | ModelType::Qwen3Moe)
    }

    /// The transformers class written into `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Mixtral => "MixtralForCausalLM",
            ModelType::Qwen2Moe => "Qwen2MoeForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
            ModelType::Qwen3Moe => "Qwen3MoeForCausalLM",
        }
    }

    pub fn supported_list() -> String {
        ModelType::ALL.map(|t| t.as_str()).join(", ")
    }
}

impl std::fmt::Display for ModelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest sizes escale accepts, in configs and growth flags alike. They sit far above any
/// published checkpoint (hidden 16384, FFN 53248, vocab 256k, 128 layers, 384 experts) and far
/// below what would exhaust memory in the per-channel, per-layer and per-tensor plans.
pub mod limits {
    /// hidden, intermediate, vocab and head_dim sizes.
    pub const MAX_WIDTH: usize = 1 << 22;
    pub const MAX_HEADS: usize = 1 << 16;
    pub const MAX_LAYERS: usize = 4096;
    pub const MAX_EXPERTS: usize = 4096;
    /// Stored parameters: 4.4 T (8.8 TB in bf16).
    pub const MAX_PARAMS: u64 = 1 << 42;
    /// Stored tensors (the growth plans hold one record each).
    pub const MAX_TENSORS: u64 = 1 << 22;
}

/// A config value out of range: the field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeError {
    /// The config.json key (or `<sizes>` for the totals).
    pub field: &'static str,
    pub message: String,
}

impl SizeError {
    fn new(field: &'static str, message: impl Into<String>) -> SizeError {
        SizeError { field, message: message.into() }
    }
}

impl std::fmt::Display for SizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Mixture-of-Experts settings (mixtral: `num_local_experts`; qwen2_moe and qwen3_moe: `num_experts`
/// and friends; transformers writes qwen3_moe's count as `num_local_experts`, the hub as `num_experts`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// FFN size of one routed expert (mixtral: `intermediate_size`; qwen2_moe: `moe_intermediate_size`).
    pub expert_intermediate_size: usize,
    /// FFN size of the shared expert; 0 when the family has none (mixtral, qwen3_moe).
    pub shared_expert_intermediate_size: usize,
    /// Renormalise the top-k routing weights to sum to one (always true for mixtral).
    pub norm_topk_prob: bool,
    pub router_aux_loss_coef: f64,
    /// qwen2_moe / qwen3_moe: layer `l` is sparse when `(l + 1) % decoder_sparse_step == 0` ...
    pub decoder_sparse_step: usize,
    /// ... and `l` is not listed here.
    pub mlp_only_layers: Vec<usize>,
}

/// Typed view of config.json. Construct with [`ModelConfig::from_file`] or [`ModelConfig::from_json`].
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense MLP size (for qwen2_moe and qwen3_moe: the size used by the dense layers).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `rope_scaling` (v4) or non-default `rope_parameters` (v5), verbatim.
    pub rope_scaling: Option<Value>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections (qwen2 always; llama, qwen3 and qwen3_moe with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (`attention_bias` of llama, qwen3 and qwen3_moe).
    pub o_bias: bool,
    /// Bias on gate/up/down (llama `mlp_bias`).
    pub mlp_bias: bool,
    pub hidden_act: String,
    pub initializer_range: f64,
    pub sliding_window: Option<usize>,
    /// Storage dtype declared in the config (`torch_dtype` or `dtype`), if any.
    pub dtype: Option<DType>,
    pub moe: Option<MoeConfig>,
    /// The JSON object as read; fields escale does not model are written back from here.
    raw: Map<String, Value>,
    /// Where it came from, for error messages.
    source: PathBuf,
}

fn get_usize(raw: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<usize>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| FormatError::field(path, key, format!("expected a non-negative integer, found {v}"))),
    }
}

fn req_usize(raw: &Map<String, Value>, path: &Path, key: &str) -> Result<usize> {
    get_usize(raw, path, key)?.ok_or_else(|| FormatError::field(path, key, "missing (required)"))
}

fn get_f64(raw: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<f64>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| FormatError::field(path, key, format!("expected a number, found {v}"))),
    }
}

fn get_bool(raw: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<bool>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| FormatError::field(path, key, format!("expected true or false, found {v}"))),
    }
}

/// `head_dim` of a qwen3 config.json that does not state it (transformers' `Qwen3Config` default).
pub const QWEN3_DEFAULT_HEAD_DIM: usize = 128;

fn mlp_only_layers(raw: &Map<String, Value>, path: &Path) -> Result<Vec<usize>> {
    match raw.get("mlp_only_layers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| FormatError::field(path, "mlp_only_layers", "expected a list of layer indices")),
    }
}

/// qwen3_moe's expert count: the hub's configs say `num_experts`, transformers 5 writes the same
/// attribute as `num_local_experts` (its `attribute_map`); either is accepted, both must agree.
fn qwen3_moe_experts(raw: &Map<String, Value>, path: &Path) -> Result<usize> {
    match (get_usize(raw, path, "num_experts")?, get_usize(raw, path, "num_local_experts")?) {
        (Some(a), Some(b)) if a != b => Err(FormatError::field(
            path,
            "num_experts",
            format!("{a} disagrees with num_local_experts ({b}); they name the same setting"),
        )),
        (Some(n), _) | (None, Some(n)) => Ok(n),
        (None, None) => Err(FormatError::field(path, "num_experts", "missing (required; or num_local_experts)")),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| FormatError::Json { path: path.to_path_buf(), cause: e })?;
        ModelConfig::from_json(value, path)
    }

    /// Parses a config object; `path` is only used in error messages.
    pub fn from_json(value: Value, path: &Path) -> Result<ModelConfig> {
        let Value::Object(raw) = value else {
            return Err(FormatError::field(path, "<root>", "config.json must be a JSON object"));
        };
        let type_str = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| FormatError::field(path, "model_type", "missing or not a string"))?;
        let model_type = ModelType::parse(type_str).ok_or_else(|| FormatError::UnsupportedModelType {
            path: path.to_path_buf(),
            found: type_str.to_string(),
            supported: ModelType::supported_list(),
        })?;

        let hidden_size = req_usize(&raw, path, "hidden_size")?;
        let num_attention_heads = req_usize(&raw, path, "num_attention_heads")?;
        let num_key_value_heads = get_usize(&raw, path, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(FormatError::field(
                path,
                "num_key_value_heads",
                format!("{num_key_value_heads} must be positive and divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let head_dim = match get_usize(&raw, path, "head_dim")? {
            Some(h) => h,
            // Qwen3Config's own default, not hidden/heads (Qwen3MoeConfig has none and falls back to it).
            None if model_type == ModelType::Qwen3 => QWEN3_DEFAULT_HEAD_DIM,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(FormatError::field(
                        path,
                        "head_dim",
                        "absent, and hidden_size is not divisible by num_attention_heads",
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(FormatError::field(path, "head_dim", format!("{head_dim} must be even for rotary embeddings")));
        }

        let rope_params = raw.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match get_f64(&raw, path, "rope_theta")? {
            Some(t) => t,
            None => rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).unwrap_or(10000.0),
        };
        let rope_scaling = match raw.get("rope_scaling") {
            Some(Value::Null) | None => rope_params
                .filter(|p| p.get("rope_type").and_then(Value::as_str).is_some_and(|t| t != "default"))
                .map(|p| Value::Object(p.clone())),
            Some(v) => Some(v.clone()),
        };

        let hidden_act = match raw.get("hidden_act") {
            None => "silu".to_string(),
            Some(Value::String(s)) if s == "silu" || s == "swish" => s.clone(),
            Some(other) => {
                return Err(FormatError::field(
                    path,
                    "hidden_act",
                    format!("{other} is not supported (escale models use SwiGLU: \"silu\")"),
                ))
            }
        };

        let (qkv_bias, o_bias, mlp_bias) = match model_type {
            ModelType::Llama => {
                let attn = get_bool(&raw, path, "attention_bias")?.unwrap_or(false);
                (attn, attn, get_bool(&raw, path, "mlp_bias")?.unwrap_or(false))
            }
            ModelType::Qwen3 | ModelType::Qwen3Moe => {
                let attn = get_bool(&raw, path, "attention_bias")?.unwrap_or(false);
                (attn, attn, false)
            }
            ModelType::Qwen2 => (true, false, false),
            ModelType::Qwen2Moe => (get_bool(&raw, path, "qkv_bias")?.unwrap_or(true), false, false),
            ModelType::Mistral | ModelType::Mixtral => (false, false, false),
        };

        let dtype_str = raw
            .get("torch_dtype")
            .or_else(|| raw.get("dtype"))
            .and_then(Value::as_str);
        let dtype = dtype_str.and_then(DType::parse);

        let moe = match model_type {
            ModelType::Mixtral => Some(MoeConfig {
                num_experts: req_usize(&raw, path, "num_local_experts")?,
                num_experts_per_tok: get_usize(&raw, path, "num_experts_per_tok")?.unwrap_or(2),
                expert_intermediate_size: req_usize(&raw, path, "intermediate_size")?,
                shared_expert_intermediate_size: 0,
                norm_topk_prob: true,
                router_aux_loss_coef: get_f64(&raw, path, "router_aux_loss_coef")?.unwrap_or(0.001),
                decoder_sparse_step: 1,
                mlp_only_layers: Vec::new(),
            }),
            ModelType::Qwen2Moe => Some(MoeConfig {
                num_experts: req_usize(&raw, path, "num_experts")?,
                num_experts_per_tok: get_usize(&raw, path, "num_experts_per_tok")?.unwrap_or(4),
                expert_intermediate_size: req_usize(&raw, path, "moe_intermediate_size")?,
                shared_expert_intermediate_size: get_usize(&raw, path, "shared_expert_intermediate_size")?
                    .unwrap_or(0),
                norm_topk_prob: get_bool(&raw, path, "norm_topk_prob")?.unwrap_or(false),
                router_aux_loss_coef: get_f64(&raw, path, "router_aux_loss_coef")?.unwrap_or(0.001),
                decoder_sparse_step: get_usize(&raw, path, "decoder_sparse_step")?.unwrap_or(1).max(1),
                mlp_only_layers: mlp_only_layers(&raw, path)?,
            }),
            ModelType::Qwen3Moe => Some(MoeConfig {
                num_experts: qwen3_moe_experts(&raw, path)?,
                num_experts_per_tok: get_usize(&raw, path, "num_experts_per_tok")?.unwrap_or(8),
                expert_intermediate_size: req_usize(&raw, path, "moe_intermediate_size")?,
                shared_expert_intermediate_size: 0,
                norm_topk_prob: get_bool(&raw, path, "norm_topk_prob")?.unwrap_or(false),
                router_aux_loss_coef: get_f64(&raw, path, "router_aux_loss_coef")?.unwrap_or(0.001),
                decoder_sparse_step: get_usize(&raw, path, "decoder_sparse_step")?.unwrap_or(1).max(1),
                mlp_only_layers: mlp_only_layers(&raw, path)?,
            }),
            _ => None,
        };
        if let Some(m) = &moe {
            if m.num_experts == 0 || m.num_experts_per_tok == 0 || m.num_experts_per_tok > m.num_experts {
                return Err(FormatError::field(
                    path,
                    "num_experts_per_tok",
                    format!("{} must be between 1 and the number of experts ({})", m.num_experts_per_tok, m.num_experts),
                ));
            }
        }

        let cfg = ModelConfig {
            model_type,
            vocab_size: req_usize(&raw, path, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(&raw, path, "intermediate_size")?,
            num_hidden_layers: req_usize(&raw, path, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(&raw, path, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get_usize(&raw, path, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: get_bool(&raw, path, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            hidden_act,
            initializer_range: get_f64(&raw, path, "initializer_range")?.unwrap_or(0.02),
            sliding_window: get_usize(&raw, path, "sliding_window")?,
            dtype,
            moe,
            raw,
            source: path.to_path_buf(),
        };
        cfg.check_values().map_err(|e| FormatError::field(path, e.field, e.message))?;
        Ok(cfg)
    }

    /// Checks the numeric fields whose nonsense values would otherwise surface later as a
    /// misleading error or a silent NaN: a positive, finite `rms_norm_eps` and `rope_theta`,
    /// positive `max_position_embeddings` and `vocab_size`, and every size within [`limits`].
    pub fn check_values(&self) -> std::result::Result<(), SizeError> {
        let positive_finite = [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)];
        for (field, value) in positive_finite {
            if !(value.is_finite() && value > 0.0) {
                return Err(SizeError::new(field, format!("{value} must be a positive finite number")));
            }
        }
        if !self.initializer_range.is_finite() || self.initializer_range < 0.0 {
            let message = format!("{} must be a finite number >= 0", self.initializer_range);
            return Err(SizeError::new("initializer_range", message));
        }
        for (field, value) in [("max_position_embeddings", self.max_position_embeddings), ("vocab_size", self.vocab_size)] {
            if value == 0 {
                return Err(SizeError::new(field, "must be at least 1"));
            }
        }
        self.check_sizes()
    }

    /// Bounds every size (see [`limits`]) and the total parameter and tensor counts, with checked
    /// arithmetic, so that nothing downstream allocates per layer, per expert or per channel for
    /// an absurd config (a corrupt file, or a growth target typed with one digit too many).
    pub fn check_sizes(&self) -> std::result::Result<(), SizeError> {
        use limits::*;
        let moe = self.moe.as_ref();
        let bounded = [
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("vocab_size", self.vocab_size, MAX_WIDTH),
            ("head_dim", self.head_dim, MAX_WIDTH),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_experts", moe.map_or(0, |m| m.num_experts), MAX_EXPERTS),
            ("expert_intermediate_size", moe.map_or(0, |m| m.expert_intermediate_size), MAX_WIDTH),
            ("shared_expert_intermediate_size", moe.map_or(0, |m| m.shared_expert_intermediate_size), MAX_WIDTH),
        ];
        for (field, value, max) in bounded {
            if value > max {
                return Err(SizeError::new(field, format!("{value} is not plausible (escale accepts at most {max})")));
            }
        }
        let too_big = |what: &str| SizeError::new("<sizes>", format!("the model's {what} overflows"));
        let params = self.param_upper_bound().ok_or_else(|| too_big("parameter count"))?;
        if params > MAX_PARAMS {
            return Err(SizeError::new(
                "<sizes>",
                format!("{params} parameters is not plausible (escale accepts at most {MAX_PARAMS})"),
            ));
        }
        let tensors = self.tensor_upper_bound().ok_or_else(|| too_big("tensor count"))?;
        if tensors > MAX_TENSORS {
            return Err(SizeError::new(
                "<sizes>",
                format!("{tensors} tensors is not plausible (escale accepts at most {MAX_TENSORS}); fewer layers or experts"),
            ));
        }
        Ok(())
    }

    /// An upper bound on the stored parameters (biases and norms over-counted), in checked
    /// arithmetic: `None` when it does not fit in a u64.
    fn param_upper_bound(&self) -> Option<u64> {
        let u = |v: usize| v as u64;
        let (h, hd) = (u(self.hidden_size), u(self.head_dim));
        let q_width = u(self.num_attention_heads).checked_mul(hd)?;
        let kv_width = u(self.num_key_value_heads).checked_mul(hd)?;
        // q, k, v, o and their biases, two norms.
        let attention = h.checked_add(1)?.checked_mul(q_width.checked_mul(2)?.checked_add(kv_width.checked_mul(2)?)?)?;
        let norms = h.checked_add(hd)?.checked_mul(2)?;
        let mlp = |ffn: u64| h.checked_add(1)?.checked_mul(ffn.checked_mul(3)?);
        let ffn = match &self.moe {
            None => mlp(u(self.intermediate_size))?,
            Some(m) => {
                let experts = mlp(u(m.expert_intermediate_size))?.checked_mul(u(m.num_experts))?;
                let router = h.checked_mul(u(m.num_experts).checked_add(1)?)?;
                let dense = mlp(u(self.intermediate_size))?;
                let shared = mlp(u(m.shared_expert_intermediate_size))?;
                experts.checked_add(router)?.checked_add(dense.max(shared))?
            }
        };
        let per_layer = attention.checked_add(norms)?.checked_add(ffn)?;
        let layers = per_layer.checked_mul(u(self.num_hidden_layers))?;
        let embeddings = u(self.vocab_size).checked_mul(h)?.checked_mul(2)?;
        layers.checked_add(embeddings)?.checked_add(h)
    }

    /// An upper bound on the number of stored tensors.
    fn tensor_upper_bound(&self) -> Option<u64> {
        let experts = self.moe.as_ref().map_or(0, |m| m.num_experts as u64);
        // 17 per layer covers attention with biases and q/k norms, norms, router, dense or shared MLP and gates.
        let per_layer = experts.checked_mul(3)?.checked_add(17)?;
        per_layer.checked_mul(self.num_hidden_layers as u64)?.checked_add(3)
    }

    /// Where this config was read from (for error messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The JSON as read (unknown fields included).
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// Sets or removes an extra (unmodelled) field, e.g. `rope_scaling` or `output_router_logits`.
    pub fn set_extra(&mut self, key: &str, value: Option<Value>) {
        match value {
            Some(v) => {
                self.raw.insert(key.to_string(), v);
            }
            None => {
                self.raw.shift_remove(key);
            }
        }
    }

    /// Whether decoder layer `layer` has a sparse MoE block (false for dense models).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        match (&self.moe, self.model_type) {
            (None, _) => false,
            (Some(_), ModelType::Mixtral) => true,
            (Some(m), _) => (layer + 1).is_multiple_of(m.decoder_sparse_step) && !m.mlp_only_layers.contains(&layer),
        }
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Serialises back to JSON: the original object, with every typed field that changed written in.
    pub fn to_json(&self) -> Value {
        let original = ModelConfig::from_json(Value::Object(self.raw.clone()), &self.source).ok();
        let mut out = self.raw.clone();
        let o = original.as_ref();
        if o.map(|c| c.model_type) != Some(self.model_type) {
            out.insert("model_type".into(), self.model_type.as_str().into());
            out.insert("architectures".into(), Value::Array(vec![self.model_type.architecture().into()]));
        }
        // Write a field only when its typed value differs from what the original JSON says, so
        // untouched fields keep their exact original spelling (e.g. `1e-05` stays `1e-05`).
        let mut put = |key: &str, new: Value, old: Option<Value>| {
            if old.as_ref() != Some(&new) {
                out.insert(key.to_string(), new);
            }
        };
        put("vocab_size", self.vocab_size.into(), o.map(|c| c.vocab_size.into()));
        put("hidden_size", self.hidden_size.into(), o.map(|c| c.hidden_size.into()));
        put("intermediate_size", self.intermediate_size.into(), o.map(|c| c.intermediate_size.into()));
        put("num_hidden_layers", self.num_hidden_layers.into(), o.map(|c| c.num_hidden_layers.into()));
        put("num_attention_heads", self.num_attention_heads.into(), o.map(|c| c.num_attention_heads.into()));
        // These two have defaults derived from other fields: once those change, state them explicitly.
        let heads_changed = o.is_none_or(|c| c.num_attention_heads != self.num_attention_heads);
        // A new family may default head_dim differently (qwen3: 128; the others: hidden/heads).
        let type_changed = o.is_none_or(|c| c.model_type != self.model_type);
        let width_changed = heads_changed || type_changed || o.is_none_or(|c| c.hidden_size != self.hidden_size);
        let kv_old = if heads_changed { None } else { o.map(|c| c.num_key_value_heads.into()) };
        put("num_key_value_heads", self.num_key_value_heads.into(), kv_old);
        let head_dim_old = if width_changed { None } else { o.map(|c| c.head_dim.into()) };
        put("head_dim", self.head_dim.into(), head_dim_old);
        put("rms_norm_eps", self.rms_norm_eps.into(), o.map(|c| c.rms_norm_eps.into()));
        put(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
            o.map(|c| c.max_position_embeddings.into()),
        );
        put("tie_word_embeddings", self.tie_word_embeddings.into(), o.map(|c| c.tie_word_embeddings.into()));
        put("initializer_range", self.initializer_range.into(), o.map(|c| c.initializer_range.into()));
        if let Some(d) = self.dtype {
            let key = if self.raw.contains_key("dtype") && !self.raw.contains_key("torch_dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            put(key, d.torch_name().into(), o.and_then(|c| c.dtype).map(|d| d.torch_name().into()));
        }
        match self.model_type {
            ModelType::Llama => {
                let attn = self.qkv_bias || self.o_bias;
                put("attention_bias", attn.into(), o.map(|c| (c.qkv_bias || c.o_bias).into()));
                put("mlp_bias", self.mlp_bias.into(), o.map(|c| c.mlp_bias.into()));
            }
            ModelType::Qwen3 | ModelType::Qwen3Moe => {
                let attn = self.qkv_bias || self.o_bias;
                put("attention_bias", attn.into(), o.map(|c| (c.qkv_bias || c.o_bias).into()));
            }
            ModelType::Qwen2Moe => {
                put("qkv_bias", self.qkv_bias.into(), o.map(|c| c.qkv_bias.into()));
            }
            _ => {}
        }
        if let Some(m) = &self.moe {
            let om = o.and_then(|c| c.moe.as_ref());
            put("num_experts_per_tok", m.num_experts_per_tok.into(), om.map(|x| x.num_experts_per_tok.into()));
            put("router_aux_loss_coef", m.router_aux_loss_coef.into(), om.map(|x| x.router_aux_loss_coef.into()));
            match self.model_type {
                ModelType::Mixtral => {
                    put("num_local_experts", m.num_experts.into(), om.map(|x| x.num_experts.into()));
                    // Mixtral has one FFN size: the expert's.
                    out.insert("intermediate_size".into(), m.expert_intermediate_size.into());
                }
                _ => {
                    // qwen3_moe as transformers writes it says `num_local_experts`; keep that spelling.
                    let experts_key = if self.model_type == ModelType::Qwen3Moe
                        && self.raw.contains_key("num_local_experts")
                        && !self.raw.contains_key("num_experts")
                    {
                        "num_local_experts"
                    } else {
                        "num_experts"
                    };
                    put(experts_key, m.num_experts.into(), om.map(|x| x.num_experts.into()));
                    put(
                        "moe_intermediate_size",
                        m.expert_intermediate_size.into(),
                        om.map(|x| x.expert_intermediate_size.into()),
                    );
                    if self.model_type == ModelType::Qwen2Moe {
                        put(
                            "shared_expert_intermediate_size",
                            m.shared_expert_intermediate_size.into(),
                            om.map(|x| x.shared_expert_intermediate_size.into()),
                        );
                    }
                    put("norm_topk_prob", m.norm_topk_prob.into(), om.map(|x| x.norm_topk_prob.into()));
                    put("decoder_sparse_step", m.decoder_sparse_step.into(), om.map(|x| x.decoder_sparse_step.into()));
                    put(
                        "mlp_only_layers",
                        serde_json::to_value(&m.mlp_only_layers).unwrap_or_default(),
                        om.map(|x| serde_json::to_value(&x.mlp_only_layers).unwrap_or_default()),
                    );
                }
            }
        }
        Value::Object(out)
    }

    /// Pretty JSON text as HF writes it (2-space indent, trailing newline).
    pub fn to_json_string(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_json()).expect("config serialises");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
            "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5,
            "num_attention_heads": 8, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "some_future_field": [1, 2, {"x": null}],
            "tie_word_embeddings": true, "torch_dtype": "float32"
        })
    }

    #[test]
    fn round_trip_keeps_every_field_unchanged() {
        let cfg = ModelConfig::from_json(llama(), Path::new("config.json")).unwrap();
        assert_eq!(cfg.head_dim, 8);
        assert_eq!(cfg.group_size(), 2);
        assert!(cfg.rope_scaling.is_some());
        assert_eq!(cfg.to_json(), llama());
    }

    #[test]
    fn changed_fields_are_written_and_others_kept() {
        let mut cfg = ModelConfig::from_json(llama(), Path::new("config.json")).unwrap();
        cfg.hidden_size = 96;
        cfg.num_attention_heads = 12;
        let out = cfg.to_json();
        assert_eq!(out["hidden_size"], 96);
        assert_eq!(out["num_attention_heads"], 12);
        assert_eq!(out["head_dim"], 8, "head_dim becomes explicit when it no longer follows from hidden/heads");
        assert_eq!(out["some_future_field"], llama()["some_future_field"]);
        assert_eq!(out["rope_scaling"], llama()["rope_scaling"]);
    }

    #[test]
    fn converting_to_mixtral_sets_architecture_and_moe_fields() {
        let mut cfg = ModelConfig::from_json(llama(), Path::new("config.json")).unwrap();
        cfg.model_type = ModelType::Mixtral;
        cfg.moe = Some(MoeConfig {
            num_experts: 8,
            num_experts_per_tok: 2,
            expert_intermediate_size: 172,
            shared_expert_intermediate_size: 0,
            norm_topk_prob: true,
            router_aux_loss_coef: 0.001,
            decoder_sparse_step: 1,
            mlp_only_layers: vec![],
        });
        let out = cfg.to_json();
        assert_eq!(out["model_type"], "mixtral");
        assert_eq!(out["architectures"], json!(["MixtralForCausalLM"]));
        assert_eq!(out["num_local_experts"], 8);
        let back = ModelConfig::from_json(out, Path::new("x")).unwrap();
        assert_eq!(back.moe, cfg.moe);
    }

    #[test]
    fn unsupported_model_type_lists_supported_ones() {
        let mut v = llama();
        v["model_type"] = "gpt2".into();
        let err = ModelConfig::from_json(v, Path::new("m/config.json")).unwrap_err().to_string();
        assert!(err.contains("m/config.json") && err.contains("gpt2") && err.contains("qwen2_moe"), "{err}");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut v = llama();
        v["num_key_value_heads"] = 3.into();
        let err = ModelConfig::from_json(v, Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelConfig::from_json(v, Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("hidden_size") && err.contains("missing"), "{err}");
        let mut v = llama();
        v["vocab_size"] = "many".into();
        let err = ModelConfig::from_json(v, Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("vocab_size"), "{err}");
    }

    #[test]
    fn nonsense_values_are_refused_naming_the_field() {
        let cases = [
            ("rms_norm_eps", json!(-1)),
            ("rms_norm_eps", json!(0)),
            ("max_position_embeddings", json!(0)),
            ("rope_theta", json!(0)),
            ("num_hidden_layers", json!(99999999999u64)),
            ("hidden_size", json!(u64::MAX)),
            ("vocab_size", json!(0)),
        ];
        for (field, value) in cases {
            let mut v = llama();
            v[field] = value.clone();
            if field == "hidden_size" {
                v["head_dim"] = 8.into();
            }
            let err = ModelConfig::from_json(v, Path::new("m/config.json")).unwrap_err().to_string();
            assert!(err.contains("m/config.json") && err.contains(field), "{field}={value}: {err}");
        }
    }

    #[test]
    fn sizes_are_bounded_with_checked_totals() {
        let mut cfg = ModelConfig::from_json(llama(), Path::new("c.json")).unwrap();
        assert_eq!(cfg.check_sizes(), Ok(()));
        cfg.num_hidden_layers = limits::MAX_LAYERS + 1;
        assert_eq!(cfg.check_sizes().unwrap_err().field, "num_hidden_layers");
        cfg.num_hidden_layers = limits::MAX_LAYERS;
        cfg.hidden_size = limits::MAX_WIDTH;
        cfg.intermediate_size = limits::MAX_WIDTH;
        let err = cfg.check_sizes().unwrap_err();
        assert!(err.message.contains("parameters is not plausible"), "{err}");
        cfg.hidden_size = usize::MAX;
        assert_eq!(cfg.check_sizes().unwrap_err().field, "hidden_size");
    }

    #[test]
    fn qwen2_moe_sparse_layers_follow_step_and_mlp_only_layers() {
        let v = json!({"model_type": "qwen2_moe", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 4, "shared_expert_intermediate_size": 8, "decoder_sparse_step": 2,
            "mlp_only_layers": [3]});
        let cfg = ModelConfig::from_json(v, Path::new("c")).unwrap();
        let sparse: Vec<bool> = (0..4).map(|l| cfg.is_moe_layer(l)).collect();
        assert_eq!(sparse, vec![false, true, false, false]);
        assert!(cfg.qkv_bias);
    }

    fn qwen3_moe() -> Value {
        // As transformers 5 writes it: the expert count under `num_local_experts`, no shared expert.
        json!({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 10,
            "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "num_local_experts": 6, "num_experts_per_tok": 2,
            "moe_intermediate_size": 4, "decoder_sparse_step": 1, "mlp_only_layers": [2], "norm_topk_prob": true,
            "attention_bias": false, "layer_future_field": {"a": 1}})
    }

    #[test]
    fn qwen3_head_dim_defaults_to_128_and_attention_bias_covers_o() {
        let v = json!({"model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "attention_bias": true});
        let cfg = ModelConfig::from_json(v.clone(), Path::new("c")).unwrap();
        assert_eq!(cfg.head_dim, QWEN3_DEFAULT_HEAD_DIM, "Qwen3Config's default, not hidden/heads");
        assert!(cfg.qkv_bias && cfg.o_bias && !cfg.mlp_bias);
        assert!(cfg.model_type.has_qk_norm() && !cfg.model_type.is_moe());
        assert_eq!(cfg.to_json(), v, "untouched qwen3 config round-trips key for key");
    }

    #[test]
    fn qwen3_moe_reads_either_expert_key_and_keeps_its_spelling() {
        let cfg = ModelConfig::from_json(qwen3_moe(), Path::new("c")).unwrap();
        let m = cfg.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.num_experts_per_tok, m.expert_intermediate_size), (6, 2, 4));
        assert_eq!(m.shared_expert_intermediate_size, 0);
        assert!(m.norm_topk_prob && cfg.model_type.has_qk_norm());
        let sparse: Vec<bool> = (0..4).map(|l| cfg.is_moe_layer(l)).collect();
        assert_eq!(sparse, vec![true, true, false, true]);
        assert_eq!(cfg.to_json(), qwen3_moe());
        let mut grown = cfg.clone();
        grown.moe.as_mut().unwrap().num_experts = 12;
        let out = grown.to_json();
        assert_eq!(out["num_local_experts"], 12);
        assert!(out.get("num_experts").is_none() && out.get("shared_expert_intermediate_size").is_none(), "{out}");
        // The hub's spelling is read too; two disagreeing counts are refused by name.
        let mut hub = qwen3_moe();
        let o = hub.as_object_mut().unwrap();
        o.remove("num_local_experts");
        o.insert("num_experts".into(), 6.into());
        assert_eq!(ModelConfig::from_json(hub.clone(), Path::new("c")).unwrap().moe.unwrap().num_experts, 6);
        hub["num_local_experts"] = 5.into();
        let err = ModelConfig::from_json(hub, Path::new("m/config.json")).unwrap_err().to_string();
        assert!(err.contains("num_experts") && err.contains("num_local_experts"), "{err}");
    }

    #[test]
    fn qwen3_to_qwen3_moe_states_head_dim_and_the_moe_fields() {
        // head_dim absent means 128 for qwen3 but hidden/heads for qwen3_moe: a conversion must state it.
        let v = json!({"model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2});
        let mut cfg = ModelConfig::from_json(v, Path::new("c")).unwrap();
        cfg.model_type = ModelType::Qwen3Moe;
        cfg.moe = Some(MoeConfig {
            num_experts: 4,
            num_experts_per_tok: 2,
            expert_intermediate_size: 16,
            shared_expert_intermediate_size: 0,
            norm_topk_prob: true,
            router_aux_loss_coef: 0.001,
            decoder_sparse_step: 1,
            mlp_only_layers: vec![],
        });
        let out = cfg.to_json();
        assert_eq!((out["model_type"].clone(), out["head_dim"].clone()), (json!("qwen3_moe"), json!(128)));
        assert_eq!(out["architectures"], json!(["Qwen3MoeForCausalLM"]));
        let back = ModelConfig::from_json(out, Path::new("x")).unwrap();
        assert_eq!((back.head_dim, back.moe), (128, cfg.moe));
    }
}
