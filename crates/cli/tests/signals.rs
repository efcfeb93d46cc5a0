//! Output that goes nowhere never stops work (issue 13, item 2): a closed stdout/stderr is
//! ignored, SIGTERM ends a training run with a checkpoint that `--resume` continues exactly, and
//! an error chain prints each cause once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{dataset, escale, ok};

/// The tiny model every test here trains.
fn init(dir: &Path) -> PathBuf {
    common::init(dir, "model", 3)
}

fn train_args(model: &Path, data: &Path, out: &Path, steps: u64) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), model.display().to_string(), "--data".into(), data.display().to_string()];
    a.extend(["--output".into(), out.display().to_string(), "--steps".into(), steps.to_string()]);
    a.extend(["--seq-len", "16", "--micro-batch", "4", "--lr", "0.01", "--warmup", "2", "--threads", "1"].map(String::from));
    a
}

fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("train_log.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

fn checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join(format!("checkpoints/step-{step:08}"))
}

/// Runs `cmd` with stdout and stderr connected to pipes whose reading ends are closed at once
/// (like `escale ... 2>&1 | head -0`, or a dead ssh session).
fn with_closed_pipes(cmd: &mut Command) -> std::process::ExitStatus {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    child.wait().unwrap()
}

#[test]
fn a_closed_pipe_never_stops_training_or_printing_commands() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path());
    let data = dataset(dir.path());
    let run = dir.path().join("run");
    let status = with_closed_pipes(escale().args(train_args(&model, &data, &run, 20)).args(["--save-interval", "20"]));
    assert!(status.success(), "train with closed stdout/stderr: {status}");
    assert!(checkpoint(&run, 20).join("model.safetensors").is_file(), "the checkpoint was written");
    assert_eq!(logged_steps(&run), 20, "the run's own log got every step");

    let status = with_closed_pipes(escale().arg("inspect").arg(&model));
    assert!(status.success(), "inspect with a closed stdout: {status}");
    let status = with_closed_pipes(escale().arg("verify").arg(&model).arg(&model).args(["--random", "16"]));
    assert!(status.success(), "verify with a closed stdout: {status}");
}

/// SIGTERM mid-run: the step finishes, a checkpoint of it is written, the exit status says
/// interrupted, and `--resume` reaches the same final weights as an uninterrupted run.
#[test]
fn sigterm_writes_a_checkpoint_that_resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path());
    let data = dataset(dir.path());
    let steps = 150;
    let straight = dir.path().join("straight");
    ok(escale().args(train_args(&model, &data, &straight, steps)).output().unwrap());

    let stopped = dir.path().join("stopped");
    let child = escale().args(train_args(&model, &data, &stopped, steps)).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while logged_steps(&stopped) < 5 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "interrupted exit status:\n{stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("--resume"), "{stderr}");
    let at = logged_steps(&stopped) as u64;
    assert!(at < steps, "the run finished before SIGTERM; make it longer");
    assert!(checkpoint(&stopped, at).join("model.safetensors").is_file(), "checkpoint at the interrupted step {at}");

    let text = ok(escale().args(train_args(&model, &data, &stopped, steps)).arg("--resume").output().unwrap());
    assert!(text.contains("resuming from"), "{text}");
    let weights = |run: &Path| std::fs::read(checkpoint(run, steps).join("model.safetensors")).unwrap();
    assert!(weights(&straight) == weights(&stopped), "stopped at step {at}: resumed weights differ");
}

#[test]
fn an_error_chain_prints_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let out = escale().arg("train").arg("--config").arg(&missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("missing.yaml"), "names the file: {stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "the cause once: {stderr}");
}
