//! Packed-sequence sampling for causal language-model training.
//!
//! Like Megatron's `GPTDataset`, documents are concatenated (each already ends with the EOS that
//! `prepare_data` appended) and cut into fixed windows of `seq_len + 1` tokens, so a document's end
//! and the next one's start can share a window. Window `i` covers stream tokens
//! `[i * seq_len, i * seq_len + seq_len + 1)`: consecutive windows overlap by one token, so that
//! inputs (`window[..seq_len]`) and targets (`window[1..]`) cover every token once per epoch. The
//! stream is the dataset in file order; the *order of windows* is reshuffled every epoch with a
//! permutation fixed by `(seed, epoch)`, so the whole sequence of batches is a pure function of
//! `(dataset, seq_len, batch_size, seed)` and of where one starts, [`SamplerState`].
//!
//! Batches are always full: when an epoch runs out in the middle of a batch, the batch continues
//! with the first windows of the next epoch (as Megatron does). The state after a batch is what a
//! checkpoint stores; [`PackedSampler::set_state`] resumes at exactly that window.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::indexed::IndexedDataset;
use escale_util::rng::SplitMix64;

/// Where a sampler stands: `index` windows of epoch `epoch` have been served (`0 <= index <
/// samples_per_epoch`). Serialise it into checkpoints; it is all a resume needs besides the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    pub index: u64,
}

/// Sampling parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Tokens per training sequence; windows hold `seq_len + 1` tokens.
    pub seq_len: usize,
    /// Windows per batch.
    pub batch_size: usize,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Shuffle windows each epoch (true for training); false serves them in stream order (for
    /// validation).
    pub shuffle: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { seq_len: 256, batch_size: 8, seed: 1234, shuffle: true }
    }
}

/// Serves batches of packed windows from an [`IndexedDataset`].
pub struct PackedSampler {
    dataset: Arc<IndexedDataset>,
    config: SamplerConfig,
    samples: u64,
    state: SamplerState,
    /// Window order of `order_epoch` (empty when not shuffling).
    order: Vec<u32>,
    order_epoch: Option<u64>,
}

impl std::fmt::Debug for PackedSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedSampler")
            .field("dataset", &self.dataset.prefix())
            .field("config", &self.config)
            .field("samples_per_epoch", &self.samples)
            .field("state", &self.state)
            .finish()
    }
}

/// Number of `seq_len + 1` windows (overlapping by one token) in a stream of `tokens` tokens.
pub fn windows_in(tokens: u64, seq_len: usize) -> u64 {
    if tokens == 0 || seq_len == 0 {
        0
    } else {
        (tokens - 1) / seq_len as u64
    }
}

impl PackedSampler {
    /// A sampler at the start of epoch 0. Fails when the dataset holds fewer than `seq_len + 1`
    /// tokens, is not a token dataset, or is not stored contiguously.
    pub fn new(dataset: Arc<IndexedDataset>, config: SamplerConfig) -> Result<PackedSampler> {
        if config.seq_len == 0 || config.batch_size == 0 {
            return Err(DataError::Invalid(format!(
                "sampler: seq_len ({}) and batch_size ({}) must be positive",
                config.seq_len, config.batch_size
            )));
        }
        dataset.token_stream()?; // integer dtype and contiguous layout
        let samples = windows_in(dataset.num_tokens(), config.seq_len);
        if samples == 0 {
            return Err(DataError::Invalid(format!(
                "{}: {} tokens is too few for one window of seq_len + 1 = {} tokens",
                dataset.prefix().display(),
                dataset.num_tokens(),
                config.seq_len + 1
            )));
        }
        if samples > u32::MAX as u64 {
            return Err(DataError::Invalid(format!(
                "{}: {samples} windows per epoch is more than the sampler supports (2^32 - 1); use a longer seq_len",
                dataset.prefix().display()
            )));
        }
        Ok(PackedSampler { dataset, config, samples, state: SamplerState::default(), order: Vec::new(), order_epoch: None })
    }

    /// Opens `prefix` and builds a sampler on it.
    pub fn open(prefix: impl AsRef<std::path::Path>, config: SamplerConfig) -> Result<PackedSampler> {
        PackedSampler::new(Arc::new(IndexedDataset::open(prefix)?), config)
    }

    pub fn dataset(&self) -> &Arc<IndexedDataset> {
        &self.dataset
    }
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }
    pub fn seq_len(&self) -> usize {
        self.config.seq_len
    }
    pub fn batch_size(&self) -> usize {
        self.config.batch_size
    }
    /// Tokens per window (`seq_len + 1`), the row length of a batch.
    pub fn window_len(&self) -> usize {
        self.config.seq_len + 1
    }
    /// Windows per epoch.
    pub fn samples_per_epoch(&self) -> u64 {
        self.samples
    }
    /// Training tokens (targets) per epoch: `samples_per_epoch * seq_len`.
    pub fn tokens_per_epoch(&self) -> u64 {
        self.samples * self.config.seq_len as u64
    }
    /// Full batches per epoch (rounded down; batches straddle epochs).
    pub fn batches_per_epoch(&self) -> u64 {
        self.samples / self.config.batch_size as u64
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }
    /// Windows served since the start of epoch 0.
    pub fn samples_seen(&self) -> u64 {
        self.state.epoch * self.samples + self.state.index
    }
    /// Epochs completed, as a fraction (e.g. 1.25).
    pub fn epoch_progress(&self) -> f64 {
        self.state.epoch as f64 + self.state.index as f64 / self.samples as f64
    }

    /// Resumes at `state` (the next window served is window `state.index` of epoch `state.epoch`).
    /// `index == samples_per_epoch` is read as the start of the next epoch.
    pub fn set_state(&mut self, state: SamplerState) -> Result<()> {
        if state.index > self.samples {
            return Err(DataError::Invalid(format!(
                "sampler state index {} is beyond the {} windows of an epoch (different data or seq_len?)",
                state.index, self.samples
            )));
        }
        self.state = if state.index == self.samples { SamplerState { epoch: state.epoch + 1, index: 0 } } else { state };
        Ok(())
    }

    fn ensure_order(&mut self, epoch: u64) {
        if !self.config.shuffle || self.order_epoch == Some(epoch) {
            return;
        }
        self.order.clear();
        self.order.extend(0..self.samples as u32);
        SplitMix64::derive(self.config.seed, epoch).shuffle(&mut self.order);
        self.order_epoch = Some(epoch);
    }

    /// The window (stream position / seq_len) served at `index` of `epoch`.
    pub fn window_at(&mut self, epoch: u64, index: u64) -> u64 {
        assert!(index < self.samples, "index {index} out of range ({} windows)", self.samples);
        if self.config.shuffle {
            self.ensure_order(epoch);
            self.order[index as usize] as u64
        } else {
            index
        }
    }

    /// Copies window `window` (`seq_len + 1` tokens) into `out`.
    pub fn read_window(&self, window: u64, out: &mut [u32]) {
        let start = window as usize * self.config.seq_len;
        let stream = self.dataset.token_stream().expect("checked in new");
        stream.slice(start..start + self.config.seq_len + 1).copy_to_u32(out);
    }

    /// Fills `out` with the next batch, row-major `[batch_size, seq_len + 1]`, and advances.
    pub fn next_batch_into(&mut self, out: &mut Vec<u32>) {
        let w = self.window_len();
        out.resize(self.config.batch_size * w, 0);
        for row in 0..self.config.batch_size {
            let SamplerState { epoch, index } = self.state;
            let window = self.window_at(epoch, index);
            self.read_window(window, &mut out[row * w..(row + 1) * w]);
            self.state = if index + 1 == self.samples { SamplerState { epoch: epoch + 1, index: 0 } } else { SamplerState { epoch, index: index + 1 } };
        }
    }

    /// The next batch, row-major `[batch_size, seq_len + 1]`.
    pub fn next_batch(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        self.next_batch_into(&mut out);
        out
    }
}
