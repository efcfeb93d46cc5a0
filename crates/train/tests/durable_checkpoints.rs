//! Issue 13 item 6: checkpoints carry checksums of their tensor files, a damaged one (a
//! zero-filled optimizer after a power cut) is never resumed silently, `--resume` falls back to
//! the newest valid checkpoint, and refuses when there is none.

mod common;

use std::path::Path;

use common::*;
use escale_train::checkpoint::{checkpoint_dir, list_checkpoints, read_state, OPTIMIZER_FILE};
use escale_train::trainer::TRAIN_LOG;
use escale_train::{train, ResumeMode, TrainConfig, TrainEvent};

fn quiet(_: TrainEvent) {}

/// Overwrites a file with zeros of the same length: what a power cut leaves of a preallocated
/// file whose data never reached the disk.
fn zero_fill(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::write(path, vec![0u8; len as usize]).unwrap();
}

/// A run of `steps` steps checkpointing every 2, in `<dir>/<name>`.
fn run_config(dir: &Path, name: &str, steps: u64) -> TrainConfig {
    let model = write_model(tiny_llama_config(), &dir.join("model"), 3);
    let data = write_counting_data(&dir.join("train"), 32, 40, 16, 3);
    let mut cfg = small_run(&model, &data, &dir.join(name), steps);
    cfg.save_interval = 2;
    cfg.keep_checkpoints = 3;
    cfg
}

#[test]
fn checkpoints_record_checksums_and_a_zeroed_optimizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = run_config(dir.path(), "run", 2);
    train(&cfg, &mut quiet).unwrap();
    let ckpt = checkpoint_dir(&cfg.output, 2);
    let state = read_state(&ckpt).unwrap();
    for name in ["model.safetensors", OPTIMIZER_FILE] {
        let sum = escale_util::hash::sha256_file(&ckpt.join(name)).unwrap();
        assert_eq!(state.checksums.get(name), Some(&sum), "checksum of {name} in trainer_state.json");
    }

    zero_fill(&ckpt.join(OPTIMIZER_FILE));
    cfg.steps = Some(4);
    cfg.resume = ResumeMode::Resume;
    let err = train(&cfg, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("no valid checkpoint"), "{err}");
    assert!(err.contains("optimizer.safetensors is damaged") && err.contains("step-00000002"), "{err}");
    // resume-or-start does not paper over damage either: the damaged run is not restarted.
    cfg.resume = ResumeMode::ResumeOrStart;
    let err = train(&cfg, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("optimizer.safetensors is damaged"), "{err}");
    assert!(ckpt.join(OPTIMIZER_FILE).is_file(), "the damaged checkpoint is kept for inspection");
}

#[test]
fn resume_falls_back_past_a_damaged_latest_checkpoint_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let straight = run_config(dir.path(), "straight", 6);
    train(&straight, &mut quiet).unwrap();

    let mut interrupted = TrainConfig { output: dir.path().join("interrupted"), stop_after_step: Some(4), ..straight.clone() };
    train(&interrupted, &mut quiet).unwrap();
    zero_fill(&checkpoint_dir(&interrupted.output, 4).join(OPTIMIZER_FILE));
    interrupted.stop_after_step = None;
    interrupted.resume = ResumeMode::Resume;
    let (mut warnings, mut start) = (Vec::new(), None);
    train(&interrupted, &mut |e| match e {
        TrainEvent::Warning(w) => warnings.push(w.to_string()),
        TrainEvent::Started { start_step, .. } => start = Some(start_step),
        _ => {}
    })
    .unwrap();
    assert_eq!(start, Some(2), "resumed from the previous, valid checkpoint");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("step-00000004") && warnings[0].contains("damaged"), "{warnings:?}");
    assert!(warnings[0].contains("falling back to") && warnings[0].contains("step-00000002"), "{warnings:?}");

    let a: Vec<_> = read_jsonl(&straight.output.join(TRAIN_LOG)).iter().map(deterministic_fields).collect();
    let b: Vec<_> = read_jsonl(&interrupted.output.join(TRAIN_LOG)).iter().map(deterministic_fields).collect();
    assert_eq!(a, b, "the run resumed from the fallback differs from the uninterrupted one");
    let weights = |cfg: &TrainConfig| std::fs::read(list_checkpoints(&cfg.output).unwrap().last().unwrap().1.join("model.safetensors")).unwrap();
    assert!(weights(&straight) == weights(&interrupted), "final weights differ");
}

#[test]
fn resume_without_a_checkpoint_is_refused_and_resume_or_start_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = run_config(dir.path(), "run", 2);
    cfg.resume = ResumeMode::Resume;
    let err = train(&cfg, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("no checkpoint to resume") && err.contains("--resume-or-start"), "{err}");
    assert!(err.contains("run/checkpoints"), "names the folder searched: {err}");
    assert!(list_checkpoints(&cfg.output).unwrap().is_empty());

    cfg.resume = ResumeMode::ResumeOrStart;
    let mut start = None;
    train(&cfg, &mut |e| {
        if let TrainEvent::Started { start_step, resumed_from, .. } = e {
            start = Some((start_step, resumed_from.is_some()))
        }
    })
    .unwrap();
    assert_eq!(start, Some((0, false)));
    assert_eq!(list_checkpoints(&cfg.output).unwrap().last().unwrap().0, 2);
}
