//! escale-data: from text to training batches.
//!
//! | step | API | CLI |
//! | --- | --- | --- |
//! | demo text, no download | [`make_corpus`] / [`corpus::CorpusGenerator`] | `escale make-corpus` |
//! | tokenizer for a model trained from scratch | [`train_bpe`] + [`save_tokenizer`] | `escale train-tokenizer` |
//! | text/JSONL -> Megatron `.bin/.idx` | [`prepare_data`] / [`prepare_data_with`] | `escale prepare-data` |
//! | read a dataset (ours or Megatron's) | [`IndexedDataset::open`] | |
//! | write a dataset from ids | [`IndexedDatasetWriter`], [`indexed::write_dataset`] | |
//! | batches for training, resumable | [`PackedSampler`] + [`SamplerState`] | |
//!
//! ```no_run
//! use std::sync::Arc;
//! use escale_data::*;
//!
//! # fn main() -> escale_data::Result<()> {
//! // 1. A bilingual synthetic corpus: corpus/corpus.txt, documents separated by blank lines.
//! let corpus = make_corpus("corpus", &CorpusOptions { size_bytes: 20_000_000, seed: 1, ..Default::default() })?;
//! // 2. A byte-level BPE (ids 0, 1, 2 = <s>, </s>, <pad>), saved with its tokenizer_config.json.
//! let options = BpeOptions { vocab_size: 4096, ..Default::default() };
//! let tokenizer = train_bpe(&corpus.files, &options)?;
//! let tokenizer_json = save_tokenizer(&tokenizer, &options, "tok")?;
//! // 3. Tokens: data/tokens_train.{bin,idx} (99% of documents) and data/tokens_valid.{bin,idx}.
//! let summary = prepare_data(&tokenizer_json, None, &PrepareOptions {
//!     inputs: vec!["corpus/corpus.txt".into()],
//!     output: "data/tokens".into(),
//!     split: Some(0.99),
//!     ..Default::default()
//! })?;
//! println!("{}", summary.to_text());
//! // 4. Batches [batch_size, seq_len + 1] of token ids; the state goes into checkpoints.
//! let train = Arc::new(IndexedDataset::open("data/tokens_train")?);
//! let mut sampler = PackedSampler::new(train, SamplerConfig { seq_len: 256, batch_size: 8, seed: 1, shuffle: true })?;
//! let batch: Vec<u32> = sampler.next_batch();
//! let state: SamplerState = sampler.state(); // serde: {"epoch": 0, "index": 8}
//! # let _ = (batch, state); Ok(()) }
//! ```
//!
//! Modules:
//! * [`indexed`]: the Megatron indexed dataset (`MMapIndexedDataset` layout of megatron-core's
//!   `indexed_dataset.py`; layout table in the module docs): memory-mapped, validated reader of
//!   any dtype, streaming atomic writer, Megatron's dtype rule ([`DType::for_vocab_size`]).
//! * [`tokenizer`]: [`TextTokenizer`], a `tokenizer.json` (HF `tokenizers`) with its EOS/BOS;
//!   escale's one tokenization path.
//! * [`prepare`]: inputs (files, folders, globs; plain text by paragraph/file/line, JSONL by key),
//!   streaming parallel ordered encoding, EOS per document, `--split`, `--on-error`.
//! * [`sampler`]: packed `seq_len + 1` windows across document boundaries (like Megatron's
//!   `GPTDataset`), seeded per-epoch shuffles, exact resume from a [`SamplerState`].
//! * [`corpus`]: the seeded bilingual world and its documents.
//! * [`choice`]: multiple-choice task files (JSONL) for `escale eval --tasks`.
//! * [`bpe`]: byte-level BPE training.
//!
//! Errors are [`DataError`]s that name the file (and line) at fault.

#[cfg(feature = "text")]
pub mod bpe;
pub mod choice;
#[cfg(feature = "text")]
pub mod corpus;
pub mod error;
pub mod indexed;
#[cfg(feature = "text")]
pub mod prepare;
pub mod sampler;
#[cfg(feature = "text")]
pub mod tokenizer;

#[cfg(feature = "text")]
pub use bpe::{save_tokenizer, train_bpe, train_bpe_from_texts, BpeOptions};
pub use choice::{read_choice_items, write_choice_items, ChoiceItem};
#[cfg(feature = "text")]
pub use corpus::{make_corpus, CorpusOptions, CorpusSummary, TaskOptions};
pub use error::{DataError, Result};
pub use indexed::{DType, IndexedDataset, IndexedDatasetWriter, Tokens, WrittenDataset};
#[cfg(feature = "text")]
pub use prepare::{prepare_data, prepare_data_with, InputFormat, OnError, PrepareOptions, PrepareSummary, TextDocs};
pub use sampler::{PackedSampler, SamplerConfig, SamplerState};
#[cfg(feature = "text")]
pub use tokenizer::{SpecialToken, TextTokenizer};
