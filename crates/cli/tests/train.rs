//! `escale init` and `escale train` through the real binary: flags and YAML, logs and
//! checkpoints, and a run killed with SIGKILL then resumed reproducing the uninterrupted run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{dataset, escale, init, ok};

/// The complete records of a run's train log. Read while the run writes: a last line without its newline is
/// a record still being written (or cut by a kill), not a record.
fn losses(run: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("train_log.jsonl"))
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap())
        })
        .collect()
}

fn train_args(model: &Path, data: &Path, out: &Path, steps: u64) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), model.display().to_string(), "--data".into(), data.display().to_string()];
    a.extend(["--output".into(), out.display().to_string(), "--steps".into(), steps.to_string()]);
    a.extend(["--seq-len", "16", "--micro-batch", "4", "--lr", "0.01", "--min-lr", "0.001", "--warmup", "2", "--threads", "1"].map(String::from));
    a
}

#[test]
fn init_is_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = init(dir.path(), "a", 5);
    let b = init(dir.path(), "b", 5);
    let c = init(dir.path(), "c", 6);
    let w = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "same seed, same weights");
    assert!(w(&a) != w(&c), "another seed, other weights");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["hidden_size"], 16);
    // Refuses to overwrite without --force.
    let cfg_path = dir.path().join("config.json");
    let out = escale().args(["init", "--config"]).arg(&cfg_path).arg("--output").arg(&a).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn train_with_yaml_and_flag_overrides_writes_logs_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), "model", 1);
    let data = dataset(dir.path());
    let run = dir.path().join("run");
    let yaml = dir.path().join("train.yaml");
    std::fs::write(
        &yaml,
        format!(
            "model: {}\ndata: {}\nvalid: {}\noutput: {}\nseq_len: 16\nmicro_batch: 4\nsteps: 99\nlr: 0.01\nmin_lr: 0.001\nschedule: wsd\neval_interval: 5\neval_tokens: 64\nthreads: 1\n",
            model.display(),
            data.display(),
            data.display(),
            run.display()
        ),
    )
    .unwrap();
    // --steps overrides the file's 99.
    let text = ok(escale().args(["train", "--config"]).arg(&yaml).args(["--steps", "10"]).output().unwrap());
    assert!(text.contains("done after 10 steps"), "{text}");
    let l = losses(&run);
    assert_eq!(l.len(), 10);
    assert!(l[9].1 < l[0].1, "loss fell: {l:?}");
    let evals = std::fs::read_to_string(run.join("eval_log.jsonl")).unwrap();
    assert_eq!(evals.lines().count(), 3, "baseline at step 0, then steps 5 and 10");
    assert!(run.join("checkpoints/step-00000010/model.safetensors").is_file());
    assert!(run.join("checkpoints/step-00000010/trainer_state.json").is_file());

    let bad = escale().args(["train", "--config"]).arg(&yaml).args(["--schedule", "zigzag"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--schedule zigzag"));
}

/// The acceptance check: SIGKILL at an arbitrary moment, `--resume`, identical losses.
#[test]
fn sigkill_then_resume_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), "model", 2);
    let data = dataset(dir.path());
    let steps = 120;
    let straight = dir.path().join("straight");
    let mut args = train_args(&model, &data, &straight, steps);
    args.extend(["--save-interval", "7"].map(String::from));
    ok(escale().args(&args).output().unwrap());

    let killed = dir.path().join("killed");
    let mut args = train_args(&model, &data, &killed, steps);
    args.extend(["--save-interval", "7"].map(String::from));
    let mut child = escale().args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    // Kill once a checkpoint exists and a few steps past it are logged, mid-run.
    while losses(&killed).len() < 17 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = losses(&killed).len() as u64;
    assert!(at_kill < steps, "the run finished before it could be killed; make it longer");

    let mut args = train_args(&model, &data, &killed, steps);
    args.extend(["--save-interval", "7", "--resume"].map(String::from));
    let text = ok(escale().args(&args).output().unwrap());
    assert!(text.contains("resuming from"), "{text}");
    let (a, b) = (losses(&straight), losses(&killed));
    assert_eq!(a.len() as u64, steps);
    assert_eq!(a, b, "killed at step {at_kill}: resumed losses differ");
}

/// Issue 13's acceptance check: a run killed with SIGKILL at 20 random moments (at start-up,
/// mid-step, mid-checkpoint) and resumed each time with `--resume-or-start` ends with weights
/// bit-identical to an uninterrupted run, and the same losses.
#[test]
fn twenty_sigkills_then_resume_give_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), "model", 4);
    let data = dataset(dir.path());
    let steps = 150;
    let run_args = |out: &Path| {
        let mut args = train_args(&model, &data, out, steps);
        args.extend(["--save-interval", "3", "--keep-checkpoints", "2", "--resume-or-start"].map(String::from));
        args
    };
    let straight = dir.path().join("straight");
    ok(escale().args(run_args(&straight)).output().unwrap());

    let killed = dir.path().join("killed");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = escale_util::rng::SplitMix64::new(seed);
    let mut kills = Vec::new();
    while kills.len() < 20 {
        let mut child = escale().args(run_args(&killed)).stderr(std::process::Stdio::null()).spawn().unwrap();
        // Half the kills wait for a few more logged steps (so the run advances), half strike
        // during start-up; each then waits a further random few milliseconds.
        if kills.len() % 2 == 0 {
            let target = (losses(&killed).len() as u64 + 1 + rng.next_u64() % 6).min(steps - 1);
            let start = Instant::now();
            while (losses(&killed).len() as u64) < target && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 5000));
        let finished = child.try_wait().unwrap().is_some();
        assert!(!finished, "the run finished before kill {} (seed {seed}); make it longer", kills.len() + 1);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills.push(losses(&killed).len());
    }
    let text = ok(escale().args(run_args(&killed)).output().unwrap());
    let context = format!("seed {seed}, steps logged at each kill {kills:?}");
    assert!(text.contains("resuming from"), "{context}: {text}");
    assert_eq!(losses(&straight), losses(&killed), "{context}: losses differ");
    let weights = |run: &Path| std::fs::read(run.join(format!("checkpoints/step-{steps:08}/model.safetensors"))).unwrap();
    assert!(weights(&straight) == weights(&killed), "{context}: final weights differ");
}
