//! Scale-Out on the crate's streaming executor.
//!
//! Work is grouped by *source* tensor: a job maps one dense tensor, writes every output derived
//! from it (all experts, the shared expert), then releases its pages. Jobs are taken in file order
//! by a fixed number of workers, so reads are near-sequential and at most `threads` source tensors
//! (plus, for transformed ones, one output tensor each) are in memory at any time. Outputs are laid
//! out in job order, so each job fills one contiguous region (safetensors readers look tensors up
//! by name; the order inside a file carries no meaning).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use escale_formats::dtype::{decode_to_f32, encode_from_f32};
use escale_formats::writer::{check_output, TensorSpec};
use escale_formats::{Checkpoint, DType, FormatError, MlpPart, Param, WriterOptions};

use super::init::{add_noise, drop_neurons, normal_value, rng_for, router_weights, RouterSpec, Stream};
use super::manifest::ScaleOutManifest;
use super::plan::{PlannedTensor, ScaleOutPlan, TensorRule};
use super::{Result, ScaleOutError, ScaleOutOptions};
use crate::exec::{stream, Destination, Job, Output, SourceBytes, StreamError, Workers, Workload};
use crate::GrowthManifest;

/// What a finished scale-out did.
#[derive(Clone, Debug)]
pub struct UpcycleReport {
    pub plan: ScaleOutPlan,
    pub output: PathBuf,
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes_written: u64,
    /// Size of the source weights on disk.
    pub bytes_read: u64,
    /// Wall time of the whole scale-out.
    pub seconds: f64,
    /// Of which: writing tensor data (before the final fsync and rename).
    pub copy_seconds: f64,
}

/// What a job writes: the planned tensors made from its source (or one standalone tensor).
type Planned<'p> = Vec<&'p PlannedTensor>;

/// What the transform needs besides the mapped source.
struct Run<'a> {
    plan: &'a ScaleOutPlan,
    router: RouterSpec,
}

/// Upcycles the dense model in `source_dir` into `out_dir`: [`ScaleOutPlan::new`] on its config,
/// then [`execute`].
///
/// Nothing is written unless the options are valid for this source; on any error the partial
/// output is removed. `progress(done, total)` is called with tensor bytes written so far.
pub fn upcycle(
    source_dir: &Path,
    out_dir: &Path,
    options: &ScaleOutOptions,
    writer_options: &WriterOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<UpcycleReport> {
    let ckpt = Checkpoint::open(source_dir)?;
    let plan = ScaleOutPlan::new(&ckpt.config, options)?;
    execute(plan, &ckpt, out_dir, writer_options, progress)
}

/// Runs `plan` on the opened dense checkpoint `ckpt` (the one whose config it was made from),
/// writing a complete MoE folder with its manifest to `out_dir`. On any error the partial output
/// is removed.
pub fn execute(
    plan: ScaleOutPlan,
    ckpt: &Checkpoint,
    out_dir: &Path,
    writer_options: &WriterOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<UpcycleReport> {
    let started = Instant::now();
    let source_dir = ckpt.dir();
    check_source_matches(&plan, ckpt)?;
    check_not_source(source_dir, out_dir)?;
    check_output(out_dir, writer_options.force)?;
    let jobs = make_jobs(typed_outputs(&plan, ckpt)?);
    let dest = Destination {
        out_dir,
        options: writer_options,
        config: &plan.config,
        manifest: GrowthManifest::ScaleOut(Box::new(ScaleOutManifest::new(&plan, source_dir))),
    };
    let workers = Workers { threads: plan.options.threads, load: Workload::Copy, memory_budget: None, name: "scale-out" };
    let run = Run { plan: &plan, router: router_spec(&plan) };
    let streamed = stream(ckpt, dest, &jobs, &workers, Some(progress), |job, sources, out| run_job(&run, job, sources, out))?;
    let tensors = plan.tensors.len();
    Ok(UpcycleReport {
        plan,
        output: streamed.out_dir,
        tensors,
        bytes_written: streamed.bytes_written,
        bytes_read: ckpt.file_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        copy_seconds: (streamed.jobs_done - started).as_secs_f64(),
    })
}

fn router_spec(plan: &ScaleOutPlan) -> RouterSpec {
    let o = &plan.options;
    RouterSpec {
        init: o.router_init,
        std: o.router_std,
        seed: o.seed,
        experts: o.experts,
        granularity: o.granularity,
        hidden: plan.config.hidden_size,
    }
}

impl StreamError for ScaleOutError {
    fn workers(source_dir: &Path, message: String) -> Self {
        ScaleOutError::Source { path: source_dir.to_path_buf(), message }
    }
}

/// Every planned tensor with its output dtype: `--dtype`, else its source's dtype (the
/// embedding's for tensors made from no source).
fn typed_outputs<'p>(plan: &'p ScaleOutPlan, ckpt: &Checkpoint) -> Result<Vec<(&'p PlannedTensor, DType)>> {
    let model_dtype = match plan.options.dtype {
        Some(d) => d,
        None => tensor_dtype(ckpt, &ckpt.name_of(Param::Embed))?,
    };
    let mut typed = Vec::with_capacity(plan.tensors.len());
    for t in &plan.tensors {
        let dtype = match (source_of(t), plan.options.dtype) {
            (_, Some(d)) => d,
            (Some(source), None) => tensor_dtype(ckpt, source)?,
            (None, None) => model_dtype,
        };
        typed.push((t, dtype));
    }
    Ok(typed)
}

/// The dense tensor an output is made from; `None` for routers and zeros.
fn source_of(t: &PlannedTensor) -> Option<&String> {
    match &t.rule {
        TensorRule::Copy { source } | TensorRule::Expert { source, .. } | TensorRule::Shared { source, .. } => Some(source),
        TensorRule::Router { .. } | TensorRule::Zeros => None,
    }
}

/// A plan made from one config must not be run on a checkpoint of another.
fn check_source_matches(plan: &ScaleOutPlan, ckpt: &Checkpoint) -> Result<()> {
    let c = &ckpt.config;
    let same = plan.source_type == c.model_type
        && plan.dense_ffn == c.intermediate_size
        && plan.config.hidden_size == c.hidden_size
        && plan.config.num_hidden_layers == c.num_hidden_layers
        && plan.config.vocab_size == c.vocab_size;
    if !same {
        return Err(ScaleOutError::Source {
            path: ckpt.dir().to_path_buf(),
            message: "the checkpoint's config differs from the one the plan was made for".into(),
        });
    }
    Ok(())
}

fn tensor_dtype(ckpt: &Checkpoint, name: &str) -> Result<DType> {
    ckpt.info(name)
        .map(|i| i.dtype)
        .ok_or_else(|| FormatError::tensor(ckpt.dir(), name, "not found in the source checkpoint").into())
}

/// Replacing the source folder while it is memory-mapped would corrupt the copy.
fn check_not_source(source_dir: &Path, out_dir: &Path) -> Result<()> {
    let (Ok(a), Ok(b)) = (source_dir.canonicalize(), out_dir.canonicalize()) else { return Ok(()) };
    if a == b {
        return Err(ScaleOutError::Source {
            path: out_dir.to_path_buf(),
            message: "the output folder is the source folder; write the MoE model somewhere else".into(),
        });
    }
    Ok(())
}

/// Groups outputs by source tensor; standalone outputs (routers, zeros) are jobs of their own.
/// Jobs keep the plan's (state_dict) order of their first output, which for HF checkpoints is
/// also close to the source file order, so reads stay near-sequential. A job holds one source
/// tensor at a time, so the worker count alone bounds memory (no byte cost).
fn make_jobs(typed: Vec<(&PlannedTensor, DType)>) -> Vec<Job<Planned<'_>>> {
    let mut by_source: HashMap<String, usize> = HashMap::new();
    let mut jobs: Vec<Job<Planned>> = Vec::new();
    for (t, dtype) in typed {
        let spec = TensorSpec::new(t.name.clone(), dtype, t.shape.clone());
        let Some(source) = source_of(t) else {
            jobs.push(Job { sources: Vec::new(), outputs: vec![spec], cost: 0, work: vec![t] });
            continue;
        };
        let i = *by_source.entry(source.clone()).or_insert_with(|| {
            jobs.push(Job { sources: vec![source.clone()], outputs: Vec::new(), cost: 0, work: Vec::new() });
            jobs.len() - 1
        });
        jobs[i].outputs.push(spec);
        jobs[i].work.push(t);
    }
    jobs
}

/// Writes a job's outputs: a standalone tensor, or every output derived from its dense source.
fn run_job(run: &Run, job: &Job<Planned>, sources: Vec<SourceBytes>, out: &Output) -> Result<()> {
    let outputs: Vec<(&PlannedTensor, DType)> = job.work.iter().copied().zip(job.outputs.iter().map(|s| s.dtype)).collect();
    let Some(mapped) = sources.first() else {
        let (t, dtype) = outputs[0];
        return Ok(out.write(&t.name, &standalone_bytes(run, t, dtype))?);
    };
    let info = mapped.info();
    let dense = Dense { name: &info.name, dtype: info.dtype, shape: &info.shape, bytes: mapped.bytes() };
    write_derived(run, &dense, &outputs, out)
}

fn standalone_bytes(run: &Run, t: &PlannedTensor, dtype: DType) -> Vec<u8> {
    match t.rule {
        TensorRule::Router { layer } => encode(dtype, &router_weights(&run.router, layer)),
        // All-zero bits are +0.0 in every float dtype.
        _ => vec![0u8; t.shape.iter().product::<usize>() * dtype.size_in_bytes()],
    }
}

/// A source tensor as mapped.
struct Dense<'a> {
    name: &'a str,
    dtype: DType,
    shape: &'a [usize],
    bytes: &'a [u8],
}

impl Dense<'_> {
    fn rows(&self) -> usize {
        self.shape[0]
    }
    fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
    fn elem(&self) -> usize {
        self.dtype.size_in_bytes()
    }

    /// Bytes of rows `[r0, r1)` (row-major, so contiguous).
    fn row_bytes(&self, r0: usize, r1: usize) -> &[u8] {
        let row = self.cols() * self.elem();
        &self.bytes[r0 * row..r1 * row]
    }

    /// Rows `[r0, r1)` decoded to f32.
    fn rows_f32(&self, r0: usize, r1: usize) -> Vec<f32> {
        let mut out = Vec::new();
        decode_to_f32(self.dtype, self.row_bytes(r0, r1), &mut out);
        out
    }

    /// Columns `[c0, c1)` of every row, times `scale`, appended row by row into `out`, which
    /// holds `out_cols` values per row (so several column blocks can be interleaved).
    fn cols_f32_into(&self, c0: usize, c1: usize, scale: f32, out: &mut [f32], out_col0: usize, out_cols: usize) {
        let (cols, elem) = (self.cols(), self.elem());
        let mut scratch = Vec::with_capacity(c1 - c0);
        for r in 0..self.rows() {
            let at = (r * cols + c0) * elem;
            decode_to_f32(self.dtype, &self.bytes[at..at + (c1 - c0) * elem], &mut scratch);
            let dst = &mut out[r * out_cols + out_col0..r * out_cols + out_col0 + (c1 - c0)];
            for (d, s) in dst.iter_mut().zip(&scratch) {
                *d = s * scale;
            }
        }
    }

    /// Mean and standard deviation of the whole matrix (Drop-Upcycling's re-init distribution),
    /// decoded in chunks so no full f32 copy is made.
    fn mean_std(&self) -> (f64, f64) {
        let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
        let mut scratch = Vec::new();
        for chunk in self.bytes.chunks(1 << 20) {
            decode_to_f32(self.dtype, chunk, &mut scratch);
            for &v in &scratch {
                sum += v as f64;
                sq += (v as f64) * (v as f64);
            }
            n += scratch.len() as f64;
        }
        let mean = sum / n.max(1.0);
        (mean, (sq / n.max(1.0) - mean * mean).max(0.0).sqrt())
    }
}

fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_from_f32(dtype, values, &mut out);
    out
}

/// Same bytes in another dtype (decoded and re-encoded once).
fn convert<'b>(from: DType, to: DType, bytes: &'b [u8]) -> Cow<'b, [u8]> {
    if from == to {
        return Cow::Borrowed(bytes);
    }
    let mut values = Vec::new();
    decode_to_f32(from, bytes, &mut values);
    Cow::Owned(encode(to, &values))
}

/// Writes every output derived from one dense tensor.
fn write_derived(run: &Run, dense: &Dense, outputs: &[(&PlannedTensor, DType)], out: &Output) -> Result<()> {
    let o = &run.plan.options;
    let per_expert_random = o.noise > 0.0 || o.drop_ratio > 0.0;
    let stats = if o.drop_ratio > 0.0 { Some(dense.mean_std()) } else { None };
    // Without per-expert randomness, experts holding the same shard are identical: build each
    // distinct shard once and write it to all of them.
    let mut shard_cache: HashMap<(usize, DType), Vec<u8>> = HashMap::new();
    for &(t, dtype) in outputs {
        match &t.rule {
            TensorRule::Copy { .. } => out.write(&t.name, &convert(dense.dtype, dtype, dense.bytes))?,
            TensorRule::Expert { layer, expert, part, shard, .. } => {
                let e = ExpertTarget { layer: *layer, expert: *expert, part: *part, shard: *shard, dtype };
                if let Some(bytes) = expert_byte_slice(run.plan, dense, &e) {
                    out.write(&t.name, bytes)?;
                } else if per_expert_random {
                    out.write(&t.name, &expert_transformed(run.plan, dense, &e, stats))?;
                } else {
                    let bytes = shard_cache
                        .entry((e.shard, dtype))
                        .or_insert_with(|| expert_transformed(run.plan, dense, &e, None));
                    out.write(&t.name, bytes)?;
                }
            }
            TensorRule::Shared { part, .. } => out.write(&t.name, &shared_bytes(run.plan, dense, *part, dtype))?,
            TensorRule::Router { .. } | TensorRule::Zeros => {
                unreachable!("standalone tensor {} grouped under source {}", t.name, dense.name)
            }
        }
    }
    Ok(())
}

/// One routed expert tensor to produce.
struct ExpertTarget {
    layer: usize,
    expert: usize,
    part: MlpPart,
    shard: usize,
    dtype: DType,
}

/// The zero-copy case: an unscaled, un-noised expert in the source dtype is a byte range of the
/// dense tensor (the whole tensor, or a contiguous block of gate/up rows).
fn expert_byte_slice<'a>(plan: &ScaleOutPlan, dense: &Dense<'a>, e: &ExpertTarget) -> Option<&'a [u8]> {
    let o = &plan.options;
    if e.dtype != dense.dtype || o.noise > 0.0 || o.drop_ratio > 0.0 {
        return None;
    }
    let ie = plan.expert_ffn;
    match e.part {
        MlpPart::Gate | MlpPart::Up => {
            let row = dense.cols() * dense.elem();
            Some(&dense.bytes[e.shard * ie * row..(e.shard + 1) * ie * row])
        }
        MlpPart::Down if o.granularity == 1 && plan.routed_down_scale == 1.0 => Some(dense.bytes),
        _ => None,
    }
}

/// An expert tensor that needs arithmetic: shard extraction with scaling, drop-upcycling, noise,
/// dtype conversion. Computed in f32 and rounded once.
fn expert_transformed(plan: &ScaleOutPlan, dense: &Dense, e: &ExpertTarget, stats: Option<(f64, f64)>) -> Vec<u8> {
    let o = &plan.options;
    let ie = plan.expert_ffn;
    let (s0, s1) = (e.shard * ie, (e.shard + 1) * ie);
    let mut values = match e.part {
        MlpPart::Down => {
            let mut v = vec![0f32; dense.rows() * ie];
            dense.cols_f32_into(s0, s1, plan.routed_down_scale as f32, &mut v, 0, ie);
            v
        }
        _ => dense.rows_f32(s0, s1),
    };
    let part_id = e.part as usize;
    if let Some((mean, std)) = stats {
        let dropped = drop_neurons(o.seed, e.layer, e.expert, ie, o.drop_ratio);
        let mut rng = rng_for(o.seed, Stream::DropValues, e.layer, e.expert, part_id);
        let width = if e.part == MlpPart::Down { ie } else { dense.cols() };
        for &n in &dropped {
            if e.part == MlpPart::Down {
                // Column n of every row.
                for r in 0..dense.rows() {
                    values[r * width + n] = normal_value(mean, std, &mut rng);
                }
            } else {
                for v in &mut values[n * width..(n + 1) * width] {
                    *v = normal_value(mean, std, &mut rng);
                }
            }
        }
    }
    if o.noise > 0.0 {
        let mut rng = rng_for(o.seed, Stream::Noise, e.layer, e.expert, part_id);
        add_noise(&mut values, o.noise, &mut rng);
    }
    encode(e.dtype, &values)
}

/// A live shared expert tensor: the dense shards listed by the plan, concatenated (gate/up rows,
/// down columns), with each down block divided by its shard's copy count.
fn shared_bytes(plan: &ScaleOutPlan, dense: &Dense, part: MlpPart, dtype: DType) -> Vec<u8> {
    let ie = plan.expert_ffn;
    let blocks = plan.shared_shard_scales();
    match part {
        MlpPart::Down => {
            let width = blocks.len() * ie;
            let mut v = vec![0f32; dense.rows() * width];
            for (j, &(s, scale)) in blocks.iter().enumerate() {
                dense.cols_f32_into(s * ie, (s + 1) * ie, scale as f32, &mut v, j * ie, width);
            }
            encode(dtype, &v)
        }
        _ => {
            let mut out = Vec::new();
            for &(s, _) in &blocks {
                out.extend_from_slice(&convert(dense.dtype, dtype, dense.row_bytes(s * ie, (s + 1) * ie)));
            }
            out
        }
    }
}
