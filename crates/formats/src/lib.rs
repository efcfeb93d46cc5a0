//! escale-formats: Hugging Face checkpoint formats with no ML framework underneath.
//!
//! * [`config`]: typed `config.json` for llama, mistral, qwen2, qwen3, mixtral, qwen2_moe and
//!   qwen3_moe that keeps
//!   every unknown field;
//! * [`naming`]: logical parameter <-> HF tensor name, and the tensor list a config implies;
//! * [`reader`]: memory-mapped, validated reading of single-file and sharded safetensors folders;
//! * [`writer`]: streaming, sharded, atomic writing of HF folders;
//! * [`dtype`]: F32 / F16 / BF16 storage and conversion to f32.
//!
//! Growth operators, the model engine and the trainer all meet checkpoints only through this crate.

pub mod config;
pub mod dtype;
pub mod error;
pub mod naming;
pub mod reader;
pub mod summary;
pub mod writer;

pub use config::{ModelConfig, ModelType, MoeConfig};
pub use dtype::DType;
pub use error::{FormatError, Result};
pub use naming::{expected_params, hf_name, param_counts, parse_hf_name, LayerParam, MlpPart, MlpSite, Param, ParamCounts};
pub use reader::{Checkpoint, NonFinite, TensorInfo, WeightChecks};
pub use writer::{rewrite_checkpoint, CheckpointWriter, TensorSpec, WriterOptions};

/// Files copied from a source model folder to a derived one (tokenizer and generation settings).
pub const AUXILIARY_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
];
