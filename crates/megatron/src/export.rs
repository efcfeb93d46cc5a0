//! `escale export megatron`: HF folder -> Megatron-Core torch_dist checkpoint.
//!
//! Rust streams the HF tensors into one safetensors file under megatron-core's own names
//! ([`crate::mapping`]), row blocks copied straight from the memory map; the bridge builds the
//! matching GPTModel, loads that file strictly, and megatron-core's `dist_checkpointing.save`
//! writes the checkpoint (renaming to the TransformerEngine layout Megatron-LM expects). Beside
//! it: Megatron-LM's tracker file, `megatron_args.sh`, `flagscale.yaml`, and the HF record
//! (config.json, tokenizer files) that `escale import megatron` brings back.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use escale_formats::writer::{check_output, copy_auxiliary_files, write_file};
use escale_formats::{Checkpoint, CheckpointWriter, DType, TensorSpec, WriterOptions};
use escale_util::lock::OutputLock;
use escale_util::publish;
use serde_json::json;

use crate::mapping::{plan, McoreTensor};
use crate::{args, Bridge, MegatronError, Result};

#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Replace an existing escale output.
    pub force: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    pub out_dir: PathBuf,
    pub model_type: String,
    pub dtype: String,
    pub tensors: usize,
    pub bytes: u64,
    pub megatron_core: String,
}

/// The stages of an export, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportStage {
    /// Mapping HF tensors to megatron-core names (bytes done, bytes total).
    Mapping(u64, u64),
    /// megatron-core is building the model and writing the checkpoint.
    Saving,
}

/// Removes a staging folder unless disarmed.
pub(crate) struct Staging(pub PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn single_dtype(ckpt: &Checkpoint) -> Result<DType> {
    let dtypes = ckpt.dtypes();
    let mut it = dtypes.keys();
    match (it.next(), it.next()) {
        (Some(d), None) => DType::parse(d).ok_or_else(|| MegatronError::invalid(ckpt.dir(), format!("unknown dtype {d}"))),
        _ => Err(MegatronError::invalid(
            ckpt.dir(),
            format!("tensors are stored in several dtypes ({dtypes:?}); megatron-core holds one params_dtype: rewrite it in one dtype first"),
        )),
    }
}

/// Writes the megatron-core state (local-spec names) into `dir` as one safetensors file.
fn write_mcore_state(ckpt: &Checkpoint, tensors: &[McoreTensor], dtype: DType, dir: &Path, progress: &dyn Fn(ExportStage)) -> Result<PathBuf> {
    let specs = tensors.iter().map(|t| TensorSpec::new(t.name.clone(), dtype, t.shape.clone())).collect();
    let writer = CheckpointWriter::create(dir, specs, &WriterOptions { max_shard_bytes: u64::MAX, force: false })?;
    let total: u64 = tensors.iter().map(|t| (t.shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64).sum();
    let mut done = 0u64;
    for t in tensors {
        let row_bytes = t.row_len() * dtype.size_in_bytes();
        let mut offset = 0u64;
        for b in &t.blocks {
            let name = ckpt.name_of(b.param);
            let info = ckpt.info(&name).ok_or_else(|| MegatronError::invalid(ckpt.dir(), format!("tensor `{name}` is missing")))?;
            let src_row_bytes = info.shape[1..].iter().product::<usize>() * dtype.size_in_bytes();
            if src_row_bytes != row_bytes || b.rows.end > info.shape[0] {
                return Err(MegatronError::invalid(
                    ckpt.dir(),
                    format!("tensor `{name}` of shape {:?} does not fit `{}` of shape {:?}", info.shape, t.name, t.shape),
                ));
            }
            let bytes = &ckpt.bytes(&name)?[b.rows.start * row_bytes..b.rows.end * row_bytes];
            writer.write_part(&t.name, offset, bytes)?;
            offset += bytes.len() as u64;
        }
        done += offset;
        progress(ExportStage::Mapping(done, total));
    }
    let published = writer.finish(&ckpt.config, None)?;
    Ok(published.join(escale_formats::reader::SINGLE_FILE))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> MegatronError + '_ {
    move |e| MegatronError::io(path, e)
}

/// Exports the HF model at `hf_dir` to a Megatron-Core checkpoint folder `out_dir`.
pub fn export(hf_dir: &Path, out_dir: &Path, bridge: &Bridge, options: &ExportOptions, progress: &dyn Fn(ExportStage)) -> Result<ExportReport> {
    let ckpt = Checkpoint::open(hf_dir)?;
    let cfg = &ckpt.config;
    let dtype = single_dtype(&ckpt)?;
    let description = args::model_description(cfg, dtype)?;
    let tensors = plan(cfg);
    check_output(out_dir, options.force)?;
    let _lock = OutputLock::acquire(out_dir).map_err(io_err(out_dir))?;
    let out_real = publish::resolve_output(out_dir).map_err(io_err(out_dir))?;
    let staging = Staging(publish::create_staging_dir(&out_real).map_err(io_err(out_dir))?);
    let stage = &staging.0;

    let state_dir = stage.join("mcore_state");
    let state_file = write_mcore_state(&ckpt, &tensors, dtype, &state_dir, progress)?;
    let model_file = stage.join(crate::MODEL_FILE);
    write_file(&model_file, format!("{}\n", serde_json::to_string_pretty(&description).expect("json")).as_bytes())?;

    progress(ExportStage::Saving);
    let iter_dir = stage.join("release");
    let saved = bridge.run(
        "save-checkpoint",
        &[
            OsString::from("--model"),
            model_file.clone().into(),
            "--state".into(),
            state_file.into(),
            "--out".into(),
            iter_dir.clone().into(),
        ],
    )?;
    std::fs::remove_dir_all(&state_dir).map_err(io_err(&state_dir))?;
    let mcore_version = saved["megatron_core"].as_str().unwrap_or("unknown").to_string();
    write_file(&stage.join(crate::TRACKER_FILE), b"release\n")?;

    let ckpt_arg = out_real.display().to_string();
    let tokenizer_arg = out_real.join(crate::HF_RECORD_DIR).display().to_string();
    let megatron_args = args::megatron_args(cfg, &ckpt_arg, &tokenizer_arg)?;
    let header = format!("written by escale export megatron from {} ({}, megatron-core {mcore_version})", hf_dir.display(), cfg.model_type);
    write_file(&stage.join(crate::ARGS_FILE), args::render_shell(&megatron_args, &header).as_bytes())?;
    write_file(&stage.join(crate::FLAGSCALE_FILE), args::render_flagscale(&megatron_args, &header).as_bytes())?;

    let record_dir = stage.join(crate::HF_RECORD_DIR);
    std::fs::create_dir_all(&record_dir).map_err(io_err(&record_dir))?;
    write_file(&record_dir.join(escale_formats::reader::CONFIG_FILE), cfg.to_json_string().as_bytes())?;
    copy_auxiliary_files(hf_dir, &record_dir)?;
    let bytes: u64 = tensors.iter().map(|t| (t.shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64).sum();
    let report = ExportReport {
        out_dir: out_dir.to_path_buf(),
        model_type: cfg.model_type.to_string(),
        dtype: dtype.to_string(),
        tensors: tensors.len(),
        bytes,
        megatron_core: mcore_version,
    };
    let record = json!({
        "escale_megatron_protocol": crate::PROTOCOL,
        "escale_version": env!("CARGO_PKG_VERSION"),
        "source": hf_dir.display().to_string(),
        "export": &report,
    });
    write_file(&stage.join(crate::RECORD_FILE), format!("{}\n", serde_json::to_string_pretty(&record).expect("json")).as_bytes())?;
    for dir in [stage.clone(), iter_dir, record_dir] {
        publish::sync_folder_files(&dir).map_err(io_err(&dir))?;
    }
    escale_formats::writer::publish_dir(stage, out_dir, options.force)?;
    Ok(report)
}
