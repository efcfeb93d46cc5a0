//! escale-grow: the EfficientScale growth operators.
//!
//! A growth is a *plan* (index maps, per-tensor rules and a manifest, computed from configs alone)
//! executed by a streaming reader -> transform -> writer over [`escale_formats`] checkpoints.
//! This crate never depends on the model or training engine, so surgery stays fast, streaming and
//! testable on its own.
//!
//! * [`scale_up`]: dense width (hidden, FFN, query heads; GQA-aware) and depth growth: FPI, AKI, AKI-Pro.
//! * [`scale_out`]: sparse upcycling of a dense model into a Mixture of Experts.

mod exec;
pub mod plan;
pub mod scale_out;
pub mod scale_up;

pub use exec::Progress;
pub use plan::{Exactness, GrowthManifest, MANIFEST_FILE};
