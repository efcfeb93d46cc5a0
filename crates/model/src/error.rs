//! The model engine's error type: every variant says which file, tensor, field or input is at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a checkpoint failed (the formats layer names the file and tensor).
    #[error(transparent)]
    Format(#[from] escale_formats::FormatError),
    /// A tensor operation failed inside candle (shape mismatch, out-of-range index, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The config asks for something this engine does not implement (named field).
    #[error("{path}: field `{field}`: {message}")]
    Unsupported { path: PathBuf, field: String, message: String },
    /// Bad input to forward/generate (token ids, sequence length, dtypes).
    #[error("invalid input: {0}")]
    Input(String),
    /// Loading a tokenizer or encoding text failed (names the tokenizer file).
    #[error(transparent)]
    Data(#[from] escale_data::DataError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Anything else, e.g. an error raised by a caller's `extra` callback in [`crate::Model::save`].
    #[error("{0}")]
    Other(String),
}

impl ModelError {
    pub fn other(message: impl std::fmt::Display) -> Self {
        ModelError::Other(message.to_string())
    }
    pub fn input(message: impl Into<String>) -> Self {
        ModelError::Input(message.into())
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
