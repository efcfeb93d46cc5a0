//! Training ops built only from candle-core primitives that record a backward pass, and the
//! dispatch to the fused kernels with their own backward ([`crate::fused`]: softmax, log-softmax;
//! [`crate::kernels`]: RMSNorm, SwiGLU, RoPE, linear; [`crate::attention`]), which each fall back to
//! the composite op for what they do not cover or when switched off ([`set_fused_kernels`]).
//!
//! candle-nn 0.11's fused `softmax_last_dim`, `rms_norm` and rotary ops compute the forward but
//! record no backward: gradients silently stop there (see docs/cpu-training-notes.md). Everything
//! here is a chain of candle-core ops (exp, sum, sqrt, gather, matmul, ...) whose gradients candle
//! implements, so the whole model is differentiable; the finite-difference tests in this crate
//! check each of them. A test (`no_fused_candle_nn_ops`) fails if this crate ever calls candle-nn.

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result};

/// RMSNorm as in transformers' `LlamaRMSNorm`: `w * x / sqrt(mean(x^2) + eps)` over the last dim.
/// The fused kernel ([`crate::kernels::rms_norm`]) for contiguous f32/f64 input, else
/// [`rms_norm_composite`].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_kernel("rms_norm") && crate::kernels::covers(x) && weight.dtype() == x.dtype() {
        crate::kernels::rms_norm(x, weight, eps)
    } else {
        rms_norm_composite(x, weight, eps)
    }
}

/// RMSNorm from candle-core primitives (the reference the fused kernel is tested against).
pub fn rms_norm_composite(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

static FUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Selects the fused kernels (default) or the composite ops, process-wide: softmax / log-softmax,
/// RMSNorm, SwiGLU, and (in the model's attention) RoPE and the causal attention itself.
/// Both are differentiable; the switch exists to measure the difference (`examples/step_timing`).
pub fn set_fused_kernels(on: bool) {
    FUSED.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn fused() -> bool {
    FUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the fused kernel `name` (`rms_norm`, `swiglu`, `gated_up`, `linear`, `attention`) is on: the
/// process-wide switch, less any named in the `ESCALE_FUSED_OFF` environment variable (a comma
/// list, read once). The variable exists to measure each kernel's share of a training step with one
/// binary; the default is every kernel on.
fn fused_kernel(name: &str) -> bool {
    static OFF: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let off = OFF.get_or_init(|| {
        std::env::var("ESCALE_FUSED_OFF").map(|v| v.split(',').map(|s| s.trim().to_string()).collect()).unwrap_or_default()
    });
    fused() && !off.iter().any(|o| o == name)
}

/// Softmax over the last dim: the fused one-pass kernel with an explicit backward
/// ([`crate::fused`]); [`softmax_last_dim_composite`] is the reference it is tested against.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused() {
        crate::fused::softmax_last_dim(x)
    } else {
        softmax_last_dim_composite(x)
    }
}

/// log-softmax over the last dim (fused kernel; see [`log_softmax_last_dim_composite`]).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused() {
        crate::fused::log_softmax_last_dim(x)
    } else {
        log_softmax_last_dim_composite(x)
    }
}

/// Numerically stable softmax over the last dim. The row max is detached: shifting the logits by a
/// constant leaves softmax unchanged, so its gradient contribution is exactly zero and need not be
/// recorded.
pub fn softmax_last_dim_composite(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// log-softmax over the last dim (stable, with a detached max for the same reason as above).
pub fn log_softmax_last_dim_composite(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// logsumexp over the last dim, which is removed (stable, detached max as above).
pub fn logsumexp_last_dim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let lse = x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?.broadcast_add(&m)?;
    Ok(lse.squeeze(D::Minus1)?)
}

/// log-softmax of one row of logits in f64, outside any autograd graph (comparing models' outputs).
pub fn log_softmax_slice(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

/// `1 / (1 + exp(-x))` from primitives (candle-nn's sigmoid is a custom op; this one is plainly
/// differentiable).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// `x [.., in] w^T` for a weight `w [out, in]`: the fused op ([`crate::kernels::linear`]) for
/// contiguous f32/f64 operands, else candle's matmul against the transposed view (2-d `x`).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fused_kernel("linear") && crate::kernels::covers(x) && crate::kernels::covers(w) && x.dtype() == w.dtype() && w.rank() == 2 {
        crate::kernels::linear(x, w)
    } else {
        Ok(x.matmul(&w.t()?)?)
    }
}

/// SwiGLU's gating: `silu(gate) * up`; the fused kernel ([`crate::kernels::swiglu`]) for
/// contiguous f32/f64 operands of one shape, else [`swiglu_composite`].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_kernel("swiglu") && crate::kernels::covers(gate) && crate::kernels::covers(up) && gate.dtype() == up.dtype() && gate.shape() == up.shape() {
        crate::kernels::swiglu(gate, up)
    } else {
        swiglu_composite(gate, up)
    }
}

/// An MLP's input side `silu(x wg^T) * (x wu^T)` (weights `[ffn, in]`, no biases) as one fused node
/// ([`crate::kernels::gated_up`]), or `None` when the kernels are off or do not cover the operands
/// (the caller then composes [`linear`] and [`swiglu`]).
pub fn fused_gated_up(x: &Tensor, wg: &Tensor, wu: &Tensor) -> Result<Option<Tensor>> {
    use crate::kernels::covers;
    let ok = fused_kernel("gated_up")
        && [x, wg, wu].iter().all(|t| covers(t) && t.dtype() == x.dtype())
        && wg.rank() == 2
        && wg.shape() == wu.shape();
    Ok(if ok { Some(crate::kernels::gated_up(x, wg, wu)?) } else { None })
}

/// `silu(gate) * up` from candle-core ops (`silu` has a backward): the fused kernel's reference.
pub fn swiglu_composite(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// RoPE, rotate-half convention (transformers' `rotate_half`): `x*cos + rotate_half(x)*sin`, where
/// `rotate_half([x1, x2]) = [-x2, x1]` splits the head dim in halves. `x`: `[.., seq, head_dim]`,
/// `cos`/`sin`: `[seq, head_dim]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = hd / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Causal attention of `q` over `k`, `v` holding `[b, s, heads, hd]` and `[b, s, kv_heads, hd]` (any
/// shape of that size, such as the projections' `[b*s, heads*hd]`; positions from 0, query `i` sees
/// keys `j <= i` with `i - j < window`), RoPE applied to q and k first. Returns the output in q's
/// shape through one fused node ([`crate::attention::causal_attention_with`]), or `None` when the
/// kernels are switched off or do not cover the inputs (the caller then takes the composite path).
pub fn fused_rope_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    dims: crate::attention::AttentionDims,
    window: Option<usize>,
) -> Result<Option<Tensor>> {
    use crate::kernels::covers;
    let ok = fused_kernel("attention")
        && window != Some(0)
        && [q, k, v, cos, sin].iter().all(|t| covers(t) && t.dtype() == q.dtype())
        && cos.dims() == [dims.s, dims.hd];
    if !ok {
        return Ok(None);
    }
    let scale = 1.0 / (dims.hd as f64).sqrt();
    Ok(Some(crate::attention::causal_attention_with(q, k, v, dims, Some((cos, sin)), window, scale)?))
}

/// Per-position negative log-likelihood: `logits` `[.., vocab]`, `targets` `[..]` (u32), aligned
/// (target `i` is the token expected at logit row `i`). Returns a flat `[n]` tensor.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let n = targets.elem_count();
    if logits.elem_count() != n * v {
        return Err(ModelError::input(format!(
            "cross_entropy: logits {:?} do not match targets {:?}",
            logits.dims(),
            targets.dims()
        )));
    }
    if targets.dtype() != DType::U32 {
        return Err(ModelError::input(format!("cross_entropy: targets must be u32, found {:?}", targets.dtype())));
    }
    let flat = logits.reshape((n, v))?;
    let lsm = log_softmax_last_dim(&flat)?;
    let picked = lsm.gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?;
    Ok(picked.squeeze(1)?.neg()?)
}

/// Mean cross-entropy of aligned `logits` `[.., vocab]` and `targets` `[..]` (u32). Differentiable.
/// For next-token loss over a batch of sequences use [`next_token_loss`], which does the shift.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(token_nll(logits, targets)?.mean_all()?)
}

/// Mean next-token loss of `logits` `[batch, seq, vocab]` for `input_ids` `[batch, seq]`: position
/// `t` predicts token `t+1`, so the last position of each row is not scored (seq >= 2 required).
pub fn next_token_loss(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let (_, s) = input_ids.dims2()?;
    if s < 2 {
        return Err(ModelError::input("next-token loss needs at least 2 tokens per sequence"));
    }
    let l = logits.narrow(1, 0, s - 1)?;
    let t = input_ids.narrow(1, 1, s - 1)?.contiguous()?;
    cross_entropy(&l, &t)
}
