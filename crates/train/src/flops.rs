//! Training FLOPs per token, so stages of different sizes share one loss-vs-compute axis.
//!
//! ```text
//! flops_per_token = 6 * (N_active_nonemb + V * d)  +  12 * L * (n_heads * head_dim) * seq_len
//! ```
//!
//! * `N_active_nonemb` = `escale_formats::param_counts(cfg).active_non_embedding()`: every matrix
//!   used for a token, routed experts counted `k` of `E` (MoE counts only active experts), routers
//!   and shared experts included; embedding and LM head excluded.
//! * `V * d`: the LM head is added back because it is a real `[d] x [d, V]` matmul per token,
//!   tied or not. The input embedding is a lookup, not a matmul, and is not counted.
//! * `6 = 2 (multiply-add) x 3 (forward + backward for activations and weights)`.
//! * Attention scores and the weighted sum of values (PaLM's appendix B convention): forward
//!   `2 * 2 * seq * d_attn` per token per layer, x3 for training, over the full (unmasked) window.
//!
//! Norms, activations, softmax and RoPE are ignored (lower order). The value is an accounting
//! convention, not a measurement: it is what MFU and loss-vs-FLOPs plots are computed against.

use escale_formats::{param_counts, ModelConfig};

/// Training FLOPs (forward + backward) for one token at sequence length `seq_len`.
pub fn training_flops_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    let n = param_counts(cfg).active_non_embedding() as f64;
    let head = (cfg.vocab_size * cfg.hidden_size) as f64;
    let d_attn = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let attention = 12.0 * cfg.num_hidden_layers as f64 * d_attn * seq_len as f64;
    6.0 * (n + head) + attention
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn cfg(v: serde_json::Value) -> ModelConfig {
        ModelConfig::from_json(v, Path::new("config.json")).unwrap()
    }

    #[test]
    fn dense_by_hand() {
        // d=8, V=10, ffn 12, 1 layer, 2 heads (head_dim 4), 2 kv heads, tied.
        let c = cfg(json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": true}));
        // q,k,v,o: 4*64 = 256; mlp 3*8*12 = 288; two layer norms + final norm: 24 -> 568.
        let n_nonemb = 256.0 + 288.0 + 24.0;
        let expected = 6.0 * (n_nonemb + 80.0) + 12.0 * 1.0 * 8.0 * 16.0;
        assert_eq!(training_flops_per_token(&c, 16), expected);
        // Untying adds a stored lm_head but not a second head matmul: same FLOPs.
        let u = cfg(json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": false}));
        assert_eq!(training_flops_per_token(&u, 16), expected);
    }

    #[test]
    fn moe_counts_only_active_experts() {
        let base = json!({"model_type": "mixtral", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_experts_per_tok": 2});
        let mut four = base.clone();
        four["num_local_experts"] = json!(4);
        let mut eight = base;
        eight["num_local_experts"] = json!(8);
        let (f4, f8) = (training_flops_per_token(&cfg(four), 16), training_flops_per_token(&cfg(eight), 16));
        // Same k=2 active experts; only the router grows by 4 rows of d=8.
        assert_eq!(f8 - f4, 6.0 * 4.0 * 8.0);
    }
}
