//! Logits, losses and router logits agree with Python transformers (the oracle) on random tiny
//! checkpoints of every family it makes, including biases, tied heads, rope scaling, sharded and
//! bf16 checkpoints.
//!
//! Tolerance: max |delta logit| <= 1e-4 x max |logit|, for f32 and bf16 checkpoints alike: the
//! oracle loads bf16 weights upcast to f32 and computes in f32, as this engine does (the upcast is
//! exact), so storage precision does not enter the comparison.

use candle_core::{DType, Device, Tensor};
use escale_model::{next_token_loss, Model};
use escale_testkit::{require_oracle, Dtype, Family, TinySpec};

fn seqs(vocab: u32) -> Vec<Vec<u32>> {
    let a: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % vocab).collect();
    let b: Vec<u32> = (0..6).map(|i| (i * 53 + 17) % vocab).collect();
    vec![a, b]
}

fn check(label: &str, spec: TinySpec) {
    let oracle = require_oracle!();
    let dir = oracle.make_tiny(&spec);
    let model = Model::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let ids = seqs(model.config.vocab_size as u32);
    let want = oracle.logits_with_router(&dir, &ids);
    for (s, w) in ids.iter().zip(&want.seqs) {
        let t = Tensor::new(s.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let out = model.forward(&t).unwrap();
        let got: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
        let d = escale_testkit::max_abs_diff(&got, &w.logits);
        let scale = escale_testkit::max_abs(&w.logits);
        eprintln!("{label} len {}: max |delta| {d:.2e}, max |logit| {scale:.2}", s.len());
        assert!(scale > 0.1, "{label}: degenerate logits");
        assert!(d <= 1e-4 * scale, "{label}: max |delta logit| {d} > 1e-4 x {scale}");
        let loss = next_token_loss(&out.logits, &t).unwrap().to_scalar::<f32>().unwrap() as f64;
        let wl = w.loss.unwrap();
        assert!((loss - wl).abs() <= 1e-5 * wl.abs().max(1.0), "{label}: loss {loss} vs {wl}");
        assert_eq!(out.router_logits.len(), w.router_logits.len(), "{label}: MoE layer count");
        for (l, (r, wr)) in out.router_logits.iter().zip(&w.router_logits).enumerate() {
            assert_eq!(r.dims(), wr.shape.as_slice(), "{label}: router {l} shape");
            let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            let d = escale_testkit::max_abs_diff(&r, &wr.data);
            assert!(d <= 1e-4 * escale_testkit::max_abs(&wr.data).max(1e-3), "{label}: router {l}: {d}");
        }
        for c in &out.expert_counts {
            assert_eq!(c.iter().sum::<u64>() as usize, s.len() * spec.top_k, "{label}: expert counts");
        }
    }
}

#[test]
fn llama_with_all_biases_tied_and_sharded() {
    check(
        "llama",
        TinySpec {
            attention_bias: Some(true),
            mlp_bias: true,
            tied: true,
            max_shard_size: Some("20KB".into()),
            ..TinySpec::new(Family::Llama)
        },
    );
}

#[test]
fn llama_rope_scaling_linear_and_llama3_and_head_dim() {
    check(
        "llama linear",
        TinySpec {
            rope_scaling: Some(serde_json::json!({"rope_type": "linear", "factor": 3.0})),
            head_dim: Some(16),
            ..TinySpec::new(Family::Llama)
        },
    );
    // head_dim 8, theta 5e5: wavelengths 6.3, 167, 4443, 1.2e5 against band edges 128 and 512, so
    // one frequency is kept, one smoothed and two divided by the factor.
    check(
        "llama llama3",
        TinySpec {
            rope_theta: 500000.0,
            rope_scaling: Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 512})),
            ..TinySpec::new(Family::Llama)
        },
    );
}

#[test]
fn mistral_and_qwen2() {
    check("mistral", TinySpec::new(Family::Mistral));
    check("qwen2", TinySpec { tied: true, ..TinySpec::new(Family::Qwen2) });
}

#[test]
fn mixtral_bf16_checkpoint() {
    check("mixtral", TinySpec::new(Family::Mixtral));
    check("mixtral bf16", TinySpec { dtype: Dtype::Bf16, seed: 3, ..TinySpec::new(Family::Mixtral) });
}

#[test]
fn qwen2_moe_with_and_without_norm_topk_prob() {
    check("qwen2_moe", TinySpec { norm_topk_prob: false, ..TinySpec::new(Family::Qwen2Moe) });
    check("qwen2_moe norm", TinySpec { norm_topk_prob: true, kv_heads: 1, ..TinySpec::new(Family::Qwen2Moe) });
}

#[test]
fn qwen3_untied_f32_with_wide_heads_and_tied_bf16() {
    // head_dim 12 with hidden 32 and 4 heads: q_proj is [48, 32], and q_norm / k_norm act on 12
    // channels, so a norm taken over hidden/heads (8) or over all heads at once changes the logits.
    check(
        "qwen3",
        TinySpec { head_dim: Some(12), attention_bias: Some(true), ..TinySpec::new(Family::Qwen3) },
    );
    check("qwen3 tied bf16", TinySpec { tied: true, dtype: Dtype::Bf16, seed: 5, ..TinySpec::new(Family::Qwen3) });
}

#[test]
fn qwen3_moe_untied_f32_and_tied_bf16_with_dense_layers() {
    check(
        "qwen3_moe",
        TinySpec {
            norm_topk_prob: false,
            layers: 3,
            head_dim: Some(12),
            extra_config: Some(serde_json::json!({"mlp_only_layers": [1]})),
            ..TinySpec::new(Family::Qwen3Moe)
        },
    );
    check(
        "qwen3_moe tied bf16",
        TinySpec { tied: true, dtype: Dtype::Bf16, seed: 7, kv_heads: 1, ..TinySpec::new(Family::Qwen3Moe) },
    );
}

/// KV-cached greedy decoding of a qwen3 (q/k norms applied to each new token's head before RoPE at
/// its position) continues exactly as transformers' argmax over the whole sequence says.
#[test]
fn qwen3_cached_greedy_generation_follows_transformers() {
    let oracle = require_oracle!();
    let spec = TinySpec { head_dim: Some(12), attention_bias: Some(true), ..TinySpec::new(Family::Qwen3) };
    let dir = oracle.make_tiny(&spec);
    let model = Model::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let prompt = [1u32, 17, 5];
    let new = escale_model::generate::generate(&model, &prompt, 10, &escale_model::generate::Decoding::Greedy, &[], |_| {}).unwrap();
    let mut seq = prompt.to_vec();
    seq.extend(&new);
    let theirs = &oracle.logits(&dir, &[seq.clone()]).seqs[0];
    let argmax: Vec<u32> = theirs
        .logits
        .chunks(theirs.vocab)
        .map(|row| row.iter().enumerate().fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0 as u32)
        .collect();
    assert_eq!(&argmax[prompt.len() - 1..seq.len() - 1], new.as_slice(), "generated {new:?} from {prompt:?}");
}
