//! MoE auxiliary losses: load balancing (two conventions) and the router z-loss.
//!
//! Notation (spec §5, docs/growth-algorithms.md): per MoE layer, `T` tokens, router logits `z_t` over `E` experts,
//! `p_t = softmax(z_t)`, `n_e` = how many of the `T` tokens picked expert `e` in their top-k
//! (so `sum_e n_e = kT`), `P_e = mean_t p_{t,e}`.
//!
//! * [`LossConvention::Megatron`] (default; the paper trained with FlagScale/Megatron): per layer
//!   `L = E * sum_e n_e/(kT) * P_e`, 1 when balanced; every layer adds `coef * L_layer`.
//! * [`LossConvention::Hf`] (transformers' Mixtral / Qwen2-MoE): one value over all layers' tokens
//!   pooled, `L = E * sum_e n_e/T_all * P_e`, k when balanced, added once as `coef * L`.
//!   The same coefficient is therefore about k/L_layers times weaker per layer than Megatron's.
//! * Router z-loss (ST-MoE; Megatron `z_loss_func`): per layer `mean_t logsumexp(z_t)^2`, every
//!   layer adds `coef * L_z`. transformers has none; escale applies it the same way under both
//!   conventions.
//!
//! `n_e` is a count (no gradient); the gradient flows through `P_e` and the logsumexp. The counts
//! must be the ones the router actually used, so the trainer passes the model's own top-k counts.

use candle_core::{DType, Tensor};
// The model's composite softmax/logsumexp: stable, and built from candle-core primitives that
// record a backward.
use escale_model::ops::{logsumexp_last_dim, softmax_last_dim_composite};
use crate::error::{Result, TrainError};

// A run setting, so it lives with the others in `config` (which builds without the engine).
pub use crate::config::LossConvention;

/// The MoE terms of one forward pass.
pub struct MoeLosses {
    /// What is added to the LM loss: `aux_coef * aux_objective + z_coef * z_objective`.
    pub total: Tensor,
    /// Load-balancing value as logged: Megatron: mean over layers (1 = balanced); HF: the pooled value (k = balanced).
    pub aux: f64,
    /// Router z-loss as logged: mean over layers.
    pub z: f64,
}

/// `sum_e n_e * P_e` for one layer, as a differentiable scalar, and `T`.
fn counts_dot_mean_prob(logits: &Tensor, counts: &[u64]) -> Result<(Tensor, usize)> {
    let (t, e) = logits.dims2()?;
    if counts.len() != e {
        return Err(TrainError::other(format!("MoE loss: {} expert counts for router logits with {e} experts", counts.len())));
    }
    let p_mean = softmax_last_dim_composite(logits)?.mean(0)?;
    let n: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let n = Tensor::from_vec(n, e, logits.device())?.to_dtype(logits.dtype())?;
    Ok(((p_mean * n)?.sum_all()?, t))
}

/// Load-balancing loss per the convention (unscaled). `router_logits[l]`: `[T, E]` for MoE layer
/// `l`; `counts[l][e]` = `n_e`. Returns `(objective, logged value)`: Megatron's objective is the
/// sum over layers (each layer adds its own term), its logged value the mean.
pub fn load_balancing_loss(
    router_logits: &[Tensor],
    counts: &[Vec<u64>],
    top_k: usize,
    convention: LossConvention,
) -> Result<(Tensor, f64)> {
    if router_logits.is_empty() || router_logits.len() != counts.len() {
        return Err(TrainError::other(format!(
            "MoE loss: {} router logit tensors and {} count vectors",
            router_logits.len(),
            counts.len()
        )));
    }
    let e = router_logits[0].dim(1)? as f64;
    match convention {
        LossConvention::Megatron => {
            let mut terms = Vec::with_capacity(router_logits.len());
            for (z, n) in router_logits.iter().zip(counts) {
                let (dot, t) = counts_dot_mean_prob(z, n)?;
                terms.push((dot * (e / (top_k as f64 * t as f64)))?);
            }
            let sum = Tensor::stack(&terms, 0)?.sum_all()?;
            let logged = scalar(&sum)? / terms.len() as f64;
            Ok((sum, logged))
        }
        LossConvention::Hf => {
            // Pooled over layers: P_e is the mean over all T_all tokens; n_e summed over layers.
            let pooled = Tensor::cat(router_logits, 0)?;
            let mut n = vec![0u64; counts[0].len()];
            for layer in counts {
                for (acc, c) in n.iter_mut().zip(layer) {
                    *acc += c;
                }
            }
            let (dot, t_all) = counts_dot_mean_prob(&pooled, &n)?;
            let loss = (dot * (e / t_all as f64))?;
            let logged = scalar(&loss)?;
            Ok((loss, logged))
        }
    }
}

/// Router z-loss: per layer `mean_t logsumexp(z_t)^2`. Returns `(sum over layers, mean over layers)`.
pub fn router_z_loss(router_logits: &[Tensor]) -> Result<(Tensor, f64)> {
    if router_logits.is_empty() {
        return Err(TrainError::other("router z-loss: no MoE layers"));
    }
    let terms = router_logits.iter().map(|z| logsumexp_last_dim(z)?.sqr()?.mean_all().map_err(Into::into)).collect::<Result<Vec<_>>>()?;
    let sum = Tensor::stack(&terms, 0)?.sum_all()?;
    let mean = scalar(&sum)? / terms.len() as f64;
    Ok((sum, mean))
}

/// Both losses, scaled and summed, ready to add to the LM loss.
pub fn moe_losses(
    router_logits: &[Tensor],
    counts: &[Vec<u64>],
    top_k: usize,
    convention: LossConvention,
    aux_coef: f64,
    z_coef: f64,
) -> Result<MoeLosses> {
    let (aux_obj, aux) = load_balancing_loss(router_logits, counts, top_k, convention)?;
    let (z_obj, z) = router_z_loss(router_logits)?;
    let total = ((aux_obj * aux_coef)? + (z_obj * z_coef)?)?;
    Ok(MoeLosses { total, aux, z })
}

/// Top-k expert counts `n_e` computed from router logits on the host (ties go to the lower
/// index). The trainer uses the model's own counts; this is for tests and diagnostics.
pub fn top_k_counts(router_logits: &Tensor, k: usize) -> Result<Vec<u64>> {
    let rows = router_logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let e = rows.first().map_or(0, |r| r.len());
    let mut n = vec![0u64; e];
    for row in rows {
        let mut idx: Vec<usize> = (0..e).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in idx.iter().take(k) {
            n[i] += 1;
        }
    }
    Ok(n)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The spec's worked example (§5): E=4, k=2, T=3.
    fn example() -> Tensor {
        let z = [2.0, 1.0, 0.0, -1.0, 0.0, 0.5, 3.0, -0.5, 1.0, 2.0, 0.5, 0.0f64];
        Tensor::from_slice(&z, (3, 4), &Device::Cpu).unwrap()
    }

    fn round4(x: f64) -> f64 {
        (x * 1e4).round() / 1e4
    }

    #[test]
    fn worked_example_counts_and_mean_probs() {
        let z = example();
        assert_eq!(top_k_counts(&z, 2).unwrap(), vec![2, 3, 1, 0]);
        let p = softmax_last_dim_composite(&z).unwrap().mean(0).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(p.iter().map(|&x| round4(x)).collect::<Vec<_>>(), vec![0.3000, 0.2956, 0.3590, 0.0455]);
        let lse = logsumexp_last_dim(&z).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(lse.iter().map(|&x| round4(x)).collect::<Vec<_>>(), vec![2.4402, 3.1502, 2.5460]);
    }

    #[test]
    fn worked_example_loss_values() {
        let z = example();
        let n = top_k_counts(&z, 2).unwrap();
        let (_, hf) = load_balancing_loss(std::slice::from_ref(&z), std::slice::from_ref(&n), 2, LossConvention::Hf).unwrap();
        let (_, meg) = load_balancing_loss(std::slice::from_ref(&z), std::slice::from_ref(&n), 2, LossConvention::Megatron).unwrap();
        let (_, lz) = router_z_loss(&[z]).unwrap();
        assert_eq!(round4(hf), 2.4609);
        assert_eq!(round4(meg), 1.2304);
        assert_eq!(round4(lz), 7.4535);
    }

    /// Two identical layers: Megatron adds each layer's term (objective doubles, logged mean
    /// stays); HF pools the tokens (value unchanged, since both halves are the same).
    #[test]
    fn conventions_aggregate_layers_differently() {
        let z = example();
        let n = top_k_counts(&z, 2).unwrap();
        let layers = [z.clone(), z];
        let counts = [n.clone(), n];
        let (obj, logged) = load_balancing_loss(&layers, &counts, 2, LossConvention::Megatron).unwrap();
        assert!((scalar(&obj).unwrap() - 2.0 * logged).abs() < 1e-12);
        assert_eq!(round4(logged), 1.2304);
        let (obj, logged) = load_balancing_loss(&layers, &counts, 2, LossConvention::Hf).unwrap();
        assert_eq!(round4(scalar(&obj).unwrap()), 2.4609);
        assert_eq!(round4(logged), 2.4609);
        let (zsum, zmean) = router_z_loss(&layers).unwrap();
        assert!((scalar(&zsum).unwrap() - 2.0 * zmean).abs() < 1e-12);
    }

    #[test]
    fn balanced_routing_gives_one_and_k() {
        // Uniform logits: P_e = 1/E; counts spread evenly (T=4, E=4, k=2 -> n_e = 2).
        let z = Tensor::zeros((4, 4), DType::F64, &Device::Cpu).unwrap();
        let n = vec![2, 2, 2, 2];
        let (_, meg) = load_balancing_loss(std::slice::from_ref(&z), std::slice::from_ref(&n), 2, LossConvention::Megatron).unwrap();
        let (_, hf) = load_balancing_loss(&[z], &[n], 2, LossConvention::Hf).unwrap();
        assert!((meg - 1.0).abs() < 1e-12 && (hf - 2.0).abs() < 1e-12, "{meg} {hf}");
    }

    /// The gradient flows into the router logits and matches central finite differences.
    #[test]
    fn gradients_match_finite_differences() {
        let z0 = example();
        let n = top_k_counts(&z0, 2).unwrap();
        let f = |z: &Tensor| -> f64 {
            let l = moe_losses(std::slice::from_ref(z), std::slice::from_ref(&n), 2, LossConvention::Megatron, 0.3, 0.7).unwrap();
            scalar(&l.total).unwrap()
        };
        let var = Var::from_tensor(&z0).unwrap();
        let l = moe_losses(std::slice::from_ref(var.as_tensor()), std::slice::from_ref(&n), 2, LossConvention::Megatron, 0.3, 0.7).unwrap();
        let grads = l.total.backward().unwrap();
        let g = grads.get(var.as_tensor()).expect("router logits receive a gradient");
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = z0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..base.len() {
            let bump = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                f(&Tensor::from_vec(v, (3, 4), &Device::Cpu).unwrap())
            };
            let fd = (bump(1e-6) - bump(-1e-6)) / 2e-6;
            assert!((fd - g[i]).abs() < 1e-6, "logit {i}: fd {fd} vs autograd {}", g[i]);
        }
    }
}
