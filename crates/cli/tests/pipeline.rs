//! `escale demo --quick` and `escale run`: the whole pipeline through the binary, its report files,
//! resume after a kill, and errors in pipeline files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn escale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_escale"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("escale runs");
    assert!(
        out.status.success(),
        "escale failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Checks a PNG's signature, IHDR size and final IEND chunk.
fn assert_png(path: &Path) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    let (w, h) = (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()));
    assert!(w >= 800 && h >= 500, "figure {w}x{h}");
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND", "PNG truncated");
}

#[test]
fn quick_demo_writes_the_report_with_one_series_per_stage() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("demo");
    let started = Instant::now();
    let out = run_ok(escale().args(["demo", "--quick", "--output"]).arg(&run));
    println!("escale demo --quick: {:.0} s", started.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&run.join("report.md").display().to_string()), "{stdout}");

    let summary = json(&run.join("summary.json"));
    let stages: Vec<&str> = summary["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["base", "up-aki-pro", "up-exact", "moe", "up-scratch", "moe-scratch"]);
    for s in summary["stages"].as_array().unwrap() {
        let (start, end) = (s["val_loss_start"].as_f64().unwrap(), s["val_loss_end"].as_f64().unwrap());
        assert!(start.is_finite() && end.is_finite() && s["flops"].as_f64().unwrap() > 0.0, "{s}");
        assert!(end < start, "training lowers the validation loss: {s}");
    }
    // The exact branch (fpi preset, interpolate-identity depth; plain upcycling) starts where its
    // source ended; aki-pro does not preserve the function and says so.
    let transitions = summary["transitions"].as_array().unwrap();
    assert_eq!(transitions.len(), 3);
    for t in transitions {
        let gap = t["relative_gap"].as_f64().unwrap();
        println!("transition {} -> {}: {:+.4}%", t["from"], t["to"], 100.0 * gap);
        if t["exact"] == true {
            assert!(gap.abs() < 1e-4, "an exact growth keeps the validation loss: {t}");
        }
    }
    let exact: Vec<bool> = transitions.iter().map(|t| t["exact"].as_bool().unwrap()).collect();
    assert_eq!(exact, [false, true, true]);
    // Baselines were given the FLOPs of the grown chain they are compared with.
    let baselines = summary["baselines"].as_array().unwrap();
    assert_eq!(baselines.len(), 2);
    for b in baselines {
        let (g, s) = (b["stage_flops"].as_f64().unwrap(), b["baseline_flops"].as_f64().unwrap());
        assert!((s - g).abs() / g < 0.05, "baseline budget {s:e} vs grown {g:e}");
        println!("{} {} vs baseline {} {}", b["stage"], b["stage_val_loss"], b["baseline"], b["baseline_val_loss"]);
    }

    // Learning-rate sweeps: every point of the swept stage (the quick demo sweeps the dense
    // baseline only) is listed, the chosen one is the lowest final loss, and the stage's row is that run.
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(stdout.contains("learning-rate sweeps and seeds"), "{stdout}");
    let groups = summary["runs"].as_array().unwrap();
    let swept: Vec<&str> = groups.iter().map(|g| g["stage"].as_str().unwrap()).collect();
    assert_eq!(swept, ["up-scratch"]);
    for g in groups {
        let points = g["points"].as_array().unwrap();
        let lrs: Vec<f64> = points.iter().map(|p| p["lr"].as_f64().unwrap()).collect();
        assert_eq!(lrs, [0.001, 0.003, 0.01], "{}", g["stage"]);
        let means: Vec<f64> = points
            .iter()
            .map(|p| {
                let runs = p["runs"].as_array().unwrap();
                assert_eq!(runs.len(), 1, "one seed per point in the quick demo");
                runs.iter().map(|r| r["val_loss_end"].as_f64().unwrap()).sum::<f64>() / runs.len() as f64
            })
            .collect();
        let best = (0..means.len()).min_by(|&a, &b| means[a].total_cmp(&means[b])).unwrap();
        assert_eq!(g["chosen_lr"].as_f64(), Some(lrs[best]), "{g}");
        let chosen_run = points[best]["runs"][0]["name"].as_str().unwrap();
        let row = summary["stages"].as_array().unwrap().iter().find(|s| s["name"] == g["stage"]).unwrap();
        assert!(row["model_dir"].as_str().unwrap().starts_with(&format!("{chosen_run}/")), "{row}");
        println!("{} lr sweep {lrs:?}: mean final val loss {means:?}, chosen {}", g["stage"], lrs[best]);
        assert!(md.contains(&format!("**{}** (", g["stage"].as_str().unwrap())), "report.md lists the runs of {}", g["stage"]);
    }
    let dense = baselines.iter().find(|b| b["baseline"] == "up-scratch").unwrap();
    assert_eq!(dense["baseline_seeds"]["n"], 1, "{dense}");
    for heading in ["## Stages", "## Transitions", "## Scale-up initialisations side by side", "## Learning-rate sweeps and seeds", "## Grown models against from-scratch"] {
        assert!(md.contains(heading), "report.md lacks {heading}");
    }
    assert!(md.contains("](loss_vs_flops.png)"));
    assert_png(&run.join("loss_vs_flops.png"));
    let svg = std::fs::read_to_string(run.join("loss_vs_flops.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for name in &stages {
        let label = if name.ends_with("-scratch") { format!("{name} (from scratch, dashed)") } else { name.to_string() };
        assert_eq!(svg.matches(&format!(">\n{label}\n</text>")).count(), 1, "legend entry for {name}");
    }
    assert_eq!(svg.matches(&format!(">\n{}\n</text>", escale_pipeline::plot::FAINT_LABEL)).count(), 1, "one entry for the faint runs");
    assert!(run.join("pipeline.yaml").exists(), "the demo keeps its pipeline file");
    check_demo_accuracy(&run, &summary, &md, &stages);
}

/// The demo's multiple-choice accuracy (issue 17): every stage scored on the four built-in world
/// tasks at its start and end, the exact growths starting with their source's answers, the table
/// in report.md and the figure beside the loss.
fn check_demo_accuracy(run: &Path, summary: &serde_json::Value, md: &str, stages: &[&str]) {
    let rows = summary["accuracy"].as_array().unwrap();
    assert_eq!(rows.len(), stages.len() * 4, "four tasks per stage");
    let find = |stage: &str, task: &str| rows.iter().find(|r| r["stage"] == stage && r["task"] == task).unwrap_or_else(|| panic!("{stage} {task}"));
    for r in rows {
        let (start, end) = (r["start"].as_f64().unwrap(), r["end"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&start) && (0.0..=1.0).contains(&end) && r["items"].as_u64().unwrap() > 0, "{r}");
        println!("{} {}: {:.3} -> {:.3} (chance {:.3})", r["stage"], r["task"], start, end, r["chance"].as_f64().unwrap());
    }
    for task in ["world-knowledge-en", "world-knowledge-zh", "world-generalisation-en", "world-generalisation-zh"] {
        // A function-preserving growth answers as its source did (same scores up to rounding).
        for (from, to) in [("base", "up-exact"), ("up-exact", "moe")] {
            let (e, s) = (find(from, task)["end"].as_f64().unwrap(), find(to, task)["start"].as_f64().unwrap());
            assert!((e - s).abs() <= 0.03, "{task}: {from} ends at {e}, {to} starts at {s}");
        }
    }
    assert!(md.contains("## Downstream accuracy") && md.contains("| stage | task | items | chance | start | end |"));
    assert!(md.contains("](accuracy_vs_flops.png)"));
    assert_png(&run.join("accuracy_vs_flops.png"));
    assert!(run.join("tasks/world.jsonl").is_file());
}

/// A pipeline small enough to run three times in a test: built-in corpus, tiny model, one
/// scale-up, checkpoints every few steps.
fn tiny_pipeline(dir: &Path) -> PathBuf {
    let yaml = r#"
name: tiny
seed: 3
eval: {tokens: 2048, seq_len: 64}
train: {seq_len: 64, micro_batch: 4, lr: 0.003, warmup_steps: 2, save_interval: 5, eval_interval: 10}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.15}}
      tokenizer: {train: {vocab_size: 320}}
      model: {init: {config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                              num_attention_heads: 2, num_key_value_heads: 1}}}
      train: {total_tokens: 10240}
  - scale_up:
      name: up
      method: fpi
      preset: fpi
      depth: interpolate-identity
      target: {hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 3}
      train: {total_tokens: 20480}
"#;
    let path = dir.join("tiny.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Final numbers of a run that must not depend on interruptions (wall time excluded).
fn final_numbers(run: &Path) -> Vec<(String, f64, f64, u64, f64)> {
    json(&run.join("summary.json"))["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["val_loss_start"].as_f64().unwrap(),
                s["val_loss_end"].as_f64().unwrap(),
                s["tokens"].as_u64().unwrap(),
                s["flops"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn has_checkpoint(train_dir: &Path) -> bool {
    std::fs::read_dir(train_dir.join("checkpoints"))
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("step-")))
        .unwrap_or(false)
}

#[test]
fn killed_run_resumes_to_the_same_numbers_and_a_finished_run_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_pipeline(dir.path());
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    run_ok(escale().arg("run").arg(&file).arg("--threads").arg("2").arg("-o").arg(&whole));

    // Kill the run once the scale-up stage's training has written its first checkpoint.
    let mut child = escale()
        .arg("run")
        .arg(&file)
        .args(["--threads", "2", "-o"])
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !has_checkpoint(&killed.join("up").join("train")) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        assert!(Instant::now() < deadline, "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.join("up").join("stage.json").exists(), "killed mid-stage");
    assert!(killed.join("base").join("stage.json").exists());

    let out = run_ok(escale().arg("run").arg(&file).args(["--threads", "2", "-o"]).arg(&killed));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("skipped (already finished): base"), "{stdout}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert_eq!(final_numbers(&whole), final_numbers(&killed));

    // A third run finds everything finished.
    let out = run_ok(escale().arg("run").arg(&file).args(["--threads", "2", "-o"]).arg(&killed));
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped (already finished): base, up"));
    assert_eq!(final_numbers(&whole), final_numbers(&killed));
}

#[test]
fn invalid_pipeline_files_name_the_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_pipeline(dir.path());
    let bad = std::fs::read_to_string(&file).unwrap().replace("method: fpi", "method: akii");
    std::fs::write(&file, bad).unwrap();
    let out = escale().arg("run").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stages[1].scale_up.method: unknown variant `akii`, expected one of `fpi`, `aki`, `aki-pro`"), "{stderr}");
    assert!(!dir.path().join("runs").exists(), "nothing is written for an invalid file");

    let out = escale().arg("run").arg(dir.path().join("missing.yaml")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

/// Issue 13: Ctrl-C (SIGINT) while a pipeline tokenizes stops the prepare stage between two
/// batches: exit status 130, a message saying how to resume, no data published and no staging
/// left; the same command then finishes the run. Skipped when shared/ is absent.
#[test]
fn sigint_while_tokenizing_stops_the_stage_and_a_rerun_finishes_it() {
    let Some(shared) = escale_testkit::shared_dir() else { return };
    let tokenizer = shared.join("testdata/tokenizers/aquila/tokenizer.json");
    let text = std::fs::read_to_string(shared.join("testdata/corpus/en/tinyshakespeare.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // About 24 MB: three encoding batches, so the stop lands before the last one.
    std::fs::write(dir.path().join("corpus.txt"), text.repeat(22)).unwrap();
    let yaml = format!(
        r#"
seed: 1
eval: {{tokens: 256, seq_len: 32}}
train: {{seq_len: 32, micro_batch: 2, lr: 0.003}}
stages:
  - prepare:
      name: base
      corpus: {{text: {{paths: [corpus.txt]}}}}
      tokenizer: {{path: {}}}
      valid_fraction: 0.01
      model: {{init: {{config: {{hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
                              num_attention_heads: 2, num_key_value_heads: 1}}}}}}
      train: {{total_tokens: 256}}
"#,
        tokenizer.display()
    );
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    let run = dir.path().join("run");

    let mut child = escale().arg("run").arg(&file).arg("-o").arg(&run).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id().to_string();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        let mut signalled = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if !signalled && line.contains("tokenizing") {
                signalled = true;
                assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
            }
        }
        seen
    });
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted exit status:\n{stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("run the same command again"), "{stderr}");
    let data = run.join("base/data");
    let left: Vec<_> = std::fs::read_dir(&data).map(|rd| rd.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "no data published and no staging left: {left:?}\n{stderr}");
    assert!(!run.join("base/stage.json").exists());

    let out = run_ok(escale().arg("run").arg(&file).arg("-o").arg(&run));
    assert!(run.join("base/stage.json").is_file(), "{}", String::from_utf8_lossy(&out.stderr));
}

