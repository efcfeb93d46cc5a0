//! The benchmark harness (`bench/run.sh`) is not part of the test suite, but its smoke mode is: tiny models, one
//! run, no mergekit / PyTorch / Python tokenizers, so the harness cannot rot. It is given this test build's escale
//! binary (a nested `cargo build --release` would wait on the target-dir lock that `cargo test` holds).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CASES: [&str; 7] = ["disk", "scale_out", "scale_up", "depth_up", "train", "eval", "data"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).output().map(|o| o.status.success()).unwrap_or(false)
}

fn finite_positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what}: {x} is not finite and positive");
    x
}

#[test]
fn bench_smoke_mode_measures_every_case() {
    if !have("bash", "--version") || !have("python3", "--version") || !have("dd", "--version") {
        eprintln!("SKIPPED: bench_smoke needs bash, python3 and dd (coreutils)");
        return;
    }
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("note: /usr/bin/time missing; the harness falls back to VmHWM from /proc");
    }
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let run = Command::new("bash")
        .current_dir(repo_root())
        .args(["bench/run.sh", "--smoke", "--out"])
        .arg(out.path())
        .arg("--escale")
        .arg(env!("CARGO_BIN_EXE_escale"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench/run.sh --smoke failed:\n{log}");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(elapsed < 120.0, "smoke mode took {elapsed:.0} s; it must stay well under a minute on an idle machine");

    let results: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["smoke"], Value::Bool(true));
    assert!(results["machine"]["nproc"].as_u64().unwrap() >= 1);
    let cases = results["cases"].as_object().expect("cases object");
    for case in CASES {
        let c = cases.get(case).unwrap_or_else(|| panic!("case {case} missing from results.json"));
        let variants = c["variants"].as_object().unwrap_or_else(|| panic!("{case}: no variants"));
        assert!(!variants.is_empty(), "{case}: no rows");
        for (name, v) in variants {
            let status = v["status"].as_str().unwrap();
            match status {
                "ok" => {
                    if case == "train" {
                        finite_positive(&v["tokens_per_s"]["median"], &format!("{case}/{name} tokens/s"));
                        continue;
                    }
                    let w = &v["wall_s"];
                    let median = finite_positive(&w["median"], &format!("{case}/{name} median"));
                    let min = finite_positive(&w["min"], &format!("{case}/{name} min"));
                    let max = finite_positive(&w["max"], &format!("{case}/{name} max"));
                    assert!(min <= median && median <= max, "{case}/{name}: min {min} median {median} max {max}");
                    finite_positive(&v["peak_rss_kib"], &format!("{case}/{name} peak RSS"));
                    finite_positive(&v["bytes"], &format!("{case}/{name} bytes"));
                }
                // A command another engineer has not landed yet, or a reference smoke mode does not run: allowed,
                // but it must say why. A failing command is never allowed.
                "not_landed" | "skipped" => {
                    let note = v["note"].as_str().unwrap_or("");
                    assert!(!note.is_empty(), "{case}/{name}: {status} without a reason");
                    eprintln!("{case}/{name}: {status}: {note}");
                }
                other => panic!("{case}/{name}: status {other}: {}\n{log}", v["note"]),
            }
        }
    }
    // The disk floor is pure dd: it is always measured, and each growth case has its own.
    for case in ["disk", "scale_out", "scale_up", "depth_up"] {
        assert_eq!(cases[case]["variants"]["floor_read"]["status"], "ok", "{case} floor read");
        assert_eq!(cases[case]["variants"]["floor_write"]["status"], "ok", "{case} floor write");
        if case == "disk" {
            finite_positive(&cases[case]["read_mb_per_s"], "disk read MB/s");
            finite_positive(&cases[case]["write_mb_per_s"], "disk write MB/s");
        } else {
            finite_positive(&cases[case]["floor_s"], &format!("{case} floor"));
        }
    }
    // Growth cases whose command exists must produce a finite ratio to their disk floor.
    for case in ["scale_out", "scale_up", "depth_up"] {
        if cases[case]["variants"]["escale"]["status"] == "ok" {
            finite_positive(&cases[case]["ratio_to_floor"], &format!("{case} ratio to floor"));
        }
    }
    let tables = std::fs::read_to_string(out.path().join("tables.md")).unwrap();
    for title in ["Disk floor", "Scale-out", "Scale-up", "Training", "Evaluation", "Data"] {
        assert!(tables.contains(title), "tables.md lacks {title}");
    }
    // Large files are cleaned up.
    assert!(!out.path().join("work").exists(), "bench/run.sh left its work folder behind");
}
