//! Test support for Scale-Up: random tiny llama / mistral / qwen2 / qwen3 checkpoints, and an
//! independent f64 reference forward pass (HF LLaMA semantics: RMSNorm, rotate-half RoPE, GQA
//! with `repeat_kv`, SwiGLU, optional biases; qwen3's per-head q/k RMSNorm before RoPE), so
//! exactness can be checked without Python.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use escale_formats::naming::{expected_params, hf_name, LayerParam, MlpPart, MlpSite, Param};
use escale_formats::writer::TensorSpec;
use escale_formats::{Checkpoint, CheckpointWriter, DType, ModelConfig, WriterOptions};
use escale_grow::scale_up::{Target, TargetDims};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

/// Explicit target sizes.
pub fn dims(hidden: usize, ffn: usize, heads: usize, layers: usize) -> Target {
    Target::Dims(TargetDims {
        hidden_size: Some(hidden),
        intermediate_size: Some(ffn),
        num_attention_heads: Some(heads),
        num_hidden_layers: Some(layers),
    })
}

/// A tiny config of the given family.
pub fn tiny_config(model_type: &str, tied: bool, biases: bool) -> Value {
    let mut v = json!({
        "architectures": ["X"], "model_type": model_type, "vocab_size": 40, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": tied, "torch_dtype": "float32", "hidden_act": "silu", "some_unknown_field": [1, "x"],
    });
    if model_type == "llama" {
        v["attention_bias"] = biases.into();
        v["mlp_bias"] = biases.into();
    }
    if model_type == "mistral" {
        v["sliding_window"] = 4096.into();
    }
    if model_type == "qwen3" {
        // head_dim 6 != hidden/heads (16/4), q/k/v/o biases, and an eps large enough (against
        // head activations of order 1) that the q/k norms' eps visibly matters under zero-pad.
        v["head_dim"] = 6.into();
        v["attention_bias"] = biases.into();
        v["rms_norm_eps"] = 0.05.into();
    }
    v
}

/// Writes a random checkpoint for `config` into `dir` (f32 unless `dtype` says otherwise).
pub fn make_tiny(dir: &Path, config: Value, seed: u64, dtype: DType) -> PathBuf {
    let cfg = ModelConfig::from_json(config, &dir.join("config.json")).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let params = expected_params(&cfg);
    let specs = params.iter().map(|(p, s)| TensorSpec::new(hf_name(cfg.model_type, *p), dtype, s.clone())).collect();
    let w = CheckpointWriter::create(dir, specs, &WriterOptions { force: true, ..Default::default() }).unwrap();
    for (p, shape) in &params {
        let n: usize = shape.iter().product();
        let (mean, std) = match p {
            Param::Embed => (0.0, 1.0),
            Param::FinalNorm
            | Param::Layer(_, LayerParam::InputNorm | LayerParam::PostAttnNorm | LayerParam::QNorm | LayerParam::KNorm) => {
                (1.0, 0.3)
            }
            _ if shape.len() == 1 => (0.0, 0.2),
            _ => (0.0, 1.0 / (shape[1] as f64).sqrt()),
        };
        let dist = Normal::new(mean, std).unwrap();
        let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut rng) as f32).collect();
        w.write_f32(&hf_name(cfg.model_type, *p), &v).unwrap();
    }
    std::fs::write(w.staging_dir().join("tokenizer.json"), "{\"fake\": true}").unwrap();
    w.finish(&cfg, None).unwrap()
}

/// A dense model's weights in f64.
pub struct Model {
    pub cfg: ModelConfig,
    embed: Vec<f64>,
    lm_head: Vec<f64>,
    final_norm: Vec<f64>,
    layers: Vec<Layer>,
}

struct Layer {
    n1: Vec<f64>,
    n2: Vec<f64>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    o: Vec<f64>,
    qb: Option<Vec<f64>>,
    kb: Option<Vec<f64>>,
    vb: Option<Vec<f64>>,
    ob: Option<Vec<f64>>,
    /// qwen3: per-head RMSNorm weights `[head_dim]` of queries and keys.
    qn: Option<Vec<f64>>,
    kn: Option<Vec<f64>>,
    gate: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
    gb: Option<Vec<f64>>,
    ub: Option<Vec<f64>>,
    db: Option<Vec<f64>>,
}

fn read(ck: &Checkpoint, p: Param) -> Vec<f64> {
    ck.read_param_f32(p).unwrap().0.into_iter().map(f64::from).collect()
}

fn read_opt(ck: &Checkpoint, p: Param, present: bool) -> Option<Vec<f64>> {
    present.then(|| read(ck, p))
}

impl Model {
    pub fn load(dir: &Path) -> Model {
        let ck = Checkpoint::open(dir).unwrap();
        let cfg = ck.config.clone();
        let lp = |l, p| Param::Layer(l, p);
        let mlp = |l, part| Param::Layer(l, LayerParam::Mlp(MlpSite::Dense, part));
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| Layer {
                n1: read(&ck, lp(l, LayerParam::InputNorm)),
                n2: read(&ck, lp(l, LayerParam::PostAttnNorm)),
                q: read(&ck, lp(l, LayerParam::Q)),
                k: read(&ck, lp(l, LayerParam::K)),
                v: read(&ck, lp(l, LayerParam::V)),
                o: read(&ck, lp(l, LayerParam::O)),
                qb: read_opt(&ck, lp(l, LayerParam::QBias), cfg.qkv_bias),
                kb: read_opt(&ck, lp(l, LayerParam::KBias), cfg.qkv_bias),
                vb: read_opt(&ck, lp(l, LayerParam::VBias), cfg.qkv_bias),
                ob: read_opt(&ck, lp(l, LayerParam::OBias), cfg.o_bias),
                qn: read_opt(&ck, lp(l, LayerParam::QNorm), cfg.model_type.has_qk_norm()),
                kn: read_opt(&ck, lp(l, LayerParam::KNorm), cfg.model_type.has_qk_norm()),
                gate: read(&ck, mlp(l, MlpPart::Gate)),
                up: read(&ck, mlp(l, MlpPart::Up)),
                down: read(&ck, mlp(l, MlpPart::Down)),
                gb: read_opt(&ck, mlp(l, MlpPart::GateBias), cfg.mlp_bias),
                ub: read_opt(&ck, mlp(l, MlpPart::UpBias), cfg.mlp_bias),
                db: read_opt(&ck, mlp(l, MlpPart::DownBias), cfg.mlp_bias),
            })
            .collect();
        Model {
            embed: read(&ck, Param::Embed),
            lm_head: read(&ck, Param::LmHead),
            final_norm: read(&ck, Param::FinalNorm),
            layers,
            cfg,
        }
    }

    /// Logits `[tokens][vocab]`, and the residual stream after the embedding and after every layer.
    pub fn forward(&self, ids: &[u32]) -> (Vec<Vec<f64>>, Vec<Vec<Vec<f64>>>) {
        let c = &self.cfg;
        let d = c.hidden_size;
        let mut x: Vec<Vec<f64>> = ids.iter().map(|&t| self.embed[t as usize * d..(t as usize + 1) * d].to_vec()).collect();
        let mut states = vec![x.clone()];
        for layer in &self.layers {
            self.attention(layer, &mut x);
            for xt in x.iter_mut() {
                let h = rms_norm(xt, &layer.n2, c.rms_norm_eps);
                let g = matvec(&layer.gate, &h, layer.gb.as_deref());
                let u = matvec(&layer.up, &h, layer.ub.as_deref());
                let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let out = matvec(&layer.down, &act, layer.db.as_deref());
                add(xt, &out);
            }
            states.push(x.clone());
        }
        let logits = x
            .iter()
            .map(|xt| matvec(&self.lm_head, &rms_norm(xt, &self.final_norm, c.rms_norm_eps), None))
            .collect();
        (logits, states)
    }

    fn attention(&self, layer: &Layer, x: &mut [Vec<f64>]) {
        let c = &self.cfg;
        let (h, nq, nkv) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let rep = nq / nkv;
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, xt) in x.iter().enumerate() {
            let n = rms_norm(xt, &layer.n1, c.rms_norm_eps);
            let q = head_norm(matvec(&layer.q, &n, layer.qb.as_deref()), layer.qn.as_deref(), h, c.rms_norm_eps);
            let k = head_norm(matvec(&layer.k, &n, layer.kb.as_deref()), layer.kn.as_deref(), h, c.rms_norm_eps);
            qs.push(rope(q, h, pos, c.rope_theta));
            ks.push(rope(k, h, pos, c.rope_theta));
            vs.push(matvec(&layer.v, &n, layer.vb.as_deref()));
        }
        for t in 0..x.len() {
            let mut attn = vec![0.0; nq * h];
            for head in 0..nq {
                let kvh = head / rep;
                let q = &qs[t][head * h..(head + 1) * h];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| q.iter().zip(&ks[s][kvh * h..(kvh + 1) * h]).map(|(a, b)| a * b).sum::<f64>() / (h as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (s, w) in e.iter().enumerate() {
                    for i in 0..h {
                        attn[head * h + i] += w / z * vs[s][kvh * h + i];
                    }
                }
            }
            let out = matvec(&layer.o, &attn, layer.ob.as_deref());
            add(&mut x[t], &out);
        }
    }
}

fn rms_norm(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v * r * g).collect()
}

/// qwen3's q/k norm: every `h`-channel head RMS-normalised with the one weight (no-op when `None`).
fn head_norm(v: Vec<f64>, weight: Option<&[f64]>, h: usize, eps: f64) -> Vec<f64> {
    match weight {
        Some(g) => v.chunks(h).flat_map(|head| rms_norm(head, g, eps)).collect(),
        None => v,
    }
}

/// `W[out, in] · x (+ b)`.
fn matvec(w: &[f64], x: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let n = x.len();
    let rows = w.len() / n;
    (0..rows)
        .map(|r| w[r * n..(r + 1) * n].iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + b.map_or(0.0, |b| b[r]))
        .collect()
}

fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Rotate-half RoPE within each head.
fn rope(mut v: Vec<f64>, h: usize, pos: usize, theta: f64) -> Vec<f64> {
    let half = h / 2;
    for head in v.chunks_mut(h) {
        for i in 0..half {
            let f = pos as f64 / theta.powf(2.0 * i as f64 / h as f64);
            let (s, c) = f.sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * c - b * s;
            head[i + half] = b * c + a * s;
        }
    }
    v
}

/// Largest absolute logit difference, and the same relative to the largest source logit.
pub fn logit_delta(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, f64) {
    let mut max_d: f64 = 0.0;
    let mut max_a: f64 = 0.0;
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            max_d = max_d.max((x - y).abs());
            max_a = max_a.max(x.abs());
        }
    }
    (max_d, max_d / max_a)
}

/// Token ids used by the tests.
pub const IDS: [u32; 7] = [3, 17, 5, 39, 0, 22, 8];

/// `../shared` relative to the workspace root, if present.
pub fn shared_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then(|| p.canonicalize().unwrap())
}
