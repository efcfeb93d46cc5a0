//! Scale-out on tiny random dense checkpoints made here (no Python needed): tensor-level
//! properties (§4.5 of the growth spec), config and manifest contents, exactness of the MoE MLP
//! computed in f64 straight from the written tensors, and bad input.

use std::path::{Path, PathBuf};

use escale_formats::naming::expected_params;
use escale_formats::writer::TensorSpec;
use escale_formats::{
    hf_name, Checkpoint, CheckpointWriter, DType, LayerParam, MlpPart, MlpSite, ModelConfig, ModelType, Param,
    WriterOptions,
};
use escale_grow::scale_out::{drop_neurons, upcycle, MoeFormat, RouterInit, ScaleOutOptions, UpcycleReport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

const HIDDEN: usize = 16;
const FFN: usize = 24;
const LAYERS: usize = 2;

/// A tiny dense model config of the given family (GQA, rope scaling and an unknown field, so the
/// tests can check they survive).
fn dense_config(model_type: &str, tied: bool) -> Value {
    json!({
        "architectures": ["X"], "model_type": model_type, "vocab_size": 40, "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "tie_word_embeddings": tied,
        "escale_test_unknown_field": {"keep": [1, 2]}, "bos_token_id": 1, "torch_dtype": "float32"
    })
}

/// Writes a random dense checkpoint (values N(0, 0.1²); norms near 1) into `dir`.
fn write_dense(dir: &Path, config: Value, dtype: DType, seed: u64) -> PathBuf {
    let cfg = ModelConfig::from_json(config, &dir.join("config.json")).unwrap();
    let params = expected_params(&cfg);
    let specs: Vec<TensorSpec> =
        params.iter().map(|(p, s)| TensorSpec::new(hf_name(cfg.model_type, *p), dtype, s.clone())).collect();
    let writer = CheckpointWriter::create(dir, specs, &WriterOptions::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.1).unwrap();
    for (p, shape) in &params {
        let n: usize = shape.iter().product();
        let is_norm = matches!(p, Param::FinalNorm | Param::Layer(_, LayerParam::InputNorm | LayerParam::PostAttnNorm));
        let values: Vec<f32> =
            (0..n).map(|_| if is_norm { 1.0 + normal.sample(&mut rng) } else { normal.sample(&mut rng) }).collect();
        writer.write_f32(&hf_name(cfg.model_type, *p), &values).unwrap();
    }
    writer.finish(&cfg, None).unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"bos_token_id\": 1}\n").unwrap();
    dir.to_path_buf()
}

fn opts(experts: usize, top_k: usize) -> ScaleOutOptions {
    ScaleOutOptions { experts, top_k, seed: 11, ..ScaleOutOptions::default() }
}

fn run(src: &Path, out: &Path, o: &ScaleOutOptions) -> UpcycleReport {
    upcycle(src, out, o, &WriterOptions::default(), &|_, _| {}).unwrap()
}

#[test]
fn plan_then_execute_writes_a_typed_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("dense"), dense_config("llama", false), DType::F32, 5);
    let ckpt = Checkpoint::open(&src).unwrap();
    let plan = escale_grow::scale_out::ScaleOutPlan::new(&ckpt.config, &opts(4, 2)).unwrap();
    let out = tmp.path().join("moe");
    let report = escale_grow::scale_out::execute(plan.clone(), &ckpt, &out, &WriterOptions::default(), &|_, _| {}).unwrap();
    assert_eq!(report.tensors, plan.tensors.len());
    let escale_grow::GrowthManifest::ScaleOut(m) = escale_grow::GrowthManifest::read(&out).unwrap() else {
        panic!("a scale-out writes a scale-out manifest")
    };
    assert_eq!((m.experts, m.top_k, m.format), (4, 2, MoeFormat::Mixtral));
    assert_eq!(m.exactness, plan.exactness);
    assert!(m.exactness.exact);
    // A plan made for another source is refused before anything is written.
    let mut wider = dense_config("llama", false);
    wider["intermediate_size"] = json!(FFN * 2);
    let other = Checkpoint::open(&write_dense(&tmp.path().join("other"), wider, DType::F32, 5)).unwrap();
    let e = escale_grow::scale_out::execute(plan, &other, &tmp.path().join("x"), &WriterOptions::default(), &|_, _| {});
    assert!(e.unwrap_err().to_string().contains("differs from the one the plan was made for"));
    assert!(!tmp.path().join("x").exists());
}

fn mlp(l: usize, site: MlpSite, part: MlpPart) -> Param {
    Param::Layer(l, LayerParam::Mlp(site, part))
}

fn f32s(ckpt: &Checkpoint, p: Param) -> Vec<f32> {
    ckpt.read_param_f32(p).unwrap().0
}

/// Columns `[c0, c1)` of a row-major `rows × cols` matrix.
fn columns(m: &[f32], cols: usize, c0: usize, c1: usize) -> Vec<f32> {
    m.chunks_exact(cols).flat_map(|row| row[c0..c1].to_vec()).collect()
}

fn manifest(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(escale_grow::MANIFEST_FILE)).unwrap()).unwrap()
}

/// Dense SwiGLU MLP `down · (silu(gate·x) ⊙ up·x)` in f64.
fn swiglu(gate: &[f32], up: &[f32], down: &[f32], ffn: usize, x: &[f64]) -> Vec<f64> {
    let h = x.len();
    let dot = |w: &[f32], r: usize| (0..h).map(|j| w[r * h + j] as f64 * x[j]).sum::<f64>();
    let act: Vec<f64> = (0..ffn)
        .map(|m| {
            let g = dot(gate, m);
            g / (1.0 + (-g).exp()) * dot(up, m)
        })
        .collect();
    (0..h).map(|i| (0..ffn).map(|m| down[i * ffn + m] as f64 * act[m]).sum()).collect()
}

/// The MoE block of layer `l` as transformers computes it (fp32-style softmax, top-k, optional
/// renormalisation, qwen2_moe's sigmoid-gated shared expert), in f64.
fn moe_block(ckpt: &Checkpoint, l: usize, x: &[f64]) -> Vec<f64> {
    let moe = ckpt.config.moe.clone().unwrap();
    let (e_n, k, ie) = (moe.num_experts, moe.num_experts_per_tok, moe.expert_intermediate_size);
    let router = f32s(ckpt, Param::Layer(l, LayerParam::Router));
    let logits: Vec<f64> =
        (0..e_n).map(|e| (0..x.len()).map(|j| router[e * x.len() + j] as f64 * x[j]).sum()).collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|v| (v - max).exp()).sum();
    let probs: Vec<f64> = logits.iter().map(|v| (v - max).exp() / z).collect();
    // Stable top-k: ties broken by index, as torch.topk does on CPU for equal values in practice.
    let mut order: Vec<usize> = (0..e_n).collect();
    order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap().then(a.cmp(&b)));
    let chosen = &order[..k];
    let mass: f64 = chosen.iter().map(|&e| probs[e]).sum();
    let mut y = vec![0.0; x.len()];
    for &e in chosen {
        let w = if moe.norm_topk_prob { probs[e] / mass } else { probs[e] };
        let part = |p| f32s(ckpt, mlp(l, MlpSite::Expert(e), p));
        let out = swiglu(&part(MlpPart::Gate), &part(MlpPart::Up), &part(MlpPart::Down), ie, x);
        y.iter_mut().zip(out).for_each(|(a, b)| *a += w * b);
    }
    if ckpt.config.model_type == ModelType::Qwen2Moe {
        let gate = f32s(ckpt, Param::Layer(l, LayerParam::SharedExpertGate));
        let g: f64 = (0..x.len()).map(|j| gate[j] as f64 * x[j]).sum();
        let s = 1.0 / (1.0 + (-g).exp());
        let part = |p| f32s(ckpt, mlp(l, MlpSite::Shared, p));
        let out = swiglu(&part(MlpPart::Gate), &part(MlpPart::Up), &part(MlpPart::Down), moe.shared_expert_intermediate_size, x);
        y.iter_mut().zip(out).for_each(|(a, b)| *a += s * b);
    }
    y
}

/// Max |MoE(x) - MLP(x)| over random inputs and all layers, relative to max |MLP(x)|.
fn moe_vs_dense(dense: &Checkpoint, moe: &Checkpoint, samples: usize) -> f64 {
    let mut rng = StdRng::seed_from_u64(5);
    let mut worst = 0f64;
    for l in 0..LAYERS {
        let part = |p| f32s(dense, mlp(l, MlpSite::Dense, p));
        let (g, u, d) = (part(MlpPart::Gate), part(MlpPart::Up), part(MlpPart::Down));
        for _ in 0..samples {
            // Inputs of norm ~ sqrt(hidden), like post-RMSNorm activations; routers see real spread.
            let x: Vec<f64> = (0..HIDDEN).map(|_| rng.random_range(-2.0..2.0)).collect();
            let want = swiglu(&g, &u, &d, FFN, &x);
            let got = moe_block(moe, l, &x);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = want.iter().zip(&got).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(err / scale);
        }
    }
    worst
}

/// Every non-MLP tensor of the source appears unchanged in the output.
fn assert_non_mlp_copied(src: &Checkpoint, out: &Checkpoint) {
    for (p, _) in expected_params(&src.config) {
        if matches!(p, Param::Layer(_, LayerParam::Mlp(..))) {
            continue;
        }
        let (a, b) = (src.name_of(p), out.name_of(p));
        assert_eq!(src.bytes(&a).unwrap(), out.bytes(&b).unwrap(), "{a} -> {b}");
    }
}

#[test]
fn plain_mixtral_experts_are_bit_identical_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("llama"), dense_config("llama", false), DType::F32, 1);
    let out = tmp.path().join("moe");
    let report = run(&src, &out, &opts(4, 2));
    assert_eq!(report.plan.format, MoeFormat::Mixtral);
    assert!(report.plan.exactness.exact, "{:?}", report.plan.exactness);

    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert_eq!(moe.config.model_type, ModelType::Mixtral);
    for l in 0..LAYERS {
        for part in [MlpPart::Gate, MlpPart::Up, MlpPart::Down] {
            let want = dense.bytes(&dense.name_of(mlp(l, MlpSite::Dense, part))).unwrap();
            for e in 0..4 {
                let name = moe.name_of(mlp(l, MlpSite::Expert(e), part));
                assert!(name.contains("block_sparse_moe.experts"), "{name}");
                assert_eq!(moe.bytes(&name).unwrap(), want, "{name}");
            }
        }
        assert_eq!(moe.info(&moe.name_of(Param::Layer(l, LayerParam::Router))).unwrap().shape, vec![4, HIDDEN]);
    }
    assert_non_mlp_copied(&dense, &moe);
    let err = moe_vs_dense(&dense, &moe, 20);
    assert!(err < 1e-12, "MoE MLP differs from the dense MLP by {err}");

    // config.json: MoE fields set, every unrelated field kept.
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"], json!(["MixtralForCausalLM"]));
    assert_eq!(cfg["num_local_experts"], 4);
    assert_eq!(cfg["num_experts_per_tok"], 2);
    assert_eq!(cfg["router_aux_loss_coef"], 0.001);
    assert_eq!(cfg["intermediate_size"], FFN);
    assert_eq!(cfg["rope_scaling"], json!({"rope_type": "linear", "factor": 2.0}));
    assert_eq!(cfg["escale_test_unknown_field"], json!({"keep": [1, 2]}));
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert!(out.join("generation_config.json").is_file(), "auxiliary files are copied");

    let m = manifest(&out);
    assert_eq!(m["operation"], "scale_out");
    assert_eq!((m["experts"].clone(), m["top_k"].clone(), m["format"].clone()), (json!(4), json!(2), json!("mixtral")));
    assert_eq!(m["router"]["init"], "normal");
    assert_eq!(m["router"]["std"], 0.02);
    assert_eq!(m["router"]["seed"], 11);
    assert_eq!(m["granularity"], 1);
    assert_eq!(m["exactness"]["exact"], true);
    assert_eq!(m["source"], src.display().to_string());
}

#[test]
fn plain_qwen2_moe_from_qwen2_keeps_biases_and_neutralises_the_shared_expert() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("qwen2"), dense_config("qwen2", true), DType::BF16, 2);
    let out = tmp.path().join("moe");
    let report = run(&src, &out, &opts(4, 2));
    assert_eq!(report.plan.format, MoeFormat::Qwen2Moe, "QKV-bias sources default to qwen2_moe");

    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    for l in 0..LAYERS {
        for part in [MlpPart::Gate, MlpPart::Up, MlpPart::Down] {
            let want = dense.bytes(&dense.name_of(mlp(l, MlpSite::Dense, part))).unwrap();
            for e in 0..4 {
                let name = moe.name_of(mlp(l, MlpSite::Expert(e), part));
                assert!(name.starts_with(&format!("model.layers.{l}.mlp.experts.{e}.")), "{name}");
                assert_eq!(moe.bytes(&name).unwrap(), want, "{name}");
            }
            let shared = f32s(&moe, mlp(l, MlpSite::Shared, part));
            assert_eq!(shared.len(), HIDDEN, "the neutral shared expert has one neuron");
            assert!(shared.iter().all(|&v| v == 0.0));
        }
        assert!(f32s(&moe, Param::Layer(l, LayerParam::SharedExpertGate)).iter().all(|&v| v == 0.0));
        assert!(f32s(&moe, Param::Layer(l, LayerParam::QBias)).iter().any(|&v| v != 0.0));
        assert_eq!(moe.info(&moe.name_of(Param::Layer(l, LayerParam::Router))).unwrap().dtype, DType::BF16);
    }
    assert_non_mlp_copied(&dense, &moe);
    assert!(moe_vs_dense(&dense, &moe, 20) < 1e-12);
    let m = moe.config.moe.as_ref().unwrap();
    assert!(m.norm_topk_prob);
    assert_eq!((m.num_experts, m.expert_intermediate_size, m.shared_expert_intermediate_size), (4, FFN, 1));
    assert_eq!((m.decoder_sparse_step, m.mlp_only_layers.len()), (1, 0));
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"], json!(["Qwen2MoeForCausalLM"]));
    assert_eq!(cfg["intermediate_size"], FFN);
    assert_eq!(cfg["moe_intermediate_size"], FFN);
    assert_eq!(cfg["norm_topk_prob"], true);
    assert_eq!(cfg["mlp_only_layers"], json!([]));
    assert_eq!(cfg["rope_scaling"], json!({"rope_type": "linear", "factor": 2.0}));
    assert_eq!(manifest(&out)["shared_expert"]["kind"], "neutral");
}

#[test]
fn llama_to_qwen2_moe_gets_zero_qkv_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("llama"), dense_config("llama", true), DType::F32, 3);
    let out = tmp.path().join("moe");
    run(&src, &out, &ScaleOutOptions { format: Some(MoeFormat::Qwen2Moe), ..opts(2, 1) });
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert!(moe.config.qkv_bias);
    for bias in [LayerParam::QBias, LayerParam::KBias, LayerParam::VBias] {
        assert!(f32s(&moe, Param::Layer(1, bias)).iter().all(|&v| v == 0.0));
    }
    assert!(moe_vs_dense(&dense, &moe, 20) < 1e-12);
}

#[test]
fn granular_experts_are_scaled_shards_with_grouped_routers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("llama"), dense_config("llama", false), DType::F32, 4);
    let out = tmp.path().join("moe");
    let g = 3;
    let report = run(&src, &out, &ScaleOutOptions { granularity: g, ..opts(6, 3) });
    assert!(report.plan.exactness.exact, "{:?}", report.plan.exactness);
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    let ie = FFN / g;
    assert_eq!(moe.config.moe.as_ref().unwrap().expert_intermediate_size, ie);
    for l in 0..LAYERS {
        let router = f32s(&moe, Param::Layer(l, LayerParam::Router));
        let rows: Vec<&[f32]> = router.chunks_exact(HIDDEN).collect();
        for q in 0..2 {
            assert!(rows[q * g..(q + 1) * g].windows(2).all(|w| w[0] == w[1]), "group {q} rows differ");
        }
        assert_ne!(rows[0], rows[g], "groups have their own router rows");
        for part in [MlpPart::Gate, MlpPart::Up] {
            let want = f32s(&dense, mlp(l, MlpSite::Dense, part));
            for q in 0..2 {
                let cat: Vec<f32> = (0..g).flat_map(|s| f32s(&moe, mlp(l, MlpSite::Expert(q * g + s), part))).collect();
                assert_eq!(cat, want, "group {q}: {part:?} shards concatenated equal the dense rows");
            }
        }
        let down = f32s(&dense, mlp(l, MlpSite::Dense, MlpPart::Down));
        for e in 0..6 {
            let s = e % g;
            let want: Vec<f32> = columns(&down, FFN, s * ie, (s + 1) * ie).iter().map(|v| v * g as f32).collect();
            assert_eq!(f32s(&moe, mlp(l, MlpSite::Expert(e), MlpPart::Down)), want, "expert {e} down = shard x G");
        }
    }
    let err = moe_vs_dense(&dense, &moe, 20);
    assert!(err < 1e-6, "granular MoE differs from dense by {err}");
    assert_eq!(manifest(&out)["router"]["independent_rows"], 2);
}

#[test]
fn live_shared_expert_keeps_the_output_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("qwen2"), dense_config("qwen2", false), DType::F32, 5);
    let (dense, _) = (Checkpoint::open(&src).unwrap(), ());
    // N = G: the shared MLP is the dense MLP itself; routed experts carry half of it.
    let out = tmp.path().join("n2");
    run(&src, &out, &ScaleOutOptions { granularity: 2, shared_experts: 2, ..opts(4, 2) });
    let moe = Checkpoint::open(&out).unwrap();
    for part in [MlpPart::Gate, MlpPart::Up, MlpPart::Down] {
        assert_eq!(f32s(&moe, mlp(0, MlpSite::Shared, part)), f32s(&dense, mlp(0, MlpSite::Dense, part)), "{part:?}");
    }
    let down = f32s(&dense, mlp(0, MlpSite::Dense, MlpPart::Down));
    // down x G x 1/2 = down x 1 for G = 2.
    assert_eq!(f32s(&moe, mlp(0, MlpSite::Expert(1), MlpPart::Down)), columns(&down, FFN, FFN / 2, FFN));
    assert_eq!(moe.config.moe.as_ref().unwrap().shared_expert_intermediate_size, FFN);
    assert!(moe_vs_dense(&dense, &moe, 20) < 1e-6);

    // N = 3 shards with G = 2: shard 0 appears twice, so each copy's down columns are halved.
    let out3 = tmp.path().join("n3");
    let report = run(&src, &out3, &ScaleOutOptions { granularity: 2, shared_experts: 3, ..opts(4, 2) });
    assert!(report.plan.exactness.exact);
    let moe3 = Checkpoint::open(&out3).unwrap();
    let ie = FFN / 2;
    let shared_down = f32s(&moe3, mlp(0, MlpSite::Shared, MlpPart::Down));
    assert_eq!(columns(&shared_down, 3 * ie, 2 * ie, 3 * ie), columns(&down, FFN, 0, ie).iter().map(|v| v * 0.5).collect::<Vec<_>>());
    assert_eq!(columns(&shared_down, 3 * ie, ie, 2 * ie), columns(&down, FFN, ie, FFN));
    assert!(moe_vs_dense(&dense, &moe3, 20) < 1e-6);
    assert_eq!(manifest(&out3)["shared_expert"], json!({"kind": "live", "shards": 3}));
}

#[test]
fn drop_upcycling_replaces_exactly_floor_r_i_neurons_per_expert() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = dense_config("llama", true);
    cfg["hidden_size"] = 64.into();
    cfg["intermediate_size"] = 96.into();
    let src = write_dense(&tmp.path().join("llama"), cfg, DType::BF16, 6);
    let out = tmp.path().join("moe");
    let ratio = 0.3;
    let report = run(&src, &out, &ScaleOutOptions { drop_ratio: ratio, ..opts(4, 2) });
    assert!(!report.plan.exactness.exact);
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    let (h, i) = (64, 96);
    let expected = (ratio * i as f64).floor() as usize;
    for part in [MlpPart::Gate, MlpPart::Up, MlpPart::Down] {
        let d = f32s(&dense, mlp(1, MlpSite::Dense, part));
        let n = d.len() as f64;
        let mu = d.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sigma = (d.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / n).sqrt();
        let mut replaced = Vec::new();
        for e in 0..4 {
            let w = f32s(&moe, mlp(1, MlpSite::Expert(e), part));
            // Neuron m: row m of gate/up, column m of down.
            let neuron = |m: &[f32], k: usize| -> Vec<f32> {
                if part == MlpPart::Down { columns(m, i, k, k + 1) } else { m[k * h..(k + 1) * h].to_vec() }
            };
            let changed: Vec<usize> = (0..i).filter(|&k| neuron(&w, k) != neuron(&d, k)).collect();
            assert_eq!(changed.len(), expected, "expert {e} {part:?}");
            assert_eq!(changed, drop_neurons(11, 1, e, i, ratio), "the recorded neuron set");
            changed.iter().for_each(|&k| replaced.extend(neuron(&w, k)));
        }
        let m = replaced.len() as f64;
        let r_mu = replaced.iter().map(|&v| v as f64).sum::<f64>() / m;
        let r_sigma = (replaced.iter().map(|&v| (v as f64 - r_mu).powi(2)).sum::<f64>() / m).sqrt();
        // 4 x 28 x 64 = 7168 samples: std error of the std ~0.8%, of the mean ~0.012 sigma.
        assert!((r_mu - mu).abs() < 0.05 * sigma, "{part:?}: mean {r_mu} vs {mu}");
        assert!((r_sigma / sigma - 1.0).abs() < 0.05, "{part:?}: std {r_sigma} vs {sigma}");
    }
    assert_eq!(manifest(&out)["drop_upcycling_ratio"], ratio);
}

#[test]
fn noise_gives_a_bounded_per_expert_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("mistral"), dense_config("mistral", false), DType::F32, 7);
    let out = tmp.path().join("moe");
    let std = 0.01;
    let report = run(&src, &out, &ScaleOutOptions { noise: std, ..opts(4, 2) });
    assert!(!report.plan.exactness.exact);
    assert!(report.plan.exactness.reasons[0].contains("--noise"));
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    let d = f32s(&dense, mlp(0, MlpSite::Dense, MlpPart::Up));
    let mut diffs = Vec::new();
    let mut experts = Vec::new();
    for e in 0..4 {
        let w = f32s(&moe, mlp(0, MlpSite::Expert(e), MlpPart::Up));
        diffs.extend(w.iter().zip(&d).map(|(a, b)| (a - b) as f64));
        experts.push(w);
    }
    assert!(experts.windows(2).all(|w| w[0] != w[1]), "each expert gets its own noise");
    let max = diffs.iter().fold(0f64, |m, v| m.max(v.abs()));
    let rms = (diffs.iter().map(|v| v * v).sum::<f64>() / diffs.len() as f64).sqrt();
    assert!(max < 6.0 * std, "max |noise| {max}");
    assert!((rms / std - 1.0).abs() < 0.1, "noise std {rms}");
    let err = moe_vs_dense(&dense, &moe, 10);
    assert!(err > 1e-6 && err < 0.5, "noisy MoE output difference {err} should be small but nonzero");
}

#[test]
fn router_std_matches_the_request_on_a_large_router() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = dense_config("llama", true);
    cfg["hidden_size"] = 256.into();
    cfg["intermediate_size"] = 8.into();
    let src = write_dense(&tmp.path().join("llama"), cfg, DType::F32, 8);
    let out = tmp.path().join("moe");
    run(&src, &out, &ScaleOutOptions { router_std: 0.1414, ..opts(48, 2) });
    let moe = Checkpoint::open(&out).unwrap();
    let v: Vec<f64> = (0..LAYERS)
        .flat_map(|l| f32s(&moe, Param::Layer(l, LayerParam::Router)))
        .map(|x| x as f64)
        .collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(mean.abs() < 0.01 * 0.1414, "{mean}");
    assert!((std / 0.1414 - 1.0).abs() < 0.02, "{std}");

    let uni = tmp.path().join("uniform");
    run(&src, &uni, &ScaleOutOptions { router_init: RouterInit::Uniform, ..opts(4, 2) });
    let r = f32s(&Checkpoint::open(&uni).unwrap(), Param::Layer(0, LayerParam::Router));
    assert!(r.iter().all(|x| x.abs() <= 1.0 / 16.0) && r.iter().any(|x| x.abs() > 0.04));
}

#[test]
fn output_is_deterministic_across_thread_counts_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("llama"), dense_config("llama", false), DType::F32, 9);
    let base = ScaleOutOptions { noise: 0.01, drop_ratio: 0.25, granularity: 2, ..opts(4, 2) };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run(&src, &a, &ScaleOutOptions { threads: Some(1), ..base.clone() });
    let sharded = WriterOptions { max_shard_bytes: 4000, force: false };
    upcycle(&src, &b, &ScaleOutOptions { threads: Some(3), ..base }, &sharded, &|_, _| {}).unwrap();
    assert!(b.join("model.safetensors.index.json").is_file());
    let (ca, cb) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    assert_eq!(ca.tensors().len(), cb.tensors().len());
    for t in ca.tensors() {
        assert_eq!(ca.bytes(&t.name).unwrap(), cb.bytes(&t.name).unwrap(), "{}", t.name);
    }
}

#[test]
fn dtype_conversion_and_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("llama"), dense_config("llama", false), DType::F32, 10);
    let out = tmp.path().join("moe");
    let last = std::sync::Mutex::new((0u64, 0u64));
    let report = upcycle(
        &src,
        &out,
        &ScaleOutOptions { dtype: Some(DType::BF16), ..opts(2, 1) },
        &WriterOptions::default(),
        &|done, total| *last.lock().unwrap() = (done, total),
    )
    .unwrap();
    let (done, total) = *last.lock().unwrap();
    assert_eq!((done, total), (report.bytes_written, report.bytes_written));
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert_eq!(moe.config.dtype, Some(DType::BF16));
    assert!(moe.tensors().iter().all(|t| t.dtype == DType::BF16));
    let want: Vec<f32> = f32s(&dense, mlp(1, MlpSite::Dense, MlpPart::Gate))
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f32s(&moe, mlp(1, MlpSite::Expert(1), MlpPart::Gate)), want);
}

#[test]
fn qwen2_moe_without_renormalisation_warns_and_is_not_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("qwen2"), dense_config("qwen2", true), DType::F32, 12);
    let out = tmp.path().join("moe");
    let report = run(&src, &out, &ScaleOutOptions { renormalize: false, ..opts(4, 2) });
    assert!(!report.plan.exactness.exact);
    assert!(report.plan.warnings.iter().any(|w| w.contains("NOT function-preserving")), "{:?}", report.plan.warnings);
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert!(!moe.config.moe.as_ref().unwrap().norm_topk_prob);
    // Output = (top-k probability mass) x MLP: visibly smaller than the dense output.
    assert!(moe_vs_dense(&dense, &moe, 10) > 0.1);
}

/// Asserts the error message and that nothing was left next to the output.
fn assert_refused(src: &Path, out: &Path, o: &ScaleOutOptions, needles: &[&str]) {
    let before: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let err = upcycle(src, out, o, &WriterOptions::default(), &|_, _| {}).unwrap_err().to_string();
    for n in needles {
        assert!(err.contains(n), "error `{err}` should mention `{n}`");
    }
    let after: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "a refused scale-out must leave nothing behind");
}

#[test]
fn bad_input_is_refused_with_clear_messages_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = write_dense(&tmp.path().join("llama"), dense_config("llama", false), DType::F32, 13);
    let qwen2 = write_dense(&tmp.path().join("qwen2"), dense_config("qwen2", false), DType::F32, 14);
    let out = tmp.path().join("moe");
    assert_refused(&llama, &out, &opts(2, 3), &["--top-k", "3", "--experts (2)"]);
    assert_refused(&llama, &out, &ScaleOutOptions { granularity: 5, ..opts(5, 5) }, &["--granularity", "FFN size 24"]);
    assert_refused(&llama, &out, &ScaleOutOptions { granularity: 3, ..opts(4, 3) }, &["--granularity", "--experts 4"]);
    assert_refused(
        &qwen2,
        &out,
        &ScaleOutOptions { format: Some(MoeFormat::Mixtral), ..opts(4, 2) },
        &["QKV bias", "--format qwen2_moe"],
    );
    assert_refused(&llama, &out, &ScaleOutOptions { shared_experts: 1, ..opts(4, 2) }, &["--shared-experts", "qwen2_moe"]);
    assert_refused(&llama, &out, &ScaleOutOptions { renormalize: false, ..opts(4, 2) }, &["--no-renormalize"]);
    assert_refused(
        &qwen2,
        &out,
        &ScaleOutOptions { granularity: 2, shared_experts: 1, ..opts(4, 2) },
        &["--shared-experts", "at least"],
    );
    assert_refused(&llama, &out, &ScaleOutOptions { drop_ratio: 1.5, ..opts(4, 2) }, &["--drop-upcycling"]);

    // An MoE source.
    let moe = tmp.path().join("already_moe");
    run(&llama, &moe, &opts(2, 1));
    assert_refused(&moe, &out, &opts(2, 1), &["already a Mixture of Experts", "mixtral"]);

    // An existing output is kept untouched.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    assert_refused(&llama, &out, &opts(2, 1), &["exists"]);
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    // --force replaces only what escale wrote (issue 13): mark the folder as an escale output.
    escale_util::output::mark_output(&out).unwrap();
    let forced = WriterOptions { force: true, ..WriterOptions::default() };
    upcycle(&llama, &out, &opts(2, 1), &forced, &|_, _| {}).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join("config.json").is_file());
    assert_refused(&llama, &llama, &opts(2, 1), &["is the source folder"]);
}

#[test]
fn stories260k_upcycles_into_exact_copies() {
    let Some(src) = shared_model("stories260K") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let report = run(&src, &out, &opts(8, 2));
    assert!(report.plan.exactness.exact);
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert!(moe.config.tie_word_embeddings && moe.info("lm_head.weight").is_none());
    for l in 0..dense.config.num_hidden_layers {
        for part in [MlpPart::Gate, MlpPart::Up, MlpPart::Down] {
            let want = dense.bytes(&dense.name_of(mlp(l, MlpSite::Dense, part))).unwrap();
            for e in 0..8 {
                assert_eq!(moe.bytes(&moe.name_of(mlp(l, MlpSite::Expert(e), part))).unwrap(), want);
            }
        }
    }
    assert_non_mlp_copied(&dense, &moe);
    assert!(out.join("tokenizer.json").is_file());
}

/// `../shared/testdata/models/<name>` relative to the workspace root, when present.
fn shared_model(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/models").join(name);
    if dir.join("config.json").is_file() {
        Some(dir)
    } else {
        println!("skipping: {} not found (shared test data absent)", dir.display());
        None
    }
}

fn qwen3_config(head_dim: usize, attention_bias: bool) -> Value {
    let mut c = dense_config("qwen3", false);
    c["head_dim"] = json!(head_dim);
    c["attention_bias"] = json!(attention_bias);
    c
}

#[test]
fn qwen3_upcycles_to_qwen3_moe_with_its_q_k_norms_biases_and_head_dim() {
    let tmp = tempfile::tempdir().unwrap();
    // head_dim 6 with hidden 16 and 4 heads: not hidden/heads, and not qwen3_moe's implied default.
    let src = write_dense(&tmp.path().join("qwen3"), qwen3_config(6, true), DType::F32, 31);
    let out = tmp.path().join("moe");
    let report = run(&src, &out, &opts(4, 2));
    assert_eq!(report.plan.format, MoeFormat::Qwen3Moe, "a qwen3 source defaults to qwen3_moe");
    assert!(report.plan.exactness.exact, "{:?}", report.plan.exactness);
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert_eq!((moe.config.model_type, moe.config.head_dim), (ModelType::Qwen3Moe, 6));
    assert!(moe.config.qkv_bias && moe.config.o_bias);
    assert!(moe.tensors().iter().all(|t| !t.name.contains("shared_expert")), "qwen3_moe has no shared expert");
    assert!(moe.info("model.layers.1.self_attn.k_norm.weight").is_some());
    assert_non_mlp_copied(&dense, &moe);
    let err = moe_vs_dense(&dense, &moe, 20);
    assert!(err < 1e-12, "MoE MLP differs from the dense MLP by {err}");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"], json!(["Qwen3MoeForCausalLM"]));
    assert_eq!((cfg["num_experts"].clone(), cfg["norm_topk_prob"].clone()), (json!(4), json!(true)));
    assert_eq!((cfg["head_dim"].clone(), cfg["attention_bias"].clone()), (json!(6), json!(true)));
    assert!(cfg.get("shared_expert_intermediate_size").is_none(), "{cfg}");
    assert_eq!(cfg["escale_test_unknown_field"], json!({"keep": [1, 2]}));
}

#[test]
fn layer_pattern_keeps_dense_layers_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_dense(&tmp.path().join("qwen3"), qwen3_config(4, false), DType::BF16, 32);
    let dense = Checkpoint::open(&src).unwrap();
    // Step 2 over 2 layers: layer 1 sparse, layer 0 dense; the same through mlp_only_layers.
    for (i, o) in [ScaleOutOptions { sparse_step: 2, ..opts(4, 2) }, ScaleOutOptions { dense_layers: vec![0], ..opts(4, 2) }]
        .into_iter()
        .enumerate()
    {
        let out = tmp.path().join(format!("moe{i}"));
        let report = run(&src, &out, &o);
        assert!(report.plan.exactness.exact);
        let moe = Checkpoint::open(&out).unwrap();
        assert_eq!((moe.config.is_moe_layer(0), moe.config.is_moe_layer(1)), (false, true));
        let m = moe.config.moe.as_ref().unwrap();
        assert_eq!((m.decoder_sparse_step, m.mlp_only_layers.clone()), (o.sparse_step, o.dense_layers.clone()));
        assert_eq!(moe.config.intermediate_size, FFN, "dense layers keep the dense FFN size");
        for part in [MlpPart::Gate, MlpPart::Up, MlpPart::Down] {
            let name = dense.name_of(mlp(0, MlpSite::Dense, part));
            assert_eq!(moe.bytes(&name).unwrap(), dense.bytes(&name).unwrap(), "{name}");
            assert!(moe.info(&moe.name_of(mlp(0, MlpSite::Expert(0), part))).is_none());
            let expert = moe.name_of(mlp(1, MlpSite::Expert(3), part));
            assert_eq!(moe.bytes(&expert).unwrap(), dense.bytes(&dense.name_of(mlp(1, MlpSite::Dense, part))).unwrap());
        }
        assert!(moe.info("model.layers.0.mlp.gate.weight").is_none() && moe.info("model.layers.1.mlp.gate.weight").is_some());
    }
}

#[test]
fn q_k_norm_and_layer_pattern_mismatches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let qwen3 = write_dense(&tmp.path().join("qwen3"), qwen3_config(4, false), DType::F32, 33);
    let llama = write_dense(&tmp.path().join("llama"), dense_config("llama", false), DType::F32, 34);
    let out = tmp.path().join("moe");
    for f in [MoeFormat::Mixtral, MoeFormat::Qwen2Moe] {
        assert_refused(&qwen3, &out, &ScaleOutOptions { format: Some(f), ..opts(4, 2) }, &["q/k RMSNorm", "--format qwen3_moe"]);
    }
    assert_refused(&llama, &out, &ScaleOutOptions { format: Some(MoeFormat::Qwen3Moe), ..opts(4, 2) }, &["q_norm", "llama"]);
    assert_refused(&qwen3, &out, &ScaleOutOptions { shared_experts: 2, ..opts(4, 2) }, &["--shared-experts", "no shared expert"]);
    assert_refused(&llama, &out, &ScaleOutOptions { sparse_step: 2, ..opts(4, 2) }, &["--sparse-step", "Mixtral"]);
    assert_refused(&qwen3, &out, &ScaleOutOptions { sparse_step: 0, ..opts(4, 2) }, &["--sparse-step", "at least 1"]);
    assert_refused(&qwen3, &out, &ScaleOutOptions { dense_layers: vec![2], ..opts(4, 2) }, &["--dense-layers", "layer 2"]);
    assert_refused(&qwen3, &out, &ScaleOutOptions { dense_layers: vec![0, 1], ..opts(4, 2) }, &["no layer", "sparse"]);
}
