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
//!
//! On the CPU (f32/f64) the whole update, gradient-clipping scale included, is one pass over each
//! parameter that writes the weights and both moments in place, spread over rayon's threads: the
//! tensor-op form below it allocates about a dozen temporaries the size of the model per step.
//! The fused pass applies the same operations in the same order with the same scalar roundings
//! (candle's `affine` casts its f64 factors to the element type), so both forms give bit-identical
//! results (tested). Other devices and dtypes use the tensor ops.

use std::collections::HashMap;
use std::path::Path;

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;
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
        self.step_scaled(grads, lr, None)
    }

    /// One update with the gradients multiplied by `grad_scale` first (the clipping factor from
    /// [`clip_scale`]; `None` = unscaled): the same result as scaling the gradients with
    /// [`clip_grad_norm`] and then calling [`AdamW::step`], without the extra pass and copies.
    pub fn step_scaled(&mut self, grads: &[Tensor], lr: f64, grad_scale: Option<f64>) -> Result<()> {
        let scalars = self.begin_step(grads, lr)?;
        // Parameters in parallel, and each large one in parallel chunks (MoE has many small tensors).
        self.slots.par_iter_mut().zip(grads.par_iter()).try_for_each(|(slot, g)| {
            if !fusable(slot, g) {
                return update_with_tensor_ops(slot, g, &scalars, grad_scale);
            }
            match slot.m.dtype() {
                DType::F32 => update_in_place::<f32>(slot, g, &scalars, grad_scale),
                _ => update_in_place::<f64>(slot, g, &scalars, grad_scale),
            }
        })
    }

    /// The tensor-op form of [`AdamW::step`] on every device (the reference the fused CPU pass is
    /// tested against, bit for bit).
    #[doc(hidden)]
    pub fn step_with_tensor_ops(&mut self, grads: &[Tensor], lr: f64, grad_scale: Option<f64>) -> Result<()> {
        let scalars = self.begin_step(grads, lr)?;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            update_with_tensor_ops(slot, g, &scalars, grad_scale)?;
        }
        Ok(())
    }

    /// Checks the gradient count, advances the step counter and returns this step's scalars.
    fn begin_step(&mut self, grads: &[Tensor], lr: f64) -> Result<StepScalars> {
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
        Ok(StepScalars {
            decay: (wd != 0.0).then_some(1.0 - lr * wd),
            one_minus_b1: 1.0 - b1,
            b2,
            one_minus_b2: 1.0 - b2,
            bias2_sqrt: (1.0 - b2.powi(self.step as i32)).sqrt(),
            eps,
            step_size: lr / bias1,
        })
    }

    /// Moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`), for checkpoints. They share
    /// storage with the optimizer's own (the CPU update writes in place): copy them to keep a snapshot
    /// across steps.
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

/// The scalars of one AdamW step, in f64 (each use casts them as candle's `affine` does).
struct StepScalars {
    /// `1 - lr * wd` for decayed (2-D+) parameters; `None` without weight decay.
    decay: Option<f64>,
    one_minus_b1: f64,
    b2: f64,
    one_minus_b2: f64,
    bias2_sqrt: f64,
    eps: f64,
    step_size: f64,
}

/// One parameter's update as candle tensor ops (any device, any float dtype).
fn update_with_tensor_ops(slot: &mut Slot, g: &Tensor, k: &StepScalars, grad_scale: Option<f64>) -> Result<()> {
    let mut g = g.to_dtype(slot.m.dtype())?;
    if let Some(c) = grad_scale {
        g = (g * c)?;
    }
    let mut p = slot.var.as_tensor().detach();
    if let (true, Some(decay)) = (slot.decay, k.decay) {
        p = p.affine(decay, 0.0)?;
    }
    slot.m = (&slot.m + ((&g - &slot.m)? * k.one_minus_b1)?)?;
    slot.v = ((&slot.v * k.b2)? + (g.sqr()? * k.one_minus_b2)?)?;
    let denom = ((slot.v.sqrt()? / k.bias2_sqrt)? + k.eps)?;
    let update = ((&slot.m / denom)? * k.step_size)?;
    slot.var.set(&(p - update)?)?;
    Ok(())
}

/// Whether the fused in-place pass applies: CPU, f32 or f64 throughout, contiguous weights and moments.
fn fusable(slot: &Slot, g: &Tensor) -> bool {
    let p = slot.var.as_tensor();
    matches!(p.device(), Device::Cpu)
        && matches!(p.dtype(), DType::F32 | DType::F64)
        && [g.dtype(), slot.m.dtype(), slot.v.dtype()].iter().all(|&d| d == p.dtype())
        && g.dims() == p.dims()
        && [p, &slot.m, &slot.v].iter().all(|t| t.is_contiguous())
}

/// Element types of the fused pass.
trait HostFloat:
    candle_core::WithDType + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self>
{
    fn sqrt(self) -> Self;
    fn host_slice(s: &CpuStorage) -> Option<&[Self]>;
    fn host_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn square_f64(self) -> f64 {
        let x = self.to_f64();
        x * x
    }
}

impl HostFloat for f32 {
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn host_slice(s: &CpuStorage) -> Option<&[f32]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn host_slice_mut(s: &mut CpuStorage) -> Option<&mut [f32]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl HostFloat for f64 {
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn host_slice(s: &CpuStorage) -> Option<&[f64]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn host_slice_mut(s: &mut CpuStorage) -> Option<&mut [f64]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// Elements per parallel work item: large enough to amortise the hand-off, small enough that a
/// 256x704 matrix still splits across two cores.
const CHUNK: usize = 1 << 15;

/// Runs `f` on the contiguous elements of `t`, mutably, in place (through candle's in-place op,
/// which holds the tensor's storage lock for the duration).
fn with_host_mut<T: HostFloat, R>(t: &Tensor, f: impl FnOnce(&mut [T]) -> candle_core::Result<R>) -> Result<R> {
    struct Op<T, F, R> {
        f: RefCell<Option<F>>,
        out: RefCell<Option<candle_core::Result<R>>>,
        _elem: std::marker::PhantomData<fn() -> T>,
    }
    impl<T: HostFloat, R, F: FnOnce(&mut [T]) -> candle_core::Result<R>> InplaceOp1 for Op<T, F, R> {
        fn name(&self) -> &'static str {
            "escale-adamw-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("in-place AdamW needs contiguous tensors".into()))?;
            let data = T::host_slice_mut(storage).ok_or_else(|| candle_core::Error::Msg("in-place AdamW: unexpected dtype".into()))?;
            let f = self.f.borrow_mut().take().expect("in-place op runs once");
            *self.out.borrow_mut() = Some(f(&mut data[start..end]));
            Ok(())
        }
    }
    let op = Op { f: RefCell::new(Some(f)), out: RefCell::new(None), _elem: std::marker::PhantomData::<fn() -> T> };
    t.inplace_op1(&op)?;
    let out = op.out.into_inner().ok_or_else(|| TrainError::other("in-place AdamW op did not run"))?;
    Ok(out?)
}

/// Runs `f` on the contiguous elements of `t` (read-only), copying to a contiguous layout first if needed.
fn with_host<T: HostFloat, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = if t.is_contiguous() { t.clone() } else { t.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| TrainError::other("gradient is not contiguous"))?;
    match &*storage {
        Storage::Cpu(s) => {
            let data = T::host_slice(s).ok_or_else(|| TrainError::other("gradient dtype differs from the parameter's"))?;
            Ok(f(&data[start..end]))
        }
        _ => Err(TrainError::other("fused AdamW: gradient is not on the CPU")),
    }
}

/// One parameter's update in one pass, writing weights and moments in place: the operations of
/// [`update_with_tensor_ops`] element by element, in the same order and roundings.
fn update_in_place<T: HostFloat>(slot: &Slot, g: &Tensor, k: &StepScalars, grad_scale: Option<f64>) -> Result<()> {
    let c = |x: f64| T::from_f64(x);
    let zero = c(0.0);
    let (scale, decay) = (grad_scale.map(c), if slot.decay { k.decay.map(c) } else { None });
    let (one_minus_b1, b2, one_minus_b2) = (c(k.one_minus_b1), c(k.b2), c(k.one_minus_b2));
    let (inv_bias2_sqrt, eps, step_size, one) = (c(1.0 / k.bias2_sqrt), c(k.eps), c(k.step_size), c(1.0));
    let apply = |p: &mut [T], m: &mut [T], v: &mut [T], g: &[T]| {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = match scale {
                Some(s) => g * s + zero,
                None => g,
            };
            let p0 = match decay {
                Some(d) => *p * d + zero,
                None => *p,
            };
            *m = *m + ((g - *m) * one_minus_b1 + zero);
            *v = (*v * b2 + zero) + ((g * g) * one_minus_b2 + zero);
            let denom = (v.sqrt() * inv_bias2_sqrt + zero) * one + eps;
            *p = p0 - ((*m / denom) * step_size + zero);
        }
    };
    with_host::<T, _>(g, |g| {
        with_host_mut::<T, _>(slot.var.as_tensor(), |p| {
            with_host_mut::<T, _>(&slot.m, |m| {
                with_host_mut::<T, _>(&slot.v, |v| {
                    if p.len() <= CHUNK {
                        apply(p, m, v, g);
                    } else {
                        p.par_chunks_mut(CHUNK)
                            .zip(m.par_chunks_mut(CHUNK))
                            .zip(v.par_chunks_mut(CHUNK))
                            .zip(g.par_chunks(CHUNK))
                            .for_each(|(((p, m), v), g)| apply(p, m, v, g));
                    }
                    Ok(())
                })
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
        })
    })?
}

/// Sum of squares of one tensor's elements in f64: fixed-size chunks summed in order, so the result
/// does not depend on the number of threads.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    fn host<T: HostFloat>(g: &Tensor) -> Result<f64> {
        with_host::<T, _>(g, |x| {
            let chunk = |c: &[T]| c.iter().map(|&v| v.square_f64()).sum::<f64>();
            if x.len() <= CHUNK {
                chunk(x)
            } else {
                x.par_chunks(CHUNK).map(chunk).collect::<Vec<f64>>().iter().sum()
            }
        })
    }
    match (g.device(), g.dtype()) {
        (Device::Cpu, DType::F32) => host::<f32>(g),
        (Device::Cpu, DType::F64) => host::<f64>(g),
        _ => Ok(g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?),
    }
}

/// L2 norm of all gradients together, accumulated in f64 (NaN/inf propagate, which is how the
/// trainer detects a bad step).
pub fn global_grad_norm(grads: &[Tensor]) -> Result<f64> {
    // Tensors in parallel (one pass each, no f64 copies); partial sums added in a fixed order.
    let sums = grads.par_iter().map(sum_of_squares).collect::<Result<Vec<f64>>>()?;
    Ok(sums.iter().sum::<f64>().sqrt())
}

/// The factor [`clip_grad_norm`] scales gradients by for a pre-clip global norm `norm` (PyTorch's
/// `clip_grad_norm_`: `max_norm / (norm + 1e-6)` when below 1), or `None` when they stay as they are
/// (norm within the limit, non-finite norm, or clipping disabled with `max_norm <= 0`).
pub fn clip_scale(norm: f64, max_norm: f64) -> Option<f64> {
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            return Some(coef);
        }
    }
    None
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)`, applied only when below 1). Returns the pre-clip norm.
/// `max_norm <= 0` disables clipping. The trainer folds the factor into [`AdamW::step_scaled`] instead.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    if let Some(coef) = clip_scale(norm, max_norm) {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
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

    /// Deterministic pseudo-random f32 values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn f32_var(v: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    /// The fused in-place CPU pass against the tensor-op form, bit for bit: a matrix large enough to
    /// be split into parallel chunks (decayed), a small one, and a 1-D one (not decayed); with and
    /// without a clipping factor; over three steps so the moments and bias corrections are exercised.
    #[test]
    fn fused_in_place_update_is_bit_identical_to_the_tensor_ops() {
        let shapes: [&[usize]; 3] = [&[300, 257], &[7, 5], &[33]];
        let make = |seed: u64| -> Vec<(String, Var)> {
            shapes.iter().enumerate().map(|(i, s)| (format!("p{i}"), f32_var(&noise(s.iter().product(), seed + i as u64), s))).collect()
        };
        let (fused_params, ref_params) = (make(1), make(1));
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut fused = AdamW::new(fused_params.clone(), cfg.clone()).unwrap();
        let mut reference = AdamW::new(ref_params.clone(), cfg).unwrap();
        for (step, scale) in [None, Some(0.37), Some(0.9)].into_iter().enumerate() {
            let grads: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Tensor::from_vec(noise(s.iter().product(), 100 + 10 * step as u64 + i as u64), *s, &Device::Cpu).unwrap())
                .collect();
            fused.step_scaled(&grads, 1e-2, scale).unwrap();
            reference.step_with_tensor_ops(&grads, 1e-2, scale).unwrap();
            for ((name, a), (_, b)) in fused_params.iter().zip(&ref_params) {
                assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "step {step}: parameter {name}");
            }
            let (sa, sb) = (fused.state_tensors(), reference.state_tensors());
            for (k, t) in &sa {
                assert_eq!(bits(t), bits(&sb[k]), "step {step}: {k}");
            }
        }
    }

    /// Folding the clipping factor into the update equals clipping the gradients first, bit for bit,
    /// and a non-contiguous gradient (a transposed view) is read correctly.
    #[test]
    fn scaled_step_equals_clip_then_step() {
        let (a, b) = (f32_var(&noise(6 * 40, 7), &[6, 40]), f32_var(&noise(6 * 40, 7), &[6, 40]));
        let g = Tensor::from_vec(noise(6 * 40, 8), (40, 6), &Device::Cpu).unwrap().t().unwrap();
        assert!(!g.is_contiguous());
        let mut fused = AdamW::new(vec![("w".into(), a.clone())], AdamWConfig::default()).unwrap();
        let mut two_pass = AdamW::new(vec![("w".into(), b.clone())], AdamWConfig::default()).unwrap();
        let norm = global_grad_norm(std::slice::from_ref(&g)).unwrap();
        let scale = clip_scale(norm, 0.5);
        assert!(scale.is_some(), "norm {norm} should be clipped to 0.5");
        fused.step_scaled(std::slice::from_ref(&g), 3e-3, scale).unwrap();
        let mut clipped = vec![g.clone()];
        assert_eq!(clip_grad_norm(&mut clipped, 0.5).unwrap(), norm);
        two_pass.step(&clipped, 3e-3).unwrap();
        assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()));
    }

    /// The parallel f64 norm against a direct f64 sum of squares, and NaN propagation from any tensor.
    #[test]
    fn global_norm_matches_a_direct_sum_and_propagates_nan() {
        let big = noise(200_000, 3);
        let small = noise(17, 4);
        let expected = big.iter().chain(&small).map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        let grads = vec![Tensor::from_slice(&big, (400, 500), &Device::Cpu).unwrap(), Tensor::from_slice(&small, 17, &Device::Cpu).unwrap()];
        let norm = global_grad_norm(&grads).unwrap();
        assert!((norm - expected).abs() <= 1e-12 * expected, "{norm} vs {expected}");
        let mut with_nan = small.clone();
        with_nan[5] = f32::NAN;
        let bad = vec![grads[0].clone(), Tensor::from_slice(&with_nan, 17, &Device::Cpu).unwrap()];
        assert!(global_grad_norm(&bad).unwrap().is_nan());
        let inf = vec![Tensor::from_slice(&[f32::INFINITY, 1.0], 2, &Device::Cpu).unwrap()];
        assert!(global_grad_norm(&inf).unwrap().is_infinite());
        assert_eq!(clip_scale(f64::NAN, 1.0), None);
        assert_eq!(clip_scale(0.5, 1.0), None);
        assert_eq!(clip_scale(2.0, 0.0), None);
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
