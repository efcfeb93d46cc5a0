//! The pure planning step: a pipeline file becomes the ordered list of stages that run (sweeps
//! expanded into their variants), each with its source and fully resolved settings. Nothing is
//! read or written here, so what a file means can be tested without running anything.

use anyhow::{anyhow, bail, Result};
use escale_grow::scale_out::{MoeFormat, RouterInit};
use escale_grow::scale_up::{DepthMethod, Method, Preset};
use escale_train::TrainConfig;
use serde::Serialize;

use crate::manifest::StageKind;
use crate::runs::{default_sweep, lr_tag, lr_text, replica_seed, round_lr, RunOf};
use crate::schema::{
    check_name, enum_str, variant_name, BaselineBudget, BaselineSpec, ModelSpec, PipelineFile, PrepareSpec,
    ScaleOutSpec, StageSpec, SweepSpec, TargetSpec, TrainBlock,
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

/// Another seed of a prepare stage: the same starting model (initialised again with `init_seed`
/// when it was random) trained on the same data in another order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReseedWork {
    /// Seed of the new initialisation (a model initialised at random).
    pub init_seed: Option<u64>,
    /// The starting model (a model loaded `from` a folder; relative to the pipeline file).
    pub from: Option<std::path::PathBuf>,
}

/// The choice among the runs of a learning-rate sweep: the stage that holds the chosen run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SelectWork {
    /// The runs (stage names) it chooses from.
    pub runs: Vec<String>,
}

/// What one planned stage does.
#[derive(Clone, Debug, Serialize)]
pub enum Work {
    Prepare(Box<PrepareSpec>),
    ScaleUp(UpSettings),
    ScaleOut(OutSettings),
    Baseline(BaselineWork),
    Reseed(ReseedWork),
    Select(SelectWork),
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
    /// Set on each run of a stage trained more than once (learning-rate points, seeds).
    pub run_of: Option<RunOf>,
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

/// The learning-rate schedule and data-order seed of a stage.
struct Schedule {
    lr: f64,
    min_lr: f64,
    seed: u64,
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
                out.extend(planner.repeated(planner.prepare(p)?, None, p.seeds)?);
                sources.previous = Some(Ok(p.name.clone()));
            }
            StageSpec::ScaleUp(s) => {
                let source = sources.resolve(&s.from, &at)?;
                let settings = up_settings(s.method, s.preset, s.depth, planner.seed(s.seed), &s.target);
                let stage = planner.scale_up(&s.name, source, None, settings, &s.train)?;
                out.extend(planner.repeated(stage, None, s.seeds)?);
                sources.previous = Some(Ok(s.name.clone()));
            }
            StageSpec::Sweep(s) => {
                let source = sources.resolve(&s.from, &at)?;
                for variant in planner.sweep(s, source)? {
                    let points = variant.train.as_ref().map(|t| sweep_points(s.lr_sweep.as_deref(), t.lr));
                    out.extend(planner.repeated(variant, points, s.seeds)?);
                }
                sources.sweeps.push(s.name.clone());
                sources.previous = Some(Err(s.name.clone()));
            }
            StageSpec::ScaleOut(s) => {
                let source = sources.resolve(&s.from, &at)?;
                out.extend(planner.repeated(planner.scale_out(s, source)?, None, s.seeds)?);
                sources.previous = Some(Ok(s.name.clone()));
            }
            StageSpec::Baseline(b) => {
                if sources.sweeps.contains(&b.of) {
                    bail!("{at}.of: {:?} is a sweep; name one of its variants", b.of);
                }
                let stage = planner.baseline(b);
                let points = sweep_points(b.lr_sweep.as_deref(), planner.schedule(&stage)?.lr);
                out.extend(planner.repeated(stage, Some(points), b.seeds)?);
            }
        }
    }
    check_run_names(file, &out)?;
    Ok(out)
}

/// The learning rates of a sweep: the file's (rounded to four significant digits, increasing), or
/// the default spread around the stage's `lr`.
fn sweep_points(lr_sweep: Option<&[f64]>, lr: f64) -> Vec<f64> {
    let mut lrs: Vec<f64> = match lr_sweep {
        Some(v) => v.iter().map(|&x| round_lr(x)).collect(),
        None => default_sweep(lr),
    };
    lrs.sort_by(f64::total_cmp);
    lrs
}

/// Run names are made from stage names: they must still be valid folder names and must not
/// collide with a stage of the file.
fn check_run_names(file: &PipelineFile, stages: &[PlannedStage]) -> Result<()> {
    for (i, s) in stages.iter().enumerate() {
        let at = || format!("stages[{}].{}", s.index, file.stages[s.index].kind());
        if let Err(msg) = check_name(&s.name) {
            bail!("{}: run {:?}: {msg} (a shorter stage name leaves room for the run's suffix)", at(), s.name);
        }
        if stages[..i].iter().any(|t| t.name == s.name) {
            bail!("{}: run {:?} (a learning-rate point or seed) has the name of another stage", at(), s.name);
        }
    }
    Ok(())
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
        PlannedStage {
            name: name.to_string(),
            kind,
            index: self.index,
            source,
            sweep: None,
            method,
            work,
            train: None,
            run_of: None,
        }
    }

    /// The peak and final learning rates and the data-order seed `stage` trains with.
    fn schedule(&self, stage: &PlannedStage) -> Result<Schedule> {
        let cfg = match (&stage.work, &stage.train) {
            // A baseline's token budget is known only when it runs; its schedule is known now.
            (Work::Baseline(b), _) => resolve_train(&b.train.clone().with("total_tokens", 1), self.file, self.index, self.at)?,
            (_, Some(t)) => t.clone(),
            (_, None) => bail!("{}: stage {:?} does not train", self.at, stage.name),
        };
        Ok(Schedule { lr: cfg.lr, min_lr: cfg.min_lr, seed: cfg.seed })
    }

    /// `stage` expanded into its runs: one per learning rate of `lrs` (the stage's own when
    /// `None`) and seed. A stage trained once stays as it is; with seeds alone the stage is its
    /// own first seed, followed by the others (`<name>-s1`, ...); with several learning rates every
    /// run is named after its point (`<name>-lr1e-3`, `<name>-lr1e-3-s1`, ...) and a selection
    /// stage with the stage's name follows them.
    fn repeated(&self, stage: PlannedStage, lrs: Option<Vec<f64>>, seeds: usize) -> Result<Vec<PlannedStage>> {
        let trains = stage.train.is_some() || matches!(stage.work, Work::Baseline(_));
        if !trains || (seeds <= 1 && lrs.as_ref().is_none_or(|v| v.len() <= 1)) {
            return match lrs.as_deref() {
                Some(&[lr]) => Ok(vec![self.run(&stage, lr, 0)?]),
                _ => Ok(vec![stage]),
            };
        }
        let sweep = lrs.as_ref().is_some_and(|v| v.len() > 1);
        let lrs = match lrs {
            Some(v) => v,
            None => vec![self.schedule(&stage)?.lr],
        };
        let mut runs = Vec::new();
        for &lr in &lrs {
            for k in 0..seeds.max(1) {
                let mut run = self.run(&stage, lr, k)?;
                run.run_of = Some(RunOf { stage: stage.name.clone(), lr, seed_index: k });
                let seed_suffix = if seeds > 1 { format!("-s{k}") } else { String::new() };
                if sweep {
                    run.name = format!("{}-lr{}{seed_suffix}", stage.name, lr_tag(lr));
                    run.method = format!("{}, lr {}", stage.method, lr_text(lr));
                } else if k > 0 {
                    run.name = format!("{}{seed_suffix}", stage.name);
                }
                if seeds > 1 {
                    run.method.push_str(&format!(", seed {}/{seeds}", k + 1));
                }
                runs.push(run);
            }
        }
        if sweep {
            let names = runs.iter().map(|r| r.name.clone()).collect();
            let method = format!("{}, best of lr {}", stage.method, lrs.iter().map(|&x| lr_text(x)).collect::<Vec<_>>().join(" / "));
            runs.push(PlannedStage { method, work: Work::Select(SelectWork { runs: names }), train: None, ..stage });
        }
        Ok(runs)
    }

    /// One run of `stage`: its whole learning-rate schedule scaled to peak at `lr`, and its `k`-th
    /// seed (data order; the initialisation of a model trained from scratch).
    fn run(&self, stage: &PlannedStage, lr: f64, k: usize) -> Result<PlannedStage> {
        let base = self.schedule(stage)?;
        let min_lr = round_lr(base.min_lr * lr / base.lr);
        let mut run = stage.clone();
        if let Some(t) = &mut run.train {
            if lr != base.lr {
                (t.lr, t.min_lr) = (lr, min_lr);
            }
            t.seed = replica_seed(t.seed, k);
        }
        match &mut run.work {
            Work::Baseline(b) => {
                if lr != base.lr {
                    b.train = b.train.clone().with("lr", lr).with("min_lr", min_lr);
                }
                if k > 0 {
                    b.train = b.train.clone().with("seed", replica_seed(base.seed, k));
                    b.seed = replica_seed(b.seed, k);
                }
            }
            Work::Prepare(p) if k > 0 => {
                // The data and, for `from`, the starting model are the first seed's.
                let (init_seed, from) = match &p.model {
                    ModelSpec::Init(_) => (Some(replica_seed(self.file.seed, k)), None),
                    ModelSpec::From(m) => (None, Some(m.clone())),
                };
                run.work = Work::Reseed(ReseedWork { init_seed, from });
                run.source = Some(stage.name.clone());
            }
            _ => {}
        }
        Ok(run)
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

    fn names(p: &[PlannedStage]) -> Vec<&str> {
        p.iter().map(|s| s.name.as_str()).collect()
    }

    fn stage<'p>(p: &'p [PlannedStage], name: &str) -> &'p PlannedStage {
        p.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no stage {name}"))
    }

    #[test]
    fn plan_expands_sweeps_and_resolves_settings() {
        let file = PipelineFile::parse(FILE, "p.yaml").unwrap();
        let p = plan(&file).unwrap();
        // The trainer's default lr 3e-4: variants and baseline are swept over 1e-4, 3e-4, 9e-4.
        assert_eq!(
            names(&p),
            [
                "base",
                "up-aki-pro-lr1e-4", "up-aki-pro-lr3e-4", "up-aki-pro-lr9e-4", "up-aki-pro",
                "up-fpi-lr1e-4", "up-fpi-lr3e-4", "up-fpi-lr9e-4", "up-fpi",
                "moe",
                "moe-scratch-lr1e-4", "moe-scratch-lr3e-4", "moe-scratch-lr9e-4", "moe-scratch",
            ]
        );
        assert_eq!(stage(&p, "up-aki-pro-lr1e-4").source.as_deref(), Some("base"));
        assert_eq!(stage(&p, "up-fpi").sweep.as_deref(), Some("up"));
        let t = p[0].train.as_ref().unwrap();
        assert_eq!((t.total_tokens.unwrap(), t.seq_len, t.micro_batch), (6400, 32, 2));
        // 100 steps: five evaluations and eight checkpoints by default.
        assert_eq!((t.eval_interval, t.save_interval), (20, 12));
        assert_eq!(t.seed, 5);
        let moe = stage(&p, "moe");
        assert_eq!(moe.train.as_ref().unwrap().seed, 7);
        let Work::ScaleOut(o) = &moe.work else { panic!() };
        assert_eq!((o.experts, o.top_k, o.aux_loss_coef), (4, 2, TrainConfig::default().aux_loss_coef));
    }

    #[test]
    fn sweep_points_scale_the_schedule_and_share_the_seed() {
        let file = PipelineFile::parse(FILE, "p.yaml").unwrap();
        let p = plan(&file).unwrap();
        let d = TrainConfig::default();
        for (name, lr) in [("up-fpi-lr1e-4", 1e-4), ("up-fpi-lr3e-4", 3e-4), ("up-fpi-lr9e-4", 9e-4)] {
            let s = stage(&p, name);
            let t = s.train.as_ref().unwrap();
            assert_eq!(t.lr, lr);
            assert!((t.min_lr / t.lr - 0.1).abs() < 1e-12, "the whole schedule is scaled");
            assert_eq!(t.seed, 6, "every point reads the data in the same order");
            assert_eq!(s.run_of, Some(RunOf { stage: "up-fpi".into(), lr, seed_index: 0 }));
            assert_eq!(t.warmup_steps, d.warmup_steps);
        }
        let select = stage(&p, "up-fpi");
        let Work::Select(sel) = &select.work else { panic!("{:?}", select.work) };
        assert_eq!(sel.runs, ["up-fpi-lr1e-4", "up-fpi-lr3e-4", "up-fpi-lr9e-4"]);
        assert!(select.train.is_none() && select.run_of.is_none());
        // A baseline's points differ in its train block (its budget is known only when it runs).
        let Work::Baseline(b) = &stage(&p, "moe-scratch-lr9e-4").work else { panic!() };
        let cfg = resolve_train(&b.train.clone().with("total_tokens", 64), &file, 3, "").unwrap();
        assert_eq!((cfg.lr, cfg.min_lr, cfg.seed), (9e-4, 9e-5, 8));
        let Work::Baseline(center) = &stage(&p, "moe-scratch-lr3e-4").work else { panic!() };
        assert!(!center.train.has("lr"), "the stage's own lr leaves its block (and key) as it was");
    }

    #[test]
    fn seeds_repeat_a_stage_and_a_single_rate_is_no_sweep() {
        let text = FILE
            .replace("train: {total_tokens: 6400}", "train: {total_tokens: 6400}\n      seeds: 2")
            .replace("train: {total_tokens: 3200}}", "train: {total_tokens: 3200}, seeds: 3}")
            .replace("{name: moe-scratch, of: moe}", "{name: moe-scratch, of: moe, lr_sweep: [0.001]}")
            .replace("variants: [{method: aki-pro}, {method: fpi}]", "variants: [{method: fpi}]\n      lr_sweep: [0.001]");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        let p = plan(&file).unwrap();
        assert_eq!(names(&p), ["base", "base-s1", "up-fpi", "moe", "moe-s1", "moe-s2", "moe-scratch"]);
        // The first seed is the stage itself; the others derive their seeds from it.
        let seeds: Vec<u64> = ["moe", "moe-s1", "moe-s2"].iter().map(|n| stage(&p, n).train.as_ref().unwrap().seed).collect();
        assert_eq!(seeds, [7, replica_seed(7, 1), replica_seed(7, 2)]);
        assert_eq!(stage(&p, "moe-s2").run_of, Some(RunOf { stage: "moe".into(), lr: 3e-4, seed_index: 2 }));
        let again = stage(&p, "base-s1");
        let Work::Reseed(r) = &again.work else { panic!() };
        assert_eq!((r.init_seed, again.source.as_deref()), (Some(replica_seed(5, 1)), Some("base")));
        assert_ne!(again.train.as_ref().unwrap().seed, p[0].train.as_ref().unwrap().seed);
        assert_eq!(stage(&p, "up-fpi").train.as_ref().unwrap().lr, 0.001, "one learning rate: trained at it, no sweep");
        let Work::Baseline(b) = &stage(&p, "moe-scratch").work else { panic!() };
        assert!(b.train.has("lr"));
    }

    #[test]
    fn run_names_must_not_collide_with_stages() {
        let text = FILE.replace("{name: moe-scratch, of: moe}", "{name: moe-scratch, of: moe}\n  - baseline: {name: moe-scratch-lr1e-4, of: moe}");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        let e = plan(&file).unwrap_err().to_string();
        assert!(e.starts_with("stages[4].baseline: run \"moe-scratch-lr1e-4\""), "{e}");
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
        let Work::Baseline(b) = &stage(&p, "moe-scratch-lr1e-2").work else { panic!() };
        assert!(!b.train.has("total_tokens"), "its budget comes from FLOPs");
        assert!(b.train.has("lr"));
        let cfg = resolve_train(&b.train.clone().with("total_tokens", 640), &file, 3, "stages[3].baseline").unwrap();
        assert_eq!((cfg.lr, cfg.seq_len, cfg.seed), (0.01, 32, 8));
    }

    #[test]
    fn the_example_pipeline_plans() {
        let text = include_str!("../../../examples/own-checkpoint.yaml");
        let file = PipelineFile::parse(text, "own-checkpoint.yaml").unwrap();
        let names: Vec<String> = plan(&file).unwrap().into_iter().filter(|s| s.run_of.is_none()).map(|s| s.name).collect();
        assert_eq!(names, ["source", "up-aki-pro", "up-exact", "moe", "moe-scratch"]);
    }
}
