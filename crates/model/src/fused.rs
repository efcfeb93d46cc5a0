//! Fused CPU kernels with an explicit backward, for the two widest element-wise ops of a training
//! step: the attention softmax (`[batch, heads, seq, seq]`) and the log-softmax of the
//! cross-entropy (`[tokens, vocab]`).
//!
//! The composite versions in [`crate::ops`] run 4-5 passes over the data, each allocating a tensor
//! and each recorded for backward. These kernels do one pass per row (rows in parallel on the
//! rayon pool) and register a backward through candle's `CustomOp1::bwd`, which candle-nn's fused
//! ops lack (docs/cpu-training-notes.md). The backward is expressed with candle-core ops:
//! softmax: `dx = y * (g - sum(g * y))`; log-softmax: `dx = g - exp(y) * sum(g)`.
//! Tests compare both directions with the composite ops and finite differences.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::error::Result;

#[derive(Clone, Copy)]
enum Kind {
    Softmax,
    LogSoftmax,
}

struct RowOp(Kind);

macro_rules! rows_impl {
    ($name:ident, $t:ty) => {
        fn $name(src: &[$t], dim: usize, kind: Kind) -> Vec<$t> {
            let mut dst = vec![0 as $t; src.len()];
            dst.par_chunks_mut(dim).zip(src.par_chunks(dim)).for_each(|(d, s)| {
                let m = s.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                let mut sum = 0 as $t;
                for (o, &x) in d.iter_mut().zip(s) {
                    let e = (x - m).exp();
                    *o = e;
                    sum += e;
                }
                match kind {
                    Kind::Softmax => {
                        let inv = 1 as $t / sum;
                        d.iter_mut().for_each(|o| *o *= inv);
                    }
                    Kind::LogSoftmax => {
                        let lse = m + sum.ln();
                        d.iter_mut().zip(s).for_each(|(o, &x)| *o = x - lse);
                    }
                }
            });
            dst
        }
    };
}
rows_impl!(rows_f32, f32);
rows_impl!(rows_f64, f64);

impl CustomOp1 for RowOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Softmax => "escale-softmax-last-dim",
            Kind::LogSoftmax => "escale-log-softmax-last-dim",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dim = *layout.dims().last().ok_or_else(|| candle_core::Error::Msg("softmax of a scalar".into()))?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fused softmax needs a contiguous input".into()))?;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(rows_f32(&v[start..end], dim, self.0)),
            CpuStorage::F64(v) => CpuStorage::F64(rows_f64(&v[start..end], dim, self.0)),
            _ => return Err(candle_core::Error::Msg("fused softmax: only f32 and f64 are supported".into())),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match self.0 {
            Kind::Softmax => {
                let s = (grad * res)?.sum_keepdim(D::Minus1)?;
                (res * grad.broadcast_sub(&s)?)?
            }
            Kind::LogSoftmax => {
                let s = grad.sum_keepdim(D::Minus1)?;
                (grad - res.exp()?.broadcast_mul(&s)?)?
            }
        }))
    }
}

/// Softmax over the last dim in one pass per row, with backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(RowOp(Kind::Softmax))?)
}

/// log-softmax over the last dim in one pass per row, with backward.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(RowOp(Kind::LogSoftmax))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use candle_core::{DType, Device, Var};

    fn input(dtype: DType) -> Var {
        let data: Vec<f64> = (0..3 * 4 * 7).map(|i| ((i * 37 % 23) as f64 - 11.0) * 0.37).collect();
        Var::from_tensor(&Tensor::from_vec(data, (3, 4, 7), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f64) {
        let a: Vec<f64> = a.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let b: Vec<f64> = b.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(d <= tol, "max diff {d}");
    }

    /// Same values and same gradients (for a non-uniform upstream gradient) as the composite ops.
    #[test]
    fn fused_matches_composite_forward_and_backward() {
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            let x = input(dtype);
            let w = Tensor::arange(0f64, 84.0, &Device::Cpu).unwrap().reshape((3, 4, 7)).unwrap().to_dtype(dtype).unwrap();
            type F = fn(&Tensor) -> Result<Tensor>;
            let pairs: [(F, F); 2] = [
                (softmax_last_dim, ops::softmax_last_dim_composite),
                (log_softmax_last_dim, ops::log_softmax_last_dim_composite),
            ];
            for (fused, composite) in pairs {
                let yf = fused(x.as_tensor()).unwrap();
                let yc = composite(x.as_tensor()).unwrap();
                close(&yf, &yc, tol);
                let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gc = (yc * &w).unwrap().sum_all().unwrap().backward().unwrap();
                close(gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap(), tol * 100.0);
            }
        }
    }

    /// Central differences in f64 for both kernels, on a strided (transposed) input.
    #[test]
    fn fused_gradients_match_finite_differences() {
        let x = input(DType::F64);
        let w = Tensor::arange(0f64, 84.0, &Device::Cpu).unwrap().reshape((3, 7, 4)).unwrap().cos().unwrap();
        for f in [softmax_last_dim as fn(&Tensor) -> Result<Tensor>, log_softmax_last_dim] {
            let loss = |x: &Tensor| -> Tensor { (f(&x.transpose(1, 2).unwrap()).unwrap() * &w).unwrap().sum_all().unwrap() };
            let g = loss(x.as_tensor()).backward().unwrap();
            let g: Vec<f64> = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in [0, 5, 13, 40, 83] {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    loss(&Tensor::from_vec(v, (3, 4, 7), &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap()
                };
                let num = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!((num - g[i]).abs() < 1e-7 * (1.0 + g[i].abs()), "[{i}]: {num} vs {}", g[i]);
            }
        }
    }
}
