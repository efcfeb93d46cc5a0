//! escale-model: dense and MoE decoder-only LMs (llama, mistral, qwen2, qwen3, mixtral, qwen2_moe,
//! qwen3_moe) on candle, loaded from and saved to HF folders through `escale-formats`, with a forward pass whose
//! every op has a correct gradient (composite candle-core ops or fused kernels with a hand-written,
//! tested backward; see [`ops`]).

#[cfg(feature = "engine")]
pub mod attention;
#[cfg(feature = "engine")]
pub mod choice;
#[cfg(feature = "engine")]
pub mod compare;
#[cfg(feature = "engine")]
pub mod error;
#[cfg(feature = "engine")]
pub mod evaluate;
#[cfg(feature = "engine")]
pub mod fused;
#[cfg(feature = "engine")]
pub mod generate;
#[cfg(feature = "engine")]
pub mod kernels;
#[cfg(feature = "engine")]
pub mod grad;
#[cfg(feature = "engine")]
pub mod head_loss;
#[cfg(feature = "engine")]
pub mod model;
#[cfg(feature = "engine")]
pub mod ops;
pub mod precision;
#[cfg(feature = "engine")]
pub mod rope;
#[cfg(feature = "engine")]
mod simd;
#[cfg(feature = "engine")]
pub mod text;

#[cfg(feature = "engine")]
pub use error::{ModelError, Result};
#[cfg(feature = "engine")]
pub use grad::no_grad;
#[cfg(feature = "engine")]
pub use head_loss::{head_cross_entropy, head_nll_sum, head_token_nll};
#[cfg(feature = "engine")]
pub use model::{ForwardOutput, HiddenOutput, KvCache, Model};
#[cfg(feature = "engine")]
pub use ops::{cross_entropy, next_token_loss, token_nll};
pub use precision::Precision;

/// Process start-up tuning for CPU training and inference: [`tune_allocator`] and
/// [`quiet_idle_workers`]. Call once at start-up, before any tensor work.
pub fn tune_runtime() {
    tune_allocator();
    quiet_idle_workers();
}

/// How long candle's element-wise worker threads spin waiting for the next op before they sleep,
/// unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. candle's default (25,000 pauses, about a
/// millisecond) suits a machine with cores to spare; here its workers share the cores with rayon's
/// (the matmuls and fused kernels), and on 2 cores their spinning cost 13% of the standard
/// training step's throughput (issue 16, interleaved A/B). 500 pauses still bridge the gap between
/// back-to-back element-wise ops. Takes effect when candle first starts its pool, so call it
/// before any tensor work.
pub fn quiet_idle_workers() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Only ever called from the main thread at start-up, before worker threads read the
        // environment.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "500");
    }
}

/// Raises glibc's mmap / trim thresholds so the large tensors a training step frees are reused
/// instead of returned to the OS and page-faulted in again on the next step (measured in
/// docs/cpu-training-notes.md and by `examples/step_timing.rs --malloc`). Call once at start-up,
/// before allocating tensors. A no-op on non-glibc targets.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called with valid constants.
    unsafe {
        // 1 GiB: buffers below this come from the heap, so freed ones are reused. Measured (issue 16) against
        // 64 MiB mmap / 128 MiB trim thresholds on the standard bench config: same peak RSS, 2.3x the system time.
        // The GBs it used to hold came from what was allocated, not from this setting: [tokens, vocab] logits (now
        // never materialised, `head_loss`) and inference graphs that kept every activation (now `no_grad`).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Limits escale's CPU work to `threads` cores (none: all of them). The one place that sets
/// `RAYON_NUM_THREADS`: candle reads it on every call, and rayon's global pool on first use, so
/// call this before any tensor work.
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // Only ever called from the main thread at start-up, before worker threads read the
        // environment.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
