//! Learning-rate sweeps and seeds through the runner, on a fake engine whose final validation loss
//! is a known function of the learning rate and seed: the sweep keeps the best point, the report
//! and summary.json list every run, seeds give a mean and a spread, a re-run skips finished runs
//! and a widened sweep trains only its new points.

mod common;

use std::path::Path;

use common::{Call, FakeEngine};
use escale_pipeline::runner::{self, RunOptions, RunOutcome};
use escale_pipeline::runs::Stats;
use escale_pipeline::schema::PipelineFile;
use escale_pipeline::PipelineEvent;

const FILE: &str = r#"
train: {seq_len: 8, micro_batch: 2, lr: 0.003}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.01}}
      tokenizer: {train: {vocab_size: 64}}
      model: {init: {config: {hidden_size: 16, intermediate_size: 32, num_attention_heads: 2, num_key_value_heads: 1}}}
      train: {total_tokens: 64}
  - scale_up: {name: up, target: {hidden_size: 32}, train: {total_tokens: 32}, seeds: 2}
  - baseline: {name: up-scratch, of: up, seeds: 2}
"#;

/// Lowest at lr 1e-3, with a small seed-dependent offset (so seeds differ and have a spread).
fn loss(lr: f64, seed: u64) -> f64 {
    3.0 + 0.5 * (lr / 1e-3).ln().powi(2) + 0.01 * (seed % 7) as f64
}

fn run(text: &str, dir: &Path) -> (RunOutcome, Vec<Call>) {
    let file = PipelineFile::parse(text, "p.yaml").unwrap();
    let engine = FakeEngine::new(loss);
    let opts = RunOptions { run_dir: dir.to_path_buf(), base_dir: dir.to_path_buf(), progress: false };
    let on_event = |_: PipelineEvent| {};
    let outcome = runner::run(&file, &opts, &engine, &on_event).unwrap();
    let calls = engine.calls.borrow().clone();
    (outcome, calls)
}

/// The trainings among `calls`.
fn trainings(calls: &[Call]) -> Vec<Call> {
    calls.iter().filter(|c| matches!(c, Call::Train { .. })).cloned().collect()
}

/// The stage folders that trained, in order.
fn outputs(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Train { output, .. } => Some(output.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()),
            Call::Init { .. } => None,
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_baseline_sweep_keeps_its_best_point_and_the_report_lists_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, calls) = run(FILE, dir.path());
    let calls = trainings(&calls);
    let trained = outputs(&calls);
    assert_eq!(
        trained,
        [
            "base", "up", "up-s1",
            "up-scratch-lr1e-3-s0", "up-scratch-lr1e-3-s1", "up-scratch-lr3e-3-s0", "up-scratch-lr3e-3-s1",
            "up-scratch-lr9e-3-s0", "up-scratch-lr9e-3-s1",
        ],
        "the default sweep is lr/3, lr, 3 lr around the stage's 0.003, each with both seeds"
    );
    // Every point trains for the same budget (the grown chain's FLOPs), the schedule scaled whole.
    for c in &calls[3..] {
        let Call::Train { lr, min_lr, tokens, .. } = c else { unreachable!() };
        assert_eq!(*tokens, 96);
        assert!((min_lr / lr - 0.1).abs() < 1e-12, "min_lr follows lr: {c:?}");
    }

    // summary.json: every point and seed, the choice is the lowest mean, at the sweep's edge.
    let summary = json(&dir.path().join("summary.json"));
    let stages: Vec<&str> = summary["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["base", "up", "up-scratch"], "one row per stage of the file");
    let group = summary["runs"].as_array().unwrap().iter().find(|g| g["stage"] == "up-scratch").unwrap();
    let points = group["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let means: Vec<f64> = points
        .iter()
        .map(|p| {
            let losses: Vec<f64> = p["runs"].as_array().unwrap().iter().map(|r| r["val_loss_end"].as_f64().unwrap()).collect();
            assert_eq!(losses.len(), 2);
            losses.iter().sum::<f64>() / 2.0
        })
        .collect();
    let best = (0..3).min_by(|&a, &b| means[a].total_cmp(&means[b])).unwrap();
    assert_eq!(points[best]["lr"].as_f64(), Some(0.001));
    assert_eq!(group["chosen_lr"].as_f64(), Some(0.001));
    assert!(points.iter().enumerate().all(|(i, p)| p["chosen"] == (i == best)));
    assert_eq!(group["edge"], "lowest");
    let row = summary["stages"].as_array().unwrap().iter().find(|s| s["name"] == "up-scratch").unwrap();
    assert_eq!(row["model_dir"].as_str().unwrap(), "up-scratch-lr1e-3-s0/train/final", "the chosen run stands for the stage");
    assert_eq!(row["lr"].as_f64(), Some(0.001));

    // report.md: every point, the chosen one marked, the edge warning.
    let md = std::fs::read_to_string(&outcome.files.markdown).unwrap();
    assert!(md.contains("## Learning-rate sweeps and seeds"), "{md}");
    for (lr, p) in ["0.001", "0.003", "0.009"].iter().zip(points) {
        let cells: Vec<String> = p["runs"].as_array().unwrap().iter().map(|r| format!("{:.4}", r["val_loss_end"].as_f64().unwrap())).collect();
        let row = format!("| {lr} | {} |", cells.join(", "));
        let line = md.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("no row {row} in\n{md}"));
        assert_eq!(line.ends_with("| **chosen** |"), p["chosen"] == true, "{line}");
    }
    assert!(md.contains("up-scratch: the best learning rate (0.001) is the lowest of the sweep; the optimum may lie below it: widen `lr_sweep`."), "{md}");
    let terminal = outcome.summary.to_terminal();
    assert!(terminal.contains("lr 0.001 ") && terminal.contains("warning: up-scratch: the best learning rate"), "{terminal}");
}

#[test]
fn seeds_give_a_mean_and_a_spread_and_the_comparison_says_if_it_exceeds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, calls) = run(FILE, dir.path());
    let trained = trainings(&calls);
    let seeds: Vec<u64> = trained[1..3].iter().map(|c| if let Call::Train { seed, .. } = c { *seed } else { 0 }).collect();
    assert_ne!(seeds[0], seeds[1], "each seed reads the data in another order");
    let inits: Vec<u64> = calls
        .iter()
        .filter_map(|c| if let Call::Init { out, seed } = c { out.to_str().unwrap().contains("lr1e-3").then_some(*seed) } else { None })
        .collect();
    assert_eq!(inits.len(), 2);
    assert_ne!(inits[0], inits[1], "a model trained from scratch is also initialised anew per seed");

    let group = outcome.summary.runs.iter().find(|g| g.stage == "up").unwrap();
    assert_eq!(group.points.len(), 1, "seeds alone: one learning rate");
    let losses: Vec<f64> = group.points[0].runs.iter().map(|r| r.val_loss_end.unwrap()).collect();
    assert_eq!(losses, seeds.iter().map(|&s| loss(0.003, s)).collect::<Vec<_>>());
    let mean = (losses[0] + losses[1]) / 2.0;
    let sd = ((losses[0] - mean).powi(2) + (losses[1] - mean).powi(2)).sqrt();
    let stats = group.points[0].stats.unwrap();
    assert!((stats.mean - mean).abs() < 1e-12 && (stats.sd.unwrap() - sd).abs() < 1e-12, "{stats:?}");

    let b = &outcome.summary.baselines[0];
    assert_eq!((b.stage.as_str(), b.baseline.as_str(), b.stage_seeds.n, b.baseline_seeds.n), ("up", "up-scratch", 2, 2));
    assert_eq!(b.stage_val_loss, mean, "the grown side is the mean of its seeds");
    let expected = (b.baseline_val_loss - mean).abs() > sd + b.baseline_seeds.sd.unwrap();
    assert_eq!(b.exceeds_spread, Some(expected));
    let md = std::fs::read_to_string(&outcome.files.markdown).unwrap();
    let verdict = if expected { "yes" } else { "no" };
    assert!(md.contains(&format!("| {} | {} | {:+.4} | {verdict} |", describe(&b.stage_seeds), describe(&b.baseline_seeds), b.difference)), "{md}");
}

fn describe(s: &Stats) -> String {
    format!("{:.4} ± {:.4} ({} seeds)", s.mean, s.sd.unwrap(), s.n)
}

#[test]
fn a_rerun_skips_finished_points_and_a_widened_sweep_trains_only_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    run(FILE, dir.path());
    let (again, calls) = run(FILE, dir.path());
    assert!(calls.is_empty(), "nothing trains again: {calls:?}");
    assert_eq!(again.skipped.len(), 10, "{:?}", again.skipped);

    let wider = FILE.replace("{name: up-scratch, of: up, seeds: 2}", "{name: up-scratch, of: up, seeds: 2, lr_sweep: [0.0003, 0.001, 0.003, 0.009]}");
    let (outcome, calls) = run(&wider, dir.path());
    assert_eq!(outputs(&calls), ["up-scratch-lr3e-4-s0", "up-scratch-lr3e-4-s1"], "only the new point trains");
    assert!(outcome.skipped.contains(&"up-scratch-lr1e-3-s1".to_string()));
    assert!(!outcome.skipped.contains(&"up-scratch".to_string()), "the choice is made again");
    let group = outcome.summary.runs.iter().find(|g| g.stage == "up-scratch").unwrap();
    assert_eq!(group.points.len(), 4);
    assert_eq!((group.chosen_lr, group.edge), (Some(0.001), None), "the optimum is now inside the sweep");
    let md = std::fs::read_to_string(&outcome.files.markdown).unwrap();
    assert!(!md.contains("widen `lr_sweep`"), "{md}");
}

#[test]
fn seeds_of_a_model_trained_from_scratch_start_from_their_own_initialisation() {
    let dir = tempfile::tempdir().unwrap();
    let text = FILE.replace("train: {total_tokens: 64}\n", "train: {total_tokens: 64}\n      seeds: 2\n");
    let (outcome, calls) = run(&text, dir.path());
    let inits: Vec<(String, u64)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Init { out, seed } => Some((out.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned(), *seed)),
            Call::Train { .. } => None,
        })
        .take(2)
        .collect();
    assert_eq!((inits[0].0.as_str(), inits[1].0.as_str()), ("base", "base-s1"));
    assert_ne!(inits[0].1, inits[1].1, "another initialisation");
    let config = |stage: &str| std::fs::read(dir.path().join(stage).join("init-config").join("config.json")).unwrap();
    assert_eq!(config("base"), config("base-s1"), "the same architecture");
    assert_eq!(outputs(&trainings(&calls))[..3], ["base", "base-s1", "up"], "later stages grow from the first seed only");
    let group = outcome.summary.runs.iter().find(|g| g.stage == "base").unwrap();
    assert_eq!(group.points[0].runs.len(), 2);
    let stages: Vec<&str> = outcome.summary.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["base", "up", "up-scratch"]);
}
