//! The process-wide request to stop long work early (SIGINT/SIGTERM in the CLI).
//!
//! Long loops poll it at points where stopping loses nothing: the trainer at the end of a step
//! (with a checkpoint), a growth between two tensors, tokenizing between two batches. What they
//! leave is never a half output under its final name: their staging is removed (or, after a kill,
//! cleaned by the next run), so the same command run again continues or redoes the work.
//! One flag for the process, because a signal is one too.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The flag itself, for code that takes an `&AtomicBool` (the trainer) and for signal handlers
/// (an atomic swap is async-signal-safe).
pub const fn flag() -> &'static AtomicBool {
    &STOP
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
