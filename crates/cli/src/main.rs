//! `escale`: a thin command line over the escale libraries.
//!
//! Each subcommand lives in its own file under `cmd/` with an `Args` struct (clap) and a `run`
//! function; the libraries do the work and return typed errors, this binary only parses flags,
//! prints and sets the exit code.

use clap::{CommandFactory, FromArgMatches, Subcommand};

// First, so that `out!` and `err!` are in scope in every module below.
#[macro_use]
mod out;
mod cmd;
mod flags;
mod signals;

#[derive(clap::Parser)]
#[command(
    name = "escale",
    version,
    about = "Grow language models the EfficientScale way: Scale-Up (dense width/depth growth) and \
             Scale-Out (sparse upcycling to Mixture of Experts), with continued pretraining.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the architecture, parameter counts, dtypes and shards of a Hugging Face model folder.
    Inspect(cmd::inspect::Args),
    /// Compare two models' logits on the same tokens (exactness check after growth).
    Verify(cmd::verify::Args),
    /// Validation loss / perplexity of a model on text, or multiple-choice accuracy (--tasks).
    Eval(cmd::eval::Args),
    /// Generate text from a prompt (greedy or sampled, with a KV cache).
    Generate(cmd::generate::Args),
    /// Scale-Up: initialise a larger dense model from a smaller one (FPI, AKI, AKI-Pro).
    ScaleUp(cmd::scale_up::Args),
    /// Scale-Out: upcycle a dense model into a Mixture of Experts.
    ScaleOut(cmd::scale_out::Args),
    /// Tokenize text/JSONL into a Megatron indexed dataset (.bin/.idx).
    PrepareData(cmd::prepare_data::Args),
    /// Train a small byte-level BPE tokenizer on a corpus.
    TrainTokenizer(cmd::train_tokenizer::Args),
    /// Generate the built-in synthetic bilingual (English + Chinese) corpus.
    MakeCorpus(cmd::make_corpus::Args),
    /// Multiple-choice questions (JSONL) about the built-in corpus's world, for `eval --tasks`.
    MakeTasks(cmd::make_tasks::Args),
    /// Create a randomly initialised model from a config.json (training from scratch).
    Init(cmd::init::Args),
    /// Continued pretraining of a dense or MoE model.
    Train(Box<cmd::train::Args>),
    /// Run an EfficientScale pipeline described by a YAML file.
    Run(cmd::run::Args),
    /// Run the built-in demo pipeline on the built-in corpus.
    Demo(cmd::demo::Args),
    /// Export a model to a distributed engine's checkpoint (Megatron-Core).
    #[command(subcommand)]
    Export(cmd::megatron::ExportTarget),
    /// Import a distributed engine's checkpoint (Megatron-Core) back to a Hugging Face folder.
    #[command(subcommand)]
    Import(cmd::megatron::ImportSource),
}

fn subcommand_matches<'a>(matches: &'a clap::ArgMatches, name: &str) -> &'a clap::ArgMatches {
    matches.subcommand_matches(name).expect("the subcommand that was parsed")
}

fn main() {
    // Parsed in two steps because `escale train` needs to know which flags were typed (a typed
    // flag overrides its --config file, a default does not).
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Commands that run the model, before any tensor is allocated: training frees and reallocates
    // large buffers every step, and glibc's defaults would return them to the OS and page-fault
    // them back in each time; and before candle starts its worker pool, whose idle spinning would
    // steal rayon's cores. Not for the streaming commands (scale-up, scale-out, prepare-data, ...):
    // there the 1 GiB thresholds kept every freed buffer mapped (scale-up's peak RSS 0.35 -> 2.1 GiB).
    if matches!(
        cli.command,
        Command::Train(_) | Command::Run(_) | Command::Demo(_) | Command::Eval(_) | Command::Verify(_) | Command::Generate(_)
    ) {
        escale_model::tune_runtime();
    }
    signals::ignore_sigpipe();
    if matches!(cli.command, Command::Train(_) | Command::Run(_) | Command::Demo(_)) {
        // Training stops at the end of a step with a checkpoint; other commands keep the
        // default (die at once: their outputs are published atomically, so nothing half-written).
        signals::stop_on_interrupt();
    }
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::ScaleUp(a) => cmd::scale_up::run(a),
        Command::ScaleOut(a) => cmd::scale_out::run(a),
        Command::PrepareData(a) => cmd::prepare_data::run(a),
        Command::TrainTokenizer(a) => cmd::train_tokenizer::run(a),
        Command::MakeCorpus(a) => cmd::make_corpus::run(a),
        Command::MakeTasks(a) => cmd::make_tasks::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Train(a) => cmd::train::run(*a, subcommand_matches(&matches, "train")),
        Command::Run(a) => cmd::run::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Export(t) => cmd::megatron::run_export(t),
        Command::Import(s) => cmd::megatron::run_import(s),
    };
    if let Err(err) = result {
        // `{:#}` prints the whole context chain on one line: "reading X: tensor Y: ..."
        err!("error: {err:#}");
        std::process::exit(if signals::stop_requested() { signals::INTERRUPTED_EXIT } else { 1 });
    }
}
