//! `escale import megatron`: Megatron-Core torch_dist checkpoint -> HF folder.
//!
//! The bridge loads the checkpoint into the GPTModel its description builds (megatron-core maps
//! the TransformerEngine-layout keys back to the local modules) and dumps the state under
//! local-spec names; Rust splits each tensor into its HF row blocks ([`crate::mapping`], the same
//! plan as export, read the other way) and publishes the folder atomically with the config.json and
//! tokenizer files recorded at export.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use escale_formats::naming::{expected_params, hf_name};
use escale_formats::reader::read_safetensors_header;
use escale_formats::writer::check_output;
use escale_formats::{CheckpointWriter, ModelConfig, TensorSpec, WriterOptions};
use escale_util::publish;

use crate::export::Staging;
use crate::mapping::plan;
use crate::{checkpoint_iteration_dir, Bridge, MegatronError, Result};

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Replace an existing escale output.
    pub force: bool,
    /// The export folder holding the model description and the HF record, when the checkpoint
    /// folder is not itself an export (a Megatron-LM `--save` folder).
    pub record: Option<PathBuf>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    pub out_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub model_type: String,
    pub tensors: usize,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> MegatronError + '_ {
    move |e| MegatronError::io(path, e)
}

/// Imports the checkpoint in `ckpt_dir` into a new HF folder `out_dir`.
pub fn import(ckpt_dir: &Path, out_dir: &Path, bridge: &Bridge, options: &ImportOptions) -> Result<ImportReport> {
    let record = options.record.clone().unwrap_or_else(|| ckpt_dir.to_path_buf());
    let model_file = record.join(crate::MODEL_FILE);
    let hf_record = record.join(crate::HF_RECORD_DIR);
    if !model_file.is_file() || !hf_record.join("config.json").is_file() {
        return Err(MegatronError::invalid(
            &record,
            format!(
                "no {} and {}/config.json: import needs the folder `escale export megatron` wrote (pass it with --record when the checkpoint comes from a Megatron-LM run)",
                crate::MODEL_FILE,
                crate::HF_RECORD_DIR
            ),
        ));
    }
    let cfg = ModelConfig::from_file(&hf_record.join("config.json"))?;
    crate::args::check_supported(&cfg)?;
    let iter_dir = checkpoint_iteration_dir(ckpt_dir)?;
    check_output(out_dir, options.force)?;

    // The dump lives in the output's staging area, cleaned even if this process dies.
    let out_real = publish::resolve_output(out_dir).map_err(io_err(out_dir))?;
    let dump_owner = out_real.with_file_name(format!("{}.mcore", publish::file_name(&out_real).map_err(io_err(out_dir))?));
    let staging = Staging(publish::create_staging_dir(&dump_owner).map_err(io_err(out_dir))?);
    let dump = staging.0.join("mcore_state.safetensors");
    bridge.run(
        "dump-checkpoint",
        &[OsString::from("--model"), model_file.into(), "--checkpoint".into(), iter_dir.clone().into(), "--out".into(), dump.clone().into()],
    )?;
    let file = File::open(&dump).map_err(io_err(&dump))?;
    // SAFETY: read-only map of a file this process just had written and nobody else writes.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(&dump))?;
    let infos = read_safetensors_header(&dump, &bytes, 0)?;
    let by_name: HashMap<&str, &escale_formats::TensorInfo> = infos.iter().map(|t| (t.name.as_str(), t)).collect();

    let tensors = plan(&cfg);
    let first = tensors.first().and_then(|t| by_name.get(t.name.as_str())).ok_or_else(|| {
        MegatronError::invalid(&iter_dir, "the dumped state has no word embeddings: not the model its description builds")
    })?;
    let dtype = first.dtype;
    let specs: Vec<TensorSpec> =
        expected_params(&cfg).into_iter().map(|(p, shape)| TensorSpec::new(hf_name(cfg.model_type, p), dtype, shape)).collect();
    let hf_shapes: HashMap<String, Vec<usize>> = specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
    let writer = CheckpointWriter::create(out_dir, specs, &WriterOptions { force: options.force, ..WriterOptions::default() })?;
    for t in &tensors {
        let info = by_name.get(t.name.as_str()).ok_or_else(|| MegatronError::invalid(&iter_dir, format!("tensor `{}` is missing", t.name)))?;
        if info.shape != t.shape || info.dtype != dtype {
            return Err(MegatronError::invalid(
                &iter_dir,
                format!("tensor `{}` is {:?} {}, the config implies {:?} {dtype}", t.name, info.shape, info.dtype, t.shape),
            ));
        }
        let data = &bytes[info.start..info.end];
        let row_bytes = t.row_len() * dtype.size_in_bytes();
        let mut pos = 0usize;
        for b in &t.blocks {
            let name = hf_name(cfg.model_type, b.param);
            let len = b.rows.len() * row_bytes;
            let hf_row_bytes = hf_shapes[&name][1..].iter().product::<usize>() * dtype.size_in_bytes();
            debug_assert_eq!(hf_row_bytes, row_bytes, "{name}");
            writer.write_part(&name, (b.rows.start * row_bytes) as u64, &data[pos..pos + len])?;
            pos += len;
        }
    }
    writer.finish(&cfg, Some(&hf_record))?;
    Ok(ImportReport { out_dir: out_dir.to_path_buf(), checkpoint: iter_dir, model_type: cfg.model_type.to_string(), tensors: infos.len() })
}
