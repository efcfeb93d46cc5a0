//! `escale demo`: the built-in EfficientScale pipeline on the built-in bilingual corpus, with no
//! download: small dense model from scratch -> Scale-Up (aki-pro and an exact preset side by side)
//! -> continued pretraining -> Scale-Out to 8 experts top-2 -> continued pretraining, with
//! from-scratch baselines at equal FLOPs, ending with the loss-vs-FLOPs report.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Smaller corpus, models and budgets: a few minutes on 2 cores instead of about 10.
    #[arg(long)]
    pub quick: bool,
    /// Run directory (default: escale-demo, or escale-demo-quick with --quick). Running the demo
    /// again into the same folder skips what is finished.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Worker threads for training and evaluation (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let run_dir = args
        .output
        .unwrap_or_else(|| PathBuf::from(if args.quick { "escale-demo-quick" } else { "escale-demo" }));
    let file = escale_pipeline::demo::demo_file(args.quick)?;
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // The demo is an ordinary pipeline: keep its file so `escale run` can repeat or vary it.
    let yaml = run_dir.join("pipeline.yaml");
    std::fs::write(&yaml, escale_pipeline::demo::demo_yaml(args.quick))
        .with_context(|| format!("writing {}", yaml.display()))?;
    out!("escale demo{}: run directory {}", if args.quick { " --quick" } else { "" }, run_dir.display());
    let progress = std::io::stderr().is_terminal();
    let on_event = |ev: escale_pipeline::PipelineEvent| super::run::print_event(&ev, progress);
    let outcome = escale_pipeline::run(&file, &run_dir, &run_dir, args.threads, progress, crate::signals::STOP, &on_event)?;
    super::run::print_outcome(&outcome);
    out!("\nOpen {} to see the EfficientScale picture.", outcome.files.png.display());
    Ok(())
}
