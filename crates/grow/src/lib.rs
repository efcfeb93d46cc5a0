//! escale-grow: the EfficientScale growth operators.
//!
//! A growth is a *plan* (index maps, per-tensor rules and a manifest, computed from configs alone)
//! executed by a streaming reader -> transform -> writer over [`escale_formats`] checkpoints.
//! This crate never depends on the model or training engine, so surgery stays fast, streaming and
//! testable on its own.
//!
//! "spec §N" in this crate's comments is section N of `docs/growth-algorithms.md`, the algorithm
//! specification in this repository.
//!
//! * [`plan`]: the vocabulary both growths share: [`GrowthPlan`], [`PlannedTensor`] with its
//!   [`Rule`], the [`Exactness`] verdict (aware of the stored dtype) and the typed
//!   [`GrowthManifest`] written as [`MANIFEST_FILE`].
//! * `exec`: the one streaming executor both growths run on. An engine lists its jobs (sources
//!   read, outputs written, bytes held) and a transform; `exec::stream` owns the rest: the writer
//!   and publishing, the worker pool and byte budget, mapped sources that release their pages,
//!   progress over output bytes, and stopping at the first error.
//! * [`scale_up`]: dense width (hidden, FFN, query heads; GQA-aware) and depth growth: FPI, AKI,
//!   AKI-Pro. `ScaleUpPlan::new` then `scale_up::execute`.
//! * [`scale_out`]: sparse upcycling of a dense model into a Mixture of Experts.
//!   `ScaleOutPlan::new` then `scale_out::execute`; each output format in `scale_out/format/`.

mod exec;
pub mod plan;
pub mod scale_out;
pub mod scale_up;

pub use exec::Progress;
pub use plan::{Exactness, GrowthManifest, GrowthPlan, PlannedTensor, Rule, MANIFEST_FILE};
