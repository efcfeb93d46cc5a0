//! Logit comparison statistics for `escale verify` and the tests: max/mean |delta logit|,
//! KL(reference || candidate), top-1 agreement and bitwise equality, accumulated over any number
//! of windows so long texts can be streamed.

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result};
use crate::ops::log_softmax_slice;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogitStats {
    /// Token positions compared.
    pub positions: usize,
    pub max_abs_diff: f64,
    pub mean_abs_diff: f64,
    /// Largest |logit| of the reference (scale for relative tolerances).
    pub max_abs_reference: f64,
    /// Mean over positions of KL(softmax(reference) || softmax(candidate)), in nats.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Fraction of positions whose argmax agrees.
    pub top1_agreement: f64,
    /// Every logit bitwise identical.
    pub exact: bool,
    #[serde(skip)]
    sum_abs: f64,
    #[serde(skip)]
    n_values: usize,
    #[serde(skip)]
    sum_kl: f64,
    #[serde(skip)]
    agree: usize,
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

impl LogitStats {
    pub fn new() -> Self {
        LogitStats { exact: true, ..Default::default() }
    }

    /// Adds one window: `reference` and `candidate` `[.., vocab]` with the same shape.
    pub fn add(&mut self, reference: &Tensor, candidate: &Tensor) -> Result<()> {
        if reference.dims() != candidate.dims() {
            return Err(ModelError::input(format!(
                "logit shapes differ: reference {:?}, candidate {:?} (vocab sizes must match)",
                reference.dims(),
                candidate.dims()
            )));
        }
        let v = reference.dim(D::Minus1)?;
        let r: Vec<f64> = reference.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let c: Vec<f64> = candidate.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        if reference.dtype() != candidate.dtype() {
            self.exact = false;
        }
        for (rr, cr) in r.chunks_exact(v).zip(c.chunks_exact(v)) {
            for (a, b) in rr.iter().zip(cr) {
                let d = (a - b).abs();
                if a.to_bits() != b.to_bits() {
                    self.exact = false;
                }
                self.max_abs_diff = self.max_abs_diff.max(if d.is_nan() { f64::INFINITY } else { d });
                self.max_abs_reference = self.max_abs_reference.max(a.abs());
                self.sum_abs += d;
            }
            self.n_values += v;
            let (lr, lc) = (log_softmax_slice(rr), log_softmax_slice(cr));
            let kl: f64 = lr.iter().zip(&lc).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0);
            self.sum_kl += kl;
            self.max_kl = self.max_kl.max(kl);
            self.agree += usize::from(argmax(rr) == argmax(cr));
            self.positions += 1;
        }
        self.mean_abs_diff = self.sum_abs / self.n_values.max(1) as f64;
        self.mean_kl = self.sum_kl / self.positions.max(1) as f64;
        self.top1_agreement = self.agree as f64 / self.positions.max(1) as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn identical_logits_are_exact_with_zero_kl() {
        let a = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.5, -1.0, 0.0]], &Device::Cpu).unwrap();
        let mut s = LogitStats::new();
        s.add(&a, &a).unwrap();
        assert!(s.exact);
        assert_eq!((s.positions, s.max_abs_diff, s.mean_kl, s.top1_agreement), (2, 0.0, 0.0, 1.0));
        assert_eq!(s.max_abs_reference, 3.0);
    }

    #[test]
    fn differences_kl_and_agreement_match_hand_computation() {
        let r = Tensor::new(&[[0.0f64, 0.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[0.0f64, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        let mut s = LogitStats::new();
        s.add(&r, &c).unwrap();
        assert!(!s.exact);
        assert_eq!(s.max_abs_diff, 1.0);
        assert_eq!(s.mean_abs_diff, 0.25);
        // Row 0: p = (1/2, 1/2), q = softmax(0, 1). KL = 0.5*ln(0.5/q0) + 0.5*ln(0.5/q1).
        let q0 = 1.0 / (1.0 + 1f64.exp());
        let kl0 = 0.5 * (0.5 / q0).ln() + 0.5 * (0.5 / (1.0 - q0)).ln();
        assert!((s.mean_kl - kl0 / 2.0).abs() < 1e-12);
        assert_eq!(s.top1_agreement, 0.5, "row 0 argmax 0 vs 1; row 1 agrees");
        let bad = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        assert!(s.add(&r, &bad).unwrap_err().to_string().contains("vocab"));
    }
}
