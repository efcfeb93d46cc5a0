//! The LM head and its cross-entropy fused, in chunks of tokens: `nll[i] = logsumexp(h_i W^T) - (h_i W^T)[t_i]`
//! without ever holding the `[tokens, vocab]` logits (200 MB per 1,024 tokens of a 49k vocab in f32), their
//! log-softmax or their gradient.
//!
//! Each chunk of at most [`CHUNK_ELEMS`] logits is computed by one gemm, reduced row by row (rows in parallel)
//! to its logsumexp and target logit, and dropped. When a gradient will be wanted (either input is on a graph),
//! the same pass also turns the chunk into `dlogits = softmax - onehot` (per row, for an upstream gradient of 1)
//! and folds it into `dhidden = dlogits W` and `dW += dlogits^T h` by two more gemms, so the backward is a
//! rescale of those two buffers: three gemms in all, as many as the unfused head (forward, and the two of its
//! backward), and no recomputation. An upstream gradient that differs between rows (a weighted loss) cannot be
//! folded into `dW` after the fact; then the backward recomputes the chunks from the saved logsumexp.
//!
//! Used by the trainer (the loss), `escale eval`, validation and multiple-choice scoring (per-token NLL);
//! generation, `verify` and the oracle tests still read full logits from [`crate::Model::forward`].
//! Tests: against the composite `matmul` + [`crate::ops::token_nll`] (values and gradients, f32 and f64, tied and
//! strided weights, non-uniform upstream gradients) and central finite differences in f64.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Logits held at once: 32M values (128 MB in f32; 682 tokens of a 49,152 vocab, the whole batch of a 4k vocab).
/// Large enough that each chunk's gemms run near peak and the `[vocab, hidden]` weight gradient, which every chunk
/// reads and writes, is swept few times: on the 135M-class config (1,024 tokens, 49k vocab) 4M-value chunks (85
/// tokens) made the head's pass 1.6 s against 1.0-1.3 s at this size (issue 16). Small next to the activations a
/// training step holds, and to the `[tokens, vocab]` logits and gradient it never materialises.
pub const CHUNK_ELEMS: usize = 1 << 25;

/// The float types the op runs on (the model's compute dtypes).
trait Float: candle_core::WithDType + PartialOrd + num_ops::Ops {
    const ZERO: Self;
    const ONE: Self;
    fn ln(self) -> Self;
    /// The largest value of a row.
    fn max_of(z: &[Self]) -> Self;
    /// `z[i] = exp(z[i] - shift)` for every element; returns their sum.
    fn exp_shifted(z: &mut [Self], shift: Self) -> Self;
}

mod num_ops {
    use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Sub, SubAssign};
    pub trait Ops:
        Sized + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + AddAssign + SubAssign + MulAssign
    {
    }
    impl Ops for f32 {}
    impl Ops for f64 {}
}

/// Both dtypes share the lane-split loops of [`crate::simd`] (f32's exp there is the vectorisable one).
macro_rules! float_impl {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn max_of(z: &[Self]) -> Self {
                crate::simd::max_of(z)
            }
            #[inline(always)]
            fn exp_shifted(z: &mut [Self], shift: Self) -> Self {
                crate::simd::exp_shifted_sum(z, shift)
            }
        }
    };
}
float_impl!(f32);
float_impl!(f64);

/// A strided 2-D matrix in a storage slice (`data` starts at the layout's offset).
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    /// Element strides between rows and between columns.
    rs: isize,
    cs: isize,
}

impl<'a, T> Mat<'a, T> {
    fn new(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<Self> {
        let (rows, cols) = layout.shape().dims2().map_err(|_| msg(format!("{what} must be 2-D, found {:?}", layout.dims())))?;
        let st = layout.stride();
        Ok(Mat { data: &data[layout.start_offset()..], rows, cols, rs: st[0] as isize, cs: st[1] as isize })
    }

    /// Pointer to row `r`, column 0.
    fn row_ptr(&self, r: usize) -> *const T {
        self.data.as_ptr().wrapping_offset(r as isize * self.rs)
    }
}

fn msg(s: String) -> candle_core::Error {
    candle_core::Error::Msg(s)
}

fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[m x n] (row-major, row stride dst_rs) = (accumulate ? dst : 0) + lhs[m x k] * rhs[k x n]`, each operand
/// given by its row and column strides.
///
/// SAFETY (caller): every pointer covers its matrix under the given strides, and `dst` is not aliased.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: isize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const T, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const T, isize, isize),
) {
    // gemm computes dst = alpha * dst + beta * lhs * rhs (alpha is read only when read_dst is set).
    gemm::gemm(m, n, k, dst, 1, dst_rs, accumulate, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, T::ONE, T::ONE, false, false, false, parallelism());
}

/// Per-row weights of `dlogits` (the upstream gradient of each token's NLL).
#[derive(Clone, Copy)]
enum RowScale<'a, T> {
    /// Loss only, no gradient.
    None,
    Each(T),
    Rows(&'a [T]),
}

impl<T: Float> RowScale<'_, T> {
    fn get(&self, row: usize) -> Option<T> {
        match self {
            RowScale::None => None,
            RowScale::Each(g) => Some(*g),
            RowScale::Rows(g) => Some(g[row]),
        }
    }
}

/// What one pass over the chunks produces.
struct Pass<T> {
    nll: Vec<T>,
    lse: Vec<T>,
    /// `(dhidden [n, h], dweight [vocab, h])` when a gradient was asked for.
    grads: Option<(Vec<T>, Vec<T>)>,
}

/// Rows of logits per chunk of at most `chunk_elems` values, for a vocab of `v`.
fn chunk_rows(n: usize, v: usize, chunk_elems: usize) -> usize {
    (chunk_elems / v.max(1)).clamp(1, n.max(1))
}

/// One row of logits `z` (a scratch buffer: overwritten) with target `t`: returns `(nll, lse)`. With a scale `g`,
/// leaves `g * (softmax(z) - onehot(t))` in `z`. `lse_known` skips the reduction (the backward's recomputation).
#[inline(always)]
fn row_kernel<T: Float>(z: &mut [T], t: usize, g: Option<T>, lse_known: Option<T>) -> (T, T) {
    let zt = z[t];
    let (lse, inv_sum) = match lse_known {
        Some(lse) => {
            T::exp_shifted(z, lse);
            (lse, T::ONE)
        }
        None => {
            // exp once: exp(z - max) stays in place for the gradient.
            let m = T::max_of(z);
            let sum = T::exp_shifted(z, m);
            (m + sum.ln(), T::ONE / sum)
        }
    };
    if let Some(g) = g {
        let f = g * inv_sum;
        z.iter_mut().for_each(|x| *x *= f);
        z[t] -= g;
    }
    (lse - zt, lse)
}

/// The chunked pass: NLL and logsumexp of every row (or, with `lse_known`, only the gradients), and the
/// gradients for per-row scales `scale`.
fn head_pass<T: Float>(h: Mat<T>, w: Mat<T>, targets: &[u32], scale: RowScale<T>, lse_known: Option<&[T]>, chunk_elems: usize) -> Pass<T> {
    let (n, hd, v) = (h.rows, h.cols, w.rows);
    let want_grad = !matches!(scale, RowScale::None);
    let mut nll = vec![T::ZERO; n];
    let mut lse = vec![T::ZERO; n];
    let mut grads = want_grad.then(|| (vec![T::ZERO; n * hd], vec![T::ZERO; v * hd]));
    let chunk = chunk_rows(n, v, chunk_elems);
    let mut logits = vec![T::ZERO; chunk * v];
    for r0 in (0..n).step_by(chunk) {
        let c = chunk.min(n - r0);
        let buf = &mut logits[..c * v];
        // SAFETY: buf holds c x v; h's rows r0..r0+c and w's v x hd lie in their slices (checked by the caller).
        unsafe {
            gemm_into((c, v, hd), buf.as_mut_ptr(), v as isize, false, (h.row_ptr(r0), h.rs, h.cs), (w.data.as_ptr(), w.cs, w.rs));
        }
        let rows = buf.par_chunks_mut(v).zip(nll[r0..r0 + c].par_iter_mut()).zip(lse[r0..r0 + c].par_iter_mut());
        rows.enumerate().for_each(|(i, ((z, nll), lse))| {
            let r = r0 + i;
            let (a, b) = crate::simd::dispatch(
                #[inline(always)]
                || row_kernel(z, targets[r] as usize, scale.get(r), lse_known.map(|l| l[r])),
            );
            *nll = a;
            *lse = b;
        });
        if let Some((dh, dw)) = grads.as_mut() {
            // SAFETY: dh rows r0..r0+c (c x hd) and dw (v x hd) are ours; buf is c x v, contiguous.
            unsafe {
                gemm_into((c, hd, v), dh[r0 * hd..].as_mut_ptr(), hd as isize, false, (buf.as_ptr(), v as isize, 1), (w.data.as_ptr(), w.rs, w.cs));
                gemm_into((v, hd, c), dw.as_mut_ptr(), hd as isize, r0 > 0, (buf.as_ptr(), 1, v as isize), (h.row_ptr(r0), h.rs, h.cs));
            }
        }
    }
    Pass { nll, lse, grads }
}

/// What the forward keeps for the backward: every row's logsumexp and, when computed eagerly, the
/// unit-scale gradients `(dhidden, dweight)`.
struct Saved<T> {
    lse: Vec<T>,
    grads: Option<(Vec<T>, Vec<T>)>,
}

enum SavedAny {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

/// Moves between candle's CPU storage and typed slices, per float type.
trait Stored: Float {
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
    fn wrap(s: Saved<Self>) -> SavedAny;
    fn unwrap(s: SavedAny) -> Option<Saved<Self>>;
}

macro_rules! stored_impl {
    ($t:ty, $v:ident) => {
        impl Stored for $t {
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v.as_slice()),
                    _ => None,
                }
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
            fn wrap(s: Saved<Self>) -> SavedAny {
                SavedAny::$v(s)
            }
            fn unwrap(s: SavedAny) -> Option<Saved<Self>> {
                match s {
                    SavedAny::$v(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
stored_impl!(f32, F32);
stored_impl!(f64, F64);

/// The custom op: `hidden [n, h]`, `weight [vocab, h]` -> `nll [n]`.
struct HeadNll {
    targets: Vec<u32>,
    /// Compute the unit-scale gradients during the forward (an input is on a graph).
    eager_grad: bool,
    /// [`CHUNK_ELEMS`] (smaller in tests, to cross chunk boundaries).
    chunk_elems: usize,
    saved: Mutex<Option<SavedAny>>,
}

fn check_ranges<T>(h: &Mat<T>, w: &Mat<T>, targets: &[u32]) -> candle_core::Result<()> {
    if h.cols != w.cols {
        return Err(msg(format!("LM head: hidden size {} but weight rows of {}", h.cols, w.cols)));
    }
    if h.rows != targets.len() {
        return Err(msg(format!("LM head: {} hidden rows for {} targets", h.rows, targets.len())));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= w.rows) {
        return Err(msg(format!("LM head: target id {bad} is out of range for a vocab of {}", w.rows)));
    }
    // Every strided read stays inside its slice (candle layouts have non-negative strides).
    let span = |m: &Mat<T>| (m.rows.max(1) - 1) as isize * m.rs + (m.cols.max(1) - 1) as isize * m.cs + 1;
    if h.rs < 0 || h.cs < 0 || w.rs < 0 || w.cs < 0 || span(h) > h.data.len() as isize || span(w) > w.data.len() as isize {
        return Err(msg("LM head: unsupported layout".into()));
    }
    Ok(())
}

/// Runs `f` on the CPU slices of `hidden` and `weight` viewed as matrices.
fn with_mats<T: Stored, R>(hidden: &Tensor, weight: &Tensor, f: impl FnOnce(Mat<T>, Mat<T>) -> R) -> candle_core::Result<R> {
    let (hs, hl) = hidden.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let (Storage::Cpu(hc), Storage::Cpu(wc)) = (&*hs, &*ws) else {
        return Err(msg("LM head: only the CPU device is supported".into()));
    };
    let (Some(h), Some(w)) = (T::slice(hc), T::slice(wc)) else {
        return Err(msg("LM head: hidden and weight dtypes differ".into()));
    };
    Ok(f(Mat::new(h, hl, "hidden")?, Mat::new(w, wl, "weight")?))
}

impl HeadNll {
    fn forward<T: Stored>(&self, h: &[T], l1: &Layout, w: &[T], l2: &Layout) -> candle_core::Result<CpuStorage> {
        let (h, w) = (Mat::new(h, l1, "hidden")?, Mat::new(w, l2, "weight")?);
        check_ranges(&h, &w, &self.targets)?;
        let scale = if self.eager_grad { RowScale::Each(T::ONE) } else { RowScale::None };
        let p = head_pass(h, w, &self.targets, scale, None, self.chunk_elems);
        if self.eager_grad {
            *self.saved.lock().expect("LM head state lock") = Some(T::wrap(Saved { lse: p.lse, grads: p.grads }));
        }
        Ok(T::storage(p.nll))
    }

    /// Gradients for the upstream `g [n]`: the forward's unit-scale buffers rescaled when `g` is one value for
    /// every row (a mean or sum loss), else a recomputation of every chunk with per-row scales.
    fn backward<T: Stored>(&self, hidden: &Tensor, weight: &Tensor, g: &[f64]) -> candle_core::Result<(Tensor, Tensor)> {
        let saved = self.saved.lock().expect("LM head state lock").take().and_then(T::unwrap);
        let uniform = g.first().filter(|&&g0| g.iter().all(|&x| x == g0)).copied();
        let (dh, dw) = match (saved, uniform) {
            (Some(Saved { grads: Some((mut dh, mut dw)), .. }), Some(g0)) => {
                if g0 != 1.0 {
                    let s = T::from_f64(g0);
                    dh.par_iter_mut().for_each(|x| *x *= s);
                    dw.par_iter_mut().for_each(|x| *x *= s);
                }
                (dh, dw)
            }
            (saved, _) => {
                let scales: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
                let (targets, chunk) = (&self.targets, self.chunk_elems);
                with_mats(hidden, weight, |h, w| {
                    // A second backward through the same graph finds the state taken: redo the logsumexp too.
                    let lse = match saved {
                        Some(s) => s.lse,
                        None => head_pass(h, w, targets, RowScale::None, None, chunk).lse,
                    };
                    head_pass(h, w, targets, RowScale::Rows(&scales), Some(&lse), chunk).grads.expect("a scaled pass returns gradients")
                })?
            }
        };
        let (n, hd) = hidden.dims2()?;
        Ok((Tensor::from_vec(dh, (n, hd), hidden.device())?, Tensor::from_vec(dw, weight.shape().clone(), weight.device())?))
    }
}

impl CustomOp2 for HeadNll {
    fn name(&self) -> &'static str {
        "escale-lm-head-nll"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(h), CpuStorage::F32(w)) => self.forward(h, l1, w, l2)?,
            (CpuStorage::F64(h), CpuStorage::F64(w)) => self.forward(h, l1, w, l2)?,
            _ => {
                let (a, b) = (s1.dtype(), s2.dtype());
                return Err(msg(format!("LM head: hidden and weight must both be f32 or both f64, found {a:?} and {b:?}")));
            }
        };
        Ok((out, Shape::from(self.targets.len())))
    }

    fn bwd(&self, hidden: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f64> = grad.to_dtype(DType::F64)?.to_vec1()?;
        let (dh, dw) = match hidden.dtype() {
            DType::F32 => self.backward::<f32>(hidden, weight, &g)?,
            DType::F64 => self.backward::<f64>(hidden, weight, &g)?,
            other => return Err(msg(format!("LM head: unsupported dtype {other:?}"))),
        };
        Ok((Some(dh), Some(dw)))
    }
}

fn check_inputs(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<()> {
    if targets.dtype() != DType::U32 {
        return Err(ModelError::input(format!("LM head loss: targets must be u32, found {:?}", targets.dtype())));
    }
    let (n, h) = hidden.dims2().map_err(|_| ModelError::input(format!("LM head loss: hidden must be [tokens, hidden], found {:?}", hidden.dims())))?;
    let (_, wh) = weight.dims2().map_err(|_| ModelError::input(format!("LM head loss: weight must be [vocab, hidden], found {:?}", weight.dims())))?;
    if wh != h || targets.elem_count() != n {
        return Err(ModelError::input(format!(
            "LM head loss: hidden {:?}, weight {:?} and targets {:?} do not match",
            hidden.dims(),
            weight.dims(),
            targets.dims()
        )));
    }
    if !hidden.device().is_cpu() {
        return Err(ModelError::input("LM head loss: only the CPU device is supported"));
    }
    Ok(())
}

/// Per-token negative log-likelihood `[n]` of the LM head `weight [vocab, hidden]` applied to `hidden [n, hidden]`,
/// for `targets` (`n` u32 ids, aligned with the rows). Differentiable with respect to `hidden` and `weight`;
/// the `[n, vocab]` logits are never materialised (see the module docs).
pub fn head_token_nll(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    head_token_nll_chunked(hidden, weight, targets, CHUNK_ELEMS)
}

fn head_token_nll_chunked(hidden: &Tensor, weight: &Tensor, targets: &Tensor, chunk_elems: usize) -> Result<Tensor> {
    check_inputs(hidden, weight, targets)?;
    let op = HeadNll {
        targets: targets.flatten_all()?.to_vec1()?,
        eager_grad: hidden.track_op() || weight.track_op(),
        chunk_elems,
        saved: Mutex::new(None),
    };
    Ok(hidden.apply_op2_arc(weight, Arc::new(Box::new(op)))?)
}

/// Mean of [`head_token_nll`]: the training loss. Differentiable.
pub fn head_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(head_token_nll(hidden, weight, targets)?.mean_all()?)
}

/// Sum of the per-token NLL, outside any graph (evaluation): only the loss pass, in f64.
pub fn head_nll_sum(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<f64> {
    let nll = head_token_nll(&hidden.detach(), &weight.detach(), targets)?;
    Ok(nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use candle_core::{Device, Var};

    /// Deterministic values in about [-1.5, 1.5].
    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 997) as f64 / 997.0 - 0.5) * 3.0).collect()
    }

    fn var(shape: (usize, usize), seed: usize, dtype: DType) -> Var {
        let t = Tensor::from_vec(values(shape.0 * shape.1, seed), shape, &Device::Cpu).unwrap();
        Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        flat(a).iter().zip(flat(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    const N: usize = 9;
    const H: usize = 6;
    const V: usize = 13;

    fn targets() -> Tensor {
        Tensor::new(&[3u32, 0, 12, 7, 7, 1, 11, 5, 2], &Device::Cpu).unwrap()
    }

    /// The reference: full logits by matmul, then the composite log-softmax NLL.
    fn composite(h: &Tensor, w: &Tensor, t: &Tensor) -> Tensor {
        ops::token_nll(&h.matmul(&w.t().unwrap()).unwrap(), t).unwrap()
    }

    /// Values and both gradients equal the composite ops', for a mean (the rescaled eager gradients) and for
    /// per-row weights (the recomputing backward), in f32 and f64, with one chunk, several chunks and one row
    /// per chunk, for a contiguous and a transposed (strided) weight.
    #[test]
    fn matches_the_composite_head_and_loss() {
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
            for chunk_elems in [CHUNK_ELEMS, 3 * V, 1] {
                for transposed in [false, true] {
                    let h = var((N, H), 1, dtype);
                    let wv = if transposed { var((H, V), 2, dtype) } else { var((V, H), 2, dtype) };
                    let w = if transposed { wv.as_tensor().t().unwrap() } else { wv.as_tensor().clone() };
                    let t = targets();
                    let fused = head_token_nll_chunked(h.as_tensor(), &w, &t, chunk_elems).unwrap();
                    let reference = composite(h.as_tensor(), &w, &t);
                    assert!(max_diff(&fused, &reference) <= tol, "{dtype:?} chunk {chunk_elems}: nll differs");
                    let row_weights = Tensor::from_vec(values(N, 3), N, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                    let losses: [fn(Tensor, &Tensor) -> Tensor; 2] =
                        [|nll, _| nll.mean_all().unwrap(), |nll, rw| (nll * rw).unwrap().sum_all().unwrap()];
                    for loss in losses {
                        let fused = head_token_nll_chunked(h.as_tensor(), &w, &t, chunk_elems).unwrap();
                        let gf = loss(fused, &row_weights).backward().unwrap();
                        let gc = loss(composite(h.as_tensor(), &w, &t), &row_weights).backward().unwrap();
                        for (name, p) in [("hidden", h.as_tensor()), ("weight", wv.as_tensor())] {
                            let d = max_diff(gf.get(p).unwrap(), gc.get(p).unwrap());
                            assert!(d <= tol, "{dtype:?} chunk {chunk_elems} transposed {transposed}: d{name} differs by {d}");
                        }
                    }
                }
            }
        }
    }

    /// Central differences in f64 for entries of both inputs, through a weighted sum of the NLLs.
    #[test]
    fn gradients_match_finite_differences() {
        let h = var((N, H), 4, DType::F64);
        let w = var((V, H), 5, DType::F64);
        let rw = Tensor::from_vec(values(N, 6), N, &Device::Cpu).unwrap();
        let t = targets();
        let loss = |h: &Tensor, w: &Tensor| (head_token_nll_chunked(h, w, &t, 2 * V).unwrap() * &rw).unwrap().sum_all().unwrap();
        let g = loss(h.as_tensor(), w.as_tensor()).backward().unwrap();
        for (which, v) in [(0, &h), (1, &w)] {
            let grad = flat(g.get(v.as_tensor()).unwrap());
            let base = flat(v.as_tensor());
            for i in [0, 7, 19, base.len() - 1] {
                let at = |d: f64| {
                    let mut x = base.clone();
                    x[i] += d;
                    let x = Tensor::from_vec(x, v.dims(), &Device::Cpu).unwrap();
                    let l = if which == 0 { loss(&x, w.as_tensor()) } else { loss(h.as_tensor(), &x) };
                    l.to_scalar::<f64>().unwrap()
                };
                let num = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!((num - grad[i]).abs() < 1e-7 * (1.0 + grad[i].abs()), "input {which} [{i}]: {num} vs {}", grad[i]);
            }
        }
    }

    /// Detached inputs skip the gradient work, and a second backward through the same graph (its saved state
    /// already consumed) still gives the same gradients.
    #[test]
    fn no_grad_values_and_repeated_backward() {
        let h = var((N, H), 7, DType::F64);
        let w = var((V, H), 8, DType::F64);
        let t = targets();
        let sum = head_nll_sum(h.as_tensor(), w.as_tensor(), &t).unwrap();
        let want: f64 = flat(&composite(h.as_tensor(), w.as_tensor(), &t)).iter().sum();
        assert!((sum - want).abs() < 1e-12, "{sum} vs {want}");
        let loss = head_cross_entropy(h.as_tensor(), w.as_tensor(), &t).unwrap();
        let g1 = loss.backward().unwrap();
        let g2 = loss.backward().unwrap();
        for p in [h.as_tensor(), w.as_tensor()] {
            assert!(max_diff(g1.get(p).unwrap(), g2.get(p).unwrap()) < 1e-14);
        }
    }

    /// A non-finite hidden state must give a non-finite loss (the trainer skips such steps), in both dtypes.
    #[test]
    fn nan_inputs_give_nan_losses() {
        for dtype in [DType::F32, DType::F64] {
            let mut x = values(N * H, 1);
            x[2 * H + 1] = f64::NAN;
            let h = Tensor::from_vec(x, (N, H), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let w = var((V, H), 2, dtype);
            let nll = flat(&head_token_nll(&h, w.as_tensor(), &targets()).unwrap());
            assert!(nll[2].is_nan() && nll[1].is_finite(), "{dtype:?}: {nll:?}");
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_a_reason() {
        let h = var((N, H), 1, DType::F32);
        let w = var((V, H), 2, DType::F32);
        let short = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let e = head_token_nll(h.as_tensor(), w.as_tensor(), &short).unwrap_err().to_string();
        assert!(e.contains("do not match"), "{e}");
        let out_of_range = Tensor::new(&[1u32, 2, 3, 4, 5, 6, 7, 8, 13], &Device::Cpu).unwrap();
        let e = head_token_nll(h.as_tensor(), w.as_tensor(), &out_of_range).unwrap_err().to_string();
        assert!(e.contains("target id 13 is out of range"), "{e}");
        let f64w = w.as_tensor().to_dtype(DType::F64).unwrap();
        let e = head_token_nll(h.as_tensor(), &f64w, &targets()).unwrap_err().to_string();
        assert!(e.contains("both be f32 or both f64"), "{e}");
    }
}
