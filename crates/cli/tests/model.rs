//! `escale verify`, `eval` and `generate` end to end on the real stories260K model, on models
//! derived from it (a perturbed copy, a Mixtral upcycled from it) and on bad input.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use escale_formats::naming::{parse_hf_name, LayerParam, MlpSite, Param};
use escale_formats::{hf_name, ModelConfig, ModelType, MoeConfig, WriterOptions};
use escale_model::Model;
use serde_json::Value;

mod common;
use common::run_escale as escale;

fn ok_json(args: &[&str]) -> Value {
    let out = escale(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn err_text(args: &[&str]) -> String {
    let out = escale(args);
    assert!(!out.status.success(), "{args:?} should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

use escale_testkit::shared_dir as shared;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stories(shared: &Path) -> PathBuf {
    shared.join("testdata/models/stories260K")
}

fn shakespeare(shared: &Path) -> PathBuf {
    shared.join("testdata/corpus/en/tinyshakespeare.txt")
}

/// stories260K with one weight nudged by `delta`, tokenizer files copied.
fn perturbed(src: &Path, out: &Path, delta: f32) {
    let m = Model::load_dir(src, &Device::Cpu, DType::F32).unwrap();
    let v = m.var("model.layers.2.mlp.down_proj.weight").unwrap();
    v.set(&(v.as_tensor() + delta as f64).unwrap()).unwrap();
    m.save(out, escale_formats::DType::F32, &WriterOptions::default(), Some(src), |_| Ok(())).unwrap();
}

/// Naive upcycling of stories260K into a 4-expert top-2 Mixtral: every expert is a copy of the
/// dense MLP and routing weights are renormalised, so the function is unchanged (up to rounding).
fn upcycled(src: &Path, out: &Path) {
    let dense = Model::load_dir(src, &Device::Cpu, DType::F32).unwrap();
    let mut cfg: ModelConfig = dense.config.clone();
    cfg.model_type = ModelType::Mixtral;
    cfg.moe = Some(MoeConfig {
        num_experts: 4,
        num_experts_per_tok: 2,
        expert_intermediate_size: cfg.intermediate_size,
        shared_expert_intermediate_size: 0,
        norm_topk_prob: true,
        router_aux_loss_coef: 0.001,
        decoder_sparse_step: 1,
        mlp_only_layers: vec![],
    });
    let moe = Model::init_random(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
    for (name, var) in moe.named_parameters() {
        let p = parse_hf_name(ModelType::Mixtral, &name).unwrap();
        let from = match p {
            Param::Layer(l, LayerParam::Mlp(MlpSite::Expert(_), part)) => Param::Layer(l, LayerParam::Mlp(MlpSite::Dense, part)),
            Param::Layer(_, LayerParam::Router) => continue,
            other => other,
        };
        let t: &Tensor = dense.var(&hf_name(ModelType::Llama, from)).unwrap().as_tensor();
        var.set(t).unwrap();
    }
    moe.save(out, escale_formats::DType::F32, &WriterOptions::default(), Some(src), |_| Ok(())).unwrap();
}

#[test]
fn verify_self_is_exact_and_perturbed_copy_fails_under_expect_exact() {
    let Some(sh) = shared() else { return };
    let m = stories(&sh);
    let v = ok_json(&["verify", s(&m), s(&m), "--random", "300", "--seed", "1", "--expect", "exact", "--json"]);
    assert_eq!(v["logits"]["exact"], true);
    assert_eq!(v["logits"]["max_abs_diff"], 0.0);
    assert_eq!(v["logits"]["positions"], 300);
    assert_eq!(v["logits"]["top1_agreement"], 1.0);
    assert_eq!(v["reference_loss"], v["candidate_loss"]);

    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("perturbed");
    perturbed(&m, &p, 1e-2);
    let text = shakespeare(&sh);
    let args = ["verify", s(&m), s(&p), "--text", s(&text), "--max-tokens", "200", "--json"];
    let v = ok_json(&args);
    let d = v["logits"]["max_abs_diff"].as_f64().unwrap();
    assert!(d > 1e-4 && v["logits"]["exact"] == false && v["pass"] == false, "{v}");
    assert!(v["logits"]["mean_kl"].as_f64().unwrap() > 0.0);
    assert_ne!(v["reference_loss"], v["candidate_loss"]);
    assert_eq!(v["tokens"], 199);

    let mut strict = args.to_vec();
    strict.extend(["--expect", "exact", "--tol", "1e-6"]);
    let e = err_text(&strict);
    assert!(e.contains("differs") && e.contains("max |delta logit|"), "{e}");
    // A tolerance above the difference passes.
    let loose = format!("{}", d * 2.0);
    let mut lenient = args.to_vec();
    lenient.extend(["--expect", "exact", "--tol", &loose]);
    assert_eq!(ok_json(&lenient)["pass"], true);
    // Human-readable table.
    let out = escale(&["verify", s(&m), s(&m), "--random", "20"]);
    let t = String::from_utf8(out.stdout).unwrap();
    assert!(t.contains("max |delta logit|") && t.contains("bitwise identical    yes"), "{t}");
}

#[test]
fn verify_dense_reference_against_upcycled_moe_candidate() {
    let Some(sh) = shared() else { return };
    let m = stories(&sh);
    let tmp = tempfile::tempdir().unwrap();
    let moe = tmp.path().join("moe");
    upcycled(&m, &moe);
    let v = ok_json(&["verify", s(&m), s(&moe), "--random", "600", "--expect", "exact", "--tol", "1e-4", "--json"]);
    let d = v["logits"]["max_abs_diff"].as_f64().unwrap();
    eprintln!("dense vs upcycled mixtral: max |delta| {d:e}");
    assert!(d < 1e-4 && v["logits"]["top1_agreement"] == 1.0, "{v}");
    assert_eq!(v["tokens"], 599, "600 tokens in windows of 512 overlapping by one: 599 predictions");
    // Now break exactness: scale one expert's down projection.
    let broken = tmp.path().join("broken");
    let mm = Model::load_dir(&moe, &Device::Cpu, DType::F32).unwrap();
    let var = mm.var("model.layers.0.block_sparse_moe.experts.1.w2.weight").unwrap();
    var.set(&(var.as_tensor() * 3.0).unwrap()).unwrap();
    mm.save(&broken, escale_formats::DType::F32, &WriterOptions::default(), Some(&m), |_| Ok(())).unwrap();
    let e = err_text(&["verify", s(&m), s(&broken), "--random", "100", "--expect", "exact", "--tol", "1e-4"]);
    assert!(e.contains("differs"), "{e}");
}

#[test]
fn eval_matches_transformers_window_loss_and_reports_expert_load() {
    let Some(sh) = shared() else { return };
    let m = stories(&sh);
    let text = shakespeare(&sh);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("reference/reference.json")).unwrap()).unwrap();
    let want = r["corpus_loss"]["corpus/en/tinyshakespeare.txt"]["per_window"][0].as_f64().unwrap();
    // The first 512 tokens are BOS + 511 text tokens: transformers' first reference window.
    let v = ok_json(&["eval", s(&m), "--text", s(&text), "--max-tokens", "512", "--json"]);
    assert_eq!(v["tokens"], 511);
    assert_eq!(v["windows"], 1);
    let loss = v["loss"].as_f64().unwrap();
    assert!((loss - want).abs() < 2e-5, "{loss} vs transformers {want}");
    assert!((v["perplexity"].as_f64().unwrap() - want.exp()).abs() < 1e-3);
    assert_eq!(v["expert_load"].as_array().unwrap().len(), 0);

    // Streaming: 2000 tokens in windows of 100 -> ceil(1999 / 99) windows, every token predicted once.
    let v = ok_json(&["eval", s(&m), "--text", s(&text), "--max-tokens", "2000", "--window", "100", "--batch", "3", "--json"]);
    assert_eq!(v["tokens"], 1999);
    assert_eq!(v["windows"], 21);

    let tmp = tempfile::tempdir().unwrap();
    let moe = tmp.path().join("moe");
    upcycled(&m, &moe);
    let dense = ok_json(&["eval", s(&m), "--text", s(&text), "--max-tokens", "700", "--json"]);
    let v = ok_json(&["eval", s(&moe), "--text", s(&text), "--max-tokens", "700", "--json"]);
    assert!((v["loss"].as_f64().unwrap() - dense["loss"].as_f64().unwrap()).abs() < 1e-4);
    let load = v["expert_load"].as_array().unwrap();
    assert_eq!(load.len(), 5);
    let positions = 700 + 1; // windows [0,512) and [511,700): 512 + 189 positions routed
    for l in load {
        let counts: Vec<u64> = l["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        assert_eq!(counts.len(), 4);
        assert_eq!(counts.iter().sum::<u64>(), 2 * positions, "top-2: every position counted twice");
        let f: f64 = l["fractions"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((f - 1.0).abs() < 1e-9);
    }
    let out = escale(&["eval", s(&moe), "--text", s(&text), "--max-tokens", "300"]);
    let t = String::from_utf8(out.stdout).unwrap();
    assert!(t.contains("perplexity") && t.contains("layer   4 expert load"), "{t}");
}

#[test]
fn generate_greedy_reproduces_reference_and_sampling_follows_seed() {
    let Some(sh) = shared() else { return };
    let m = stories(&sh);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("reference/reference.json")).unwrap()).unwrap();
    let want: Vec<u64> = r["greedy_from_bos"]["output_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let v = ok_json(&["generate", s(&m), "--prompt", "", "--max-new-tokens", "64", "--json"]);
    let new: Vec<u64> = v["new_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(v["prompt_ids"], serde_json::json!([1]));
    assert_eq!(new, want[1..].to_vec());
    assert_eq!(v["text"], r["greedy_from_bos"]["text"]);
    // Plain text output continues the prompt.
    let out = escale(&["generate", s(&m), "--prompt", "Once upon a time", "--max-new-tokens", "8"]);
    let t = String::from_utf8(out.stdout).unwrap();
    assert!(t.starts_with("Once upon a time, there was"), "{t}");

    let sample = |seed: &str| {
        ok_json(&["generate", s(&m), "--prompt", "Lily", "--temperature", "1.0", "--top-p", "0.95", "--seed", seed,
            "--max-new-tokens", "40", "--ignore-eos", "--json"])["new_ids"]
            .clone()
    };
    let a = sample("3");
    assert_eq!(a, sample("3"), "same seed, same tokens");
    assert_eq!(a.as_array().unwrap().len(), 40);
    assert!(a != sample("4") || a != sample("5"), "different seeds should give different samples");
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let Some(sh) = shared() else { return };
    let m = stories(&sh);
    let tmp = tempfile::tempdir().unwrap();
    // A model with a different vocab (and no tokenizer files).
    let cfg = ModelConfig::from_json(
        serde_json::json!({"model_type": "llama", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32}),
        Path::new("config.json"),
    )
    .unwrap();
    let small = tmp.path().join("small");
    Model::init_random(&cfg, 1, &Device::Cpu, DType::F32)
        .unwrap()
        .save(&small, escale_formats::DType::F32, &WriterOptions::default(), None, |_| Ok(()))
        .unwrap();
    let e = err_text(&["verify", s(&m), s(&small), "--random", "10"]);
    assert!(e.contains("vocab sizes differ") && e.contains("512") && e.contains("40"), "{e}");

    let text = shakespeare(&sh);
    let e = err_text(&["eval", s(&small), "--text", s(&text)]);
    assert!(e.contains("tokenizer.json") && e.contains("small"), "{e}");
    let e = err_text(&["generate", s(&small), "--prompt", "hi"]);
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = err_text(&["verify", s(&small), s(&small), "--text", s(&text)]);
    assert!(e.contains("tokenizer.json"), "{e}");

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = err_text(&["eval", s(&m), "--text", s(&empty)]);
    assert!(e.contains("shorter than 2 tokens"), "{e}");
    let e = err_text(&["verify", s(&m), s(&m), "--text", s(&empty)]);
    assert!(e.contains("at least 2"), "{e}");
    let e = err_text(&["verify", s(&m), s(&m)]);
    assert!(e.contains("--text FILE or --random N"), "{e}");

    // Longer than the context: generate refuses; eval/verify split into windows (documented).
    let long = "Once upon a time there was a dog. ".repeat(80);
    let e = err_text(&["generate", s(&m), "--prompt", &long]);
    assert!(e.contains("max_position_embeddings"), "{e}");
    let v = ok_json(&["verify", s(&m), s(&m), "--random", "1100", "--window", "100000", "--json"]);
    assert_eq!(v["tokens"], 1099);
    let e = err_text(&["verify", s(&m), s(&m), "--random", "10", "--window", "1"]);
    assert!(e.contains("window of 1 token"), "{e}");
}
