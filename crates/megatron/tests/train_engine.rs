//! `escale train --engine megatron` ([`escale_megatron::train::train`], what the CLI calls) on CPU
//! with the real megatron-core, against escale's in-process trainer:
//! * on the same weights and the same first batch, step 1 gives the same loss, gradient norm and
//!   learning rate (1e-4), and the validation losses before and after the update agree;
//! * an upcycled MoE trains on two ranks (gloo), data parallel 2 and expert parallel 2: validation
//!   loss falls, and the logs read through escale's report code (`escale_pipeline::metrics`);
//! * a run stopped after step 20 and resumed logs the same losses as the uninterrupted run.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use escale_data::indexed::write_dataset;
use escale_formats::{ModelConfig, WriterOptions};
use escale_grow::scale_out::{upcycle, MoeFormat, ScaleOutOptions};
use escale_megatron::train::{train as megatron_train, MegatronTrainSummary};
use escale_model::Model;
use escale_train::{Engine, EvalRecord, MegatronSettings, ResumeMode, ScheduleKind, StepRecord, TrainConfig};
use serde_json::json;

const VOCAB: u32 = 96;
const EOD: u32 = 1;

fn write_llama(dir: &Path) -> PathBuf {
    let config = json!({"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "initializer_range": 0.1, "tie_word_embeddings": false, "eos_token_id": EOD});
    let cfg = ModelConfig::from_json(config, &dir.join("config.json")).unwrap();
    let model = Model::init_random(&cfg, 11, &Device::Cpu, DType::F32).unwrap();
    model.save(dir, escale_formats::DType::F32, &WriterOptions::default(), None, |_| Ok(())).unwrap();
    dir.to_path_buf()
}

/// Documents of a learnable language: each counts upwards by a step of 1 or 3 from a seeded
/// start (the next token follows from the previous two), ending with the end-of-document token.
fn documents(count: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = escale_util::rng::splitmix64(state);
            let (start, step, len) = (2 + (state % 90) as u32, if state.is_multiple_of(2) { 1 } else { 3 }, 20 + (state >> 8) % 30);
            let mut doc: Vec<u32> = (0..len as u32).map(|i| 2 + (start + i * step) % (VOCAB - 2)).collect();
            doc.push(EOD);
            doc
        })
        .collect()
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display()))).collect()
}

fn run_megatron(cfg: &TrainConfig, bridge: &escale_megatron::Bridge) -> MegatronTrainSummary {
    megatron_train(cfg, bridge, &mut |_| {}).unwrap_or_else(|e| panic!("megatron run in {}: {e}", cfg.output.display()))
}

#[test]
fn step_one_on_megatron_core_matches_the_in_process_trainer() {
    let bridge = require_megatron!();
    let tmp = tempfile::tempdir().unwrap();
    let model = write_llama(&tmp.path().join("model"));
    let (seq_len, micro_batch, grad_accum) = (16usize, 2usize, 2usize);
    // The same first batch for both engines: the training set is ONE document of exactly
    // micro_batch x grad_accum windows (4 x 16 + 1 tokens). Both cut it into the same four
    // overlapping windows (escale's sampler and GPTDataset window a stream alike), and a step of
    // four sequences is then the whole epoch: each engine shuffles the windows its own way, but
    // the mean loss and the summed gradient of a step do not depend on their order.
    let window_tokens = micro_batch * grad_accum * seq_len + 1;
    let doc: Vec<u32> = documents(8, 5).concat().into_iter().take(window_tokens).collect();
    let train = tmp.path().join("data/train");
    std::fs::create_dir_all(train.parent().unwrap()).unwrap();
    write_dataset(&train, escale_data::DType::U16, &[doc]).unwrap();
    let valid = tmp.path().join("data/valid");
    write_dataset(&valid, escale_data::DType::U16, &documents(6, 77)).unwrap();

    let base = TrainConfig {
        model: model.clone(),
        data: train,
        valid: Some(valid),
        seq_len,
        micro_batch,
        grad_accum,
        steps: Some(1),
        lr: 2e-3,
        schedule: ScheduleKind::Constant,
        weight_decay: 0.1,
        clip: 0.5,
        eval_tokens: 3 * seq_len as u64 + 5,
        ..TrainConfig::default()
    };
    let ours_cfg = TrainConfig { output: tmp.path().join("escale"), ..base.clone() };
    escale_train::train(&ours_cfg, &mut |_| {}).unwrap();
    let theirs_cfg = TrainConfig { output: tmp.path().join("megatron"), engine: Engine::Megatron, ..base };
    let summary = run_megatron(&theirs_cfg, &bridge);

    // The megatron engine's logs are the trainer's own record types.
    let ours: Vec<StepRecord> = read_jsonl(&ours_cfg.output.join("train_log.jsonl"));
    let theirs: Vec<StepRecord> = read_jsonl(&theirs_cfg.output.join("train_log.jsonl"));
    let (o, t) = (&ours[0], &theirs[0]);
    println!("step 1: loss escale {:.6} megatron-core {:.6}; grad norm {:.6} vs {:.6}; lr {} vs {}", o.loss, t.loss, o.grad_norm, t.grad_norm, o.lr, t.lr);
    assert_eq!((theirs.len(), t.step, t.tokens), (1, 1, o.tokens));
    assert!((o.loss - t.loss).abs() < 1e-4, "step-1 loss: escale {} vs megatron-core {}", o.loss, t.loss);
    assert!((o.grad_norm - t.grad_norm).abs() < 1e-4 * o.grad_norm.max(1.0), "grad norm: escale {} vs megatron-core {}", o.grad_norm, t.grad_norm);
    assert!((o.lr - t.lr).abs() < 1e-12, "lr: escale {} vs megatron-core {}", o.lr, t.lr);
    assert!((o.flops - t.flops).abs() < 1e-6 * o.flops, "FLOPs accounting differs");

    // Validation scores the same windows: before the update the models are equal, after it both
    // AdamW steps (weight decay off norms, clipping at 0.5) have moved them alike.
    let ours_eval: Vec<EvalRecord> = read_jsonl(&ours_cfg.output.join("eval_log.jsonl"));
    let theirs_eval: Vec<EvalRecord> = read_jsonl(&theirs_cfg.output.join("eval_log.jsonl"));
    assert_eq!(ours_eval.len(), 2);
    assert_eq!(theirs_eval.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 1]);
    for (o, t) in ours_eval.iter().zip(&theirs_eval) {
        println!("step {} validation loss: escale {:.6} megatron-core {:.6}", o.step, o.val_loss, t.val_loss);
        assert!((o.val_loss - t.val_loss).abs() < 1e-4, "step {} validation loss: escale {} vs megatron-core {}", o.step, o.val_loss, t.val_loss);
    }
    assert!(theirs_eval[1].val_loss != theirs_eval[0].val_loss, "the update changed nothing");

    // The final checkpoint came back as an HF folder holding the updated weights: escale's
    // evaluation of it gives megatron-core's final validation loss.
    let hf = summary.final_model.expect("a finished run imports its final checkpoint");
    let back = Model::load_dir(&hf, &Device::Cpu, DType::F32).unwrap();
    let data = std::sync::Arc::new(escale_data::IndexedDataset::open(theirs_cfg.valid.as_ref().unwrap()).unwrap());
    let val = escale_train::evaluate(&back, &data, seq_len, micro_batch, theirs_cfg.eval_tokens).unwrap();
    assert!((val - theirs_eval[1].val_loss).abs() < 1e-4, "imported model: {val} vs megatron-core's {}", theirs_eval[1].val_loss);
}

/// A Mixtral upcycled by escale from a dense llama (4 experts, top-2, noisy copies).
fn write_moe(dir: &Path) -> PathBuf {
    let dense = write_llama(&dir.join("dense"));
    let out = dir.join("moe");
    let o = ScaleOutOptions { experts: 4, top_k: 2, format: Some(MoeFormat::Mixtral), noise: 0.02, router_std: 1.0, seed: 3, ..ScaleOutOptions::default() };
    upcycle(&dense, &out, &o, &WriterOptions::default(), &|_, _| {}).unwrap();
    out
}

fn check_learns_and_reports(cfg: &TrainConfig, summary: &MegatronTrainSummary, what: &str) {
    let steps: Vec<StepRecord> = read_jsonl(&summary.train_log);
    let evals: Vec<EvalRecord> = read_jsonl(&summary.eval_log);
    let (first, last) = (evals.first().unwrap(), evals.last().unwrap());
    println!("{what}: validation loss {:.4} -> {:.4}; train loss {:.4} -> {:.4}", first.val_loss, last.val_loss, steps[0].loss, steps.last().unwrap().loss);
    assert_eq!(steps.len() as u64, cfg.steps.unwrap());
    assert!(last.val_loss < first.val_loss - 0.1, "{what}: validation loss did not fall ({} -> {})", first.val_loss, last.val_loss);
    for s in &steps {
        let aux = s.aux_loss.expect("MoE steps log the load-balancing loss");
        assert!((0.99..4.0).contains(&aux), "{what}: step {} aux loss {aux} (Megatron convention: 1 when balanced)", s.step);
        assert!(s.z_loss.unwrap() > 0.0);
        let load = s.expert_load.as_ref().unwrap();
        assert_eq!(load.len(), 2, "two MoE layers");
        assert!(load.iter().all(|l| l.len() == 4 && (l.iter().sum::<f64>() - 1.0).abs() < 1e-9), "{what}: expert load {load:?}");
    }
    // escale's report reads the logs (the curve of `escale run` reports and plots).
    let curve = escale_pipeline::metrics::read_curve(&summary.train_log, Some(&summary.eval_log)).unwrap();
    assert_eq!(curve.train.len(), steps.len());
    assert_eq!(curve.valid.len(), evals.len());
    assert_eq!(curve.train.last().unwrap().tokens, summary.run.tokens);
    assert!(curve.train.windows(2).all(|w| w[1].flops > w[0].flops), "FLOPs grow along the run");
    let hf = summary.final_model.as_ref().expect("final model imported");
    assert_eq!(ModelConfig::from_file(&hf.join("config.json")).unwrap().model_type.as_str(), "mixtral");
}

#[test]
fn upcycled_moe_trains_on_two_ranks_and_resumes_exactly() {
    let bridge = require_megatron!();
    let tmp = tempfile::tempdir().unwrap();
    let model = write_moe(tmp.path());
    let (train, valid) = (tmp.path().join("data/train"), tmp.path().join("data/valid"));
    std::fs::create_dir_all(train.parent().unwrap()).unwrap();
    write_dataset(&train, escale_data::DType::U16, &documents(120, 1)).unwrap();
    write_dataset(&valid, escale_data::DType::U16, &documents(12, 2)).unwrap();
    let base = TrainConfig {
        model,
        data: train,
        valid: Some(valid),
        seq_len: 16,
        micro_batch: 2,
        grad_accum: 2,
        steps: Some(30),
        lr: 5e-3,
        min_lr: 5e-4,
        warmup_steps: 3,
        eval_interval: 10,
        eval_tokens: 128,
        save_interval: 10,
        engine: Engine::Megatron,
        ..TrainConfig::default()
    };
    let dp2 = TrainConfig { output: tmp.path().join("dp2"), megatron: MegatronSettings { dp: 2, ..MegatronSettings::default() }, ..base.clone() };
    let dp2_summary = run_megatron(&dp2, &bridge);
    check_learns_and_reports(&dp2, &dp2_summary, "data parallel 2");

    let ep2 = TrainConfig { output: tmp.path().join("ep2"), megatron: MegatronSettings { dp: 2, ep: 2, ..MegatronSettings::default() }, ..base.clone() };
    // Stopped after step 20 (its checkpoint is due then), as a killed run would be, and resumed.
    let stopped = run_megatron(&TrainConfig { stop_after_step: Some(20), ..ep2.clone() }, &bridge);
    assert!(stopped.run.stopped_early && stopped.final_model.is_none() && stopped.run.steps == 20);
    let err = megatron_train(&ep2, &bridge, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("--resume"), "a fresh run over checkpoints is refused: {err}");
    let resumed = run_megatron(&TrainConfig { resume: ResumeMode::Resume, ..ep2.clone() }, &bridge);
    check_learns_and_reports(&ep2, &resumed, "expert parallel 2, resumed at 20");

    // Expert parallelism computes what data parallelism computes (each rank's own tokens, the
    // experts held elsewhere): the same sums in another order (measured: 1e-7 apart). So the EP
    // run, stopped and resumed, must follow the uninterrupted DP run step for step; a resume that
    // lost any state (Adam's moments or step count, the schedule, the data position) is 1e-2 off.
    let a: Vec<StepRecord> = read_jsonl(&dp2_summary.train_log);
    let b: Vec<StepRecord> = read_jsonl(&resumed.train_log);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.tokens, x.lr), (y.step, y.tokens, y.lr));
        assert!((x.loss - y.loss).abs() < 1e-5, "step {}: data parallel {} vs expert parallel (resumed at 20) {}", x.step, x.loss, y.loss);
        assert!((x.grad_norm - y.grad_norm).abs() < 1e-5 * x.grad_norm.max(1.0), "step {}: gradient norm {} vs {}", x.step, x.grad_norm, y.grad_norm);
    }
}
