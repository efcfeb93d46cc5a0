//! AdamW with decoupled weight decay, and gradient clipping by global norm.
//!
//! The update follows PyTorch's single-tensor `torch.optim.AdamW` operation for operation, so
//! a step here matches PyTorch's to f32 rounding (checked against the oracle in the tests):
//!
//! ```text
//! p  <- p * (1 - lr * wd)                      (decoupled decay; skipped for 1-D tensors)
//! m  <- m + (1 - b1) * (g - m)
//! v  <- b2 * v + (1 - b2) * g^2
//! p  <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! 1-D parameters (RMSNorm weights and biases) get no weight decay: shrinking a norm gain or a
//! bias towards zero is not a regulariser, it just changes the function.
//! Everything is tensor ops on the parameter's own device, so the same code runs on a GPU.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

struct Slot {
    name: String,
    var: Var,
    /// First moment (`exp_avg`).
    m: Tensor,
    /// Second moment (`exp_avg_sq`).
    v: Tensor,
    decay: bool,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates taken so far (PyTorch's `state["step"]`).
    step: u64,
}

impl AdamW {
    /// Optimises exactly the given parameters, in this order (gradients are passed in the same order).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<AdamW> {
        let mut slots = Vec::with_capacity(params.len());
        for (name, var) in params {
            let m = var.as_tensor().zeros_like()?;
            let v = var.as_tensor().zeros_like()?;
            let decay = var.as_tensor().rank() >= 2;
            slots.push(Slot { name, var, m, v, decay });
        }
        Ok(AdamW { cfg, slots, step: 0 })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Whether parameter `name` is weight-decayed (false for 1-D tensors).
    pub fn decays(&self, name: &str) -> Option<bool> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.decay)
    }

    /// One update with learning rate `lr`. `grads[i]` belongs to the `i`-th parameter given to `new`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(TrainError::other(format!(
                "AdamW: {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let AdamWConfig { beta1: b1, beta2: b2, eps, weight_decay: wd } = self.cfg;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let g = g.to_dtype(slot.m.dtype())?;
            let mut p = slot.var.as_tensor().detach();
            if slot.decay && wd != 0.0 {
                p = p.affine(1.0 - lr * wd, 0.0)?;
            }
            slot.m = (&slot.m + ((&g - &slot.m)? * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((slot.v.sqrt()? / bias2_sqrt)? + eps)?;
            let update = ((&slot.m / denom)? * step_size)?;
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`), for checkpoints.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("exp_avg.{}", s.name), s.m.clone());
            out.insert(format!("exp_avg_sq.{}", s.name), s.v.clone());
        }
        out
    }

    /// Writes the moments to a safetensors file (bit-exact, in the moments' dtype).
    pub fn save_state(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.state_tensors(), path)
            .map_err(|e| TrainError::checkpoint(path, format!("writing optimizer state: {e}")))
    }

    /// Restores moments saved by [`AdamW::save_state`] and the step counter. Every parameter must
    /// be present with its exact shape: a state from another model is refused, naming the tensor.
    pub fn load_state(&mut self, path: &Path, steps_taken: u64) -> Result<()> {
        let device = match self.slots.first() {
            Some(s) => s.var.device().clone(),
            None => return Ok(()),
        };
        let mut saved = candle_core::safetensors::load(path, &device)
            .map_err(|e| TrainError::checkpoint(path, format!("reading optimizer state: {e}")))?;
        for s in &mut self.slots {
            for (key, dst) in [(format!("exp_avg.{}", s.name), &mut s.m), (format!("exp_avg_sq.{}", s.name), &mut s.v)] {
                let t = saved
                    .remove(&key)
                    .ok_or_else(|| TrainError::checkpoint(path, format!("tensor `{key}` missing: state from another model or freezing setup?")))?;
                if t.dims() != dst.dims() {
                    return Err(TrainError::checkpoint(
                        path,
                        format!("tensor `{key}` has shape {:?}, the model needs {:?}", t.dims(), dst.dims()),
                    ));
                }
                *dst = t.to_dtype(dst.dtype())?;
            }
        }
        if let Some(extra) = saved.keys().next() {
            return Err(TrainError::checkpoint(path, format!("tensor `{extra}` matches no trainable parameter of this model")));
        }
        self.step = steps_taken;
        Ok(())
    }
}

/// L2 norm of all gradients together, accumulated in f64 (NaN/inf propagate, which is how the
/// trainer detects a bad step).
pub fn global_grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sum = 0.0f64;
    for g in grads {
        let sq = g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        sum += sq;
    }
    Ok(sum.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)`, applied only when below 1). Returns the pre-clip norm.
/// `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn var(v: &[f64], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn values(v: &Var) -> Vec<f64> {
        v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    /// Two steps on a 2-D and a 1-D parameter against the AdamW formula evaluated by hand in f64.
    #[test]
    fn two_steps_match_the_formula_and_skip_decay_on_1d() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5 };
        let w = var(&[1.0, -2.0, 0.5, 3.0], &[2, 2]);
        let b = var(&[0.25, -0.75], &[2]);
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg.clone()).unwrap();
        assert_eq!(opt.decays("w"), Some(true));
        assert_eq!(opt.decays("b"), Some(false));
        let gw = [[0.1, -0.2, 0.3, 0.0], [0.05, 0.1, -0.1, 0.2]];
        let gb = [[1.0, -1.0], [0.5, 2.0]];
        let lrs = [0.1, 0.05];
        // Reference, scalar by scalar.
        let mut rw = [1.0, -2.0, 0.5, 3.0];
        let mut rb = [0.25, -0.75];
        let (mut mw, mut vw, mut mb, mut vb) = ([0.0; 4], [0.0; 4], [0.0; 2], [0.0; 2]);
        for t in 0..2 {
            let tg = [
                Tensor::from_slice(&gw[t], (2, 2), &Device::Cpu).unwrap(),
                Tensor::from_slice(&gb[t], 2, &Device::Cpu).unwrap(),
            ];
            opt.step(&tg, lrs[t]).unwrap();
            let step = (t + 1) as i32;
            let upd = |p: &mut f64, m: &mut f64, v: &mut f64, g: f64, decay: bool| {
                if decay {
                    *p *= 1.0 - lrs[t] * cfg.weight_decay;
                }
                *m = 0.9 * *m + 0.1 * g;
                *v = 0.99 * *v + 0.01 * g * g;
                let mh = *m / (1.0 - 0.9f64.powi(step));
                let vh = *v / (1.0 - 0.99f64.powi(step));
                *p -= lrs[t] * mh / (vh.sqrt() + 1e-8);
            };
            for i in 0..4 {
                upd(&mut rw[i], &mut mw[i], &mut vw[i], gw[t][i], true);
            }
            for i in 0..2 {
                upd(&mut rb[i], &mut mb[i], &mut vb[i], gb[t][i], false);
            }
        }
        for (a, e) in values(&w).iter().zip(rw).chain(values(&b).iter().zip(rb)) {
            assert!((a - e).abs() < 1e-12, "{a} vs {e}");
        }
        assert_eq!(opt.steps_taken(), 2);
    }

    #[test]
    fn state_round_trips_and_rejects_other_models() {
        let dir = tempfile::tempdir().unwrap();
        let w = var(&[1.0, 2.0], &[1, 2]);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        opt.step(&[Tensor::from_slice(&[0.5f64, -0.5], (1, 2), &Device::Cpu).unwrap()], 0.01).unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save_state(&path).unwrap();

        let w2 = var(&[1.0, 2.0], &[1, 2]);
        let mut again = AdamW::new(vec![("w".into(), w2)], AdamWConfig::default()).unwrap();
        again.load_state(&path, 1).unwrap();
        for (k, t) in opt.state_tensors() {
            let u = &again.state_tensors()[&k];
            assert_eq!(t.to_vec2::<f64>().unwrap(), u.to_vec2::<f64>().unwrap(), "{k}");
        }

        let other = var(&[1.0, 2.0, 3.0], &[1, 3]);
        let mut wrong = AdamW::new(vec![("w".into(), other)], AdamWConfig::default()).unwrap();
        let err = wrong.load_state(&path, 1).unwrap_err().to_string();
        assert!(err.contains("exp_avg.w") && err.contains("[1, 3]"), "{err}");
        let renamed = var(&[1.0, 2.0], &[1, 2]);
        let mut wrong = AdamW::new(vec![("x".into(), renamed)], AdamWConfig::default()).unwrap();
        assert!(wrong.load_state(&path, 1).unwrap_err().to_string().contains("exp_avg.x"));
    }

    #[test]
    fn clipping_scales_to_max_norm_only_when_above() {
        let mk = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let mut g = vec![mk(&[3.0, 0.0]), mk(&[0.0, 4.0])];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let after = global_grad_norm(&g).unwrap();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-6, "{after}");
        let mut small = vec![mk(&[0.3, 0.4])];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
        let mut bad = vec![mk(&[f32::NAN, 1.0])];
        assert!(clip_grad_norm(&mut bad, 1.0).unwrap().is_nan());
        let _ = DType::F32;
    }
}
