//! escale-train against PyTorch (the transformers oracle): AdamW steps with clipping on the same
//! tiny model and batch, and the MoE loss values on router logits.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use escale_model::Model;
use escale_testkit::{require_oracle, AdamWSpec, Family, TinySpec};
use escale_train::moe_loss::{load_balancing_loss, router_z_loss, top_k_counts};
use escale_train::optim::clip_grad_norm;
use escale_train::{AdamW, AdamWConfig, LossConvention};

fn batch() -> Vec<Vec<u32>> {
    (0..3u32).map(|s| (0..12u32).map(|i| (s * 37 + i * 11 + 5) % 128).collect()).collect()
}

/// Runs `steps` escale steps (forward, loss, backward, clip, AdamW) on one batch, mirroring
/// `oracle.py adamw-step`; returns the first step's gradients, (loss, grad norm) per step, and
/// the parameters after the last step.
#[allow(clippy::type_complexity)]
fn escale_steps(dir: &std::path::Path, spec: &AdamWSpec, moe: bool) -> (BTreeMap<String, Vec<f32>>, Vec<(f64, f64)>, BTreeMap<String, Vec<f32>>) {
    let model = Model::load_dir(dir, &Device::Cpu, DType::F32).unwrap();
    let params = model.named_parameters();
    let cfg = AdamWConfig { beta1: spec.beta1, beta2: spec.beta2, eps: spec.eps, weight_decay: spec.weight_decay };
    let mut opt = AdamW::new(params.clone(), cfg).unwrap();
    let flat: Vec<u32> = batch().concat();
    let ids = Tensor::from_vec(flat, (3, 12), &Device::Cpu).unwrap();
    let (mut first, mut records) = (None, Vec::new());
    for _ in 0..spec.steps {
        let out = model.forward(&ids).unwrap();
        let mut loss = escale_model::next_token_loss(&out.logits, &ids).unwrap();
        if moe {
            let n_layers = out.router_logits.len() as f64;
            // Oracle: HF pooled aux, z-loss as the mean over layers; escale's z objective is the
            // per-layer sum, so its coefficient is divided by the layer count to match.
            let (aux, _) = load_balancing_loss(&out.router_logits, &out.expert_counts, 2, LossConvention::Hf).unwrap();
            let (z, _) = router_z_loss(&out.router_logits).unwrap();
            loss = ((loss + (aux * spec.aux_coef).unwrap()).unwrap() + (z * (spec.z_coef / n_layers)).unwrap()).unwrap();
        }
        let store = loss.backward().unwrap();
        let mut grads: Vec<Tensor> =
            params.iter().map(|(_, v)| store.get(v.as_tensor()).cloned().unwrap_or_else(|| v.zeros_like().unwrap())).collect();
        if first.is_none() {
            first = Some(
                params.iter().zip(&grads).map(|((n, _), g)| (n.clone(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect(),
            );
        }
        let norm = clip_grad_norm(&mut grads, spec.max_grad_norm.unwrap_or(0.0)).unwrap();
        records.push((loss.to_scalar::<f32>().unwrap() as f64, norm));
        opt.step(&grads, spec.lr).unwrap();
    }
    let after = params.iter().map(|(n, v)| (n.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    (first.unwrap(), records, after)
}

fn compare(what: &str, ours: &BTreeMap<String, Vec<f32>>, theirs: &BTreeMap<String, escale_testkit::Tensor>, tol: f32) {
    for (name, t) in theirs {
        let a = ours.get(name).unwrap_or_else(|| panic!("{what}: escale has no `{name}`"));
        let d = escale_testkit::max_abs_diff(a, &t.data);
        assert!(d <= tol, "{what} `{name}`: max |diff| {d} > {tol}");
    }
    assert_eq!(ours.len(), theirs.len(), "{what}: parameter sets differ");
}

#[test]
fn adamw_steps_with_clipping_match_pytorch_dense() {
    let oracle = require_oracle!();
    let dir = oracle.make_tiny(&TinySpec::new(Family::Llama));
    let spec = AdamWSpec { lr: 1e-2, weight_decay: 0.1, max_grad_norm: Some(0.5), steps: 3, ..AdamWSpec::default() };
    let torch = oracle.adamw_step(&dir, &batch(), &spec);
    let (grads, records, params) = escale_steps(&dir, &spec, false);
    compare("gradient", &grads, &torch.grads, 2e-5);
    for (i, (loss, norm)) in records.iter().enumerate() {
        assert!((loss - torch.steps[i].loss).abs() < 1e-4, "step {i} loss {loss} vs {}", torch.steps[i].loss);
        assert!((norm - torch.steps[i].grad_norm).abs() < 1e-4 * norm.max(1.0), "step {i} grad norm {norm} vs {}", torch.steps[i].grad_norm);
    }
    // Three updates of size ~lr: f32 rounding of the Adam ratio allows a few 1e-6.
    compare("parameter", &params, &torch.params, 2e-5);
}

#[test]
fn adamw_step_with_moe_losses_matches_pytorch() {
    let oracle = require_oracle!();
    let dir = oracle.make_tiny(&TinySpec::new(Family::Mixtral));
    let spec = AdamWSpec { lr: 1e-2, weight_decay: 0.1, aux_coef: 0.1, z_coef: 0.05, steps: 1, ..AdamWSpec::default() };
    let torch = oracle.adamw_step(&dir, &batch(), &spec);
    let (grads, records, params) = escale_steps(&dir, &spec, true);
    assert!((records[0].0 - torch.steps[0].loss).abs() < 1e-4, "{} vs {}", records[0].0, torch.steps[0].loss);
    compare("gradient", &grads, &torch.grads, 2e-5);
    compare("parameter", &params, &torch.params, 2e-5);
}

#[test]
fn moe_loss_values_match_transformers() {
    let oracle = require_oracle!();
    // The spec's worked example plus a second, random layer (so HF's pooling over layers matters).
    let z0 = vec![2.0, 1.0, 0.0, -1.0, 0.0, 0.5, 3.0, -0.5, 1.0, 2.0, 0.5, 0.0f32];
    let z1: Vec<f32> = (0..12).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.7 + i as f32 * 0.01).collect();
    let layers = [z0, z1];
    let theirs = oracle.moe_losses(&layers.iter().map(|z| escale_testkit::Tensor::new(vec![3, 4], z.clone())).collect::<Vec<_>>(), 2);
    let ours: Vec<Tensor> = layers.iter().map(|z| Tensor::from_slice(z, (3, 4), &Device::Cpu).unwrap()).collect();
    let counts: Vec<Vec<u64>> = ours.iter().map(|t| top_k_counts(t, 2).unwrap()).collect();
    let (_, hf) = load_balancing_loss(&ours, &counts, 2, LossConvention::Hf).unwrap();
    let (_, meg) = load_balancing_loss(&ours, &counts, 2, LossConvention::Megatron).unwrap();
    let (_, z) = router_z_loss(&ours).unwrap();
    assert!((hf - theirs.hf_aux).abs() < 1e-5, "hf {hf} vs {}", theirs.hf_aux);
    assert!((meg - theirs.megatron_aux_mean).abs() < 1e-5, "megatron {meg} vs {}", theirs.megatron_aux_mean);
    assert!((z - theirs.z_loss_mean).abs() < 1e-4, "z {z} vs {}", theirs.z_loss_mean);
    // Layer 0 alone is the worked example: Megatron 1.2304, z 7.4535.
    assert!((theirs.layers[0].megatron_aux - 1.2304).abs() < 1e-4 && (theirs.layers[0].z_loss - 7.4535).abs() < 1e-4);
}

#[test]
fn adamw_steps_match_pytorch_for_qwen3_and_qwen3_moe_with_moe_losses() {
    let oracle = require_oracle!();
    // Dense qwen3 with head_dim != hidden/heads: the q/k norm weights get gradients and updates.
    let dense = oracle.make_tiny(&TinySpec { head_dim: Some(12), ..TinySpec::new(Family::Qwen3) });
    // eps 1e-6: a gradient entry near zero (gradients agree to 2e-5 absolute) would otherwise have its
    // Adam ratio m/sqrt(v) decided by f32 rounding and move the parameter by up to lr either way.
    let spec = AdamWSpec { lr: 1e-2, eps: 1e-6, weight_decay: 0.1, max_grad_norm: Some(0.5), steps: 2, ..AdamWSpec::default() };
    let torch = oracle.adamw_step(&dense, &batch(), &spec);
    let (grads, records, params) = escale_steps(&dense, &spec, false);
    assert!(torch.grads.contains_key("model.layers.1.self_attn.q_norm.weight"));
    compare("qwen3 gradient", &grads, &torch.grads, 2e-5);
    for (i, (loss, norm)) in records.iter().enumerate() {
        assert!((loss - torch.steps[i].loss).abs() < 1e-4, "qwen3 step {i} loss {loss} vs {}", torch.steps[i].loss);
        assert!((norm - torch.steps[i].grad_norm).abs() < 1e-4 * norm.max(1.0), "qwen3 step {i} grad norm {norm}");
    }
    compare("qwen3 parameter", &params, &torch.params, 2e-5);

    let moe = oracle.make_tiny(&TinySpec { norm_topk_prob: false, ..TinySpec::new(Family::Qwen3Moe) });
    let spec = AdamWSpec { lr: 1e-2, weight_decay: 0.1, aux_coef: 0.1, z_coef: 0.05, steps: 1, ..AdamWSpec::default() };
    let torch = oracle.adamw_step(&moe, &batch(), &spec);
    let (grads, records, params) = escale_steps(&moe, &spec, true);
    assert!(torch.steps[0].aux_loss.is_some() && torch.steps[0].z_loss.is_some());
    assert!((records[0].0 - torch.steps[0].loss).abs() < 1e-4, "qwen3_moe loss {} vs {}", records[0].0, torch.steps[0].loss);
    compare("qwen3_moe gradient", &grads, &torch.grads, 2e-5);
    compare("qwen3_moe parameter", &params, &torch.params, 2e-5);
}
