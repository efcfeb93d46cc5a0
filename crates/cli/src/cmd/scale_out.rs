//! `escale scale-out`: upcycle a dense model into a Mixture of Experts (see `escale_grow::scale_out`).

use std::path::PathBuf;

use anyhow::Context;
use escale_formats::writer::WriterOptions;
use escale_grow::scale_out::{execute, MoeFormat, RouterInit, ScaleOutOptions, ScaleOutPlan, UpcycleReport};

use crate::flags::choice;
use super::scale_up::{check_source_weights, open_source, print_verdict, report_stored_drift, WriteArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dense source model folder (llama, mistral, qwen2 or qwen3; config.json + safetensors).
    pub source: PathBuf,
    /// Output folder for the MoE model (must not exist or be empty, unless --force; never the
    /// source, inside it or around it). Locked while written: a second writer is refused.
    pub output: PathBuf,
    /// Routed experts per layer; every expert starts as a copy (or a shard) of the dense MLP.
    #[arg(long, default_value_t = ScaleOutOptions::default().experts)]
    pub experts: usize,
    /// Experts used per token. With --granularity G it must be a multiple of G for exactness.
    #[arg(long, default_value_t = ScaleOutOptions::default().top_k)]
    pub top_k: usize,
    /// Output layout: `mixtral` (when unset, for sources without QKV bias), `qwen2_moe` (when
    /// unset, and required, for sources with QKV bias such as qwen2 and Aquila) or `qwen3_moe`
    /// (when unset, and required, for qwen3 sources: per-head q/k norms).
    #[arg(long, value_parser = choice::<MoeFormat>())]
    pub format: Option<MoeFormat>,
    /// Router initialisation: `normal` (N(0, std²)), `zeros`, or `uniform` (±1/√hidden).
    #[arg(long, value_enum, default_value_t = ScaleOutOptions::default().router_init,
        value_parser = choice::<RouterInit>())]
    pub router_init: RouterInit,
    /// Standard deviation of the normal router. 0.02 follows HF/Megatron (std); AquilaMoE's
    /// "variance 0.02" reading would be 0.1414.
    #[arg(long, default_value_t = ScaleOutOptions::default().router_std)]
    pub router_std: f64,
    /// Seed for the router, noise and drop-upcycling draws (derived per layer and expert).
    #[arg(long, default_value_t = ScaleOutOptions::default().seed)]
    pub seed: u64,
    /// Fine-grained experts: each holds a 1/G shard of the FFN, routers repeat per group of G,
    /// down_proj is scaled by G so the output stays exact. G must divide the FFN and --experts.
    #[arg(long, default_value_t = ScaleOutOptions::default().granularity)]
    pub granularity: usize,
    /// qwen2_moe only: a live shared expert of N FFN shards (N >= G), with routed experts halved
    /// so the output stays exact. 0 = neutral shared expert (zero weights and gate: exact, inert).
    #[arg(long, default_value_t = ScaleOutOptions::default().shared_experts)]
    pub shared_experts: usize,
    /// Add N(0, STD²) noise to every routed expert (breaks exactness on purpose, for diversity).
    #[arg(long, default_value_t = ScaleOutOptions::default().noise, value_name = "STD")]
    pub noise: f64,
    /// Drop-Upcycling: per expert, re-initialise floor(RATIO·I) neurons from the dense matrix's
    /// mean/std (breaks exactness on purpose; 0.5 was best in the paper).
    #[arg(long, default_value_t = ScaleOutOptions::default().drop_ratio, value_name = "RATIO")]
    pub drop_upcycling: f64,
    /// qwen2_moe / qwen3_moe only: norm_topk_prob=false. NOT function-preserving (each token's output is scaled
    /// by its top-k probability mass); a warning is printed.
    #[arg(long)]
    pub no_renormalize: bool,
    /// qwen2_moe / qwen3_moe: make only every STEP-th layer sparse (decoder_sparse_step; layer l is
    /// sparse when (l+1) % STEP == 0); the other layers keep the dense MLP unchanged (exact).
    #[arg(long, default_value_t = ScaleOutOptions::default().sparse_step, value_name = "STEP")]
    pub sparse_step: usize,
    /// qwen2_moe / qwen3_moe: layers (0-based, comma-separated) that keep the dense MLP (mlp_only_layers).
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub dense_layers: Vec<usize>,
    /// router_aux_loss_coef written to config.json (HF convention: added once over all layers).
    #[arg(long, default_value_t = ScaleOutOptions::default().aux_loss_coef)]
    pub aux_loss_coef: f64,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Worker threads for the copy (default: available cores, at least 4 to keep the disk busy, at most 8).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the plan and its exactness verdict, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub weights: super::verify::WeightArgs,
}

impl Args {
    fn options(&self) -> ScaleOutOptions {
        ScaleOutOptions {
            experts: self.experts,
            top_k: self.top_k,
            format: self.format,
            router_init: self.router_init,
            router_std: self.router_std,
            seed: self.seed,
            granularity: self.granularity,
            shared_experts: self.shared_experts,
            noise: self.noise,
            drop_ratio: self.drop_upcycling,
            renormalize: !self.no_renormalize,
            sparse_step: self.sparse_step,
            dense_layers: self.dense_layers.clone(),
            aux_loss_coef: self.aux_loss_coef,
            dtype: self.write.dtype,
            threads: self.threads,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let src = open_source(&args.source, &args.output, args.write.force, args.dry_run)?;
    let plan = ScaleOutPlan::new(&src.config, &args.options())
        .with_context(|| format!("planning the scale-out of {}", args.source.display()))?;
    check_source_weights(&src, args.weights, args.dry_run)?;
    print_plan(&plan);
    if args.dry_run {
        return Ok(());
    }
    let writer = WriterOptions { max_shard_bytes: args.write.max_shard_size.0, force: args.write.force };
    let bar = super::progress::bytes_bar("scale-out", args.quiet);
    let report = execute(plan, &src, &args.output, &writer, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("scale-out of {}", args.source.display()))?;
    bar.finish_and_clear();
    print_summary(&report);
    report_stored_drift(&report.plan.exactness, &args.source, &report.output)
}

fn print_plan(p: &ScaleOutPlan) {
    let o = &p.options;
    for w in &p.warnings {
        err!("{w}");
    }
    out!("scale-out plan: {} -> {} model", p.source_type, p.format);
    out!(
        "  experts {} x FFN {} (granularity {}), top-{}, router {} std {} seed {}",
        o.experts,
        p.expert_ffn,
        o.granularity,
        o.top_k,
        o.router_init.as_str(),
        o.router_std,
        o.seed
    );
    if p.shared_ffn > 0 {
        out!("  shared expert: {:?}, FFN {}", p.shared, p.shared_ffn);
    }
    if o.sparse_step != 1 || !o.dense_layers.is_empty() {
        let layers = p.config.num_hidden_layers;
        let sparse = (0..layers).filter(|&l| p.config.is_moe_layer(l)).count();
        out!(
            "  sparse layers: {sparse} of {layers} (decoder_sparse_step {}, mlp_only_layers {:?}); the others keep the dense MLP",
            o.sparse_step,
            o.dense_layers
        );
    }
    print_verdict(&p.exactness, "the MoE computes the dense model's function (up to routing-weight rounding)");
}

fn print_summary(r: &UpcycleReport) {
    out!("wrote {} ({} model, {} tensors, manifest {})", r.output.display(), r.plan.format, r.tensors, escale_grow::MANIFEST_FILE);
    let gb = |b: u64| b as f64 / 1e9;
    out!(
        "  read {:.3} GB, wrote {:.3} GB in {:.2} s ({:.2} s copying, then fsync; {:.2} GB/s written)",
        gb(r.bytes_read),
        gb(r.bytes_written),
        r.seconds,
        r.copy_seconds,
        gb(r.bytes_written) / r.seconds.max(1e-9)
    );
}
