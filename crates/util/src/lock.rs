//! Advisory locks on output folders, so two escale processes never write the same output.
//!
//! The lock of output `DIR/NAME` is the file `DIR/.escale-tmp/NAME.lock` (beside the output, not
//! inside it, because growth outputs are replaced by a rename). It is held with `flock`, which the
//! kernel releases when its holder dies however it dies, so a lock left by a dead process is
//! simply taken over; the file holds the holder's PID so the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::publish;

/// An exclusive lock on one output path, released (and its file removed) when dropped.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    file: File,
}

impl OutputLock {
    /// Locks `output` (which need not exist yet) for this process. A second writer gets an error
    /// of kind `WouldBlock` naming the holder's PID; the caller adds the output's path.
    pub fn acquire(output: &Path) -> io::Result<OutputLock> {
        let path = lock_path(output)?;
        // A holder that releases removes the file; retry when it vanished under us.
        for _ in 0..16 {
            std::fs::create_dir_all(publish::parent_dir(&path))?;
            let mut file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !try_flock(&file)? {
                return Err(held_by_other(&mut file, &path));
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            return Ok(OutputLock { path, file });
        }
        Err(io::Error::other(format!("could not take the lock {} (it kept changing)", path.display())))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still held, so nobody locks a file that is about to disappear unseen.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.set_len(0);
        publish::remove_area_if_empty(publish::parent_dir(&self.path));
    }
}

/// `DIR/.escale-tmp/NAME.lock` for the output's real location (links followed, so every
/// spelling of one folder shares one lock).
pub fn lock_path(output: &Path) -> io::Result<PathBuf> {
    let real = publish::resolve_output(output)?;
    let name = publish::file_name(&real)?;
    Ok(publish::tmp_area(&real).join(format!("{name}.lock")))
}

/// `flock(LOCK_EX | LOCK_NB)`: false when another open file holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid, open file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether the open lock file is still the one at `path` (not removed by a releasing holder).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// The refusal for a lock held elsewhere, naming the holder when its PID is written.
fn held_by_other(file: &mut File, path: &Path) -> io::Error {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let holder = match text.trim().parse::<u32>() {
        Ok(pid) => format!("escale process PID {pid}"),
        Err(_) => "another escale process".to_string(),
    };
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("is being written by {holder} (lock {}); wait for it to finish or stop it", path.display()),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = OutputLock::acquire(&out).unwrap();
        let e = OutputLock::acquire(&dir.path().join(".").join("out")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains(&format!("PID {}", std::process::id())), "{e}");
        drop(first);
        assert!(!dir.path().join(publish::TMP_DIR).exists(), "lock area left behind");
        let again = OutputLock::acquire(&out).unwrap();
        assert!(again.path().is_file());
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let path = lock_path(&out).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{}\n", dead_pid())).unwrap();
        let lock = OutputLock::acquire(&out).unwrap();
        assert_eq!(std::fs::read_to_string(lock.path()).unwrap().trim(), std::process::id().to_string());
    }

    /// A PID no process has: a child that has exited and been reaped.
    pub(crate) fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }
}
