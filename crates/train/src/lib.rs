//! escale-train: continued pretraining of dense and MoE models on the escale model engine.
//!
//! * [`optim`]: AdamW (PyTorch semantics) and global-norm gradient clipping;
//! * [`schedule`]: warmup + cosine / linear / constant / WSD learning rates;
//! * [`moe_loss`]: load-balancing (Megatron or HF convention) and router z-losses;
//! * [`flops`]: the training-FLOPs convention shared by every stage;
//! * [`checkpoint`]: atomic checkpoints (HF folder + trainer state) and their discovery/rotation;
//! * [`config`]: the run settings (YAML or flags).
//!
//! Without the default `engine` feature only [`config`], [`schedule`], [`flops`] and [`error`] build:
//! the settings a pipeline file is checked against, without candle (the fuzz targets use this).

#[cfg(feature = "engine")]
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod flops;
#[cfg(feature = "engine")]
pub mod init;
#[cfg(feature = "engine")]
pub mod moe_loss;
#[cfg(feature = "engine")]
pub mod optim;
pub mod schedule;

#[cfg(feature = "engine")]
pub use init::init_model;
pub use config::{Engine, LossConvention, MegatronSettings, ResumeMode, TrainConfig, TrainDType, TrainOnly};
pub use error::{Result, TrainError};
#[cfg(feature = "engine")]
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
#[cfg(feature = "engine")]
pub mod select;
#[cfg(feature = "engine")]
pub mod trainer;

#[cfg(feature = "engine")]
pub use trainer::{evaluate, train, train_until, EvalRecord, StepRecord, TrainEvent, TrainSummary};

/// The allocator setting training wants, re-exported from the model engine (one definition).
#[cfg(feature = "engine")]
pub use escale_model::{tune_allocator, tune_runtime};
