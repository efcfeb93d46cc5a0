//! The pure planning step: a pipeline file becomes the ordered list of stages that run (sweeps
//! expanded into their variants), each with its source and fully resolved settings. Nothing is
//! read or written here, so what a file means can be tested without running anything.

use anyhow::{anyhow, bail, Result};
use escale_grow::scale_out::{MoeFormat, RouterInit};
use escale_grow::scale_up::{DepthMethod, Method, Preset};
use escale_train::TrainConfig;
use serde::Serialize;

use crate::manifest::StageKind;
use crate::schema::{
    enum_str, variant_name, BaselineBudget, BaselineSpec, ModelSpec, PipelineFile, PrepareSpec, ScaleOutSpec,
    StageSpec, SweepSpec, TargetSpec, TrainBlock,
};

/// Resolved settings of a Scale-Up (hashed into the stage key, so every field matters).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpSettings {
    pub method: Method,
    pub preset: Preset,
    pub depth: Option<DepthMethod>,
    pub seed: u64,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_hidden_layers: Option<usize>,
}

/// Resolved settings of a Scale-Out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutSettings {
    pub experts: usize,
    pub top_k: usize,
    pub router_init: RouterInit,
    pub router_std: f64,
    pub format: Option<MoeFormat>,
    pub granularity: usize,
    pub shared_experts: usize,
    pub seed: u64,
    /// Load-balancing coefficient written into config.json (the trainer uses the same value).
    pub aux_loss_coef: f64,
}

/// A from-scratch baseline: its token budget follows from FLOPs measured at run time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselineWork {
    pub budget: BaselineBudget,
    pub seed: u64,
    /// Its own train block over the block of the stage it is compared with (the file's block and
    /// the budget's tokens are added when it runs).
    pub train: TrainBlock,
}

/// What one planned stage does.
#[derive(Clone, Debug, Serialize)]
pub enum Work {
    Prepare(Box<PrepareSpec>),
    ScaleUp(UpSettings),
    ScaleOut(OutSettings),
    Baseline(BaselineWork),
}

/// A stage of the plan.
#[derive(Clone, Debug)]
pub struct PlannedStage {
    pub name: String,
    pub kind: StageKind,
    /// Position of the file's entry that defines it (`stages[index]`).
    pub index: usize,
    /// The stage it grows from (for a baseline: the one it is compared with).
    pub source: Option<String>,
    /// The sweep it is a variant of.
    pub sweep: Option<String>,
    /// One line saying what it does (the report's "method" column).
    pub method: String,
    pub work: Work,
    /// Training settings, model and data paths still unset (a baseline's are resolved when it runs).
    pub train: Option<TrainConfig>,
}

/// Resolves a stage's training settings: the stage's block over the file's, over the trainer's
/// defaults, plus the defaults that depend on the stage (`at` is the entry's YAML path).
pub fn resolve_train(block: &TrainBlock, file: &PipelineFile, index: usize, at: &str) -> Result<TrainConfig> {
    let block = block.over(&file.train);
    let mut cfg = block.config(&format!("{at}.train")).map_err(|(path, msg)| anyhow!("{path}: {msg}"))?;
    let tokens = cfg.total_tokens.ok_or_else(|| anyhow!("{at}.train.total_tokens: required (the stage's token budget)"))?;
    let steps = tokens.div_ceil(cfg.tokens_per_step().max(1)).max(1);
    if !block.has("min_lr") {
        cfg.min_lr = cfg.lr * 0.1;
    }
    // Five evaluations and eight checkpoints per stage by default: enough validation points for
    // the figure at a modest cost, and a resume point never far behind.
    if !block.has("eval_interval") {
        cfg.eval_interval = (steps / 5).max(1);
    }
    if !block.has("save_interval") {
        cfg.save_interval = (steps / 8).max(1);
    }
    // The same held-out tokens as the transition measurements, so the curve joins them.
    if !block.has("eval_tokens") {
        cfg.eval_tokens = file.eval.tokens;
    }
    if !block.has("seed") {
        cfg.seed = stage_seed(file, index);
    }
    Ok(cfg)
}

/// The seed of the file's entry `index` when it sets none.
fn stage_seed(file: &PipelineFile, index: usize) -> u64 {
    file.seed.wrapping_add(index as u64)
}

/// Tracks which stage a `from`-less entry grows from while the file is walked.
#[derive(Default)]
struct Sources {
    /// The previous stage, or the sweep that makes "previous" ambiguous.
    previous: Option<Result<String, String>>,
    sweeps: Vec<String>,
}

impl Sources {
    fn resolve(&self, from: &Option<String>, at: &str) -> Result<String> {
        match (from, &self.previous) {
            (Some(f), _) if self.sweeps.contains(f) => Err(anyhow!("{at}.from: {f:?} is a sweep; name one of its variants")),
            (Some(f), _) => Ok(f.clone()),
            (None, Some(Ok(p))) => Ok(p.clone()),
            (None, Some(Err(sweep))) => {
                Err(anyhow!("{at}.from: required after the sweep {sweep:?} (name one of its variants)"))
            }
            (None, None) => Err(anyhow!("{at}.from: no earlier stage")),
        }
    }
}

/// Expands the file into the ordered list of stages, resolving sources and settings.
pub fn plan(file: &PipelineFile) -> Result<Vec<PlannedStage>> {
    let mut out: Vec<PlannedStage> = Vec::new();
    let mut sources = Sources::default();
    for (index, entry) in file.stages.iter().enumerate() {
        let at = format!("stages[{index}].{}", entry.kind());
        let planner = EntryPlanner { file, index, at: &at };
        match entry {
            StageSpec::Prepare(p) => {
                out.push(planner.prepare(p)?);
                sources.previous = Some(Ok(p.name.clone()));
            }
            StageSpec::ScaleUp(s) => {
                let source = sources.resolve(&s.from, &at)?;
                let settings = up_settings(s.method, s.preset, s.depth, planner.seed(s.seed), &s.target);
                out.push(planner.scale_up(&s.name, source, None, settings, &s.train)?);
                sources.previous = Some(Ok(s.name.clone()));
            }
            StageSpec::Sweep(s) => {
                let source = sources.resolve(&s.from, &at)?;
                out.extend(planner.sweep(s, source)?);
                sources.sweeps.push(s.name.clone());
                sources.previous = Some(Err(s.name.clone()));
            }
            StageSpec::ScaleOut(s) => {
                let source = sources.resolve(&s.from, &at)?;
                out.push(planner.scale_out(s, source)?);
                sources.previous = Some(Ok(s.name.clone()));
            }
            StageSpec::Baseline(b) => {
                if sources.sweeps.contains(&b.of) {
                    bail!("{at}.of: {:?} is a sweep; name one of its variants", b.of);
                }
                out.push(planner.baseline(b));
            }
        }
    }
    Ok(out)
}

/// Plans the stages of one entry of the file.
struct EntryPlanner<'a> {
    file: &'a PipelineFile,
    index: usize,
    at: &'a str,
}

impl EntryPlanner<'_> {
    fn seed(&self, seed: Option<u64>) -> u64 {
        seed.unwrap_or_else(|| stage_seed(self.file, self.index))
    }

    fn train(&self, block: &Option<TrainBlock>) -> Result<Option<TrainConfig>> {
        block.as_ref().map(|b| resolve_train(b, self.file, self.index, self.at)).transpose()
    }

    fn stage(&self, name: &str, kind: StageKind, source: Option<String>, method: String, work: Work) -> PlannedStage {
        PlannedStage { name: name.to_string(), kind, index: self.index, source, sweep: None, method, work, train: None }
    }

    fn prepare(&self, p: &PrepareSpec) -> Result<PlannedStage> {
        let method = match &p.model {
            ModelSpec::Init(_) => "random init (from scratch)".into(),
            ModelSpec::From(path) => format!("from {}", path.display()),
        };
        let stage = self.stage(&p.name, StageKind::Prepare, None, method, Work::Prepare(Box::new(p.clone())));
        Ok(PlannedStage { train: self.train(&p.train)?, ..stage })
    }

    fn scale_up(
        &self,
        name: &str,
        source: String,
        sweep: Option<&str>,
        settings: UpSettings,
        train: &Option<TrainBlock>,
    ) -> Result<PlannedStage> {
        let method = up_description(&settings);
        let stage = self.stage(name, StageKind::ScaleUp, Some(source), method, Work::ScaleUp(settings));
        Ok(PlannedStage { sweep: sweep.map(str::to_string), train: self.train(train)?, ..stage })
    }

    fn sweep(&self, s: &SweepSpec, source: String) -> Result<Vec<PlannedStage>> {
        let seed = self.seed(s.seed);
        s.variants
            .iter()
            .map(|v| {
                let settings = up_settings(v.method, v.preset, v.depth, seed, &s.target);
                self.scale_up(&variant_name(&s.name, v), source.clone(), Some(&s.name), settings, &s.train)
            })
            .collect()
    }

    fn scale_out(&self, s: &ScaleOutSpec, source: String) -> Result<PlannedStage> {
        // The coefficient written into config.json is the one the trainer will use.
        let trainer = s.train.clone().unwrap_or_default().over(&self.file.train);
        let trainer = trainer.config(&format!("{}.train", self.at)).map_err(|(path, msg)| anyhow!("{path}: {msg}"))?;
        let settings = OutSettings {
            experts: s.experts,
            top_k: s.top_k,
            router_init: s.router_init,
            router_std: s.router_std,
            format: s.format,
            granularity: s.granularity,
            shared_experts: s.shared_experts,
            seed: self.seed(s.seed),
            aux_loss_coef: trainer.aux_loss_coef,
        };
        let granularity = if s.granularity > 1 { format!(", granularity {}", s.granularity) } else { String::new() };
        let method = format!(
            "{} experts top-{}, router {} (std {}){granularity}",
            s.experts,
            s.top_k,
            enum_str(&s.router_init),
            s.router_std
        );
        let stage = self.stage(&s.name, StageKind::ScaleOut, Some(source), method, Work::ScaleOut(settings));
        Ok(PlannedStage { train: self.train(&s.train)?, ..stage })
    }

    fn baseline(&self, b: &BaselineSpec) -> PlannedStage {
        // Training settings: those of the stage it is compared with, overridden by its own.
        let of_train = self.file.stages.iter().find_map(|s| compared_train_block(s, &b.of)).unwrap_or_default();
        let train = b.train.clone().unwrap_or_default().over(&of_train);
        let work = BaselineWork { budget: b.budget, seed: self.seed(b.seed), train };
        let method = format!("from scratch, {} FLOPs of {}", enum_str(&b.budget), b.of);
        self.stage(&b.name, StageKind::Baseline, Some(b.of.clone()), method, Work::Baseline(work))
    }
}

/// The train block the file gives stage `name` (a sweep's for its variants), without its token
/// budget: a baseline's tokens follow from FLOPs.
fn compared_train_block(s: &StageSpec, name: &str) -> Option<TrainBlock> {
    let block = match s {
        StageSpec::Prepare(p) if p.name == name => &p.train,
        StageSpec::ScaleUp(p) if p.name == name => &p.train,
        StageSpec::ScaleOut(p) if p.name == name => &p.train,
        StageSpec::Sweep(p) if s.names()[1..].iter().any(|n| n == name) => &p.train,
        _ => return None,
    };
    Some(block.clone().unwrap_or_default().without("total_tokens"))
}

/// Scale-up settings from a stage's (or sweep variant's) method and the shared target sizes.
fn up_settings(method: Method, preset: Preset, depth: Option<DepthMethod>, seed: u64, target: &TargetSpec) -> UpSettings {
    UpSettings {
        method,
        preset,
        depth,
        seed,
        hidden_size: target.hidden_size,
        intermediate_size: target.intermediate_size,
        num_attention_heads: target.num_attention_heads,
        num_hidden_layers: target.num_hidden_layers,
    }
}

fn up_description(s: &UpSettings) -> String {
    let mut d = format!("{}, preset {}", s.method.as_str(), enum_str(&s.preset));
    if let Some(depth) = s.depth {
        d.push_str(&format!(", depth {}", enum_str(&depth)));
    }
    d
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FILE: &str = r#"
seed: 5
train: {seq_len: 32, micro_batch: 2}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.1}}
      tokenizer: {train: {vocab_size: 300}}
      model: {init: {config: {hidden_size: 32}}}
      train: {total_tokens: 6400}
  - sweep:
      name: up
      target: {hidden_size: 64}
      variants: [{method: aki-pro}, {method: fpi}]
      train: {total_tokens: 3200}
  - scale_out: {name: moe, from: up-fpi, experts: 4, top_k: 2, train: {total_tokens: 3200}}
  - baseline: {name: moe-scratch, of: moe}
"#;

    #[test]
    fn plan_expands_sweeps_and_resolves_settings() {
        let file = PipelineFile::parse(FILE, "p.yaml").unwrap();
        let p = plan(&file).unwrap();
        let names: Vec<&str> = p.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["base", "up-aki-pro", "up-fpi", "moe", "moe-scratch"]);
        assert_eq!(p[1].source.as_deref(), Some("base"));
        assert_eq!(p[2].sweep.as_deref(), Some("up"));
        let t = p[0].train.as_ref().unwrap();
        assert_eq!((t.total_tokens.unwrap(), t.seq_len, t.micro_batch), (6400, 32, 2));
        // 100 steps: five evaluations and eight checkpoints by default.
        assert_eq!((t.eval_interval, t.save_interval), (20, 12));
        assert_eq!(t.seed, 5);
        assert_eq!(p[3].train.as_ref().unwrap().seed, 7);
        let Work::ScaleOut(o) = &p[3].work else { panic!() };
        assert_eq!((o.experts, o.top_k, o.aux_loss_coef), (4, 2, TrainConfig::default().aux_loss_coef));
    }

    #[test]
    fn a_stage_after_a_sweep_must_name_its_source() {
        let text = FILE.replace("{name: moe, from: up-fpi,", "{name: moe,");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        let e = plan(&file).unwrap_err().to_string();
        assert_eq!(e, "stages[2].scale_out.from: required after the sweep \"up\" (name one of its variants)");
        let text = FILE.replace("from: up-fpi,", "from: up,");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        assert!(plan(&file).unwrap_err().to_string().contains("\"up\" is a sweep"));
    }

    #[test]
    fn missing_token_budget_is_an_error_with_its_path() {
        let text = FILE.replace("train: {total_tokens: 6400}", "train: {lr: 0.01}");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        assert_eq!(
            plan(&file).unwrap_err().to_string(),
            "stages[0].prepare.train.total_tokens: required (the stage's token budget)"
        );
    }

    #[test]
    fn a_baseline_trains_like_the_stage_it_is_compared_with() {
        let text = FILE.replace("{name: moe-scratch, of: moe}", "{name: moe-scratch, of: moe, train: {lr: 0.01}}");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        let p = plan(&file).unwrap();
        let Work::Baseline(b) = &p[4].work else { panic!() };
        assert!(!b.train.has("total_tokens"), "its budget comes from FLOPs");
        assert!(b.train.has("lr"));
        let cfg = resolve_train(&b.train.clone().with("total_tokens", 640), &file, 3, "stages[3].baseline").unwrap();
        assert_eq!((cfg.lr, cfg.seq_len, cfg.seed), (0.01, 32, 8));
    }

    #[test]
    fn the_example_pipeline_plans() {
        let text = include_str!("../../../examples/own-checkpoint.yaml");
        let file = PipelineFile::parse(text, "own-checkpoint.yaml").unwrap();
        let names: Vec<String> = plan(&file).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["source", "up-aki-pro", "up-exact", "moe", "moe-scratch"]);
    }
}
