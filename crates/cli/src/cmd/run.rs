//! `escale run pipeline.yaml`: the EfficientScale pipeline from one file. Re-running the same file
//! skips finished stages and resumes an interrupted training from its last checkpoint.

use std::io::IsTerminal;
use std::path::PathBuf;

use escale_pipeline::runner::RunOutcome;

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
    let outcome = escale_pipeline::run_file(&args.file, args.output.as_deref(), args.threads, progress)?;
    print_outcome(&outcome);
    Ok(())
}

/// The closing summary table and where the report is (shared with `escale demo`).
pub fn print_outcome(outcome: &RunOutcome) {
    println!("\n{}", outcome.summary.to_terminal());
    if !outcome.skipped.is_empty() {
        println!("skipped (already finished): {}", outcome.skipped.join(", "));
    }
    println!("report:  {}", outcome.files.markdown.display());
    println!("figure:  {} (and .svg)", outcome.files.png.display());
    println!("summary: {}", outcome.files.summary.display());
}
