//! One error type for the data layer.
//!
//! Every variant that concerns a file names it (and the line, for input text), because the first
//! question after "it failed" is always "where?".

use std::path::{Path, PathBuf};

use crate::indexed::DType;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The cause is part of the message and not `source()`, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// An `.idx` file that is not a valid Megatron index (bad magic, version, dtype code, sizes).
    #[error("{path}: invalid Megatron index: {message}")]
    BadIndex { path: PathBuf, message: String },
    /// A `.bin` file shorter than its index says.
    #[error("{path}: truncated data file: {message}")]
    TruncatedData { path: PathBuf, message: String },
    /// Input text that is not UTF-8 (`line` is 1-based).
    #[error("{path}:{line}: invalid UTF-8")]
    InvalidUtf8 { path: PathBuf, line: u64 },
    /// A JSONL record that cannot be used (bad JSON, missing key, not a string).
    #[error("{path}:{line}: {message}")]
    BadRecord { path: PathBuf, line: u64, message: String },
    /// Nothing to tokenize: no input file matched, or the inputs hold no document.
    #[error("empty input: {0}")]
    EmptyInput(String),
    /// The tokenizer's ids do not fit the token dtype of the dataset.
    #[error(
        "the tokenizer has {vocab_size} ids (largest {max_id}), which do not fit the token dtype \
         {dtype} (largest {dtype_max}); use a wider dtype (int32)"
    )]
    VocabTooLarge { vocab_size: usize, max_id: u64, dtype: DType, dtype_max: u64 },
    /// A token id that does not fit the dataset's dtype.
    #[error("{path}: token id {token} does not fit the token dtype {dtype}")]
    TokenOutOfRange { path: PathBuf, token: u64, dtype: DType },
    /// The dataset's dtype is not an integer token type (float datasets can be read, not sampled).
    #[error("{path}: dtype {dtype} does not hold token ids")]
    NotTokenDtype { path: PathBuf, dtype: DType },
    /// Loading, training or running a tokenizer failed.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A bad argument or option (message says which and why).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io { path: path.as_ref().to_path_buf(), cause: source }
    }
    pub(crate) fn bad_index(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        DataError::BadIndex { path: path.as_ref().to_path_buf(), message: message.into() }
    }
    #[cfg(feature = "text")]
    pub(crate) fn tokenizer(path: impl AsRef<Path>, message: impl std::fmt::Display) -> Self {
        DataError::Tokenizer { path: path.as_ref().to_path_buf(), message: message.to_string() }
    }
}
