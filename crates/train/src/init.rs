//! A randomly initialised model for training from scratch (the Preparation phase's small model
//! and the from-scratch baselines), written as an HF folder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use escale_formats::{ModelConfig, WriterOptions};
use escale_model::Model;

use crate::error::Result;

/// HF initialisation (normal(0, initializer_range) matrices and embeddings, zero biases, unit
/// norms; see `Model::init_random`) of `config`, saved to `output` in `storage` precision.
/// Deterministic for a seed. Tokenizer files next to `config_path`, if any, are copied along.
pub fn init_model(config_path: &Path, output: &Path, seed: u64, storage: escale_formats::DType, force: bool) -> Result<PathBuf> {
    let cfg = ModelConfig::from_file(config_path)?;
    let model = Model::init_random(&cfg, seed, &Device::Cpu, DType::F32)?;
    let options = WriterOptions { force, ..WriterOptions::default() };
    let aux = config_path.parent().filter(|p| !p.as_os_str().is_empty());
    model.save(output, storage, &options, aux, |_| Ok(()))?;
    Ok(output.to_path_buf())
}
