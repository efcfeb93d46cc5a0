//! The pipeline file (`pipeline.yaml`): what a user writes, parsed strictly.
//!
//! Every struct denies unknown fields and every choice is a closed enum, so a typo is an error that
//! names the YAML path of the bad key (`stages[2].scale_up.method: unknown variant ...`) instead of
//! a silently ignored setting discovered after hours of training.
//!
//! The file declares no settings of its own for work other crates do: growth choices are
//! escale-grow's option enums (with their serde names and defaults), and `train:` blocks are the
//! trainer's config keys ([`TrainBlock`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use escale_grow::scale_out::{MoeFormat, RouterInit, ScaleOutOptions};
use escale_grow::scale_up::{DepthMethod, Method, Preset, ScaleUpOptions};
use serde::{Deserialize, Serialize};

pub use crate::train_block::TrainBlock;

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Shown in headers and the report title.
    #[serde(default)]
    pub name: Option<String>,
    /// Run directory, relative to the YAML file; `escale run --output` overrides it.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// Base seed: every stage derives its seeds from it unless it sets its own.
    #[serde(default)]
    pub seed: u64,
    /// Held-out evaluation used at every transition.
    #[serde(default)]
    pub eval: EvalSpec,
    /// Training defaults (the trainer's config keys); each stage's `train` overrides them key by key.
    #[serde(default)]
    pub train: TrainBlock,
    pub stages: Vec<StageSpec>,
}

/// The validation measurement taken at the end of every stage and on every grown model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Validation tokens evaluated (from the start of the validation set, the same for every model).
    #[serde(default = "default_eval_tokens")]
    pub tokens: u64,
    /// Sequence length of the evaluation windows; defaults to the training sequence length.
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Multiple-choice task files (JSONL, relative to this file) scored on every stage's start and
    /// end models, or `builtin` for the built-in world questions ([`crate::accuracy`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Items per built-in task.
    #[serde(default = "default_task_items", skip_serializing_if = "is_default_task_items")]
    pub task_items: usize,
}

/// A stage's own `eval:` (overrides the file's `eval.tasks` for that stage).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageEval {
    pub tasks: Vec<String>,
}

fn default_task_items() -> usize {
    100
}

fn is_default_task_items(n: &usize) -> bool {
    *n == default_task_items()
}

fn default_eval_tokens() -> u64 {
    32_768
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec { tokens: default_eval_tokens(), seq_len: None, tasks: Vec::new(), task_items: default_task_items() }
    }
}

/// One entry of `stages:`; the key names the kind (`- scale_up: {...}`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", try_from = "StageEntry")]
pub enum StageSpec {
    Prepare(PrepareSpec),
    ScaleUp(ScaleUpSpec),
    ScaleOut(ScaleOutSpec),
    Baseline(BaselineSpec),
    Sweep(SweepSpec),
}

/// Where the text comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", try_from = "CorpusEntry")]
pub enum CorpusSpec {
    /// The built-in synthetic bilingual corpus, generated in the stage folder.
    Builtin(BuiltinCorpus),
    /// The user's text: plain files, JSONL, directories or globs.
    Text(TextCorpus),
    /// Data already tokenized into Megatron `.bin/.idx` (prefixes, without extension).
    Prepared(PreparedData),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuiltinCorpus {
    /// Size of the generated text in MB (10^6 bytes).
    pub size_mb: f64,
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextCorpus {
    pub paths: Vec<PathBuf>,
    /// JSONL field holding the text (default `text`).
    #[serde(default)]
    pub json_key: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreparedData {
    pub train: PathBuf,
    pub valid: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainTokenizer {
    pub vocab_size: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InitModel {
    /// config.json fields over escale's llama defaults.
    pub config: BTreeMap<String, serde_json::Value>,
}

/// Which tokenizer turns the text into ids.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", try_from = "TokenizerEntry")]
pub enum TokenizerSpec {
    /// Train a small byte-level BPE on the corpus (models trained from scratch).
    Train(TrainTokenizer),
    /// A tokenizer.json file.
    Path(PathBuf),
}

/// The dense model the pipeline starts from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", try_from = "ModelEntry")]
pub enum ModelSpec {
    /// A random HF-initialised model: `config` holds config.json fields over escale's llama defaults
    /// (vocab_size defaults to the tokenizer's).
    Init(InitModel),
    /// An existing Hugging Face model folder.
    From(PathBuf),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrepareSpec {
    pub name: String,
    pub corpus: CorpusSpec,
    /// Defaults to the model's own tokenizer.json (`model: {from: ...}`).
    #[serde(default)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Fraction of documents held out for validation when tokenizing text.
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    pub model: ModelSpec,
    /// Train the starting model (needed for `init`; optional for `from`).
    #[serde(default)]
    pub train: Option<TrainBlock>,
    /// Train the stage this many times with different seeds (data order; for a model initialised
    /// at random, also its initialisation): the report shows their mean and spread.
    #[serde(default = "one_seed")]
    pub seeds: usize,
    /// Multiple-choice tasks for this stage (instead of the file's `eval.tasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<StageEval>,
}

fn default_valid_fraction() -> f64 {
    0.02
}

/// Target architecture of a Scale-Up; absent fields keep the source's value.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_hidden_layers: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScaleUpSpec {
    pub name: String,
    /// Source stage; defaults to the previous stage.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default = "default_up_method")]
    pub method: Method,
    #[serde(default = "default_up_preset")]
    pub preset: Preset,
    #[serde(default)]
    pub depth: Option<DepthMethod>,
    #[serde(default)]
    pub seed: Option<u64>,
    pub target: TargetSpec,
    #[serde(default)]
    pub train: Option<TrainBlock>,
    /// Train the stage this many times with different seeds (data order; for a model initialised
    /// at random, also its initialisation): the report shows their mean and spread.
    #[serde(default = "one_seed")]
    pub seeds: usize,
    /// Multiple-choice tasks for this stage (instead of the file's `eval.tasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<StageEval>,
}

fn default_up_method() -> Method {
    ScaleUpOptions::default().method
}
fn default_up_preset() -> Preset {
    ScaleUpOptions::default().preset
}

/// One variant of a sweep.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepVariant {
    pub method: Method,
    #[serde(default = "default_up_preset")]
    pub preset: Preset,
    #[serde(default)]
    pub depth: Option<DepthMethod>,
    /// Stage name of this variant; defaults to `<sweep>-<method>[-<preset>]`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Several Scale-Up initialisations from the same source, trained side by side for the same budget.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    pub name: String,
    #[serde(default)]
    pub from: Option<String>,
    pub target: TargetSpec,
    pub variants: Vec<SweepVariant>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub train: Option<TrainBlock>,
    /// Every variant is trained at each of these learning rates (see [`BaselineSpec::lr_sweep`]),
    /// so that initialisations are compared each at its best.
    #[serde(default)]
    pub lr_sweep: Option<Vec<f64>>,
    /// Train the stage this many times with different seeds (data order; for a model initialised
    /// at random, also its initialisation): the report shows their mean and spread.
    #[serde(default = "one_seed")]
    pub seeds: usize,
    /// Multiple-choice tasks for this stage (instead of the file's `eval.tasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<StageEval>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScaleOutSpec {
    pub name: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default = "default_experts")]
    pub experts: usize,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default = "default_router_init")]
    pub router_init: RouterInit,
    #[serde(default = "default_router_std")]
    pub router_std: f64,
    /// Defaults to qwen3_moe for a qwen3 source, qwen2_moe when the source has QKV bias, else mixtral.
    #[serde(default)]
    pub format: Option<MoeFormat>,
    #[serde(default = "default_granularity")]
    pub granularity: usize,
    #[serde(default)]
    pub shared_experts: usize,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub train: Option<TrainBlock>,
    /// Train the stage this many times with different seeds (data order; for a model initialised
    /// at random, also its initialisation): the report shows their mean and spread.
    #[serde(default = "one_seed")]
    pub seeds: usize,
    /// Multiple-choice tasks for this stage (instead of the file's `eval.tasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<StageEval>,
}

fn default_experts() -> usize {
    ScaleOutOptions::default().experts
}
fn default_top_k() -> usize {
    ScaleOutOptions::default().top_k
}
fn default_router_init() -> RouterInit {
    ScaleOutOptions::default().router_init
}
fn default_router_std() -> f64 {
    ScaleOutOptions::default().router_std
}
fn default_granularity() -> usize {
    ScaleOutOptions::default().granularity
}

/// How much compute a from-scratch baseline gets.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BaselineBudget {
    /// The cumulative FLOPs of the whole chain up to the end of the stage (the fair comparison:
    /// the grown model is charged for its ancestors' training too).
    Cumulative,
    /// Only the FLOPs of the stage's own training.
    Stage,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    pub name: String,
    /// The stage whose architecture is trained from scratch.
    pub of: String,
    #[serde(default = "default_budget")]
    pub budget: BaselineBudget,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Training settings (the token budget is derived from the FLOPs; `total_tokens` is not allowed).
    #[serde(default)]
    pub train: Option<TrainBlock>,
    /// Peak learning rates to train each run at, for the same budget; the one with the lowest
    /// final validation loss (mean over seeds) is kept. Default: a third of the stage's `lr`, the
    /// `lr` itself and three times it. One value: no sweep.
    #[serde(default)]
    pub lr_sweep: Option<Vec<f64>>,
    /// Train the stage this many times with different seeds (data order; for a model initialised
    /// at random, also its initialisation): the report shows their mean and spread.
    #[serde(default = "one_seed")]
    pub seeds: usize,
    /// Multiple-choice tasks for this stage (instead of the file's `eval.tasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<StageEval>,
}

fn one_seed() -> usize {
    1
}

fn default_budget() -> BaselineBudget {
    BaselineBudget::Cumulative
}

/// A YAML mapping with exactly one of several keys stands for an enum value. serde_yaml 0.9 reads
/// externally tagged enums only from YAML tags (`!scale_up`), which few people write; these entry
/// structs accept the natural `- scale_up: {...}` form and keep serde's YAML-path tracking.
macro_rules! one_of {
    ($entry:ident => $target:ident { $($key:ident : $ty:ty => $variant:ident),* $(,)? }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $entry {
            $(#[serde(default)] $key: Option<$ty>,)*
        }

        impl TryFrom<$entry> for $target {
            type Error = String;
            fn try_from(e: $entry) -> Result<Self, String> {
                let mut found = Vec::new();
                $(if let Some(v) = e.$key { found.push($target::$variant(v)); })*
                if found.len() == 1 {
                    Ok(found.pop().unwrap())
                } else {
                    let keys = [$(stringify!($key)),*].join(", ");
                    Err(format!("expected exactly one of: {keys} (found {})", found.len()))
                }
            }
        }
    };
}

one_of!(StageEntry => StageSpec {
    prepare: PrepareSpec => Prepare,
    scale_up: ScaleUpSpec => ScaleUp,
    scale_out: ScaleOutSpec => ScaleOut,
    baseline: BaselineSpec => Baseline,
    sweep: SweepSpec => Sweep,
});
one_of!(CorpusEntry => CorpusSpec { builtin: BuiltinCorpus => Builtin, text: TextCorpus => Text, prepared: PreparedData => Prepared });
one_of!(TokenizerEntry => TokenizerSpec { train: TrainTokenizer => Train, path: PathBuf => Path });
one_of!(ModelEntry => ModelSpec { init: InitModel => Init, from: PathBuf => From });

/// A pipeline file that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    // The cause is part of the message and not `source()`, so `{:#}` prints it once.
    #[error("reading {path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// A key or value that does not fit the schema, with its YAML path.
    #[error("{file}: {path}: {message}")]
    Syntax { file: String, path: String, message: String },
    /// A file that parses but does not make sense as a pipeline.
    #[error("{file}: {path}: {message}")]
    Invalid { file: String, path: String, message: String },
}

impl PipelineFile {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineFile, SchemaError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| SchemaError::Io { path: path.to_path_buf(), cause })?;
        PipelineFile::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `file` only names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<PipelineFile, SchemaError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let parsed: PipelineFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = clean_message(&e.inner().to_string(), &path);
            SchemaError::Syntax { file: file.to_string(), path, message }
        })?;
        parsed.validate().map_err(|(path, message)| SchemaError::Invalid { file: file.to_string(), path, message })?;
        Ok(parsed)
    }

    /// Checks what the types cannot: unique names, sources that exist earlier, sensible numbers.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.stages.is_empty() {
            return Err(("stages".into(), "at least one stage is required".into()));
        }
        if !matches!(self.stages[0], StageSpec::Prepare(_)) {
            return Err(("stages[0]".into(), "the first stage must be `prepare` (data and starting model)".into()));
        }
        self.train.check("train")?;
        let mut names: Vec<String> = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if let Some(block) = stage.train() {
                block.check(&format!("stages[{i}].{}.train", stage.kind()))?;
            }
            let at = |field: &str| format!("stages[{i}].{}.{field}", stage.kind());
            if i > 0 && matches!(stage, StageSpec::Prepare(_)) {
                return Err((format!("stages[{i}]"), "only the first stage may be `prepare`".into()));
            }
            let check_from = |from: &Option<String>, names: &[String]| -> Result<(), (String, String)> {
                match from {
                    Some(f) if !names.contains(f) => {
                        Err((at("from"), format!("no earlier stage named {f:?} (earlier: {})", names.join(", "))))
                    }
                    _ => Ok(()),
                }
            };
            match stage {
                StageSpec::Prepare(p) => {
                    if !(0.0..0.5).contains(&p.valid_fraction) || p.valid_fraction == 0.0 {
                        return Err((at("valid_fraction"), "must be in (0, 0.5)".into()));
                    }
                    if matches!(p.model, ModelSpec::Init { .. }) && p.train.is_none() {
                        return Err((at("train"), "a model initialised at random must be trained here".into()));
                    }
                    if p.tokenizer.is_none() && !matches!(p.model, ModelSpec::From(_)) {
                        return Err((at("tokenizer"), "required when the model is not loaded `from` a folder".into()));
                    }
                    if let CorpusSpec::Builtin(b) = &p.corpus {
                        if b.size_mb <= 0.0 {
                            return Err((at("corpus.builtin.size_mb"), "must be positive".into()));
                        }
                    }
                }
                StageSpec::ScaleUp(s) => check_from(&s.from, &names)?,
                StageSpec::ScaleOut(s) => {
                    check_from(&s.from, &names)?;
                    if s.top_k == 0 || s.top_k > s.experts {
                        return Err((at("top_k"), format!("must be between 1 and experts ({})", s.experts)));
                    }
                }
                StageSpec::Sweep(s) => {
                    check_from(&s.from, &names)?;
                    if s.variants.is_empty() {
                        return Err((at("variants"), "at least one variant is required".into()));
                    }
                }
                StageSpec::Baseline(b) => {
                    if !names.contains(&b.of) {
                        return Err((at("of"), format!("no earlier stage named {:?}", b.of)));
                    }
                    if b.train.as_ref().is_some_and(|t| t.has("total_tokens")) {
                        return Err((at("train.total_tokens"), "a baseline's tokens follow from its FLOPs budget".into()));
                    }
                }
            }
            check_runs(stage, &at)?;
            for (j, name) in stage.names().into_iter().enumerate() {
                if let Err(msg) = check_name(&name) {
                    return Err((at("name"), msg));
                }
                if names.contains(&name) {
                    let what = if j == 0 { at("name") } else { at(&format!("variants[{}]", j - 1)) };
                    return Err((what, format!("duplicate stage name {name:?}")));
                }
                names.push(name);
            }
        }
        Ok(())
    }
}

/// Checks `seeds` and `lr_sweep`: at least one of each, positive learning rates, and a training
/// to repeat.
fn check_runs(stage: &StageSpec, at: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    let trains = stage.train().is_some() || matches!(stage, StageSpec::Baseline(_));
    if stage.seeds() == 0 {
        return Err((at("seeds"), "must be at least 1".into()));
    }
    if stage.seeds() > 1 && !trains {
        return Err((at("seeds"), "repeats the stage's training: the stage needs a `train` block".into()));
    }
    let Some(lrs) = stage.lr_sweep() else { return Ok(()) };
    if lrs.is_empty() {
        return Err((at("lr_sweep"), "at least one learning rate is required".into()));
    }
    if !trains {
        return Err((at("lr_sweep"), "sweeps the stage's training: the stage needs a `train` block".into()));
    }
    for (i, &lr) in lrs.iter().enumerate() {
        if !(lr.is_finite() && lr > 0.0) {
            return Err((at(&format!("lr_sweep[{i}]")), format!("must be a positive learning rate (got {lr})")));
        }
        let rounded = round_lr(lr);
        if lrs[..i].iter().any(|&x| round_lr(x) == rounded) {
            return Err((at(&format!("lr_sweep[{i}]")), format!("{lr} appears twice (to four significant digits)")));
        }
    }
    Ok(())
}

impl StageSpec {
    /// How many seeds the entry trains (`seeds:`, default 1).
    pub fn seeds(&self) -> usize {
        match self {
            StageSpec::Prepare(s) => s.seeds,
            StageSpec::ScaleUp(s) => s.seeds,
            StageSpec::ScaleOut(s) => s.seeds,
            StageSpec::Baseline(s) => s.seeds,
            StageSpec::Sweep(s) => s.seeds,
        }
    }

    /// The entry's `lr_sweep:` as written (baselines and sweeps only).
    pub fn lr_sweep(&self) -> Option<&[f64]> {
        match self {
            StageSpec::Baseline(s) => s.lr_sweep.as_deref(),
            StageSpec::Sweep(s) => s.lr_sweep.as_deref(),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StageSpec::Prepare(_) => "prepare",
            StageSpec::ScaleUp(_) => "scale_up",
            StageSpec::ScaleOut(_) => "scale_out",
            StageSpec::Baseline(_) => "baseline",
            StageSpec::Sweep(_) => "sweep",
        }
    }

    /// The entry's own `train:` block, if it has one.
    pub fn train(&self) -> Option<&TrainBlock> {
        match self {
            StageSpec::Prepare(s) => s.train.as_ref(),
            StageSpec::ScaleUp(s) => s.train.as_ref(),
            StageSpec::ScaleOut(s) => s.train.as_ref(),
            StageSpec::Baseline(s) => s.train.as_ref(),
            StageSpec::Sweep(s) => s.train.as_ref(),
        }
    }

    /// Stage names this entry defines: its own, then (for a sweep) one per variant.
    pub fn names(&self) -> Vec<String> {
        match self {
            StageSpec::Prepare(s) => vec![s.name.clone()],
            StageSpec::ScaleUp(s) => vec![s.name.clone()],
            StageSpec::ScaleOut(s) => vec![s.name.clone()],
            StageSpec::Baseline(s) => vec![s.name.clone()],
            StageSpec::Sweep(s) => {
                let mut v = vec![s.name.clone()];
                v.extend(s.variants.iter().map(|var| variant_name(&s.name, var)));
                v
            }
        }
    }
}

/// Default stage name of a sweep variant: `<sweep>-<method>`, plus the preset when it is not `fpi`.
pub fn variant_name(sweep: &str, v: &SweepVariant) -> String {
    if let Some(n) = &v.name {
        return n.clone();
    }
    let mut s = format!("{sweep}-{}", enum_str(&v.method));
    if v.preset != Preset::Fpi {
        s.push('-');
        s.push_str(&enum_str(&v.preset));
    }
    s
}

/// The serde name of a unit enum value (`aki-pro`, `fpi-scaled`, ...).
pub fn enum_str<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Stage names become folder names: keep them portable.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("stage name {name:?} must be 1-64 characters of letters, digits, '-' or '_'"))
    }
}

/// serde_yaml prefixes some messages with the same path serde_path_to_error reports (and appends
/// " at line L column C", which is worth keeping): drop the duplicate prefix.
fn clean_message(msg: &str, path: &str) -> String {
    let msg = msg.trim();
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => rest.to_string(),
        _ => msg.to_string(),
    }
}

/// A learning rate rounded to four significant digits, so that `lr / 3` is written, named and
/// used as the same number (0.001, not 0.0010000000000000002). (Here rather than in `runs`, which
/// needs the engine, because the file's validation compares sweep points with it.)
pub fn round_lr(lr: f64) -> f64 {
    format!("{lr:.3e}").parse().unwrap_or(lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: tiny
seed: 3
train: {seq_len: 64, micro_batch: 4, lr: 0.003}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.5}}
      tokenizer: {train: {vocab_size: 512}}
      model: {init: {config: {hidden_size: 32, num_hidden_layers: 2}}}
      train: {total_tokens: 10000}
  - sweep:
      name: up
      target: {hidden_size: 64}
      variants:
        - {method: aki-pro}
        - {method: fpi, preset: fpi-scaled}
      train: {total_tokens: 5000, lr: 0.001}
  - scale_out:
      name: moe
      from: up-fpi-fpi-scaled
      experts: 4
      top_k: 2
      train: {total_tokens: 5000}
  - baseline: {name: moe-scratch, of: moe}
"#;

    fn err(text: &str) -> String {
        PipelineFile::parse(text, "p.yaml").unwrap_err().to_string()
    }

    #[test]
    fn parses_a_complete_file_with_defaults() {
        let p = PipelineFile::parse(GOOD, "p.yaml").unwrap();
        assert_eq!(p.stages.len(), 4);
        let StageSpec::ScaleOut(s) = &p.stages[2] else { panic!() };
        assert_eq!(s.router_std, 0.02);
        assert_eq!(s.granularity, 1);
        let StageSpec::Sweep(sw) = &p.stages[1] else { panic!() };
        assert_eq!(sw.variants[0].preset, Preset::Fpi);
        assert_eq!(p.stages[1].names(), vec!["up", "up-aki-pro", "up-fpi-fpi-scaled"]);
        let merged = sw.train.as_ref().unwrap().over(&p.train).config("train").unwrap();
        assert_eq!((merged.total_tokens, Some(merged.lr), Some(merged.seq_len)), (Some(5000), Some(0.001), Some(64)));
    }

    #[test]
    fn unknown_variant_names_the_yaml_path_and_the_choices() {
        let bad = GOOD.replace("{method: aki-pro}", "{method: akii}");
        let e = err(&bad);
        assert!(e.starts_with("p.yaml: stages[1].sweep.variants[0].method: unknown variant `akii`"), "{e}");
        assert!(e.contains("aki-pro"), "{e}");
    }

    #[test]
    fn unknown_key_names_the_yaml_path() {
        let bad = GOOD.replace("experts: 4", "experts: 4\n      topk: 2");
        let e = err(&bad);
        assert!(e.starts_with("p.yaml: stages[2].scale_out.topk: unknown field `topk`, expected one of"), "{e}");
        let bad = GOOD.replace("seed: 3", "seeds: 3");
        assert!(err(&bad).contains("unknown field `seeds`"));
        let bad = GOOD.replace("corpus: {builtin:", "corpus: {bultin:");
        let e = err(&bad);
        assert!(e.starts_with("p.yaml: stages[0].prepare.corpus.bultin: unknown field `bultin`"), "{e}");
        let bad = GOOD.replace("  - baseline: {name: moe-scratch, of: moe}", "  - {}");
        assert!(err(&bad).contains("stages[3]: expected exactly one of: prepare, scale_up"), "{}", err(&bad));
    }

    #[test]
    fn wrong_type_names_the_yaml_path() {
        let bad = GOOD.replace("top_k: 2", "top_k: two");
        let e = err(&bad);
        assert!(e.starts_with("p.yaml: stages[2].scale_out.top_k: invalid type"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_yaml_path() {
        let e = err(&GOOD.replace("from: up-fpi-fpi-scaled", "from: upp"));
        assert!(e.contains("stages[2].scale_out.from: no earlier stage named \"upp\""), "{e}");
        let e = err(&GOOD.replace("top_k: 2", "top_k: 5"));
        assert!(e.contains("stages[2].scale_out.top_k: must be between 1 and experts (4)"), "{e}");
        let e = err(&GOOD.replace("name: moe\n", "name: base\n"));
        assert!(e.contains("stages[2].scale_out.name: duplicate stage name \"base\""), "{e}");
        let e = err(&GOOD.replace("{name: moe-scratch, of: moe}", "{name: s, of: moe, train: {tokens: 5}}"));
        assert!(e.contains("stages[3].baseline.train.tokens"), "{e}");
        let e = err(&GOOD.replace("{name: moe-scratch, of: moe}", "{name: s, of: moe, train: {total_tokens: 5}}"));
        assert!(e.contains("stages[3].baseline.train.total_tokens: a baseline's tokens follow"), "{e}");
        let e = err(&GOOD.replace("name: moe\n", "name: m/o\n"));
        assert!(e.contains("must be 1-64 characters"), "{e}");
    }

    #[test]
    fn seeds_and_learning_rate_sweeps_are_checked() {
        let baseline = "{name: moe-scratch, of: moe}";
        let e = err(&GOOD.replace(baseline, "{name: moe-scratch, of: moe, seeds: 0}"));
        assert_eq!(e, "p.yaml: stages[3].baseline.seeds: must be at least 1");
        let e = err(&GOOD.replace(baseline, "{name: moe-scratch, of: moe, lr_sweep: []}"));
        assert_eq!(e, "p.yaml: stages[3].baseline.lr_sweep: at least one learning rate is required");
        let e = err(&GOOD.replace(baseline, "{name: moe-scratch, of: moe, lr_sweep: [0.001, -0.1]}"));
        assert_eq!(e, "p.yaml: stages[3].baseline.lr_sweep[1]: must be a positive learning rate (got -0.1)");
        let e = err(&GOOD.replace(baseline, "{name: moe-scratch, of: moe, lr_sweep: [0.001, 0.0010000001]}"));
        assert!(e.starts_with("p.yaml: stages[3].baseline.lr_sweep[1]: 0.0010000001 appears twice"), "{e}");
        let e = err(&GOOD.replace("      train: {total_tokens: 5000}\n  - baseline", "      seeds: 2\n  - baseline"));
        assert!(e.starts_with("p.yaml: stages[2].scale_out.seeds: repeats the stage's training: the stage needs a `train` block"), "{e}");
        let e = err(&GOOD.replace(baseline, "{name: moe-scratch, of: moe, lr_sweep: 0.001}"));
        assert!(e.starts_with("p.yaml: stages[3].baseline.lr_sweep: invalid type"), "{e}");
        let ok = GOOD.replace(baseline, "{name: moe-scratch, of: moe, lr_sweep: [1e-3, 3e-3, 1e-2], seeds: 3}");
        let p = PipelineFile::parse(&ok, "p.yaml").unwrap();
        assert_eq!((p.stages[3].lr_sweep(), p.stages[3].seeds()), (Some(&[1e-3, 3e-3, 1e-2][..]), 3));
        assert_eq!((p.stages[2].lr_sweep(), p.stages[2].seeds()), (None, 1));
    }

    #[test]
    fn old_train_keys_name_the_new_key_and_the_yaml_path() {
        let e = err(&GOOD.replace("lr: 0.001}", "lr: 0.001, warmup: 5}"));
        assert_eq!(e, "p.yaml: stages[1].sweep.train.warmup: renamed: the trainer's key is `warmup_steps`");
        let e = err(&GOOD.replace("lr: 0.003}", "lr: 0.003, grad_clip: 1.0}"));
        assert_eq!(e, "p.yaml: train.grad_clip: renamed: the trainer's key is `clip`");
        let e = err(&GOOD.replace("train: {total_tokens: 10000}", "train: {tokens: 10000}"));
        assert!(e.starts_with("p.yaml: stages[0].prepare.train.tokens: renamed: the trainer's key is `total_tokens`"), "{e}");
        let e = err(&GOOD.replace("lr: 0.003}", "lr: 0.003, output: x}"));
        assert!(e.starts_with("p.yaml: train.output: set by the pipeline itself"), "{e}");
        let e = err(&GOOD.replace("lr: 0.003}", "lr: 0.003, schedule: cosin}"));
        assert!(e.starts_with("p.yaml: train.schedule: unknown variant `cosin`"), "{e}");
    }

    #[test]
    fn first_stage_must_prepare() {
        let text = "stages:\n  - baseline: {name: b, of: a}\n";
        assert!(err(text).contains("stages[0]: the first stage must be `prepare`"));
        assert!(err("stages: []\n").contains("at least one stage"));
    }
}
