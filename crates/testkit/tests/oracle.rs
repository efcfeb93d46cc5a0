//! Tests of the transformers oracle itself: the checkpoints it makes load back in transformers with
//! the layout each family should have, its logits and losses are deterministic and self-consistent,
//! its AdamW step follows the documented update rule, and its MoE losses reproduce the worked example
//! of `growth-algorithms.md` section 5. Everything else in escale is judged by this oracle, so it is
//! checked against first principles here, not just run.

use std::collections::BTreeMap;
use std::path::Path;

use escale_testkit::{
    max_abs, max_abs_diff, read_checkpoint_f32, read_safetensors_f32, require_oracle, require_shared,
    AdamWSpec, Dtype, Family, Oracle, Tensor, TinySpec,
};

fn config(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("config.json is JSON")
}

/// Mean next-token cross-entropy computed here in f64 from the returned logits.
fn cross_entropy(logits: &[f32], vocab: usize, ids: &[u32]) -> f64 {
    let mut total = 0.0;
    for t in 0..ids.len() - 1 {
        let row = &logits[t * vocab..(t + 1) * vocab];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        total += lse - row[ids[t + 1] as usize] as f64;
    }
    total / (ids.len() - 1) as f64
}

fn ids_for(vocab: usize) -> Vec<Vec<u32>> {
    vec![
        (0..12).map(|i| (i * 7 + 1) as u32 % vocab as u32).collect(),
        (0..5).map(|i| (i * 13 + 3) as u32 % vocab as u32).collect(),
    ]
}

/// Creates a checkpoint of `spec`, checks the tensor layout HF uses for its family, and runs
/// transformers on it: finite, non-trivial logits whose reported loss matches a recomputation.
fn check_family(oracle: &Oracle, spec: &TinySpec) {
    let dir = oracle.make_tiny(spec);
    let cfg = config(&dir);
    assert_eq!(cfg["model_type"], spec.family.as_str());
    assert_eq!(cfg["hidden_size"], spec.hidden);
    assert_eq!(cfg["num_key_value_heads"], spec.kv_heads);
    assert_eq!(cfg["tie_word_embeddings"], spec.tied);
    let want_dtype = match spec.dtype {
        Dtype::F32 => "float32",
        Dtype::Bf16 => "bfloat16",
        Dtype::F16 => "float16",
    };
    assert_eq!(cfg["dtype"], want_dtype);

    let w = read_checkpoint_f32(&dir);
    assert_eq!(w.contains_key("lm_head.weight"), !spec.tied, "lm_head present iff untied");
    let l0 = "model.layers.0";
    let has = |n: &str| w.contains_key(&format!("{l0}.{n}"));
    let qkv_bias = match spec.family {
        Family::Qwen2 => true,
        Family::Qwen2Moe => spec.attention_bias.unwrap_or(true),
        Family::Llama => spec.attention_bias.unwrap_or(false),
        _ => false,
    };
    assert_eq!(has("self_attn.q_proj.bias"), qkv_bias, "q bias");
    assert_eq!(has("self_attn.v_proj.bias"), qkv_bias, "v bias");
    assert_eq!(has("self_attn.o_proj.bias"), spec.family == Family::Llama && qkv_bias, "o bias only on llama");
    let e = spec.experts.unwrap_or(0);
    match spec.family {
        Family::Mixtral => {
            // transformers 5 fuses experts in memory; the files must keep the classic hub layout.
            assert_eq!(w[&format!("{l0}.block_sparse_moe.gate.weight")].shape, vec![e, spec.hidden]);
            for x in 0..e {
                let w1 = &w[&format!("{l0}.block_sparse_moe.experts.{x}.w1.weight")];
                assert_eq!(w1.shape, vec![spec.intermediate, spec.hidden]);
                let w2 = &w[&format!("{l0}.block_sparse_moe.experts.{x}.w2.weight")];
                assert_eq!(w2.shape, vec![spec.hidden, spec.intermediate]);
            }
            assert!(!has("mlp.gate_proj.weight"));
        }
        Family::Qwen2Moe => {
            let mi = spec.moe_intermediate.unwrap();
            let si = spec.shared_expert_intermediate.unwrap();
            assert_eq!(w[&format!("{l0}.mlp.gate.weight")].shape, vec![e, spec.hidden]);
            assert_eq!(w[&format!("{l0}.mlp.experts.{}.down_proj.weight", e - 1)].shape, vec![spec.hidden, mi]);
            assert_eq!(w[&format!("{l0}.mlp.shared_expert.up_proj.weight")].shape, vec![si, spec.hidden]);
            assert_eq!(w[&format!("{l0}.mlp.shared_expert_gate.weight")].shape, vec![1, spec.hidden]);
            assert_eq!(cfg["norm_topk_prob"], spec.norm_topk_prob);
        }
        _ => assert_eq!(w[&format!("{l0}.mlp.down_proj.weight")].shape, vec![spec.hidden, spec.intermediate]),
    }
    // Random, non-trivial norm weights and biases (HF's own init would be all ones / zeros).
    let norm = &w[&format!("{l0}.input_layernorm.weight")].data;
    assert!(norm.iter().any(|&x| (x - 1.0).abs() > 0.1), "norm weights are randomised");
    if qkv_bias {
        assert!(max_abs(&w[&format!("{l0}.self_attn.q_proj.bias")].data) > 0.01, "biases are randomised");
    }

    let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    let ids = ids_for(vocab);
    let out = if spec.family.is_moe() { oracle.logits_with_router(&dir, &ids) } else { oracle.logits(&dir, &ids) };
    assert_eq!(out.seqs.len(), 2);
    for (s, seq_ids) in out.seqs.iter().zip(&ids) {
        assert_eq!((s.len, s.vocab), (seq_ids.len(), vocab));
        assert!(s.logits.iter().all(|x| x.is_finite()), "finite logits");
        // Large enough weights that a wrong tensor shows up clearly in the logits.
        assert!(max_abs(&s.logits) > 0.5, "logits are non-trivial: max |logit| {}", max_abs(&s.logits));
        let loss = s.loss.expect("loss of a multi-token sequence");
        let mine = cross_entropy(&s.logits, vocab, seq_ids);
        assert!((loss - mine).abs() < 1e-5, "reported loss {loss} vs recomputed {mine}");
        if spec.family.is_moe() {
            assert_eq!(s.router_logits.len(), spec.layers, "router logits per layer");
            assert!(s.router_logits.iter().all(|r| r.shape == vec![seq_ids.len(), e]));
        } else {
            assert!(s.router_logits.is_empty());
        }
    }
    println!(
        "{}: {} tensors, loss {:?}, max |logit| {:.3}",
        spec.family.as_str(),
        w.len(),
        out.losses(),
        max_abs(&out.seqs[0].logits)
    );
}

#[test]
fn llama_with_qkvo_bias_tied_bf16_loads_in_transformers() {
    let oracle = require_oracle!();
    check_family(
        &oracle,
        &TinySpec { tied: true, attention_bias: Some(true), dtype: Dtype::Bf16, ..TinySpec::new(Family::Llama) },
    );
}

#[test]
fn mistral_untied_loads_in_transformers() {
    let oracle = require_oracle!();
    check_family(&oracle, &TinySpec::new(Family::Mistral));
}

#[test]
fn qwen2_tied_loads_in_transformers() {
    let oracle = require_oracle!();
    check_family(&oracle, &TinySpec { tied: true, ..TinySpec::new(Family::Qwen2) });
}

#[test]
fn mixtral_loads_in_transformers_with_hub_layout() {
    let oracle = require_oracle!();
    check_family(&oracle, &TinySpec::new(Family::Mixtral));
}

#[test]
fn qwen2_moe_loads_in_transformers() {
    let oracle = require_oracle!();
    check_family(&oracle, &TinySpec { top_k: 1, ..TinySpec::new(Family::Qwen2Moe) });
}

#[test]
fn logits_are_deterministic_and_independent_of_batch_companions() {
    let oracle = require_oracle!();
    let dir = oracle.make_tiny(&TinySpec::new(Family::Qwen2));
    assert_eq!(oracle.make_tiny(&TinySpec::new(Family::Qwen2)), dir, "same spec reuses the cached folder");
    let ids = ids_for(128);
    let a = oracle.logits(&dir, &ids);
    let b = oracle.logits(&dir, &[ids[1].clone(), vec![5]]);
    // Bit-identical, and one-token sequences have no loss.
    assert_eq!(a.seqs[1].logits, b.seqs[0].logits);
    assert_eq!(a.seqs[1].loss, b.seqs[0].loss);
    assert_eq!(b.seqs[1].loss, None);
    // Causality: the one-token sequence [5] sees only itself, so its logits equal the first row of
    // any sequence starting with 5 (up to f32 rounding: one row and three rows take different
    // matmul kernels).
    let c = oracle.logits(&dir, &[vec![5, 9, 11]]);
    let d = max_abs_diff(&c.seqs[0].logits[..128], &b.seqs[1].logits);
    assert!(d < 1e-5, "causal: first row depends on later tokens by {d}");
    // A different seed gives a different model.
    let other = oracle.make_tiny(&TinySpec { seed: 1, ..TinySpec::new(Family::Qwen2) });
    assert_ne!(other, dir);
    let d = oracle.logits(&other, &[ids[1].clone()]);
    assert!(max_abs_diff(&d.seqs[0].logits, &a.seqs[1].logits) > 1e-2);
}

#[test]
fn sharded_checkpoint_has_a_complete_index_and_the_same_weights() {
    let oracle = require_oracle!();
    let spec = TinySpec::new(Family::Llama);
    let single = oracle.make_tiny(&spec);
    let sharded = oracle.make_tiny(&TinySpec { max_shard_size: Some("20KB".into()), ..spec.clone() });
    assert!(single.join("model.safetensors").is_file());
    assert!(!single.join("model.safetensors.index.json").exists());

    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().expect("weight_map");
    let shards: std::collections::BTreeSet<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() >= 3, "20KB shards of a ~{}-tensor model: got {shards:?}", map.len());
    let mut total_bytes = 0u64;
    let mut from_shards = BTreeMap::new();
    for s in &shards {
        assert!(s.starts_with("model-0000") && s.ends_with(&format!("-of-{:05}.safetensors", shards.len())), "{s}");
        for (name, t) in read_safetensors_f32(&sharded.join(s)) {
            assert_eq!(map[&name], *s, "{name} is in the shard the index names");
            total_bytes += 4 * t.numel() as u64;
            from_shards.insert(name, t);
        }
    }
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total_bytes));
    assert_eq!(from_shards.len(), map.len(), "every indexed tensor found");
    // Same spec and seed: sharding changes the files, not the weights.
    assert_eq!(from_shards, read_checkpoint_f32(&single));
}

#[test]
fn stories260k_logits_match_the_stored_transformers_reference() {
    let shared = require_shared!();
    let oracle = require_oracle!();
    let model = shared.join("testdata/models/stories260K");
    let reference = read_safetensors_f32(&model.join("reference/reference_logits.safetensors"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("reference/reference.json")).unwrap()).unwrap();
    let names = ["once", "lily"];
    let ids: Vec<Vec<u32>> = names
        .iter()
        .map(|n| reference[&format!("{n}.input_ids")].data.iter().map(|&x| x as u32).collect())
        .collect();
    let out = oracle.logits(&model, &ids);
    for (i, n) in names.iter().enumerate() {
        let want = &reference[&format!("{n}.logits")];
        let got = &out.seqs[i];
        assert_eq!(want.shape, vec![got.len, got.vocab]);
        let d = max_abs_diff(&got.logits, &want.data);
        // The reference was made with the same versions on another CPU; differences are f32
        // rounding (measured 1.3e-5 on max |logit| 18, i.e. 7e-7 relative).
        println!("stories260K {n}: max |delta logit| {d:e} (max |logit| {})", max_abs(&want.data));
        assert!(d < 2e-5, "{n}: max |delta| {d}");
        let last = &got.logits[(got.len - 1) * got.vocab..];
        let argmax = (0..got.vocab).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        assert_eq!(json[n]["argmax_next"].as_u64(), Some(argmax as u64));
    }
}

#[test]
fn adamw_first_step_follows_the_pytorch_update_rule() {
    let oracle = require_oracle!();
    let dir = oracle.make_tiny(&TinySpec { attention_bias: Some(true), ..TinySpec::new(Family::Llama) });
    let before = read_checkpoint_f32(&dir);
    let ids: Vec<Vec<u32>> = vec![(0..10).map(|i| (i * 11 + 2) % 128).collect(), (0..10).map(|i| (i * 5 + 1) % 128).collect()];
    let spec = AdamWSpec { lr: 1e-2, weight_decay: 0.1, ..AdamWSpec::default() };
    let r = oracle.adamw_step(&dir, &ids, &spec);
    assert_eq!(r.steps.len(), 1);
    assert_eq!(r.grads.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "gradients carry checkpoint names");
    assert_eq!(r.params.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());

    // The loss that was differentiated is the batch's mean next-token loss: equal-length
    // sequences, so the mean of the per-sequence losses transformers reports.
    let l = oracle.logits(&dir, &ids);
    let mean = l.losses().iter().map(|x| x.unwrap()).sum::<f64>() / 2.0;
    assert!((r.steps[0].lm_loss - mean).abs() < 1e-5, "{} vs {mean}", r.steps[0].lm_loss);
    assert!(r.loss_after < r.steps[0].loss, "one step on the batch lowers its loss");

    // First AdamW step: m_hat = g, v_hat = g^2, so p' = p (1 - lr wd) - lr g / (|g| + eps), with
    // decay only on matrices.
    let mut decayed = 0;
    for (name, p) in &before {
        let g = &r.grads[name];
        let wd = if p.shape.len() >= 2 { spec.weight_decay } else { 0.0 };
        decayed += (wd > 0.0) as usize;
        let want: Vec<f32> = p
            .data
            .iter()
            .zip(&g.data)
            .map(|(&p, &g)| {
                let (p, g) = (p as f64, g as f64);
                (p * (1.0 - spec.lr * wd) - spec.lr * g / (g.abs() + spec.eps)) as f32
            })
            .collect();
        let d = max_abs_diff(&r.params[name].data, &want);
        assert!(d < 2e-6, "{name}: max |delta| {d} from the AdamW first-step rule");
    }
    assert!(decayed > 0 && decayed < before.len(), "some tensors decayed, norms and biases not");
    println!("adamw: loss {} -> {}, grad norm {}", r.steps[0].loss, r.loss_after, r.steps[0].grad_norm);
}

#[test]
fn moe_losses_reproduce_the_spec_worked_example() {
    let oracle = require_oracle!();
    // growth-algorithms.md section 5: E=4, k=2, T=3.
    let z = Tensor::new(vec![3, 4], vec![2.0, 1.0, 0.0, -1.0, 0.0, 0.5, 3.0, -0.5, 1.0, 2.0, 0.5, 0.0]);
    let m = oracle.moe_losses(std::slice::from_ref(&z), 2);
    assert_eq!((m.num_experts, m.k), (4, 2));
    assert!((m.hf_aux - 2.4609).abs() < 1e-4, "HF aux {}", m.hf_aux);
    assert!((m.megatron_aux_mean - 1.2304).abs() < 1e-4, "Megatron aux {}", m.megatron_aux_mean);
    assert!((m.z_loss_mean - 7.4535).abs() < 1e-4, "z-loss {}", m.z_loss_mean);
    assert_eq!(m.layers[0].tokens_per_expert, vec![2.0, 3.0, 1.0, 0.0]);
    // HF pools all layers' tokens; Megatron averages per-layer values. Two identical layers leave
    // both unchanged, while a second layer with a different routing separates the conventions.
    let two = oracle.moe_losses(&[z.clone(), z.clone()], 2);
    assert!((two.hf_aux - m.hf_aux).abs() < 1e-6);
    assert!((two.megatron_aux_mean - m.megatron_aux_mean).abs() < 1e-6);
    assert_eq!(two.layers.len(), 2);
}

#[test]
fn make_tiny_rejects_an_option_the_family_cannot_carry() {
    let oracle = require_oracle!();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let spec = TinySpec { attention_bias: Some(true), ..TinySpec::new(Family::Mistral) };
    let err = std::panic::catch_unwind(|| oracle.make_tiny_at(&spec, &out)).expect_err("mistral has no attention bias");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("mistral has no attention bias"), "{msg}");
    assert!(!out.exists(), "no partial output left behind");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temporary folder left behind");
}
