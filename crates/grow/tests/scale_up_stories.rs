//! The real pretrained model `shared/testdata/models/stories260K` (llama, 8 heads / 4 KV groups,
//! tied): grown with exact presets it keeps transformers' reference logits; grown with AKI-Pro
//! its logits stay finite and the tests print the loss change. Skips when shared/ is absent.

mod scale_up_support;

use std::path::{Path, PathBuf};

use escale_grow::scale_up::{scale_up, DepthMethod, ExecOptions, Method, Preset, ScaleUpOptions, Target, TargetDims};
use scale_up_support::{logit_delta, shared_dir, Model};
use serde_json::Value;

fn stories() -> Option<PathBuf> {
    let dir = shared_dir()?.join("testdata/models/stories260K");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        println!("SKIP: {} not found", dir.display());
        None
    }
}

/// (input ids, logits) of one prompt from the transformers reference file (I64 ids, F32 logits).
fn reference(dir: &Path, key: &str) -> (Vec<u32>, Vec<Vec<f64>>) {
    let bytes = std::fs::read(dir.join("reference/reference_logits.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let span = |name: &str| {
        let o = &header[name]["data_offsets"];
        &data[o[0].as_u64().unwrap() as usize..o[1].as_u64().unwrap() as usize]
    };
    let ids: Vec<u32> = span(&format!("{key}.input_ids")).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let flat: Vec<f64> = span(&format!("{key}.logits")).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
    let vocab = flat.len() / ids.len();
    (ids, flat.chunks(vocab).map(|r| r.to_vec()).collect())
}

/// Mean next-token cross-entropy of `logits` on `ids`.
fn loss(logits: &[Vec<f64>], ids: &[u32]) -> f64 {
    let mut total = 0.0;
    for (row, &next) in logits.iter().zip(&ids[1..]) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - row[next as usize];
    }
    total / (ids.len() - 1) as f64
}

fn target() -> Target {
    Target::Dims(TargetDims { hidden_size: Some(96), intermediate_size: Some(215), num_attention_heads: Some(12), num_hidden_layers: Some(10) })
}

#[test]
fn reference_forward_matches_transformers_on_the_source() {
    let Some(dir) = stories() else { return };
    let (ids, want) = reference(&dir, "lily");
    let (got, _) = Model::load(&dir).forward(&ids);
    let (abs, rel) = logit_delta(&want, &got);
    println!("stories260K, escale test forward vs transformers: max |dlogit| {abs:.3e} (relative {rel:.3e})");
    assert!(rel < 1e-4, "{rel}");
}

#[test]
fn exact_presets_keep_the_reference_logits() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (i, preset) in [Preset::FpiScaled, Preset::ZeroPad].into_iter().enumerate() {
        let o = ScaleUpOptions { method: Method::Fpi, preset, depth: Some(DepthMethod::Identity), ..Default::default() };
        let out = tmp.path().join(format!("grown{i}"));
        let (plan, _) = scale_up(&dir, &out, &target(), &o, &ExecOptions::default(), None).unwrap();
        assert!(plan.exactness.exact);
        for key in ["once", "lily"] {
            let (ids, want) = reference(&dir, key);
            let (got, _) = Model::load(&out).forward(&ids);
            let (abs, rel) = logit_delta(&want, &got);
            println!("stories260K 64->96 / 172->215 / 8->12 heads / 5->10 layers, {preset:?}+identity, `{key}`: max |dlogit| vs reference {abs:.3e} (relative {rel:.3e})");
            assert!(rel < 1e-4, "{preset:?} {key}: {rel}");
        }
    }
}

#[test]
fn aki_pro_gives_finite_logits_and_reports_its_loss() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("akipro");
    let (plan, _) = scale_up(&dir, &out, &target(), &ScaleUpOptions::default(), &ExecOptions::default(), None).unwrap();
    assert!(!plan.exactness.exact);
    let (ids, want) = reference(&dir, "lily");
    let (got, _) = Model::load(&out).forward(&ids);
    assert!(got.iter().flatten().all(|v| v.is_finite()));
    let (l0, l1) = (loss(&want, &ids), loss(&got, &ids));
    println!("stories260K aki-pro (fpi preset): next-token loss on the `lily` prompt {l0:.4} -> {l1:.4}");
    assert!((l1 - l0).abs() > 1e-3, "AKI-Pro is not function preserving: the loss must move");
}
