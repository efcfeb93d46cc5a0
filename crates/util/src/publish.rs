//! Temporary names and atomic, durable publishing.
//!
//! Every escale output (a file or a folder) is built under a temporary name beside its final
//! place, then renamed into place only when complete, so an interrupted run never leaves a
//! half-written file that a re-run would trust. Small files use the hidden sibling
//! `.NAME.escale-tmp-PID` (short-lived, removed on error); folders and files that take long to
//! write (datasets), which can be large, are staged in the folder `.escale-tmp` beside the output
//! (`.escale-tmp/NAME.tmp-PID`), which the next writer there cleans of whatever a dead process
//! left, and removes once empty. Folders being deleted pass through the same area.
//! Errors are plain `io::Error`s; callers wrap them with the path in their own error type.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::output;

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A hidden sibling of `target` for a temporary (`tag` = "tmp") or moved-aside ("old") copy:
/// `DIR/.NAME.escale-TAG-PID`.
pub fn temp_path(target: &Path, tag: &str) -> io::Result<PathBuf> {
    Ok(parent_dir(target).join(format!(".{}.escale-{tag}-{}", file_name(target)?, std::process::id())))
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
        drop(w.into_inner().map_err(|e| e.into_error())?);
        commit_file(&tmp, target)?;
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

/// The folder beside every folder output that holds its staging copy and lock.
pub const TMP_DIR: &str = ".escale-tmp";

/// `NAME` of `DIR/NAME`, as text.
pub fn file_name(path: &Path) -> io::Result<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file or folder name", path.display()))
    })
}

/// `DIR/.escale-tmp` for output `DIR/NAME`.
pub fn tmp_area(output: &Path) -> PathBuf {
    parent_dir(output).join(TMP_DIR)
}

/// Where an output really is: a symbolic link is followed (its target is written, the link kept)
/// and the folder above is made absolute with links resolved, so that every spelling of one
/// output shares one lock and one staging area. The parent folder is created if missing.
pub fn resolve_output(output: &Path) -> io::Result<PathBuf> {
    if std::fs::symlink_metadata(output).is_ok_and(|m| m.file_type().is_symlink()) {
        return output.canonicalize().map_err(|e| {
            io::Error::new(e.kind(), format!("{} is a symbolic link whose target cannot be used: {e}", output.display()))
        });
    }
    let name = file_name(output)?;
    let parent = parent_dir(output);
    std::fs::create_dir_all(parent)?;
    Ok(parent.canonicalize()?.join(name))
}

/// Creates the empty staging folder `.escale-tmp/NAME.tmp-PID` for folder output `output` (its
/// resolved path), first removing what dead processes left in that area.
pub fn create_staging_dir(output: &Path) -> io::Result<PathBuf> {
    let area = tmp_area(output);
    remove_dead_leftovers(&area);
    remove_legacy_leftovers(output);
    let staging = area.join(format!("{}.tmp-{}", file_name(output)?, std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    create_in_area(&area, || std::fs::create_dir(&staging))?;
    Ok(staging)
}

/// Creates the temporary file `.escale-tmp/NAME.tmp-PID` for a file output `target` that takes
/// long to write (a dataset), first removing what dead processes left in that area, so a run
/// killed half-way leaves nothing the next one does not clean. The caller renames it into place
/// (or removes it on error), then calls [`remove_area_if_empty`] on [`tmp_area`]`(target)`.
pub fn create_staging_file(target: &Path) -> io::Result<(PathBuf, File)> {
    let area = tmp_area(target);
    remove_dead_leftovers(&area);
    remove_legacy_leftovers(target);
    let path = area.join(format!("{}.tmp-{}", file_name(target)?, std::process::id()));
    let file = create_in_area(&area, || File::create(&path))?;
    Ok((path, file))
}

/// Deletes the folder `dir` by first moving it into the `.escale-tmp` area beside it
/// (`NAME.old-PID`): an interrupted deletion never leaves a half-deleted folder under its own name,
/// and the next writer there removes what a dead process did not finish deleting.
pub fn remove_dir_through_area(dir: &Path) -> io::Result<()> {
    let area = tmp_area(dir);
    remove_dead_leftovers(&area);
    let trash = area.join(format!("{}.old-{}", file_name(dir)?, std::process::id()));
    if trash.exists() {
        std::fs::remove_dir_all(&trash)?;
    }
    create_in_area(&area, || std::fs::rename(dir, &trash))?;
    std::fs::remove_dir_all(&trash)?;
    remove_area_if_empty(&area);
    Ok(())
}

/// Creates `area` and runs `create` (which makes something inside it). Another writer may remove
/// the empty area between the two steps: try again then.
fn create_in_area<T>(area: &Path, mut create: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    for _ in 0..16 {
        std::fs::create_dir_all(area)?;
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !area.exists() => continue,
            other => return other,
        }
    }
    Err(io::Error::other(format!("could not create an entry in {}", area.display())))
}

/// Removes `area` (a `.escale-tmp` folder) when nothing is left in it. Best effort.
pub fn remove_area_if_empty(area: &Path) {
    let _ = std::fs::remove_dir(area);
}

/// Whether process `pid` exists (a PID we may not signal still exists).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The owner's PID in an escale temporary name (`…-PID` or a lock file's content).
fn owner_pid(entry: &Path) -> Option<u32> {
    let name = entry.file_name()?.to_str()?;
    if name.ends_with(".lock") {
        return std::fs::read_to_string(entry).ok()?.trim().parse().ok();
    }
    name.rsplit_once('-')?.1.parse().ok()
}

/// Removes staging copies, moved-aside outputs and lock files of processes that are gone.
fn remove_dead_leftovers(area: &Path) {
    let Ok(entries) = std::fs::read_dir(area) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if owner_pid(&path).is_some_and(|pid| !process_alive(pid)) {
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// Removes the hidden siblings `.NAME.escale-{tmp,old}-PID` that escale versions before the
/// `.escale-tmp` area left beside `output` when killed.
fn remove_legacy_leftovers(output: &Path) {
    let Ok(name) = file_name(output) else { return };
    let prefix = format!(".{name}.escale-");
    let Ok(entries) = std::fs::read_dir(parent_dir(output)) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let pid = rest.strip_prefix("tmp-").or_else(|| rest.strip_prefix("old-")).and_then(|p| p.parse().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// Moves a completed staging folder onto `out_dir`, marked as escale's output
/// ([`output::OUTPUT_MARKER`]). A symbolic link `out_dir` is followed: its target is replaced.
/// An existing non-empty `out_dir` is refused with `ErrorKind::AlreadyExists` unless `replace`,
/// and even then only when it is an escale output ([`output::check_replaceable`]). It is replaced
/// in one rename (`renameat2(RENAME_EXCHANGE)`) where the filesystem has it, so there is no
/// moment without an output; elsewhere it is first moved aside into `.escale-tmp`. The old
/// output is deleted once the new one is in place, and the parent folder is synced.
pub fn publish_dir(tmp_dir: &Path, out_dir: &Path, replace: bool) -> io::Result<()> {
    let out = resolve_output(out_dir)?;
    output::mark_output(tmp_dir)?;
    if std::fs::symlink_metadata(&out).is_err() {
        std::fs::rename(tmp_dir, &out)?;
    } else {
        if is_nonempty(&out) && !replace {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", out_dir.display())));
        }
        output::check_replaceable(&out)?;
        let old = if exchange(tmp_dir, &out)? {
            tmp_dir.to_path_buf()
        } else {
            let aside = tmp_area(&out).join(format!("{}.old-{}", file_name(&out)?, std::process::id()));
            std::fs::create_dir_all(tmp_area(&out))?;
            std::fs::rename(&out, &aside)?;
            std::fs::rename(tmp_dir, &out)?;
            aside
        };
        let _ = std::fs::remove_dir_all(&old);
        remove_area_if_empty(&tmp_area(&out));
    }
    sync_dir(parent_dir(&out));
    Ok(())
}

/// Swaps two paths in one step; `Ok(false)` where the kernel or filesystem cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths relative to the current directory.
    let rc = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<bool> {
    Ok(false)
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
        let e = publish_dir(&tmp, &out, true).unwrap_err();
        assert!(e.to_string().contains("escale did not write"), "{e}");
        output::mark_output(&out).unwrap();
        publish_dir(&tmp, &out, true).unwrap();
        assert!(out.join("new").exists() && !out.join("old").exists() && !tmp.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "aside copy left behind");
    }

    #[test]
    fn a_linked_output_keeps_its_link_and_gets_the_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        output::mark_output(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let tmp = create_staging_dir(&resolve_output(&link).unwrap()).unwrap();
        std::fs::write(tmp.join("new"), b"2").unwrap();
        publish_dir(&tmp, &link, true).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(real.join("new").is_file());
    }

    #[test]
    fn staging_lives_in_the_area_which_is_cleaned_of_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let area = dir.path().join(TMP_DIR);
        let dead = crate::lock::tests::dead_pid();
        std::fs::create_dir_all(area.join(format!("other.tmp-{dead}"))).unwrap();
        std::fs::create_dir_all(area.join(format!("out.old-{dead}"))).unwrap();
        std::fs::create_dir_all(dir.path().join(format!(".out.escale-tmp-{dead}"))).unwrap();
        let staging = create_staging_dir(&out).unwrap();
        assert_eq!(staging, area.join(format!("out.tmp-{}", std::process::id())));
        let left: Vec<_> = std::fs::read_dir(&area).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(left, vec![staging.clone()]);
        assert!(!dir.path().join(format!(".out.escale-tmp-{dead}")).exists());
        publish_dir(&staging, &out, false).unwrap();
        remove_area_if_empty(&area);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "staging area left behind");
    }

    #[test]
    fn staging_files_live_in_the_area_which_is_cleaned_of_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("tokens.bin");
        let area = dir.path().join(TMP_DIR);
        let dead = crate::lock::tests::dead_pid();
        std::fs::create_dir_all(&area).unwrap();
        std::fs::write(area.join(format!("tokens.idx.tmp-{dead}")), b"half").unwrap();
        std::fs::write(dir.path().join(format!(".tokens.bin.escale-tmp-{dead}")), b"legacy").unwrap();
        let (tmp, _file) = create_staging_file(&target).unwrap();
        assert_eq!(tmp, area.join(format!("tokens.bin.tmp-{}", std::process::id())));
        let left: Vec<_> = std::fs::read_dir(&area).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(left, vec![tmp.clone()], "the dead owner's file is removed, ours is there");
        std::fs::rename(&tmp, &target).unwrap();
        remove_area_if_empty(&area);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tokens.bin")], "legacy sibling and empty area removed");
    }

    #[test]
    fn deleted_folders_pass_through_the_area_and_dead_deletions_are_finished() {
        let dir = tempfile::tempdir().unwrap();
        let area = dir.path().join(TMP_DIR);
        let dead = crate::lock::tests::dead_pid();
        std::fs::create_dir_all(area.join(format!("checkpoint-1.old-{dead}/sub"))).unwrap();
        let victim = dir.path().join("checkpoint-2");
        std::fs::create_dir_all(victim.join("sub")).unwrap();
        std::fs::write(victim.join("sub/f"), b"x").unwrap();
        remove_dir_through_area(&victim).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "folder, dead leftover and area all gone");
        assert!(remove_dir_through_area(&victim).is_err(), "a missing folder is an error");
    }
}
