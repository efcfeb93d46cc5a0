//! `escale make-corpus`: the built-in synthetic bilingual corpus (see `escale_data::corpus`).

use std::path::PathBuf;

use anyhow::Context;
use escale_data::corpus::{make_corpus, CorpusOptions};
use escale_util::size::ByteSize;

#[derive(clap::Args, Debug)]
#[command(after_help = "Writes DIR/corpus.txt (documents separated by blank lines, as `prepare-data` \
    reads them by default) and DIR/corpus.info (JSON summary). The same --size and --seed give \
    byte-identical files on every machine.")]
pub struct Args {
    /// Size of corpus.txt: bytes, or with a unit (KB, MB, GB = powers of 1000; KiB, MiB, GiB).
    #[arg(long, default_value_t = ByteSize(CorpusOptions::default().size_bytes).to_string())]
    pub size: String,
    /// Seed of the world (people, cities, facts) and of the documents.
    #[arg(long, default_value_t = CorpusOptions::default().seed)]
    pub seed: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    pub output: PathBuf,
    /// People in the world (default: one per 10 kB of corpus, 100 to 20,000). More people, more
    /// facts to memorise.
    #[arg(long)]
    pub people: Option<usize>,
    /// Fraction of single-language documents in Chinese (the rest English; about 8% of
    /// documents are parallel English/Chinese sentences whatever this is).
    #[arg(long, default_value_t = CorpusOptions::default().zh_fraction)]
    pub zh_fraction: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Parsed here rather than by clap so that a bad size is an ordinary error (exit status 1).
    let size: ByteSize = args.size.parse().map_err(|e| anyhow::anyhow!("--size {}: {e}", args.size))?;
    let options = CorpusOptions { size_bytes: size.0, seed: args.seed, people: args.people, zh_fraction: args.zh_fraction };
    let s = make_corpus(&args.output, &options).with_context(|| format!("writing the corpus to {}", args.output.display()))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        out!(
            "wrote {} ({} bytes): {} documents ({} English, {} Chinese, {} bilingual) about a world of {} people, \
             {} cities and {} countries ({} facts), seed {}",
            s.files[0].display(),
            s.bytes,
            s.documents,
            s.english_documents,
            s.chinese_documents,
            s.bilingual_documents,
            s.people,
            s.cities,
            s.countries,
            s.facts,
            args.seed
        );
    }
    Ok(())
}
