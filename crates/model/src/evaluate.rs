//! Loss / perplexity / expert load over long token streams (`escale eval`) and the two-model logit
//! comparison behind `escale verify`. Both run windows of at most the context length, batched.

use candle_core::Tensor;
use serde::Serialize;

use crate::compare::LogitStats;
use crate::error::{ModelError, Result};
use crate::head_loss::head_nll_sum;
use crate::model::Model;
use crate::ops::token_nll;
use crate::text::windows;

/// Tokens routed to each expert of one MoE layer, summed over everything evaluated.
#[derive(Clone, Debug, Serialize)]
pub struct ExpertLoad {
    pub layer: usize,
    pub counts: Vec<u64>,
    /// `counts / sum(counts)`; uniform routing gives `1/experts` each.
    pub fractions: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Next-token predictions scored.
    pub tokens: usize,
    pub windows: usize,
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
    pub perplexity: f64,
    pub expert_load: Vec<ExpertLoad>,
}

/// Accumulates eval statistics window by window.
pub struct Evaluator<'m> {
    model: &'m Model,
    window: usize,
    batch: usize,
    nll_sum: f64,
    tokens: usize,
    windows: usize,
    counts: Vec<Vec<u64>>,
    /// Tokens not yet evaluated (the last token of a full window is kept: it starts the next one).
    pending: Vec<u32>,
}

/// Summed next-token NLL of `rows` (equal lengths, run as one batch) and the MoE counts. Only the per-token
/// logsumexp and target logit are computed ([`head_nll_sum`]): no `[b, s, vocab]` logits or log-softmax.
fn score_rows(model: &Model, rows: &[&[u32]]) -> Result<(f64, Vec<Vec<u64>>)> {
    let ids = Tensor::new(rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), model.device())?;
    let out = crate::grad::no_grad(|| model.forward_hidden(&ids))?;
    let (b, s) = (rows.len(), rows[0].len());
    // Every row's last position predicts past the window: not scored.
    let hidden = out.hidden.reshape((b, s, ()))?.narrow(1, 0, s - 1)?.reshape((b * (s - 1), ()))?;
    let targets = Tensor::new(rows.iter().flat_map(|r| r[1..].iter().copied()).collect::<Vec<_>>(), model.device())?;
    Ok((head_nll_sum(&hidden, model.lm_head_weight(), &targets)?, out.expert_counts))
}

impl<'m> Evaluator<'m> {
    /// `window`: tokens per window, at most the model's `max_position_embeddings` (longer
    /// requests are clamped to it: the model cannot attend further). `batch`: windows per forward.
    pub fn new(model: &'m Model, window: usize, batch: usize) -> Result<Self> {
        if window < 2 {
            return Err(ModelError::input("the window must hold at least 2 tokens"));
        }
        if batch == 0 {
            return Err(ModelError::input("the batch must hold at least 1 window"));
        }
        let window = window.min(model.config.max_position_embeddings);
        let n_moe = (0..model.config.num_hidden_layers).filter(|&l| model.config.is_moe_layer(l)).count();
        let e = model.config.moe.as_ref().map_or(0, |m| m.num_experts);
        Ok(Evaluator {
            model,
            window,
            batch,
            nll_sum: 0.0,
            tokens: 0,
            windows: 0,
            counts: vec![vec![0; e]; n_moe],
            pending: Vec::new(),
        })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    fn eval_rows(&mut self, rows: &[&[u32]]) -> Result<()> {
        let (nll_sum, expert_counts) = score_rows(self.model, rows)?;
        self.nll_sum += nll_sum;
        self.tokens += rows.len() * (rows[0].len() - 1);
        self.windows += rows.len();
        for (acc, c) in self.counts.iter_mut().zip(&expert_counts) {
            acc.iter_mut().zip(c).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    /// Feeds more tokens; full windows are evaluated as soon as `batch` of them are available.
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        self.pending.extend_from_slice(ids);
        let step = self.window - 1;
        let full = if self.pending.len() >= self.window { (self.pending.len() - 1) / step } else { 0 };
        let ready = full / self.batch * self.batch;
        if ready == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        for chunk in (0..ready).collect::<Vec<_>>().chunks(self.batch) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&k| &pending[k * step..k * step + self.window]).collect();
            self.eval_rows(&rows)?;
        }
        self.pending = pending[ready * step..].to_vec();
        Ok(())
    }

    /// Evaluates what is left and returns the totals. Errors if nothing at all could be scored.
    pub fn finish(mut self) -> Result<EvalReport> {
        let pending = std::mem::take(&mut self.pending);
        let ws = windows(&pending, self.window);
        let (full, last): (Vec<&[u32]>, Vec<&[u32]>) = ws.into_iter().partition(|w| w.len() == self.window);
        for chunk in full.chunks(self.batch) {
            self.eval_rows(chunk)?;
        }
        for w in last {
            self.eval_rows(&[w])?;
        }
        if self.tokens == 0 {
            return Err(ModelError::input("the text is shorter than 2 tokens: nothing to predict"));
        }
        let loss = self.nll_sum / self.tokens as f64;
        let moe_layers: Vec<usize> =
            (0..self.model.config.num_hidden_layers).filter(|&l| self.model.config.is_moe_layer(l)).collect();
        let expert_load = moe_layers
            .into_iter()
            .zip(self.counts)
            .map(|(layer, counts)| {
                let total: u64 = counts.iter().sum();
                let fractions = counts.iter().map(|&c| c as f64 / total.max(1) as f64).collect();
                ExpertLoad { layer, counts, fractions }
            })
            .collect();
        Ok(EvalReport { tokens: self.tokens, windows: self.windows, loss, perplexity: loss.exp(), expert_load })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub logits: LogitStats,
    /// `max_abs_diff / max_abs_reference`.
    pub relative_max_diff: f64,
    pub reference_loss: f64,
    pub candidate_loss: f64,
    pub tokens: usize,
}

/// Runs both models on the same token windows and compares their logits and losses. The vocab
/// sizes must agree; windows are limited by the smaller context of the two.
pub fn compare_models(reference: &Model, candidate: &Model, ids: &[u32], window: usize) -> Result<VerifyReport> {
    let (rv, cv) = (reference.config.vocab_size, candidate.config.vocab_size);
    if rv != cv {
        return Err(ModelError::input(format!(
            "vocab sizes differ: reference {rv} ({}), candidate {cv} ({}); logits cannot be compared",
            reference.config.source().display(),
            candidate.config.source().display()
        )));
    }
    if ids.len() < 2 {
        return Err(ModelError::input("need at least 2 tokens to compare models (and to score a loss)"));
    }
    if window < 2 {
        return Err(ModelError::input(format!("window of {window} token(s): at least 2 are needed")));
    }
    let window = window.min(reference.config.max_position_embeddings).min(candidate.config.max_position_embeddings);
    let mut stats = LogitStats::new();
    let (mut rl, mut cl, mut n) = (0.0, 0.0, 0usize);
    for w in windows(ids, window) {
        let t = Tensor::new(w, reference.device())?.unsqueeze(0)?;
        let r = crate::grad::no_grad(|| reference.forward(&t))?.logits.squeeze(0)?;
        let c = crate::grad::no_grad(|| candidate.forward(&t))?.logits.squeeze(0)?;
        stats.add(&r, &c)?;
        let targets = Tensor::new(&w[1..], reference.device())?;
        let s = w.len();
        let sum = |l: &Tensor| -> Result<f64> {
            Ok(token_nll(&l.narrow(0, 0, s - 1)?, &targets)?.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar()?)
        };
        rl += sum(&r)?;
        cl += sum(&c)?;
        n += s - 1;
    }
    let rel = stats.max_abs_diff / stats.max_abs_reference.max(f64::MIN_POSITIVE);
    Ok(VerifyReport {
        logits: stats,
        relative_max_diff: rel,
        reference_loss: rl / n as f64,
        candidate_loss: cl / n as f64,
        tokens: n,
    })
}
