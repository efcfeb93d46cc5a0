//! `escale scale-up` end to end on the real stories260K model, checked with `escale verify`
//! (skipped when shared/ is absent), plus its errors on bad input.

use std::path::Path;
use std::process::Output;

use escale_formats::Checkpoint;

mod common;
use common::{run_escale as escale, testdata as shared};

fn text(o: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const GROW: [&str; 8] = ["--hidden", "96", "--intermediate", "215", "--heads", "12", "--layers", "10"];

fn scale_up(src: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["scale-up", src.to_str().unwrap(), out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    escale(&args)
}

#[test]
fn exact_growth_passes_verify_on_tinyshakespeare() {
    let Some(data) = shared() else { return };
    let src = data.join("models/stories260K");
    let corpus = data.join("corpus/en/tinyshakespeare.txt");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grown");
    let mut args = GROW.to_vec();
    args.extend(["--method", "fpi", "--preset", "zero-pad", "--depth", "interpolate-identity", "--max-shard-size", "300KB"]);
    let o = scale_up(&src, &out, &args);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("hidden 64 -> 96") && stdout.contains("exact:") && !stdout.contains("NOT exact"), "{stdout}");
    assert!(Checkpoint::open(&out).unwrap().shard_paths().count() > 1, "--max-shard-size is honoured");
    let v = escale(&[
        "verify", src.to_str().unwrap(), out.to_str().unwrap(), "--text", corpus.to_str().unwrap(), "--max-tokens", "512",
        "--expect", "exact", "--tol", "1e-3",
    ]);
    println!("escale verify, stories260K grown with zero-pad + interpolate-identity:\n{}", String::from_utf8_lossy(&v.stdout));
    assert!(v.status.success(), "{}", text(&v));
}

/// Issue 12: a zero-pad growth (exact in f32) of a bf16 GQA model scales weights by non-powers of
/// two that bf16 cannot hold, so it reports the measured drift and the flag that keeps it exact;
/// the same growth stored in f32 reports exact.
#[test]
fn bf16_zero_pad_growth_reports_its_drift_and_f32_reports_exact() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bf16 = tmp.path().join("bf16");
    let o = scale_up(&data.join("models/stories260K"), &bf16, &["--method", "fpi", "--preset", "zero-pad", "--dtype", "bf16"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut args = GROW.to_vec();
    args.extend(["--method", "fpi", "--preset", "zero-pad", "--depth", "interpolate-identity"]);
    let o = scale_up(&bf16, &tmp.path().join("grown-bf16"), &args);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("bf16 growth:\n{stdout}");
    assert!(stdout.contains("exact in f32 only") && stdout.contains("stored-dtype drift over") && stdout.contains("--dtype f32"), "{stdout}");
    assert!(!stdout.contains("  exact:") && !stdout.contains("NOT exact"), "{stdout}");
    args.extend(["--dtype", "f32"]);
    let o = scale_up(&bf16, &tmp.path().join("grown-f32"), &args);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("  exact:") && !stdout.contains("drift"), "{stdout}");
}

#[test]
fn aki_pro_growth_runs_and_verify_reports_its_loss() {
    let Some(data) = shared() else { return };
    let src = data.join("models/stories260K");
    let corpus = data.join("corpus/en/tinyshakespeare.txt");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("akipro");
    let o = scale_up(&src, &out, &GROW);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("method aki-pro") && stdout.contains("NOT exact"), "{stdout}");
    let v = escale(&["verify", src.to_str().unwrap(), out.to_str().unwrap(), "--text", corpus.to_str().unwrap(), "--max-tokens", "512"]);
    let report = String::from_utf8_lossy(&v.stdout);
    println!("escale verify, stories260K grown with aki-pro:\n{report}");
    assert!(v.status.success(), "{}", text(&v));
    let loss_line = report.lines().find(|l| l.starts_with("loss ref / cand")).expect("verify prints the losses");
    let cand: f64 = loss_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(cand.is_finite(), "{loss_line}");
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let o = scale_up(&data.join("models/stories260K"), &out, &["--hidden", "128", "--method", "fpi", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("hidden 64 -> 128") && stdout.contains("exact:"), "{stdout}");
    assert!(!out.exists());
}

fn expect_failure(extra: &[&str], needles: &[&str]) {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = scale_up(&data.join("models/stories260K"), &out, extra);
    assert!(!o.status.success(), "should fail: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention `{n}`: {stderr}");
    }
    assert!(!out.exists(), "no output folder on error");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temporary folder left");
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    expect_failure(&["--hidden", "32"], &["hidden_size 32 is smaller than the source's 64"]);
    expect_failure(&["--heads", "10"], &["not divisible by the 4 KV groups"]);
    expect_failure(&["--layers", "7", "--method", "fpi", "--depth", "identity"], &["must divide"]);
    expect_failure(&["--method", "aki-pro", "--depth", "stack", "--layers", "6"], &["aki-pro"]);
    expect_failure(&["--preset", "bogus"], &["unknown preset `bogus`"]);
    expect_failure(&["--fanout", "lemon:-1"], &["invalid LEMON std"]);
}

#[test]
fn target_config_that_changes_kv_heads_is_refused() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = data.join("models/stories260K");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = 128.into();
    cfg["num_key_value_heads"] = 8.into();
    let target = tmp.path().join("target.json");
    std::fs::write(&target, cfg.to_string()).unwrap();
    let out = tmp.path().join("out");
    let o = scale_up(&src, &out, &["--target-config", target.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("num_key_value_heads 4 -> 8") && stderr.contains("target.json"), "{stderr}");
    assert!(!out.exists());
    // A consistent target config works and is followed.
    cfg["num_key_value_heads"] = 4.into();
    cfg["num_attention_heads"] = 16.into();
    cfg["head_dim"] = 8.into();
    std::fs::write(&target, cfg.to_string()).unwrap();
    let o = scale_up(&src, &out, &["--target-config", target.to_str().unwrap(), "--method", "fpi"]);
    assert!(o.status.success(), "{}", text(&o));
    let grown = Checkpoint::open(&out).unwrap();
    assert_eq!((grown.config.hidden_size, grown.config.num_attention_heads), (128, 16));
}
