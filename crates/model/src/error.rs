//! The model engine's error type: every variant says which file, tensor, field or input is at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a checkpoint failed (the formats layer names the file and tensor).
    #[error(transparent)]
    Format(#[from] escale_formats::FormatError),
    /// A tensor operation failed inside candle (shape mismatch, out-of-range index, ...).
    #[error("tensor operation failed: {0}")]
    Candle(candle_core::Error),
    /// The config asks for something this engine does not implement (named field).
    #[error("{path}: field `{field}`: {message}")]
    Unsupported { path: PathBuf, field: String, message: String },
    /// Bad input to forward/generate (token ids, sequence length, dtypes).
    #[error("invalid input: {0}")]
    Input(String),
    /// Loading a tokenizer or encoding text failed (names the tokenizer file).
    #[error(transparent)]
    Data(#[from] escale_data::DataError),
    // The cause is part of the message and not `source()`, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
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

// Written by hand rather than with `#[from]`, which would also make the candle error `source()`
// and print it twice under anyhow's `{:#}`: the message already carries it.
impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(e)
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
