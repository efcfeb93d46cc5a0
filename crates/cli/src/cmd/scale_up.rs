//! `escale scale-up`: grow a dense model in width and depth (see `escale_grow::scale_up`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use escale_formats::writer::check_output;
use escale_util::size::ByteSize;
use escale_formats::{Checkpoint, DType, ModelConfig, WeightChecks};
use escale_grow::Exactness;
use escale_model::evaluate::compare_models;
use rand::{Rng, SeedableRng};
use crate::flags::choice;
use super::verify::{print_warnings, WeightArgs};
use escale_grow::scale_up::{
    execute, AkiConsumerSource, AkiScope, DepthMethod, ExecOptions, Fanout, MapKind, Method, Preset, ScaleUpOptions,
    ScaleUpPlan, ScaleUpReport, Target, TargetDims,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dense source model folder (llama, mistral, qwen2 or qwen3; config.json + safetensors).
    pub source: PathBuf,
    /// Output folder for the grown model (must not exist or be empty, unless --force; never the
    /// source, inside it or around it). Locked while written: a second writer is refused.
    pub output: PathBuf,
    /// Target hidden size (default: the source's). Any size >= the source's.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Target FFN (intermediate) size (default: the source's).
    #[arg(long)]
    pub intermediate: Option<usize>,
    /// Target number of layers (default: the source's).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Target number of query heads (default: the source's); a multiple of the KV heads, which
    /// stay fixed, as does head_dim.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Take the four target sizes from this config.json instead (its architecture, vocab, KV heads
    /// and head_dim must match the source).
    #[arg(long, conflicts_with_all = ["hidden", "intermediate", "layers", "heads"])]
    pub target_config: Option<PathBuf>,
    /// Width method: `fpi` (function-preserving copies), `aki` (new heads / FFN neurons from the
    /// next layer), or `aki-pro` (AKI + interpolation depth growth; AquilaMoE's choice).
    #[arg(long, value_enum, default_value_t = ScaleUpOptions::default().method, value_parser = choice::<Method>())]
    pub method: Method,
    /// Residual-stream preset: `fpi` (plain copies; exact only when every channel is copied
    /// equally often, e.g. 2x), `fpi-scaled` or `zero-pad` (exact for any width).
    #[arg(long, value_enum, default_value_t = ScaleUpOptions::default().preset, value_parser = choice::<Preset>())]
    pub preset: Preset,
    /// Depth growth: `interpolate` (when unset), `stack` (bert2BERT: whole copies + top
    /// remainder), `stack-mod` (AquilaMoE's l mod L), `identity` (LLaMA-Pro zero-init blocks;
    /// exact), or `interpolate-identity` (interpolation with zero-init duplicates; exact).
    #[arg(long, value_parser = choice::<DepthMethod>())]
    pub depth: Option<DepthMethod>,
    /// Hidden-channel (and FFN neuron) map: `circular` (j mod d) or `random` (seeded).
    #[arg(long, value_enum, default_value_t = ScaleUpOptions::default().hidden_map, value_parser = choice::<MapKind>())]
    pub hidden_map: MapKind,
    /// Which head of its own KV group each new query head copies: `circular` or `random` (seeded).
    #[arg(long, value_enum, default_value_t = ScaleUpOptions::default().head_map, value_parser = choice::<MapKind>())]
    pub head_map: MapKind,
    /// Fan-out of copied units: `equal` (1/c each) or `lemon[:STD]` (equal plus zero-sum noise
    /// that keeps the function but breaks the symmetry of copies; STD defaults to the source's
    /// initializer_range).
    #[arg(long, default_value = "equal", value_parser = parse_fanout)]
    pub fanout: FanoutArg,
    /// Seed of every random choice (random maps, LEMON noise); recorded in the manifest.
    #[arg(long, default_value_t = ScaleUpOptions::default().seed)]
    pub seed: u64,
    #[command(flatten)]
    pub write: WriteArgs,
    /// AKI: take the down_proj / o_proj columns of new units from the `upper` layer or from the
    /// layer itself (`self`).
    #[arg(long, value_enum, default_value_t = ScaleUpOptions::default().aki_consumer_source,
        value_parser = choice::<AkiConsumerSource>())]
    pub aki_consumer_source: AkiConsumerSource,
    /// AKI: fill only new heads and FFN neurons from the upper layer (`units`), or also the new
    /// hidden-size rows of o_proj / down_proj (`all`).
    #[arg(long, value_enum, default_value_t = ScaleUpOptions::default().aki_scope, value_parser = choice::<AkiScope>())]
    pub aki_scope: AkiScope,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most output bytes held in memory at once, e.g. 256MB.
    #[arg(long, default_value_t = ByteSize(ExecOptions::default().memory_budget_bytes), value_parser = crate::flags::size())]
    pub memory_budget: ByteSize,
    /// Print the plan and its exactness verdict, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub weights: WeightArgs,
}

/// How a growth command writes its output (shared by scale-up and scale-out).
#[derive(clap::Args, Debug)]
pub struct WriteArgs {
    /// Output dtype (f32, bf16, f16); default: each source tensor's dtype. Computation is f32,
    /// rounded once.
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Largest output shard, e.g. 5GB, 500MB (HF's max_shard_size).
    #[arg(long, default_value_t = ByteSize(escale_formats::writer::DEFAULT_MAX_SHARD_BYTES), value_parser = crate::flags::size())]
    pub max_shard_size: ByteSize,
    /// Replace an existing output folder, once the new one is complete, but only one escale
    /// wrote (or an empty one), never the source or a folder around it. The swap is one rename
    /// where the filesystem supports it (Linux renameat2); elsewhere the old folder is moved
    /// aside first. A symbolic link as output is followed: its target is replaced, the link kept.
    #[arg(long)]
    pub force: bool,
}

/// `--fanout`: LEMON's default std depends on the source config, so it is resolved later.
#[derive(Clone, Copy, Debug)]
pub enum FanoutArg {
    Equal,
    Lemon(Option<f32>),
}

fn parse_fanout(s: &str) -> Result<FanoutArg, String> {
    match s.split_once(':') {
        None if s == "equal" => Ok(FanoutArg::Equal),
        None if s == "lemon" => Ok(FanoutArg::Lemon(None)),
        Some(("lemon", std)) => std
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .map(|v| FanoutArg::Lemon(Some(v)))
            .ok_or_else(|| format!("invalid LEMON std `{std}` (a positive number, e.g. lemon:0.02)")),
        _ => Err(format!("unknown fan-out `{s}` (expected equal, lemon or lemon:STD)")),
    }
}

/// A positive byte size such as 5GB or 500MB.
impl Args {
    fn target(&self) -> anyhow::Result<Target> {
        if let Some(path) = &self.target_config {
            let cfg = ModelConfig::from_file(path).with_context(|| "reading --target-config")?;
            return Ok(Target::Config(Box::new(cfg)));
        }
        Ok(Target::Dims(TargetDims {
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_attention_heads: self.heads,
            num_hidden_layers: self.layers,
        }))
    }

    fn options(&self, source: &ModelConfig) -> ScaleUpOptions {
        let fanout = match self.fanout {
            FanoutArg::Equal => Fanout::Equal,
            FanoutArg::Lemon(std) => Fanout::Lemon { scale: std.unwrap_or(source.initializer_range as f32) },
        };
        ScaleUpOptions {
            method: self.method,
            preset: self.preset,
            depth: self.depth,
            hidden_map: self.hidden_map,
            head_map: self.head_map,
            fanout,
            seed: self.seed,
            aki_consumer_source: self.aki_consumer_source,
            aki_scope: self.aki_scope,
            dtype: self.write.dtype,
        }
    }
}

/// Opens the source checkpoint of a growth command. Unless it is a dry run, an occupied output
/// folder is refused first, before any work.
pub(super) fn open_source(source: &Path, output: &Path, force: bool, dry_run: bool) -> anyhow::Result<Checkpoint> {
    if !dry_run {
        check_output(output, force)?;
    }
    Checkpoint::open(source).with_context(|| format!("opening {}", source.display()))
}

/// Refuses a growth source whose weights would be silently dropped (tensors its config does not
/// declare) or copied as NaN / Inf, unless the flags tolerate them. A dry run reads no weights,
/// so it skips the non-finite scan.
pub(super) fn check_source_weights(src: &Checkpoint, weights: WeightArgs, dry_run: bool) -> anyhow::Result<()> {
    let mut warnings: Vec<String> = src.check_unknown(weights.ignore_unknown)?.into_iter().collect();
    if !dry_run {
        warnings.extend(src.check_finite(weights.allow_nan)?);
    }
    print_warnings(&warnings);
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let src = open_source(&args.source, &args.output, args.write.force, args.dry_run)?;
    let target = args.target()?;
    let plan = ScaleUpPlan::new(&src.config, &target, &args.options(&src.config))
        .with_context(|| format!("planning the scale-up of {}", args.source.display()))?;
    check_source_weights(&src, args.weights, args.dry_run)?;
    print_warnings(&plan.warnings);
    print_plan(&plan);
    if args.dry_run {
        return Ok(());
    }
    let exec = ExecOptions { max_shard_bytes: args.write.max_shard_size.0, force: args.write.force, memory_budget_bytes: args.memory_budget.0, threads: args.threads };
    let bar = super::progress::bytes_bar("scale-up", args.quiet);
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = execute(&plan, &src, &args.output, &exec, Some(&progress))
        .with_context(|| format!("scale-up of {}", args.source.display()))?;
    bar.finish_and_clear();
    print_summary(&report);
    report_stored_drift(&plan.exactness, &args.source, &report.out_dir)
}

fn print_plan(plan: &ScaleUpPlan) {
    let o = &plan.options;
    out!("scale-up plan: {}", plan.summary_line());
    out!(
        "  method {}, preset {}, depth {}, hidden map {}, head map {}, fan-out {}, seed {}",
        o.method.as_str(),
        o.preset.as_str(),
        o.depth_method().as_str(),
        o.hidden_map.as_str(),
        o.head_map.as_str(),
        match o.fanout {
            Fanout::Equal => "equal".to_string(),
            Fanout::Lemon { scale } => format!("lemon (std {scale})"),
        },
        o.seed
    );
    if o.method.is_aki() {
        out!("  AKI consumer source {}, scope {}", o.aki_consumer_source.as_str(), o.aki_scope.as_str());
    }
    let dup: Vec<usize> = (1..plan.depth.map.len()).filter(|&l| plan.depth.map[l] == plan.depth.map[l - 1]).map(|l| plan.depth.map[l]).collect();
    out!("  depth map {:?} (repeated source layers {:?})", plan.depth.map, dup);
    if plan.target.rms_norm_eps != plan.source.rms_norm_eps {
        out!("  rms_norm_eps {} -> {}", plan.source.rms_norm_eps, plan.target.rms_norm_eps);
    }
    print_verdict(&plan.exactness, "the grown model computes the source's function (up to f32 rounding)");
}

/// The exactness line of a growth plan. A growth exact in f32 but rounded by its stored dtype
/// says so, and which flag keeps it exact, instead of "exact".
pub(super) fn print_verdict(e: &Exactness, exact_meaning: &str) {
    match &e.stored_dtype_rounding {
        _ if !e.exact => out!("  NOT exact: {}", e.reasons.join("; ")),
        None => out!("  exact: {exact_meaning}"),
        Some(why) => out!("  exact in f32 only: {why}; `--dtype f32` keeps it exact"),
    }
}

/// Most bytes of weights (as stored) for which the stored-dtype drift is measured: both models
/// are loaded in f32 at once.
const DRIFT_CHECK_MAX_BYTES: u64 = 2 << 30;
/// Random sequences and their length for the drift measurement.
const DRIFT_SEQUENCES: usize = 4;
const DRIFT_SEQUENCE_LEN: usize = 64;

/// For a growth exact in f32 whose stored dtype rounds it: runs the source and the grown model
/// (both in f32, so only the stored rounding differs) on a few seeded random sequences and prints
/// how far their logits drift.
pub(super) fn report_stored_drift(e: &Exactness, source: &Path, grown: &Path) -> anyhow::Result<()> {
    if !e.exact || e.exact_as_stored() {
        return Ok(());
    }
    let grown_bytes = Checkpoint::open(grown)?.file_bytes();
    if grown_bytes > DRIFT_CHECK_MAX_BYTES {
        out!("  stored-dtype drift not measured (the grown model is larger than {} GB); `--dtype f32` keeps it exact", DRIFT_CHECK_MAX_BYTES >> 30);
        return Ok(());
    }
    // The source passed its checks (or the user tolerated what they found) before the growth.
    let tolerate = WeightChecks { allow_nan: true, ignore_unknown: true };
    let load = |dir: &Path| -> anyhow::Result<escale_model::Model> {
        let ckpt = Checkpoint::open(dir)?;
        Ok(escale_model::Model::load_with(&ckpt, &candle_core::Device::Cpu, candle_core::DType::F32, tolerate)?.0)
    };
    let (reference, candidate) = (load(source)?, load(grown)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let vocab = reference.config.vocab_size as u32;
    let window = DRIFT_SEQUENCE_LEN.min(reference.config.max_position_embeddings);
    let ids: Vec<u32> = (0..DRIFT_SEQUENCES * window).map(|_| rng.random_range(0..vocab)).collect();
    let r = compare_models(&reference, &candidate, &ids, window)?;
    out!(
        "  stored-dtype drift over {} positions of random tokens: max |delta logit| {:.3e} ({:.3e} of max |logit|), mean KL {:.3e}, \
         top-1 agreement {:.2}%; `--dtype f32` keeps it exact",
        r.logits.positions,
        r.logits.max_abs_diff,
        r.relative_max_diff,
        r.logits.mean_kl,
        100.0 * r.logits.top1_agreement
    );
    Ok(())
}

fn print_summary(r: &ScaleUpReport) {
    let gb = |b: u64| b as f64 / 1e9;
    out!("wrote {} ({} tensors, manifest {})", r.out_dir.display(), r.tensors, escale_grow::MANIFEST_FILE);
    out!(
        "  read {:.3} GB, wrote {:.3} GB in {:.2} s ({:.2} GB/s written)",
        gb(r.bytes_read),
        gb(r.bytes_written),
        r.seconds,
        gb(r.bytes_written) / r.seconds.max(1e-9)
    );
}
