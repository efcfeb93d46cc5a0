//! One error type for everything that can be wrong with a checkpoint on disk.
//!
//! Every variant names the file and, where there is one, the tensor or config field at fault,
//! because the user's first question is always "which one?".

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    // The cause is printed inside the message and deliberately not returned as `source()`:
    // otherwise anyhow's `{:#}` prints it twice ("... (os error 2): ... (os error 2)").
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: invalid JSON: {cause}")]
    Json { path: PathBuf, cause: serde_json::Error },
    #[error("{path}: field `{field}`: {message}")]
    ConfigField {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: unsupported model_type `{found}` (supported: {supported})")]
    UnsupportedModelType {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, escale supports F32, F16 and BF16")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path}: shard `{shard}` is listed in the index but missing")]
    MissingShard { path: PathBuf, shard: String },
    #[error("{path}: no model.safetensors or model.safetensors.index.json found")]
    NoWeights { path: PathBuf },
    #[error("{path}: output exists and is not empty (use --force to replace it)")]
    OutputExists { path: PathBuf },
    #[error("{path}: {message}")]
    Other { path: PathBuf, message: String },
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), cause: source }
    }
    pub fn field(path: impl Into<PathBuf>, field: &str, message: impl Into<String>) -> Self {
        FormatError::ConfigField {
            path: path.into(),
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn tensor(path: impl Into<PathBuf>, tensor: &str, message: impl Into<String>) -> Self {
        FormatError::Tensor {
            path: path.into(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::FormatError;

    /// The cause is in the message once and not repeated by `source()` (anyhow's `{:#}` prints
    /// the message followed by every source: "x: (os error 2): (os error 2)" before).
    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = FormatError::io("m/config.json", io);
        assert!(e.to_string().starts_with("m/config.json: ") && e.to_string().contains("(os error 2)"), "{e}");
        assert!(e.source().is_none());
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = FormatError::Json { path: "m/config.json".into(), cause: json };
        assert!(e.to_string().contains("invalid JSON: EOF"), "{e}");
        assert!(e.source().is_none());
    }
}
