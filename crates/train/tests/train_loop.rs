//! End-to-end behaviour of the training loop on tiny random models: learning, exact resume after
//! an interruption (dense and MoE), checkpoints, MoE balancing, robustness and clear errors.

mod common;

use common::*;
use escale_train::checkpoint::{list_checkpoints, read_state};
use escale_train::trainer::{EVAL_LOG, TRAIN_LOG};
use escale_train::{train, LossConvention, TrainConfig, TrainError, TrainEvent};

fn quiet(_: TrainEvent) {}

#[test]
fn dense_training_lowers_validation_loss_and_logs_everything() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(tiny_llama_config(), &dir.path().join("model"), 1);
    let data = write_counting_data(&dir.path().join("train"), 64, 40, 16, 1);
    let valid = write_counting_data(&dir.path().join("valid"), 8, 40, 16, 2);
    let mut cfg = small_run(&model, &data, &dir.path().join("run"), 30);
    cfg.valid = Some(valid);
    cfg.eval_interval = 10;
    cfg.eval_tokens = 256;
    let mut evals = Vec::new();
    let summary = train(&cfg, &mut |e| {
        if let TrainEvent::Eval(r) = e {
            evals.push(r.val_loss)
        }
    })
    .unwrap();
    // Baseline at step 0, then 10, 20, 30; counting mod 16 is learnable: loss falls from ~ln(64).
    assert_eq!(evals.len(), 4);
    assert!(evals[0] > 3.5, "random init starts near ln(64) = 4.16: {evals:?}");
    assert!(evals[1] > evals[3], "validation loss did not keep falling: {evals:?}");
    assert!(evals[3] < 2.5, "validation loss after 30 steps: {evals:?}");
    assert_eq!(summary.final_val_loss, Some(evals[3]));
    assert_eq!(summary.best_val_loss, Some(evals.iter().cloned().fold(f64::INFINITY, f64::min)));
    assert_eq!(summary.steps, 30);
    assert_eq!(summary.tokens, 30 * 16 * 4);

    let log = read_jsonl(&cfg.output.join(TRAIN_LOG));
    assert_eq!(log.len(), 30);
    let first = &log[0];
    assert_eq!(first["step"], 1);
    assert_eq!(first["lr"], 5e-3, "warmup step 1 of 2 uses half the peak");
    assert!(first["loss"].as_f64().unwrap() > 3.5, "{first}");
    assert!(first["grad_norm"].as_f64().unwrap() > 0.0);
    assert!(first["aux_loss"].is_null() && first["expert_load"].is_null(), "dense model has no MoE fields");
    let flops_per_step = first["flops"].as_f64().unwrap();
    assert_eq!(log[29]["flops"].as_f64().unwrap(), 30.0 * flops_per_step);
    assert_eq!(read_jsonl(&cfg.output.join(EVAL_LOG)).len(), 4);

    // The final checkpoint is a loadable HF folder with the trainer state beside it.
    let ckpts = list_checkpoints(&cfg.output).unwrap();
    assert_eq!(ckpts.last().unwrap().0, 30);
    assert_eq!(summary.final_checkpoint, ckpts.last().unwrap().1);
    let st = read_state(&summary.final_checkpoint).unwrap();
    assert_eq!((st.step, st.tokens), (30, 30 * 64));
    let reloaded = escale_model::Model::load_dir(&summary.final_checkpoint, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let ds = std::sync::Arc::new(escale_data::IndexedDataset::open(cfg.valid.as_ref().unwrap()).unwrap());
    let again = escale_train::evaluate(&reloaded, &ds, 16, 4, 256).unwrap();
    assert_eq!(again, evals[3], "evaluation of the saved weights reproduces the logged value");
}

/// Runs `cfg` straight through, and again interrupted after `stop` then resumed; the step logs
/// and final weights must be identical.
fn assert_exact_resume(config: serde_json::Value, stop: u64) {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(config, &dir.path().join("model"), 3);
    let data = write_counting_data(&dir.path().join("train"), 32, 40, 16, 3);
    let mut straight = small_run(&model, &data, &dir.path().join("straight"), 6);
    straight.save_interval = 2;
    straight.keep_checkpoints = 2;
    train(&straight, &mut quiet).unwrap();

    let mut interrupted = TrainConfig { output: dir.path().join("interrupted"), ..straight.clone() };
    interrupted.stop_after_step = Some(stop);
    let s = train(&interrupted, &mut quiet).unwrap();
    assert!(s.stopped_early && s.steps == stop);
    // Steps after the last checkpoint were logged but will be redone.
    assert_eq!(read_jsonl(&interrupted.output.join(TRAIN_LOG)).len() as u64, stop);
    interrupted.stop_after_step = None;
    interrupted.resume = escale_train::ResumeMode::Resume;
    let mut resumed_from = None;
    train(&interrupted, &mut |e| {
        if let TrainEvent::Started { start_step, .. } = e {
            resumed_from = Some(start_step)
        }
    })
    .unwrap();
    assert_eq!(resumed_from, Some(stop - stop % 2));

    let a: Vec<_> = read_jsonl(&straight.output.join(TRAIN_LOG)).iter().map(deterministic_fields).collect();
    let b: Vec<_> = read_jsonl(&interrupted.output.join(TRAIN_LOG)).iter().map(deterministic_fields).collect();
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "resumed run differs from the uninterrupted one");
    let wa = std::fs::read(list_checkpoints(&straight.output).unwrap().last().unwrap().1.join("model.safetensors")).unwrap();
    let wb = std::fs::read(list_checkpoints(&interrupted.output).unwrap().last().unwrap().1.join("model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
    // keep_checkpoints = 2: steps 4 and 6 remain.
    let kept: Vec<u64> = list_checkpoints(&straight.output).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, vec![4, 6]);
}


#[test]
fn dense_resume_reproduces_uninterrupted_run_exactly() {
    assert_exact_resume(tiny_llama_config(), 3);
}

#[test]
fn moe_resume_reproduces_uninterrupted_run_exactly() {
    assert_exact_resume(tiny_mixtral_config(), 5);
}

/// Strong load balancing pulls a router that starts out collapsed (every token preferring the
/// same two experts) towards uniform load; without the loss it stays collapsed for longer.
#[test]
fn moe_load_balancing_spreads_a_collapsed_router() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = write_model(tiny_mixtral_config(), &dir.path().join("model"), 5);
    collapse_routers(&model_dir);
    let data = write_counting_data(&dir.path().join("train"), 32, 40, 16, 5);
    let run = |name: &str, aux: f64, convention: LossConvention| {
        let mut cfg = small_run(&model_dir, &data, &dir.path().join(name), 60);
        cfg.aux_loss_coef = aux;
        cfg.moe_loss_convention = convention;
        train(&cfg, &mut quiet).unwrap();
        read_jsonl(&cfg.output.join(TRAIN_LOG))
    };
    let max_share = |rec: &serde_json::Value| -> f64 {
        rec["expert_load"].as_array().unwrap().iter().flat_map(|l| l.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).fold(0.0, f64::max)
    };
    let balanced = run("balanced", 0.5, LossConvention::Megatron);
    let first = &balanced[0];
    // Collapsed start: two experts take (almost) all slots, share ~0.5 each; Megatron aux ~ E/k = 2.
    assert!(max_share(first) > 0.45, "{first}");
    assert!(first["aux_loss"].as_f64().unwrap() > 1.7, "{first}");
    let last = balanced.last().unwrap();
    assert!(max_share(last) < 0.4, "load still collapsed after balancing: {last}");
    assert!(last["aux_loss"].as_f64().unwrap() < 1.3, "{last}");
    assert!(last["z_loss"].as_f64().unwrap() > 0.0);
    let free = run("free", 0.0, LossConvention::Megatron);
    assert!(free.last().unwrap()["aux_loss"].as_f64().unwrap() > last["aux_loss"].as_f64().unwrap());
    // HF convention: logged value is k (=2) when balanced, up to E (=4) when collapsed.
    let hf = run("hf", 0.5, LossConvention::Hf);
    assert!(hf[0]["aux_loss"].as_f64().unwrap() > 3.4, "{}", hf[0]);
}

/// Makes every token route to experts 0 and 1: embedding coordinate 0 becomes a large constant
/// (it dominates the residual stream and stays positive after RMSNorm), and each router reads
/// that coordinate with weight +0.4 for experts 0/1 and -0.4 for experts 2/3 (collapsed, but
/// not so saturated that the softmax has no gradient left).
fn collapse_routers(model_dir: &std::path::Path) {
    use candle_core::{DType, Device, Tensor};
    let model = escale_model::Model::load_dir(model_dir, &Device::Cpu, DType::F32).unwrap();
    for (name, var) in model.named_parameters() {
        let (rows, cols) = match var.dims2() {
            Ok(d) => d,
            Err(_) => continue,
        };
        let mut w: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        if name == "model.embed_tokens.weight" {
            for r in 0..rows {
                w[r * cols] = 3.0;
            }
        } else if name.ends_with("block_sparse_moe.gate.weight") {
            w.iter_mut().for_each(|x| *x = 0.0);
            for r in 0..rows {
                w[r * cols] = if r < 2 { 0.4 } else { -0.4 };
            }
        } else {
            continue;
        }
        var.set(&Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap()).unwrap();
    }
    let opts = escale_formats::WriterOptions { force: true, ..Default::default() };
    model.save(model_dir, escale_formats::DType::F32, &opts, None, |_| Ok(())).unwrap();
}

#[test]
fn non_finite_steps_are_skipped_then_abort() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(tiny_llama_config(), &dir.path().join("model"), 7);
    let data = write_counting_data(&dir.path().join("train"), 16, 40, 16, 7);
    let mut cfg = small_run(&model, &data, &dir.path().join("run"), 20);
    // An absurd learning rate blows the weights up to inf/NaN within a couple of steps.
    cfg.lr = 1e38;
    cfg.min_lr = 0.0;
    cfg.warmup_steps = 0;
    cfg.weight_decay = 0.0;
    cfg.clip = 0.0;
    cfg.max_nonfinite_steps = 3;
    let mut warnings = 0;
    let err = train(&cfg, &mut |e| {
        if let TrainEvent::Warning(_) = e {
            warnings += 1
        }
    })
    .unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { count: 3, .. }), "{err}");
    assert_eq!(warnings, 3);
    let log = read_jsonl(&cfg.output.join(TRAIN_LOG));
    let skipped: Vec<bool> = log.iter().map(|r| r["skipped"].as_bool().unwrap()).collect();
    assert_eq!(skipped[skipped.len() - 3..], [true, true, true]);
    assert!(!skipped[0], "the first step is finite");
}

#[test]
fn clear_errors_for_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(tiny_llama_config(), &dir.path().join("model"), 8);
    let data = write_counting_data(&dir.path().join("train"), 16, 40, 16, 8);
    let base = small_run(&model, &data, &dir.path().join("run"), 2);

    let err = train(&TrainConfig { seq_len: 65, ..base.clone() }, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("seq_len") && err.contains("max_position_embeddings = 64"), "{err}");

    let err = train(&TrainConfig { data: dir.path().join("nope"), ..base.clone() }, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");

    // Token ids beyond the model's vocabulary: data tokenized for another model.
    let wide = write_counting_data(&dir.path().join("wide"), 4, 40, 100, 8);
    let err = train(&TrainConfig { data: wide, ..base.clone() }, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("vocab_size is 64"), "{err}");

    // Existing checkpoints without --resume are refused; resuming them with another model is too.
    train(&base, &mut quiet).unwrap();
    let err = train(&base, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let mut other = tiny_llama_config();
    other["intermediate_size"] = serde_json::json!(24);
    let other = write_model(other, &dir.path().join("other"), 8);
    let err = train(&TrainConfig { model: other, resume: escale_train::ResumeMode::Resume, steps: Some(4), ..base.clone() }, &mut quiet)
        .unwrap_err()
        .to_string();
    assert!(err.contains("architecture") || err.contains("another model"), "{err}");
    // Same model, different hyper-parameters: not the same run.
    let err = train(&TrainConfig { lr: 0.5, resume: escale_train::ResumeMode::Resume, ..base.clone() }, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("different training settings"), "{err}");
}

/// Two micro-batches of 2 accumulate to the same update as one batch of 4 (same windows, in the
/// same order): losses agree to float rounding over several steps.
#[test]
fn gradient_accumulation_matches_the_full_batch() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(tiny_llama_config(), &dir.path().join("model"), 9);
    let data = write_counting_data(&dir.path().join("train"), 32, 40, 16, 9);
    let full = small_run(&model, &data, &dir.path().join("full"), 4);
    let accum = TrainConfig { micro_batch: 2, grad_accum: 2, output: dir.path().join("accum"), ..full.clone() };
    train(&full, &mut quiet).unwrap();
    train(&accum, &mut quiet).unwrap();
    let a = read_jsonl(&full.output.join(TRAIN_LOG));
    let b = read_jsonl(&accum.output.join(TRAIN_LOG));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() < 1e-5, "step {}: {lx} vs {ly}", x["step"]);
        let (gx, gy) = (x["grad_norm"].as_f64().unwrap(), y["grad_norm"].as_f64().unwrap());
        assert!((gx - gy).abs() < 1e-4 * gx, "step {}: grad norm {gx} vs {gy}", x["step"]);
        assert_eq!(x["tokens"], y["tokens"]);
    }
}

/// qwen3 (q/k norms) and qwen3_moe (one dense, one sparse layer) learn, the MoE run logs its
/// losses and loads for the sparse layer only, and the q/k norm weights are trained.
#[test]
fn qwen3_and_qwen3_moe_train_with_moe_losses() {
    for (label, config, moe) in [("qwen3", tiny_qwen3_config(), false), ("qwen3_moe", tiny_qwen3_moe_config(), true)] {
        let dir = tempfile::tempdir().unwrap();
        let model = write_model(config, &dir.path().join("model"), 7);
        let data = write_counting_data(&dir.path().join("train"), 64, 40, 16, 1);
        let valid = write_counting_data(&dir.path().join("valid"), 8, 40, 16, 2);
        let mut cfg = small_run(&model, &data, &dir.path().join("run"), 25);
        cfg.valid = Some(valid);
        cfg.eval_interval = 25;
        cfg.eval_tokens = 256;
        cfg.aux_loss_coef = 0.01;
        let mut evals = Vec::new();
        let summary = train(&cfg, &mut |e| {
            if let TrainEvent::Eval(r) = e {
                evals.push(r.val_loss)
            }
        })
        .unwrap();
        assert!(evals[0] > 3.5 && evals[1] < evals[0] - 1.0, "{label}: validation loss did not fall: {evals:?}");
        let log = read_jsonl(&cfg.output.join(TRAIN_LOG));
        let first = &log[0];
        if moe {
            assert!(first["aux_loss"].as_f64().unwrap() > 0.0 && first["z_loss"].as_f64().unwrap() > 0.0, "{first}");
            assert_eq!(first["expert_load"].as_array().unwrap().len(), 1, "{label}: one sparse layer: {first}");
        } else {
            assert!(first["aux_loss"].is_null(), "{first}");
        }
        let trained = escale_model::Model::load_dir(&summary.final_checkpoint, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let q_norm: Vec<f32> = trained.var("model.layers.1.self_attn.q_norm.weight").unwrap().to_vec1().unwrap();
        assert!(q_norm.iter().any(|w| (w - 1.0).abs() > 1e-3), "{label}: q_norm was not trained: {q_norm:?}");
    }
}
