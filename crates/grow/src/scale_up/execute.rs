//! The streaming executor: for each output tensor, read the source rows it needs, compute in f32,
//! round once to the output dtype, write, drop.
//!
//! Source rows are read with positioned reads (`pread`) rather than through the memory map, so
//! pages of a multi-GiB source do not pile up in this process's resident set; the output goes
//! straight to its final offset through [`CheckpointWriter`]. Tensors are processed in parallel
//! (rayon) while a byte budget bounds how much output is held in memory at once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use escale_formats::dtype::{decode_to_f32, encode_from_f32};
use escale_formats::writer::{check_output, TensorSpec};
use escale_formats::{Checkpoint, CheckpointWriter, DType, FormatError, WriterOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::options::splitmix;
use super::plan::ScaleUpPlan;
use super::rules::TensorRule;
use super::ScaleUpError;

/// How to write the output.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Shard size limit of the output (HF `max_shard_size`).
    pub max_shard_bytes: u64,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Most output bytes held in memory at once across the parallel workers (a single larger
    /// tensor still runs, alone).
    pub memory_budget_bytes: u64,
    /// Worker threads; `None` uses rayon's global pool (all cores).
    pub threads: Option<usize>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            max_shard_bytes: escale_formats::writer::DEFAULT_MAX_SHARD_BYTES,
            force: false,
            memory_budget_bytes: 256 << 20,
            threads: None,
        }
    }
}

/// What an execution did.
#[derive(Clone, Debug)]
pub struct ScaleUpReport {
    pub out_dir: PathBuf,
    pub tensors: usize,
    /// Source bytes read (a row read twice counts twice).
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Progress callback: `(output bytes done, output bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Runs `plan` on the opened source checkpoint `src`, writing a complete HF folder to `out_dir`
/// (config.json, weights, tokenizer files, and the manifest [`crate::MANIFEST_FILE`]). On any
/// error no output folder is left behind.
pub fn execute(
    plan: &ScaleUpPlan,
    src: &Checkpoint,
    out_dir: &Path,
    opts: &ExecOptions,
    progress: Option<Progress<'_>>,
) -> Result<ScaleUpReport, ScaleUpError> {
    let start = Instant::now();
    check_output(out_dir, opts.force)?;
    check_source_matches(plan, src)?;
    let reader = SourceReader::open(src)?;
    let rules: Vec<TensorRule> = plan.tensors.iter().map(|t| plan.rule_for(t)).collect();
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .zip(&rules)
        .map(|(t, r)| Ok(TensorSpec::new(t.name.clone(), out_dtype(plan, src, r)?, t.shape.clone())))
        .collect::<Result<_, ScaleUpError>>()?;
    let total: u64 = specs.iter().map(TensorSpec::byte_len).sum();
    let writer = CheckpointWriter::create(out_dir, specs.clone(), &WriterOptions { max_shard_bytes: opts.max_shard_bytes, force: opts.force })?;
    let manifest = super::manifest::manifest_json(plan, src.dir());
    let manifest_path = writer.staging_dir().join(crate::MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
    std::fs::write(&manifest_path, text).map_err(|e| FormatError::io(&manifest_path, e))?;

    let budget = ByteBudget::new(opts.memory_budget_bytes.max(1));
    let done = AtomicU64::new(0);
    let read = AtomicU64::new(0);
    let work = || (0..rules.len()).into_par_iter().try_for_each(|i| -> Result<(), ScaleUpError> {
        let spec = &specs[i];
        let _permit = budget.acquire(spec.byte_len());
        let bytes = compute_tensor(&rules[i], &reader, spec.dtype, &read)?;
        writer.write_bytes(&spec.name, &bytes)?;
        let now = done.fetch_add(spec.byte_len(), Ordering::Relaxed) + spec.byte_len();
        if let Some(p) = progress {
            p(now, total);
        }
        Ok(())
    });
    match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| ScaleUpError::Invalid { context: "--threads".into(), message: e.to_string() })?
            .install(work)?,
        None => work()?,
    }
    let out = writer.finish(&plan.target, Some(src.dir()))?;
    Ok(ScaleUpReport {
        out_dir: out,
        tensors: specs.len(),
        bytes_read: read.load(Ordering::Relaxed),
        bytes_written: total,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A plan made from one config must not be run on a checkpoint of another.
fn check_source_matches(plan: &ScaleUpPlan, src: &Checkpoint) -> Result<(), ScaleUpError> {
    let (p, c) = (&plan.source, &src.config);
    let same = p.model_type == c.model_type
        && p.hidden_size == c.hidden_size
        && p.intermediate_size == c.intermediate_size
        && p.num_attention_heads == c.num_attention_heads
        && p.num_key_value_heads == c.num_key_value_heads
        && p.num_hidden_layers == c.num_hidden_layers
        && p.vocab_size == c.vocab_size
        && p.tie_word_embeddings == c.tie_word_embeddings;
    if !same {
        return Err(ScaleUpError::Invalid {
            context: src.dir().display().to_string(),
            message: "the checkpoint's config differs from the one the plan was made for".into(),
        });
    }
    Ok(())
}

/// `--dtype`, or else the storage dtype of the tensor's main source.
fn out_dtype(plan: &ScaleUpPlan, src: &Checkpoint, rule: &TensorRule) -> Result<DType, ScaleUpError> {
    if let Some(d) = plan.options.dtype {
        return Ok(d);
    }
    let name = &rule.sources[0];
    let name = if src.info(name).is_none() { src.name_of(escale_formats::Param::LmHead) } else { name.clone() };
    src.info(&name)
        .map(|i| i.dtype)
        .ok_or_else(|| FormatError::tensor(src.dir(), &name, "not found in the checkpoint").into())
}

/// Positioned reads of single rows from the source shards.
struct SourceReader<'a> {
    ckpt: &'a Checkpoint,
    files: Vec<File>,
}

impl<'a> SourceReader<'a> {
    fn open(ckpt: &'a Checkpoint) -> Result<Self, ScaleUpError> {
        let files = ckpt
            .shard_paths()
            .map(|p| File::open(p).map_err(|e| FormatError::io(p, e).into()))
            .collect::<Result<_, ScaleUpError>>()?;
        Ok(SourceReader { ckpt, files })
    }

    /// Resolves a source name (a tied `lm_head` reads the embedding).
    fn info(&self, name: &str) -> Result<&escale_formats::TensorInfo, ScaleUpError> {
        if let Some(i) = self.ckpt.info(name) {
            return Ok(i);
        }
        let tied = self.ckpt.name_of(escale_formats::Param::LmHead);
        if name == "lm_head.weight" {
            if let Some(i) = self.ckpt.info(&tied) {
                return Ok(i);
            }
        }
        Err(FormatError::tensor(self.ckpt.dir(), name, "not found in the checkpoint").into())
    }

    /// Reads row `row` of a tensor (a vector is one row) into `out` as f32.
    fn read_row(&self, name: &str, row: usize, scratch: &mut Vec<u8>, out: &mut Vec<f32>) -> Result<u64, ScaleUpError> {
        let info = self.info(name)?;
        let (rows, cols) = match info.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => {
                return Err(FormatError::tensor(self.ckpt.dir(), name, format!("expected a vector or matrix, found shape {other:?}")).into())
            }
        };
        if row >= rows {
            return Err(FormatError::tensor(self.ckpt.dir(), name, format!("row {row} out of range ({rows} rows)")).into());
        }
        let row_bytes = cols * info.dtype.size_in_bytes();
        scratch.resize(row_bytes, 0);
        let offset = (info.start + row * row_bytes) as u64;
        let path = self.ckpt.shard_paths().nth(info.shard).expect("shard index from the checkpoint");
        self.files[info.shard].read_exact_at(scratch, offset).map_err(|e| FormatError::io(path, e))?;
        decode_to_f32(info.dtype, scratch, out);
        Ok(row_bytes as u64)
    }
}

/// Computes one output tensor, row by row, straight into its encoded bytes.
fn compute_tensor(rule: &TensorRule, reader: &SourceReader, dtype: DType, read: &AtomicU64) -> Result<Vec<u8>, ScaleUpError> {
    let n = rule.rows.len() * rule.cols.len();
    if rule.zero {
        let mut bytes = Vec::new();
        encode_from_f32(dtype, &vec![0.0; n], &mut bytes);
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(n * dtype.size_in_bytes());
    let mut bufs: Vec<Vec<f32>> = vec![Vec::new(); rule.sources.len()];
    let (mut scratch, mut row_out, mut encoded) = (Vec::new(), vec![0f32; rule.cols.len()], Vec::new());
    let overrides = rule.override_tensors();
    let mut bytes_read = 0;
    for (r, sel) in rule.rows.iter().enumerate() {
        bytes_read += reader.read_row(&rule.sources[sel.tensor as usize], sel.src_row, &mut scratch, &mut bufs[sel.tensor as usize])?;
        for &k in overrides.iter().filter(|&&k| k != sel.tensor) {
            bytes_read += reader.read_row(&rule.sources[k as usize], sel.src_row, &mut scratch, &mut bufs[k as usize])?;
        }
        gather_row(rule, r, &bufs, &mut row_out);
        encode_from_f32(dtype, &row_out, &mut encoded);
        out.extend_from_slice(&encoded);
    }
    read.fetch_add(bytes_read, Ordering::Relaxed);
    Ok(out)
}

/// Output row `r` from the loaded source rows (`bufs[k]` = the row of source tensor `k`).
pub(crate) fn gather_row(rule: &TensorRule, r: usize, bufs: &[Vec<f32>], out: &mut [f32]) {
    let sel = rule.rows[r];
    for (o, c) in out.iter_mut().zip(&rule.cols) {
        let src = &bufs[c.tensor.unwrap_or(sel.tensor) as usize];
        *o = sel.scale * c.scale * src[c.src_col];
    }
    if let Some(noise) = rule.noise {
        add_lemon_noise(rule, r, noise.std, noise.seed, out);
    }
}

/// LEMON (spec §2.5): per row, Gaussian noise that sums to zero over each group of copies, so
/// the copies differ but their total (what the next layer sees) is unchanged. Seeded per row, so
/// the result does not depend on the order rows or tensors are processed in.
fn add_lemon_noise(rule: &TensorRule, r: usize, std: f32, seed: u64, out: &mut [f32]) {
    let mut rng = StdRng::seed_from_u64(splitmix(seed ^ splitmix(r as u64)));
    let groups = rule.cols.iter().filter_map(|c| c.noise_group).max().map_or(0, |m| m as usize + 1);
    let (mut sum, mut count) = (vec![0f64; groups], vec![0u32; groups]);
    let z: Vec<f64> = rule
        .cols
        .iter()
        .map(|c| match c.noise_group {
            Some(gr) => {
                let v: f64 = StandardNormal.sample(&mut rng);
                let v = v * std as f64;
                sum[gr as usize] += v;
                count[gr as usize] += 1;
                v
            }
            None => 0.0,
        })
        .collect();
    for ((o, c), v) in out.iter_mut().zip(&rule.cols).zip(z) {
        if let Some(gr) = c.noise_group {
            let gr = gr as usize;
            *o += (v - sum[gr] / count[gr] as f64) as f32;
        }
    }
}

/// Applies a rule to in-memory source tensors (row-major, `src_cols[k]` columns each; a vector is
/// one row). The executor's arithmetic, without files: for tests and small tools.
pub fn apply_rule(rule: &TensorRule, sources: &[&[f32]], src_cols: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; rule.rows.len() * rule.cols.len()];
    if rule.zero {
        return out;
    }
    let mut bufs: Vec<Vec<f32>> = vec![Vec::new(); sources.len()];
    for (r, sel) in rule.rows.iter().enumerate() {
        for (k, buf) in bufs.iter_mut().enumerate() {
            let w = src_cols[k];
            buf.clear();
            buf.extend_from_slice(&sources[k][sel.src_row * w..(sel.src_row + 1) * w]);
        }
        let w = rule.cols.len();
        gather_row(rule, r, &bufs, &mut out[r * w..(r + 1) * w]);
    }
    out
}

/// Bounds the output bytes held at once by the parallel workers.
struct ByteBudget {
    cap: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

struct Permit<'a> {
    budget: &'a ByteBudget,
    n: u64,
}

impl ByteBudget {
    fn new(cap: u64) -> Self {
        ByteBudget { cap, used: Mutex::new(0), freed: Condvar::new() }
    }

    /// Waits until `n` bytes fit (a tensor larger than the whole budget waits to run alone).
    fn acquire(&self, n: u64) -> Permit<'_> {
        let n = n.min(self.cap);
        let mut used = self.used.lock().expect("budget lock");
        while *used > 0 && *used + n > self.cap {
            used = self.freed.wait(used).expect("budget lock");
        }
        *used += n;
        Permit { budget: self, n }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.budget.used.lock().expect("budget lock") -= self.n;
        self.budget.freed.notify_all();
    }
}
