//! `escale export megatron` / `import megatron` against the real megatron-core on CPU: for every
//! family, an escale-grown (scaled-up or upcycled) tiny checkpoint is exported to a torch_dist
//! checkpoint written by megatron-core itself; megatron-core's GPTModel loaded from it gives
//! transformers' logits (relative 1e-4) and, for MoE, the auxiliary and z losses escale computes
//! with the Megatron convention (1e-5); importing it back gives bit-identical safetensors.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use escale_formats::WriterOptions;
use escale_grow::scale_out::{upcycle, MoeFormat, ScaleOutOptions};
use escale_grow::scale_up::{scale_up, ExecOptions, ScaleUpOptions, Target, TargetDims};
use escale_megatron::{export, import, Bridge, ExportOptions, ImportOptions};
use escale_testkit::{max_abs, max_abs_diff, require_oracle, Family, Oracle, TinySpec};
use escale_train::moe_loss::{load_balancing_loss, router_z_loss};
use escale_train::LossConvention;

fn ids(vocab: u32) -> Vec<Vec<u32>> {
    (0..2u32).map(|s| (0..10u32).map(|i| (s * 53 + i * 29 + 7) % vocab).collect()).collect()
}

/// A tiny HF model of `family` made by transformers, then grown by escale: dense families scaled
/// up (hidden 32 -> 64, FFN 64 -> 96, 4 -> 8 heads over 2 KV groups, 2 -> 3 layers), MoE families
/// upcycled from their dense sibling with noise so that the experts (and the routing weights) matter.
fn grown(oracle: &Oracle, family: Family, tied: bool, dir: &Path) -> PathBuf {
    let dense_family = match family {
        Family::Mixtral => Family::Mistral,
        Family::Qwen2Moe => Family::Qwen2,
        Family::Qwen3Moe => Family::Qwen3,
        f => f,
    };
    let src = oracle.make_tiny(&TinySpec { tied, seed: 5, ..TinySpec::new(dense_family) });
    let out = dir.join(format!("grown-{}", family.as_str()));
    match family {
        Family::Qwen3Moe => {
            // qwen3_moe: q/k norms carried into every layer, granular experts, no shared expert,
            // renormalised top-k (mcore's default router).
            let o = ScaleOutOptions {
                experts: 4,
                top_k: 2,
                format: Some(MoeFormat::Qwen3Moe),
                granularity: 2,
                noise: 0.02,
                router_std: 1.0,
                seed: 3,
                ..ScaleOutOptions::default()
            };
            upcycle(&src, &out, &o, &WriterOptions::default(), &|_, _| {}).unwrap();
        }
        Family::Mixtral | Family::Qwen2Moe => {
            let qwen = family == Family::Qwen2Moe;
            let o = ScaleOutOptions {
                experts: if qwen { 6 } else { 4 },
                top_k: 2,
                format: Some(if qwen { MoeFormat::Qwen2Moe } else { MoeFormat::Mixtral }),
                granularity: if qwen { 2 } else { 1 },
                shared_experts: if qwen { 2 } else { 0 },
                // qwen2_moe without renormalisation: the router convention megatron calls pre-softmax.
                renormalize: !qwen,
                noise: 0.02,
                router_std: 1.0,
                seed: 3,
                ..ScaleOutOptions::default()
            };
            upcycle(&src, &out, &o, &WriterOptions::default(), &|_, _| {}).unwrap();
        }
        _ => {
            let target = Target::Dims(TargetDims {
                hidden_size: Some(64),
                intermediate_size: Some(96),
                num_attention_heads: Some(8),
                num_hidden_layers: Some(3),
            });
            scale_up(&src, &out, &target, &ScaleUpOptions::default(), &ExecOptions::default(), None).unwrap();
        }
    }
    out
}

/// escale's Megatron-convention MoE losses (mean over MoE layers of the per-layer values).
fn escale_moe_losses(dir: &Path, ids: &[Vec<u32>], top_k: usize) -> (f64, f64) {
    let model = escale_model::Model::load_dir(dir, &Device::Cpu, DType::F32).unwrap();
    let flat: Vec<u32> = ids.concat();
    let input = Tensor::from_vec(flat, (ids.len(), ids[0].len()), &Device::Cpu).unwrap();
    let out = model.forward(&input).unwrap();
    let (_, aux) = load_balancing_loss(&out.router_logits, &out.expert_counts, top_k, LossConvention::Megatron).unwrap();
    let (_, z) = router_z_loss(&out.router_logits).unwrap();
    (aux, z)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn check_family(oracle: &Oracle, bridge: &Bridge, family: Family, tied: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = grown(oracle, family, tied, tmp.path());
    let exported = tmp.path().join("mcore");
    let report = export(&hf, &exported, bridge, &ExportOptions::default(), &|_| {}).unwrap();
    println!("{family:?} tied={tied}: exported {} tensors with megatron-core {}", report.tensors, report.megatron_core);
    for f in [escale_megatron::ARGS_FILE, escale_megatron::FLAGSCALE_FILE, "release/.metadata", "hf/config.json"] {
        assert!(exported.join(f).is_file(), "{f} missing from the export");
    }

    let tokens = ids(128);
    let theirs = oracle.logits(&hf, &tokens).flat();
    let ours = common::mcore_forward(bridge, &exported, &tokens);
    assert_eq!(ours.shape, theirs.1, "logit shapes");
    assert!(max_abs(&theirs.0) > 1e-2, "degenerate logits");
    let rel = max_abs_diff(&ours.logits, &theirs.0) / max_abs(&theirs.0);
    println!("{family:?}: megatron-core vs transformers max |dlogit| / max |logit| = {rel:.2e}");
    assert!(rel < 1e-4, "{family:?}: megatron-core logits differ from transformers' by {rel:e} (relative)");

    if family.is_moe() {
        let (aux, z) = escale_moe_losses(&hf, &tokens, 2);
        let (m_aux, m_z) = (mean(&ours.load_balancing), mean(&ours.z_loss));
        println!("{family:?}: load balancing escale {aux:.6} megatron-core {m_aux:.6}; z escale {z:.6} megatron-core {m_z:.6}");
        assert!((aux - m_aux).abs() < 1e-5, "aux loss: escale {aux} vs megatron-core {m_aux}");
        assert!((z - m_z).abs() < 1e-5 * z.abs().max(1.0), "z loss: escale {z} vs megatron-core {m_z}");
    }

    let back = tmp.path().join("back");
    import(&exported, &back, bridge, &ImportOptions::default()).unwrap();
    common::assert_bit_identical(&hf, &back);
}

#[test]
fn llama_scaled_up_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Llama, false);
}

#[test]
fn mistral_scaled_up_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Mistral, false);
}

#[test]
fn qwen2_tied_scaled_up_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Qwen2, true);
}

#[test]
fn mixtral_upcycled_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Mixtral, false);
}

#[test]
fn qwen2_moe_upcycled_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Qwen2Moe, false);
}

#[test]
fn qwen3_scaled_up_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Qwen3, false);
}

#[test]
fn qwen3_moe_upcycled_round_trips_through_megatron_core() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    check_family(&oracle, &bridge, Family::Qwen3Moe, false);
}
