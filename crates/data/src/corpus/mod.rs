//! The built-in synthetic bilingual corpus (`escale make-corpus`), for demos and tests that must run
//! with no download.
//!
//! A seed draws a **world**: people (name, sex, age, profession, home town, birthplace, favourite
//! colour and food, hobby, pet, best friend, sibling), cities (country, river, population, product,
//! weather, founding year, mayor, residents), countries (capital) and rivers. Names are built from
//! syllables with fixed Chinese transliterations, so "Belan Kotor" is "贝兰·科陶" everywhere.
//!
//! The corpus is a stream of short **documents** about that world, each in English or Chinese (half
//! and half by default) or both: biographies, city articles, stories of visits between friends
//! (consistent with both people's facts), question/answer drills, parallel English/Chinese
//! sentences, arithmetic (equations, verbal sums, word problems that use people's ages) and lists
//! (counting, sorting, weekdays, months, residents). Templates and sentence structure are few and
//! regular, so a tiny model learns the language in minutes; the facts are many (about one person
//! per 10 kB of corpus, each with about ten facts, mentioned with Zipf-like frequencies), so more
//! parameters keep lowering the loss by memorising more of them: capacity matters.
//!
//! # Files
//!
//! `DIR/corpus.txt`: UTF-8, documents separated by one blank line (`\n\n`), the file ending with
//! `\n`; no document contains a blank line, so `prepare-data`'s default `paragraph` mode reads one
//! document per block. Its size is the smallest whole number of documents reaching `size_bytes`
//! (it exceeds it by less than one document, a few hundred bytes). `DIR/corpus.info` is a JSON
//! summary ([`CorpusSummary`]): its extension keeps folder inputs of `prepare-data` from reading it.
//!
//! # Determinism
//!
//! Everything is drawn from escale's frozen [`SplitMix64`] with integer and
//! exactly-rounded float arithmetic, so the same options give byte-identical files on every platform
//! and escale version (a changed template is a format change, caught by the tests' hash).

pub mod lexicon;
pub mod render;
pub mod tasks;
pub mod world;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use render::{Document, Lang};
pub use tasks::{make_tasks, TaskOptions, TasksSummary};
pub use world::World;

use crate::error::{DataError, Result};
use escale_util::publish;
use escale_util::rng::SplitMix64;

/// Options of the corpus generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusOptions {
    /// Target size of `corpus.txt` in bytes.
    pub size_bytes: u64,
    pub seed: u64,
    /// People in the world (`None` = one per 10 kB, between 100 and 20,000).
    pub people: Option<usize>,
    /// Fraction of single-language documents written in Chinese.
    pub zh_fraction: f64,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions { size_bytes: 20_000_000, seed: 1, people: None, zh_fraction: 0.5 }
    }
}

/// What [`make_corpus`] wrote (also saved as `corpus.info`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusSummary {
    /// The text files written (`corpus.txt`).
    pub files: Vec<PathBuf>,
    pub options: CorpusOptions,
    pub bytes: u64,
    pub documents: u64,
    pub english_documents: u64,
    pub chinese_documents: u64,
    pub bilingual_documents: u64,
    pub people: usize,
    pub cities: usize,
    pub countries: usize,
    pub rivers: usize,
    /// Distinct facts in the world.
    pub facts: usize,
}

/// Endless stream of documents for some options.
pub struct CorpusGenerator {
    world: World,
    rng: SplitMix64,
    zh_fraction: f64,
}

impl CorpusGenerator {
    pub fn new(options: &CorpusOptions) -> CorpusGenerator {
        let people = options.people.unwrap_or_else(|| world::default_people(options.size_bytes));
        CorpusGenerator {
            world: World::generate(options.seed, people),
            rng: SplitMix64::derive(options.seed, 0x44_4F_43_53), // "DOCS"
            zh_fraction: options.zh_fraction,
        }
    }

    pub fn world(&self) -> &World {
        &self.world
    }
}

impl Iterator for CorpusGenerator {
    type Item = Document;
    fn next(&mut self) -> Option<Document> {
        let r = render::Renderer { w: &self.world };
        Some(r.document(&mut self.rng, self.zh_fraction))
    }
}

fn check(options: &CorpusOptions) -> Result<()> {
    if options.size_bytes == 0 {
        return Err(DataError::Invalid("corpus size must be positive".into()));
    }
    if !(0.0..=1.0).contains(&options.zh_fraction) {
        return Err(DataError::Invalid(format!("zh_fraction {} is not between 0 and 1", options.zh_fraction)));
    }
    Ok(())
}

/// Writes the corpus text to `out`; returns the summary (with no files).
pub fn write_corpus(options: &CorpusOptions, out: &mut impl Write) -> std::io::Result<CorpusSummary> {
    let mut generator = CorpusGenerator::new(options);
    let w = generator.world();
    let mut summary = CorpusSummary {
        files: Vec::new(),
        options: options.clone(),
        bytes: 0,
        documents: 0,
        english_documents: 0,
        chinese_documents: 0,
        bilingual_documents: 0,
        people: w.people.len(),
        cities: w.cities.len(),
        countries: w.countries.len(),
        rivers: w.rivers.len(),
        facts: w.fact_count(),
    };
    // Size after the final "\n": documents + separators + 1.
    while summary.bytes + 1 < options.size_bytes {
        let doc = generator.next().expect("endless");
        if summary.documents > 0 {
            out.write_all(b"\n\n")?;
            summary.bytes += 2;
        }
        out.write_all(doc.text.as_bytes())?;
        summary.bytes += doc.text.len() as u64;
        summary.documents += 1;
        match doc.lang {
            Lang::En => summary.english_documents += 1,
            Lang::Zh => summary.chinese_documents += 1,
            Lang::Bilingual => summary.bilingual_documents += 1,
        }
    }
    out.write_all(b"\n")?;
    summary.bytes += 1;
    Ok(summary)
}

/// The corpus as one string (for tests and small sizes).
pub fn corpus_text(options: &CorpusOptions) -> Result<(String, CorpusSummary)> {
    check(options)?;
    let mut buf = Vec::with_capacity(options.size_bytes as usize + 4096);
    let summary = write_corpus(options, &mut buf).expect("writing to memory");
    Ok((String::from_utf8(buf).expect("generated text is UTF-8"), summary))
}

/// Writes `DIR/corpus.txt` and `DIR/corpus.info` (both atomically: temporary name, then rename).
pub fn make_corpus(dir: impl AsRef<Path>, options: &CorpusOptions) -> Result<CorpusSummary> {
    check(options)?;
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let path = dir.join("corpus.txt");
    let mut summary =
        publish::write_atomic_with(&path, |w| write_corpus(options, w)).map_err(|e| DataError::io(&path, e))?;
    summary.files = vec![path];
    let info = dir.join("corpus.info");
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises") + "\n";
    publish::write_atomic(&info, json.as_bytes()).map_err(|e| DataError::io(&info, e))?;
    Ok(summary)
}

