//! End-to-end Scale-Up on random tiny llama / mistral / qwen2 / qwen3 checkpoints (tied and untied),
//! checked with the independent f64 reference forward pass in `scale_up_support`: the exact
//! combinations keep the logits (1e-4 relative), the others do not, and the tests print by how much.

mod scale_up_support;

use std::path::{Path, PathBuf};

use escale_formats::DType;
use escale_grow::scale_up::{
    scale_up, AkiConsumerSource, DepthMethod, ExecOptions, Fanout, Method, Preset, ScaleUpOptions, Target,
};
use scale_up_support::{dims, logit_delta, make_tiny, tiny_config, Model, IDS};

const FAMILIES: [(&str, bool); 8] = [
    ("llama", false),
    ("llama", true),
    ("mistral", false),
    ("mistral", true),
    ("qwen2", false),
    ("qwen2", true),
    ("qwen3", false),
    ("qwen3", true),
];

fn fpi(preset: Preset) -> ScaleUpOptions {
    ScaleUpOptions { method: Method::Fpi, preset, ..Default::default() }
}

struct Case {
    _tmp: tempfile::TempDir,
    src: PathBuf,
}

fn source(ty: &str, tied: bool) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config(ty, tied, true), 11, DType::F32);
    Case { _tmp: tmp, src }
}

/// Grows `src` and returns (relative max |Δlogit|, absolute, exactness verdict of the plan).
fn grow_and_compare(src: &Path, target: &Target, o: &ScaleUpOptions, tag: &str) -> (f64, f64, bool) {
    let out = src.parent().unwrap().join(format!("out-{tag}"));
    let (plan, _) = scale_up(src, &out, target, o, &ExecOptions::default(), None).unwrap();
    let (a, _) = Model::load(src).forward(&IDS);
    let grown = Model::load(&out);
    let (b, _) = grown.forward(&IDS);
    let (abs, rel) = logit_delta(&a, &b);
    (rel, abs, plan.exactness.exact)
}

/// transformers refuses a llama whose hidden size is not a multiple of its head count, and so does
/// escale: such a target is checked on mistral and qwen2 (which take the explicit `head_dim`), and
/// for llama it must be refused. True when it was (the caller moves on).
fn refused_for_llama(ty: &str, src: &Path, target: &Target, o: &ScaleUpOptions) -> bool {
    let Target::Dims(d) = target else { return false };
    let divisible = matches!((d.hidden_size, d.num_attention_heads), (Some(h), Some(q)) if h % q == 0);
    if ty != "llama" || divisible {
        return false;
    }
    let out = src.parent().unwrap().join("refused");
    let err = scale_up(src, &out, target, o, &ExecOptions::default(), None).unwrap_err().to_string();
    assert!(err.contains("not a multiple of num_attention_heads") && !out.exists(), "{err}");
    true
}

fn assert_exact(target: Target, o: ScaleUpOptions, what: &str) {
    for (ty, tied) in FAMILIES {
        let case = source(ty, tied);
        if refused_for_llama(ty, &case.src, &target, &o) {
            continue;
        }
        let (rel, abs, verdict) = grow_and_compare(&case.src, &target, &o, "x");
        println!("{what} {ty} tied={tied}: max |dlogit| = {abs:.3e} (relative {rel:.3e})");
        assert!(rel < 1e-4, "{what} {ty} tied={tied}: relative logit error {rel:e}");
        assert!(verdict, "{what}: the plan should call this exact");
    }
}

fn assert_not_exact(target: Target, o: ScaleUpOptions, what: &str) {
    for (ty, tied) in [("llama", false), ("mistral", false), ("qwen2", true)] {
        let case = source(ty, tied);
        if refused_for_llama(ty, &case.src, &target, &o) {
            continue;
        }
        let (rel, abs, verdict) = grow_and_compare(&case.src, &target, &o, "x");
        println!("{what} {ty} tied={tied}: NOT exact as expected, max |dlogit| = {abs:.3e} (relative {rel:.3e})");
        assert!(rel > 1e-3, "{what} {ty} tied={tied}: expected a visible change, got {rel:e}");
        assert!(!verdict, "{what}: the plan should not call this exact");
    }
}

#[test]
fn fpi_at_2x_width_with_ffn_and_head_growth_is_exact() {
    assert_exact(dims(32, 30, 6, 3), fpi(Preset::Fpi), "fpi 2x");
}

#[test]
fn fpi_scaled_at_1_25x_and_1_5x_is_exact() {
    assert_exact(dims(20, 30, 6, 3), fpi(Preset::FpiScaled), "fpi-scaled 1.25x");
    assert_exact(dims(24, 36, 8, 3), fpi(Preset::FpiScaled), "fpi-scaled 1.5x");
}

#[test]
fn zero_pad_at_1_25x_and_1_5x_is_exact() {
    assert_exact(dims(20, 30, 6, 3), fpi(Preset::ZeroPad), "zero-pad 1.25x");
    assert_exact(dims(24, 36, 8, 3), fpi(Preset::ZeroPad), "zero-pad 1.5x");
}

#[test]
fn identity_depth_growth_is_exact() {
    let o = ScaleUpOptions { depth: Some(DepthMethod::Identity), ..fpi(Preset::FpiScaled) };
    assert_exact(dims(20, 30, 6, 6), o, "fpi-scaled 1.25x + identity 3->6");
    let o = ScaleUpOptions { depth: Some(DepthMethod::InterpolateIdentity), ..fpi(Preset::Fpi) };
    assert_exact(dims(16, 24, 4, 5), o, "interpolate-identity 3->5");
}

#[test]
fn lemon_fanout_and_random_maps_stay_exact() {
    let o = ScaleUpOptions {
        fanout: Fanout::Lemon { scale: 0.05 },
        hidden_map: escale_grow::scale_up::MapKind::Random,
        head_map: escale_grow::scale_up::MapKind::Random,
        seed: 5,
        ..fpi(Preset::FpiScaled)
    };
    assert_exact(dims(20, 30, 6, 3), o, "fpi-scaled 1.25x, random maps, lemon");
}

#[test]
fn fpi_at_1_25x_is_not_exact() {
    assert_not_exact(dims(20, 24, 4, 3), fpi(Preset::Fpi), "fpi 1.25x");
}

#[test]
fn aki_is_not_exact() {
    let o = ScaleUpOptions { method: Method::Aki, ..fpi(Preset::FpiScaled) };
    assert_not_exact(dims(20, 30, 6, 3), o.clone(), "aki (fpi-scaled) 1.25x");
    let o = ScaleUpOptions { aki_consumer_source: AkiConsumerSource::SelfLayer, ..o };
    assert_not_exact(dims(20, 30, 6, 3), o, "aki consumer=self");
}

#[test]
fn interpolate_without_identity_is_not_exact() {
    assert_not_exact(dims(16, 24, 4, 5), fpi(Preset::Fpi), "interpolate 3->5");
    let o = ScaleUpOptions { depth: Some(DepthMethod::Stack), ..fpi(Preset::Fpi) };
    assert_not_exact(dims(16, 24, 4, 5), o, "stack 3->5");
}

#[test]
fn aki_pro_gives_finite_logits() {
    let case = source("qwen2", false);
    let out = case.src.parent().unwrap().join("akipro");
    scale_up(&case.src, &out, &dims(20, 30, 6, 5), &ScaleUpOptions::default(), &ExecOptions::default(), None).unwrap();
    let (logits, _) = Model::load(&out).forward(&IDS);
    assert!(logits.iter().flatten().all(|v| v.is_finite()));
}

/// Spec §2.1: after every layer the grown residual stream is `x'_j = a_j·x_{g(j)}`.
#[test]
fn residual_invariant_holds_after_every_layer() {
    for preset in [Preset::FpiScaled, Preset::ZeroPad] {
        // Width 20 with 6 heads: llama would refuse it (see `refused_for_llama`).
        let case = source("mistral", true);
        let out = case.src.parent().unwrap().join("inv");
        let (plan, _) = scale_up(&case.src, &out, &dims(20, 30, 6, 3), &fpi(preset), &ExecOptions::default(), None).unwrap();
        let (_, xs) = Model::load(&case.src).forward(&IDS);
        let (_, ys) = Model::load(&out).forward(&IDS);
        let mut worst: f64 = 0.0;
        for (x_layer, y_layer) in xs.iter().zip(&ys) {
            for (x, y) in x_layer.iter().zip(y_layer) {
                let scale = x.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (j, &gj) in plan.hidden.map.iter().enumerate() {
                    worst = worst.max((y[j] - plan.scales.a[j] as f64 * x[gj]).abs() / scale);
                }
            }
        }
        println!("{preset:?}: worst relative residual-invariant error {worst:.3e}");
        assert!(worst < 1e-5, "{preset:?}: {worst:e}");
    }
}
