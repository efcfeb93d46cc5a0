//! Scale-Up checked by Python transformers (an implementation nobody here wrote): transformers
//! makes a random tiny checkpoint, escale grows it, and transformers runs both. The exact
//! combinations keep the logits within f32 rounding; fpi at a non-integer width ratio does not.

use std::path::Path;

use escale_grow::scale_up::{scale_up, DepthMethod, ExecOptions, Method, Preset, ScaleUpOptions, Target, TargetDims};
use escale_testkit::{max_abs_diff, require_oracle, Family, Oracle, TinySpec};

const IDS: [[u32; 9]; 2] = [[1, 17, 5, 60, 33, 2, 9, 41, 7], [3, 3, 58, 12, 0, 25, 44, 8, 19]];

fn logits(oracle: &Oracle, dir: &Path) -> Vec<f32> {
    let ids: Vec<Vec<u32>> = IDS.iter().map(|s| s.to_vec()).collect();
    oracle.logits(dir, &ids).flat().0
}

fn target(hidden: usize, ffn: usize, heads: usize, layers: usize) -> Target {
    Target::Dims(TargetDims {
        hidden_size: Some(hidden),
        intermediate_size: Some(ffn),
        num_attention_heads: Some(heads),
        num_hidden_layers: Some(layers),
    })
}

/// Grows `src` into `out` and returns (max |Δlogit| relative to max |logit|, plan verdict).
fn grow(oracle: &Oracle, src: &Path, reference: &[f32], out: &Path, t: Target, o: ScaleUpOptions) -> (f32, bool) {
    let (plan, _) = scale_up(src, out, &t, &o, &ExecOptions::default(), None).unwrap();
    let grown = logits(oracle, out);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    (max_abs_diff(reference, &grown) / scale, plan.exactness.exact)
}

fn fpi(preset: Preset, depth: DepthMethod) -> ScaleUpOptions {
    ScaleUpOptions { method: Method::Fpi, preset, depth: Some(depth), ..Default::default() }
}

#[test]
fn exact_growth_keeps_transformers_logits() {
    let oracle = require_oracle!();
    let tmp = tempfile::tempdir().unwrap();
    // (family, tied, target, options, what): hidden 32 -> 64 / 48 / 40, heads 4 -> 6 or 8 (2 KV groups; transformers 5 wants hidden % heads == 0),
    // FFN 64 -> larger, layers 2 -> more.
    let cases = [
        (Family::Llama, false, target(64, 96, 8, 4), fpi(Preset::Fpi, DepthMethod::Identity), "fpi 2x + identity depth"),
        (Family::Qwen2, true, target(48, 80, 6, 3), fpi(Preset::ZeroPad, DepthMethod::InterpolateIdentity), "zero-pad 1.5x + interpolate-identity"),
        (Family::Mistral, false, target(40, 72, 8, 2), fpi(Preset::FpiScaled, DepthMethod::Interpolate), "fpi-scaled 1.25x"),
    ];
    for (i, (family, tied, t, o, what)) in cases.into_iter().enumerate() {
        let spec = TinySpec { tied, seed: 40 + i as u64, ..TinySpec::new(family) };
        let src = oracle.make_tiny(&spec);
        let reference = logits(&oracle, &src);
        let (rel, exact) = grow(&oracle, &src, &reference, &tmp.path().join(format!("exact-{i}")), t, o);
        println!("{what} ({family:?}, tied {tied}): transformers max |dlogit| / max |logit| = {rel:.2e}");
        assert!(exact, "{what}: the plan should call this exact");
        assert!(rel < 1e-4, "{what}: relative logit error {rel:e} under transformers");
    }
}

#[test]
fn fpi_at_a_non_integer_ratio_is_not_exact_under_transformers() {
    let oracle = require_oracle!();
    let tmp = tempfile::tempdir().unwrap();
    let src = oracle.make_tiny(&TinySpec { seed: 40, ..TinySpec::new(Family::Llama) });
    let reference = logits(&oracle, &src);
    let (rel, exact) =
        grow(&oracle, &src, &reference, &tmp.path().join("fpi125"), target(40, 64, 4, 2), fpi(Preset::Fpi, DepthMethod::Interpolate));
    println!("fpi 1.25x (llama): transformers max |dlogit| / max |logit| = {rel:.2e}");
    assert!(!exact, "the plan must not call fpi at 1.25x exact");
    assert!(rel > 1e-3, "fpi at 1.25x should visibly change the logits, got {rel:e}");
}

#[test]
fn exact_qwen3_growth_keeps_transformers_logits_with_q_k_norms_and_wide_heads() {
    let oracle = require_oracle!();
    let tmp = tempfile::tempdir().unwrap();
    // head_dim 12 while hidden/heads is 8: growth keeps head_dim as hidden grows, and the output
    // states it (48/6 = 8, 40/8 = 5, neither 12). rms_norm_eps 0.05 makes the q/k norms' eps
    // matter: zero-pad scales it by kappa^2 and must compensate on the q/k rows (spec §2.4).
    let cases = [
        (false, target(64, 96, 8, 4), fpi(Preset::Fpi, DepthMethod::Identity), "fpi 2x + identity depth"),
        (true, target(48, 80, 6, 3), fpi(Preset::FpiScaled, DepthMethod::InterpolateIdentity), "fpi-scaled 1.5x + interpolate-identity"),
        (false, target(40, 72, 8, 3), fpi(Preset::ZeroPad, DepthMethod::InterpolateIdentity), "zero-pad 1.25x + interpolate-identity"),
    ];
    for (i, (tied, t, o, what)) in cases.into_iter().enumerate() {
        let spec = TinySpec {
            tied,
            seed: 50 + i as u64,
            head_dim: Some(12),
            rms_norm_eps: 0.05,
            attention_bias: Some(i == 0),
            ..TinySpec::new(Family::Qwen3)
        };
        let src = oracle.make_tiny(&spec);
        let reference = logits(&oracle, &src);
        let (rel, exact) = grow(&oracle, &src, &reference, &tmp.path().join(format!("qwen3-{i}")), t, o);
        println!("{what} (qwen3, tied {tied}): transformers max |dlogit| / max |logit| = {rel:.2e}");
        assert!(exact, "{what}: the plan should call this exact");
        assert!(rel < 1e-4, "{what}: relative logit error {rel:e} under transformers");
    }
}
