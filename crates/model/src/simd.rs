//! The element-wise loops of the fused kernels, compiled for the widest vector unit the CPU has.
//!
//! Release builds target baseline x86-64 (SSE2) so that one binary runs everywhere; the matmuls
//! (`gemm`) pick AVX-512 or AVX2 at run time, and [`dispatch`] does the same for escale's own loops:
//! it runs a closure inside a function compiled with `avx512f` (or `avx2,fma`) enabled, where the
//! closure's body and every `#[inline(always)]` helper it calls are inlined and vectorised for
//! that unit. Plain multiplies and adds only (no fused multiply-add contraction), so a kernel gives
//! the same bits on every path.
//!
//! [`exp_f32`] exists because `libm`'s `expf` is a call per element that no loop can vectorise;
//! measured on the standard training config it was 9% of a step's CPU time (issue 16).

use crate::kernels::Real;

/// Runs `f` compiled for AVX-512F or AVX2+FMA when the CPU has them (checked once, cached by std),
/// else as is. Mark the closure `#[inline(always)]` so that its body is compiled inside the
/// feature-enabled function; loops in non-inlined callees keep baseline code.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Independent accumulators of the reductions below, so that they vectorise (a single running
/// max or sum is a serial dependency the compiler may not reorder).
const LANES: usize = 16;

/// The largest element (`-inf` for an empty slice; NaN elements are skipped unless all are NaN,
/// as `f32::max` does).
#[inline(always)]
pub(crate) fn max_of<T: Real>(z: &[T]) -> T {
    let mut acc = [T::NEG_INF; LANES];
    let mut chunks = z.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    chunks.remainder().iter().chain(&acc).copied().fold(T::NEG_INF, |a, b| a.max_(b))
}

/// `z[i] = exp(z[i] - shift)` for every element; returns their sum.
#[inline(always)]
pub(crate) fn exp_shifted_sum<T: Real>(z: &mut [T], shift: T) -> T {
    let mut acc = [T::c0(); LANES];
    let mut chunks = z.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = (c[i] - shift).exp_fast();
            acc[i] += c[i];
        }
    }
    let mut sum = acc.iter().fold(T::c0(), |a, &b| a + b);
    for x in chunks.into_remainder() {
        *x = (*x - shift).exp_fast();
        sum += *x;
    }
    sum
}

/// `sum(a[i] * b[i])` with lane accumulators.
#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::c0(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = acc.iter().fold(T::c0(), |s, &v| s + v);
    for (&x, &y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `e^x` in f32, branch-free so that loops over it vectorise. `e^x = 2^n * e^r` with `n =
/// round(x / ln 2)`, `|r| <= ln(2) / 2` (`ln 2` split in two parts so that `r` is exact), and
/// `e^r` by its degree-7 Taylor polynomial (truncation below 1e-8 relative; rounding keeps the
/// result within about 2 ulp).
/// Inputs are clamped to [-87, 88]: below, the result is `e^-87` (~1.6e-38) rather than 0 or a
/// denormal, harmless in a sum of probabilities that includes 1 or a sigmoid's `1 + e^x`; above,
/// `e^88` (~1.7e38) rather than infinity. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by the 1.5 * 2^23 trick (exact for |v| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    // Comparisons written so that NaN passes through (to a NaN loss the trainer skips).
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from t's own bits, which are ROUND's plus n (|n| <= 127 here): integer work that vectorises, where
    // `n as i32` (a saturating conversion) was done lane by lane.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorisable f32 exp against f64's, over the range the kernels use (shifted logits and
    /// scores, which are <= 0, and a sigmoid's argument, either sign).
    #[test]
    fn fast_exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..400_000 {
            let x = 88.0 - (i as f32) * 4.4e-4; // 88 down to -88
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            if want > 1e-37 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 2e-38 && exp_f32(-1e30) >= 0.0);
        assert!(exp_f32(f32::INFINITY) > 1e38 && exp_f32(f32::INFINITY).is_finite());
        assert!(exp_f32(f32::NAN).is_nan());
    }

    /// The lane-split reductions agree with plain folds, on lengths around the lane count, and the
    /// dispatched path gives the same bits as the baseline one.
    #[test]
    fn reductions_match_plain_folds_on_every_path() {
        for n in [0usize, 1, 15, 16, 17, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.7).collect();
            let m = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_of(&a), m);
            let want_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) as f64 - want_dot).abs() < 1e-4);
            let mut e = a.clone();
            let sum = exp_shifted_sum(&mut e, m);
            let want: Vec<f64> = a.iter().map(|&x| (x as f64 - m as f64).exp()).collect();
            for (g, w) in e.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 3e-7 * w, "{g} vs {w}");
            }
            assert!((sum as f64 - want.iter().sum::<f64>()).abs() < 1e-5 * (n as f64 + 1.0));
            let mut e2 = a.clone();
            let sum2 = dispatch(
                #[inline(always)]
                || exp_shifted_sum(&mut e2, m),
            );
            assert_eq!((e2, sum2.to_bits()), (e, sum.to_bits()));
        }
    }
}
