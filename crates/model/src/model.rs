//! One decoder-only model definition for llama, mistral, qwen2, qwen3, mixtral, qwen2_moe and qwen3_moe.
//!
//! Parameters are candle [`Var`]s named exactly as in the HF checkpoint, so the trainer can
//! optimise them and [`Model::save`] can write them back without a renaming table. The forward
//! pass uses only the differentiable ops of [`crate::ops`] (fused kernels or composite ops).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use escale_formats::naming::{expected_params, hf_name, LayerParam, MlpPart, MlpSite, Param};
use escale_formats::writer::TensorSpec;
use escale_formats::{Checkpoint, CheckpointWriter, ModelConfig, ModelType, WeightChecks, WriterOptions};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::grad::param;
use crate::ops;
use crate::attention::AttentionDims;
use crate::rope::Rope;

/// A weight matrix in HF `[out, in]` layout with an optional bias.
struct Linear {
    w: Var,
    b: Option<Var>,
}

impl Linear {
    /// `x [n, in] -> [n, out]` through [`ops::linear`] (one node with its own backward when fused).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::linear(x, &param(&self.w))?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(&param(b))?,
            None => y,
        })
    }
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fused = match (&self.gate.b, &self.up.b) {
            (None, None) => ops::fused_gated_up(x, &param(&self.gate.w), &param(&self.up.w))?,
            _ => None,
        };
        let h = match fused {
            Some(h) => h,
            None => ops::swiglu(&self.gate.forward(x)?, &self.up.forward(x)?)?,
        };
        self.down.forward(&h)
    }
}

struct Moe {
    router: Var,
    experts: Vec<Mlp>,
    /// qwen2_moe: the always-on shared expert and its `[1, hidden]` sigmoid gate.
    shared: Option<(Mlp, Var)>,
    top_k: usize,
    norm_topk_prob: bool,
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

struct Layer {
    input_norm: Var,
    post_attn_norm: Var,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// qwen3 / qwen3_moe: RMSNorm weights `[head_dim]` applied to every query and key head before RoPE.
    qk_norm: Option<(Var, Var)>,
    ffn: Ffn,
    /// Attention window (mistral/mixtral `sliding_window`, qwen2 sliding layers); `None` = full.
    window: Option<usize>,
}

/// Output of a forward pass.
pub struct ForwardOutput {
    /// `[batch, seq, vocab]` in the model's dtype.
    pub logits: Tensor,
    /// One `[batch*seq, experts]` tensor per MoE layer, in the model's compute dtype (f32, or f64
    /// for an f64 model: never below fp32), differentiable (for load-balancing and z losses).
    pub router_logits: Vec<Tensor>,
    /// Per MoE layer, the number of tokens routed to each expert (each token counts `top_k` times).
    pub expert_counts: Vec<Vec<u64>>,
}

/// Output of [`Model::forward_hidden`]: everything but the LM head.
pub struct HiddenOutput {
    /// `[batch*seq, hidden]`, after the final norm: multiplied by [`Model::lm_head_weight`] it gives the logits.
    pub hidden: Tensor,
    pub router_logits: Vec<Tensor>,
    pub expert_counts: Vec<Vec<u64>>,
}

/// Per-layer key/value cache for incremental decoding (one batch; positions `0..offset`).
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    offset: usize,
}

impl KvCache {
    pub fn new(model: &Model) -> KvCache {
        KvCache { kv: vec![None; model.layers.len()], offset: 0 }
    }
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.offset
    }
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }
}

pub struct Model {
    pub config: ModelConfig,
    device: Device,
    dtype: DType,
    embed: Var,
    layers: Vec<Layer>,
    norm: Var,
    /// `None` when tied to the embedding.
    lm_head: Option<Var>,
    rope: Rope,
    /// Every parameter once, in transformers' state_dict order.
    params: Vec<(Param, String, Var)>,
}

/// HF's initialisation for a parameter: norms to one, biases to zero, everything else normal.
enum Init {
    Ones,
    Zeros,
    Normal,
}

fn init_kind(p: Param) -> Init {
    match p {
        Param::FinalNorm
        | Param::Layer(_, LayerParam::InputNorm | LayerParam::PostAttnNorm | LayerParam::QNorm | LayerParam::KNorm) => {
            Init::Ones
        }
        Param::Layer(
            _,
            LayerParam::QBias
            | LayerParam::KBias
            | LayerParam::VBias
            | LayerParam::OBias
            | LayerParam::Mlp(_, MlpPart::GateBias | MlpPart::UpBias | MlpPart::DownBias),
        ) => Init::Zeros,
        _ => Init::Normal,
    }
}

fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 => Ok(()),
        other => Err(ModelError::input(format!(
            "compute dtype {other:?} is not supported: use F32 or F64 (bf16/f16 checkpoints are upcast on load)"
        ))),
    }
}

/// Which layers use a sliding attention window, following each family's transformers rules.
fn layer_windows(cfg: &ModelConfig) -> Vec<Option<usize>> {
    let raw = cfg.raw();
    let n = cfg.num_hidden_layers;
    if let (Some(Value::Array(types)), Some(w)) = (raw.get("layer_types"), cfg.sliding_window) {
        if types.len() == n {
            return types.iter().map(|t| (t.as_str() == Some("sliding_attention")).then_some(w)).collect();
        }
    }
    match cfg.model_type {
        ModelType::Llama => vec![None; n],
        ModelType::Mistral | ModelType::Mixtral => vec![cfg.sliding_window; n],
        ModelType::Qwen2 | ModelType::Qwen2Moe | ModelType::Qwen3 => {
            let on = raw.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
            let from = raw.get("max_window_layers").and_then(Value::as_u64).unwrap_or(28) as usize;
            (0..n).map(|l| if on && l >= from { cfg.sliding_window } else { None }).collect()
        }
        // Qwen3MoeAttention takes the config's window on every layer; the config keeps it only
        // under `use_sliding_window`.
        ModelType::Qwen3Moe => {
            let on = raw.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
            vec![if on { cfg.sliding_window } else { None }; n]
        }
    }
}

impl Model {
    /// Builds the model from one tensor per expected parameter.
    fn assemble(config: &ModelConfig, device: &Device, dtype: DType, mut make: impl FnMut(Param, &[usize]) -> Result<Tensor>) -> Result<Model> {
        check_dtype(dtype)?;
        let rope = Rope::new(config)?;
        let mt = config.model_type;
        let mut params = Vec::new();
        let mut by_param: HashMap<Param, Var> = HashMap::new();
        for (p, shape) in expected_params(config) {
            let t = make(p, &shape)?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::input(format!("{}: shape {:?}, expected {:?}", hf_name(mt, p), t.dims(), shape)));
            }
            let var = Var::from_tensor(&t.to_dtype(dtype)?)?;
            by_param.insert(p, var.clone());
            params.push((p, hf_name(mt, p), var));
        }
        let get = |p: Param| -> Result<Var> {
            by_param
                .get(&p)
                .cloned()
                .ok_or_else(|| ModelError::other(format!("internal: parameter {} not created", hf_name(mt, p))))
        };
        let opt = |p: Param| by_param.get(&p).cloned();
        let lin = |l: usize, w: LayerParam, b: LayerParam| -> Result<Linear> {
            Ok(Linear { w: get(Param::Layer(l, w))?, b: opt(Param::Layer(l, b)) })
        };
        let mlp = |l: usize, site: MlpSite| -> Result<Mlp> {
            let part = |w, b| lin(l, LayerParam::Mlp(site, w), LayerParam::Mlp(site, b));
            Ok(Mlp {
                gate: part(MlpPart::Gate, MlpPart::GateBias)?,
                up: part(MlpPart::Up, MlpPart::UpBias)?,
                down: part(MlpPart::Down, MlpPart::DownBias)?,
            })
        };
        let windows = layer_windows(config);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (l, &window) in windows.iter().enumerate() {
            let ffn = if config.is_moe_layer(l) {
                let m = config.moe.as_ref().expect("is_moe_layer implies a MoE config");
                let shared = if by_param.contains_key(&Param::Layer(l, LayerParam::SharedExpertGate)) {
                    Some((mlp(l, MlpSite::Shared)?, get(Param::Layer(l, LayerParam::SharedExpertGate))?))
                } else {
                    None
                };
                Ffn::Moe(Moe {
                    router: get(Param::Layer(l, LayerParam::Router))?,
                    experts: (0..m.num_experts).map(|e| mlp(l, MlpSite::Expert(e))).collect::<Result<_>>()?,
                    shared,
                    top_k: m.num_experts_per_tok,
                    norm_topk_prob: m.norm_topk_prob,
                })
            } else {
                Ffn::Dense(mlp(l, MlpSite::Dense)?)
            };
            layers.push(Layer {
                input_norm: get(Param::Layer(l, LayerParam::InputNorm))?,
                post_attn_norm: get(Param::Layer(l, LayerParam::PostAttnNorm))?,
                q: lin(l, LayerParam::Q, LayerParam::QBias)?,
                k: lin(l, LayerParam::K, LayerParam::KBias)?,
                v: lin(l, LayerParam::V, LayerParam::VBias)?,
                o: lin(l, LayerParam::O, LayerParam::OBias)?,
                qk_norm: match (opt(Param::Layer(l, LayerParam::QNorm)), opt(Param::Layer(l, LayerParam::KNorm))) {
                    (Some(q), Some(k)) => Some((q, k)),
                    _ => None,
                },
                ffn,
                window,
            });
        }
        Ok(Model {
            config: config.clone(),
            device: device.clone(),
            dtype,
            embed: get(Param::Embed)?,
            layers,
            norm: get(Param::FinalNorm)?,
            lm_head: opt(Param::LmHead),
            rope,
            params,
        })
    }

    /// Loads an opened checkpoint; bf16/f16 tensors are upcast (exactly) to the compute `dtype`
    /// (F32 or F64).
    /// Tensors the config does not declare are refused rather than silently dropped (use
    /// [`Model::load_with`] to drop them on purpose).
    pub fn load(ckpt: &Checkpoint, device: &Device, dtype: DType) -> Result<Model> {
        ckpt.check_unknown(false)?;
        Model::assemble_from(ckpt, device, dtype)
    }

    /// Loads after the checks a command asked for (`--allow-nan`, `--ignore-unknown`): refuses
    /// non-finite weights and unknown tensors unless tolerated, and returns the warnings about
    /// what was tolerated, for the caller to print.
    pub fn load_with(ckpt: &Checkpoint, device: &Device, dtype: DType, checks: WeightChecks) -> Result<(Model, Vec<String>)> {
        let warnings = ckpt.check_weights(checks)?;
        Ok((Model::assemble_from(ckpt, device, dtype)?, warnings))
    }

    fn assemble_from(ckpt: &Checkpoint, device: &Device, dtype: DType) -> Result<Model> {
        Model::assemble(&ckpt.config, device, dtype, |p, shape| {
            let (data, _) = ckpt.read_param_f32(p)?;
            Ok(Tensor::from_vec(data, shape, device)?)
        })
    }

    /// Opens an HF folder and loads it (convenience for the CLI and tests).
    pub fn load_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
        let ckpt = Checkpoint::open(dir)?;
        Model::load(&ckpt, device, dtype)
    }

    /// Random initialisation as transformers does it: `normal(0, initializer_range)` for matrices
    /// and embeddings, zeros for biases, ones for norms. Deterministic for a given seed (one RNG
    /// stream, drawn in state_dict order).
    pub fn init_random(config: &ModelConfig, seed: u64, device: &Device, dtype: DType) -> Result<Model> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let std = config.initializer_range;
        let normal = rand_distr::Normal::new(0.0, std)
            .map_err(|e| ModelError::input(format!("initializer_range {std}: {e}")))?;
        Model::assemble(config, device, dtype, |p, shape| {
            let n: usize = shape.iter().product();
            let data: Vec<f64> = match init_kind(p) {
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
                Init::Normal => (0..n).map(|_| normal.sample(&mut rng)).collect(),
            };
            Ok(Tensor::from_vec(data, shape, device)?)
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every trainable parameter with its HF name, in transformers' state_dict order; a tied
    /// embedding appears once (as `model.embed_tokens.weight`).
    pub fn named_parameters(&self) -> Vec<(String, Var)> {
        self.params.iter().map(|(_, n, v)| (n.clone(), v.clone())).collect()
    }

    /// The parameter with this HF name, if any.
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.params.iter().find(|(_, n, _)| n == name).map(|(_, _, v)| v)
    }

    /// Writes the model as an HF folder through [`CheckpointWriter`] (atomic publish), storing
    /// tensors as `storage`. `extra` runs on the staging folder before publishing (e.g. the trainer's
    /// optimizer state), so the folder appears complete or not at all. Tokenizer files are copied
    /// from `aux_source`.
    pub fn save(
        &self,
        out_dir: &Path,
        storage: escale_formats::DType,
        options: &WriterOptions,
        aux_source: Option<&Path>,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let specs =
            self.params.iter().map(|(_, n, v)| TensorSpec::new(n.clone(), storage, v.dims().to_vec())).collect();
        let writer = CheckpointWriter::create(out_dir, specs, options)?;
        for (_, name, var) in &self.params {
            let data: Vec<f32> = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            writer.write_f32(name, &data)?;
        }
        extra(writer.staging_dir())?;
        let mut cfg = self.config.clone();
        cfg.dtype = Some(storage);
        writer.finish(&cfg, aux_source)?;
        Ok(())
    }

    /// Full-sequence forward pass. `input_ids`: `[batch, seq]` u32.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ForwardOutput> {
        self.forward_impl(input_ids, None)
    }

    /// Incremental forward for generation: runs `input_ids` (`[1, new]`) at positions following
    /// those already in `cache`, appends their keys/values, and returns logits for the new tokens.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<ForwardOutput> {
        self.forward_impl(input_ids, Some(cache))
    }

    /// Forward pass without the LM head, for the fused head + loss of [`crate::head_loss`], which never holds
    /// the `[tokens, vocab]` logits. `input_ids`: `[batch, seq]` u32.
    pub fn forward_hidden(&self, input_ids: &Tensor) -> Result<HiddenOutput> {
        self.trunk(input_ids, None)
    }

    /// The LM head `[vocab, hidden]`: the embedding when they are tied.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed).as_tensor()
    }

    fn check_ids(&self, input_ids: &Tensor, offset: usize) -> Result<(usize, usize)> {
        if input_ids.dtype() != DType::U32 {
            return Err(ModelError::input(format!("input_ids must be u32, found {:?}", input_ids.dtype())));
        }
        let (b, s) = input_ids
            .dims2()
            .map_err(|_| ModelError::input(format!("input_ids must be [batch, seq], found {:?}", input_ids.dims())))?;
        if b == 0 || s == 0 {
            return Err(ModelError::input("input_ids is empty"));
        }
        let max_pos = self.config.max_position_embeddings;
        if offset + s > max_pos {
            return Err(ModelError::input(format!(
                "sequence of {} positions exceeds max_position_embeddings = {max_pos} ({}); split the input into windows",
                offset + s,
                self.config.source().display()
            )));
        }
        let max_id = input_ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= self.config.vocab_size {
            return Err(ModelError::input(format!(
                "token id {max_id} is out of range for vocab_size = {}",
                self.config.vocab_size
            )));
        }
        Ok((b, s))
    }

    /// Additive attention mask `[seq, offset+seq]`: 0 where query `offset+i` may see key `j`
    /// (causal, and within `window` when set), -inf elsewhere. `None` when nothing is masked.
    fn mask(&self, s: usize, offset: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        let total = offset + s;
        let w = window.unwrap_or(usize::MAX);
        if s == 1 && total <= w {
            return Ok(None);
        }
        let mut m = vec![0f64; s * total];
        for i in 0..s {
            let qpos = offset + i;
            for j in 0..total {
                if j > qpos || qpos - j >= w {
                    m[i * total + j] = f64::NEG_INFINITY;
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (s, total), &self.device)?.to_dtype(self.dtype)?))
    }

    fn forward_impl(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<ForwardOutput> {
        let out = self.trunk(input_ids, cache)?;
        let (b, s) = input_ids.dims2()?;
        let head = param(self.lm_head.as_ref().unwrap_or(&self.embed));
        let logits = out.hidden.matmul(&head.t()?)?.reshape((b, s, self.config.vocab_size))?;
        Ok(ForwardOutput { logits, router_logits: out.router_logits, expert_counts: out.expert_counts })
    }

    fn trunk(&self, input_ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<HiddenOutput> {
        let offset = cache.as_ref().map_or(0, |c| c.offset);
        let (b, s) = self.check_ids(input_ids, offset)?;
        let cfg = &self.config;
        let ids = input_ids.flatten_all()?;
        let mut x = param(&self.embed).index_select(&ids, 0)?; // [b*s, h]
        let (cos, sin) = self.rope.cos_sin(offset, s, self.dtype, &self.device)?;
        let mut masks: HashMap<Option<usize>, Option<Tensor>> = HashMap::new();
        let mut router_logits = Vec::new();
        let mut expert_counts = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = masks.entry(layer.window) {
                slot.insert(self.mask(s, offset, layer.window)?);
            }
            let mask = masks[&layer.window].as_ref();
            let hn = ops::rms_norm(&x, &param(&layer.input_norm), cfg.rms_norm_eps)?;
            let kv = cache.as_deref_mut().map(|c| &mut c.kv[l]);
            let attn = self.attention(layer, &hn, b, s, &cos, &sin, mask, kv)?;
            x = (x + attn)?;
            let hn = ops::rms_norm(&x, &param(&layer.post_attn_norm), cfg.rms_norm_eps)?;
            let y = match &layer.ffn {
                Ffn::Dense(m) => m.forward(&hn)?,
                Ffn::Moe(moe) => {
                    let (y, logits, counts) = moe_forward(moe, &hn)?;
                    router_logits.push(logits);
                    expert_counts.push(counts);
                    y
                }
            };
            x = (x + y)?;
        }
        if let Some(c) = cache {
            c.offset += s;
        }
        let hidden = ops::rms_norm(&x, &param(&self.norm), cfg.rms_norm_eps)?;
        Ok(HiddenOutput { hidden, router_logits, expert_counts })
    }

    /// Grouped-query attention on `x [b*s, hidden]`. Query heads are grouped per KV head
    /// (`[b, kv, group*s, hd]`) so each KV head is used by one matmul without being repeated.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        b: usize,
        s: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        kv_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let g = nh / nkv;
        // [b*s, heads*hd], which is [b, s, heads, hd] in memory.
        let (q, k, v) = (layer.q.forward(x)?, layer.k.forward(x)?, layer.v.forward(x)?);
        // qwen3: each head's query and key RMS-normalised over head_dim (the same norm as the
        // layer norms, broadcast over heads), before RoPE.
        let (q, k) = match &layer.qk_norm {
            Some((qn, kn)) => (
                ops::rms_norm(&q.reshape((b, s, nh, hd))?, &param(qn), cfg.rms_norm_eps)?,
                ops::rms_norm(&k.reshape((b, s, nkv, hd))?, &param(kn), cfg.rms_norm_eps)?,
            ),
            None => (q, k),
        };
        if kv_cache.is_none() {
            // Training and scoring (positions from 0): RoPE and attention in one node, on the
            // tensors as they are (no reshape nodes).
            let dims = AttentionDims { b, s, nh, nkv, hd };
            if let Some(o) = ops::fused_rope_attention(&q, &k, &v, cos, sin, dims, layer.window)? {
                let o = if o.rank() == 2 { o } else { o.reshape((b * s, nh * hd))? };
                return layer.o.forward(&o);
            }
        }
        let q = q.reshape((b, s, nh, hd))?.transpose(1, 2)?; // [b, nh, s, hd]
        let k = k.reshape((b, s, nkv, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, s, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = ops::rope(&q, cos, sin)?;
        let k = ops::rope(&k, cos, sin)?;
        let (k, v) = match kv_cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let total = k.dim(2)?;
        let q = q.reshape((b, nkv, g * s, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?; // [b, nkv, g*s, total]
        let scores = match mask {
            Some(m) => scores.reshape((b, nh, s, total))?.broadcast_add(m)?.reshape((b, nkv, g * s, total))?,
            None => scores,
        };
        let p = ops::softmax_last_dim(&scores)?;
        let o = p.matmul(&v)?; // [b, nkv, g*s, hd]
        let o = o.reshape((b, nh, s, hd))?.transpose(1, 2)?.reshape((b * s, nh * hd))?;
        layer.o.forward(&o)
    }
}

/// Sparse MoE block on `x [t, hidden]`: fp32-or-wider router, softmax, top-k, optional
/// renormalisation, dispatch by `index_select`, weighted combine by one `index_add`.
///
/// The top-k indices are read back to the host once per layer to build each expert's token list;
/// that bookkeeping is integer work over `t*k` entries (no tensor op per token). The routing
/// weights stay on the graph (`gather` then `index_select`), so the router receives gradients.
fn moe_forward(moe: &Moe, x: &Tensor) -> Result<(Tensor, Tensor, Vec<u64>)> {
    let (t, h) = x.dims2()?;
    let n_exp = moe.experts.len();
    let k = moe.top_k;
    let logits = x.matmul(&param(&moe.router).t()?)?; // [t, E]
    let probs = ops::softmax_last_dim(&logits)?;
    let top_idx = probs.detach().arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?; // [t, k]
    let mut top_w = probs.gather(&top_idx, 1)?;
    if moe.norm_topk_prob {
        top_w = top_w.broadcast_div(&top_w.sum_keepdim(1)?)?;
    }
    let flat_w = top_w.flatten_all()?; // [t*k], position p = token*k + j
    let idx: Vec<u32> = top_idx.flatten_all()?.to_vec1()?;
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n_exp];
    let mut slots: Vec<Vec<u32>> = vec![Vec::new(); n_exp];
    for (p, &e) in idx.iter().enumerate() {
        tokens[e as usize].push((p / k) as u32);
        slots[e as usize].push(p as u32);
    }
    let counts: Vec<u64> = tokens.iter().map(|v| v.len() as u64).collect();
    let mut outs = Vec::new();
    let mut dest = Vec::with_capacity(t * k);
    for (e, expert) in moe.experts.iter().enumerate() {
        if tokens[e].is_empty() {
            continue;
        }
        let tok = Tensor::new(tokens[e].as_slice(), x.device())?;
        let slot = Tensor::new(slots[e].as_slice(), x.device())?;
        let y = expert.forward(&x.index_select(&tok, 0)?)?;
        let w = flat_w.index_select(&slot, 0)?.unsqueeze(1)?;
        outs.push(y.broadcast_mul(&w)?);
        dest.extend_from_slice(&tokens[e]);
    }
    let routed = Tensor::cat(&outs, 0)?;
    let dest = Tensor::new(dest.as_slice(), x.device())?;
    let mut y = Tensor::zeros((t, h), x.dtype(), x.device())?.index_add(&dest, &routed, 0)?;
    if let Some((shared, gate)) = &moe.shared {
        let g = ops::sigmoid(&x.matmul(&param(gate).t()?)?)?; // [t, 1]
        y = (y + shared.forward(x)?.broadcast_mul(&g)?)?;
    }
    Ok((y, logits, counts))
}
