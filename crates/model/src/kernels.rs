//! Fused CPU kernels with hand-written backward for the per-token ops of a decoder layer:
//! RMSNorm (`x`, `weight`), SwiGLU (`silu(gate) * up`), an MLP's gate + up projections with their
//! SwiGLU as one node ([`gated_up`]), the linear layer, and RoPE (rotate-half) on `[batch, seq,
//! heads, head_dim]`. The fused causal attention lives in [`crate::attention`]; the model applies
//! RoPE inside it ([`rope_rows`]), so [`rope_bshd`] is for RoPE outside attention.
//!
//! Each op is a candle `CustomOp` whose forward makes one pass over contiguous rows, rows in
//! parallel on the rayon pool, and whose `bwd` computes the input gradients in one more pass
//! (candle-nn's fused ops record no backward at all; docs/cpu-training-notes.md). The composite
//! versions in [`crate::ops`] chain 4-8 candle ops, each allocating a tensor and each recorded for
//! backward. Callers go through [`crate::ops`], which falls back to the composite ops for what the
//! kernels do not cover (non-contiguous input, dtypes other than f32/f64) or when the fused
//! kernels are switched off ([`crate::ops::set_fused_kernels`]).
//!
//! Gradients (with `r = 1/sqrt(mean(x^2) + eps)`, `s = sigmoid(gate)`):
//! * RMSNorm `y = x r w`: `dx = r (g w) - x r^3 mean(g w x)`, `dw = sum_rows(g x r)`;
//! * SwiGLU `y = gate s up`: `dgate = g up s (1 + gate (1 - s))`, `dup = g gate s`;
//! * RoPE `y_i = x_i cos_i + rot(x)_i sin_i`: `dx = g cos + rot^T(g sin)`, the inverse rotation.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, StorageRef, Tensor, WithDType};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::Result;
use crate::simd;

/// The float types the kernels are written for (f32 for training, f64 for gradient checks).
pub(crate) trait Real: WithDType + PartialOrd + Send + Sync + 'static {
    const NEG_INF: Self;
    /// `e^x`, vectorisable: [`crate::simd::exp_f32`] in f32 (about 1 ulp), `exp` in f64.
    fn exp_fast(self) -> Self;
    fn sqrt_(self) -> Self;
    fn ln_(self) -> Self;
    fn max_(self, other: Self) -> Self;
    const ZERO: Self;
    const ONE: Self;
    /// 0 and 1 (named apart from num_traits' `zero`/`one`, which `WithDType` also brings). Constants,
    /// not candle's `from_f64`: that is a call into another crate, made per element inside the loops.
    #[inline(always)]
    fn c0() -> Self {
        Self::ZERO
    }
    #[inline(always)]
    fn c1() -> Self {
        Self::ONE
    }
}

macro_rules! real_impl {
    (@exp_fast f32, $x:expr) => {
        crate::simd::exp_f32($x)
    };
    (@exp_fast f64, $x:expr) => {
        $x.exp()
    };
    ($t:tt) => {
        // `inline(always)`: so that the loops of [`crate::simd::dispatch`] get these inlined and
        // vectorised (without it, `exp_fast` stayed a call per element in another codegen unit).
        impl Real for $t {
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn exp_fast(self) -> Self {
                real_impl!(@exp_fast $t, self)
            }
            #[inline(always)]
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            #[inline(always)]
            fn ln_(self) -> Self {
                self.ln()
            }
            #[inline(always)]
            fn max_(self, other: Self) -> Self {
                self.max(other)
            }
        }
    };
}
real_impl!(f32);
real_impl!(f64);

/// Read access to the data of a contiguous CPU tensor (the storage lock is held while borrowed).
pub(crate) struct Data<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> Data<'a> {
    pub(crate) fn of(t: &'a Tensor) -> candle_core::Result<Data<'a>> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| msg("fused kernel: tensor is not contiguous"))?;
        Ok(Data { guard, start, end })
    }

    pub(crate) fn get<T: WithDType>(&self) -> candle_core::Result<&[T]> {
        match &*self.guard {
            Storage::Cpu(c) => Ok(&T::cpu_storage_as_slice(c)?[self.start..self.end]),
            _ => Err(msg("fused kernel: only the CPU device is supported")),
        }
    }
}

pub(crate) fn msg(m: &str) -> candle_core::Error {
    candle_core::Error::Msg(m.to_string())
}

/// The contiguous slice a layout describes.
pub(crate) fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| msg(&format!("fused {what}: input is not contiguous")))?;
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// Whether the fused kernels cover this tensor (CPU, f32/f64, contiguous).
pub(crate) fn covers(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64) && t.is_contiguous()
}

/// Rows per rayon task for row-wise kernels: enough work per task to amortise the hand-off.
fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNorm {
    eps: f64,
}

#[inline(always)]
fn rms_inv<T: Real>(x: &[T], eps: f64) -> T {
    T::c1() / (simd::dot(x, x) / T::from_f64(x.len() as f64) + T::from_f64(eps)).sqrt_()
}

fn rms_fwd<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::c0(); x.len()];
    let chunk = rows_per_task(d) * d;
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(yc, xc)| {
        simd::dispatch(
            #[inline(always)]
            || {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let r = rms_inv(xr, eps);
                    for ((o, &v), &wi) in yr.iter_mut().zip(xr).zip(w) {
                        *o = v * r * wi;
                    }
                }
            },
        )
    });
    y
}

/// `(dx, dw)` of RMSNorm for upstream gradient `g`.
fn rms_bwd<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = w.len();
    let mut dx = vec![T::c0(); x.len()];
    let chunk = rows_per_task(d) * d;
    let inv_d = T::from_f64(1.0 / d as f64);
    let dw = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .map(|(dxc, (xc, gc))| {
            let mut dw = vec![T::c0(); d];
            simd::dispatch(
                #[inline(always)]
                || {
                    for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                        let r = rms_inv(xr, eps);
                        // sum(g w x): g w into dxr first (overwritten below), then its dot with x.
                        for ((o, &gi), &wi) in dxr.iter_mut().zip(gr).zip(w) {
                            *o = gi * wi;
                        }
                        let dot = simd::dot(dxr, xr);
                        let c = r * r * r * dot * inv_d;
                        for ((((o, &gi), &wi), &xi), dwi) in dxr.iter_mut().zip(gr).zip(w).zip(xr).zip(dw.iter_mut()) {
                            *o = r * gi * wi - xi * c;
                            *dwi += gi * xi * r;
                        }
                    }
                },
            );
            dw
        })
        .reduce(
            || vec![T::c0(); d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
                a
            },
        );
    (dx, dw)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "escale-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().ok_or_else(|| msg("rms_norm of a scalar"))?;
        if l2.shape().elem_count() != d {
            return Err(msg(&format!("rms_norm: weight {:?} does not match the last dim {d}", l2.dims())));
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(rms_fwd(slice::<f32>(s1, l1, "rms_norm")?, slice(s2, l2, "rms_norm")?, self.eps))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(rms_fwd(slice::<f64>(s1, l1, "rms_norm")?, slice(s2, l2, "rms_norm")?, self.eps))
            }
            _ => return Err(msg("fused rms_norm: f32 or f64 inputs of one dtype")),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (dx, dw) = {
            let (xd, wd, gd) = (Data::of(&x)?, Data::of(&w)?, Data::of(&grad)?);
            match x.dtype() {
                DType::F32 => {
                    let (dx, dw) = rms_bwd(xd.get::<f32>()?, wd.get()?, gd.get()?, self.eps);
                    (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
                }
                _ => {
                    let (dx, dw) = rms_bwd(xd.get::<f64>()?, wd.get()?, gd.get()?, self.eps);
                    (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
                }
            }
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// Fused RMSNorm over the last dim (`x` contiguous, `weight` `[last dim]`), with backward for both.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.apply_op2(&weight.contiguous()?, RmsNorm { eps })?)
}

// ---------------------------------------------------------------- SwiGLU

struct SwiGlu;

fn swiglu_fwd<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut y = Vec::with_capacity(gate.len());
    y.spare_capacity_mut().par_chunks_mut(16384).zip(gate.par_chunks(16384).zip(up.par_chunks(16384))).for_each(|(yc, (gc, uc))| {
        simd::dispatch(
            #[inline(always)]
            || {
                for ((o, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                    o.write(g / (T::c1() + (T::c0() - g).exp_fast()) * u);
                }
            },
        )
    });
    // SAFETY: the loop above wrote every element (the chunks cover the whole capacity, gate.len()).
    unsafe { y.set_len(gate.len()) };
    y
}

/// SwiGLU's backward in place: `gate` becomes `dgate` and `up` becomes `dup`, for upstream `dy`.
fn swiglu_bwd_in_place<T: Real>(gate: &mut [T], up: &mut [T], dy: &[T]) {
    let c = 16384;
    gate.par_chunks_mut(c).zip(up.par_chunks_mut(c)).zip(dy.par_chunks(c)).for_each(|((gc, uc), dyc)| {
        simd::dispatch(
            #[inline(always)]
            || {
                for ((gi, ui), &d) in gc.iter_mut().zip(uc.iter_mut()).zip(dyc) {
                    let (g, u) = (*gi, *ui);
                    let s = T::c1() / (T::c1() + (T::c0() - g).exp_fast());
                    *ui = d * g * s;
                    *gi = d * u * s * (T::c1() + g * (T::c1() - s));
                }
            },
        )
    });
}

fn swiglu_bwd<T: Real>(gate: &[T], up: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut dg, mut du) = (gate.to_vec(), up.to_vec());
    swiglu_bwd_in_place(&mut dg, &mut du, dy);
    (dg, du)
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "escale-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(msg(&format!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims())));
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(swiglu_fwd(slice::<f32>(s1, l1, "swiglu")?, slice(s2, l2, "swiglu")?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(swiglu_fwd(slice::<f64>(s1, l1, "swiglu")?, slice(s2, l2, "swiglu")?))
            }
            _ => return Err(msg("fused swiglu: f32 or f64 inputs of one dtype")),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gate, up, grad) = (gate.contiguous()?, up.contiguous()?, grad.contiguous()?);
        let (dg, du) = {
            let (gd, ud, dd) = (Data::of(&gate)?, Data::of(&up)?, Data::of(&grad)?);
            let (sh, dev) = (gate.shape(), gate.device());
            match gate.dtype() {
                DType::F32 => {
                    let (dg, du) = swiglu_bwd(gd.get::<f32>()?, ud.get()?, dd.get()?);
                    (Tensor::from_vec(dg, sh, dev)?, Tensor::from_vec(du, sh, dev)?)
                }
                _ => {
                    let (dg, du) = swiglu_bwd(gd.get::<f64>()?, ud.get()?, dd.get()?);
                    (Tensor::from_vec(dg, sh, dev)?, Tensor::from_vec(du, sh, dev)?)
                }
            }
        };
        Ok((Some(dg), Some(du)))
    }
}

/// Fused `silu(gate) * up` (both contiguous, same shape), with backward for both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.apply_op2(up, SwiGlu)?)
}

// ---------------------------------------------------------------- SwiGLU MLP, input side

/// `silu(x wg^T) * (x wu^T)` for `wg`, `wu` `[ffn, in]`: an MLP's gate and up projections and their
/// SwiGLU as one graph node. Apart, they are three nodes whose `[tokens, ffn]` outputs each get a
/// zero-filled gradient buffer and an add in candle's backward, and whose three input gradients
/// are summed by two more adds; here the backward turns the kept projections into their gradients
/// in place and sums `dx` inside the gemms.
struct GatedUp {
    /// The projections `(x wg^T, x wu^T)` kept for the backward, which consumes them; a second
    /// backward finds them taken and recomputes them. (Without a graph candle drops the op, and
    /// these, with the forward.)
    saved: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

fn gated_up_fwd<T: Real>(x: &[T], wg: &[T], wu: &[T], din: usize, dff: usize) -> (Vec<T>, (Vec<T>, Vec<T>)) {
    let (g, u) = (linear_fwd(x, wg, din, dff), linear_fwd(x, wu, din, dff));
    (swiglu_fwd(&g, &u), (g, u))
}

/// `(dx, dwg, dwu)` from the projections `g`, `u` (consumed: they become `dgate`, `dup`).
fn gated_up_bwd<T: Real>(x: &[T], wg: &[T], wu: &[T], (mut g, mut u): (Vec<T>, Vec<T>), dh: &[T], din: usize, dff: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
    swiglu_bwd_in_place(&mut g, &mut u, dh);
    let n = x.len() / din;
    // SAFETY: dx [n, din] = dg [n, dff] wg [dff, din] + du wu, the second gemm accumulating onto the
    // first's full write; dw* [dff, din] = d*^T [dff, n] x [n, din], each written in full.
    unsafe {
        let dx = written_by(n * din, |dx| {
            matmul_into(n, din, dff, dx, false, &g, 1, dff, wg, 1, din);
            matmul_into(n, din, dff, dx, true, &u, 1, dff, wu, 1, din);
        });
        let dwg = written_by(dff * din, |d| matmul_into(dff, din, n, d, false, &g, dff, 1, x, 1, din));
        let dwu = written_by(dff * din, |d| matmul_into(dff, din, n, d, false, &u, dff, 1, x, 1, din));
        (dx, dwg, dwu)
    }
}

impl GatedUp {
    fn fwd<T: Real>(&self, x: &[T], wg: &[T], wu: &[T], din: usize, dff: usize) -> candle_core::Result<CpuStorage> {
        let (h, (g, u)) = gated_up_fwd(x, wg, wu, din, dff);
        let kept = (T::to_cpu_storage_owned(g), T::to_cpu_storage_owned(u));
        *self.saved.lock().map_err(|_| msg("fused gated_up: poisoned lock"))? = Some(kept);
        Ok(T::to_cpu_storage_owned(h))
    }

    fn bwd_t<T: Real>(&self, x: &Tensor, wg: &Tensor, wu: &Tensor, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (dff, din) = wg.dims2()?;
        let (xd, gd, ud, dd) = (Data::of(x)?, Data::of(wg)?, Data::of(wu)?, Data::of(grad)?);
        let (xs, wgs, wus) = (xd.get::<T>()?, gd.get::<T>()?, ud.get::<T>()?);
        let saved = self.saved.lock().map_err(|_| msg("fused gated_up: poisoned lock"))?.take();
        let proj = match saved {
            Some((g, u)) => (T::cpu_storage_data(g)?, T::cpu_storage_data(u)?),
            None => (linear_fwd(xs, wgs, din, dff), linear_fwd(xs, wus, din, dff)),
        };
        let (dx, dwg, dwu) = gated_up_bwd(xs, wgs, wus, proj, dd.get::<T>()?, din, dff);
        Ok((Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dwg, wg.shape(), wg.device())?, Tensor::from_vec(dwu, wu.shape(), wu.device())?))
    }
}

impl CustomOp3 for GatedUp {
    fn name(&self) -> &'static str {
        "escale-gated-up"
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
        let (din, dff, shape) = linear_dims(l1, l2)?;
        if l3.dims() != l2.dims() {
            return Err(msg(&format!("fused gated_up: gate {:?} and up {:?} weights differ in shape", l2.dims(), l3.dims())));
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                self.fwd::<f32>(slice(s1, l1, "gated_up")?, slice(s2, l2, "gated_up")?, slice(s3, l3, "gated_up")?, din, dff)?
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                self.fwd::<f64>(slice(s1, l1, "gated_up")?, slice(s2, l2, "gated_up")?, slice(s3, l3, "gated_up")?, din, dff)?
            }
            _ => return Err(msg("fused gated_up: f32 or f64 inputs of one dtype")),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wg: &Tensor,
        wu: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, wg, wu, grad) = (x.contiguous()?, wg.contiguous()?, wu.contiguous()?, grad.contiguous()?);
        let (dx, dwg, dwu) = match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(&x, &wg, &wu, &grad)?,
            _ => self.bwd_t::<f64>(&x, &wg, &wu, &grad)?,
        };
        Ok((Some(dx), Some(dwg), Some(dwu)))
    }
}

/// Fused `silu(x wg^T) * (x wu^T)` for `x [.., in]` and `wg`, `wu` `[ffn, in]` (all contiguous, one
/// dtype), with backward for all three.
pub fn gated_up(x: &Tensor, wg: &Tensor, wu: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op3(wg, wu, GatedUp { saved: Mutex::new(None) })?)
}

// ---------------------------------------------------------------- RoPE

/// RoPE on `x [batch, seq, heads, head_dim]` with `cos`/`sin` `[seq, head_dim]` (rotate-half).
struct RopeBshd;

/// Applies the rotation (`inverse`: its transpose, for the backward) to every `[head_dim]` row of
/// `x`, row `r` at position `(r / heads) % seq`.
pub(crate) fn rope_rows<T: Real>(x: &[T], cos: &[T], sin: &[T], hd: usize, heads: usize, seq: usize, inverse: bool) -> Vec<T> {
    let mut y = vec![T::c0(); x.len()];
    let row = heads * hd; // one position of one sequence
    let per_task = rows_per_task(row);
    y.par_chunks_mut(per_task * row).zip(x.par_chunks(per_task * row)).enumerate().for_each(|(t, (yc, xc))| {
        simd::dispatch(
            #[inline(always)]
            || {
                for (j, (yp, xp)) in yc.chunks_mut(row).zip(xc.chunks(row)).enumerate() {
                    rotate_position(yp, xp, cos, sin, (t * per_task + j) % seq, hd, inverse);
                }
            },
        )
    });
    y
}

/// [`rope_rows`] for the heads of one position.
#[inline(always)]
fn rotate_position<T: Real>(yc: &mut [T], xc: &[T], cos: &[T], sin: &[T], pos: usize, hd: usize, inverse: bool) {
    let half = hd / 2;
    let (c, s) = (&cos[pos * hd..(pos + 1) * hd], &sin[pos * hd..(pos + 1) * hd]);
    for (yr, xr) in yc.chunks_mut(hd).zip(xc.chunks(hd)) {
        for i in 0..half {
            let (a, b) = (xr[i], xr[i + half]);
            if inverse {
                // d/dx of y_i = x_i c_i - x_{i+h} s_i and y_{i+h} = x_{i+h} c_{i+h} + x_i s_{i+h}.
                yr[i] = a * c[i] + b * s[i + half];
                yr[i + half] = b * c[i + half] - a * s[i];
            } else {
                yr[i] = a * c[i] - b * s[i];
                yr[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
    }
}

fn rope_dims(l: &Layout, lc: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (_, s, h, hd) = l.shape().dims4()?;
    if hd % 2 != 0 || lc.dims() != [s, hd] {
        return Err(msg(&format!("fused rope: x {:?} needs cos/sin [{s}, {hd}] (even head_dim), found {:?}", l.dims(), lc.dims())));
    }
    Ok((s, h, hd))
}

impl CustomOp3 for RopeBshd {
    fn name(&self) -> &'static str {
        "escale-rope-bshd"
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
        let (s, h, hd) = rope_dims(l1, l2)?;
        if l3.dims() != l2.dims() {
            return Err(msg("fused rope: cos and sin differ in shape"));
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(rope_rows(
                slice::<f32>(s1, l1, "rope")?,
                slice(s2, l2, "rope")?,
                slice(s3, l3, "rope")?,
                hd,
                h,
                s,
                false,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(rope_rows(
                slice::<f64>(s1, l1, "rope")?,
                slice(s2, l2, "rope")?,
                slice(s3, l3, "rope")?,
                hd,
                h,
                s,
                false,
            )),
            _ => return Err(msg("fused rope: f32 or f64 inputs of one dtype")),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad, cos, sin) = (grad.contiguous()?, cos.contiguous()?, sin.contiguous()?);
        let (_, s, h, hd) = grad.dims4()?;
        let dx = {
            let (gd, cd, sd) = (Data::of(&grad)?, Data::of(&cos)?, Data::of(&sin)?);
            match grad.dtype() {
                DType::F32 => Tensor::from_vec(rope_rows(gd.get::<f32>()?, cd.get()?, sd.get()?, hd, h, s, true), grad.shape(), grad.device())?,
                _ => Tensor::from_vec(rope_rows(gd.get::<f64>()?, cd.get()?, sd.get()?, hd, h, s, true), grad.shape(), grad.device())?,
            }
        };
        // The tables are constants (positions), never trained.
        Ok((Some(dx), None, None))
    }
}

/// Fused RoPE on `x [batch, seq, heads, head_dim]` (contiguous) with `cos`/`sin` `[seq, head_dim]`.
pub fn rope_bshd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op3(&cos.contiguous()?, &sin.contiguous()?, RopeBshd)?)
}

// ---------------------------------------------------------------- Linear

/// `y [n, out] = x [n, in] w^T` for `w [out, in]` (HF layout), one graph node. Through candle's
/// `x.matmul(&w.t())` the backward goes through a transpose node, whose gradient lands on the
/// weight as a strided add; here both gradients are single gemm calls into contiguous buffers.
struct LinearOp;

fn threads() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst [m x n] (+)= lhs [m x k] rhs [k x n]` (`accumulate`: add to what `dst` holds), operands by
/// pointer and (column, row) strides, on the rayon pool.
///
/// # Safety
/// Every operand must hold the elements its strides address; without `accumulate`, `dst` may be
/// uninitialised (gemm does not read it).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_into<T: Real>(m: usize, n: usize, k: usize, dst: *mut T, accumulate: bool, lhs: &[T], lhs_cs: usize, lhs_rs: usize, rhs: &[T], rhs_cs: usize, rhs_rs: usize) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        n as isize,
        accumulate,
        lhs.as_ptr(),
        lhs_cs as isize,
        lhs_rs as isize,
        rhs.as_ptr(),
        rhs_cs as isize,
        rhs_rs as isize,
        T::c1(),
        T::c1(),
        false,
        false,
        false,
        threads(),
    )
}

/// A buffer of `len` values that `fill` writes in full through the pointer it is given (a gemm that
/// does not read its destination), without zero-filling it first: on the standard training config
/// the zero-fills of buffers about to be overwritten were a measurable share of a step (issue 16).
///
/// # Safety
/// `fill` must write all `len` elements.
unsafe fn written_by<T: Real>(len: usize, fill: impl FnOnce(*mut T)) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    fill(v.spare_capacity_mut().as_mut_ptr().cast::<T>());
    v.set_len(len);
    v
}

fn linear_fwd<T: Real>(x: &[T], w: &[T], din: usize, dout: usize) -> Vec<T> {
    let n = x.len() / din;
    // SAFETY: x is [n, din], w is [dout, din] read as w^T [din, dout] (column stride din); the gemm
    // writes all of y [n, dout].
    unsafe { written_by(n * dout, |y| matmul_into(n, dout, din, y, false, x, 1, din, w, din, 1)) }
}

fn linear_bwd<T: Real>(x: &[T], w: &[T], g: &[T], din: usize, dout: usize) -> (Vec<T>, Vec<T>) {
    let n = x.len() / din;
    // SAFETY: dx [n, din] = g [n, dout] w [dout, din]; dw [dout, din] = g^T [dout, n] x [n, din];
    // each gemm writes its whole destination.
    unsafe {
        let dx = written_by(n * din, |dx| matmul_into(n, din, dout, dx, false, g, 1, dout, w, 1, din));
        let dw = written_by(dout * din, |dw| matmul_into(dout, din, n, dw, false, g, dout, 1, x, 1, din));
        (dx, dw)
    }
}

fn linear_dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, Shape)> {
    let (dout, din) = l2.shape().dims2()?;
    let mut dims = l1.dims().to_vec();
    if dims.last() != Some(&din) {
        return Err(msg(&format!("linear: input {:?} does not end in the weight's in-features ({:?})", l1.dims(), l2.dims())));
    }
    *dims.last_mut().expect("checked above") = dout;
    Ok((din, dout, Shape::from(dims)))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "escale-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (din, dout, shape) = linear_dims(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(linear_fwd(slice::<f32>(s1, l1, "linear")?, slice(s2, l2, "linear")?, din, dout))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(linear_fwd(slice::<f64>(s1, l1, "linear")?, slice(s2, l2, "linear")?, din, dout))
            }
            _ => return Err(msg("fused linear: f32 or f64 inputs of one dtype")),
        };
        Ok((out, shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (dout, din) = w.dims2()?;
        let (dx, dw) = {
            let (xd, wd, gd) = (Data::of(&x)?, Data::of(&w)?, Data::of(&grad)?);
            match x.dtype() {
                DType::F32 => {
                    let (dx, dw) = linear_bwd(xd.get::<f32>()?, wd.get()?, gd.get()?, din, dout);
                    (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
                }
                _ => {
                    let (dx, dw) = linear_bwd(xd.get::<f64>()?, wd.get()?, gd.get()?, din, dout);
                    (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
                }
            }
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// `x [.., in] w^T` for `w [out, in]` (both contiguous), with backward for both.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op2(w, LinearOp)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops;
    use candle_core::{Device, Var};

    /// Deterministic, non-symmetric values in about [-2, 2].
    pub(crate) fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 37 + seed * 101) % 53) as f64 - 26.0) * 0.077 + ((i + seed) as f64 * 0.3).sin() * 0.1).collect()
    }

    pub(crate) fn var(shape: &[usize], seed: usize, dtype: DType) -> Var {
        let n = shape.iter().product();
        Var::from_tensor(&Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f64> = a.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let b: Vec<f64> = b.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// A fixed non-uniform weighting of the output, so the upstream gradient is not all ones.
    pub(crate) fn weights_like(t: &Tensor) -> Tensor {
        let n = t.elem_count();
        let w: Vec<f64> = (0..n).map(|i| ((i * 7 % 13) as f64 - 6.0) * 0.21).collect();
        Tensor::from_vec(w, t.shape(), t.device()).unwrap().to_dtype(t.dtype()).unwrap()
    }

    /// Forward values and the gradients of `sum(f(inputs) * w)` of two implementations agree.
    pub(crate) fn same_as_composite(inputs: &[Var], fused: &dyn Fn(&[Tensor]) -> Tensor, composite: &dyn Fn(&[Tensor]) -> Tensor, tol: f64) {
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yc) = (fused(&xs), composite(&xs));
        let d = max_diff(&yf, &yc);
        assert!(d <= tol, "forward differs by {d}");
        let w = weights_like(&yf);
        let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (yc * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in inputs.iter().enumerate() {
            let (a, b) = (gf.get(v.as_tensor()), gc.get(v.as_tensor()));
            let (a, b) = (a.unwrap_or_else(|| panic!("fused: no gradient for input {i}")), b.unwrap());
            let d = max_diff(a, b);
            assert!(d <= tol * 10.0, "gradient of input {i} differs by {d}");
        }
    }

    /// Central differences (f64) of `sum(f(inputs) * w)` at a few positions of every input.
    pub(crate) fn matches_finite_differences(inputs: &[Var], f: &dyn Fn(&[Tensor]) -> Tensor) {
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let w = weights_like(&f(&xs));
        let loss = |xs: &[Tensor]| (f(xs) * &w).unwrap().sum_all().unwrap();
        let grads = loss(&xs).backward().unwrap();
        for (i, v) in inputs.iter().enumerate() {
            let g: Vec<f64> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let n = base.len();
            for at in [0, 1, n / 3, n / 2, n - 2, n - 1] {
                let eval = |delta: f64| {
                    let mut moved = base.clone();
                    moved[at] += delta;
                    let mut xs = xs.clone();
                    xs[i] = Tensor::from_vec(moved, v.shape(), &Device::Cpu).unwrap();
                    loss(&xs).to_scalar::<f64>().unwrap()
                };
                let num = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                assert!((num - g[at]).abs() < 1e-6 * (1.0 + g[at].abs()), "input {i}[{at}]: numeric {num} vs analytic {}", g[at]);
            }
        }
    }

    #[test]
    fn rms_norm_matches_composite_and_finite_differences() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-13)] {
            // Rows of 19 (not a multiple of any SIMD width); 3x5 leading dims; many rows for several tasks.
            for shape in [vec![3, 5, 19], vec![2100, 8]] {
                let d = *shape.last().unwrap();
                let inputs = [var(&shape, 1, dtype), var(&[d], 2, dtype)];
                same_as_composite(
                    &inputs,
                    &|x| rms_norm(&x[0], &x[1], 1e-5).unwrap(),
                    &|x| ops::rms_norm_composite(&x[0], &x[1], 1e-5).unwrap(),
                    tol,
                );
            }
        }
        let inputs = [var(&[4, 3, 6], 3, DType::F64), var(&[6], 4, DType::F64)];
        matches_finite_differences(&inputs, &|x| rms_norm(&x[0], &x[1], 0.05).unwrap());
    }

    #[test]
    fn swiglu_matches_composite_and_finite_differences() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-13)] {
            for shape in [vec![3, 11], vec![40000]] {
                let inputs = [var(&shape, 5, dtype), var(&shape, 6, dtype)];
                same_as_composite(&inputs, &|x| swiglu(&x[0], &x[1]).unwrap(), &|x| ops::swiglu_composite(&x[0], &x[1]).unwrap(), tol);
            }
        }
        let inputs = [var(&[5, 7], 7, DType::F64), var(&[5, 7], 8, DType::F64)];
        matches_finite_differences(&inputs, &|x| swiglu(&x[0], &x[1]).unwrap());
    }

    #[test]
    fn gated_up_matches_linear_then_swiglu_and_finite_differences() {
        let composite = |x: &[Tensor]| {
            let proj = |w: &Tensor| x[0].broadcast_matmul(&w.t().unwrap()).unwrap();
            ops::swiglu_composite(&proj(&x[1]), &proj(&x[2])).unwrap()
        };
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-13)] {
            let inputs = [var(&[2, 37, 19], 21, dtype), var(&[23, 19], 22, dtype), var(&[23, 19], 23, dtype)];
            same_as_composite(&inputs, &|x| gated_up(&x[0], &x[1], &x[2]).unwrap(), &composite, tol);
        }
        let inputs = [var(&[5, 6], 24, DType::F64), var(&[4, 6], 25, DType::F64), var(&[4, 6], 26, DType::F64)];
        matches_finite_differences(&inputs, &|x| gated_up(&x[0], &x[1], &x[2]).unwrap());
        // A second backward through the same graph finds the kept projections taken and recomputes them.
        let y = gated_up(inputs[0].as_tensor(), inputs[1].as_tensor(), inputs[2].as_tensor()).unwrap().sum_all().unwrap();
        let (g1, g2) = (y.backward().unwrap(), y.backward().unwrap());
        for v in &inputs {
            assert!(max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()) < 1e-14);
        }
    }

    /// Tables that differ in their two halves, so a kernel that assumed duplicated halves would fail.
    pub(crate) fn tables(s: usize, hd: usize, dtype: DType) -> (Tensor, Tensor) {
        let c: Vec<f64> = (0..s * hd).map(|i| (i as f64 * 0.37).cos()).collect();
        let n: Vec<f64> = (0..s * hd).map(|i| (i as f64 * 0.53 + 0.1).sin()).collect();
        let t = |v| Tensor::from_vec(v, (s, hd), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        (t(c), t(n))
    }

    #[test]
    fn rope_matches_composite_and_finite_differences() {
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
            let (b, s, h, hd) = (2, 5, 3, 8);
            let (cos, sin) = tables(s, hd, dtype);
            let inputs = [var(&[b, s, h, hd], 9, dtype)];
            // The composite op works on [b, h, s, hd]; compare in the fused op's layout.
            same_as_composite(
                &inputs,
                &|x| rope_bshd(&x[0], &cos, &sin).unwrap(),
                &|x| ops::rope(&x[0].transpose(1, 2).unwrap(), &cos, &sin).unwrap().transpose(1, 2).unwrap(),
                tol,
            );
        }
        let (cos, sin) = tables(4, 6, DType::F64);
        let inputs = [var(&[2, 4, 3, 6], 10, DType::F64)];
        matches_finite_differences(&inputs, &|x| rope_bshd(&x[0], &cos, &sin).unwrap());
    }

    #[test]
    fn linear_matches_matmul_and_finite_differences() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-13)] {
            let inputs = [var(&[2, 37, 19], 13, dtype), var(&[23, 19], 14, dtype)];
            same_as_composite(
                &inputs,
                &|x| linear(&x[0], &x[1]).unwrap(),
                &|x| x[0].broadcast_matmul(&x[1].t().unwrap()).unwrap(),
                tol,
            );
        }
        let inputs = [var(&[5, 6], 15, DType::F64), var(&[4, 6], 16, DType::F64)];
        matches_finite_differences(&inputs, &|x| linear(&x[0], &x[1]).unwrap());
    }

    #[test]
    fn fallbacks_cover_what_the_kernels_do_not() {
        // A transposed (strided) input goes through the composite path and still matches.
        let x = var(&[6, 4], 11, DType::F32);
        let w = var(&[6], 12, DType::F32);
        let xt = x.as_tensor().t().unwrap();
        assert!(!covers(&xt));
        let y = ops::rms_norm(&xt, w.as_tensor(), 1e-6).unwrap();
        let want = ops::rms_norm_composite(&xt.contiguous().unwrap(), w.as_tensor(), 1e-6).unwrap();
        assert!(max_diff(&y, &want) < 1e-6);
    }
}
