//! The trainer's error type: each variant names the file, field or checkpoint at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[cfg(feature = "engine")]
    #[error(transparent)]
    Model(#[from] escale_model::ModelError),
    #[error(transparent)]
    Format(#[from] escale_formats::FormatError),
    #[cfg(feature = "engine")]
    #[error("tensor operation failed: {0}")]
    Candle(candle_core::Error),
    /// A training setting is invalid or inconsistent with the model or data (named field).
    #[error("training config: `{field}`: {message}")]
    Config { field: String, message: String },
    /// The dataset could not be read or does not fit the model.
    #[error("data {path}: {message}")]
    Data { path: PathBuf, message: String },
    /// A checkpoint folder is incomplete, corrupt or belongs to another model/run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    // The cause is part of the message and not `source()`, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// Too many consecutive steps had a non-finite loss or gradient.
    #[error("aborting at step {step}: {count} consecutive steps with non-finite loss or gradients (last: {what})")]
    NonFinite { step: u64, count: u32, what: String },
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub fn config(field: &str, message: impl Into<String>) -> Self {
        TrainError::Config { field: field.to_string(), message: message.into() }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint { path: path.into(), message: message.into() }
    }
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Data { path: path.into(), message: message.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), cause: source }
    }
    pub fn other(message: impl std::fmt::Display) -> Self {
        TrainError::Other(message.to_string())
    }
}

// Written by hand rather than with `#[from]`, which would also make the candle error `source()`
// and print it twice under anyhow's `{:#}`: the message already carries it.
#[cfg(feature = "engine")]
impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(e)
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

#[cfg(all(test, feature = "engine"))]
mod tests {
    use std::error::Error;

    /// Causes formatted into a message are not also `source()`, so `{:#}` prints each once.
    #[test]
    fn causes_are_not_repeated_as_sources() {
        let io = super::TrainError::io("run/train.yaml", std::io::Error::from_raw_os_error(2));
        assert!(io.to_string().contains("(os error 2)") && io.source().is_none(), "{io}");
        let candle = super::TrainError::from(candle_core::Error::Msg("shape mismatch".into()));
        assert_eq!(candle.to_string(), "tensor operation failed: shape mismatch");
        assert!(candle.source().is_none());
    }
}
