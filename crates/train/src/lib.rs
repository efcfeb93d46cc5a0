//! escale-train: continued pretraining of dense and MoE models on the escale model engine.
//!
//! * [`optim`]: AdamW (PyTorch semantics) and global-norm gradient clipping;
//! * [`schedule`]: warmup + cosine / linear / constant / WSD learning rates;
//! * [`moe_loss`]: load-balancing (Megatron or HF convention) and router z-losses;
//! * [`flops`]: the training-FLOPs convention shared by every stage;
//! * [`checkpoint`]: atomic checkpoints (HF folder + trainer state) and their discovery/rotation;
//! * [`config`]: the run settings (YAML or flags).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod flops;
pub mod init;
pub mod moe_loss;
pub mod optim;
pub mod schedule;

pub use init::init_model;
pub use config::{ResumeMode, TrainConfig, TrainDType, TrainOnly};
pub use error::{Result, TrainError};
pub use moe_loss::LossConvention;
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
pub mod select;
pub mod trainer;

pub use trainer::{evaluate, train, train_until, EvalRecord, StepRecord, TrainEvent, TrainSummary};

/// The allocator setting training wants, re-exported from the model engine (one definition).
pub use escale_model::tune_allocator;
