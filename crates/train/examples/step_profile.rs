//! Times the parts of one training step (forward, loss, backward, optimizer) on a model folder
//! with random tokens, and how many cores each part kept busy (CPU time / wall time): `cargo run --release -p escale-train --example step_profile -- MODEL [SEQ] [BATCH]`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use escale_model::Model;
use escale_train::{AdamW, AdamWConfig};

fn main() {
    escale_train::tune_runtime();
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let seq: usize = args.get(2).map_or(256, |s| s.parse().unwrap());
    let batch: usize = args.get(3).map_or(8, |s| s.parse().unwrap());
    let model = Model::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let params = model.named_parameters();
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
    let v = model.config.vocab_size as u32;
    for it in 0..4 {
        let ids: Vec<u32> = (0..batch * (seq + 1)).map(|i| (i as u32).wrapping_mul(2654435761u32) % v).collect();
        let w = Tensor::from_vec(ids, (batch, seq + 1), &Device::Cpu).unwrap();
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = model.forward_hidden(&w.narrow(1, 0, seq).unwrap()).unwrap();
        let (t1, c1) = (Instant::now(), cpu_seconds());
        println!("iter {it}: memory after forward: {}", memory());
        // The trainer's fused head + loss: its time includes the head's gradients, computed in the same pass.
        let targets = w.narrow(1, 1, seq).unwrap().contiguous().unwrap();
        let loss = escale_model::head_cross_entropy(&out.hidden, model.lm_head_weight(), &targets).unwrap();
        let _ = loss.to_scalar::<f32>().unwrap();
        let (t2, c2) = (Instant::now(), cpu_seconds());
        let g = loss.backward().unwrap();
        let (t3, c3) = (Instant::now(), cpu_seconds());
        println!("iter {it}: memory after backward: {}", memory());
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| g.get(p.as_tensor()).unwrap().clone()).collect();
        opt.step(&grads, 1e-3).unwrap();
        let (t4, c4) = (Instant::now(), cpu_seconds());
        let total = (t4 - t0).as_secs_f64();
        println!("iter {it}: memory after the step: {}", memory());
        println!(
            "iter {it}: forward {:.3}s loss {:.3}s backward {:.3}s adamw {:.3}s total {:.3}s = {:.0} tok/s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64(),
            total,
            (batch * seq) as f64 / total
        );
        let busy = |c: f64, t: std::time::Duration| c / t.as_secs_f64();
        println!(
            "iter {it}: cores busy: forward {:.2} loss {:.2} backward {:.2} adamw {:.2}",
            busy(c1 - c0, t1 - t0),
            busy(c2 - c1, t2 - t1),
            busy(c3 - c2, t3 - t2),
            busy(c4 - c3, t4 - t3)
        );
    }
}

/// CPU time (user + system) of the whole process so far, all threads, from /proc/self/stat (in
/// clock ticks of 10 ms; Linux only, 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces): utime and stime
    // are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<f64>() / 100.0
}

/// Resident memory now and its peak so far (VmRSS, VmHWM from /proc/self/status; Linux only).
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).map_or("?".into(), |l| l[k.len()..].trim().to_string());
    format!("rss {} peak {}", field("VmRSS:"), field("VmHWM:"))
}
