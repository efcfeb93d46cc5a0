//! Issue 13 items 4, 5 and 7: absurd sizes are instant errors naming the flag, non-finite weights
//! and undeclared tensors are refused (naming the tensor) unless tolerated, bad config values and
//! flags are refused. Skipped when shared/ is absent.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{copy_model, run_escale as escale, stories};

fn text(o: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A copy of stories260K's config and weights in a scratch folder, to be edited.
/// Rewrites `model.safetensors` of `dir` through `edit` (name -> f32 values, shape).
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<f32>, Vec<usize>)>)) {
    let ckpt = escale_formats::Checkpoint::open_weights(dir, escale_formats::ModelConfig::from_file(&dir.join("config.json")).unwrap()).unwrap();
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> =
        ckpt.tensors().iter().map(|t| (t.name.clone(), ckpt.read_f32(&t.name).unwrap(), t.shape.clone())).collect();
    drop(ckpt);
    edit(&mut tensors);
    // A single-file safetensors by hand: u64 header length, JSON header, then the f32 data.
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, values, shape) in &tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend(json);
    file.extend(data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
}

fn run_quick(args: &[&str]) -> Output {
    let start = Instant::now();
    let o = escale(args);
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}: {}", start.elapsed(), text(&o));
    o
}

#[test]
fn absurd_sizes_are_instant_errors_naming_the_flag() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (s, out) = (src.to_str().unwrap(), tmp.path().join("o"));
    let out = out.to_str().unwrap();
    for (flag, value) in [("--layers", "99999999999"), ("--hidden", "18446744073709551615"), ("--intermediate", "18446744073709551615")] {
        let o = run_quick(&["scale-up", s, out, flag, value, "--dry-run"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains(flag) && t.contains("not plausible") && !t.contains("panicked"), "{t}");
    }
    // Within every per-size bound, but the product is not.
    let o = run_quick(&["scale-up", s, out, "--hidden", "4000000", "--intermediate", "4000000", "--layers", "4000", "--dry-run"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("parameters is not plausible"), "{}", text(&o));
    let o = run_quick(&["scale-out", s, out, "--experts", "18446744073709551615", "--top-k", "2"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("--experts") && t.contains("not plausible"), "{t}");
    assert!(!Path::new(out).exists(), "nothing written");
}

#[test]
fn non_finite_weights_are_reported_and_refused_unless_allowed() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("nan");
    copy_model(&src, &m);
    edit_weights(&m, |ts| {
        let norm = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        norm.1[3] = f32::NAN;
        norm.1[4] = f32::INFINITY;
    });
    let ms = m.to_str().unwrap();
    let o = escale(&["inspect", ms]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("NON-FINITE: model.norm.weight  1 NaN, 1 Inf"), "{}", text(&o));
    let o = escale(&["inspect", ms, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["non_finite"][0]["name"], "model.norm.weight");

    let corpus = tmp.path().join("t.txt");
    std::fs::write(&corpus, "Once upon a time there was a little girl.\n").unwrap();
    let out = tmp.path().join("out");
    let refused = [
        escale(&["eval", ms, "--text", corpus.to_str().unwrap()]),
        escale(&["verify", src.to_str().unwrap(), ms, "--random", "64"]),
        escale(&["scale-out", ms, out.to_str().unwrap(), "--experts", "4", "--quiet"]),
        escale(&["scale-up", ms, out.to_str().unwrap(), "--layers", "6", "--quiet"]),
    ];
    for o in &refused {
        let t = text(o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("model.norm.weight (1 NaN, 1 Inf)") && t.contains("--allow-nan"), "{t}");
    }
    assert!(!out.exists(), "a refused growth writes nothing");
    let o = escale(&["eval", ms, "--text", corpus.to_str().unwrap(), "--allow-nan"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning") && text(&o).contains("model.norm.weight"), "{}", text(&o));
}

#[test]
fn unknown_tensors_are_refused_unless_ignored() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("extra");
    copy_model(&src, &m);
    edit_weights(&m, |ts| {
        let hidden = ts.iter().find(|t| t.0 == "model.norm.weight").unwrap().2[0];
        ts.push(("model.layers.0.self_attn.o_proj.bias".into(), vec![0.5; hidden], vec![hidden]));
        let layer0: Vec<_> = ts.iter().filter(|t| t.0.starts_with("model.layers.0.") && !t.0.contains("bias")).cloned().collect();
        ts.extend(layer0.into_iter().map(|(n, v, s)| (n.replace("layers.0.", "layers.5."), v, s)));
    });
    let (ms, out) = (m.to_str().unwrap(), tmp.path().join("out"));
    let o = escale(&["inspect", ms]);
    assert!(text(&o).contains("UNKNOWN") && text(&o).contains("model.layers.0.self_attn.o_proj.bias"), "{}", text(&o));
    for args in [
        vec!["scale-up", ms, out.to_str().unwrap(), "--layers", "6", "--dry-run"],
        vec!["scale-out", ms, out.to_str().unwrap(), "--experts", "4", "--dry-run"],
        vec!["verify", ms, ms, "--random", "16"],
    ] {
        let o = escale(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("model.layers.0.self_attn.o_proj.bias") && t.contains("model.layers.5.") && t.contains("--ignore-unknown"), "{t}");
    }
    let o = escale(&["scale-up", ms, out.to_str().unwrap(), "--layers", "6", "--dry-run", "--ignore-unknown"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("warning"), "{}", text(&o));
    // Model loading (the trainer's path) refuses them too.
    let err = escale_model::Model::load_dir(&m, &candle_core::Device::Cpu, candle_core::DType::F32).err().unwrap().to_string();
    assert!(err.contains("o_proj.bias"), "{err}");

    // Training refuses them with the same flag to name, and with it drops them and trains.
    let data = tmp.path().join("data");
    let docs: Vec<Vec<u32>> = (0..16u32).map(|d| (0..40).map(|i| (d * 7 + i) % 500).collect()).collect();
    escale_data::indexed::write_dataset(&data, escale_data::DType::U16, &docs).unwrap();
    let run = tmp.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", ms, "--data", data.to_str().unwrap(), "--output", run.to_str().unwrap()];
        args.extend(["--steps", "2", "--seq-len", "16", "--micro-batch", "2", "--threads", "1"]);
        args.extend_from_slice(extra);
        escale(&args)
    };
    let o = train(&[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("model.layers.0.self_attn.o_proj.bias") && t.contains("--ignore-unknown"), "{t}");
    assert!(!run.join("checkpoints").exists(), "nothing trained: {t}");
    let o = train(&["--ignore-unknown"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("warning") && t.contains("o_proj.bias"), "the dropped tensors are named: {t}");
    let trained = escale_formats::Checkpoint::open(&run.join("checkpoints/step-00000002")).unwrap();
    assert!(trained.tensors().iter().all(|t| !t.name.contains("o_proj.bias") && !t.name.contains("layers.5.")), "dropped tensors are not saved");
}

#[test]
fn bad_flags_and_config_values_are_refused() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = src.to_str().unwrap();
    let corpus = tmp.path().join("t.txt");
    std::fs::write(&corpus, "Once upon a time.\n").unwrap();
    let o = escale(&["eval", s, "--text", corpus.to_str().unwrap(), "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--batch"), "{}", text(&o));
    for tol in ["inf", "NaN", "-1"] {
        let tol_flag = format!("--tol={tol}");
        let o = escale(&["verify", s, s, "--random", "16", "--expect", "exact", &tol_flag]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--tol") && text(&o).contains("finite"), "{}", text(&o));
    }
    for (field, value) in [("rms_norm_eps", serde_json::json!(-1)), ("max_position_embeddings", serde_json::json!(0))] {
        let m = tmp.path().join(field);
        copy_model(&src, &m);
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();
        cfg[field] = value;
        std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
        let o = escale(&["inspect", m.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(field) && text(&o).contains("config.json"), "{}", text(&o));
    }
}

#[test]
fn llama_hidden_not_divisible_by_heads_is_refused() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    for dry_run in [true, false] {
        let mut args = vec!["scale-up", src.to_str().unwrap(), out.to_str().unwrap(), "--hidden", "100", "--heads", "12"];
        if dry_run {
            args.push("--dry-run");
        }
        let o = escale(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("hidden_size 100 (--hidden) is not a multiple of num_attention_heads 12") && err.contains("transformers"), "{err}");
        assert!(err.contains("e.g. 96 or 108"), "{err}");
        assert!(!out.exists(), "nothing written");
    }
    // A multiple of the head count is accepted.
    let o = escale(&["scale-up", src.to_str().unwrap(), out.to_str().unwrap(), "--hidden", "96", "--heads", "12", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
}
