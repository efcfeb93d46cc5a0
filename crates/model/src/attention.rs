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
use crate::kernels::{msg, rope_rows, slice, Data, Real};
use crate::simd;

/// Queries per block: the score block is `BLOCK x keys` and the skipped upper triangle grows as
/// blocks shrink, while the matmuls get less efficient.
const BLOCK: usize = 64;

/// Sizes of one attention call: batch, sequence, query heads, kv heads, head dim.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionDims {
    pub b: usize,
    pub s: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

type Dims = AttentionDims;

impl Dims {
    fn group(&self) -> usize {
        self.nh / self.nkv
    }
}

struct CausalAttention {
    d: Dims,
    window: Option<usize>,
    scale: f64,
    /// RoPE tables `(cos, sin)` `[seq, head_dim]` applied to q and k inside the op (constants: no
    /// gradient), or none when the inputs arrive rotated.
    rope: Option<(Tensor, Tensor)>,
    /// What the forward leaves for the backward: per-row log-sum-exp of the scaled, masked scores
    /// `[batch, heads, seq]`, and the rotated `(q, k)` when the op rotates. Kept unconditionally:
    /// when no input is on a graph candle records no backward and drops the op (and this) with the
    /// forward.
    saved: Mutex<Option<Saved>>,
}

struct Saved {
    lse: CpuStorage,
    roped: Option<(CpuStorage, CpuStorage)>,
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

impl CausalAttention {
    fn check(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> candle_core::Result<()> {
        let d = self.d;
        let counts = [lq, lk, lv].map(|l| l.shape().elem_count());
        if d.nkv == 0 || !d.nh.is_multiple_of(d.nkv) || counts != [d.b * d.s * d.nh * d.hd, d.b * d.s * d.nkv * d.hd, d.b * d.s * d.nkv * d.hd] {
            return Err(msg(&format!(
                "fused attention: q {:?}, k {:?}, v {:?} do not hold [b, s, heads, hd] for {d:?} (heads a multiple of kv heads)",
                lq.dims(),
                lk.dims(),
                lv.dims()
            )));
        }
        Ok(())
    }

    /// q and k rotated by the op's RoPE tables (`inverse`: by the transposed rotation, for
    /// gradients), or none without tables.
    fn rotate<T: Real>(&self, q: &[T], k: &[T], inverse: bool) -> candle_core::Result<Option<(Vec<T>, Vec<T>)>> {
        let Some((cos, sin)) = &self.rope else { return Ok(None) };
        let (cd, sd) = (Data::of(cos)?, Data::of(sin)?);
        let (c, sn) = (cd.get::<T>()?, sd.get::<T>()?);
        let d = self.d;
        if c.len() != d.s * d.hd || sn.len() != d.s * d.hd || !d.hd.is_multiple_of(2) {
            return Err(msg(&format!("fused attention: RoPE tables {:?} are not [{}, {}] (even head_dim)", cos.dims(), d.s, d.hd)));
        }
        Ok(Some((rope_rows(q, c, sn, d.hd, d.nh, d.s, inverse), rope_rows(k, c, sn, d.hd, d.nkv, d.s, inverse))))
    }

    fn fwd<T: Real>(&self, q: &[T], k: &[T], v: &[T]) -> candle_core::Result<CpuStorage> {
        let roped = self.rotate(q, k, false)?;
        let (qr, kr) = roped.as_ref().map_or((q, k), |(a, b)| (a.as_slice(), b.as_slice()));
        let (out, lse) = forward(self, self.d, qr, kr, v);
        let roped = roped.map(|(a, b)| (T::to_cpu_storage_owned(a), T::to_cpu_storage_owned(b)));
        *self.saved.lock().map_err(|_| msg("fused attention: poisoned lock"))? = Some(Saved { lse: T::to_cpu_storage_owned(lse), roped });
        Ok(T::to_cpu_storage_owned(out))
    }

    fn bwd_t<T: Real>(&self, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, go: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let guard = self.saved.lock().map_err(|_| msg("fused attention: poisoned lock"))?;
        let saved = guard.as_ref().ok_or_else(|| msg("fused attention: backward before forward"))?;
        let (qd, kd, vd, od, gd) = (Data::of(q)?, Data::of(k)?, Data::of(v)?, Data::of(o)?, Data::of(go)?);
        // The forward kept the rotated q and k exactly when the op rotates.
        let (qr, kr) = match &saved.roped {
            Some((a, b)) => (T::cpu_storage_as_slice(a)?, T::cpu_storage_as_slice(b)?),
            None => (qd.get::<T>()?, kd.get::<T>()?),
        };
        let lse = T::cpu_storage_as_slice(&saved.lse)?;
        let (dq, dk, dv) = backward(self, self.d, qr, kr, vd.get()?, od.get()?, lse, gd.get()?);
        let (dq, dk) = match self.rotate(&dq, &dk, true)? {
            Some(unrotated) => unrotated,
            None => (dq, dk),
        };
        Ok((Tensor::from_vec(dq, q.shape(), q.device())?, Tensor::from_vec(dk, k.shape(), k.device())?, Tensor::from_vec(dv, v.shape(), v.device())?))
    }
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
        self.check(l1, l2, l3)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                self.fwd::<f32>(slice(s1, l1, "attention")?, slice(s2, l2, "attention")?, slice(s3, l3, "attention")?)?
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                self.fwd::<f64>(slice(s1, l1, "attention")?, slice(s2, l2, "attention")?, slice(s3, l3, "attention")?)?
            }
            _ => return Err(msg("fused attention: f32 or f64 inputs of one dtype")),
        };
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
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => self.bwd_t::<f32>(&q, &k, &v, &res, &grad)?,
            DType::F64 => self.bwd_t::<f64>(&q, &k, &v, &res, &grad)?,
            _ => return Err(msg("fused attention: f32 or f64 inputs")),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal (optionally sliding-window) attention of `q` over `k`, `v` (contiguous, f32 or f64,
/// holding `[b, s, heads, hd]` and `[b, s, kv_heads, hd]` in any shape of that size, positions
/// starting at 0), scores scaled by `scale`, with RoPE (`(cos, sin)` `[s, hd]`, rotate-half) applied
/// to q and k first when given. Returns `[b, s, heads, hd]` in q's shape. Differentiable in q, k
/// and v.
pub fn causal_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d: AttentionDims,
    rope: Option<(&Tensor, &Tensor)>,
    window: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    let rope = match rope {
        Some((c, s)) => Some((c.contiguous()?, s.contiguous()?)),
        None => None,
    };
    let op = CausalAttention { d, window, scale, rope, saved: Mutex::new(None) };
    Ok(q.apply_op3(k, v, op)?)
}

/// Causal (optionally sliding-window) attention of `q [b, s, heads, hd]` over `k`, `v` `[b, s,
/// kv_heads, hd]` (all contiguous, f32 or f64, positions starting at 0), scores scaled by `scale`.
/// Returns `[b, s, heads, hd]`. Differentiable in q, k and v.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>, scale: f64) -> Result<Tensor> {
    let (b, s, nh, hd) = q.dims4()?;
    let (bk, sk, nkv, hdk) = k.dims4()?;
    if (bk, sk, hdk) != (b, s, hd) || v.dims() != k.dims() {
        return Err(crate::error::ModelError::input(format!(
            "fused attention: q {:?}, k {:?}, v {:?} are not [b, s, heads, hd] with one b, s and hd",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    causal_attention_with(q, k, v, AttentionDims { b, s, nh, nkv, hd }, None, window, scale)
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

    /// RoPE inside the op, on the projections' 2-d `[b*s, heads*hd]` tensors, against the composite
    /// RoPE (`ops::rope` on `[b, heads, s, hd]`) followed by the composite attention; and gradients
    /// by finite differences.
    #[test]
    fn rope_inside_matches_composite_rope_then_attention() {
        let (b, s, nh, nkv, hd) = (2, 70, 4, 2, 6);
        let dims = AttentionDims { b, s, nh, nkv, hd };
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
            let (cos, sin) = crate::kernels::tests::tables(s, hd, dtype);
            let inputs = [var(&[b * s, nh * hd], 11, dtype), var(&[b * s, nkv * hd], 12, dtype), var(&[b * s, nkv * hd], 13, dtype)];
            let composite = |x: &[Tensor]| {
                let rot = |t: &Tensor, h: usize| {
                    let t = t.reshape((b, s, h, hd)).unwrap().transpose(1, 2).unwrap();
                    ops::rope(&t, &cos, &sin).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
                };
                let v = x[2].reshape((b, s, nkv, hd)).unwrap();
                reference(&rot(&x[0], nh), &rot(&x[1], nkv), &v, Some(30)).reshape((b * s, nh * hd)).unwrap()
            };
            let fused = |x: &[Tensor]| {
                causal_attention_with(&x[0], &x[1], &x[2], dims, Some((&cos, &sin)), Some(30), 1.0 / (hd as f64).sqrt()).unwrap()
            };
            same_as_composite(&inputs, &fused, &composite, tol);
            if dtype == DType::F64 {
                matches_finite_differences(&inputs, &fused);
            }
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
