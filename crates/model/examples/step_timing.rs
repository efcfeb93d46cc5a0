//! Times forward + backward of one training-shaped batch (the benchmark shape of
//! docs/cpu-training-notes.md: d=256, 6 layers, 8/4 heads, FFN 704, vocab 4096, seq 256, batch 8,
//! f32), dense and 8-expert top-2 MoE. No optimizer step: this measures the engine only.
//!
//! `cargo run --release -p escale-model --example step_timing [-- --moe] [-- --steps N] [-- --malloc] [-- --composite]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use escale_formats::ModelConfig;
use escale_model::{next_token_loss, Model};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let moe = args.iter().any(|a| a == "--moe");
    if args.iter().any(|a| a == "--malloc") {
        escale_model::tune_allocator();
    }
    if args.iter().any(|a| a == "--composite") {
        escale_model::ops::set_fused_kernels(false);
    }
    let steps: usize = args
        .iter()
        .position(|a| a == "--steps")
        .map(|i| args[i + 1].parse().unwrap())
        .unwrap_or(5);
    let mut v = serde_json::json!({"model_type": if moe {"mixtral"} else {"llama"}, "vocab_size": 4096,
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 6, "num_attention_heads": 8,
        "num_key_value_heads": 4, "max_position_embeddings": 256});
    if moe {
        v["num_local_experts"] = 8.into();
        v["num_experts_per_tok"] = 2.into();
    }
    let cfg = ModelConfig::from_json(v, std::path::Path::new("bench")).unwrap();
    let model = Model::init_random(&cfg, 0, &Device::Cpu, DType::F32).unwrap();
    let (b, s) = (8usize, 256usize);
    let ids: Vec<u32> = (0..b * s).map(|i| ((i * 2654435761) % 4096) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap();
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let t0 = Instant::now();
        let out = model.forward(&ids).unwrap();
        let t_fwd = t0.elapsed().as_secs_f64();
        let loss = next_token_loss(&out.logits, &ids).unwrap();
        let grads = loss.backward().unwrap();
        let dt = t0.elapsed().as_secs_f64();
        drop(grads);
        if step > 0 {
            times.push(dt);
        }
        eprintln!("step {step}: {dt:.3} s (forward {t_fwd:.3} s), loss {:.4}", loss.to_scalar::<f32>().unwrap());
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{}: median forward+backward {:.3} s = {:.0} tokens/s (threads: {})",
        if moe { "moe 8x top-2" } else { "dense" },
        med,
        (b * s) as f64 / med,
        candle_core::utils::get_num_threads()
    );
}
