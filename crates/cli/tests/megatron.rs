//! `escale export megatron` / `import megatron` / `train --engine megatron` on the command line, and
//! `escale run` with a stage trained on megatron-core: a missing Python names what
//! to run and writes nothing, and a folder that is not an export is named with the way out
//! (`--record`). The numerical checks against megatron-core are in crates/megatron/tests.

use std::path::Path;
use std::process::Command;

// Only `stories` is used here.
mod common;

fn escale(args: &[&str], python: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_escale")).args(args).env("ESCALE_MEGATRON_PYTHON", python).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn export_without_megatron_python_says_what_to_run() {
    let Some(stories) = common::stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mcore");
    let (code, stderr) = escale(&["export", "megatron", stories.to_str().unwrap(), out.to_str().unwrap()], "/nonexistent/python");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ESCALE_MEGATRON_PYTHON=/nonexistent/python is not a file") && stderr.contains("bash python/setup.sh"), "{stderr}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn import_of_a_folder_that_is_not_an_export_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("not-a-checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    // Any existing file passes as the interpreter: the folder is checked before Python runs.
    let python = std::env::current_exe().unwrap();
    let out = tmp.path().join("hf");
    let (code, stderr) = escale(&["import", "megatron", ckpt.to_str().unwrap(), out.to_str().unwrap()], python.to_str().unwrap());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("megatron_model.json") && stderr.contains("--record"), "{stderr}");
    assert!(!Path::new(&out).exists());
}

#[test]
fn train_on_megatron_refuses_bad_layouts_and_a_missing_python_with_the_way_out() {
    let Some(stories) = common::stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (model, output) = (stories.to_str().unwrap(), out.to_str().unwrap());
    let base = ["train", model, "--engine", "megatron", "--data", "/nonexistent/data", "--output", output, "--steps", "3"];
    // A step (micro_batch x grad_accum sequences) cannot be split over 2 data-parallel ranks.
    let (code, stderr) = escale(&[&base[..], &["--dp", "2", "--grad-accum", "3"]].concat(), "/nonexistent/python");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("grad_accum") && stderr.contains("multiple of dp = 2"), "{stderr}");
    let (code, stderr) = escale(&[&base[..], &["--ep", "2"]].concat(), "/nonexistent/python");
    assert!(code == 1 && stderr.contains("expert parallelism needs an MoE model"), "{stderr}");
    let (code, stderr) = escale(&base, "/nonexistent/python");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ESCALE_MEGATRON_PYTHON=/nonexistent/python is not a file") && stderr.contains("bash python/setup.sh"), "{stderr}");
    assert!(!out.exists(), "nothing is written");
}

/// `escale run` with a scale-up stage trained on megatron-core (`train: {engine: megatron}`) whose
/// imported result the scale-out stage upcycles: the pipeline finishes, the report holds the
/// megatron stage's curve, and the MoE stage's model is grown from the megatron-trained weights.
#[test]
fn pipeline_scale_up_trains_on_megatron_and_scale_out_reads_its_result() {
    let python = match escale_megatron::bridge::locate_python() {
        Ok(p) => p,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!("megatron-core is required in CI (CI=true): {e}"),
        Err(e) => {
            println!("skipping: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
name: megatron
seed: 3
eval: {tokens: 512, seq_len: 32}
train: {seq_len: 32, micro_batch: 2, lr: 0.003, warmup_steps: 1, eval_interval: 4}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.05}}
      tokenizer: {train: {vocab_size: 300}}
      model: {init: {config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                              num_attention_heads: 2, num_key_value_heads: 1}}}
      train: {total_tokens: 512}
  - scale_up:
      name: up
      method: fpi
      target: {hidden_size: 64, intermediate_size: 128, num_attention_heads: 4}
      train: {total_tokens: 512, engine: megatron}
  - scale_out:
      name: moe
      from: up
      experts: 4
      top_k: 2
"#;
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_escale")).arg("run").arg(&file).arg("-o").arg(&run).env("ESCALE_MEGATRON_PYTHON", &python).output().unwrap();
    assert!(out.status.success(), "escale run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let stages = summary["stages"].as_array().unwrap();
    let up = stages.iter().find(|s| s["name"] == "up").unwrap();
    let moe = stages.iter().find(|s| s["name"] == "moe").unwrap();
    // The megatron stage: 512 tokens of 64-token steps, its final model the imported HF folder.
    assert_eq!(up["tokens"].as_u64(), Some(512), "{up}");
    let up_model = up["model_dir"].as_str().unwrap();
    assert!(up_model.ends_with("train/hf"), "the stage's model is the imported checkpoint: {up_model}");
    assert!(up["val_loss_end"].as_f64().unwrap() < up["val_loss_start"].as_f64().unwrap(), "{up}");
    // The report's curve of the stage comes from the megatron run's logs: one point per step.
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("up/stage.json")).unwrap()).unwrap();
    assert_eq!(record["curve"]["train"].as_array().map(Vec::len), Some(8), "{}", record["curve"]);
    assert!(std::fs::read_to_string(run.join("report.md")).unwrap().contains("| up | scale_up |"));
    // The scale-out stage starts where the megatron-trained model ended (upcycling is exact).
    let (start, end) = (moe["val_loss_start"].as_f64().unwrap(), up["val_loss_end"].as_f64().unwrap());
    assert!((start - end).abs() < 1e-4, "scale-out starts at {start}, the megatron stage ended at {end}");
    assert!(moe["arch"].as_str().unwrap().contains("experts=4"), "{moe}");
}
