//! Fused causal grouped-query attention for CPU training: `softmax(scale q k^T + mask) v` in one
//! candle `CustomOp3` with its own backward.
//!
//! Inputs stay in the projections' natural layout, `q [batch, seq, heads, head_dim]` and `k`, `v`
//! `[batch, seq, kv_heads, head_dim]`, and the output is `[batch, seq, heads, head_dim]`: no
//! transposes, no contiguous copies, no `[batch, heads, seq, seq]` mask or score tensors in the
//! graph. Work is split over (sequence, head) pairs on the rayon pool; inside a task the products
//! are single-threaded `gemm` calls on blocks of `BLOCK` queries against only the keys they may see
//! (causal and, when set, the sliding window), so the upper triangle is mostly never computed.
//!
//! The forward keeps only each row's log-sum-exp; the backward recomputes the probabilities from it
//! (the flash-attention scheme), which holds `[batch, heads, seq]` instead of `[batch, heads, seq,
//! seq]` per layer. With `P = softmax(S)`, `S = scale q k^T`, upstream `dO` and `D_i = dO_i . O_i`:
//! `dV = P^T dO`, `dS = P (dO v^T - D)`, `dq = scale dS k`, `dk = scale dS^T q` (summed over the
//! query heads that share a kv head).
//!
//! Masking matches `Model::mask` for a sequence starting at position 0: query `i` sees key `j` iff
//! `j <= i` and `i - j < window`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::Result;
use crate::kernels::{msg, slice, Data, Real};
use crate::simd;

/// Queries per block: the score block is `BLOCK x keys` and the skipped upper triangle grows as
/// blocks shrink, while the matmuls get less efficient.
const BLOCK: usize = 64;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.nh / self.nkv
    }
}

struct CausalAttention {
    window: Option<usize>,
    scale: f64,
    /// Per-row log-sum-exp of the scaled, masked scores `[batch, heads, seq]`, kept by the forward
    /// for the backward.
    lse: Mutex<Option<CpuStorage>>,
}

impl CausalAttention {
    /// First key visible to query `i`.
    fn first_key(&self, i: usize) -> usize {
        match self.window {
            Some(w) => (i + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// `dst[m x n] (row stride dst_rs) = beta * lhs[m x k] rhs[k x n] (+ dst when accumulate)`; every
/// operand given by pointer and (column, row) strides. Single-threaded: callers run it inside
/// rayon tasks.
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_cs: usize,
    lhs_rs: usize,
    rhs: *const T,
    rhs_cs: usize,
    rhs_rs: usize,
    beta: T,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        T::c1(),
        beta,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// Scaled scores of queries `i0..i0+bq` of one head against keys `k0..i0+bq`, into `sc [bq x nk]`.
#[allow(clippy::too_many_arguments)]
fn scores<T: Real>(d: &Dims, q: &[T], k: &[T], seq: usize, h: usize, i0: usize, bq: usize, k0: usize, sc: &mut [T], scale: T) {
    let nk = i0 + bq - k0;
    let kvh = h / d.group();
    let q_off = ((seq * d.s + i0) * d.nh + h) * d.hd;
    let k_off = ((seq * d.s + k0) * d.nkv + kvh) * d.hd;
    // SAFETY: the q rows i0..i0+bq and k rows k0..k0+nk of this head lie inside the slices
    // (row strides nh*hd and nkv*hd); sc holds bq*nk values.
    unsafe {
        mm(bq, nk, d.hd, sc.as_mut_ptr(), nk, false, q[q_off..].as_ptr(), 1, d.nh * d.hd, k[k_off..].as_ptr(), d.nkv * d.hd, 1, scale)
    }
}

fn forward<T: Real>(op: &CausalAttention, d: Dims, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<T>) {
    let scale = T::from_f64(op.scale);
    let (s, hd) = (d.s, d.hd);
    // One task per (sequence, head): its output rows [s, hd] and log-sum-exps [s].
    let parts: Vec<(Vec<T>, Vec<T>)> = (0..d.b * d.nh)
        .into_par_iter()
        .map(|task| {
            let (seq, h) = (task / d.nh, task % d.nh);
            let kvh = h / d.group();
            let mut o = vec![T::c0(); s * hd];
            let mut lse = vec![T::c0(); s];
            let mut sc = vec![T::c0(); BLOCK * s];
            for i0 in (0..s).step_by(BLOCK) {
                let bq = BLOCK.min(s - i0);
                let k0 = op.first_key(i0);
                let nk = i0 + bq - k0;
                let sc = &mut sc[..bq * nk];
                scores(&d, q, k, seq, h, i0, bq, k0, sc, scale);
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (r, row) in sc.chunks_mut(nk).enumerate() {
                            let i = i0 + r;
                            let (lo, hi) = (op.first_key(i) - k0, i + 1 - k0);
                            let m = simd::max_of(&row[lo..hi]);
                            let sum = simd::exp_shifted_sum(&mut row[lo..hi], m);
                            let inv = T::c1() / sum;
                            row[lo..hi].iter_mut().for_each(|x| *x *= inv);
                            row[..lo].fill(T::c0());
                            row[hi..].fill(T::c0());
                            lse[i] = m + sum.ln_();
                        }
                    },
                );
                let v_off = ((seq * s + k0) * d.nkv + kvh) * hd;
                // SAFETY: o rows i0..i0+bq, sc [bq x nk], v rows k0..k0+nk of this kv head are in bounds.
                unsafe {
                    mm(bq, hd, nk, o[i0 * hd..].as_mut_ptr(), hd, false, sc.as_ptr(), 1, nk, v[v_off..].as_ptr(), 1, d.nkv * hd, T::c1())
                }
            }
            (o, lse)
        })
        .collect();
    let mut out = vec![T::c0(); d.b * s * d.nh * hd];
    let mut lse_all = Vec::with_capacity(d.b * d.nh * s);
    for (task, (o, lse)) in parts.into_iter().enumerate() {
        let (seq, h) = (task / d.nh, task % d.nh);
        for (t, row) in o.chunks(hd).enumerate() {
            let at = ((seq * s + t) * d.nh + h) * hd;
            out[at..at + hd].copy_from_slice(row);
        }
        lse_all.extend_from_slice(&lse);
    }
    (out, lse_all)
}

/// Gradients `(dq, dk, dv)` in the inputs' layouts.
#[allow(clippy::too_many_arguments)]
fn backward<T: Real>(op: &CausalAttention, d: Dims, q: &[T], k: &[T], v: &[T], o: &[T], lse: &[T], go: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let scale = T::from_f64(op.scale);
    let (s, hd, g) = (d.s, d.hd, d.group());
    let (qs, ks) = (d.nh * hd, d.nkv * hd); // row strides
    // One task per (sequence, kv head), so the dk/dv sums over its query heads stay in the task.
    let parts: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..d.b * d.nkv)
        .into_par_iter()
        .map(|task| {
            let (seq, kvh) = (task / d.nkv, task % d.nkv);
            let mut dq = vec![T::c0(); g * s * hd];
            let mut dk = vec![T::c0(); s * hd];
            let mut dv = vec![T::c0(); s * hd];
            let mut p = vec![T::c0(); BLOCK * s];
            let mut ds = vec![T::c0(); BLOCK * s];
            let mut dd = [T::c0(); BLOCK];
            for j in 0..g {
                let h = kvh * g + j;
                let lse = &lse[(seq * d.nh + h) * s..][..s];
                for i0 in (0..s).step_by(BLOCK) {
                    let bq = BLOCK.min(s - i0);
                    let k0 = op.first_key(i0);
                    let nk = i0 + bq - k0;
                    let (p, ds) = (&mut p[..bq * nk], &mut ds[..bq * nk]);
                    let q_off = ((seq * s + i0) * d.nh + h) * hd;
                    let kv_off = ((seq * s + k0) * d.nkv + kvh) * hd;
                    scores(&d, q, k, seq, h, i0, bq, k0, p, scale);
                    for (r, ddr) in dd[..bq].iter_mut().enumerate() {
                        let at = q_off + r * qs;
                        *ddr = simd::dot(&go[at..at + hd], &o[at..at + hd]);
                    }
                    // SAFETY (all mm calls below): the row ranges i0..i0+bq (queries, dO) and
                    // k0..k0+nk (keys, values, dk, dv) of this head are in bounds of their slices;
                    // p and ds hold bq*nk values.
                    unsafe {
                        // dP = dO v^T
                        mm(bq, nk, hd, ds.as_mut_ptr(), nk, false, go[q_off..].as_ptr(), 1, qs, v[kv_off..].as_ptr(), ks, 1, T::c1());
                    }
                    simd::dispatch(
                        #[inline(always)]
                        || {
                            for (r, (prow, dsrow)) in p.chunks_mut(nk).zip(ds.chunks_mut(nk)).enumerate() {
                                let i = i0 + r;
                                let (lo, hi) = (op.first_key(i) - k0, i + 1 - k0);
                                let (li, dr) = (lse[i], dd[r]);
                                for (pc, dc) in prow[lo..hi].iter_mut().zip(&mut dsrow[lo..hi]) {
                                    let pv = (*pc - li).exp_fast();
                                    *pc = pv;
                                    *dc = pv * (*dc - dr) * scale;
                                }
                                for row in [&mut *prow, &mut *dsrow] {
                                    row[..lo].fill(T::c0());
                                    row[hi..].fill(T::c0());
                                }
                            }
                        },
                    );
                    unsafe {
                        // dV[k0..] += P^T dO
                        mm(nk, hd, bq, dv[k0 * hd..].as_mut_ptr(), hd, true, p.as_ptr(), nk, 1, go[q_off..].as_ptr(), 1, qs, T::c1());
                        // dq = dS k
                        let dq_at = (j * s + i0) * hd;
                        mm(bq, hd, nk, dq[dq_at..].as_mut_ptr(), hd, false, ds.as_ptr(), 1, nk, k[kv_off..].as_ptr(), 1, ks, T::c1());
                        // dk[k0..] += dS^T q
                        mm(nk, hd, bq, dk[k0 * hd..].as_mut_ptr(), hd, true, ds.as_ptr(), nk, 1, q[q_off..].as_ptr(), 1, qs, T::c1());
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq_all = vec![T::c0(); q.len()];
    let mut dk_all = vec![T::c0(); k.len()];
    let mut dv_all = vec![T::c0(); v.len()];
    for (task, (dq, dk, dv)) in parts.into_iter().enumerate() {
        let (seq, kvh) = (task / d.nkv, task % d.nkv);
        for t in 0..s {
            let at = ((seq * s + t) * d.nkv + kvh) * hd;
            dk_all[at..at + hd].copy_from_slice(&dk[t * hd..(t + 1) * hd]);
            dv_all[at..at + hd].copy_from_slice(&dv[t * hd..(t + 1) * hd]);
            for j in 0..g {
                let at = ((seq * s + t) * d.nh + kvh * g + j) * hd;
                dq_all[at..at + hd].copy_from_slice(&dq[(j * s + t) * hd..][..hd]);
            }
        }
    }
    (dq_all, dk_all, dv_all)
}

fn dims(lq: &Layout, lk: &Layout, lv: &Layout) -> candle_core::Result<Dims> {
    let (b, s, nh, hd) = lq.shape().dims4()?;
    let (bk, sk, nkv, hdk) = lk.shape().dims4()?;
    if (bk, sk, hdk) != (b, s, hd) || lv.dims() != lk.dims() || nkv == 0 || nh % nkv != 0 {
        return Err(msg(&format!(
            "fused attention: q {:?}, k {:?}, v {:?} are not [b, s, heads, hd] with heads a multiple of kv heads",
            lq.dims(),
            lk.dims(),
            lv.dims()
        )));
    }
    Ok(Dims { b, s, nh, nkv, hd })
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "escale-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1, l2, l3)?;
        let (out, lse) = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (o, l) = forward::<f32>(self, d, slice(s1, l1, "attention")?, slice(s2, l2, "attention")?, slice(s3, l3, "attention")?);
                (CpuStorage::F32(o), CpuStorage::F32(l))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (o, l) = forward::<f64>(self, d, slice(s1, l1, "attention")?, slice(s2, l2, "attention")?, slice(s3, l3, "attention")?);
                (CpuStorage::F64(o), CpuStorage::F64(l))
            }
            _ => return Err(msg("fused attention: f32 or f64 inputs of one dtype")),
        };
        *self.lse.lock().map_err(|_| msg("fused attention: poisoned lock"))? = Some(lse);
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, res, grad) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, res.contiguous()?, grad.contiguous()?);
        let d = dims(q.layout(), k.layout(), v.layout())?;
        let lse_guard = self.lse.lock().map_err(|_| msg("fused attention: poisoned lock"))?;
        let lse = lse_guard.as_ref().ok_or_else(|| msg("fused attention: backward before forward"))?;
        let (qd, kd, vd, od, gd) = (Data::of(&q)?, Data::of(&k)?, Data::of(&v)?, Data::of(&res)?, Data::of(&grad)?);
        let (dq, dk, dv) = match (q.dtype(), lse) {
            (DType::F32, CpuStorage::F32(l)) => {
                let (a, b, c) = backward::<f32>(self, d, qd.get()?, kd.get()?, vd.get()?, od.get()?, l, gd.get()?);
                (Tensor::from_vec(a, q.shape(), q.device())?, Tensor::from_vec(b, k.shape(), k.device())?, Tensor::from_vec(c, v.shape(), v.device())?)
            }
            (DType::F64, CpuStorage::F64(l)) => {
                let (a, b, c) = backward::<f64>(self, d, qd.get()?, kd.get()?, vd.get()?, od.get()?, l, gd.get()?);
                (Tensor::from_vec(a, q.shape(), q.device())?, Tensor::from_vec(b, k.shape(), k.device())?, Tensor::from_vec(c, v.shape(), v.device())?)
            }
            _ => return Err(msg("fused attention: dtype changed between forward and backward")),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal (optionally sliding-window) attention of `q [b, s, heads, hd]` over `k`, `v` `[b, s,
/// kv_heads, hd]` (all contiguous, f32 or f64, positions starting at 0), scores scaled by `scale`.
/// Returns `[b, s, heads, hd]`. Differentiable in q, k and v.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>, scale: f64) -> Result<Tensor> {
    let op = CausalAttention { window, scale, lse: Mutex::new(None) };
    Ok(q.apply_op3(k, v, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{matches_finite_differences, same_as_composite, var};
    use crate::ops;
    use candle_core::Device;

    /// The composite attention as the model computes it without the kernel: kv heads repeated,
    /// `q k^T * scale + mask`, softmax, `@ v`, with the mask built like `Model::mask`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>) -> Tensor {
        let (_, s, nh, hd) = q.dims4().unwrap();
        let g = nh / k.dim(2).unwrap();
        let idx: Vec<u32> = (0..nh as u32).map(|h| h / g as u32).collect();
        let idx = Tensor::new(idx.as_slice(), q.device()).unwrap();
        let rep = |t: &Tensor| t.index_select(&idx, 2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let (q, k, v) = (q.transpose(1, 2).unwrap().contiguous().unwrap(), rep(k), rep(v));
        let w = window.unwrap_or(usize::MAX);
        let mask: Vec<f64> =
            (0..s * s).map(|n| if n % s > n / s || n / s - n % s >= w { f64::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (s, s), q.device()).unwrap().to_dtype(q.dtype()).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt())).unwrap().broadcast_add(&mask).unwrap();
        let p = ops::softmax_last_dim_composite(&scores).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap()
    }

    fn fused(x: &[Tensor], window: Option<usize>) -> Tensor {
        let hd = x[0].dim(3).unwrap();
        causal_attention(&x[0], &x[1], &x[2], window, 1.0 / (hd as f64).sqrt()).unwrap()
    }

    #[test]
    fn attention_matches_composite_with_gqa_blocks_and_windows() {
        // seq 150 spans three query blocks (64, 64, 22); 6 heads over 2 kv heads.
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
            for window in [None, Some(1), Some(5), Some(70), Some(150), Some(1000)] {
                let (b, s, nh, nkv, hd) = (2, 150, 6, 2, 8);
                let inputs = [var(&[b, s, nh, hd], 1, dtype), var(&[b, s, nkv, hd], 2, dtype), var(&[b, s, nkv, hd], 3, dtype)];
                same_as_composite(&inputs, &|x| fused(x, window), &|x| reference(&x[0], &x[1], &x[2], window), tol);
            }
        }
        // Multi-head attention (no grouping) and a single position.
        for (s, nh, nkv) in [(9, 3, 3), (1, 2, 1)] {
            let inputs = [var(&[1, s, nh, 4], 4, DType::F64), var(&[1, s, nkv, 4], 5, DType::F64), var(&[1, s, nkv, 4], 6, DType::F64)];
            same_as_composite(&inputs, &|x| fused(x, None), &|x| reference(&x[0], &x[1], &x[2], None), 1e-12);
        }
    }

    #[test]
    fn attention_gradients_match_finite_differences() {
        for window in [None, Some(3)] {
            let inputs = [var(&[2, 70, 4, 4], 7, DType::F64), var(&[2, 70, 2, 4], 8, DType::F64), var(&[2, 70, 2, 4], 9, DType::F64)];
            matches_finite_differences(&inputs, &|x| fused(x, window));
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let q = Tensor::zeros((1, 4, 3, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((1, 4, 2, 8), DType::F32, &Device::Cpu).unwrap();
        let e = causal_attention(&q, &k, &k, None, 1.0).unwrap_err().to_string();
        assert!(e.contains("multiple of kv heads"), "{e}");
    }
}
