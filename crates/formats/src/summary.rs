//! What `escale inspect` reports about a model folder, as data (JSON) and as text.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::naming::{param_counts, ParamCounts};
use crate::reader::{Checkpoint, NonFinite};

#[derive(Clone, Debug, Serialize)]
pub struct ShardSummary {
    pub file: String,
    pub bytes: u64,
    pub tensors: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub shard: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub path: String,
    pub model_type: String,
    pub architecture: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub experts: Option<usize>,
    pub experts_per_token: Option<usize>,
    pub expert_intermediate_size: Option<usize>,
    pub shared_expert_intermediate_size: Option<usize>,
    pub moe_layers: usize,
    pub norm_topk_prob: Option<bool>,
    pub params: ParamCounts,
    pub dtypes: BTreeMap<String, usize>,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys (qwen3, qwen3_moe).
    pub qk_norm: bool,
    pub rope_theta: f64,
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    pub sliding_window: Option<usize>,
    pub file_bytes: u64,
    /// Memory to hold the weights as stored, and as f32 (escale computes in f32 on CPU).
    pub load_bytes_stored: u64,
    pub load_bytes_f32: u64,
    pub shards: Vec<ShardSummary>,
    /// Tensors holding NaN or Inf values, with their counts (empty for a healthy model).
    pub non_finite: Vec<NonFinite>,
    /// Tensors the config does not declare (a model built from the config drops them).
    pub unknown_tensors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorSummary>>,
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn summarize(ckpt: &Checkpoint, with_tensors: bool) -> ModelSummary {
    let cfg = &ckpt.config;
    let shard_names: Vec<String> = ckpt.shard_paths().map(file_name).collect();
    let shards = ckpt
        .shard_paths()
        .enumerate()
        .map(|(i, p)| ShardSummary {
            file: shard_names[i].clone(),
            bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            tensors: ckpt.tensors().iter().filter(|t| t.shard == i).count(),
        })
        .collect();
    let tensors = with_tensors.then(|| {
        ckpt.tensors()
            .iter()
            .map(|t| TensorSummary {
                name: t.name.clone(),
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
                shard: shard_names[t.shard].clone(),
            })
            .collect()
    });
    let stored: u64 = ckpt.tensors().iter().map(|t| t.byte_len() as u64).sum();
    let numel: u64 = ckpt.tensors().iter().map(|t| t.numel() as u64).sum();
    let moe = cfg.moe.as_ref();
    ModelSummary {
        path: ckpt.dir().display().to_string(),
        model_type: cfg.model_type.to_string(),
        architecture: cfg.model_type.architecture().to_string(),
        layers: cfg.num_hidden_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        attention_heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        vocab_size: cfg.vocab_size,
        experts: moe.map(|m| m.num_experts),
        experts_per_token: moe.map(|m| m.num_experts_per_tok),
        expert_intermediate_size: moe.map(|m| m.expert_intermediate_size),
        shared_expert_intermediate_size: moe.map(|m| m.shared_expert_intermediate_size).filter(|&s| s > 0),
        moe_layers: (0..cfg.num_hidden_layers).filter(|&l| cfg.is_moe_layer(l)).count(),
        norm_topk_prob: moe.map(|m| m.norm_topk_prob),
        params: param_counts(cfg),
        dtypes: ckpt.dtypes(),
        tied_embeddings: cfg.tie_word_embeddings,
        qkv_bias: cfg.qkv_bias,
        o_bias: cfg.o_bias,
        mlp_bias: cfg.mlp_bias,
        qk_norm: cfg.model_type.has_qk_norm(),
        rope_theta: cfg.rope_theta,
        rope_scaling: cfg.rope_scaling.clone(),
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: cfg.sliding_window,
        file_bytes: ckpt.file_bytes(),
        load_bytes_stored: stored,
        load_bytes_f32: numel * 4,
        shards,
        non_finite: ckpt.non_finite(),
        unknown_tensors: ckpt.unknown_tensors(),
        tensors,
    }
}

/// Human-readable size with binary units.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// Parameter count as people say it: 260.0K, 1.10B.
pub fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

impl ModelSummary {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(s, "{}  ({}, {})", self.path, self.model_type, self.architecture);
        let _ = writeln!(
            s,
            "  layers {}  hidden {}  FFN {}  heads {} (KV {}, head_dim {})  vocab {}",
            self.layers, self.hidden_size, self.intermediate_size, self.attention_heads, self.kv_heads, self.head_dim, self.vocab_size
        );
        if let (Some(e), Some(k)) = (self.experts, self.experts_per_token) {
            let _ = writeln!(
                s,
                "  MoE: {e} experts, top-{k}, expert FFN {}{}, {} of {} layers sparse, renormalised top-k: {}",
                self.expert_intermediate_size.unwrap_or(0),
                self.shared_expert_intermediate_size.map(|x| format!(", shared expert FFN {x}")).unwrap_or_default(),
                self.moe_layers,
                self.layers,
                yes(self.norm_topk_prob.unwrap_or(false)),
            );
        }
        let p = &self.params;
        let _ = writeln!(
            s,
            "  parameters: {} total ({}), {} active per token ({}), embedding {}, LM head {}",
            p.total,
            human_count(p.total),
            p.active,
            human_count(p.active),
            human_count(p.embedding),
            if self.tied_embeddings { "tied".to_string() } else { human_count(p.lm_head) }
        );
        let dtypes: Vec<String> = self.dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
        let _ = writeln!(
            s,
            "  dtypes: {}  biases: qkv {} o {} mlp {}{}",
            dtypes.join(", "),
            yes(self.qkv_bias),
            yes(self.o_bias),
            yes(self.mlp_bias),
            if self.qk_norm { "  q/k norm: per head over head_dim" } else { "" }
        );
        let _ = writeln!(
            s,
            "  RoPE: theta {}{}  max positions {}{}",
            self.rope_theta,
            self.rope_scaling.as_ref().map(|r| format!(", scaling {r}")).unwrap_or_default(),
            self.max_position_embeddings,
            self.sliding_window.map(|w| format!("  sliding window {w}")).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "  memory to load: {} as stored, {} as f32; on disk {} in {} shard(s)",
            human_bytes(self.load_bytes_stored),
            human_bytes(self.load_bytes_f32),
            human_bytes(self.file_bytes),
            self.shards.len()
        );
        for sh in &self.shards {
            let _ = writeln!(s, "    {}  {}  {} tensors", sh.file, human_bytes(sh.bytes), sh.tensors);
        }
        for b in &self.non_finite {
            let _ = writeln!(s, "  NON-FINITE: {}  {} NaN, {} Inf", b.name, b.nan, b.inf);
        }
        for name in &self.unknown_tensors {
            let _ = writeln!(s, "  UNKNOWN (not declared by config.json, dropped on load): {name}");
        }
        if let Some(ts) = &self.tensors {
            let width = ts.iter().map(|t| t.name.len()).max().unwrap_or(0);
            for t in ts {
                let _ = writeln!(s, "  {:width$}  {:4}  {:?}  {}", t.name, t.dtype, t.shape, t.shard);
            }
        }
        s
    }
}
