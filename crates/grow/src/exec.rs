//! The one streaming executor both growths run on: reader -> transform -> writer.
//!
//! An engine describes its work as a list of [`Job`]s (which source tensors a job reads, which
//! output tensors it writes, how many bytes it holds at once) and one transform that, given a
//! job's mapped sources, writes its outputs through an [`Output`] handle. [`stream`] owns
//! everything around that:
//!
//! * the writer's lifetime: [`CheckpointWriter`] created with every output declared up front (in
//!   job order, so each job fills one contiguous region and the disk sees long sequential writes),
//!   the growth manifest staged next to the weights, the folder published only once every job
//!   succeeded (on any error the staging folder is removed); an output on, around or inside the
//!   source refused first, and the output locked against a second writer for the whole run;
//! * sources mapped zero-copy from the checkpoint, read ahead when a job starts and released from
//!   the resident set when it ends, so memory stays at the jobs in flight, not the input size;
//! * a worker pool taking jobs in order (near-sequential reads), each job first waiting for its
//!   bytes to fit the memory budget;
//! * progress over output bytes, and cancellation: the first error stops the other workers from
//!   taking jobs and is the one returned.
//!
//! Scale-Up has one job per output tensor (computed row by row, written in chunks straight to its
//! final offset); Scale-Out has one job per dense tensor (copied to every expert made from it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use escale_formats::{Checkpoint, CheckpointWriter, FormatError, ModelConfig, TensorInfo, TensorSpec, WriterOptions};
use escale_util::pages;

use crate::GrowthManifest;

/// Progress callback: `(output bytes done, output bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// One unit of work of a growth.
pub(crate) struct Job<W> {
    /// Source tensors the job reads, mapped in this order for the transform.
    pub sources: Vec<String>,
    /// Output tensors the job writes, each completely.
    pub outputs: Vec<TensorSpec>,
    /// Bytes the job holds at once (mapped sources plus output buffers), for the memory budget.
    pub cost: u64,
    /// What the engine's transform needs besides the sources (a rule, planned tensors).
    pub work: W,
}

/// How many workers run jobs and how much memory they may hold.
pub(crate) struct Workers {
    /// Worker threads; `None` picks [`Workload::default_threads`].
    pub threads: Option<usize>,
    pub load: Workload,
    /// Most job bytes in flight at once; `None` bounds memory by the worker count alone.
    pub memory_budget: Option<u64>,
    /// Threads are named `escale-NAME-i`.
    pub name: &'static str,
}

/// What bounds a growth's speed, which decides its default worker count.
#[derive(Clone, Copy)]
pub(crate) enum Workload {
    /// Arithmetic on every element: one worker per core of rayon's global pool (which honours
    /// `RAYON_NUM_THREADS`, as set by `escale_model::set_threads`).
    Compute,
    /// Mostly byte copies: a few more workers than cores keep several reads and writes in
    /// flight, and each holds at most one source tensor, so memory stays small.
    Copy,
}

impl Workload {
    fn default_threads(self) -> usize {
        match self {
            Workload::Compute => rayon::current_num_threads(),
            Workload::Copy => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4).clamp(4, 8),
        }
    }
}

/// Where and what a growth writes besides its tensors.
pub(crate) struct Destination<'a> {
    pub out_dir: &'a Path,
    pub options: &'a WriterOptions,
    /// The output `config.json`.
    pub config: &'a ModelConfig,
    pub manifest: GrowthManifest,
}

/// An engine's error type: format errors pass through, a worker pool that cannot start is
/// reported the engine's way.
pub(crate) trait StreamError: From<FormatError> + Send {
    fn workers(source_dir: &Path, message: String) -> Self;
}

/// What [`stream`] did.
pub(crate) struct Streamed {
    /// The published output folder.
    pub out_dir: PathBuf,
    /// Source bytes mapped by jobs (a tensor read by two jobs counts twice).
    pub bytes_read: u64,
    /// Tensor bytes written.
    pub bytes_written: u64,
    /// When the last job finished (before the final fsync and publish).
    pub jobs_done: Instant,
}

/// Runs `jobs` from `source` into `dest` with `transform`, then publishes the folder (config,
/// weights, manifest, and the source's tokenizer files). An output that is, contains or lies
/// inside the source is refused before anything is written; on any error nothing is published.
pub(crate) fn stream<'a, W: Sync, E: StreamError>(
    source: &'a Checkpoint,
    dest: Destination<'_>,
    jobs: &[Job<W>],
    workers: &Workers,
    progress: Option<Progress<'_>>,
    transform: impl Fn(&Job<W>, Vec<SourceBytes<'a>>, &Output<'_>) -> Result<(), E> + Sync,
) -> Result<Streamed, E> {
    // Replacing (or writing into) the folder being read would destroy the source mid-read.
    escale_util::output::check_apart(source.dir(), dest.out_dir).map_err(|e| FormatError::io(dest.out_dir, e))?;
    let specs: Vec<TensorSpec> = jobs.iter().flat_map(|j| j.outputs.iter().cloned()).collect();
    let total: u64 = specs.iter().map(TensorSpec::byte_len).sum();
    let writer = CheckpointWriter::create(dest.out_dir, specs, dest.options)?;
    dest.manifest.write(writer.staging_dir())?;
    let written = ProgressCounter::new(total, progress);
    let read = AtomicU64::new(0);
    let output = Output { writer: &writer, written: &written };
    run_jobs(source.dir(), jobs, workers, |job| {
        // Between two tensors is a safe point: the writer's staging folder is removed on the
        // error, and nothing was published.
        if escale_util::stop::requested() {
            let why = std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted before every tensor was written; nothing was published");
            return Err(FormatError::io(dest.out_dir, why).into());
        }
        let mapped = job.sources.iter().map(|name| SourceBytes::map(source, name)).collect::<Result<Vec<_>, _>>()?;
        read.fetch_add(mapped.iter().map(|s| s.bytes().len() as u64).sum(), Ordering::Relaxed);
        transform(job, mapped, &output)
    })?;
    let jobs_done = Instant::now();
    let out_dir = writer.finish(dest.config, Some(source.dir()))?;
    Ok(Streamed { out_dir, bytes_read: read.into_inner(), bytes_written: total, jobs_done })
}

/// Runs every job on a pool of workers that take them in order; the first error stops the
/// others from starting new jobs and is returned.
fn run_jobs<W: Sync, E: StreamError>(
    source_dir: &Path,
    jobs: &[Job<W>],
    workers: &Workers,
    run_one: impl Fn(&Job<W>) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let threads = workers.threads.unwrap_or_else(|| workers.load.default_threads()).max(1);
    let pool = worker_pool(threads, workers.name).map_err(|message| E::workers(source_dir, message))?;
    let budget = ByteBudget::new(workers.memory_budget.unwrap_or(u64::MAX).max(1));
    let next = AtomicUsize::new(0);
    let cancelled = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    pool.scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|_| {
                while !cancelled.load(Ordering::Relaxed) {
                    let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    let _permit = budget.acquire(job.cost);
                    if let Err(e) = run_one(job) {
                        cancelled.store(true, Ordering::Relaxed);
                        first_error.lock().expect("error slot").get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().expect("error slot") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A pool of `threads` workers named `escale-NAME-i`; the error says why it could not be built.
fn worker_pool(threads: usize, name: &'static str) -> Result<rayon::ThreadPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("escale-{name}-{i}"))
        .build()
        .map_err(|e| format!("thread pool: {e}"))
}

/// The transform's way to the output: whole tensors or row chunks at their final offsets, each
/// write counted in the progress.
pub(crate) struct Output<'w> {
    writer: &'w CheckpointWriter,
    written: &'w ProgressCounter<'w>,
}

impl Output<'_> {
    /// Writes tensor `name` whole.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> Result<(), FormatError> {
        self.writer.write_bytes(name, bytes)?;
        self.written.add(bytes.len() as u64);
        Ok(())
    }

    /// Writes `bytes` of tensor `name` at `offset`; the tensor is complete once every byte is
    /// written (an empty piece completes only an empty tensor).
    pub(crate) fn write_part(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        self.writer.write_part(name, offset, bytes)?;
        self.written.add(bytes.len() as u64);
        Ok(())
    }
}

/// Output bytes written so far, reported to the caller's callback after every write.
pub(crate) struct ProgressCounter<'a> {
    done: AtomicU64,
    total: u64,
    callback: Option<Progress<'a>>,
}

impl<'a> ProgressCounter<'a> {
    fn new(total: u64, callback: Option<Progress<'a>>) -> Self {
        ProgressCounter { done: AtomicU64::new(0), total, callback }
    }

    fn add(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(callback) = self.callback {
            callback(done, self.total);
        }
    }
}

/// A source tensor's bytes in the checkpoint's memory map. Taking it asks the kernel to read
/// ahead; dropping it releases its pages from this process's resident set (they stay in the page
/// cache), so memory stays at the tensors in flight rather than the size of the input.
pub(crate) struct SourceBytes<'a> {
    info: &'a TensorInfo,
    bytes: &'a [u8],
}

impl<'a> SourceBytes<'a> {
    fn map(ckpt: &'a Checkpoint, name: &str) -> Result<Self, FormatError> {
        let info = ckpt.info(name).ok_or_else(|| FormatError::tensor(ckpt.dir(), name, "not found in the source checkpoint"))?;
        let bytes = ckpt.bytes(name)?;
        pages::will_need(bytes);
        Ok(SourceBytes { info, bytes })
    }

    pub(crate) fn info(&self) -> &'a TensorInfo {
        self.info
    }

    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl Drop for SourceBytes<'_> {
    fn drop(&mut self) {
        // The slice is part of the checkpoint's read-only file mapping, as `done_with` requires.
        pages::done_with(self.bytes);
    }
}

/// Bounds the job bytes held at once by the workers.
struct ByteBudget {
    cap: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// A job's share of the budget, given back when dropped.
struct Permit<'a> {
    budget: &'a ByteBudget,
    n: u64,
}

impl ByteBudget {
    fn new(cap: u64) -> Self {
        ByteBudget { cap, used: Mutex::new(0), freed: Condvar::new() }
    }

    /// Waits until `n` bytes fit (a job larger than the whole budget waits to run alone).
    fn acquire(&self, n: u64) -> Permit<'_> {
        let n = n.min(self.cap);
        let mut used = self.used.lock().expect("budget lock");
        while *used > 0 && used.saturating_add(n) > self.cap {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Failed(usize);

    impl From<FormatError> for Failed {
        fn from(_: FormatError) -> Self {
            Failed(usize::MAX)
        }
    }

    impl StreamError for Failed {
        fn workers(_: &Path, _: String) -> Self {
            Failed(usize::MAX)
        }
    }

    fn jobs(n: usize, cost: u64) -> Vec<Job<usize>> {
        (0..n).map(|i| Job { sources: Vec::new(), outputs: Vec::new(), cost, work: i }).collect()
    }

    fn workers(threads: usize, memory_budget: Option<u64>) -> Workers {
        Workers { threads: Some(threads), load: Workload::Copy, memory_budget, name: "test" }
    }

    #[test]
    fn the_first_error_is_returned_and_stops_the_other_workers() {
        let started = AtomicUsize::new(0);
        let result = run_jobs(Path::new("src"), &jobs(1000, 0), &workers(3, None), |job| {
            started.fetch_add(1, Ordering::Relaxed);
            if job.work == 5 {
                return Err(Failed(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(())
        });
        assert_eq!(result, Err(Failed(5)));
        assert!(started.load(Ordering::Relaxed) < 1000, "workers kept taking jobs after the error");
    }

    #[test]
    fn jobs_run_together_only_while_their_bytes_fit_the_budget() {
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        run_jobs::<usize, Failed>(Path::new("src"), &jobs(40, 6), &workers(4, Some(12)), |_| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(1));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(most.load(Ordering::SeqCst) <= 2, "{} jobs of 6 bytes ran under a 12-byte budget", most.load(Ordering::SeqCst));
    }
}
