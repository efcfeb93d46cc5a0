//! escale-model: dense and MoE decoder-only LMs (llama, mistral, qwen2, mixtral, qwen2_moe) on
//! candle, loaded from and saved to HF folders through `escale-formats`, with a forward pass whose
//! every op has a correct gradient (composite candle-core ops only; see [`ops`]).

pub mod compare;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod model;
pub mod ops;
pub mod rope;
pub mod text;

pub use error::{ModelError, Result};
pub use model::{ForwardOutput, KvCache, Model};
pub use ops::{cross_entropy, next_token_loss, token_nll};
