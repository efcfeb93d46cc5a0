//! `escale export megatron` / `import megatron` on the command line: a missing Python names what
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
