//! Backward-pass checks: central finite differences in f64 against candle's gradients for every
//! parameter kind (embedding, norms, attention with GQA and biases, SwiGLU, router, experts, shared
//! expert and its gate, LM head), plus the guard that every parameter receives a non-zero gradient.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use escale_model::{next_token_loss, Model};
use rand::{Rng, SeedableRng};

/// Moves every parameter off its HF init (norms 1, biases 0) so each gradient path is generic.
fn jitter(model: &Model, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, v) in model.named_parameters() {
        let n = v.elem_count();
        let noise: Vec<f64> = (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
        let t = (v.as_tensor() + Tensor::from_vec(noise, v.dims(), &Device::Cpu).unwrap()).unwrap();
        v.set(&t).unwrap();
    }
}

/// Next-token loss plus a fixed random projection of every router's logits, so the router is
/// checked both through the routing weights and through the exposed `router_logits`.
fn loss(model: &Model, ids: &Tensor, proj_seed: u64) -> Tensor {
    let out = model.forward(ids).unwrap();
    let mut l = next_token_loss(&out.logits, ids).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(proj_seed);
    for r in &out.router_logits {
        let w: Vec<f64> = (0..r.elem_count()).map(|_| rng.random_range(-0.1..0.1)).collect();
        let w = Tensor::from_vec(w, r.dims(), &Device::Cpu).unwrap();
        l = (l + (r * w).unwrap().sum_all().unwrap()).unwrap();
    }
    l
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

fn set_entry(v: &Var, i: usize, value: f64) {
    let mut data: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    data[i] = value;
    v.set(&Tensor::from_vec(data, v.dims(), &Device::Cpu).unwrap()).unwrap();
}

fn check_family(model_type: &str) {
    let cfg = common::tiny_config(model_type);
    let model = Model::init_random(&cfg, 11, &Device::Cpu, DType::F64).unwrap();
    jitter(&model, 12);
    let ids = common::ids(&[&[1, 5, 9, 2, 33, 7, 7, 20], &[3, 3, 14, 0, 36, 11, 25, 4]]);
    let l = loss(&model, &ids, 99);
    let grads = l.backward().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let eps = 1e-5;
    let mut checked = 0;
    let mut worst = 0f64;
    for (name, v) in model.named_parameters() {
        let g: Vec<f64> = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient")).flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // The entry with the largest gradient plus two random ones.
        let top = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        for i in [top, rng.random_range(0..g.len()), rng.random_range(0..g.len())] {
            set_entry(&v, i, base[i] + eps);
            let lp = scalar(&loss(&model, &ids, 99));
            set_entry(&v, i, base[i] - eps);
            let lm = scalar(&loss(&model, &ids, 99));
            set_entry(&v, i, base[i]);
            let num = (lp - lm) / (2.0 * eps);
            let err = (num - g[i]).abs();
            worst = worst.max(err / (1e-6 + g[i].abs()));
            assert!(err <= 1e-7 + 1e-5 * g[i].abs(), "{model_type} {name}[{i}]: finite difference {num:e} vs backward {:e}", g[i]);
            checked += 1;
        }
    }
    eprintln!("{model_type}: {checked} entries checked, worst relative error {worst:.2e}");
}

#[test]
fn finite_differences_llama_with_biases_and_gqa() {
    check_family("llama");
}

#[test]
fn finite_differences_qwen2() {
    check_family("qwen2");
}

#[test]
fn finite_differences_mixtral_router_and_experts() {
    check_family("mixtral");
}

#[test]
fn finite_differences_qwen2_moe_shared_expert() {
    check_family("qwen2_moe");
}

/// The guard from docs/cpu-training-notes.md: a silently cut graph shows up as parameters without
/// gradient. Every parameter must receive a finite, non-zero gradient, in f32 as used in training.
#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    for mt in ["llama", "mistral", "qwen2", "mixtral", "qwen2_moe"] {
        let mut cfg = common::tiny_config(mt);
        cfg.tie_word_embeddings = mt == "mistral";
        let model = Model::init_random(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
        jitter_f32(&model);
        let ids = common::ids(&[&[1, 5, 9, 2, 33, 7, 7, 20, 8, 30, 31, 12], &[3, 3, 14, 0, 36, 11, 25, 4, 19, 18, 17, 16]]);
        let out = model.forward(&ids).unwrap();
        let l = next_token_loss(&out.logits, &ids).unwrap();
        let grads = l.backward().unwrap();
        let params = model.named_parameters();
        assert!(params.len() >= 20, "{mt}: {} parameters", params.len());
        for (name, v) in params {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{mt}: {name} received no gradient"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|x| x.is_finite()), "{mt}: {name} has a non-finite gradient");
            assert!(g.iter().any(|&x| x != 0.0), "{mt}: {name} has an all-zero gradient");
        }
    }
}

fn jitter_f32(model: &Model) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (_, v) in model.named_parameters() {
        let noise: Vec<f32> = (0..v.elem_count()).map(|_| rng.random_range(-0.1..0.1)).collect();
        let t = (v.as_tensor() + Tensor::from_vec(noise, v.dims(), &Device::Cpu).unwrap()).unwrap();
        v.set(&t).unwrap();
    }
}

/// This crate must not call candle-nn: its fused softmax / rms_norm / rotary ops record no backward.
#[test]
fn no_fused_candle_nn_ops_in_the_engine() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            assert!(!code.contains("candle_nn"), "{}:{}: uses candle_nn ({line})", path.display(), n + 1);
        }
    }
    let manifest = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dev-dependencies]").next().unwrap();
    assert!(!deps.contains("candle-nn"), "candle-nn must stay a dev-dependency (reference models only)");
}
