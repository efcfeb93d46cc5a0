//! Page-cache hints for memory-mapped source tensors.
//!
//! Reading a tensor through an mmap faults its pages into this process, and they stay counted in
//! its resident set until unmapped. Growth reads every byte of the source once, so without a hint
//! the RSS would grow to the size of the whole input. After a tensor's last use we tell the kernel
//! we no longer need those pages (they stay in the page cache, only our mapping of them is
//! dropped), and before its first use we ask for read-ahead, so the copy runs at disk speed.

/// The page-aligned span covering `bytes`. A mapping starts on a page boundary and its length is
/// rounded up to whole pages, so rounding a sub-slice outwards stays inside the mapping.
#[cfg(unix)]
fn page_span(bytes: &[u8]) -> Option<(*mut libc::c_void, usize)> {
    if bytes.is_empty() {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    };
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    let len = (start + bytes.len() - aligned).div_ceil(page) * page;
    Some((aligned as *mut libc::c_void, len))
}

/// Asks the kernel to start reading `bytes` (a slice of a file mapping) ahead of use.
pub fn will_need(bytes: &[u8]) {
    #[cfg(unix)]
    if let Some((ptr, len)) = page_span(bytes) {
        // SAFETY: the span lies inside a live file mapping (see `page_span`); MADV_WILLNEED only
        // schedules read-ahead and never changes contents. Failure is harmless.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_WILLNEED);
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Drops this process's mapping of `bytes`' pages after their last use.
///
/// Must only be given slices of read-only, file-backed mappings (such as a checkpoint's tensor
/// bytes): for those, MADV_DONTNEED just unmaps the pages, and any later access faults the
/// identical file contents back in. Pages shared with a neighbouring tensor that another thread is
/// still reading are therefore safe to drop too.
pub fn done_with(bytes: &[u8]) {
    #[cfg(unix)]
    if let Some((ptr, len)) = page_span(bytes) {
        // SAFETY: see above; the mapping is read-only and file-backed, so nothing can be lost.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}
