//! `escale scale-out` end to end on the real stories260K model (skipped when shared/ is absent).

use escale_formats::{Checkpoint, LayerParam, MlpPart, MlpSite, ModelType, Param};

mod common;
use common::{run_escale as escale, stories};

#[test]
fn scale_out_writes_an_exact_mixtral_and_reports_it() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let o = escale(&[
        "scale-out", src.to_str().unwrap(), out.to_str().unwrap(), "--experts", "4", "--top-k", "2", "--seed", "3",
        "--max-shard-size", "300KB", "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("mixtral") && stdout.contains("exact:"), "{stdout}");
    let (dense, moe) = (Checkpoint::open(&src).unwrap(), Checkpoint::open(&out).unwrap());
    assert_eq!(moe.config.model_type, ModelType::Mixtral);
    assert!(moe.shard_paths().count() > 1, "--max-shard-size is honoured");
    let up = |c: &Checkpoint, site| c.bytes(&c.name_of(Param::Layer(2, LayerParam::Mlp(site, MlpPart::Up)))).unwrap().to_vec();
    assert_eq!(up(&moe, MlpSite::Expert(3)), up(&dense, MlpSite::Dense));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("escale_growth.json")).unwrap()).unwrap();
    assert_eq!(manifest["router"]["seed"], 3);
    assert_eq!(manifest["exactness"]["exact"], true);
}

#[test]
fn scale_out_flags_reach_the_plan() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let o = escale(&[
        "scale-out", src.to_str().unwrap(), out.to_str().unwrap(), "--format", "qwen2_moe", "--experts", "4",
        "--top-k", "2", "--granularity", "2", "--shared-experts", "2", "--router-init", "uniform", "--dtype", "bf16",
        "--aux-loss-coef", "0.01", "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let moe = Checkpoint::open(&out).unwrap();
    let m = moe.config.moe.clone().unwrap();
    assert_eq!(moe.config.model_type, ModelType::Qwen2Moe);
    assert_eq!((m.num_experts, m.expert_intermediate_size, m.shared_expert_intermediate_size), (4, 86, 172));
    assert_eq!(m.router_aux_loss_coef, 0.01);
    assert!(moe.tensors().iter().all(|t| t.dtype == escale_formats::DType::BF16));
    let manifest = std::fs::read_to_string(out.join("escale_growth.json")).unwrap();
    assert!(manifest.contains("\"uniform\""), "{manifest}");

    let o = escale(&[
        "scale-out", src.to_str().unwrap(), tmp.path().join("x").to_str().unwrap(), "--format", "qwen2_moe",
        "--experts", "4", "--no-renormalize", "--quiet",
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT function-preserving"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("NOT exact"));
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let o = escale(&["scale-out", src.to_str().unwrap(), out.to_str().unwrap(), "--experts", "4", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("scale-out plan") && stdout.contains("mixtral") && stdout.contains("exact:"), "{stdout}");
    assert!(!out.exists());
}

#[test]
fn scale_out_bad_input_fails_cleanly() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let cases: [(&[&str], &str); 4] = [
        (&["--experts", "4", "--top-k", "5"], "--top-k"),
        (&["--experts", "6", "--granularity", "3"], "does not divide the FFN size 172"),
        (&["--shared-experts", "1"], "Mixtral has no shared expert"),
        (&["--format", "gpt"], "unknown format"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["scale-out", src.to_str().unwrap(), out.to_str().unwrap()];
        args.extend_from_slice(flags);
        let o = escale(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(needle), "{flags:?}: {stderr}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{flags:?} left files behind");
    }
}

/// `escale verify` (the model engine) agrees that upcycling is exact, and catches a noisy one.
#[test]
fn verify_confirms_upcycled_stories260k_is_exact() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src_s = src.to_str().unwrap();
    for (name, flags) in [
        ("plain", &["--experts", "8", "--top-k", "2", "--router-std", "1.0"][..]),
        ("granular", &["--experts", "8", "--top-k", "4", "--granularity", "2"][..]),
        ("shared", &["--format", "qwen2_moe", "--experts", "4", "--granularity", "2", "--shared-experts", "2"][..]),
    ] {
        let out = tmp.path().join(name);
        let mut args = vec!["scale-out", src_s, out.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(flags);
        let o = escale(&args);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let v = escale(&["verify", src_s, out.to_str().unwrap(), "--random", "96", "--expect", "exact", "--tol", "1e-4"]);
        assert!(
            v.status.success(),
            "{name}: verify failed\n{}\n{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let noisy = tmp.path().join("noisy");
    let o = escale(&["scale-out", src_s, noisy.to_str().unwrap(), "--noise", "0.02", "--quiet"]);
    assert!(o.status.success());
    let v = escale(&["verify", src_s, noisy.to_str().unwrap(), "--random", "96", "--expect", "exact", "--tol", "1e-4"]);
    assert!(!v.status.success(), "noise must break exactness: {}", String::from_utf8_lossy(&v.stdout));
}
