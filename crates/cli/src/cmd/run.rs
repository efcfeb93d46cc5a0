//! `escale run pipeline.yaml`: the EfficientScale pipeline from one file. Re-running the same file
//! skips finished stages and resumes an interrupted training from its last checkpoint.

use std::io::IsTerminal;
use std::path::PathBuf;

use escale_pipeline::manifest::StageRecord;
use escale_pipeline::runner::RunOutcome;
use escale_pipeline::runs::SweepEdge;
use escale_pipeline::PipelineEvent;
use escale_train::TrainEvent;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (YAML): stages prepare, scale_up, sweep, scale_out, baseline (see examples/).
    pub file: PathBuf,
    /// Run directory; overrides the file's `run_dir` (default: runs/<file name> beside the file).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Worker threads for training and evaluation (default: all cores). A resumed training
    /// reproduces the uninterrupted one exactly only with the same number of threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let progress = std::io::stderr().is_terminal();
    let on_event = |ev: PipelineEvent| print_event(&ev, progress);
    let outcome = escale_pipeline::run_file(&args.file, args.output.as_deref(), args.threads, progress, crate::signals::STOP, &on_event)?;
    print_outcome(&outcome);
    Ok(())
}

/// The closing summary table and where the report is (shared with `escale demo`).
pub fn print_outcome(outcome: &RunOutcome) {
    out!("\n{}", outcome.summary.to_terminal());
    if !outcome.skipped.is_empty() {
        out!("skipped (already finished): {}", outcome.skipped.join(", "));
    }
    out!("report:  {}", outcome.files.markdown.display());
    out!("figure:  {} (and .svg)", outcome.files.png.display());
    out!("summary: {}", outcome.files.summary.display());
}

/// Prints what the pipeline reports, on stderr (shared with `escale demo`). With a progress bar
/// (`progress`) the trainer shows its own progress; without one each evaluation gets a line.
pub fn print_event(ev: &PipelineEvent, progress: bool) {
    match ev {
        PipelineEvent::StageStarted { index, total, stage } => {
            let from = stage.source.as_ref().map(|s| format!(" from {s}")).unwrap_or_default();
            err!("\n=== stage {index}/{total}: {} ({}{from}) ===", stage.name, stage.kind.as_str());
            err!("  {}", stage.method);
        }
        PipelineEvent::Skipped => err!("  already finished (stage.json matches): skipped"),
        PipelineEvent::Resuming => err!("  resuming an unfinished run of this stage"),
        PipelineEvent::SetAside { dir, aside, why } => {
            err!("  {} is out of date ({why}): moved to {} and run again", dir.display(), aside.display())
        }
        PipelineEvent::GeneratingCorpus { size_mb } => {
            err!("  generating the built-in bilingual corpus ({size_mb} MB)")
        }
        PipelineEvent::TrainingTokenizer { vocab_size } => {
            err!("  training a byte-level BPE tokenizer (vocabulary {vocab_size})")
        }
        PipelineEvent::Tokenizing { files, prefix } => err!("  tokenizing {files} file(s) into {}", prefix.display()),
        PipelineEvent::InitialisingModel => err!("  initialising a random model"),
        PipelineEvent::Growing { source, out } => err!("  growing {} into {}", source.display(), out.display()),
        PipelineEvent::ValLossBefore(loss) => err!("  validation loss before training: {loss:.4}"),
        PipelineEvent::Transition { source, source_val_loss, grown_val_loss, exactness } => {
            let before = source_val_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into());
            let change =
                source_val_loss.map(|v| format!(", {:+.2}%", 100.0 * (grown_val_loss - v) / v)).unwrap_or_default();
            let verdict = match &exactness.stored_dtype_rounding {
                _ if !exactness.exact => format!("not function preserving: {}", exactness.reasons.join("; ")),
                Some(why) => format!("function preserving in f32 only: {why}"),
                None => "function preserving".to_string(),
            };
            err!("  transition: {source} val loss {before} -> grown {grown_val_loss:.4}{change} ({verdict})");
        }
        PipelineEvent::Budget { flops, tokens, flops_per_token } => {
            err!("  budget {flops:.3e} FLOPs = {tokens} tokens at {flops_per_token:.3e} FLOPs/token")
        }
        PipelineEvent::Selected { lr, val_loss, run, edge } => {
            let edge = match edge {
                Some(SweepEdge::Lowest) => " (the lowest of the sweep: widen lr_sweep below it)",
                Some(SweepEdge::Highest) => " (the highest of the sweep: widen lr_sweep above it)",
                None => "",
            };
            err!("  best learning rate {lr} (final val loss {val_loss:.4}): {run}{edge}")
        }
        PipelineEvent::Training(cfg) => err!(
            "  training {} tokens (seq {}, batch {}x{}, lr {})",
            cfg.total_tokens.unwrap_or_default(),
            cfg.seq_len,
            cfg.micro_batch,
            cfg.grad_accum,
            cfg.lr
        ),
        PipelineEvent::Train(TrainEvent::Started { start_step, total_steps, resumed_from: Some(p) }) => {
            err!("  resuming from {} (step {start_step} of {total_steps})", p.display())
        }
        PipelineEvent::Train(TrainEvent::Eval(e)) if !progress => {
            err!("  step {:>6}  tokens {:>10}  val loss {:.4}", e.step, e.tokens, e.val_loss)
        }
        PipelineEvent::Train(TrainEvent::Warning(w)) => err!("  warning: {w}"),
        PipelineEvent::Train(_) => {}
        PipelineEvent::StageFinished(record) => print_stage(record),
    }
}

fn print_stage(r: &StageRecord) {
    let loss = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    err!(
        "  {}: {} params ({} active), {} tokens, {:.3e} FLOPs, val loss {} -> {}",
        r.name,
        escale_formats::summary::human_count(r.params_total),
        escale_formats::summary::human_count(r.params_active),
        r.tokens,
        r.flops,
        loss(r.val_loss_start),
        loss(r.val_loss_end)
    );
}
