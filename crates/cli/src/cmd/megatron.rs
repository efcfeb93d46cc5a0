//! `escale export megatron` and `escale import megatron`: the hand-off to Megatron-Core
//! (Megatron-LM, FlagScale) and back; the work is in `escale-megatron`.

use std::path::PathBuf;

use anyhow::Context;
use escale_megatron::export::ExportStage;
use escale_megatron::{Bridge, ExportOptions, ImportOptions};

#[derive(clap::Subcommand)]
pub enum ExportTarget {
    /// A Megatron-Core torch_dist checkpoint (written by megatron-core itself) plus
    /// megatron_args.sh and flagscale.yaml, loadable by Megatron-LM / FlagScale with any TP/PP/EP.
    Megatron(ExportArgs),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Hugging Face model folder (llama, mistral, qwen2, mixtral, qwen2_moe).
    pub model: PathBuf,
    /// Output folder (Megatron-LM's `--load` folder).
    pub out: PathBuf,
    /// Replace an existing escale output.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Subcommand)]
pub enum ImportSource {
    /// A Megatron-Core torch_dist checkpoint folder (an `escale export megatron` output, or a
    /// Megatron-LM save folder with --record) back to a Hugging Face folder.
    Megatron(ImportArgs),
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Checkpoint folder (holding latest_checkpointed_iteration.txt, or an iteration folder).
    pub checkpoint: PathBuf,
    /// Output Hugging Face folder.
    pub out: PathBuf,
    /// The `escale export megatron` folder whose model description, config.json and tokenizer
    /// files to use (default: the checkpoint folder itself).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Replace an existing escale output.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_export(target: ExportTarget) -> anyhow::Result<()> {
    let ExportTarget::Megatron(args) = target;
    let bridge = Bridge::get()?;
    let bar = super::progress::bytes_bar("mapping to megatron-core names", args.quiet);
    let progress = |stage: ExportStage| match stage {
        ExportStage::Mapping(done, total) => {
            bar.set_length(total);
            bar.set_position(done);
        }
        ExportStage::Saving => {
            bar.finish_and_clear();
            if !args.quiet {
                err!("megatron-core is building the model and writing the torch_dist checkpoint ...");
            }
        }
    };
    let report = escale_megatron::export(&args.model, &args.out, &bridge, &ExportOptions { force: args.force }, &progress)
        .with_context(|| format!("exporting {} to Megatron-Core", args.model.display()))?;
    bar.finish_and_clear();
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!(
            "exported {} ({}, {} tensors, {}) to {} with megatron-core {}",
            args.model.display(),
            report.model_type,
            report.tensors,
            report.dtype,
            report.out_dir.display(),
            report.megatron_core
        );
        out!("  Megatron-LM: source {}/{}; FlagScale: {}/{}", report.out_dir.display(), escale_megatron::ARGS_FILE, report.out_dir.display(), escale_megatron::FLAGSCALE_FILE);
    }
    Ok(())
}

pub fn run_import(source: ImportSource) -> anyhow::Result<()> {
    let ImportSource::Megatron(args) = source;
    let bridge = Bridge::get()?;
    let options = ImportOptions { force: args.force, record: args.record.clone() };
    let report = escale_megatron::import(&args.checkpoint, &args.out, &bridge, &options)
        .with_context(|| format!("importing {} from Megatron-Core", args.checkpoint.display()))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("imported {} ({}) into {}", report.checkpoint.display(), report.model_type, report.out_dir.display());
    }
    Ok(())
}
