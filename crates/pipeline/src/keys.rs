//! Stage keys: the hash that decides whether a finished stage may be skipped. It covers the
//! stage's resolved settings, the file's evaluation and training defaults, the keys of the stages
//! it reads, and fingerprints of the files outside the run directory that it reads.

use std::path::{Path, PathBuf};

use anyhow::Result;
use escale_train::TrainConfig;
use serde::Serialize;

use crate::manifest::{fingerprint_file, fingerprint_model, hash_json, StageKind};
use crate::plan::{PlannedStage, Work};
use crate::schema::{CorpusSpec, EvalSpec, ModelSpec, PipelineFile, PrepareSpec, TokenizerSpec, TrainBlock};

#[derive(Serialize)]
struct KeyInput<'k> {
    kind: StageKind,
    work: &'k Work,
    train: &'k Option<TrainConfig>,
    file_train: &'k TrainBlock,
    eval: &'k EvalSpec,
    upstream: &'k [&'k str],
    inputs: Vec<String>,
}

/// The key of `stage`, given the keys of the stages it reads (`upstream`) and a function making a
/// path of the file absolute.
pub fn stage_key(
    stage: &PlannedStage,
    file: &PipelineFile,
    upstream: &[&str],
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<String> {
    let inputs = match &stage.work {
        Work::Prepare(p) => prepare_inputs(p, abs)?,
        _ => Vec::new(),
    };
    Ok(hash_json(&KeyInput {
        kind: stage.kind,
        work: &stage.work,
        train: &stage.train,
        file_train: &file.train,
        eval: &file.eval,
        upstream,
        inputs,
    }))
}

/// What a prepare stage reads from outside the run directory: the absolute paths (relative ones
/// resolve against the file's folder) and fingerprints of the model, tokenizer and prepared data.
fn prepare_inputs(p: &PrepareSpec, abs: &dyn Fn(&Path) -> PathBuf) -> Result<Vec<String>> {
    let mut inputs = Vec::new();
    if let ModelSpec::From(m) = &p.model {
        let m = abs(m);
        inputs.push(m.display().to_string());
        inputs.push(fingerprint_model(&m)?);
    }
    if let Some(TokenizerSpec::Path(t)) = &p.tokenizer {
        inputs.push(fingerprint_file(&abs(t))?);
    }
    match &p.corpus {
        CorpusSpec::Text(t) => inputs.extend(t.paths.iter().map(|p| abs(p).display().to_string())),
        CorpusSpec::Prepared(d) => {
            for prefix in [&d.train, &d.valid] {
                inputs.push(fingerprint_file(&abs(prefix).with_extension("idx"))?);
            }
        }
        CorpusSpec::Builtin(_) => {}
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::FILE;

    fn keys(text: &str) -> Vec<String> {
        let file = PipelineFile::parse(text, "p.yaml").unwrap();
        let plan = crate::plan::plan(&file).unwrap();
        let abs = |p: &Path| p.to_path_buf();
        let base = stage_key(&plan[0], &file, &[], &abs).unwrap();
        let up = stage_key(&plan[1], &file, &[&base, &base], &abs).unwrap();
        vec![base, up]
    }

    #[test]
    fn a_key_changes_with_the_settings_of_the_stage_and_of_its_sources() {
        let k = keys(FILE);
        assert_eq!(k, keys(FILE), "keys are stable");
        let stage_lr = keys(&FILE.replace("train: {total_tokens: 3200}\n", "train: {total_tokens: 3200, lr: 0.01}\n"));
        assert_eq!(stage_lr[0], k[0]);
        assert_ne!(stage_lr[1], k[1]);
        let base_tokens = keys(&FILE.replace("{total_tokens: 6400}", "{total_tokens: 640}"));
        assert_ne!(base_tokens[0], k[0]);
        assert_ne!(base_tokens[1], k[1], "the upstream key is part of the key");
    }
}
