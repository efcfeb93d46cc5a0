//! Scale-Up: grow a dense llama / mistral / qwen2 model in width (hidden size, FFN size, query
//! heads; GQA-aware) and depth, the first phase of EfficientScale (spec: growth-algorithms.md §1-3).
//!
//! Plan, then execute: [`ScaleUpPlan::new`] computes every index map, scale and per-tensor rule
//! from the configs alone (so a 7B -> 16B plan can be checked without weights), and
//! [`execute`] streams the source checkpoint through the rules into a new HF folder.

mod execute;
mod manifest;
mod maps;
mod options;
mod plan;
mod rules;

use std::path::Path;

pub use crate::exec::Progress;
pub use execute::{apply_rule, execute, ExecOptions, ScaleUpReport};
pub use manifest::{DimsRecord, MapsRecord, ScaleUpManifest, ScalesRecord, SeedsRecord};
pub use maps::{depth_map, head_map, DepthMap, DepthMethod, MapKind, UnitMap};
pub use options::{AkiConsumerSource, AkiScope, Fanout, Method, Preset, ScaleUpOptions};
pub use plan::{hidden_scales, is_residual_writer, HiddenScales, OutputSource, OutputTensor, ScaleUpPlan, Target, TargetDims};
pub use rules::{ColSel, Noise, RowSel, TensorRule};

use escale_formats::{Checkpoint, FormatError};

/// Everything that can stop a Scale-Up.
#[derive(Debug, thiserror::Error)]
pub enum ScaleUpError {
    /// The checkpoint or config on disk is unreadable or inconsistent.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The requested growth is impossible or unsupported; `context` names the file at fault.
    #[error("{context}: {message}")]
    Invalid { context: String, message: String },
}

/// Opens `src_dir`, plans the growth and writes the grown model to `out_dir`.
pub fn scale_up(
    src_dir: &Path,
    out_dir: &Path,
    target: &Target,
    options: &ScaleUpOptions,
    exec: &ExecOptions,
    progress: Option<Progress<'_>>,
) -> Result<(ScaleUpPlan, ScaleUpReport), ScaleUpError> {
    escale_formats::writer::check_output(out_dir, exec.force)?;
    let src = Checkpoint::open(src_dir)?;
    let plan = ScaleUpPlan::new(&src.config, target, options)?;
    let report = execute(&plan, &src, out_dir, exec, progress)?;
    Ok((plan, report))
}
