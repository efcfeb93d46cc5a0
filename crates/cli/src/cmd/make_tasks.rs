//! `escale make-tasks`: multiple-choice questions about the built-in corpus's world, in English and
//! Chinese, as JSONL for `escale eval --tasks` (see `escale_data::corpus::tasks`).

use std::path::PathBuf;

use anyhow::Context;
use escale_data::corpus::{make_tasks, CorpusOptions, CorpusSummary, TaskOptions};
use escale_util::size::ByteSize;

#[derive(clap::Args, Debug)]
#[command(after_help = "Four tasks: world-knowledge-en/zh (facts the corpus states) and \
    world-generalisation-en/zh (a person's country, which the corpus never states, and sums absent \
    from it). Give the corpus's own options (--corpus DIR reads them from DIR/corpus.info): the \
    knowledge questions are the facts that corpus states. The same options give the same file.")]
pub struct Args {
    /// Output JSONL file.
    pub output: PathBuf,
    /// A folder written by `escale make-corpus`: its corpus.info gives --size, --seed, --people and
    /// --zh-fraction.
    #[arg(long, conflicts_with_all = ["size", "seed", "people", "zh_fraction"])]
    pub corpus: Option<PathBuf>,
    /// Size of the corpus the questions are about (as `make-corpus --size`).
    #[arg(long, default_value_t = ByteSize(CorpusOptions::default().size_bytes).to_string())]
    pub size: String,
    /// Seed of the corpus's world (as `make-corpus --seed`).
    #[arg(long, default_value_t = CorpusOptions::default().seed)]
    pub seed: u64,
    /// People in the world (as `make-corpus --people`).
    #[arg(long)]
    pub people: Option<usize>,
    /// As `make-corpus --zh-fraction`.
    #[arg(long, default_value_t = CorpusOptions::default().zh_fraction)]
    pub zh_fraction: f64,
    /// Items per task (at most: a small corpus states fewer facts).
    #[arg(long, default_value_t = TaskOptions::default().per_task)]
    pub per_task: usize,
    /// Seed of the question draw (facts, distractors, answer positions).
    #[arg(long, default_value_t = TaskOptions::default().seed)]
    pub task_seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn corpus_options(args: &Args) -> anyhow::Result<CorpusOptions> {
    if let Some(dir) = &args.corpus {
        let info = dir.join("corpus.info");
        let text = std::fs::read_to_string(&info).with_context(|| format!("reading {} (written by make-corpus)", info.display()))?;
        let summary: CorpusSummary = serde_json::from_str(&text).with_context(|| format!("{}: not a corpus summary", info.display()))?;
        return Ok(summary.options);
    }
    let size: ByteSize = args.size.parse().map_err(|e| anyhow::anyhow!("--size {}: {e}", args.size))?;
    Ok(CorpusOptions { size_bytes: size.0, seed: args.seed, people: args.people, zh_fraction: args.zh_fraction })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = TaskOptions { corpus: corpus_options(&args)?, per_task: args.per_task, seed: args.task_seed };
    let s = make_tasks(&args.output, &options).with_context(|| format!("writing tasks to {}", args.output.display()))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let counts: Vec<String> = s.tasks.iter().map(|(t, n)| format!("{t} {n}")).collect();
    out!("wrote {}: {}", s.path.display(), counts.join(", "));
    Ok(())
}
