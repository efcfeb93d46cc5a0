//! `escale verify`: run a reference and a candidate model on the same tokens and report how far the
//! candidate's logits are from the reference's (the exactness check after growth).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use escale_data::TextTokenizer;
use escale_model::evaluate::{compare_models, VerifyReport};
use escale_formats::{Checkpoint, WeightChecks};
use escale_model::{text, Model, Precision};
use rand::{Rng, SeedableRng};

use crate::flags::choice;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// Only report; always succeeds once both models ran.
    Report,
    /// Fail (exit 1) when max |delta logit| exceeds `--tol` (0 = bitwise identical logits).
    Exact,
}

#[derive(clap::Args)]
pub struct Args {
    /// Reference model folder (e.g. the model before growth).
    pub reference: PathBuf,
    /// Candidate model folder (e.g. the grown or upcycled model); its vocab must match.
    pub candidate: PathBuf,
    /// Text file to run, tokenized with the reference folder's tokenizer.json.
    #[arg(long, conflicts_with = "random")]
    pub text: Option<PathBuf>,
    /// Run N random token ids instead of text (no tokenizer needed).
    #[arg(long, value_name = "N")]
    pub random: Option<usize>,
    /// Seed for --random.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many tokens of the text (keeps the check quick on big files).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    /// Tokens per forward window; longer inputs are split into windows overlapping by one token.
    /// Clamped to the smaller max_position_embeddings of the two models.
    #[arg(long)]
    pub window: Option<usize>,
    /// `exact` makes the command fail when the candidate's logits differ by more than --tol.
    #[arg(long, value_enum, default_value_t = Expect::Report)]
    pub expect: Expect,
    /// Allowed max |delta logit| under `--expect exact` (0: bitwise equality); finite, >= 0.
    #[arg(long, default_value_t = 0.0, value_parser = finite_tolerance)]
    pub tol: f64,
    /// Compute precision (f64 separates real differences from f32 rounding).
    #[arg(long, value_enum, value_parser = choice::<Precision>(), default_value_t = Precision::default())]
    pub dtype: Precision,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub weights: WeightArgs,
}

/// What a command that reads weights tolerates (shared by eval, verify, scale-up and scale-out).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WeightArgs {
    /// Use weights holding NaN or Inf values (with a warning naming the tensors) instead of refusing.
    #[arg(long)]
    pub allow_nan: bool,
    /// Drop tensors the config does not declare (with a warning naming them) instead of refusing.
    #[arg(long)]
    pub ignore_unknown: bool,
}

impl WeightArgs {
    pub fn checks(self) -> WeightChecks {
        WeightChecks { allow_nan: self.allow_nan, ignore_unknown: self.ignore_unknown }
    }
}

/// `--tol`: an infinite or NaN tolerance would pass any candidate, NaN logits included.
fn finite_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("`{s}` is not a finite number >= 0 (an infinite tolerance would pass any model)")),
    }
}

/// Prints the warnings of a tolerated check, one per line.
pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("{w}");
    }
}

/// Loads a model after the weight checks of `checks` (non-finite weights, unknown tensors).
pub fn load_model_with(dir: &Path, dtype: DType, checks: WeightChecks) -> anyhow::Result<Model> {
    let ckpt = Checkpoint::open(dir).with_context(|| format!("loading model {}", dir.display()))?;
    let (model, warnings) =
        Model::load_with(&ckpt, &Device::Cpu, dtype, checks).with_context(|| format!("loading model {}", dir.display()))?;
    print_warnings(&warnings);
    Ok(model)
}

pub fn load_model(dir: &Path, dtype: DType) -> anyhow::Result<Model> {
    Model::load_dir(dir, &Device::Cpu, dtype).with_context(|| format!("loading model {}", dir.display()))
}

/// The first `max` tokens of a text file (streamed: only what is needed is read and tokenized).
pub fn text_tokens(model_dir: &Path, path: &Path, max: usize) -> anyhow::Result<Vec<u32>> {
    let tok = TextTokenizer::from_file(model_dir)?;
    let mut stream = text::TokenStream::open(&tok, path)?;
    let mut ids = Vec::new();
    while ids.len() < max {
        match stream.next_chunk()? {
            Some(c) => ids.extend(c),
            None => break,
        }
    }
    ids.truncate(max);
    Ok(ids)
}

fn print_text(r: &VerifyReport, args: &Args) {
    let s = &r.logits;
    out!("reference  {}", args.reference.display());
    out!("candidate  {}", args.candidate.display());
    out!("positions            {}", s.positions);
    out!("max |delta logit|    {:.6e}  ({:.3e} of max |logit| {:.4})", s.max_abs_diff, r.relative_max_diff, s.max_abs_reference);
    out!("mean |delta logit|   {:.6e}", s.mean_abs_diff);
    out!("KL(ref||cand) mean   {:.6e}  (max {:.3e})", s.mean_kl, s.max_kl);
    out!("top-1 agreement      {:.2}%", 100.0 * s.top1_agreement);
    out!("loss ref / cand      {:.6} / {:.6}", r.reference_loss, r.candidate_loss);
    out!("bitwise identical    {}", if s.exact { "yes" } else { "no" });
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reference = load_model_with(&args.reference, args.dtype.candle(), args.weights.checks())?;
    let candidate = load_model_with(&args.candidate, args.dtype.candle(), args.weights.checks())?;
    if reference.config.vocab_size != candidate.config.vocab_size {
        bail!(
            "vocab sizes differ: reference {} has {}, candidate {} has {}; logits cannot be compared",
            args.reference.display(),
            reference.config.vocab_size,
            args.candidate.display(),
            candidate.config.vocab_size
        );
    }
    let ids = match (&args.text, args.random) {
        (Some(path), _) => text_tokens(&args.reference, path, args.max_tokens)
            .with_context(|| format!("reading tokens from {}", path.display()))?,
        (None, Some(n)) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
            (0..n).map(|_| rng.random_range(0..reference.config.vocab_size as u32)).collect()
        }
        (None, None) => bail!("give the tokens to run: --text FILE or --random N"),
    };
    if ids.len() < 2 {
        bail!("the input has {} token(s); at least 2 are needed", ids.len());
    }
    let window = args.window.unwrap_or(usize::MAX);
    let report = compare_models(&reference, &candidate, &ids, window)?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["pass"] = serde_json::Value::Bool(report.logits.max_abs_diff <= args.tol);
        out!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_text(&report, &args);
    }
    // A NaN difference is never within tolerance.
    let within_tol = report.logits.max_abs_diff <= args.tol;
    if args.expect == Expect::Exact && !within_tol {
        bail!(
            "candidate differs from reference: max |delta logit| {:.6e} > tolerance {:e}",
            report.logits.max_abs_diff,
            args.tol
        );
    }
    Ok(())
}
