//! The vocabulary both growths share: a plan ([`GrowthPlan`]) of planned tensors, each with its
//! rule ([`PlannedTensor`], [`Rule`]), the exactness verdict of a plan ([`Exactness`]) and the
//! growth manifest (`escale_growth.json`, [`GrowthManifest`]) written into every grown model
//! folder and read back by the trainer and the pipeline.
//!
//! A growth is planned from configs alone ([`crate::scale_up::ScaleUpPlan`],
//! [`crate::scale_out::ScaleOutPlan`]), which judge whether the result is function preserving;
//! executing a plan streams the source through the rules (see `exec`) and writes its manifest
//! next to the weights.

use std::path::Path;

use escale_formats::writer::write_file;
use escale_formats::{DType, FormatError, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::scale_out::{self, ScaleOutManifest, ScaleOutPlan};
use crate::scale_up::{self, ScaleUpManifest, ScaleUpPlan};

/// One tensor of a growth's output. `R` is the rule that makes it: [`Rule`] across growths, or
/// one engine's own rule type inside that engine.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor<R = Rule> {
    pub name: String,
    /// Stored dtype; `None`: the dtype of its main source tensor, known once the checkpoint is
    /// opened.
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    pub rule: R,
}

/// How an output tensor is made, by either growth.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// A scaled gather of rows and columns of one or two source tensors (width and depth growth).
    ScaleUp(Box<scale_up::TensorRule>),
    /// A copy, expert shard, shared-expert part, router or zeros (sparse upcycling).
    ScaleOut(scale_out::TensorRule),
}

/// What every growth plan states before a byte is read.
pub trait GrowthPlan {
    /// The output `config.json`.
    fn output_config(&self) -> &ModelConfig;
    fn exactness(&self) -> &Exactness;
    /// Every output tensor with its rule, in the output's `state_dict` order.
    fn planned_tensors(&self) -> Vec<PlannedTensor>;
}

impl GrowthPlan for ScaleUpPlan {
    fn output_config(&self) -> &ModelConfig {
        &self.target
    }

    fn exactness(&self) -> &Exactness {
        &self.exactness
    }

    fn planned_tensors(&self) -> Vec<PlannedTensor> {
        let tensor = |t: &scale_up::OutputTensor| PlannedTensor {
            name: t.name.clone(),
            dtype: self.options.dtype,
            shape: t.shape.clone(),
            rule: Rule::ScaleUp(Box::new(self.rule_for(t))),
        };
        self.tensors.iter().map(tensor).collect()
    }
}

impl GrowthPlan for ScaleOutPlan {
    fn output_config(&self) -> &ModelConfig {
        &self.config
    }

    fn exactness(&self) -> &Exactness {
        &self.exactness
    }

    fn planned_tensors(&self) -> Vec<PlannedTensor> {
        let tensor = |t: &PlannedTensor<scale_out::TensorRule>| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            rule: Rule::ScaleOut(t.rule.clone()),
        };
        self.tensors.iter().map(tensor).collect()
    }
}

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
    /// Set when the construction is exact (in f32) but storing it in the output dtype rounds
    /// weights, so the model as written is not exactly the source's function: why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_dtype_rounding: Option<String>,
}

impl Exactness {
    /// The verdict of a plan with these reasons against exactness and these caveats.
    pub fn from_reasons(reasons: Vec<String>, notes: Vec<String>) -> Exactness {
        Exactness { exact: reasons.is_empty(), reasons, notes, width_exact: None, depth_exact: None, stored_dtype_rounding: None }
    }

    /// Whether the model as written, in its stored dtype, computes exactly the source's function.
    pub fn exact_as_stored(&self) -> bool {
        self.exact && self.stored_dtype_rounding.is_none()
    }
}

/// Why storing a growth's weights in `stored` loses exactness, if it does.
///
/// Growth computes in f32 and rounds once to the output dtype. An f32 output is the baseline of
/// "exact" (what the verdict means). A narrower output keeps copies and zeros of values that were
/// already stored in it, and values scaled by a power of two; any other scale (3/4, 1/3,
/// `1/sqrt(c)`) or a narrowing conversion rounds the weights. `None` when `stored` is unknown.
pub fn stored_dtype_rounding(source: Option<DType>, stored: Option<DType>, scales: impl IntoIterator<Item = f32>) -> Option<String> {
    let stored = stored?;
    if stored == DType::F32 {
        return None;
    }
    if source != Some(stored) {
        let from = source.map_or_else(|| "an unknown dtype".to_string(), |d| d.to_string());
        return Some(format!("weights are converted from {from} to {stored}, which rounds each one"));
    }
    let off_grid = scales.into_iter().find(|s| *s != 0.0 && s.abs().log2().fract() != 0.0)?;
    Some(format!(
        "weights scaled by factors such as {off_grid} (not a power of two) are rounded to {stored} when stored"
    ))
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
    serde_json::from_str(&text).map_err(|cause| FormatError::Json { path, cause })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// escale-util cannot name grow's constant (it sits below grow), so it repeats the name to
    /// recognise older growth outputs as escale's: keep the two in step.
    #[test]
    fn the_manifest_marks_an_escale_output() {
        assert!(escale_util::output::OTHER_MARKERS.contains(&MANIFEST_FILE));
    }

    #[test]
    fn both_plans_speak_the_same_vocabulary() {
        let v = serde_json::json!({"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2});
        let src = ModelConfig::from_json(v, Path::new("src/config.json")).unwrap();
        let dims = scale_up::TargetDims { hidden_size: Some(16), ..Default::default() };
        let o = scale_up::ScaleUpOptions { method: scale_up::Method::Fpi, ..Default::default() };
        let up = ScaleUpPlan::new(&src, &scale_up::Target::Dims(dims), &o).unwrap();
        let out = ScaleOutPlan::new(&src, &scale_out::ScaleOutOptions { experts: 4, ..Default::default() }).unwrap();
        let plans: [&dyn GrowthPlan; 2] = [&up, &out];
        for plan in plans {
            let tensors = plan.planned_tensors();
            assert!(plan.exactness().exact, "{:?}", plan.exactness());
            assert_eq!(tensors.len(), escale_formats::naming::expected_params(plan.output_config()).len());
        }
        assert!(up.planned_tensors().iter().all(|t| matches!(t.rule, Rule::ScaleUp(_))));
        assert!(out.planned_tensors().iter().all(|t| matches!(t.rule, Rule::ScaleOut(_))));
    }

    #[test]
    fn stored_dtype_rounding_spares_f32_copies_and_powers_of_two() {
        let bf16 = Some(DType::BF16);
        assert_eq!(stored_dtype_rounding(bf16, Some(DType::F32), [0.75]), None, "f32 output is the baseline");
        assert_eq!(stored_dtype_rounding(bf16, bf16, [1.0, 0.5, 0.0, 0.25]), None);
        assert_eq!(stored_dtype_rounding(bf16, None, [0.75]), None, "unknown output dtype");
        let e = stored_dtype_rounding(bf16, bf16, [1.0, 0.75]).unwrap();
        assert!(e.contains("0.75") && e.contains("BF16"), "{e}");
        let e = stored_dtype_rounding(Some(DType::F32), bf16, [1.0]).unwrap();
        assert!(e.contains("converted from F32 to BF16"), "{e}");
    }
}
