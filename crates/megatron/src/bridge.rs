//! The Python side: finding an interpreter with megatron-core, and running the bridge package
//! (`python/escale_megatron`, compiled into this binary so that escale and its bridge always
//! match) in it. Each bridge command prints one JSON line; its stderr is passed on in errors.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{MegatronError, Result};

/// Environment variable naming the Python interpreter (a venv's `bin/python`).
pub const PYTHON_ENV: &str = "ESCALE_MEGATRON_PYTHON";
/// Environment variable naming the virtualenv `python/setup.sh` creates.
pub const VENV_ENV: &str = "ESCALE_MEGATRON_VENV";
/// The stamp `python/setup.sh` writes once the venv imports megatron-core cleanly.
pub const STAMP: &str = ".escale-megatron-ok-v1";
/// What to run when no interpreter is found.
pub const SETUP_HINT: &str = "run `bash python/setup.sh` from the escale repository (it creates ~/.cache/escale/megatron-venv: \
torch, megatron-core 0.16.1 on Python 3.11 or 0.19.2 on Python >= 3.12; about 4 GB) or set ESCALE_MEGATRON_PYTHON to a Python \
that has them plus safetensors and psutil";

const PACKAGE: &[(&str, &str)] = &[
    ("__init__.py", include_str!("../../../python/escale_megatron/__init__.py")),
    ("__main__.py", include_str!("../../../python/escale_megatron/__main__.py")),
    ("build.py", include_str!("../../../python/escale_megatron/build.py")),
    ("cpu_shims.py", include_str!("../../../python/escale_megatron/cpu_shims.py")),
    ("train.py", include_str!("../../../python/escale_megatron/train.py")),
    ("driver.py", include_str!("../../../python/escale_megatron/driver.py")),
];

/// A Python interpreter with megatron-core, ready to run bridge commands.
#[derive(Clone, Debug)]
pub struct Bridge {
    python: PathBuf,
    package_root: PathBuf,
}

fn default_venv() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(VENV_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/escale/megatron-venv"))
}

/// The interpreter: `$ESCALE_MEGATRON_PYTHON`, else the venv of `python/setup.sh`
/// (`$ESCALE_MEGATRON_VENV` or `~/.cache/escale/megatron-venv`) once its stamp exists.
pub fn locate_python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(MegatronError::NoPython { why: format!("{PYTHON_ENV}={} is not a file", p.display()) })
        };
    }
    let venv = default_venv().ok_or_else(|| MegatronError::NoPython { why: "HOME is not set".into() })?;
    let python = venv.join("bin/python");
    if !venv.join(STAMP).is_file() || !python.is_file() {
        return Err(MegatronError::NoPython { why: format!("no complete virtualenv at {} (stamp {STAMP} missing)", venv.display()) });
    }
    Ok(python)
}

/// Writes the embedded package once per content under `~/.cache/escale/bridge/<hash>` (or the
/// system temp folder), published atomically so concurrent escale processes share it.
fn package_root() -> Result<PathBuf> {
    let joined: String = PACKAGE.iter().map(|(n, s)| format!("{n}\n{s}")).collect();
    let hash = escale_util::hash::fnv1a_hex(joined.as_bytes());
    let base = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/escale/bridge"))
        .unwrap_or_else(|| std::env::temp_dir().join("escale-bridge"));
    let root = base.join(&hash);
    if root.join("escale_megatron/__main__.py").is_file() {
        return Ok(root);
    }
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| MegatronError::Io { path: p, cause: e }
    };
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    let staging = base.join(format!(".{hash}.tmp-{}", std::process::id()));
    let pkg = staging.join("escale_megatron");
    std::fs::create_dir_all(&pkg).map_err(io(&pkg))?;
    for (name, text) in PACKAGE {
        std::fs::write(pkg.join(name), text).map_err(io(&pkg.join(name)))?;
    }
    if std::fs::rename(&staging, &root).is_err() {
        // Another process published the same content first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(root)
}

impl Bridge {
    /// Finds the interpreter and unpacks the bridge package; the error says what to run.
    pub fn get() -> Result<Bridge> {
        let python = locate_python()?;
        Ok(Bridge { python, package_root: package_root()? })
    }

    /// The bridge in the interpreter `python` (e.g. `escale train --megatron-python`).
    pub fn with_python(python: PathBuf) -> Result<Bridge> {
        if !python.is_file() {
            return Err(MegatronError::NoPython { why: format!("{} is not a file", python.display()) });
        }
        Ok(Bridge { python, package_root: package_root()? })
    }

    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Where `escale_megatron` is importable from (for `PYTHONPATH`, e.g. under torchrun).
    pub fn package_root(&self) -> &Path {
        &self.package_root
    }

    /// A `python -m escale_megatron COMMAND` command line with the environment it needs.
    pub fn command(&self, command: &str) -> Command {
        let mut c = Command::new(&self.python);
        c.arg("-m").arg("escale_megatron").arg(command);
        self.set_env(&mut c);
        c
    }

    /// `PYTHONPATH` with the bridge first; quiet, unbuffered Python.
    pub fn set_env(&self, c: &mut Command) {
        let mut path = OsString::from(self.package_root.as_os_str());
        if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(old);
        }
        c.env("PYTHONPATH", path).env("PYTHONUNBUFFERED", "1").env("PYTHONWARNINGS", "ignore");
    }

    /// Runs a bridge command to completion and returns its JSON result (the last stdout line).
    pub fn run(&self, command: &str, args: &[OsString]) -> Result<Value> {
        let mut c = self.command(command);
        c.args(args);
        run_json(c, command)
    }
}

/// Runs `c`, returning the JSON of its last stdout line; a failure carries the stderr's tail.
pub fn run_json(mut c: Command, what: &str) -> Result<Value> {
    let out = c.output().map_err(|e| MegatronError::Bridge { command: what.into(), message: format!("could not start Python: {e}") })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(MegatronError::Bridge { command: what.into(), message: format!("{}\n{}", out.status, tail.join("\n")) });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| MegatronError::Bridge { command: what.into(), message: format!("no JSON result ({e}); stdout: {stdout}") })
}
