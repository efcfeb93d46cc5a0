//! A fake engine for the runner's tests: no tokens, no weights, only the files the runner looks
//! at. A trained model's final validation loss is a known function of its learning rate and seed,
//! so a test can say which point of a sweep must win.

#![allow(dead_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::Result;
use escale_grow::Exactness;
use escale_pipeline::engine::{Engine, Trained};
use escale_pipeline::plan::{OutSettings, UpSettings};
use escale_train::{EvalRecord, StepRecord, TrainConfig, TrainEvent};

/// File beside a fake model's config.json holding the validation loss it evaluates to.
const LOSS_FILE: &str = "loss.txt";

/// What the fake engine was asked to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Init { out: PathBuf, seed: u64 },
    Train { output: PathBuf, lr: f64, min_lr: f64, seed: u64, tokens: u64 },
}

pub struct FakeEngine {
    /// Final validation loss of a training at `lr` with data-order seed `seed`.
    pub loss: fn(f64, u64) -> f64,
    pub calls: RefCell<Vec<Call>>,
}

impl FakeEngine {
    pub fn new(loss: fn(f64, u64) -> f64) -> FakeEngine {
        FakeEngine { loss, calls: RefCell::new(Vec::new()) }
    }
}

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
        // A real (word-level) tokenizer of 64 tokens: the pipeline reads its vocabulary size
        // through the tokenizers crate.
        let vocab: serde_json::Map<String, serde_json::Value> = (0..64).map(|i| (format!("t{i}"), i.into())).collect();
        let tokenizer = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
        });
        std::fs::write(out, tokenizer.to_string())?;
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
    fn init_model(&self, config: &Path, out: &Path, seed: u64) -> Result<()> {
        self.calls.borrow_mut().push(Call::Init { out: out.to_path_buf(), seed });
        copy_config(config, out)
    }
    fn scale_up(&self, src: &Path, out: &Path, _settings: &UpSettings) -> Result<Exactness> {
        copy_config(&src.join("config.json"), out)?;
        Ok(Exactness::from_reasons(vec![], vec![]))
    }
    fn scale_out(&self, _src: &Path, _out: &Path, _settings: &OutSettings) -> Result<Exactness> {
        unreachable!("no scale-out in these files")
    }
    fn evaluate(&self, model: &Path, _valid: &Path, _seq_len: usize, _tokens: u64) -> Result<f64> {
        match std::fs::read_to_string(model.join(LOSS_FILE)) {
            Ok(text) => Ok(text.trim().parse()?),
            Err(_) => Ok(4.0),
        }
    }
    fn train(&self, cfg: &TrainConfig, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Trained> {
        let tokens = cfg.total_tokens.unwrap();
        self.calls.borrow_mut().push(Call::Train {
            output: cfg.output.clone(),
            lr: cfg.lr,
            min_lr: cfg.min_lr,
            seed: cfg.seed,
            tokens,
        });
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
        std::fs::write(final_model.join(LOSS_FILE), format!("{}", (self.loss)(cfg.lr, cfg.seed)))?;
        let (train_log, eval_log) = (cfg.output.join("train_log.jsonl"), cfg.output.join("eval_log.jsonl"));
        std::fs::write(&train_log, serde_json::to_string(&step)? + "\n")?;
        std::fs::write(&eval_log, serde_json::to_string(&eval)? + "\n")?;
        Ok(Trained { final_model, tokens, flops: tokens as f64, train_log, eval_log, resumed: false })
    }
    fn flops_per_token(&self, _model: &Path, _seq_len: usize) -> Result<f64> {
        Ok(1.0)
    }
}
