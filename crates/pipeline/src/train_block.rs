//! A pipeline's `train:` blocks are the trainer's own configuration ([`TrainConfig`]): the same
//! keys as `escale train --config`, with the same defaults.
//!
//! A block is kept as the YAML mapping the user wrote, not yet a `TrainConfig`, because the
//! defaults are layered: a stage's block overrides the file's `train:` block, which overrides the
//! trainer's defaults, and a few defaults (evaluation and checkpoint spacing, the seed) depend on
//! the stage, so the pipeline must know which keys the user actually set.

use escale_train::TrainConfig;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// One `train:` block as written: trainer config keys, any subset.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct TrainBlock(Mapping);

/// Keys of the pipeline's former train settings that the trainer names otherwise.
const RENAMED: &[(&str, &str)] =
    &[("tokens", "total_tokens"), ("warmup", "warmup_steps"), ("grad_clip", "clip"), ("moe_loss", "moe_loss_convention")];

/// Trainer keys the pipeline sets itself, with why.
const SET_BY_PIPELINE: &[(&str, &str)] = &[
    ("model", "each stage trains the model it grew or initialised"),
    ("data", "the prepare stage's data is used"),
    ("valid", "the prepare stage's validation split is used"),
    ("output", "each stage trains into its own folder"),
    ("resume", "a re-run always resumes an unfinished stage"),
    ("progress_bar", "escale run shows progress on terminals"),
    ("stop_after_step", "a stage trains to the end of its budget"),
    ("threads", "use `escale run --threads`"),
    ("steps", "a stage's length is its token budget: use `total_tokens`"),
];

/// A key or value of a train block that the pipeline refuses: (YAML path, message).
pub type BlockError = (String, String);

impl TrainBlock {
    /// A block of `key: value` pairs (tests and derived settings).
    pub fn from_pairs<V: Into<Value>>(pairs: impl IntoIterator<Item = (&'static str, V)>) -> TrainBlock {
        TrainBlock(pairs.into_iter().map(|(k, v)| (Value::from(k), v.into())).collect())
    }

    /// `self` with every key it does not set taken from `defaults`.
    pub fn over(&self, defaults: &TrainBlock) -> TrainBlock {
        let mut merged = defaults.0.clone();
        for (k, v) in &self.0 {
            merged.insert(k.clone(), v.clone());
        }
        TrainBlock(merged)
    }

    /// Whether the user set `key`.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// `self` with `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> TrainBlock {
        self.0.insert(Value::from(key), value.into());
        self
    }

    /// `self` without `key`.
    pub fn without(mut self, key: &str) -> TrainBlock {
        self.0.remove(key);
        self
    }

    /// Checks the keys and values of a block found at YAML path `at` (e.g. `stages[1].sweep.train`):
    /// renamed keys name their new name, keys the pipeline sets are refused with the reason, and
    /// the rest must deserialise as trainer settings.
    pub fn check(&self, at: &str) -> Result<(), BlockError> {
        for key in self.0.keys() {
            let Some(key) = key.as_str() else { continue };
            if let Some((_, new)) = RENAMED.iter().find(|(old, _)| *old == key) {
                return Err((format!("{at}.{key}"), format!("renamed: the trainer's key is `{new}`")));
            }
            if let Some((_, why)) = SET_BY_PIPELINE.iter().find(|(k, _)| *k == key) {
                return Err((format!("{at}.{key}"), format!("set by the pipeline itself ({why})")));
            }
        }
        self.config(at).map(|_| ())
    }

    /// The trainer configuration this block gives (unset keys: the trainer's defaults). Errors
    /// carry the YAML path under `at`.
    pub fn config(&self, at: &str) -> Result<TrainConfig, BlockError> {
        serde_path_to_error::deserialize(Value::Mapping(self.0.clone())).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { at.to_string() } else { format!("{at}.{path}") };
            (path, e.inner().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(yaml: &str) -> TrainBlock {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn stage_keys_override_file_keys_which_override_the_trainer() {
        let file = block("{seq_len: 64, lr: 0.003}");
        let stage = block("{lr: 0.001, total_tokens: 5000}");
        let cfg = stage.over(&file).config("train").unwrap();
        assert_eq!((cfg.total_tokens, cfg.lr, cfg.seq_len), (Some(5000), 0.001, 64));
        assert_eq!(cfg.clip, TrainConfig::default().clip);
    }

    #[test]
    fn a_block_reads_like_an_escale_train_config_file() {
        let yaml = "{total_tokens: 4096, warmup_steps: 5, clip: 0.5, schedule: wsd, moe_loss_convention: hf}\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.yaml");
        std::fs::write(&path, yaml).unwrap();
        assert_eq!(block(yaml).config("train").unwrap(), TrainConfig::from_yaml_file(&path).unwrap());
    }

    #[test]
    fn old_keys_name_the_new_key_and_the_yaml_path() {
        for (old, new) in RENAMED {
            let e = block(&format!("{{{old}: 1}}")).check("stages[1].sweep.train").unwrap_err();
            assert_eq!(e.0, format!("stages[1].sweep.train.{old}"));
            assert!(e.1.contains(&format!("`{new}`")), "{}", e.1);
        }
    }

    #[test]
    fn keys_the_pipeline_sets_are_refused_with_a_reason() {
        let e = block("{output: x}").check("train").unwrap_err();
        assert_eq!(e, ("train.output".into(), "set by the pipeline itself (each stage trains into its own folder)".into()));
    }

    #[test]
    fn the_engine_is_a_block_key_serialised_only_when_not_the_default() {
        let cfg = block("{engine: megatron, megatron: {dp: 2, launcher: torchrun --nproc-per-node 2}}").config("train").unwrap();
        assert_eq!((cfg.engine, cfg.megatron.dp, cfg.megatron.tp), (escale_train::Engine::Megatron, 2, 1));
        // Stage keys hash the serialised settings: in-process stages keep their keys, megatron
        // stages get their own.
        let plain = serde_json::to_string(&TrainConfig::default()).unwrap();
        assert!(!plain.contains(r#""engine""#) && !plain.contains(r#""megatron":"#), "{plain}");
        assert!(serde_json::to_string(&cfg).unwrap().contains(r#""engine":"megatron""#));
        let e = block("{megatron: {tpp: 2}}").check("stages[1].train").unwrap_err();
        assert!(e.0 == "stages[1].train.megatron.tpp" && e.1.starts_with("unknown field `tpp`"), "{e:?}");
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_yaml_path() {
        let e = block("{lr: fast}").check("train").unwrap_err();
        assert!(e.0 == "train.lr" && e.1.starts_with("invalid type"), "{e:?}");
        let e = block("{warmup_step: 3}").check("train").unwrap_err();
        assert!(e.0 == "train.warmup_step" && e.1.starts_with("unknown field `warmup_step`"), "{e:?}");
    }
}
