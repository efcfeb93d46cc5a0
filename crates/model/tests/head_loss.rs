//! The fused LM head + loss (`escale_model::head_loss`) inside whole models: the same loss and the same gradient
//! for every parameter as the unfused path (`forward` logits + composite cross-entropy), with tied and untied
//! embeddings, dense and MoE, f64 and f32; and the evaluation paths that use it against full logits.

mod common;

use candle_core::{DType, Device, Tensor};
use escale_model::evaluate::Evaluator;
use escale_model::{cross_entropy, head_cross_entropy, Model};

fn rows() -> Tensor {
    common::ids(&[&[1, 5, 9, 2, 33, 7, 7, 20, 8, 30], &[3, 3, 14, 0, 36, 11, 25, 4, 19, 18]])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    common::to_f64(a).iter().zip(common::to_f64(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn fused_training_loss_matches_the_unfused_one_for_every_parameter() {
    for (mt, tied) in [("llama", false), ("llama", true), ("mistral", true), ("mixtral", false)] {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-11 } else { 2e-5 };
            let mut cfg = common::tiny_config(mt);
            cfg.tie_word_embeddings = tied;
            let model = Model::init_random(&cfg, 21, &Device::Cpu, dtype).unwrap();
            let ids = rows();
            let input = ids.narrow(1, 0, 9).unwrap();
            let targets = ids.narrow(1, 1, 9).unwrap().contiguous().unwrap();
            let out = model.forward(&input).unwrap();
            let reference = cross_entropy(&out.logits, &targets).unwrap();
            let hid = model.forward_hidden(&input).unwrap();
            let fused = head_cross_entropy(&hid.hidden, model.lm_head_weight(), &targets).unwrap();
            let d = max_diff(&fused, &reference);
            assert!(d <= tol, "{mt} tied={tied} {dtype:?}: loss differs by {d}");
            // Halved like a two-micro-batch accumulation: the eager gradients are rescaled, not reused as is.
            let gr = (reference / 2.0).unwrap().backward().unwrap();
            let gf = (fused / 2.0).unwrap().backward().unwrap();
            for (name, v) in model.named_parameters() {
                let (a, b) = (gf.get(v.as_tensor()), gr.get(v.as_tensor()));
                let (a, b) = (a.unwrap_or_else(|| panic!("{mt}: {name}: no fused gradient")), b.unwrap());
                let scale = common::to_f64(b).iter().fold(0f64, |m, x| m.max(x.abs()));
                let d = max_diff(a, b);
                assert!(d <= tol * (1.0 + scale), "{mt} tied={tied} {dtype:?}: {name} gradient differs by {d} (max {scale})");
            }
        }
    }
}

/// `Evaluator` (chunked logsumexp, no logits) gives the mean NLL computed from full logits, for every batch size.
#[test]
fn evaluator_matches_full_logits_at_every_batch_size() {
    let mut cfg = common::tiny_config("llama");
    cfg.tie_word_embeddings = true;
    let model = Model::init_random(&cfg, 5, &Device::Cpu, DType::F64).unwrap();
    let ids: Vec<u32> = (0..61u32).map(|i| (i * 17 + 3) % 37).collect();
    let window = 8;
    let (mut sum, mut n) = (0.0, 0usize);
    for w in escale_model::text::windows(&ids, window) {
        let t = Tensor::new(w, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&t).unwrap().logits.squeeze(0).unwrap();
        let targets = Tensor::new(&w[1..], &Device::Cpu).unwrap();
        let nll = escale_model::token_nll(&logits.narrow(0, 0, w.len() - 1).unwrap(), &targets).unwrap();
        sum += nll.sum_all().unwrap().to_scalar::<f64>().unwrap();
        n += w.len() - 1;
    }
    for batch in [1, 3, 4] {
        let mut ev = Evaluator::new(&model, window, batch).unwrap();
        ev.push(&ids).unwrap();
        let r = ev.finish().unwrap();
        assert_eq!(r.tokens, n);
        assert!((r.loss - sum / n as f64).abs() < 1e-12, "batch {batch}: {} vs {}", r.loss, sum / n as f64);
    }
}
