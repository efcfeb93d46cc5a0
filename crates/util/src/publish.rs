//! Temporary names and atomic, durable publishing.
//!
//! Every escale output (a file or a folder) is built under a hidden temporary name beside its
//! final place, then renamed into place only when complete, so an interrupted run never leaves a
//! half-written file that a re-run would trust. One naming scheme for all of them,
//! `.NAME.escale-TAG-PID`, lets a person (and a later clean-up) recognise escale's leftovers.
//! Errors are plain `io::Error`s; callers wrap them with the path in their own error type.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A hidden sibling of `target` for a temporary (`tag` = "tmp") or moved-aside ("old") copy:
/// `DIR/.NAME.escale-TAG-PID`.
pub fn temp_path(target: &Path, tag: &str) -> io::Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file or folder name", target.display()))
    })?;
    Ok(parent_dir(target).join(format!(".{}.escale-{tag}-{}", name.to_string_lossy(), std::process::id())))
}

/// Flushes a folder's entries (a rename into it) to disk. Best effort: not every filesystem
/// allows syncing a folder, and the data itself is already synced by then.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Flushes every regular file directly inside `dir` to disk, then `dir` itself: called on a
/// staging folder before it is renamed into place, so files written there by any means (a
/// library's own `save`, a plain copy) survive a power cut together with the rename.
pub fn sync_folder_files(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Moves a finished temporary file onto `target`: fsync the file, rename, fsync the folder.
pub fn commit_file(tmp: &Path, target: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, target)?;
    sync_dir(parent_dir(target));
    Ok(())
}

/// Writes `target` through a temporary file filled by `fill`, then [`commit_file`]s it; on any
/// error the temporary file is removed and `target` is untouched.
pub fn write_atomic_with<T>(target: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>) -> io::Result<T> {
    std::fs::create_dir_all(parent_dir(target))?;
    let tmp = temp_path(target, "tmp")?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let value = fill(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, target)?;
        sync_dir(parent_dir(target));
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `target` atomically and durably.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(target, |w| w.write_all(bytes))
}

/// Whether `path` is a folder with at least one entry (or something other than a folder).
pub fn is_nonempty(path: &Path) -> bool {
    match std::fs::read_dir(path) {
        Ok(mut it) => it.next().is_some(),
        Err(_) => path.exists(),
    }
}

/// Moves a completed temporary folder onto `out_dir`. An existing non-empty `out_dir` is refused
/// with `ErrorKind::AlreadyExists` unless `replace`; when replaced, it is first moved aside and
/// deleted only once the new folder is in place. The parent folder is synced afterwards.
pub fn publish_dir(tmp_dir: &Path, out_dir: &Path, replace: bool) -> io::Result<()> {
    let parent = parent_dir(out_dir);
    std::fs::create_dir_all(parent)?;
    let mut old = None;
    if out_dir.exists() {
        if is_nonempty(out_dir) && !replace {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", out_dir.display())));
        }
        let aside = temp_path(out_dir, "old")?;
        std::fs::rename(out_dir, &aside)?;
        old = Some(aside);
    }
    std::fs::rename(tmp_dir, out_dir)?;
    if let Some(aside) = old {
        let _ = std::fs::remove_dir_all(aside);
    }
    sync_dir(parent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden_siblings() {
        let p = temp_path(Path::new("a/b/out"), "tmp").unwrap();
        assert_eq!(p, Path::new("a/b").join(format!(".out.escale-tmp-{}", std::process::id())));
        assert_eq!(temp_path(Path::new("x"), "old").unwrap().parent(), Some(Path::new(".")));
        assert!(temp_path(Path::new("/"), "tmp").is_err());
    }

    #[test]
    fn atomic_write_replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.json");
        write_atomic(&target, b"old").unwrap();
        let err = write_atomic_with(&target, |w| {
            w.write_all(b"half")?;
            Err::<(), _>(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn publish_refuses_then_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("old"), b"1").unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("new"), b"2").unwrap();
        let e = publish_dir(&tmp, &out, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(out.join("old").exists() && tmp.join("new").exists());
        publish_dir(&tmp, &out, true).unwrap();
        assert!(out.join("new").exists() && !out.join("old").exists() && !tmp.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "aside copy left behind");
    }
}
