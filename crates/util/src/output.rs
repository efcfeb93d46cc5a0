//! What `--force` may replace, and outputs that must stay clear of their sources.
//!
//! `--force` never removes anything escale did not create: an existing output is replaced only
//! when it is empty or carries escale's mark ([`OUTPUT_MARKER`], written into every folder escale
//! publishes, or a file only escale writes, for outputs of older versions). And no output may be,
//! contain, or lie inside one of its sources, or replacing it would delete what is being read.
//! Errors are plain `io::Error`s without the output's path; callers add it.

use std::io;
use std::path::{Path, PathBuf};

use crate::publish;

/// The file that marks a folder as an escale output.
pub const OUTPUT_MARKER: &str = ".escale-output";

/// Files that also mark an escale output: the growth manifest (escale-grow's `MANIFEST_FILE`),
/// a trainer checkpoint's state and a training run's log, written before [`OUTPUT_MARKER`] was.
pub const OTHER_MARKERS: [&str; 3] = ["escale_growth.json", "trainer_state.json", "train_log.jsonl"];

/// Marks `dir` as escale's output (durably, like the rest of it).
pub fn mark_output(dir: &Path) -> io::Result<()> {
    let text = format!("written by escale {}\n", env!("CARGO_PKG_VERSION"));
    publish::write_atomic(&dir.join(OUTPUT_MARKER), text.as_bytes())
}

/// Whether `dir` carries escale's mark.
pub fn is_escale_output(dir: &Path) -> bool {
    std::iter::once(OUTPUT_MARKER).chain(OTHER_MARKERS).any(|m| dir.join(m).is_file())
}

/// Refuses to replace `path` unless it is missing, an empty folder or an escale output.
pub fn check_replaceable(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(()) };
    if !meta.is_dir() {
        return Err(refusal("is a file, not an output folder; --force replaces only folders escale wrote"));
    }
    if !publish::is_nonempty(path) || is_escale_output(path) {
        return Ok(());
    }
    Err(refusal(&format!(
        "holds files escale did not write (no {OUTPUT_MARKER} or escale manifest), so --force will not \
         replace it; remove it yourself or choose another output"
    )))
}

fn refusal(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message.to_string())
}

/// Refuses an `output` that is, contains or lies inside `source` (a folder or a file). Links
/// are followed and paths made absolute first; neither needs to exist.
pub fn check_apart(source: &Path, output: &Path) -> io::Result<()> {
    let (src, out) = (real_path(source)?, real_path(output)?);
    let what = if out == src {
        "is the source"
    } else if out.starts_with(&src) {
        "is inside the source"
    } else if src.starts_with(&out) {
        "contains the source"
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("the output {what} {}; writing it would destroy what is being read: choose another output", source.display()),
    ))
}

/// `path` made absolute with every link resolved, for the part of it that exists.
pub fn real_path(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Ok(rest.iter().rev().fold(real, |p, c| p.join(c)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_or_escale_folders_are_replaceable() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        check_replaceable(&out).unwrap();
        std::fs::create_dir(&out).unwrap();
        check_replaceable(&out).unwrap();
        std::fs::write(out.join("thesis.tex"), "mine").unwrap();
        let e = check_replaceable(&out).unwrap_err();
        assert!(e.to_string().contains("escale did not write"), "{e}");
        mark_output(&out).unwrap();
        check_replaceable(&out).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_replaceable(&file).unwrap_err().to_string().contains("is a file"));
    }

    #[test]
    fn outputs_on_or_around_their_source_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let src = models.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let msg = |out: &Path| check_apart(&src, out).unwrap_err().to_string();
        assert!(msg(&src).contains("is the source"));
        assert!(msg(&src.join("..").join("src")).contains("is the source"));
        assert!(msg(&models).contains("contains the source"));
        assert!(msg(&src.join("sub/new")).contains("is inside the source"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        assert!(msg(&link).contains("is the source"));
        check_apart(&src, &models.join("src2")).unwrap();
        check_apart(&models.join("x.bin"), &models.join("x")).unwrap();
        assert!(check_apart(&models.join("x.bin"), &models.join("x.bin")).is_err());
    }
}
