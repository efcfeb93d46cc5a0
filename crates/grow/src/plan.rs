//! The vocabulary both growths share: the exactness verdict of a plan and the growth manifest
//! (`escale_growth.json`) written into every grown model folder and read back by the trainer and
//! the pipeline.
//!
//! A growth is planned from configs alone ([`crate::scale_up::ScaleUpPlan`],
//! [`crate::scale_out::ScaleOutPlan`]), which judge whether the result is function preserving
//! ([`Exactness`]); executing a plan writes its [`GrowthManifest`] next to the weights.

use std::path::Path;

use escale_formats::writer::write_file;
use escale_formats::FormatError;
use serde::{Deserialize, Serialize};

use crate::scale_out::ScaleOutManifest;
use crate::scale_up::ScaleUpManifest;

/// File name of the manifest written into every grown model folder.
pub const MANIFEST_FILE: &str = "escale_growth.json";

/// Whether the grown model computes exactly the source's function at initialisation, and why not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exactness {
    /// True when the construction is function preserving (up to floating-point rounding).
    pub exact: bool,
    /// One sentence per reason the result is not exact (empty when `exact`). Scale-out manifests
    /// written before this type was shared called it `broken_by`.
    #[serde(alias = "broken_by")]
    pub reasons: Vec<String>,
    /// Rounding caveats that hold even when exact.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Scale-up: whether the width growth alone is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width_exact: Option<bool>,
    /// Scale-up: whether the depth growth alone is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_exact: Option<bool>,
}

impl Exactness {
    /// The verdict of a plan with these reasons against exactness and these caveats.
    pub fn from_reasons(reasons: Vec<String>, notes: Vec<String>) -> Exactness {
        Exactness { exact: reasons.is_empty(), reasons, notes, width_exact: None, depth_exact: None }
    }
}

/// Contents of [`MANIFEST_FILE`]: what was grown, how, and whether it is exact. The `operation`
/// key says which growth wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum GrowthManifest {
    ScaleUp(Box<ScaleUpManifest>),
    ScaleOut(Box<ScaleOutManifest>),
}

impl GrowthManifest {
    pub fn exactness(&self) -> &Exactness {
        match self {
            GrowthManifest::ScaleUp(m) => &m.exactness,
            GrowthManifest::ScaleOut(m) => &m.exactness,
        }
    }

    /// Writes the manifest as `dir/`[`MANIFEST_FILE`].
    pub fn write(&self, dir: &Path) -> Result<(), FormatError> {
        let mut text = serde_json::to_string_pretty(self).expect("a growth manifest serialises");
        text.push('\n');
        write_file(&dir.join(MANIFEST_FILE), text.as_bytes())
    }

    /// Reads `dir/`[`MANIFEST_FILE`].
    pub fn read(dir: &Path) -> Result<GrowthManifest, FormatError> {
        read_record(dir)
    }
}

/// Reads `dir/`[`MANIFEST_FILE`] as `T`: the whole [`GrowthManifest`], or the record of one
/// growth when the caller knows which (its missing fields take their defaults).
pub fn read_record<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, FormatError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|source| FormatError::Json { path, source })
}
