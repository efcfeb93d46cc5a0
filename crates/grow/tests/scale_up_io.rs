//! The output folder of a Scale-Up (config, manifest, tokenizer, dtype, shards) and the errors on
//! bad input, each of which must leave no output folder behind.

mod scale_up_support;

use std::path::Path;

use escale_formats::{Checkpoint, DType, ModelConfig};
use escale_grow::scale_up::{scale_up, DepthMethod, ExecOptions, Method, Preset, ScaleUpOptions, Target};
use escale_grow::MANIFEST_FILE;
use scale_up_support::{dims, make_tiny, tiny_config, Model, IDS};
use serde_json::Value;

fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "src")
        .collect()
}

#[test]
fn output_folder_has_updated_config_manifest_and_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config("qwen2", false, true), 1, DType::F32);
    let out = tmp.path().join("out");
    let o = ScaleUpOptions { method: Method::Fpi, preset: Preset::ZeroPad, depth: Some(DepthMethod::InterpolateIdentity), ..Default::default() };
    let (plan, report) = scale_up(&src, &out, &dims(20, 30, 6, 5), &o, &ExecOptions::default(), None).unwrap();
    assert_eq!(report.tensors, plan.tensors.len());
    assert!(report.bytes_read > 0 && report.bytes_written > 0);

    let raw: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(raw["hidden_size"], 20);
    assert_eq!(raw["intermediate_size"], 30);
    assert_eq!(raw["num_attention_heads"], 6);
    assert_eq!(raw["num_key_value_heads"], 2);
    assert_eq!(raw["head_dim"], 4);
    assert_eq!(raw["num_hidden_layers"], 5);
    assert!((raw["rms_norm_eps"].as_f64().unwrap() - 1e-5 * 16.0 / 20.0).abs() < 1e-15, "zero-pad scales eps by kd/D");
    assert_eq!(raw["some_unknown_field"], serde_json::json!([1, "x"]), "unknown fields are kept");
    assert_eq!(raw["rope_theta"], 10000.0);
    assert!(out.join("tokenizer.json").is_file(), "tokenizer files are copied");

    let m: Value = serde_json::from_str(&std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(m["operation"], "scale_up");
    assert_eq!(m["method"], "fpi");
    assert_eq!(m["preset"], "zero-pad");
    assert_eq!(m["depth"], "interpolate-identity");
    assert_eq!(m["exact"], true);
    assert_eq!(m["maps"]["hidden_g"].as_array().unwrap().len(), 20);
    assert_eq!(m["maps"]["heads_sigma"], serde_json::json!([0, 1, 0, 2, 3, 2]));
    assert_eq!(m["maps"]["depth"], serde_json::json!([0, 0, 1, 1, 2]));
    assert_eq!(m["maps"]["depth_zeroed_layers"], serde_json::json!([1, 3]));
    assert!(m["source"].as_str().unwrap().ends_with("src"));
    assert_eq!(m["seeds"]["seed"], 0);
}

#[test]
fn manifest_reads_back_as_the_typed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config("llama", true, false), 2, DType::F32);
    let out = tmp.path().join("out");
    let o = ScaleUpOptions { method: Method::Fpi, depth: Some(DepthMethod::Identity), ..Default::default() };
    let (plan, _) = scale_up(&src, &out, &dims(16, 24, 4, 4), &o, &ExecOptions::default(), None).unwrap();
    let escale_grow::GrowthManifest::ScaleUp(m) = escale_grow::GrowthManifest::read(&out).unwrap() else {
        panic!("a scale-up writes a scale-up manifest")
    };
    assert_eq!(m.options, o);
    assert_eq!(m.exactness, plan.exactness);
    assert_eq!(m.maps.depth, plan.depth.map);
    assert_eq!(m.new_layers(), m.maps.depth_zeroed_layers);
    assert!(!m.new_layers().is_empty());
}

#[test]
fn dtype_override_and_sharding() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config("llama", true, false), 2, DType::F32);
    let out = tmp.path().join("out");
    let o = ScaleUpOptions { method: Method::Fpi, dtype: Some(DType::BF16), ..Default::default() };
    let exec = ExecOptions { max_shard_bytes: 4096, ..Default::default() };
    scale_up(&src, &out, &dims(32, 24, 4, 3), &o, &exec, None).unwrap();
    let ck = Checkpoint::open(&out).unwrap();
    assert!(ck.shard_paths().count() > 1, "a 4 KB shard limit splits the output");
    assert!(ck.tensors().iter().all(|t| t.dtype == DType::BF16));
    assert_eq!(ck.config.dtype, Some(DType::BF16));
    // bf16 rounding only: logits stay close (spec §2.8: a few 1e-2 in bf16).
    let (a, _) = Model::load(&src).forward(&IDS);
    let (b, _) = Model::load(&out).forward(&IDS);
    let (abs, rel) = scale_up_support::logit_delta(&a, &b);
    println!("fpi 2x in bf16: max |dlogit| {abs:.3e} (relative {rel:.3e})");
    assert!(rel < 5e-2, "{rel}");
}

#[test]
fn source_dtype_is_kept_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config("mistral", false, false), 3, DType::F16);
    let out = tmp.path().join("out");
    scale_up(&src, &out, &dims(24, 24, 4, 3), &ScaleUpOptions::default(), &ExecOptions::default(), None).unwrap();
    assert!(Checkpoint::open(&out).unwrap().tensors().iter().all(|t| t.dtype == DType::F16));
}

fn expect_error(src_cfg: Value, target: Target, o: ScaleUpOptions, needles: &[&str], corrupt: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, src_cfg, 4, DType::F32);
    corrupt(&src);
    let out = tmp.path().join("out");
    let err = scale_up(&src, &out, &target, &o, &ExecOptions::default(), None).unwrap_err().to_string();
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
    assert!(!out.exists(), "no output on error: {err}");
    assert!(leftovers(tmp.path()).is_empty(), "temporary folders left: {:?}", leftovers(tmp.path()));
}

fn fpi() -> ScaleUpOptions {
    ScaleUpOptions { method: Method::Fpi, ..Default::default() }
}

#[test]
fn bad_targets_leave_nothing_behind() {
    let c = || tiny_config("llama", false, false);
    expect_error(c(), dims(12, 24, 4, 3), fpi(), &["hidden_size 12 is smaller than the source's 16", "config.json"], |_| {});
    expect_error(c(), dims(16, 20, 4, 3), fpi(), &["intermediate_size 20 is smaller"], |_| {});
    expect_error(c(), dims(16, 24, 2, 3), fpi(), &["num_attention_heads 2 is smaller"], |_| {});
    expect_error(c(), dims(16, 24, 4, 2), fpi(), &["num_hidden_layers 2 is smaller"], |_| {});
    expect_error(c(), dims(16, 24, 5, 3), fpi(), &["not divisible by the 2 KV groups"], |_| {});
}

#[test]
fn target_config_changing_kv_heads_or_head_dim_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = tiny_config("llama", false, false);
    t["hidden_size"] = 32.into();
    t["num_key_value_heads"] = 4.into();
    let path = tmp.path().join("target.json");
    let cfg = ModelConfig::from_json(t.clone(), &path).unwrap();
    expect_error(tiny_config("llama", false, false), Target::Config(Box::new(cfg)), fpi(), &["num_key_value_heads 2 -> 4", "target.json"], |_| {});
    t["num_key_value_heads"] = 2.into();
    t["head_dim"] = 8.into();
    let cfg = ModelConfig::from_json(t, &path).unwrap();
    expect_error(tiny_config("llama", false, false), Target::Config(Box::new(cfg)), fpi(), &["head_dim 4 -> 8"], |_| {});
}

#[test]
fn moe_source_is_out_of_scope() {
    let mut c = tiny_config("mixtral", false, false);
    c["num_local_experts"] = 2.into();
    expect_error(c, dims(32, 24, 4, 3), fpi(), &["Mixture of Experts", "Scale-Up grows dense models only"], |_| {});
}

#[test]
fn missing_or_misshaped_source_tensors_are_named() {
    let c = || tiny_config("llama", false, false);
    // Claim a bigger FFN than the tensors have: every MLP tensor disagrees with config.json.
    expect_error(c(), dims(32, 48, 4, 3), fpi(), &["model.layers.0.mlp.gate_proj.weight", "shape"], |src| {
        let p = src.join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["intermediate_size"] = 32.into();
        std::fs::write(&p, v.to_string()).unwrap();
    });
    // A config with one more layer than the weights: its tensors are missing.
    expect_error(c(), dims(32, 24, 4, 4), fpi(), &["model.layers.3.", "missing"], |src| {
        let p = src.join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["num_hidden_layers"] = 4.into();
        std::fs::write(&p, v.to_string()).unwrap();
    });
}

#[test]
fn existing_output_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config("llama", false, false), 5, DType::F32);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let err = scale_up(&src, &out, &dims(32, 24, 4, 3), &fpi(), &ExecOptions::default(), None).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    assert!(out.join("keep.txt").exists());
    // --force replaces only what escale wrote (issue 13): mark the folder as an escale output.
    escale_util::output::mark_output(&out).unwrap();
    let exec = ExecOptions { force: true, ..Default::default() };
    scale_up(&src, &out, &dims(32, 24, 4, 3), &fpi(), &exec, None).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join("config.json").exists());
}
