//! Token generation with a KV cache: greedy or temperature / top-p (nucleus) sampling.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::model::{KvCache, Model};

#[derive(Clone, Debug)]
pub enum Decoding {
    /// Always the most likely token (first index on ties, like `torch.argmax`).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of tokens whose
    /// probability reaches `top_p` (at least one token is always kept). Reproducible for a seed.
    Sample { temperature: f64, top_p: f64, seed: u64 },
}

/// Picks the next token from one row of logits.
pub fn pick(logits: &[f32], decoding: &Decoding, rng: &mut rand::rngs::StdRng) -> u32 {
    match decoding {
        Decoding::Greedy => {
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            best as u32
        }
        Decoding::Sample { temperature, top_p, .. } => {
            let t = temperature.max(1e-6);
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut p: Vec<(usize, f64)> =
                logits.iter().enumerate().map(|(i, &l)| (i, ((l as f64 - m) / t).exp())).collect();
            let z: f64 = p.iter().map(|x| x.1).sum();
            p.iter_mut().for_each(|x| x.1 /= z);
            p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut keep = 0;
            let mut cum = 0.0;
            for (_, q) in &p {
                keep += 1;
                cum += q;
                if cum >= *top_p {
                    break;
                }
            }
            let u: f64 = rng.random::<f64>() * cum;
            let mut acc = 0.0;
            for (i, q) in &p[..keep] {
                acc += q;
                if u < acc {
                    return *i as u32;
                }
            }
            p[keep - 1].0 as u32
        }
    }
}

/// Generates up to `max_new` tokens after `prompt` (which must be non-empty), stopping after a token
/// in `stop`. Generation also stops when the context reaches `max_position_embeddings` (the
/// returned sequence is then shorter than asked). `on_token` sees each new token as it is made.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_new: usize,
    decoding: &Decoding,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(ModelError::input("the prompt has no tokens"));
    }
    let seed = match decoding {
        Decoding::Sample { seed, .. } => *seed,
        Decoding::Greedy => 0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cache = KvCache::new(model);
    let max_pos = model.config.max_position_embeddings;
    let mut out = Vec::new();
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    while out.len() < max_new && cache.len() + input.dim(1)? <= max_pos {
        // No graph: otherwise the KV cache would keep every step's activations alive.
        let logits = crate::grad::no_grad(|| model.forward_cached(&input, &mut cache))?.logits;
        let s = logits.dim(1)?;
        let last: Vec<f32> = logits.narrow(1, s - 1, 1)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let next = pick(&last, decoding, &mut rng);
        out.push(next);
        on_token(next);
        if stop.contains(&next) {
            break;
        }
        input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(pick(&[0.0, 3.0, 3.0, 1.0], &Decoding::Greedy, &mut rng), 1);
    }

    #[test]
    fn top_p_restricts_to_nucleus_and_seed_reproduces() {
        // probs ~ (0.665, 0.245, 0.09): top_p 0.5 keeps only token 0; 0.8 keeps {0, 1}.
        let logits = [2.0f32, 1.0, 0.0];
        let d = |p| Decoding::Sample { temperature: 1.0, top_p: p, seed: 7 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!((0..200).all(|_| pick(&logits, &d(0.5), &mut rng) == 0));
        let draws: Vec<u32> = (0..400).map(|_| pick(&logits, &d(0.8), &mut rng)).collect();
        assert!(draws.iter().all(|&t| t < 2) && draws.contains(&1) && draws.contains(&0));
        let frac1 = draws.iter().filter(|&&t| t == 1).count() as f64 / 400.0;
        assert!((frac1 - 0.245 / 0.91).abs() < 0.08, "{frac1}");
        let mut a = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = rand::rngs::StdRng::seed_from_u64(3);
        let ra: Vec<u32> = (0..50).map(|_| pick(&logits, &d(1.0), &mut a)).collect();
        let rb: Vec<u32> = (0..50).map(|_| pick(&logits, &d(1.0), &mut b)).collect();
        assert_eq!(ra, rb);
    }
}
