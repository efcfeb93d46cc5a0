//! Training-throughput measurement for the benchmark harness (bench/train/run.sh): the real
//! training loop (`escale_train::train`) on a random LLaMA-style model and random tokens, same
//! shapes as bench/train/torch_reference.py. Prints one JSON object.
//!
//! `cargo run --release -p escale-train --example bench_train -- [--steps N] [--warmup N]
//!  [--hidden 256] [--layers 6] [--heads 8] [--kv-heads 4] [--ffn 704] [--vocab 4096]
//!  [--seq-len 256] [--batch 8] [--experts E --top-k K] [--tied 0|1] [--threads N] [--peak-gflops 160]`
//!
//! `tokens_per_s` is the median over the measured steps of the trainer's own per-step figure
//! (`StepRecord::tokens_per_s`: the whole step, sampling to logging, as `escale train` runs it).

use std::collections::HashMap;

use candle_core::{DType, Device};
use escale_formats::{ModelConfig, WriterOptions};
use escale_model::Model;
use escale_train::{train, TrainConfig, TrainEvent};
use serde_json::json;

fn main() {
    escale_train::tune_runtime();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut opt: HashMap<String, f64> = [
        ("steps", 10.0), ("warmup", 2.0), ("hidden", 256.0), ("layers", 6.0), ("heads", 8.0), ("kv-heads", 4.0),
        ("ffn", 704.0), ("vocab", 4096.0), ("seq-len", 256.0), ("batch", 8.0), ("experts", 0.0), ("top-k", 2.0),
        ("tied", 0.0), ("threads", 0.0), ("peak-gflops", 160.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for pair in argv.chunks(2) {
        let key = pair[0].trim_start_matches("--").to_string();
        assert!(opt.contains_key(&key), "unknown option --{key}");
        opt.insert(key, pair.get(1).expect("option value").parse().expect("numeric option"));
    }
    let o = |k: &str| opt[k] as usize;
    // Before any tensor work: the model's random init below would otherwise start rayon's pool first.
    escale_model::set_threads((o("threads") > 0).then(|| o("threads")));
    let mut config = json!({"model_type": "llama", "vocab_size": o("vocab"), "hidden_size": o("hidden"),
        "intermediate_size": o("ffn"), "num_hidden_layers": o("layers"), "num_attention_heads": o("heads"),
        "num_key_value_heads": o("kv-heads"), "max_position_embeddings": o("seq-len"), "initializer_range": 0.02,
        "tie_word_embeddings": o("tied") != 0});
    if o("experts") > 0 {
        config["model_type"] = json!("mixtral");
        config["num_local_experts"] = json!(o("experts"));
        config["num_experts_per_tok"] = json!(o("top-k"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("model");
    let cfg = ModelConfig::from_json(config, &model_dir.join("config.json")).expect("bench config");
    let model = Model::init_random(&cfg, 0, &Device::Cpu, DType::F32).expect("init");
    model.save(&model_dir, escale_formats::DType::F32, &WriterOptions::default(), None, |_| Ok(())).expect("save");
    drop(model);
    // Random tokens: throughput does not depend on their values.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let tokens_needed = (o("steps") + o("warmup") + 1) * o("batch") * o("seq-len") + 1;
    let docs: Vec<Vec<u32>> = vec![(0..tokens_needed)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % o("vocab") as u64) as u32
        })
        .collect()];
    let data = dir.path().join("data");
    escale_data::indexed::write_dataset(&data, escale_data::DType::I32, &docs).expect("dataset");

    let run = TrainConfig {
        model: model_dir,
        data,
        output: dir.path().join("run"),
        seq_len: o("seq-len"),
        micro_batch: o("batch"),
        steps: Some((o("steps") + o("warmup")) as u64),
        lr: 3e-4,
        threads: (o("threads") > 0).then(|| o("threads")),
        ..TrainConfig::default()
    };
    let mut rates = Vec::new();
    let mut flops_per_step = 0.0;
    train(&run, &mut |e| {
        if let TrainEvent::Step(r) = e {
            rates.push(r.tokens_per_s);
            flops_per_step = r.flops / r.step as f64;
        }
    })
    .expect("training");
    let mut measured: Vec<f64> = rates[o("warmup")..].to_vec();
    measured.sort_by(f64::total_cmp);
    let median = measured[measured.len() / 2];
    let tokens_per_step = (o("batch") * o("seq-len")) as f64;
    let achieved_gflops = flops_per_step / tokens_per_step * median / 1e9;
    println!(
        "{}",
        json!({
            "impl": "escale (candle)",
            "threads": candle_core::utils::get_num_threads(),
            "steps": measured.len(),
            "tokens_per_s": median,
            "median_step_s": tokens_per_step / median,
            "model_gflops_per_s": achieved_gflops,
            "mfu": achieved_gflops / opt["peak-gflops"],
            "flops_per_token": flops_per_step / tokens_per_step,
        })
    );
}
