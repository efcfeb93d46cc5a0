//! Runs a pipeline: plans the stages, skips the finished ones, runs (or resumes) the rest, measures
//! every transition and writes the report.
//!
//! Layout of a run directory: one folder per stage (`<run>/<stage>/`) holding its inputs
//! (`grown/`, `init/`, ...), its training run (`train/`, with checkpoints and JSONL logs) and, last,
//! `stage.json` (the done marker, see [`crate::manifest`]); the report files sit at the top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::engine::{Engine, OutSettings, TrainJob, TrainSettings, UpSettings};
use crate::manifest::{
    check_stage, fingerprint_model, hash_json, write_atomic, write_record, DataPaths, StageKind, StageRecord, Verdict,
};
use crate::metrics::{read_curve, Curve};
use crate::report::{write_report, ReportFiles, Summary};
use crate::schema::{
    enum_str, variant_name, BaselineBudget, CorpusSpec, EvalSpec, ModelSpec, PipelineFile, PrepareSpec, StageSpec,
    TokenizerSpec, TrainSpec,
};

/// How to run a pipeline file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// Folder that relative paths in the pipeline file are relative to (the file's folder).
    pub base_dir: PathBuf,
    /// Progress bars (terminals).
    pub progress: bool,
}

/// A finished run.
pub struct RunOutcome {
    pub summary: Summary,
    pub files: ReportFiles,
    /// Stages found finished and skipped.
    pub skipped: Vec<String>,
}

/// What one planned stage does.
#[derive(Clone, Debug, Serialize)]
enum Work {
    Prepare(Box<PrepareSpec>),
    ScaleUp(UpSettings),
    ScaleOut(OutSettings),
    Baseline { budget: BaselineBudget, seed: u64 },
}

/// A stage of the plan (sweeps expanded into their variants).
#[derive(Clone, Debug)]
struct Planned {
    name: String,
    kind: StageKind,
    source: Option<String>,
    sweep: Option<String>,
    method: String,
    work: Work,
    train: Option<TrainSettings>,
    /// Training settings given for a baseline (its tokens come from the budget).
    baseline_train: Option<TrainSpec>,
}

/// Resolves a stage's training settings: stage values, then the file's, then the trainer's defaults.
fn resolve_train(spec: &TrainSpec, file: &PipelineFile, index: usize, at: &str) -> Result<TrainSettings> {
    let s = spec.over(&file.train);
    let d = crate::engine::trainer_defaults();
    let tokens = s.tokens.ok_or_else(|| anyhow!("{at}.train.tokens: required (the stage's token budget)"))?;
    let seq_len = s.seq_len.unwrap_or(d.seq_len);
    let micro_batch = s.micro_batch.unwrap_or(d.micro_batch);
    let grad_accum = s.grad_accum.unwrap_or(d.grad_accum);
    let steps = tokens.div_ceil((seq_len * micro_batch * grad_accum).max(1) as u64).max(1);
    // Eight checkpoints and five evaluations per stage by default: a resume point never far
    // behind, and enough validation points for the figure at a modest cost.
    let eighth = (steps / 8).max(1);
    let fifth = (steps / 5).max(1);
    let lr = s.lr.unwrap_or(d.lr);
    Ok(TrainSettings {
        tokens,
        seq_len,
        micro_batch,
        grad_accum,
        lr,
        min_lr: s.min_lr.unwrap_or(lr * 0.1),
        warmup: s.warmup.unwrap_or(d.warmup_steps),
        schedule: s.schedule.unwrap_or(crate::schema::Schedule::Cosine),
        weight_decay: s.weight_decay.unwrap_or(d.weight_decay),
        beta1: s.beta1.unwrap_or(d.beta1),
        beta2: s.beta2.unwrap_or(d.beta2),
        grad_clip: s.grad_clip.unwrap_or(d.clip),
        eval_interval: s.eval_interval.unwrap_or(fifth),
        // The same held-out tokens as the transition measurements, so the curve joins them.
        eval_tokens: s.eval_tokens.unwrap_or(file.eval.tokens),
        save_interval: s.save_interval.unwrap_or(eighth),
        keep_checkpoints: s.keep_checkpoints.unwrap_or(2),
        seed: s.seed.unwrap_or(file.seed.wrapping_add(index as u64)),
        aux_loss_coef: s.aux_loss_coef.unwrap_or(d.aux_loss_coef),
        z_loss_coef: s.z_loss_coef.unwrap_or(d.z_loss_coef),
        moe_loss: s.moe_loss.unwrap_or(crate::schema::MoeLossConvention::Megatron),
    })
}

/// Expands the file into the ordered list of stages, resolving sources and settings.
fn plan(file: &PipelineFile) -> Result<Vec<Planned>> {
    let mut out: Vec<Planned> = Vec::new();
    // The stage a `from`-less stage grows from, or the sweep that makes that ambiguous.
    let mut previous: Result<String, String> = Err(String::new());
    let mut sweeps: Vec<String> = Vec::new();
    let resolve_from = |from: &Option<String>, previous: &Result<String, String>, sweeps: &[String], at: &str| {
        match (from, previous) {
            (Some(f), _) if sweeps.contains(f) => {
                Err(anyhow!("{at}.from: {f:?} is a sweep; name one of its variants"))
            }
            (Some(f), _) => Ok(f.clone()),
            (None, Ok(p)) => Ok(p.clone()),
            (None, Err(sweep)) => Err(anyhow!("{at}.from: required after the sweep {sweep:?} (name one of its variants)")),
        }
    };
    for (i, stage) in file.stages.iter().enumerate() {
        let at = format!("stages[{i}].{}", stage.kind());
        let train = |t: &Option<TrainSpec>| -> Result<Option<TrainSettings>> {
            t.as_ref().map(|t| resolve_train(t, file, i, &at)).transpose()
        };
        let seed = |s: Option<u64>| s.unwrap_or(file.seed.wrapping_add(i as u64));
        match stage {
            StageSpec::Prepare(p) => {
                out.push(Planned {
                    name: p.name.clone(),
                    kind: StageKind::Prepare,
                    source: None,
                    sweep: None,
                    method: match &p.model {
                        ModelSpec::Init(_) => "random init (from scratch)".into(),
                        ModelSpec::From(path) => format!("from {}", path.display()),
                    },
                    work: Work::Prepare(Box::new(p.clone())),
                    train: train(&p.train)?,
                    baseline_train: None,
                });
                previous = Ok(p.name.clone());
            }
            StageSpec::ScaleUp(s) => {
                let source = resolve_from(&s.from, &previous, &sweeps, &at)?;
                let settings = up_settings(s.method, s.preset, s.depth, seed(s.seed), &s.target);
                out.push(Planned {
                    name: s.name.clone(),
                    kind: StageKind::ScaleUp,
                    source: Some(source),
                    sweep: None,
                    method: up_description(&settings),
                    work: Work::ScaleUp(settings),
                    train: train(&s.train)?,
                    baseline_train: None,
                });
                previous = Ok(s.name.clone());
            }
            StageSpec::Sweep(s) => {
                let source = resolve_from(&s.from, &previous, &sweeps, &at)?;
                for v in &s.variants {
                    let settings = up_settings(v.method, v.preset, v.depth, seed(s.seed), &s.target);
                    out.push(Planned {
                        name: variant_name(&s.name, v),
                        kind: StageKind::ScaleUp,
                        source: Some(source.clone()),
                        sweep: Some(s.name.clone()),
                        method: up_description(&settings),
                        work: Work::ScaleUp(settings),
                        train: train(&s.train)?,
                        baseline_train: None,
                    });
                }
                sweeps.push(s.name.clone());
                previous = Err(s.name.clone());
            }
            StageSpec::ScaleOut(s) => {
                let source = resolve_from(&s.from, &previous, &sweeps, &at)?;
                let t = train(&s.train)?;
                let aux = s
                    .train
                    .as_ref()
                    .and_then(|t| t.aux_loss_coef)
                    .or(file.train.aux_loss_coef)
                    .unwrap_or(crate::engine::trainer_defaults().aux_loss_coef);
                let settings = OutSettings {
                    experts: s.experts,
                    top_k: s.top_k,
                    router_init: s.router_init,
                    router_std: s.router_std,
                    format: s.format,
                    granularity: s.granularity,
                    shared_experts: s.shared_experts,
                    seed: seed(s.seed),
                    aux_loss_coef: aux,
                };
                out.push(Planned {
                    name: s.name.clone(),
                    kind: StageKind::ScaleOut,
                    source: Some(source),
                    sweep: None,
                    method: format!(
                        "{} experts top-{}, router {} (std {}){}",
                        s.experts,
                        s.top_k,
                        enum_str(&s.router_init),
                        s.router_std,
                        if s.granularity > 1 { format!(", granularity {}", s.granularity) } else { String::new() }
                    ),
                    work: Work::ScaleOut(settings),
                    train: t,
                    baseline_train: None,
                });
                previous = Ok(s.name.clone());
            }
            StageSpec::Baseline(b) => {
                if sweeps.contains(&b.of) {
                    bail!("{at}.of: {:?} is a sweep; name one of its variants", b.of);
                }
                out.push(Planned {
                    name: b.name.clone(),
                    kind: StageKind::Baseline,
                    source: Some(b.of.clone()),
                    sweep: None,
                    method: format!("from scratch, {} FLOPs of {}", enum_str(&b.budget), b.of),
                    work: Work::Baseline { budget: b.budget, seed: seed(b.seed) },
                    train: None,
                    baseline_train: Some(b.train.clone().unwrap_or_default()),
                });
            }
        }
    }
    Ok(out)
}

fn up_description(s: &UpSettings) -> String {
    let mut d = format!("{}, preset {}", enum_str(&s.method), enum_str(&s.preset));
    if let Some(depth) = s.depth {
        d.push_str(&format!(", depth {}", enum_str(&depth)));
    }
    d
}

/// Escale's defaults for a model trained from scratch: a small llama (overridden by the file).
fn default_init_config() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "torch_dtype": "float32"
    });
    v.as_object().cloned().expect("object literal")
}

/// One-line architecture of a model folder.
fn describe_arch(model: &Path) -> Result<(String, u64, u64)> {
    let cfg = escale_formats::ModelConfig::from_file(&model.join("config.json"))?;
    let counts = escale_formats::param_counts(&cfg);
    let mut s = format!(
        "{} d={} L={} heads={}/{} ffn={}",
        cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    );
    if let Some(m) = &cfg.moe {
        s.push_str(&format!(" experts={} top-{}", m.num_experts, m.num_experts_per_tok));
    }
    Ok((s, counts.total, counts.active))
}

/// Runs a whole pipeline.
pub struct Runner<'a> {
    file: &'a PipelineFile,
    opts: &'a RunOptions,
    engine: &'a dyn Engine,
    records: Vec<StageRecord>,
    keys: BTreeMap<String, String>,
    data: Option<DataPaths>,
}

impl<'a> Runner<'a> {
    pub fn new(file: &'a PipelineFile, opts: &'a RunOptions, engine: &'a dyn Engine) -> Self {
        Runner { file, opts, engine, records: Vec::new(), keys: BTreeMap::new(), data: None }
    }

    fn abs(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.opts.base_dir.join(p)
        }
    }

    fn run_path(&self, p: &Path) -> PathBuf {
        self.opts.run_dir.join(p)
    }

    fn relative(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.opts.run_dir).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf())
    }

    fn record(&self, name: &str) -> Result<&StageRecord> {
        self.records.iter().find(|r| r.name == name).ok_or_else(|| anyhow!("stage {name:?} has not run"))
    }

    fn eval_seq_len(&self, train: Option<&TrainSettings>) -> usize {
        self.file.eval.seq_len.or(train.map(|t| t.seq_len)).unwrap_or(crate::engine::trainer_defaults().seq_len)
    }

    fn evaluate(&self, model: &Path, seq_len: usize) -> Result<f64> {
        let data = self.data.as_ref().ok_or_else(|| anyhow!("no validation data (the prepare stage has not run)"))?;
        self.engine.evaluate(model, &self.run_path(&data.valid), seq_len, self.file.eval.tokens)
    }

    /// Runs every stage, then writes the report.
    pub fn run(mut self) -> Result<RunOutcome> {
        let plan = plan(self.file)?;
        std::fs::create_dir_all(&self.opts.run_dir)
            .with_context(|| format!("creating the run directory {}", self.opts.run_dir.display()))?;
        let mut skipped = Vec::new();
        let total = plan.len();
        for (i, stage) in plan.iter().enumerate() {
            eprintln!(
                "\n=== stage {}/{total}: {} ({}{}) ===",
                i + 1,
                stage.name,
                stage.kind.as_str(),
                stage.source.as_ref().map(|s| format!(" from {s}")).unwrap_or_default()
            );
            eprintln!("  {}", stage.method);
            let key = self.stage_key(stage)?;
            let dir = self.opts.run_dir.join(&stage.name);
            let record = match check_stage(&self.opts.run_dir, &dir, &key)? {
                Verdict::Done(r) => {
                    eprintln!("  already finished (stage.json matches): skipped");
                    skipped.push(stage.name.clone());
                    *r
                }
                verdict => {
                    if let Verdict::Stale(why) = verdict {
                        set_aside(&dir, &why)?;
                    }
                    self.check_in_progress(&dir, &key)?;
                    let r = self.run_stage(stage, &dir, &key)?;
                    write_record(&dir, &r)?;
                    r
                }
            };
            print_outcome(&record);
            if record.data.is_some() {
                self.data = record.data.clone();
            }
            self.keys.insert(stage.name.clone(), key);
            self.records.push(record);
        }
        let name = self.file.name.clone().unwrap_or_else(|| "pipeline".into());
        let (summary, files) = write_report(&self.opts.run_dir, &name, &self.records)?;
        Ok(RunOutcome { summary, files, skipped })
    }

    /// The key of a stage: its resolved settings, the evaluation, and the keys of what it reads.
    fn stage_key(&self, stage: &Planned) -> Result<String> {
        #[derive(Serialize)]
        struct KeyInput<'k> {
            kind: StageKind,
            work: &'k Work,
            train: &'k Option<TrainSettings>,
            baseline_train: &'k Option<TrainSpec>,
            file_train: &'k TrainSpec,
            eval: &'k EvalSpec,
            upstream: Vec<&'k str>,
            inputs: Vec<String>,
        }
        let mut upstream: Vec<&str> = Vec::new();
        if stage.kind != StageKind::Prepare {
            let prep = self.records.first().map(|r| r.name.as_str()).unwrap_or_default();
            upstream.push(self.keys.get(prep).map(String::as_str).unwrap_or_default());
        }
        if let Some(src) = &stage.source {
            upstream.push(self.keys.get(src).map(String::as_str).ok_or_else(|| anyhow!("stage {src:?} has not run"))?);
        }
        let mut inputs = Vec::new();
        if let Work::Prepare(p) = &stage.work {
            // Relative paths resolve against the file's folder: the absolute ones are what matter.
            if let ModelSpec::From(m) = &p.model {
                let m = self.abs(m);
                inputs.push(m.display().to_string());
                inputs.push(fingerprint_model(&m)?);
            }
            if let Some(TokenizerSpec::Path(t)) = &p.tokenizer {
                inputs.push(crate::manifest::fingerprint_file(&self.abs(t))?);
            }
            match &p.corpus {
                CorpusSpec::Text(t) => inputs.extend(t.paths.iter().map(|p| self.abs(p).display().to_string())),
                CorpusSpec::Prepared(d) => {
                    for prefix in [&d.train, &d.valid] {
                        let idx = self.abs(prefix).with_extension("idx");
                        inputs.push(crate::manifest::fingerprint_file(&idx)?);
                    }
                }
                CorpusSpec::Builtin(_) => {}
            }
        }
        Ok(hash_json(&KeyInput {
            kind: stage.kind,
            work: &stage.work,
            train: &stage.train,
            baseline_train: &stage.baseline_train,
            file_train: &self.file.train,
            eval: &self.file.eval,
            upstream,
            inputs,
        }))
    }

    /// An unfinished stage folder may be resumed only if it was started with the same key.
    fn check_in_progress(&self, dir: &Path, key: &str) -> Result<()> {
        let marker = dir.join("stage.key");
        match std::fs::read_to_string(&marker) {
            Ok(old) if old.trim() == key => eprintln!("  resuming an unfinished run of this stage"),
            Ok(_) => set_aside(dir, "it was started with other settings or inputs")?,
            Err(_) if dir.exists() => set_aside(dir, "it has no settings marker")?,
            Err(_) => {}
        }
        write_atomic(&marker, key.as_bytes())
    }

    fn run_stage(&mut self, stage: &Planned, dir: &Path, key: &str) -> Result<StageRecord> {
        let started = Instant::now();
        let mut rec = match &stage.work {
            Work::Prepare(p) => self.run_prepare(stage, p, dir)?,
            Work::ScaleUp(s) => {
                self.run_growth(stage, dir, |src, out| self.engine.scale_up(src, out, s))?
            }
            Work::ScaleOut(s) => {
                self.run_growth(stage, dir, |src, out| self.engine.scale_out(src, out, s))?
            }
            Work::Baseline { budget, seed } => self.run_baseline(stage, dir, *budget, *seed)?,
        };
        rec.key = key.to_string();
        rec.wall_s = started.elapsed().as_secs_f64();
        rec.model_fingerprint = fingerprint_model(&self.run_path(&rec.model_dir))?;
        Ok(rec)
    }

    /// Common tail of every stage: train (if asked) from `start`, evaluate the end point.
    fn finish(
        &self,
        dir: &Path,
        start: &Path,
        train: Option<&TrainSettings>,
        flops_start: f64,
        val_loss_start: Option<f64>,
        base: StageRecord,
    ) -> Result<StageRecord> {
        let seq_len = self.eval_seq_len(train);
        let (model, tokens, flops, curve) = match train {
            Some(t) => {
                let data = self.data.as_ref().ok_or_else(|| anyhow!("no training data"))?;
                let job = TrainJob {
                    model: start.to_path_buf(),
                    data: self.run_path(&data.train),
                    valid: self.run_path(&data.valid),
                    output: dir.join("train"),
                    settings: t.clone(),
                    progress: self.opts.progress,
                };
                eprintln!("  training {} tokens (seq {}, batch {}x{}, lr {})", t.tokens, t.seq_len, t.micro_batch, t.grad_accum, t.lr);
                let trained = self.engine.train(&job)?;
                let curve = read_curve(&trained.train_log, Some(&trained.eval_log))?;
                (trained.final_model, trained.tokens, trained.flops, curve)
            }
            None => (start.to_path_buf(), 0, 0.0, Curve::default()),
        };
        let val_loss_end = if train.is_some() { Some(self.evaluate(&model, seq_len)?) } else { val_loss_start };
        let (arch, params_total, params_active) = describe_arch(&model)?;
        let curve = curve.shifted(flops_start).with_start(flops_start, val_loss_start);
        Ok(StageRecord {
            arch,
            params_total,
            params_active,
            tokens,
            flops,
            flops_start,
            val_loss_start,
            val_loss_end,
            model_dir: self.relative(&model),
            curve,
            ..base
        })
    }

    fn base_record(&self, stage: &Planned) -> StageRecord {
        StageRecord {
            name: stage.name.clone(),
            kind: stage.kind,
            source: stage.source.clone(),
            sweep: stage.sweep.clone(),
            method: stage.method.clone(),
            exact: None,
            arch: String::new(),
            params_total: 0,
            params_active: 0,
            tokens: 0,
            flops: 0.0,
            flops_start: 0.0,
            source_val_loss: None,
            val_loss_start: None,
            val_loss_end: None,
            wall_s: 0.0,
            model_dir: PathBuf::new(),
            curve: Curve::default(),
            key: String::new(),
            model_fingerprint: String::new(),
            data: None,
        }
    }

    fn run_prepare(&mut self, stage: &Planned, p: &PrepareSpec, dir: &Path) -> Result<StageRecord> {
        let data = self.prepare_data(p, dir)?;
        self.data = Some(data.clone());
        let start = match &p.model {
            ModelSpec::From(m) => self.abs(m),
            ModelSpec::Init(init) => {
                let tokenizer = data.tokenizer.as_ref().map(|t| self.run_path(t));
                self.init_model(&init.config, tokenizer.as_deref(), dir, self.file.seed)?
            }
        };
        let val_start = self.evaluate(&start, self.eval_seq_len(stage.train.as_ref()))?;
        eprintln!("  validation loss before training: {val_start:.4}");
        let mut base = self.base_record(stage);
        base.data = Some(data);
        self.finish(dir, &start, stage.train.as_ref(), 0.0, Some(val_start), base)
    }

    /// Tokenizer and `.bin/.idx` data of the prepare stage (each step skipped when already done).
    fn prepare_data(&self, p: &PrepareSpec, dir: &Path) -> Result<DataPaths> {
        let texts: Vec<PathBuf> = match &p.corpus {
            CorpusSpec::Builtin(b) => {
                let corpus = dir.join("corpus");
                let done = corpus.join(".complete");
                if !done.exists() {
                    eprintln!("  generating the built-in bilingual corpus ({} MB)", b.size_mb);
                    let files = self.engine.make_corpus((b.size_mb * 1e6) as u64, b.seed.unwrap_or(self.file.seed), &corpus)?;
                    let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                    write_atomic(&done, list.join("\n").as_bytes())?;
                }
                std::fs::read_to_string(&done)?.lines().map(PathBuf::from).collect()
            }
            CorpusSpec::Text(t) => t.paths.iter().map(|p| self.abs(p)).collect(),
            CorpusSpec::Prepared(d) => {
                let tokenizer = match &p.tokenizer {
                    Some(TokenizerSpec::Path(t)) => Some(self.abs(t)),
                    _ => None,
                };
                return Ok(DataPaths { train: self.abs(&d.train), valid: self.abs(&d.valid), tokenizer });
            }
        };
        let tokenizer = match (&p.tokenizer, &p.model) {
            (Some(TokenizerSpec::Path(t)), _) => self.abs(t),
            (Some(TokenizerSpec::Train(t)), _) => {
                let out = dir.join("tokenizer").join("tokenizer.json");
                if !out.exists() {
                    eprintln!("  training a byte-level BPE tokenizer (vocabulary {})", t.vocab_size);
                    std::fs::create_dir_all(out.parent().unwrap())?;
                    self.engine.train_tokenizer(&texts, t.vocab_size, &out)?;
                }
                out
            }
            (None, ModelSpec::From(m)) => self.abs(m).join("tokenizer.json"),
            (None, ModelSpec::Init(_)) => bail!("a tokenizer is required for a model initialised at random"),
        };
        let prefix = dir.join("data").join("tokens");
        let (train, valid) = escale_like_split(&prefix);
        if !(train.with_extension("idx").exists() && valid.with_extension("idx").exists()) {
            eprintln!("  tokenizing {} file(s) into {}", texts.len(), prefix.display());
            std::fs::create_dir_all(prefix.parent().unwrap())?;
            let json_key = match &p.corpus {
                CorpusSpec::Text(t) => t.json_key.as_deref(),
                _ => None,
            };
            self.engine.prepare_data(&texts, json_key, &tokenizer, p.valid_fraction, self.file.seed, &prefix)?;
        }
        Ok(DataPaths { train: self.relative(&train), valid: self.relative(&valid), tokenizer: Some(self.relative(&tokenizer)) })
    }

    /// Writes `<dir>/init-config/config.json` (escale defaults, then the file's fields, vocab from
    /// the tokenizer) and initialises `<dir>/init` from it.
    fn init_model(
        &self,
        fields: &BTreeMap<String, serde_json::Value>,
        tokenizer: Option<&Path>,
        dir: &Path,
        seed: u64,
    ) -> Result<PathBuf> {
        let out = dir.join("init");
        if out.join("config.json").exists() {
            return Ok(out);
        }
        let mut cfg = default_init_config();
        if let Some(t) = tokenizer {
            cfg.insert("vocab_size".into(), vocab_size(t)?.into());
        }
        for (k, v) in fields {
            cfg.insert(k.clone(), v.clone());
        }
        self.init_from_config(serde_json::Value::Object(cfg), tokenizer, dir, seed)
    }

    fn init_from_config(&self, cfg: serde_json::Value, tokenizer: Option<&Path>, dir: &Path, seed: u64) -> Result<PathBuf> {
        let out = dir.join("init");
        let cfg_dir = dir.join("init-config");
        std::fs::create_dir_all(&cfg_dir)?;
        write_atomic(&cfg_dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        if let Some(t) = tokenizer {
            std::fs::copy(t, cfg_dir.join("tokenizer.json")).with_context(|| format!("copying {}", t.display()))?;
        }
        eprintln!("  initialising a random model");
        self.engine.init_model(&cfg_dir.join("config.json"), &out, seed)?;
        Ok(out)
    }

    fn run_growth(
        &self,
        stage: &Planned,
        dir: &Path,
        grow: impl Fn(&Path, &Path) -> Result<crate::engine::Growth>,
    ) -> Result<StageRecord> {
        let src = self.record(stage.source.as_deref().unwrap_or_default())?.clone();
        let src_model = self.run_path(&src.model_dir);
        let grown = dir.join("grown");
        let verdict_file = dir.join("growth.json");
        let growth = if grown.join("config.json").exists() && verdict_file.exists() {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&verdict_file)?)?;
            crate::engine::Growth {
                exact: v["exact"].as_bool().unwrap_or(false),
                reasons: serde_json::from_value(v["reasons"].clone()).unwrap_or_default(),
            }
        } else {
            if grown.exists() {
                std::fs::remove_dir_all(&grown)?;
            }
            eprintln!("  growing {} into {}", src_model.display(), grown.display());
            let g = grow(&src_model, &grown)?;
            let json = serde_json::json!({"exact": g.exact, "reasons": g.reasons});
            write_atomic(&verdict_file, serde_json::to_string_pretty(&json)?.as_bytes())?;
            g
        };
        let seq_len = self.eval_seq_len(stage.train.as_ref());
        let val_start = self.evaluate(&grown, seq_len)?;
        let src_val = src.val_loss_end;
        eprintln!(
            "  transition: {} val loss {} -> grown {:.4}{} ({})",
            src.name,
            src_val.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
            val_start,
            src_val.map(|v| format!(", {:+.2}%", 100.0 * (val_start - v) / v)).unwrap_or_default(),
            if growth.exact { "function preserving".to_string() } else { format!("not function preserving: {}", growth.reasons.join("; ")) }
        );
        let mut base = self.base_record(stage);
        base.exact = Some(growth.exact);
        base.source_val_loss = src_val;
        self.finish(dir, &grown, stage.train.as_ref(), src.flops_end(), Some(val_start), base)
    }

    fn run_baseline(&self, stage: &Planned, dir: &Path, budget: BaselineBudget, seed: u64) -> Result<StageRecord> {
        let of = self.record(stage.source.as_deref().unwrap_or_default())?.clone();
        let of_model = self.run_path(&of.model_dir);
        // Training settings: those of the stage it is compared with, overridden by its own.
        let of_train = self
            .file
            .stages
            .iter()
            .find_map(|s| stage_train_spec(s, &of.name))
            .unwrap_or_default();
        let own = stage.baseline_train.clone().unwrap_or_default();
        let mut spec = own.over(&of_train);
        let flops = match budget {
            BaselineBudget::Cumulative => of.flops_end(),
            BaselineBudget::Stage => of.flops,
        };
        let seq_len = spec.seq_len.or(self.file.train.seq_len).unwrap_or(crate::engine::trainer_defaults().seq_len);
        let per_token = self.engine.flops_per_token(&of_model, seq_len)?;
        // Whole optimizer steps, rounded to the nearest (not up): the budget is met within half a step.
        let tokens_per_step = (seq_len
            * spec.micro_batch.or(self.file.train.micro_batch).unwrap_or(crate::engine::trainer_defaults().micro_batch)
            * spec.grad_accum.or(self.file.train.grad_accum).unwrap_or(crate::engine::trainer_defaults().grad_accum))
            as f64;
        let steps = (flops / per_token / tokens_per_step).round().max(1.0);
        spec.tokens = Some((steps * tokens_per_step) as u64);
        let index = self.file.stages.iter().position(|s| s.names().contains(&stage.name)).unwrap_or(0);
        let train = resolve_train(&spec, self.file, index, &format!("stages[{index}].baseline"))?;
        eprintln!("  budget {flops:.3e} FLOPs = {} tokens at {per_token:.3e} FLOPs/token", train.tokens);

        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(of_model.join("config.json"))?)?;
        if let Some(obj) = cfg.as_object_mut() {
            obj.remove("escale_growth");
        }
        let tokenizer = self.data.as_ref().and_then(|d| d.tokenizer.as_ref()).map(|t| self.run_path(t));
        let init = dir.join("init");
        let start = if init.join("config.json").exists() {
            init
        } else {
            self.init_from_config(cfg, tokenizer.as_deref(), dir, seed)?
        };
        let val_start = self.evaluate(&start, self.eval_seq_len(Some(&train)))?;
        self.finish(dir, &start, Some(&train), 0.0, Some(val_start), self.base_record(stage))
    }
}

/// The training spec the file gives stage `name` (a sweep's for its variants).
fn stage_train_spec(s: &StageSpec, name: &str) -> Option<TrainSpec> {
    let t = match s {
        StageSpec::Prepare(p) if p.name == name => &p.train,
        StageSpec::ScaleUp(p) if p.name == name => &p.train,
        StageSpec::ScaleOut(p) if p.name == name => &p.train,
        StageSpec::Sweep(p) if s.names()[1..].iter().any(|n| n == name) => &p.train,
        _ => return None,
    };
    Some(t.clone().unwrap_or_default())
}

/// `PREFIX_train` / `PREFIX_valid` (escale-data's split naming).
fn escale_like_split(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |tag: &str| {
        let mut s = prefix.as_os_str().to_os_string();
        s.push(tag);
        PathBuf::from(s)
    };
    (with("_train"), with("_valid"))
}

/// Vocabulary size a model needs for a tokenizer.json: the largest id in its vocabulary or added
/// tokens, plus one.
fn vocab_size(tokenizer: &Path) -> Result<usize> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(tokenizer).with_context(|| format!("reading {}", tokenizer.display()))?)
        .with_context(|| format!("parsing {}", tokenizer.display()))?;
    let mut max = v["model"]["vocab"].as_object().map(|m| m.values().filter_map(|x| x.as_u64()).max().unwrap_or(0)).unwrap_or(0);
    if let Some(added) = v["added_tokens"].as_array() {
        max = max.max(added.iter().filter_map(|t| t["id"].as_u64()).max().unwrap_or(0));
    }
    anyhow::ensure!(max > 0, "{}: no vocabulary found", tokenizer.display());
    Ok(max as usize + 1)
}

/// Moves a stage folder that cannot be trusted aside (`<stage>.stale`), never deleting work the
/// user might want to inspect beyond the previous stale copy.
fn set_aside(dir: &Path, why: &str) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let aside = dir.with_extension("stale");
    if aside.exists() {
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
    }
    eprintln!("  {} is out of date ({why}): moved to {} and run again", dir.display(), aside.display());
    std::fs::rename(dir, &aside).with_context(|| format!("moving {} aside", dir.display()))
}

fn print_outcome(r: &StageRecord) {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    eprintln!(
        "  {}: {} params ({} active), {} tokens, {:.3e} FLOPs, val loss {} -> {}",
        r.name,
        escale_formats::summary::human_count(r.params_total),
        escale_formats::summary::human_count(r.params_active),
        r.tokens,
        r.flops,
        f(r.val_loss_start),
        f(r.val_loss_end)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
seed: 5
train: {seq_len: 32, micro_batch: 2}
stages:
  - prepare:
      name: base
      corpus: {builtin: {size_mb: 0.1}}
      tokenizer: {train: {vocab_size: 300}}
      model: {init: {config: {hidden_size: 32}}}
      train: {tokens: 6400}
  - sweep:
      name: up
      target: {hidden_size: 64}
      variants: [{method: aki-pro}, {method: fpi}]
      train: {tokens: 3200}
  - scale_out: {name: moe, from: up-fpi, experts: 4, top_k: 2, train: {tokens: 3200}}
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
        assert_eq!((t.tokens, t.seq_len, t.micro_batch), (6400, 32, 2));
        // 100 steps: five evaluations and eight checkpoints by default.
        assert_eq!((t.eval_interval, t.save_interval), (20, 12));
        assert_eq!(t.seed, 5);
        assert_eq!(p[3].train.as_ref().unwrap().seed, 7);
        let Work::ScaleOut(o) = &p[3].work else { panic!() };
        assert_eq!((o.experts, o.top_k, o.aux_loss_coef), (4, 2, crate::engine::trainer_defaults().aux_loss_coef));
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
        let text = FILE.replace("train: {tokens: 6400}", "train: {lr: 0.01}");
        let file = PipelineFile::parse(&text, "p.yaml").unwrap();
        assert_eq!(plan(&file).unwrap_err().to_string(), "stages[0].prepare.train.tokens: required (the stage's token budget)");
    }

    #[test]
    fn vocab_size_counts_added_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, r#"{"model": {"vocab": {"a": 0, "b": 7}}, "added_tokens": [{"id": 9, "content": "<eos>"}]}"#).unwrap();
        assert_eq!(vocab_size(&p).unwrap(), 10);
    }
}

/// Scale-up settings from a stage's (or sweep variant's) method and the shared target sizes.
fn up_settings(
    method: crate::schema::UpMethod,
    preset: crate::schema::UpPreset,
    depth: Option<crate::schema::UpDepth>,
    seed: u64,
    target: &crate::schema::TargetSpec,
) -> UpSettings {
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
