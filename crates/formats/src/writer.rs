//! Streaming, sharded, atomic writing of Hugging Face model folders.
//!
//! The caller declares every tensor (name, dtype, shape) up front. That fixes the shard layout
//! and every tensor's byte offset before any data exists, so tensors can then be written in any
//! order, from any thread, straight to their final position (`pwrite`): nothing is buffered
//! beyond the tensor the caller is holding, whatever the shard size.
//!
//! Everything goes into a staging folder in `.escale-tmp` beside the target, which is renamed
//! into place by [`CheckpointWriter::finish`] only when complete; dropping an unfinished writer
//! removes it. The writer holds the output's lock ([`escale_util::lock`]) from creation to the
//! end, so a second writer of the same output is refused with the holder's PID. An existing
//! non-empty output is refused unless `force` is set, and even then it is replaced only when
//! escale wrote it (or it is empty), and only at the final rename, never half-overwritten.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use escale_util::lock::OutputLock;
use escale_util::{output, publish};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::dtype::{encode_from_f32, DType};
use crate::error::{FormatError, Result};
use crate::reader::{CONFIG_FILE, INDEX_FILE, SINGLE_FILE};

/// HF's default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Start a new shard when the next tensor would push the current one past this many bytes.
    pub max_shard_bytes: u64,
    /// Replace a non-empty output folder that escale wrote, once the new one is complete.
    pub force: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { max_shard_bytes: DEFAULT_MAX_SHARD_BYTES, force: false }
    }
}

/// A declared output tensor.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> Self {
        TensorSpec { name: name.into(), dtype, shape }
    }
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size_in_bytes() as u64
    }
}

struct Slot {
    shard: usize,
    /// Absolute offset of the data in the shard file.
    offset: u64,
    spec: TensorSpec,
    written: AtomicBool,
    /// Bytes delivered through [`CheckpointWriter::write_part`].
    part_bytes: AtomicU64,
}

struct ShardFile {
    name: String,
    file: File,
}

pub struct CheckpointWriter {
    out_dir: PathBuf,
    tmp_dir: PathBuf,
    force: bool,
    shards: Vec<ShardFile>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    finished: bool,
    /// Held until the writer is dropped (after the staging folder is gone).
    _lock: OutputLock,
}

/// Refuses to replace a non-empty output unless forced, and even forced one that escale did not
/// write (checked before any work is done).
pub fn check_output(out_dir: &Path, force: bool) -> Result<()> {
    if !publish::is_nonempty(out_dir) {
        return Ok(());
    }
    if !force {
        return Err(FormatError::OutputExists { path: out_dir.to_path_buf() });
    }
    output::check_replaceable(out_dir).map_err(|e| FormatError::io(out_dir, e))
}

/// Assigns tensors to shards greedily in declaration order, like transformers' `save_pretrained`.
fn plan_shards(specs: &[TensorSpec], max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0u64;
    for (i, spec) in specs.iter().enumerate() {
        let size = spec.byte_len();
        if !shards.last().unwrap().is_empty() && current + size > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().unwrap().push(i);
        current += size;
    }
    shards
}

fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// The safetensors header for a shard: JSON padded with spaces to a multiple of 8 bytes.
fn shard_header(specs: &[&TensorSpec]) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for spec in specs {
        let end = offset + spec.byte_len();
        map.insert(
            spec.name.clone(),
            json!({"dtype": spec.dtype.safetensors_name(), "shape": spec.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(map)).expect("header serialises");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out
}

impl CheckpointWriter {
    /// Declares the output: tensors are laid out in the given order.
    pub fn create(out_dir: &Path, tensors: Vec<TensorSpec>, options: &WriterOptions) -> Result<CheckpointWriter> {
        check_output(out_dir, options.force)?;
        let mut seen = HashMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if seen.insert(t.name.clone(), i).is_some() {
                return Err(FormatError::tensor(out_dir, &t.name, "declared twice"));
            }
        }
        let lock = OutputLock::acquire(out_dir).map_err(|e| FormatError::io(out_dir, e))?;
        let tmp_dir = publish::resolve_output(out_dir)
            .and_then(|real| publish::create_staging_dir(&real))
            .map_err(|e| FormatError::io(out_dir, e))?;

        let plan = plan_shards(&tensors, options.max_shard_bytes.max(1));
        let n = plan.len();
        let mut shards = Vec::with_capacity(n);
        let mut slot_of: Vec<Option<(usize, u64)>> = vec![None; tensors.len()];
        for (s, members) in plan.iter().enumerate() {
            let specs: Vec<&TensorSpec> = members.iter().map(|&i| &tensors[i]).collect();
            let header = shard_header(&specs);
            let name = shard_name(s, n);
            let path = tmp_dir.join(&name);
            let file = File::create(&path).map_err(|e| FormatError::io(&path, e))?;
            let data_len: u64 = specs.iter().map(|t| t.byte_len()).sum();
            // Sizing the file up front lets tensors land at their offsets in any order.
            file.set_len(header.len() as u64 + data_len).map_err(|e| FormatError::io(&path, e))?;
            file.write_all_at(&header, 0).map_err(|e| FormatError::io(&path, e))?;
            let mut offset = header.len() as u64;
            for &i in members {
                slot_of[i] = Some((s, offset));
                offset += tensors[i].byte_len();
            }
            shards.push(ShardFile { name, file });
        }
        let slots: Vec<Slot> = tensors
            .into_iter()
            .zip(slot_of)
            .map(|(spec, at)| {
                let (shard, offset) = at.expect("every tensor is planned");
                Slot { shard, offset, spec, written: AtomicBool::new(false), part_bytes: AtomicU64::new(0) }
            })
            .collect();
        Ok(CheckpointWriter {
            out_dir: out_dir.to_path_buf(),
            tmp_dir,
            force: options.force,
            shards,
            by_name: seen,
            slots,
            finished: false,
            _lock: lock,
        })
    }

    /// The folder being filled; put extra files (manifests, trainer state) here before `finish`.
    pub fn staging_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// Declared tensors in layout order.
    pub fn specs(&self) -> impl Iterator<Item = &TensorSpec> {
        self.slots.iter().map(|s| &s.spec)
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        self.by_name
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| FormatError::tensor(&self.out_dir, name, "was not declared for this output"))
    }

    /// Writes a tensor's bytes (already in its declared dtype). Safe to call from many threads.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let slot = self.slot(name)?;
        if bytes.len() as u64 != slot.spec.byte_len() {
            return Err(FormatError::tensor(
                &self.out_dir,
                name,
                format!("got {} bytes, shape {:?} in {} needs {}", bytes.len(), slot.spec.shape, slot.spec.dtype, slot.spec.byte_len()),
            ));
        }
        if slot.written.swap(true, Ordering::SeqCst) || slot.part_bytes.load(Ordering::SeqCst) > 0 {
            return Err(FormatError::tensor(&self.out_dir, name, "written twice"));
        }
        let shard = &self.shards[slot.shard];
        shard
            .file
            .write_all_at(bytes, slot.offset)
            .map_err(|e| FormatError::io(self.tmp_dir.join(&shard.name), e))
    }

    /// Writes a piece of a tensor (bytes in its declared dtype) at byte `offset` within it, so a
    /// large tensor can be produced in bounded memory. Pieces must not overlap; the tensor counts
    /// as written once they add up to its size. Safe to call from many threads.
    pub fn write_part(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let slot = self.slot(name)?;
        let len = slot.spec.byte_len();
        if bytes.is_empty() && len > 0 {
            return Ok(());
        }
        if offset + bytes.len() as u64 > len {
            return Err(FormatError::tensor(
                &self.out_dir,
                name,
                format!("piece at byte {offset} of {} bytes overruns the tensor's {len} bytes", bytes.len()),
            ));
        }
        let total = slot.part_bytes.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64;
        if total > len || slot.written.load(Ordering::SeqCst) {
            return Err(FormatError::tensor(&self.out_dir, name, "written twice"));
        }
        let shard = &self.shards[slot.shard];
        shard
            .file
            .write_all_at(bytes, slot.offset + offset)
            .map_err(|e| FormatError::io(self.tmp_dir.join(&shard.name), e))?;
        if total == len {
            slot.written.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Writes f32 values, rounding once to the tensor's declared dtype.
    pub fn write_f32(&self, name: &str, values: &[f32]) -> Result<()> {
        let dtype = self.slot(name)?.spec.dtype;
        let mut bytes = Vec::new();
        encode_from_f32(dtype, values, &mut bytes);
        self.write_bytes(name, &bytes)
    }

    /// Completes the folder: checks every tensor was written, syncs the shards, writes the index,
    /// config.json and the auxiliary files copied from `aux_source` (tokenizer, generation config),
    /// then renames the folder into place.
    pub fn finish(mut self, config: &ModelConfig, aux_source: Option<&Path>) -> Result<PathBuf> {
        if let Some(missing) = self.slots.iter().find(|s| !s.written.load(Ordering::SeqCst)) {
            return Err(FormatError::tensor(&self.out_dir, &missing.spec.name, "declared but never written"));
        }
        for shard in &self.shards {
            shard.file.sync_all().map_err(|e| FormatError::io(self.tmp_dir.join(&shard.name), e))?;
        }
        if self.shards.len() > 1 {
            self.write_index()?;
        }
        write_file(&self.tmp_dir.join(CONFIG_FILE), config.to_json_string().as_bytes())?;
        if let Some(src) = aux_source {
            copy_auxiliary_files(src, &self.tmp_dir)?;
        }
        // Files a caller added to the staging folder (a trainer's optimizer state) and the copied
        // tokenizer files reach the disk before the rename makes the folder visible.
        publish::sync_folder_files(&self.tmp_dir).map_err(|e| FormatError::io(&self.tmp_dir, e))?;
        publish_dir(&self.tmp_dir, &self.out_dir, self.force)?;
        self.finished = true;
        Ok(self.out_dir.clone())
    }

    fn write_index(&self) -> Result<()> {
        let mut weight_map = Map::new();
        let mut names: Vec<&Slot> = self.slots.iter().collect();
        names.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        for slot in names {
            weight_map.insert(slot.spec.name.clone(), self.shards[slot.shard].name.clone().into());
        }
        let total: u64 = self.slots.iter().map(|s| s.spec.byte_len()).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let mut text = serde_json::to_string_pretty(&index).expect("index serialises");
        text.push('\n');
        write_file(&self.tmp_dir.join(INDEX_FILE), text.as_bytes())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

/// Writes a small file (config, index, manifest) atomically and synced, so a published folder
/// never holds a half-written one.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    publish::write_atomic(path, bytes).map_err(|e| FormatError::io(path, e))
}

/// Copies tokenizer files and generation_config.json from a source model folder, when present.
pub fn copy_auxiliary_files(src: &Path, dst: &Path) -> Result<()> {
    for name in crate::AUXILIARY_FILES {
        let from = src.join(name);
        if from.is_file() {
            std::fs::copy(&from, dst.join(name)).map_err(|e| FormatError::io(&from, e))?;
        }
    }
    Ok(())
}

/// Moves a completed folder into place ([`escale_util::publish::publish_dir`]). With `force`, an
/// existing escale output is replaced in one rename where the filesystem allows, and deleted
/// once the new folder is in place.
pub fn publish_dir(tmp_dir: &Path, out_dir: &Path, force: bool) -> Result<()> {
    publish::publish_dir(tmp_dir, out_dir, force).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => FormatError::OutputExists { path: out_dir.to_path_buf() },
        _ => FormatError::io(out_dir, e),
    })
}

/// Copies a checkpoint tensor by tensor into a new folder (re-sharding it, say). Tensors the
/// config implies come first in transformers order, then any extra tensors in storage order;
/// bytes are copied unchanged, so the result is bit-identical.
pub fn rewrite_checkpoint(ckpt: &crate::Checkpoint, out_dir: &Path, options: &WriterOptions) -> Result<PathBuf> {
    let mut names: Vec<String> = crate::naming::expected_params(&ckpt.config)
        .into_iter()
        .map(|(p, _)| crate::naming::hf_name(ckpt.config.model_type, p))
        .collect();
    for t in ckpt.tensors() {
        if !names.contains(&t.name) {
            names.push(t.name.clone());
        }
    }
    let specs = names
        .iter()
        .map(|n| {
            let info = ckpt.info(n).expect("validated on open");
            TensorSpec::new(n.clone(), info.dtype, info.shape.clone())
        })
        .collect();
    let writer = CheckpointWriter::create(out_dir, specs, options)?;
    for n in &names {
        writer.write_bytes(n, ckpt.bytes(n)?)?;
    }
    writer.finish(&ckpt.config, Some(ckpt.dir()))
}
