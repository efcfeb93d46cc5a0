//! `prepare_data`: text and JSONL in, Megatron indexed dataset out.
//!
//! # Inputs
//!
//! Each input is a file, a folder (searched recursively, sorted, hidden entries skipped; only files
//! ending in `.txt`, `.text`, `.md`, `.jsonl` or `.ndjson` are taken: not `.json`, which in a folder
//! is more often a config than JSONL) or a glob pattern (`data/*.json`, sorted; `*` does not match
//! a leading dot). Files are read in the order given, so the output is reproducible.
//!
//! With `--format auto` (the default) files ending in `.jsonl`, `.ndjson` or `.json` are JSONL and
//! everything else is plain text.
//!
//! * **JSONL**: one document per non-blank line, the string field `json_key` (default `text`), as
//!   Megatron's `tools/preprocess_data.py --json-keys text`.
//! * **Plain text**, cut into documents by [`TextDocs`]: `paragraph` (default: blocks of lines
//!   separated by blank or whitespace-only lines; the line break ending a block is dropped; the
//!   layout of the built-in corpus), `file` (the whole file is one document, byte for byte, as if it
//!   were one JSONL record: for a folder of articles) or `line` (every non-empty line, line break
//!   dropped). Paragraphs are the default because Megatron has no plain-text reader to imitate, and
//!   with whole files as documents a book or a corpus file would be a single document: `--split`
//!   could not hold anything out and a single document cannot be encoded in parallel.
//!
//! Empty documents are skipped, and so is a UTF-8 byte-order mark opening a file. Every document
//! is followed by the EOS id (Megatron's `--append-eod`), unless `append_eos` is off. Ids are those
//! of the tokenizer on the document's text, without the post-processor's special tokens unless
//! `add_special_tokens` is on.
//!
//! # Errors in inputs
//!
//! Invalid UTF-8, a bad JSON line, a missing/non-string key or an unreadable file are reported with
//! file and line. With [`OnError::Abort`] (default) the run stops and nothing is published; with
//! [`OnError::Skip`] the offending document is skipped (the whole file in `file` mode, the rest of
//! the file when it cannot be read) and the run continues; the summary counts and lists them. A
//! read error in the middle of a document that is already partly written stops the run either way.
//!
//! # Processing
//!
//! A reader thread streams documents into batches of about `batch_bytes` of text; each batch is
//! encoded in parallel (rayon, `threads` workers) and written in input order, so memory is bounded
//! by a few batches whatever the corpus size, and the output does not depend on the thread count.
//! A document larger than 64 KiB is encoded in pieces cut at a single `\n` between two
//! non-whitespace characters when [`TextTokenizer::piecewise_exact`] says this cannot change the ids
//! (all byte-level BPE tokenizers), else whole. Plain-text files in `file`/`paragraph` mode are
//! validated in a first pass so that a bad line is found before any of its document is written.
//!
//! # Output
//!
//! `PREFIX.bin`/`PREFIX.idx`, or with `split = Some(f)` a document-level split into
//! `PREFIX_train.{bin,idx}` (about a fraction `f` of the documents) and `PREFIX_valid.{bin,idx}`: a
//! document goes to the validation set when a hash of `(split_seed, document number)` falls above
//! `f`, so the split is deterministic and independent of batching and threads. Token dtype: uint16
//! when the vocabulary (largest id + 1) is below 65,500, else int32 (Megatron's rule), or `dtype`.
//! Files are published atomically (see [`IndexedDatasetWriter`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::indexed::{DType, IndexedDatasetWriter, WrittenDataset};
use escale_util::rng::mix64;
use crate::tokenizer::{SpecialToken, TextTokenizer};

/// How an input file is parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum InputFormat {
    /// By extension: `.jsonl`, `.ndjson`, `.json` are JSONL, the rest plain text.
    #[default]
    Auto,
    #[serde(alias = "txt")]
    #[cfg_attr(feature = "clap", value(alias = "txt"))]
    Text,
    #[serde(alias = "json")]
    #[cfg_attr(feature = "clap", value(alias = "json"))]
    Jsonl,
}

/// How plain text is cut into documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TextDocs {
    /// One document per file.
    #[serde(alias = "files")]
    #[cfg_attr(feature = "clap", value(alias = "files"))]
    File,
    /// One document per block of lines separated by blank (whitespace-only) lines.
    #[default]
    #[serde(alias = "paragraphs")]
    #[cfg_attr(feature = "clap", value(alias = "paragraphs"))]
    Paragraph,
    /// One document per non-empty line.
    #[serde(alias = "lines")]
    #[cfg_attr(feature = "clap", value(alias = "lines"))]
    Line,
}

/// What to do with an input error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OnError {
    #[default]
    Abort,
    Skip,
}

/// Options of [`prepare_data`] (see the module docs).
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Files, folders and glob patterns.
    pub inputs: Vec<String>,
    /// Output prefix (`PREFIX.bin`/`.idx`, or `PREFIX_train`/`PREFIX_valid` with `split`).
    pub output: PathBuf,
    pub format: InputFormat,
    pub text_docs: TextDocs,
    pub json_key: String,
    /// Append the tokenizer's EOS after each document.
    pub append_eos: bool,
    /// Let the tokenizer's post-processor add its special tokens (e.g. a BOS) to each document.
    pub add_special_tokens: bool,
    /// Token dtype; `None` = Megatron's choice from the vocabulary size.
    pub dtype: Option<DType>,
    /// Fraction of documents for training; the rest is the validation set.
    pub split: Option<f64>,
    pub split_seed: u64,
    pub on_error: OnError,
    /// Encoding threads (`None` = all cores).
    pub threads: Option<usize>,
    /// Text per encoding batch, in bytes (`escale prepare-data --batch-mb` shows it in MB).
    pub batch_bytes: usize,
    /// Show a progress bar and warnings on stderr (the bar only on a terminal).
    pub progress: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            inputs: Vec::new(),
            output: PathBuf::new(),
            format: InputFormat::Auto,
            text_docs: TextDocs::Paragraph,
            json_key: "text".into(),
            append_eos: true,
            add_special_tokens: false,
            dtype: None,
            split: None,
            split_seed: 1234,
            on_error: OnError::Abort,
            threads: None,
            batch_bytes: 8_000_000,
            progress: false,
        }
    }
}

/// What [`prepare_data`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub files: usize,
    pub documents: u64,
    /// Tokens written, EOS included.
    pub tokens: u64,
    /// UTF-8 bytes of the documents' text.
    pub text_bytes: u64,
    /// Bytes of input files read.
    pub input_bytes: u64,
    /// Documents (or files) skipped because of input errors.
    pub skipped: u64,
    /// The first input errors (at most 100), as `file:line: message`.
    pub errors: Vec<String>,
    pub dtype: DType,
    pub eos: Option<SpecialToken>,
    pub outputs: Vec<WrittenDataset>,
    pub seconds: f64,
}

impl PrepareSummary {
    pub fn tokens_per_byte(&self) -> f64 {
        if self.text_bytes == 0 {
            0.0
        } else {
            self.tokens as f64 / self.text_bytes as f64
        }
    }
    pub fn mb_per_second(&self) -> f64 {
        self.input_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} documents, {} tokens from {} files ({:.1} MB of text), {:.3} tokens/byte\n",
            self.documents,
            self.tokens,
            self.files,
            self.text_bytes as f64 / 1e6,
            self.tokens_per_byte()
        );
        s += &format!(
            "{:.1} s: {:.1} MB/s, {:.0} tokens/s; dtype {}",
            self.seconds,
            self.mb_per_second(),
            self.tokens_per_second(),
            self.dtype
        );
        match &self.eos {
            Some(e) => s += &format!(", EOS {} = {} (from {})\n", e.token, e.id, e.source),
            None => s += ", no EOS appended\n",
        }
        for o in &self.outputs {
            s += &format!(
                "wrote {}.bin/.idx: {} documents, {} tokens\n",
                o.prefix.display(),
                o.documents,
                o.tokens
            );
        }
        if let [_, valid] = &self.outputs[..] {
            if valid.documents == 0 {
                s += &format!("warning: the validation set {} is empty: too few documents for this --split\n", valid.prefix.display());
            }
        }
        if self.skipped > 0 {
            s += &format!("skipped {} documents/files because of input errors:\n", self.skipped);
            for e in &self.errors {
                s += &format!("  {e}\n");
            }
        }
        s
    }
}

/// `PREFIX_train` and `PREFIX_valid` for a split output.
pub fn split_prefixes(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |tag: &str| {
        let mut s = prefix.as_os_str().to_os_string();
        s.push(tag);
        PathBuf::from(s)
    };
    (with("_train"), with("_valid"))
}

/// Whether document `doc` goes to the validation set for a train fraction `train`.
pub fn is_validation_document(doc: u64, train: f64, seed: u64) -> bool {
    let h = mix64(seed ^ mix64(doc.wrapping_add(0x5851_F42D_4C95_7F2D)));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64) >= train
}

const TEXT_EXTENSIONS: &[&str] = &["txt", "text", "md", "jsonl", "ndjson"];
const JSONL_EXTENSIONS: &[&str] = &["jsonl", "ndjson", "json"];
/// Documents longer than this are encoded in pieces when that is exact.
pub const PIECE_BYTES: usize = 64 << 10;
const MAX_REPORTED_ERRORS: usize = 100;
/// A byte-order mark opening a file is not text: dropped.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Expands files, folders and globs into the ordered list of input files.
pub fn resolve_inputs(inputs: &[String], on_error: OnError, errors: &mut Vec<String>) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(DataError::EmptyInput("no input paths given".into()));
    }
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_file() {
            files.push(path.to_path_buf());
        } else if path.is_dir() {
            let before = files.len();
            walk_dir(path, &mut files, 0)?;
            if files.len() == before {
                let msg = format!("{input}: folder holds no .txt/.text/.md/.jsonl/.ndjson file");
                handle_resolve_error(msg, on_error, errors)?;
            }
        } else if input.contains(['*', '?', '[']) {
            // Shell-like: `*` does not match a leading dot.
            let glob_options = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
            let paths = glob::glob_with(input, glob_options).map_err(|e| DataError::Invalid(format!("bad glob pattern `{input}`: {e}")))?;
            let mut matched: Vec<PathBuf> = Vec::new();
            for p in paths {
                let p = p.map_err(|e| DataError::io(e.path(), std::io::Error::other(e.to_string())))?;
                if p.is_dir() {
                    walk_dir(&p, &mut matched, 0)?;
                } else if p.is_file() {
                    matched.push(p);
                }
            }
            if matched.is_empty() {
                handle_resolve_error(format!("{input}: pattern matches no file"), on_error, errors)?;
            }
            files.extend(matched);
        } else {
            let e = DataError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"));
            handle_resolve_error(e.to_string(), on_error, errors).map_err(|_| e)?;
        }
    }
    if files.is_empty() {
        return Err(DataError::EmptyInput(format!("no input file found in {}", inputs.join(", "))));
    }
    Ok(files)
}

fn handle_resolve_error(msg: String, on_error: OnError, errors: &mut Vec<String>) -> Result<()> {
    match on_error {
        OnError::Abort => Err(DataError::EmptyInput(msg)),
        OnError::Skip => {
            errors.push(msg);
            Ok(())
        }
    }
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 64 {
        return Err(DataError::Invalid(format!("{}: folders nested too deep (symlink loop?)", dir.display())));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk_dir(&p, out, depth + 1)?;
        } else if p.is_file() && has_extension(&p, TEXT_EXTENSIONS) {
            out.push(p);
        }
    }
    Ok(())
}

fn has_extension(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Tokenizes `options.inputs` with the tokenizer at `tokenizer` (a `tokenizer.json` or its folder;
/// EOS from `tokenizer_config.json` or well-known names; override with `eos_token`).
pub fn prepare_data(tokenizer: impl AsRef<Path>, eos_token: Option<&str>, options: &PrepareOptions) -> Result<PrepareSummary> {
    let mut tok = TextTokenizer::from_file(tokenizer)?;
    if let Some(eos) = eos_token {
        tok = tok.with_eos_token(eos)?;
    }
    prepare_data_with(&tok, options)
}

// ---------------------------------------------------------------------------------------------
// Reader side: files -> batches of document pieces.

struct Piece {
    text: String,
    /// Last piece of its document.
    doc_end: bool,
}

struct Batch {
    pieces: Vec<Piece>,
    input_bytes: u64,
}

#[derive(Default)]
struct ReadStats {
    skipped: u64,
    errors: Vec<String>,
}

struct Reader<'a> {
    options: &'a PrepareOptions,
    split_pieces: bool,
    tx: SyncSender<Batch>,
    batch: Vec<Piece>,
    batch_text: usize,
    batch_input: u64,
    stats: ReadStats,
    progress: Option<ProgressBar>,
}

/// The receiver hung up (the encoding side failed): stop quietly, its error is reported.
struct Hangup;

enum ReadError {
    /// An input error: skipped or fatal per `on_error`.
    Data(DataError),
    /// An error that cannot be skipped (a document already partly written).
    Fatal(DataError),
    Hangup,
}

impl From<DataError> for ReadError {
    fn from(e: DataError) -> Self {
        ReadError::Data(e)
    }
}
impl From<Hangup> for ReadError {
    fn from(_: Hangup) -> Self {
        ReadError::Hangup
    }
}

/// Accumulates one document's text, cutting it into pieces at exact cut points.
struct PieceBuilder {
    current: String,
}

fn safe_cut(prev: &str, next_line: &str) -> bool {
    // prev ends with "X\n", X not whitespace; next starts with a non-whitespace character.
    let Some(body) = prev.strip_suffix('\n') else { return false };
    let last_ok = body.chars().next_back().is_some_and(|c| !c.is_whitespace());
    let first_ok = next_line.chars().next().is_some_and(|c| !c.is_whitespace());
    last_ok && first_ok
}

impl<'a> Reader<'a> {
    fn error(&mut self, e: DataError) -> std::result::Result<(), ReadError> {
        match self.options.on_error {
            OnError::Abort => Err(ReadError::Data(e)),
            OnError::Skip => {
                self.stats.skipped += 1;
                let msg = format!("{e} (skipped)");
                if self.options.progress {
                    match &self.progress {
                        Some(pb) if !pb.is_hidden() => pb.println(format!("warning: {msg}")),
                        // A closed stderr must not stop the run (eprintln! would panic).
                        _ => {
                            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("warning: {msg}\n"));
                        }
                    }
                }
                if self.stats.errors.len() < MAX_REPORTED_ERRORS {
                    self.stats.errors.push(msg);
                }
                Ok(())
            }
        }
    }

    fn push_piece(&mut self, text: String, doc_end: bool) -> std::result::Result<(), Hangup> {
        self.batch_text += text.len();
        self.batch.push(Piece { text, doc_end });
        if self.batch_text >= self.options.batch_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), Hangup> {
        if self.batch.is_empty() && self.batch_input == 0 {
            return Ok(());
        }
        let batch = Batch { pieces: std::mem::take(&mut self.batch), input_bytes: std::mem::take(&mut self.batch_input) };
        self.batch_text = 0;
        self.tx.send(batch).map_err(|_| Hangup)
    }

    /// Adds a line (with its line break) to the document being built.
    fn push_line(&mut self, b: &mut PieceBuilder, line: &str) -> std::result::Result<(), Hangup> {
        if self.split_pieces && b.current.len() >= PIECE_BYTES && safe_cut(&b.current, line) {
            let piece = std::mem::take(&mut b.current);
            self.push_piece(piece, false)?;
        }
        b.current.push_str(line);
        Ok(())
    }

    /// Ends the document (drops it when it is empty overall).
    fn end_doc(&mut self, b: &mut PieceBuilder, started: bool) -> std::result::Result<(), Hangup> {
        let text = std::mem::take(&mut b.current);
        if text.is_empty() && !started {
            return Ok(());
        }
        self.push_piece(text, true)
    }

    /// A whole in-memory document (line and JSONL modes).
    fn document(&mut self, text: String) -> std::result::Result<(), Hangup> {
        if text.is_empty() {
            return Ok(());
        }
        if !self.split_pieces || text.len() < 2 * PIECE_BYTES {
            return self.push_piece(text, true);
        }
        let mut b = PieceBuilder { current: String::new() };
        let mut started = false;
        for line in text.split_inclusive('\n') {
            let before = b.current.len();
            self.push_line(&mut b, line)?;
            started |= b.current.len() < before + line.len();
        }
        self.end_doc(&mut b, started)
    }

    fn run(&mut self, files: &[PathBuf]) -> std::result::Result<(), ReadError> {
        for path in files {
            let jsonl = match self.options.format {
                InputFormat::Jsonl => true,
                InputFormat::Text => false,
                InputFormat::Auto => has_extension(path, JSONL_EXTENSIONS),
            };
            let result = if jsonl {
                self.read_jsonl(path)
            } else {
                match self.options.text_docs {
                    TextDocs::Line => self.read_lines(path),
                    TextDocs::File | TextDocs::Paragraph => self.read_blocks(path),
                }
            };
            match result {
                Ok(()) => {}
                Err(ReadError::Data(e)) => self.error(e)?,
                Err(other) => return Err(other),
            }
        }
        self.flush()?;
        Ok(())
    }

    fn open(&self, path: &Path) -> Result<BufReader<File>> {
        let f = File::open(path).map_err(|e| DataError::io(path, e))?;
        Ok(BufReader::with_capacity(1 << 20, f))
    }

    /// Calls `f(line_number, bytes)` for each line (with its `\n`); IO errors name the file.
    fn for_each_line(
        &mut self,
        path: &Path,
        mut f: impl FnMut(&mut Self, u64, &[u8]) -> std::result::Result<(), ReadError>,
    ) -> std::result::Result<(), ReadError> {
        let mut r = self.open(path)?;
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).map_err(|e| DataError::io(path, e))?;
            if n == 0 {
                return Ok(());
            }
            line_no += 1;
            self.batch_input += n as u64;
            let line = if line_no == 1 { buf.strip_prefix(UTF8_BOM).unwrap_or(&buf) } else { &buf[..] };
            f(self, line_no, line)?;
        }
    }

    fn read_lines(&mut self, path: &Path) -> std::result::Result<(), ReadError> {
        self.for_each_line(path, |me, line_no, bytes| {
            let bytes = strip_eol(bytes);
            if bytes.is_empty() {
                return Ok(());
            }
            match std::str::from_utf8(bytes) {
                Ok(s) => me.document(s.to_string())?,
                Err(_) => me.error(DataError::InvalidUtf8 { path: path.to_path_buf(), line: line_no })?,
            }
            Ok(())
        })
    }

    fn read_jsonl(&mut self, path: &Path) -> std::result::Result<(), ReadError> {
        let key = self.options.json_key.clone();
        self.for_each_line(path, |me, line_no, bytes| {
            let trimmed = bytes.trim_ascii();
            if trimmed.is_empty() {
                return Ok(());
            }
            let text = match std::str::from_utf8(trimmed) {
                Ok(s) => s,
                Err(_) => return me.error(DataError::InvalidUtf8 { path: path.to_path_buf(), line: line_no }),
            };
            match extract_json_string(text, &key) {
                Ok(doc) => me.document(doc)?,
                Err(message) => me.error(DataError::BadRecord { path: path.to_path_buf(), line: line_no, message })?,
            }
            Ok(())
        })
    }

    /// `file` and `paragraph` modes: validate first, then stream pieces.
    fn read_blocks(&mut self, path: &Path) -> std::result::Result<(), ReadError> {
        let paragraph = self.options.text_docs == TextDocs::Paragraph;
        // Pass 1: find invalid lines and the paragraphs they belong to.
        if let Some(pb) = &self.progress {
            pb.set_message(format!("checking {}", path.display()));
        }
        let mut bad_blocks: Vec<u64> = Vec::new();
        {
            let mut r = self.open(path)?;
            let mut buf = Vec::new();
            let (mut line_no, mut block, mut in_block) = (0u64, 0u64, false);
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf).map_err(|e| DataError::io(path, e))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                let line = if line_no == 1 { buf.strip_prefix(UTF8_BOM).unwrap_or(&buf) } else { &buf[..] };
                let valid = std::str::from_utf8(line).ok();
                let blank = paragraph && valid.is_some_and(|s| s.trim().is_empty());
                if blank {
                    if in_block {
                        block += 1;
                        in_block = false;
                    }
                    continue;
                }
                in_block = true;
                if valid.is_none() {
                    let err = DataError::InvalidUtf8 { path: path.to_path_buf(), line: line_no };
                    if !paragraph {
                        // The whole file is the document: report once, skip it.
                        return Err(ReadError::Data(err));
                    }
                    if bad_blocks.last() != Some(&block) {
                        bad_blocks.push(block);
                    }
                    self.error(err)?;
                }
            }
        }
        // Pass 2: stream the documents.
        let mut b = PieceBuilder { current: String::new() };
        let mut started = false; // some piece of the current document was sent
        let mut block = 0u64;
        let mut in_block = false;
        let mut bad = bad_blocks.into_iter().peekable();
        let result = self.for_each_line(path, |me, _line_no, bytes| {
            // Valid UTF-8 except inside skipped paragraphs (checked in pass 1).
            let line = std::str::from_utf8(bytes).ok();
            if paragraph && line.is_some_and(|s| s.trim().is_empty()) {
                if in_block {
                    if bad.peek() == Some(&block) {
                        bad.next();
                        b.current.clear();
                    } else {
                        trim_trailing_eol(&mut b.current);
                        me.end_doc(&mut b, started)?;
                    }
                    started = false;
                    block += 1;
                    in_block = false;
                }
                return Ok(());
            }
            in_block = true;
            if bad.peek() == Some(&block) {
                return Ok(()); // paragraph being skipped
            }
            let line = line.expect("validated in pass 1");
            let before = b.current.len();
            me.push_line(&mut b, line)?;
            started |= b.current.len() < before + line.len();
            Ok(())
        });
        match result {
            // Part of the document is already written: it cannot be skipped any more.
            Err(ReadError::Data(e)) if started => return Err(ReadError::Fatal(e)),
            other => other?,
        }
        if in_block || !paragraph {
            if bad.peek() == Some(&block) {
                b.current.clear();
            } else {
                if paragraph {
                    trim_trailing_eol(&mut b.current);
                }
                self.end_doc(&mut b, started)?;
            }
        }
        Ok(())
    }
}

fn strip_eol(mut b: &[u8]) -> &[u8] {
    if let Some(x) = b.strip_suffix(b"\n") {
        b = x;
    }
    if let Some(x) = b.strip_suffix(b"\r") {
        b = x;
    }
    b
}

fn trim_trailing_eol(s: &mut String) {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
}

/// The string value of top-level `key` in a JSON object line, parsing (and skipping) nothing else
/// into memory.
pub fn extract_json_string(line: &str, key: &str) -> std::result::Result<String, String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    struct Seed<'k>(&'k str);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Option<std::result::Result<String, String>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Option<std::result::Result<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == self.0 && found.is_none() {
                    let v: serde_json::Value = map.next_value()?;
                    found = Some(match v {
                        serde_json::Value::String(s) => Ok(s),
                        other => Err(format!("field `{}` is not a string but {}", self.0, json_kind(&other))),
                    });
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let found = Seed(key).deserialize(&mut de).map_err(|e| format!("invalid JSON: {e}"))?;
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    match found {
        Some(r) => r,
        None => Err(format!("no field `{key}`")),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding and writing.

struct Outputs {
    main: IndexedDatasetWriter,
    valid: Option<IndexedDatasetWriter>,
    train_fraction: f64,
    seed: u64,
    eos: Option<u32>,
    documents: u64,
    /// Destination of the document being written (true = validation).
    current_valid: Option<bool>,
}

impl Outputs {
    fn write_piece(&mut self, ids: &[u32], doc_end: bool) -> Result<()> {
        let to_valid = *self.current_valid.get_or_insert_with(|| {
            self.valid.is_some() && is_validation_document(self.documents, self.train_fraction, self.seed)
        });
        let w = if to_valid { self.valid.as_mut().expect("split") } else { &mut self.main };
        w.append(ids)?;
        if doc_end {
            if let Some(eos) = self.eos {
                w.append(&[eos])?;
            }
            w.end_document()?;
            self.documents += 1;
            self.current_valid = None;
        }
        Ok(())
    }
}

fn make_progress(options: &PrepareOptions, total: u64) -> Option<ProgressBar> {
    if !options.progress {
        return None;
    }
    let pb = ProgressBar::with_draw_target(Some(total), escale_util::progress::stderr_target(4));
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg} (eta {eta})",
        )
        .expect("valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(250));
    Some(pb)
}

/// Refuses output files that are inputs (`--output x` with input `x.bin`): writing them would
/// destroy what is being read.
fn check_outputs_apart<'p>(inputs: &[PathBuf], prefixes: impl Iterator<Item = &'p PathBuf>) -> Result<()> {
    for prefix in prefixes {
        for out in [crate::indexed::bin_path(prefix), crate::indexed::idx_path(prefix)] {
            for input in inputs {
                escale_util::output::check_apart(input, &out).map_err(|e| DataError::io(&out, e))?;
            }
        }
    }
    Ok(())
}

/// [`prepare_data`] with a tokenizer already loaded (`options.append_eos` needs its EOS).
pub fn prepare_data_with(tokenizer: &TextTokenizer, options: &PrepareOptions) -> Result<PrepareSummary> {
    let start = Instant::now();
    if let Some(f) = options.split {
        if !(f > 0.0 && f < 1.0) {
            return Err(DataError::Invalid(format!("--split {f}: the training fraction must be between 0 and 1 (exclusive)")));
        }
    }
    if options.batch_bytes == 0 {
        return Err(DataError::Invalid("batch_bytes must be positive".into()));
    }
    let eos = if options.append_eos {
        Some(tokenizer.eos().cloned().ok_or_else(|| {
            DataError::tokenizer(
                tokenizer.path(),
                "no EOS token found (no eos_token in tokenizer_config.json and none of </s>, <|endoftext|>, ... in the \
                 vocabulary): name one with --eos-token, or disable appending it",
            )
        })?)
    } else {
        None
    };
    let max_id = tokenizer.max_id() as u64;
    let dtype = options.dtype.unwrap_or_else(|| DType::for_vocab_size(tokenizer.vocab_size()));
    let dtype_max = dtype
        .max_token()
        .ok_or_else(|| DataError::Invalid(format!("dtype {dtype} cannot hold token ids; use uint16 or int32")))?;
    if max_id > dtype_max {
        return Err(DataError::VocabTooLarge { vocab_size: tokenizer.vocab_size(), max_id, dtype, dtype_max });
    }

    let mut read_stats = ReadStats::default();
    let files = resolve_inputs(&options.inputs, options.on_error, &mut read_stats.errors)?;
    read_stats.skipped = read_stats.errors.len() as u64;
    let num_files = files.len();
    let total_bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();

    let (main_prefix, valid_prefix) = match options.split {
        Some(_) => {
            let (t, v) = split_prefixes(&options.output);
            (t, Some(v))
        }
        None => (options.output.clone(), None),
    };
    check_outputs_apart(&files, std::iter::once(&main_prefix).chain(valid_prefix.as_ref()))?;
    let mut outputs = Outputs {
        main: IndexedDatasetWriter::create(&main_prefix, dtype)?,
        valid: valid_prefix.map(|v| IndexedDatasetWriter::create(v, dtype)).transpose()?,
        train_fraction: options.split.unwrap_or(1.0),
        seed: options.split_seed,
        eos: eos.as_ref().map(|e| e.id),
        documents: 0,
        current_valid: None,
    };

    let pool = {
        let mut b = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("escale-tokenize-{i}"));
        if let Some(n) = options.threads {
            b = b.num_threads(n.max(1));
        }
        b.build().map_err(|e| DataError::Invalid(format!("cannot start encoding threads: {e}")))?
    };
    let progress = make_progress(options, total_bytes);
    let split_pieces = !options.add_special_tokens && tokenizer.piecewise_exact();

    let (tx, rx) = sync_channel::<Batch>(2);
    let (text_bytes, input_bytes, tokens_written, read_result) = std::thread::scope(|scope| {
        let reader_progress = progress.clone();
        let reader = scope.spawn(move || {
            let mut r = Reader {
                options,
                split_pieces,
                tx,
                batch: Vec::new(),
                batch_text: 0,
                batch_input: 0,
                stats: ReadStats::default(),
                progress: reader_progress,
            };
            let res = r.run(&files);
            (res, r.stats)
        });
        let encode_result = encode_loop(tokenizer, options, &pool, &rx, &mut outputs, progress.as_ref());
        drop(rx); // unblocks the reader if encoding failed
        let (res, stats) = reader.join().expect("reader thread panicked");
        let read_result = match (res, encode_result) {
            (_, Err(e)) => Err(e),
            (Err(ReadError::Data(e) | ReadError::Fatal(e)), _) => Err(e),
            (Err(ReadError::Hangup), Ok(_)) => Err(DataError::Invalid("internal error: reader stopped early".into())),
            (Ok(()), Ok(counts)) => Ok((counts, stats)),
        };
        match read_result {
            Ok(((text, input, tokens), stats)) => (text, input, tokens, Ok(stats)),
            Err(e) => (0, 0, 0, Err(e)),
        }
    });
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    let stats = read_result?;
    read_stats.skipped += stats.skipped;
    read_stats.errors.extend(stats.errors);
    read_stats.errors.truncate(MAX_REPORTED_ERRORS);

    if outputs.documents == 0 {
        return Err(DataError::EmptyInput(format!(
            "no document found in {num_files} input file{} ({}){}",
            if num_files == 1 { "" } else { "s" },
            options.inputs.join(", "),
            if read_stats.skipped > 0 { format!(" ({} skipped for errors)", read_stats.skipped) } else { String::new() }
        )));
    }
    let documents = outputs.documents;
    let mut written = vec![outputs.main.finish()?];
    if let Some(v) = outputs.valid {
        written.push(v.finish()?);
    }
    Ok(PrepareSummary {
        files: num_files,
        documents,
        tokens: tokens_written,
        text_bytes,
        input_bytes,
        skipped: read_stats.skipped,
        errors: read_stats.errors,
        dtype,
        eos,
        outputs: written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Receives batches, encodes them on `pool`, writes ids in order. Returns (text bytes, input
/// bytes, tokens written).
fn encode_loop(
    tokenizer: &TextTokenizer,
    options: &PrepareOptions,
    pool: &rayon::ThreadPool,
    rx: &Receiver<Batch>,
    outputs: &mut Outputs,
    progress: Option<&ProgressBar>,
) -> Result<(u64, u64, u64)> {
    let (mut text_bytes, mut input_bytes, mut tokens) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for batch in rx.iter() {
        // Between two batches is a safe point: the writers' temporary files are removed when
        // the error drops them, and nothing was published.
        if escale_util::stop::requested() {
            return Err(DataError::Invalid(format!(
                "interrupted while tokenizing into {}; nothing was published",
                outputs.main.prefix().display()
            )));
        }
        let texts: Vec<&str> = batch.pieces.iter().map(|p| p.text.as_str()).collect();
        let ids = pool.install(|| tokenizer.encode_batch(&texts, options.add_special_tokens))?;
        for (piece, ids) in batch.pieces.iter().zip(&ids) {
            outputs.write_piece(ids, piece.doc_end)?;
            text_bytes += piece.text.len() as u64;
            tokens += ids.len() as u64 + (piece.doc_end && outputs.eos.is_some()) as u64;
        }
        input_bytes += batch.input_bytes;
        if let Some(pb) = progress {
            pb.inc(batch.input_bytes);
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("{:.2}M tokens, {:.0}k tokens/s", tokens as f64 / 1e6, tokens as f64 / secs / 1e3));
        }
    }
    Ok((text_bytes, input_bytes, tokens))
}
