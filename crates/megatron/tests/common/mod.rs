//! Shared helpers of the megatron-core tests: the bridge (required under CI=true, else skipped
//! with the command to run), bridge forward passes, and byte comparison of HF folders.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::Path;

use escale_formats::Checkpoint;
use escale_megatron::Bridge;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The megatron-core bridge, or `None` (printing why) outside CI; under `CI=true` a missing bridge
/// fails the test: CI must not pass by skipping the comparisons.
pub fn bridge() -> Option<Bridge> {
    match Bridge::get() {
        Ok(b) => Some(b),
        Err(e) if ci() => panic!("megatron-core is required in CI (CI=true): {e} (.ci/run installs it)"),
        Err(e) => {
            println!("skipping: {e}");
            None
        }
    }
}

#[macro_export]
macro_rules! require_megatron {
    () => {
        match common::bridge() {
            Some(b) => b,
            None => return,
        }
    };
}

/// What `escale_megatron forward` reports: logits `[batch, seq, vocab]` (flattened) and the MoE
/// losses megatron-core's router recorded per layer (unscaled by their coefficients).
pub struct McoreForward {
    pub logits: Vec<f32>,
    pub shape: Vec<usize>,
    pub load_balancing: Vec<f64>,
    pub z_loss: Vec<f64>,
}

pub fn mcore_forward(bridge: &Bridge, export_dir: &Path, ids: &[Vec<u32>]) -> McoreForward {
    let tmp = tempfile::tempdir().unwrap();
    let ids_file = tmp.path().join("ids.json");
    std::fs::write(&ids_file, serde_json::to_string(ids).unwrap()).unwrap();
    let out = tmp.path().join("logits.safetensors");
    let iter_dir = escale_megatron::checkpoint_iteration_dir(export_dir).unwrap();
    let args: Vec<OsString> = vec![
        "--model".into(),
        export_dir.join(escale_megatron::MODEL_FILE).into(),
        "--checkpoint".into(),
        iter_dir.into(),
        "--ids".into(),
        ids_file.into(),
        "--out".into(),
        out.clone().into(),
    ];
    let result = bridge.run("forward", &args).unwrap();
    let logits = escale_testkit::read_safetensors_f32(&out).remove("logits").unwrap();
    let losses = |name: &str| -> Vec<f64> {
        result["moe_losses"][name].as_array().map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect()).unwrap_or_default()
    };
    McoreForward { logits: logits.data, shape: logits.shape, load_balancing: losses("load_balancing_loss"), z_loss: losses("z_loss") }
}

/// Panics unless the two HF folders hold the same tensors with the same bytes and dtypes, and
/// the same config.json text.
pub fn assert_bit_identical(a: &Path, b: &Path) {
    let (ca, cb) = (Checkpoint::open(a).unwrap(), Checkpoint::open(b).unwrap());
    let mut names_a: Vec<&str> = ca.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut names_b: Vec<&str> = cb.tensors().iter().map(|t| t.name.as_str()).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{} and {} hold different tensors", a.display(), b.display());
    for n in names_a {
        let (ia, ib) = (ca.info(n).unwrap(), cb.info(n).unwrap());
        assert_eq!((ia.dtype, &ia.shape), (ib.dtype, &ib.shape), "`{n}` dtype/shape");
        assert!(ca.bytes(n).unwrap() == cb.bytes(n).unwrap(), "`{n}` differs after HF -> Megatron-Core -> HF");
    }
    let text = |d: &Path| std::fs::read_to_string(d.join("config.json")).unwrap();
    assert_eq!(text(a), text(b), "config.json differs");
}
