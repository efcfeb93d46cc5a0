//! escale-data: tokens for training.
//!
//! TODO(docs): expanded below once all modules land.

pub mod bpe;
pub mod corpus;
pub mod error;
pub mod indexed;
pub mod prepare;
pub mod rng;
pub mod sampler;
pub mod tokenizer;

pub use error::{DataError, Result};
pub use indexed::{DType, IndexedDataset, IndexedDatasetWriter, Tokens, WrittenDataset};
pub use prepare::{prepare_data, prepare_data_with, InputFormat, OnError, PrepareOptions, PrepareSummary, TextDocs};
pub use sampler::{PackedSampler, SamplerConfig, SamplerState};
pub use tokenizer::{SpecialToken, TextTokenizer};
pub use corpus::{make_corpus, CorpusOptions, CorpusSummary};
pub use bpe::{save_tokenizer, train_bpe, train_bpe_from_texts, BpeOptions};
