//! The runner on a fake engine (no tokens, no weights): the order of the events it reports, and a
//! second run that finds every stage finished.

mod common;

use std::cell::RefCell;
use std::path::Path;

use common::FakeEngine;
use escale_pipeline::runner::{self, RunOptions};
use escale_pipeline::schema::PipelineFile;
use escale_pipeline::PipelineEvent;
use escale_train::TrainEvent;

const FILE: &str = r#"
train: {seq_len: 8, micro_batch: 2}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.01}}
      tokenizer: {train: {vocab_size: 64}}
      model: {init: {config: {hidden_size: 16, intermediate_size: 32, num_attention_heads: 2, num_key_value_heads: 1}}}
      train: {total_tokens: 64}
  - scale_up: {name: up, target: {hidden_size: 32}, train: {total_tokens: 32}}
  - baseline: {name: up-scratch, of: up, lr_sweep: [0.0003]}
"#;

/// One short line per event, in order.
fn describe(ev: &PipelineEvent) -> String {
    match ev {
        PipelineEvent::StageStarted { stage, .. } => format!("start {}", stage.name),
        PipelineEvent::Skipped => "skipped".into(),
        PipelineEvent::Resuming => "resuming".into(),
        PipelineEvent::SetAside { .. } => "set aside".into(),
        PipelineEvent::GeneratingCorpus { .. } => "corpus".into(),
        PipelineEvent::TrainingTokenizer { .. } => "tokenizer".into(),
        PipelineEvent::Tokenizing { .. } => "tokenizing".into(),
        PipelineEvent::InitialisingModel => "init".into(),
        PipelineEvent::Growing { .. } => "growing".into(),
        PipelineEvent::ValLossBefore(_) => "val before".into(),
        PipelineEvent::Transition { source, exactness, .. } => format!("transition from {source} exact {}", exactness.exact),
        PipelineEvent::Budget { tokens, .. } => format!("budget {tokens} tokens"),
        PipelineEvent::Selected { run, .. } => format!("selected {run}"),
        PipelineEvent::Training(cfg) => format!("training {}", cfg.total_tokens.unwrap()),
        PipelineEvent::Train(TrainEvent::Eval(e)) => format!("eval {}", e.val_loss),
        PipelineEvent::Train(_) => "train".into(),
        PipelineEvent::StageFinished(r) => format!("finished {}", r.name),
    }
}

fn run(file: &PipelineFile, run_dir: &Path) -> (Vec<String>, Vec<String>) {
    let events = RefCell::new(Vec::new());
    let on_event = |ev: PipelineEvent| events.borrow_mut().push(describe(&ev));
    let opts = RunOptions { run_dir: run_dir.to_path_buf(), base_dir: run_dir.to_path_buf(), progress: false };
    let outcome = runner::run(file, &opts, &FakeEngine::new(|_, _| 3.0), &on_event).unwrap();
    (events.into_inner(), outcome.skipped)
}

#[test]
fn stages_report_their_steps_in_order_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = PipelineFile::parse(FILE, "p.yaml").unwrap();
    let (events, skipped) = run(&file, dir.path());
    assert!(skipped.is_empty());
    let expected = [
        "start base", "corpus", "tokenizer", "tokenizing", "init", "val before", "training 64", "eval 3.5",
        "finished base",
        "start up", "growing", "transition from base exact true", "training 32", "eval 3.5", "finished up",
        // The baseline gets the FLOPs of the whole chain (64 + 32 at one FLOP per token) in whole
        // steps of 16 tokens.
        "start up-scratch", "budget 96 tokens", "init", "training 96", "eval 3.5", "finished up-scratch",
    ];
    assert_eq!(events, expected);

    let (events, skipped) = run(&file, dir.path());
    assert_eq!(skipped, ["base", "up", "up-scratch"]);
    assert_eq!(
        events,
        ["start base", "skipped", "finished base", "start up", "skipped", "finished up", "start up-scratch", "skipped", "finished up-scratch"]
    );
}
