//! Signals: a closed pipe never kills a command, and SIGINT/SIGTERM stop a training run at the end
//! of its current step with a checkpoint instead of losing everything since the last one.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first SIGINT/SIGTERM: `escale_util::stop`'s flag, which the trainer polls once per
/// step (`train_until`), growths between tensors and tokenizing between batches.
pub static STOP: &AtomicBool = escale_util::stop::flag();

/// Exit status of an interrupted run: 128 + SIGINT, as shells report a Ctrl-C.
pub const INTERRUPTED_EXIT: i32 = 130;

/// SIGPIPE is ignored, so writing to a closed pipe is an EPIPE error (which `out!`/`err!` drop)
/// rather than a silent death. The Rust runtime already does this; it is said here explicitly
/// because every command relies on it.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Installs the SIGINT/SIGTERM handler of commands that train: the first signal sets [`STOP`],
/// a second one aborts at once.
pub fn stop_on_interrupt() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only does async-signal-safe work (an atomic swap, write, _exit);
        // the sigaction struct is zeroed and then filled in completely.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // The second signal: the user does not want to wait for the step to finish.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) }
    }
    let note = b"\ninterrupted: stopping at the next safe point (training: after this step, with a checkpoint); signal again to abort\n";
    // SAFETY: write(2) is async-signal-safe; a failed write (closed stderr) is ignored.
    unsafe {
        libc::write(libc::STDERR_FILENO, note.as_ptr().cast(), note.len());
    }
}

/// True once a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
