//! Scale-Up on the crate's streaming executor: one job per output tensor, whose transform reads
//! the source rows it needs, computes in f32, rounds once to the output dtype and writes.
//!
//! Each output is written in chunks of whole rows straight to its final offset, so memory stays
//! at a few MiB per worker plus the source tensors in flight (zero-copy from the memory map,
//! released after each tensor); jobs run in parallel under [`ExecOptions::memory_budget_bytes`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use escale_formats::dtype::decode_to_f32;
use escale_formats::writer::{check_output, TensorSpec};
use escale_formats::{Checkpoint, DType, FormatError, WriterOptions};
use escale_util::rng::splitmix64;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::manifest::ScaleUpManifest;
use super::plan::ScaleUpPlan;
use super::rules::TensorRule;
use super::ScaleUpError;
use crate::exec::{stream, Destination, Job, Output, Progress, SourceBytes, StreamError, Workers, Workload};
use crate::GrowthManifest;

/// How to write the output.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Shard size limit of the output (HF `max_shard_size`).
    pub max_shard_bytes: u64,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Most bytes (mapped source tensors plus output chunks) in use at once across the parallel
    /// workers; a single larger tensor still runs, alone.
    pub memory_budget_bytes: u64,
    /// Worker threads; `None` uses as many as rayon's global pool has (all cores, or
    /// `RAYON_NUM_THREADS`).
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
    /// Source bytes read (a tensor read for two outputs counts twice).
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
}


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
    let jobs = plan_jobs(plan, src)?;
    let dest = Destination {
        out_dir,
        options: &WriterOptions { max_shard_bytes: opts.max_shard_bytes, force: opts.force },
        config: &plan.target,
        manifest: GrowthManifest::ScaleUp(Box::new(ScaleUpManifest::new(plan, src.dir()))),
    };
    let workers =
        Workers { threads: opts.threads, load: Workload::Compute, memory_budget: Some(opts.memory_budget_bytes), name: "scale-up" };
    let streamed = stream(src, dest, &jobs, &workers, progress, |job, sources, out| {
        write_tensor(src, &job.work, sources, &job.outputs[0], out)
    })?;
    Ok(ScaleUpReport {
        out_dir: streamed.out_dir,
        tensors: jobs.len(),
        bytes_read: streamed.bytes_read,
        bytes_written: streamed.bytes_written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One job per output tensor, in the plan's order. A zero tensor reads nothing; every job's
/// cost is its sources (mapped, resident while in use) plus one output chunk.
fn plan_jobs(plan: &ScaleUpPlan, src: &Checkpoint) -> Result<Vec<Job<TensorRule>>, ScaleUpError> {
    plan.tensors
        .iter()
        .map(|t| {
            let rule = plan.rule_for(t);
            let spec = TensorSpec::new(t.name.clone(), out_dtype(plan, src, &rule)?, t.shape.clone());
            let source_bytes: u64 = rule.sources.iter().map(|s| src.info(s).map_or(0, |i| i.byte_len() as u64)).sum();
            let cost = spec.byte_len().min(CHUNK_BYTES as u64) + source_bytes;
            let sources = if writes_zeros(&rule) { Vec::new() } else { rule.sources.clone() };
            Ok(Job { sources, outputs: vec![spec], cost, work: rule })
        })
        .collect()
}

/// A rule that reads nothing: an all-zero tensor, or one with no rows.
fn writes_zeros(rule: &TensorRule) -> bool {
    rule.zero || rule.rows.is_empty()
}

impl StreamError for ScaleUpError {
    fn workers(_source_dir: &Path, message: String) -> Self {
        ScaleUpError::Invalid { context: "--threads".into(), message }
    }
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
    match plan.options.dtype {
        Some(d) => Ok(d),
        None => Ok(tensor_info(src, &rule.sources[0])?.dtype),
    }
}

fn tensor_info<'a>(src: &'a Checkpoint, name: &str) -> Result<&'a escale_formats::TensorInfo, ScaleUpError> {
    src.info(name).ok_or_else(|| FormatError::tensor(src.dir(), name, "not found in the checkpoint").into())
}

/// A source tensor's raw bytes and layout.
struct Src<'a> {
    dtype: DType,
    bytes: &'a [u8],
    /// The mapping these bytes come from, released when the source is dropped (`None` for
    /// in-memory sources).
    _mapped: Option<SourceBytes<'a>>,
    /// Row length (a vector is one row).
    cols: usize,
}

impl<'a> Src<'a> {
    /// A mapped source; rules address rows, so it must be a vector or a matrix.
    fn mapped(src: &Checkpoint, mapped: SourceBytes<'a>) -> Result<Self, ScaleUpError> {
        let info = mapped.info();
        let cols = match info.shape.as_slice() {
            [n] | [_, n] => *n,
            other => {
                return Err(FormatError::tensor(src.dir(), &info.name, format!("expected a vector or matrix, found shape {other:?}")).into())
            }
        };
        Ok(Src { dtype: info.dtype, bytes: mapped.bytes(), cols, _mapped: Some(mapped) })
    }

    /// Decodes row `row` into `out` (f32, exact for every stored dtype).
    fn decode_row(&self, row: usize, out: &mut Vec<f32>) {
        let w = self.cols * self.dtype.size_in_bytes();
        decode_to_f32(self.dtype, &self.bytes[row * w..(row + 1) * w], out);
    }
}

/// Output bytes computed before they are written (per worker); bounds memory for huge tensors.
const CHUNK_BYTES: usize = 4 << 20;

/// Computes one output tensor row by row and writes it in chunks of whole rows.
fn write_tensor(src: &Checkpoint, rule: &TensorRule, sources: Vec<SourceBytes>, spec: &TensorSpec, out: &Output) -> Result<(), ScaleUpError> {
    let row_bytes = rule.cols.len() * spec.dtype.size_in_bytes();
    let rows_per_chunk = (CHUNK_BYTES / row_bytes.max(1)).max(1);
    let mut chunk: Vec<u8> = Vec::with_capacity((rows_per_chunk * row_bytes).min(spec.byte_len() as usize));
    let mut offset = 0u64;
    // An empty piece completes only an empty tensor (formats ignores it otherwise).
    let mut flush = |chunk: &mut Vec<u8>| -> Result<(), ScaleUpError> {
        out.write_part(&spec.name, offset, chunk)?;
        offset += chunk.len() as u64;
        chunk.clear();
        Ok(())
    };
    if writes_zeros(rule) {
        let zero_row = vec![0f32; rule.cols.len()];
        for _ in 0..rule.rows.len() {
            encode_append(spec.dtype, &zero_row, &mut chunk);
            if chunk.len() + row_bytes > chunk.capacity() {
                flush(&mut chunk)?;
            }
        }
        return flush(&mut chunk);
    }
    let srcs = sources.into_iter().map(|s| Src::mapped(src, s)).collect::<Result<Vec<_>, _>>()?;
    let mut failed = None;
    run_rule(rule, &srcs, |row, _: &mut Vec<u8>| {
        if failed.is_some() {
            return;
        }
        encode_append(spec.dtype, row, &mut chunk);
        if chunk.len() + row_bytes > chunk.capacity() {
            if let Err(e) = flush(&mut chunk) {
                failed = Some(e);
            }
        }
    }, 0);
    drop(srcs); // releases the sources' pages before the last write
    match failed {
        Some(e) => Err(e),
        None => flush(&mut chunk),
    }
}

fn encode_append(dtype: DType, row: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + row.len() * dtype.size_in_bytes(), 0);
    let dst = &mut out[start..];
    match dtype {
        DType::F32 => dst.chunks_exact_mut(4).zip(row).for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
        DType::BF16 => dst.chunks_exact_mut(2).zip(row).for_each(|(d, v)| d.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        DType::F16 => dst.chunks_exact_mut(2).zip(row).for_each(|(d, v)| d.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
    }
}

/// Runs a rule over its sources, handing each finished f32 row to `emit`. Each source row is
/// decoded once per output row that needs it (consecutive repeats are reused).
fn run_rule<T>(rule: &TensorRule, srcs: &[Src], mut emit: impl FnMut(&[f32], &mut T), capacity: usize) -> T
where
    T: WithCapacity,
{
    let mut acc = T::with_capacity(capacity);
    let mut bufs: Vec<Vec<f32>> = vec![Vec::new(); srcs.len()];
    let mut loaded: Vec<Option<usize>> = vec![None; srcs.len()];
    let overrides = rule.override_tensors();
    let mut row_out = vec![0f32; rule.cols.len()];
    for (r, sel) in rule.rows.iter().enumerate() {
        for k in std::iter::once(sel.tensor).chain(overrides.iter().copied()) {
            let k = k as usize;
            if loaded[k] != Some(sel.src_row) {
                srcs[k].decode_row(sel.src_row, &mut bufs[k]);
                loaded[k] = Some(sel.src_row);
            }
        }
        gather_row(rule, r, &bufs, &mut row_out);
        emit(&row_out, &mut acc);
    }
    acc
}

/// Output containers of [`run_rule`].
trait WithCapacity {
    fn with_capacity(n: usize) -> Self;
}

impl<T> WithCapacity for Vec<T> {
    fn with_capacity(n: usize) -> Self {
        Vec::with_capacity(n)
    }
}

/// Output row `r` of a rule from the decoded source rows (`bufs[k]` = the row of source `k`).
fn gather_row(rule: &TensorRule, r: usize, bufs: &[Vec<f32>], out: &mut [f32]) {
    let sel = rule.rows[r];
    if rule.cols.iter().all(|c| c.tensor.is_none()) {
        let src = &bufs[sel.tensor as usize];
        for (o, c) in out.iter_mut().zip(&rule.cols) {
            *o = sel.scale * c.scale * src[c.src_col];
        }
    } else {
        for (o, c) in out.iter_mut().zip(&rule.cols) {
            *o = sel.scale * c.scale * bufs[c.tensor.unwrap_or(sel.tensor) as usize][c.src_col];
        }
    }
    if let Some(noise) = rule.noise {
        add_lemon_noise(rule, r, noise.std, noise.seed, out);
    }
}

/// LEMON (spec §2.5): per row, Gaussian noise that sums to zero over each group of copies, so
/// the copies differ but their total (what the next layer sees) is unchanged. Seeded per row, so
/// the result does not depend on the order rows or tensors are processed in.
fn add_lemon_noise(rule: &TensorRule, r: usize, std: f32, seed: u64, out: &mut [f32]) {
    let mut rng = StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(r as u64)));
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
    if rule.zero {
        return vec![0f32; rule.rows.len() * rule.cols.len()];
    }
    let raw: Vec<Vec<u8>> = sources.iter().map(|s| s.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let srcs: Vec<Src> = raw.iter().zip(src_cols).map(|(b, &cols)| Src { dtype: DType::F32, bytes: b, cols, _mapped: None }).collect();
    run_rule(rule, &srcs, |row, out: &mut Vec<f32>| out.extend_from_slice(row), rule.rows.len() * rule.cols.len())
}
