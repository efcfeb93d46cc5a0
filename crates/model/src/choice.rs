//! Multiple-choice scoring in perplexity mode (`escale eval --tasks`, the pipeline's `eval.tasks`):
//! each choice is scored by the log-likelihood the model gives its continuation after the context,
//! and the model's answer is the choice scoring highest.
//!
//! # The context/continuation split
//!
//! The context is tokenized with the tokenizer's special tokens (BOS where `tokenizer(text)` in
//! transformers puts it), each continuation separately without them, and the two id lists are
//! concatenated: `ids = enc(context, special) ++ enc(continuation)`. The score of a choice is
//! `sum_i log p(cont_i | ids before it)` over the continuation's tokens, in nats. Tokenizing
//! separately keeps the split exactly at a token boundary, the same for every choice; it may differ
//! from tokenizing the joined text where a token would straddle the boundary. A context that
//! encodes to no token at all is given the tokenizer's BOS (or else EOS) to predict from.
//!
//! # Long items
//!
//! The model reads `ids[..len-1]`; when that exceeds the window, tokens are cut from the left of
//! the context so that exactly `window` are read, and the item counts as truncated. A continuation
//! longer than the window is an error.
//!
//! # Statistics
//!
//! Per task: accuracy (argmax of the summed log-likelihood, first index on ties), length-normalised
//! accuracy (argmax of log-likelihood divided by the continuation's UTF-8 bytes), and for both the
//! standard error of the mean of the 0/1 outcomes, `sqrt(p(1-p)/(n-1))` (the sample standard
//! deviation over `sqrt(n)`, 0 for one item); `chance` is the mean of `1/choices`.

use std::collections::BTreeMap;

use candle_core::Tensor;
use escale_data::{ChoiceItem, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::head_loss::head_nll_sum;

/// One choice ready for the model: the ids it reads, and the continuation ids it is scored on
/// (the last `continuation.len()` predictions of `input`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChoiceTokens {
    /// `ids[..len-1]` after any cut: what the model reads.
    pub input: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// An item's choices as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedItem {
    pub choices: Vec<ChoiceTokens>,
    /// Whether any choice's context was cut from the left to fit the window.
    pub truncated: bool,
}

/// Tokenizes an item by the split in the module docs; `window` is the most tokens the model reads.
pub fn tokenize_item(tok: &TextTokenizer, item: &ChoiceItem, window: usize) -> Result<TokenizedItem> {
    let mut context = tok.encode_with(&item.context, true)?;
    if context.is_empty() {
        let start = tok.bos_id().or(tok.eos_id()).ok_or_else(|| {
            ModelError::input(format!(
                "context {:?} encodes to no token and the tokenizer has neither BOS nor EOS to start from",
                item.context
            ))
        })?;
        context.push(start);
    }
    let mut truncated = false;
    let mut choices = Vec::with_capacity(item.choices.len());
    for (k, text) in item.choices.iter().enumerate() {
        let continuation = tok.encode_with(text, false)?;
        if continuation.is_empty() {
            return Err(ModelError::input(format!("choice {k} ({text:?}) encodes to no token")));
        }
        if continuation.len() > window {
            return Err(ModelError::input(format!(
                "choice {k} is {} tokens long, more than the window of {window}: it cannot be scored",
                continuation.len()
            )));
        }
        let mut ids = context.clone();
        ids.extend_from_slice(&continuation);
        ids.pop(); // the last token is only predicted
        if ids.len() > window {
            truncated = true;
            ids.drain(..ids.len() - window);
        }
        choices.push(ChoiceTokens { input: ids, continuation });
    }
    Ok(TokenizedItem { choices, truncated })
}

/// What the model made of one item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// Summed log-likelihood of each choice's continuation (nats).
    pub loglik: Vec<f64>,
    /// UTF-8 bytes of each continuation.
    pub bytes: Vec<usize>,
    pub truncated: bool,
}

impl ItemScore {
    /// Index of the best choice by summed log-likelihood (first on ties).
    pub fn predicted(&self) -> usize {
        argmax(self.loglik.iter().copied())
    }

    /// Index of the best choice by log-likelihood per byte (first on ties).
    pub fn predicted_norm(&self) -> usize {
        argmax(self.loglik.iter().zip(&self.bytes).map(|(l, &b)| l / b.max(1) as f64))
    }
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Scores every item on `model`: all choices of all items, sorted by length and run `batch` rows
/// per forward pass (right-padded; causal attention keeps padding from touching the scored
/// positions). `window`: the most tokens the model reads at once (clamped to the model's context).
/// `progress` is called with the number of choices scored so far.
pub fn score_items(
    model: &Model,
    tok: &TextTokenizer,
    items: &[ChoiceItem],
    window: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<ItemScore>> {
    let window = window.min(model.config.max_position_embeddings);
    if window < 1 || batch == 0 {
        return Err(ModelError::input(format!("window {window} and batch {batch} must both be at least 1")));
    }
    let tokenized: Vec<TokenizedItem> = items
        .iter()
        .enumerate()
        .map(|(i, item)| tokenize_item(tok, item, window).map_err(|e| ModelError::input(format!("item {}: {e}", i + 1))))
        .collect::<Result<_>>()?;
    let vocab = model.config.vocab_size as u32;
    let mut requests: Vec<(usize, usize, &ChoiceTokens)> = Vec::new();
    for (i, t) in tokenized.iter().enumerate() {
        for (k, c) in t.choices.iter().enumerate() {
            if let Some(&bad) = c.input.iter().chain(&c.continuation).find(|&&id| id >= vocab) {
                return Err(ModelError::input(format!(
                    "item {}: token id {bad} is outside the model's vocabulary of {vocab} (tokenizer and model disagree)",
                    i + 1
                )));
            }
            requests.push((i, k, c));
        }
    }
    // Longest first: similar lengths share a batch, and the slowest batches show up early.
    requests.sort_by_key(|&(i, k, c)| (std::cmp::Reverse(c.input.len()), i, k));
    let mut loglik: Vec<Vec<f64>> = tokenized.iter().map(|t| vec![0.0; t.choices.len()]).collect();
    let mut done = 0;
    for chunk in requests.chunks(batch) {
        let rows: Vec<&ChoiceTokens> = chunk.iter().map(|r| r.2).collect();
        for ((i, k, _), ll) in chunk.iter().zip(score_batch(model, &rows)?) {
            loglik[*i][*k] = ll;
        }
        done += chunk.len();
        progress(done);
    }
    Ok(items
        .iter()
        .zip(tokenized)
        .zip(loglik)
        .map(|((item, t), loglik)| ItemScore { loglik, bytes: item.choices.iter().map(|c| c.len()).collect(), truncated: t.truncated })
        .collect())
}

/// Summed continuation log-likelihood of each row, one forward pass.
fn score_batch(model: &Model, rows: &[&ChoiceTokens]) -> Result<Vec<f64>> {
    let len = rows.iter().map(|r| r.input.len()).max().unwrap_or(0);
    let padded: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            let mut ids = r.input.clone();
            ids.resize(len, 0);
            ids
        })
        .collect();
    let ids = Tensor::new(padded, model.device())?;
    let hidden = crate::grad::no_grad(|| model.forward_hidden(&ids))?.hidden.reshape((rows.len(), len, ()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (b, r) in rows.iter().enumerate() {
        let n = r.continuation.len();
        // Position p predicts token p+1 of `input ++ [last]`: the continuation's predictions are
        // the last n positions of the row's own (unpadded) input. Only those rows go through the LM head.
        let scored = hidden.get(b)?.narrow(0, r.input.len() - n, n)?;
        let targets = Tensor::new(r.continuation.as_slice(), model.device())?;
        out.push(-head_nll_sum(&scored, model.lm_head_weight(), &targets)?);
    }
    Ok(out)
}

/// Accuracy of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    pub items: usize,
    pub accuracy: f64,
    pub accuracy_stderr: f64,
    /// By log-likelihood per continuation byte.
    pub accuracy_norm: f64,
    pub accuracy_norm_stderr: f64,
    /// Expected accuracy of guessing: mean of 1/choices.
    pub chance: f64,
    /// Items whose context was cut from the left to fit the window.
    pub truncated: usize,
}

/// Standard error of the mean of `n` 0/1 outcomes with mean `p` (sample standard deviation).
pub fn stderr_of_mean(p: f64, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    (p * (1.0 - p) * n as f64 / (n as f64 - 1.0)).sqrt() / (n as f64).sqrt()
}

/// Per-task accuracies, tasks in order of first appearance. `items[i]` and `scores[i]` belong
/// together; items with no task name count under "tasks".
pub fn summarize(items: &[ChoiceItem], scores: &[ItemScore]) -> Vec<TaskScore> {
    #[derive(Default)]
    struct Acc {
        first: usize,
        n: usize,
        right: usize,
        right_norm: usize,
        chance: f64,
        truncated: usize,
    }
    let mut by_task: BTreeMap<&str, Acc> = BTreeMap::new();
    for (i, (item, score)) in items.iter().zip(scores).enumerate() {
        let a = by_task.entry(item.task_or("tasks")).or_insert_with(|| Acc { first: i, ..Acc::default() });
        a.n += 1;
        a.right += (score.predicted() == item.answer) as usize;
        a.right_norm += (score.predicted_norm() == item.answer) as usize;
        a.chance += 1.0 / item.choices.len() as f64;
        a.truncated += score.truncated as usize;
    }
    let mut tasks: Vec<(usize, TaskScore)> = by_task
        .into_iter()
        .map(|(task, a)| {
            let (acc, norm) = (a.right as f64 / a.n as f64, a.right_norm as f64 / a.n as f64);
            let score = TaskScore {
                task: task.to_string(),
                items: a.n,
                accuracy: acc,
                accuracy_stderr: stderr_of_mean(acc, a.n),
                accuracy_norm: norm,
                accuracy_norm_stderr: stderr_of_mean(norm, a.n),
                chance: a.chance / a.n as f64,
                truncated: a.truncated,
            };
            (a.first, score)
        })
        .collect();
    tasks.sort_by_key(|t| t.0);
    tasks.into_iter().map(|t| t.1).collect()
}

/// Everything `escale eval --tasks --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChoiceReport {
    pub tasks: Vec<TaskScore>,
    pub items: usize,
    pub choices: usize,
    pub truncated: usize,
    /// Tokens the model reads at most (contexts beyond it are cut from the left).
    pub window: usize,
}

/// Scores `items` and summarises them per task.
pub fn evaluate_choices(
    model: &Model,
    tok: &TextTokenizer,
    items: &[ChoiceItem],
    window: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<ChoiceReport> {
    let scores = score_items(model, tok, items, window, batch, progress)?;
    Ok(ChoiceReport {
        tasks: summarize(items, &scores),
        items: items.len(),
        choices: items.iter().map(|i| i.choices.len()).sum(),
        truncated: scores.iter().filter(|s| s.truncated).count(),
        window: window.min(model.config.max_position_embeddings),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(answer: usize, n: usize) -> ChoiceItem {
        ChoiceItem { task: Some("t".into()), context: "c".into(), choices: (0..n).map(|k| format!(" {k}")).collect(), answer }
    }

    #[test]
    fn stderr_matches_the_sample_formula() {
        // Outcomes 1,1,0,0: mean 0.5, sample variance 1/3, stderr sqrt(1/3)/2.
        assert!((stderr_of_mean(0.5, 4) - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(stderr_of_mean(1.0, 10), 0.0);
        assert_eq!(stderr_of_mean(0.0, 1), 0.0);
    }

    #[test]
    fn summary_counts_plain_and_normalised_hits_per_task() {
        let items = vec![item(0, 2), item(1, 4), ChoiceItem { task: Some("u".into()), ..item(0, 2) }];
        let scores = vec![
            ItemScore { loglik: vec![-1.0, -2.0], bytes: vec![2, 2], truncated: false },
            ItemScore { loglik: vec![-3.0, -3.0, -1.0, -5.0], bytes: vec![2, 2, 2, 2], truncated: true },
            ItemScore { loglik: vec![-4.0, -3.0], bytes: vec![8, 2], truncated: false },
        ];
        let s = summarize(&items, &scores);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].task.as_str(), s[0].items, s[0].truncated), ("t", 2, 1));
        assert_eq!(s[0].accuracy, 0.5);
        assert!((s[0].chance - (0.5 + 0.25) / 2.0).abs() < 1e-12);
        // Item 3: -4/8 = -0.5 beats -3/2 = -1.5, so normalised picks the answer, the sum does not.
        assert_eq!((s[1].accuracy, s[1].accuracy_norm), (0.0, 1.0));
        // Ties go to the first index.
        assert_eq!(ItemScore { loglik: vec![-1.0, -1.0], bytes: vec![1, 1], truncated: false }.predicted(), 0);
    }
}
