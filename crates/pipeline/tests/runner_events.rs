//! The runner on a fake engine (no tokens, no weights): the order of the events it reports, and a
//! second run that finds every stage finished.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::Result;
use escale_grow::Exactness;
use escale_pipeline::engine::{Engine, Trained};
use escale_pipeline::plan::{OutSettings, UpSettings};
use escale_pipeline::runner::{self, RunOptions};
use escale_pipeline::schema::PipelineFile;
use escale_pipeline::PipelineEvent;
use escale_train::{EvalRecord, StepRecord, TrainConfig, TrainEvent};

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
  - baseline: {name: up-scratch, of: up}
"#;

/// Writes just enough for the runner: config files copied along, one log line per training.
struct FakeEngine;

fn copy_config(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::copy(from, to.join("config.json"))?;
    Ok(())
}

impl Engine for FakeEngine {
    fn make_corpus(&self, _bytes: u64, _seed: u64, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("a.txt"), "text")?;
        Ok(vec![dir.join("a.txt")])
    }
    fn train_tokenizer(&self, _inputs: &[PathBuf], _vocab_size: usize, out: &Path) -> Result<()> {
        std::fs::write(out, r#"{"model": {"vocab": {"a": 0, "b": 63}}}"#)?;
        Ok(())
    }
    fn prepare_data(
        &self,
        _inputs: &[PathBuf],
        _json_key: Option<&str>,
        _tokenizer: &Path,
        _valid_fraction: f64,
        _seed: u64,
        prefix: &Path,
    ) -> Result<(PathBuf, PathBuf)> {
        let (train, valid) = escale_data::prepare::split_prefixes(prefix);
        for p in [&train, &valid] {
            std::fs::write(p.with_extension("idx"), "idx")?;
        }
        Ok((train, valid))
    }
    fn init_model(&self, config: &Path, out: &Path, _seed: u64) -> Result<()> {
        copy_config(config, out)
    }
    fn scale_up(&self, src: &Path, out: &Path, _settings: &UpSettings) -> Result<Exactness> {
        copy_config(&src.join("config.json"), out)?;
        Ok(Exactness::from_reasons(vec![], vec![]))
    }
    fn scale_out(&self, _src: &Path, _out: &Path, _settings: &OutSettings) -> Result<Exactness> {
        unreachable!("no scale-out in this file")
    }
    fn evaluate(&self, _model: &Path, _valid: &Path, _seq_len: usize, _tokens: u64) -> Result<f64> {
        Ok(4.0)
    }
    fn train(&self, cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Trained> {
        let tokens = cfg.total_tokens.unwrap();
        let step = StepRecord {
            step: 1,
            tokens,
            loss: 3.0,
            lr: cfg.lr,
            grad_norm: 1.0,
            tokens_per_s: 1.0,
            flops: tokens as f64,
            aux_loss: None,
            z_loss: None,
            expert_load: None,
            skipped: false,
        };
        let eval = EvalRecord { step: 1, tokens, flops: tokens as f64, val_loss: 3.5 };
        on_event(TrainEvent::Eval(&eval));
        let final_model = cfg.output.join("final");
        copy_config(&cfg.model.join("config.json"), &final_model)?;
        let (train_log, eval_log) = (cfg.output.join("train_log.jsonl"), cfg.output.join("eval_log.jsonl"));
        std::fs::write(&train_log, serde_json::to_string(&step)? + "\n")?;
        std::fs::write(&eval_log, serde_json::to_string(&eval)? + "\n")?;
        Ok(Trained { final_model, tokens, flops: tokens as f64, train_log, eval_log, resumed: false })
    }
    fn flops_per_token(&self, _model: &Path, _seq_len: usize) -> Result<f64> {
        Ok(1.0)
    }
}

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
    let outcome = runner::run(file, &opts, &FakeEngine, &on_event).unwrap();
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
