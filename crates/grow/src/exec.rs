//! The streaming machinery both growth executors share: source tensors read zero-copy from the
//! checkpoint's memory map (read ahead when taken, released from the resident set after their
//! last use), a progress callback over output bytes, and named worker pools.
//!
//! Each engine keeps its own schedule on top, because their work differs: Scale-Up computes
//! every output row from gathered source rows (parallel over output tensors under a byte
//! budget, written in chunks of whole rows), Scale-Out copies each dense tensor to all the
//! experts made from it (workers take source tensors in file order, byte-range copies where
//! possible).

use std::sync::atomic::{AtomicU64, Ordering};

use escale_formats::{Checkpoint, FormatError};
use escale_util::pages;

/// Progress callback: `(output bytes done, output bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Output bytes written so far, reported to the caller's callback after every write.
pub(crate) struct ProgressCounter<'a> {
    done: AtomicU64,
    total: u64,
    callback: Option<Progress<'a>>,
}

impl<'a> ProgressCounter<'a> {
    pub(crate) fn new(total: u64, callback: Option<Progress<'a>>) -> Self {
        ProgressCounter { done: AtomicU64::new(0), total, callback }
    }

    pub(crate) fn add(&self, bytes: u64) {
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
    bytes: &'a [u8],
}

impl<'a> SourceBytes<'a> {
    pub(crate) fn map(ckpt: &'a Checkpoint, name: &str) -> Result<Self, FormatError> {
        let bytes = ckpt.bytes(name)?;
        pages::will_need(bytes);
        Ok(SourceBytes { bytes })
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

/// A pool of `threads` workers named `escale-NAME-i`; the error says why it could not be built.
pub(crate) fn worker_pool(threads: usize, name: &'static str) -> Result<rayon::ThreadPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(move |i| format!("escale-{name}-{i}"))
        .build()
        .map_err(|e| format!("thread pool: {e}"))
}
