//! Training steps through megatron-core's own machinery (its DistributedDataParallel, distributed
//! optimizer and `get_forward_backward_func`, on CPU with gloo) on an exported checkpoint: the
//! step-1 loss equals escale's in-process loss on the same weights and tokens (1e-4), and three
//! AdamW steps with clipping follow PyTorch's AdamW (the transformers oracle) step for step.

mod common;

use std::ffi::OsString;

use candle_core::{DType, Device, Tensor};
use escale_megatron::{export, ExportOptions};
use escale_testkit::{require_oracle, AdamWSpec, Family, TinySpec};

fn batch() -> Vec<Vec<u32>> {
    (0..3u32).map(|s| (0..12u32).map(|i| (s * 37 + i * 11 + 5) % 128).collect()).collect()
}

#[test]
fn megatron_core_training_steps_match_escale_and_pytorch() {
    let bridge = require_megatron!();
    let oracle = require_oracle!();
    let hf = oracle.make_tiny(&TinySpec { seed: 9, ..TinySpec::new(Family::Llama) });
    let tmp = tempfile::tempdir().unwrap();
    let exported = tmp.path().join("mcore");
    export(&hf, &exported, &bridge, &ExportOptions::default(), &|_| {}).unwrap();

    let spec = AdamWSpec { lr: 1e-2, weight_decay: 0.1, max_grad_norm: Some(0.5), steps: 3, ..AdamWSpec::default() };
    let ids_file = tmp.path().join("ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&batch()).unwrap()).unwrap();
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        exported.join(escale_megatron::MODEL_FILE).into(),
        "--checkpoint".into(),
        escale_megatron::checkpoint_iteration_dir(&exported).unwrap().into(),
        "--ids".into(),
        ids_file.into(),
        "--distributed-optimizer".into(),
    ];
    for (flag, v) in [("--steps", spec.steps as f64), ("--lr", spec.lr), ("--weight-decay", spec.weight_decay), ("--beta1", spec.beta1), ("--beta2", spec.beta2), ("--eps", spec.eps), ("--clip-grad", spec.max_grad_norm.unwrap())] {
        args.push(flag.into());
        args.push(v.to_string().into());
    }
    let result = bridge.run("train-steps", &args).unwrap();
    let steps = result["steps"].as_array().unwrap();

    // escale's in-process loss on the same weights and tokens.
    let model = escale_model::Model::load_dir(&hf, &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::from_vec(batch().concat(), (3, 12), &Device::Cpu).unwrap();
    let ours = escale_model::next_token_loss(&model.forward(&ids).unwrap().logits, &ids).unwrap().to_scalar::<f32>().unwrap() as f64;
    let first = steps[0]["loss"].as_f64().unwrap();
    println!("step-1 loss: megatron-core {first:.6}, escale {ours:.6}");
    assert!((first - ours).abs() < 1e-4, "step-1 loss: megatron-core {first} vs escale {ours}");

    let torch = oracle.adamw_step(&hf, &batch(), &spec);
    for (i, (m, t)) in steps.iter().zip(&torch.steps).enumerate() {
        let (loss, norm) = (m["loss"].as_f64().unwrap(), m["grad_norm"].as_f64().unwrap());
        println!("step {}: loss megatron-core {loss:.6} torch {:.6}; grad norm {norm:.6} vs {:.6}", i + 1, t.loss, t.grad_norm);
        assert!(m["update_ok"].as_bool().unwrap(), "step {} skipped by megatron's optimizer", i + 1);
        assert!((loss - t.loss).abs() < 1e-4, "step {} loss {loss} vs PyTorch {}", i + 1, t.loss);
        assert!((norm - t.grad_norm).abs() < 1e-4 * t.grad_norm.max(1.0), "step {} grad norm {norm} vs PyTorch {}", i + 1, t.grad_norm);
    }
    assert_eq!(steps.len(), torch.steps.len());
    assert!(steps[2]["loss"].as_f64().unwrap() < first, "three steps on one batch lower its loss");
}
