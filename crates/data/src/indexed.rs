//! Megatron indexed datasets: the `.bin` + `.idx` pair of megatron-core's `IndexedDataset`
//! (formerly `MMapIndexedDataset`), as written by `tools/preprocess_data.py`.
//!
//! # Layout (all integers little-endian)
//!
//! `PREFIX.bin` holds the token ids of every sequence back to back, in the dataset's dtype, with
//! no header.
//!
//! `PREFIX.idx`:
//!
//! | offset | size | content |
//! | --- | --- | --- |
//! | 0 | 9 | magic `b"MMIDIDX\x00\x00"` |
//! | 9 | 8 | version, u64 = 1 |
//! | 17 | 1 | dtype code, u8 (see [`DType`]) |
//! | 18 | 8 | sequence count `n`, u64 |
//! | 26 | 8 | document-index count `m`, u64 (= number of documents + 1) |
//! | 34 | 4n | sequence lengths, i32, in tokens |
//! | 34+4n | 8n | sequence pointers, i64, byte offsets into `.bin` |
//! | 34+12n | 8m | document indices, i64: `0`, then the sequence index one past the end of each document |
//!
//! (Multimodal datasets append `n` int8 sequence modes; escale ignores them when reading and never
//! writes them.) The arrays after the header are not aligned, so they are read with unaligned loads.
//!
//! escale writes one sequence per document (Megatron's `preprocess_data.py` without sentence
//! splitting), so `document_indices` is `0, 1, ..., n`; it reads any valid layout, including
//! documents made of several sequences.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

#[cfg(target_endian = "big")]
compile_error!("escale-data reads and writes little-endian Megatron files in place; big-endian hosts are not supported");

/// The 9 magic bytes that open every `.idx` file.
pub const INDEX_MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
/// The only `.idx` version there is.
pub const INDEX_VERSION: u64 = 1;
/// Magic, version, dtype code, two counts.
pub const INDEX_HEADER_LEN: usize = 9 + 8 + 1 + 8 + 8;

/// Element type of a dataset's `.bin`, with Megatron's numeric codes (`DType` enum of
/// `indexed_dataset.py`). Serialised (and displayed) with NumPy's names (`uint16`, `int32`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    #[serde(rename = "uint8")]
    U8,
    #[serde(rename = "int8")]
    I8,
    #[serde(rename = "int16")]
    I16,
    #[serde(rename = "int32")]
    I32,
    #[serde(rename = "int64")]
    I64,
    #[serde(rename = "float64")]
    F64,
    #[serde(rename = "float32")]
    F32,
    #[serde(rename = "uint16")]
    U16,
}

impl DType {
    pub const ALL: [DType; 8] = [DType::U8, DType::I8, DType::I16, DType::I32, DType::I64, DType::F64, DType::F32, DType::U16];

    /// Megatron's code for this dtype (1 = uint8 ... 8 = uint16).
    pub fn code(self) -> u8 {
        match self {
            DType::U8 => 1,
            DType::I8 => 2,
            DType::I16 => 3,
            DType::I32 => 4,
            DType::I64 => 5,
            DType::F64 => 6,
            DType::F32 => 7,
            DType::U16 => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// NumPy's name for the dtype.
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::U16 => "uint16",
        }
    }

    /// Largest token id the dtype can hold, or `None` for the float dtypes (which hold no tokens).
    pub fn max_token(self) -> Option<u64> {
        match self {
            DType::U8 => Some(u8::MAX as u64),
            DType::I8 => Some(i8::MAX as u64),
            DType::I16 => Some(i16::MAX as u64),
            DType::U16 => Some(u16::MAX as u64),
            DType::I32 => Some(i32::MAX as u64),
            DType::I64 => Some(u32::MAX as u64), // escale's token ids are u32
            DType::F32 | DType::F64 => None,
        }
    }

    /// The token dtype Megatron picks for a vocabulary (`DType.optimal_dtype`): `uint16` when the
    /// vocabulary size is below 65,500, else `int32`.
    pub fn for_vocab_size(vocab_size: usize) -> DType {
        if vocab_size < 65_500 {
            DType::U16
        } else {
            DType::I32
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    /// Accepts NumPy names (`uint16`) and short names (`u16`).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let d = match s.to_ascii_lowercase().as_str() {
            "uint8" | "u8" => DType::U8,
            "int8" | "i8" => DType::I8,
            "int16" | "i16" => DType::I16,
            "uint16" | "u16" => DType::U16,
            "int32" | "i32" => DType::I32,
            "int64" | "i64" => DType::I64,
            "float32" | "f32" => DType::F32,
            "float64" | "f64" => DType::F64,
            _ => return Err(format!("unknown dtype `{s}` (expected uint8, int8, int16, uint16, int32, int64, float32 or float64)")),
        };
        Ok(d)
    }
}

/// `PREFIX.bin`: appends `.bin` to the prefix (never replaces an extension, as Megatron does).
pub fn bin_path(prefix: impl AsRef<Path>) -> PathBuf {
    with_suffix(prefix.as_ref(), ".bin")
}

/// `PREFIX.idx`.
pub fn idx_path(prefix: impl AsRef<Path>) -> PathBuf {
    with_suffix(prefix.as_ref(), ".idx")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// A prefix given as `X.bin` or `X.idx` means `X`, when `X.idx` exists.
fn normalize_prefix(prefix: &Path) -> PathBuf {
    let s = prefix.to_string_lossy();
    for ext in [".idx", ".bin"] {
        if let Some(stem) = s.strip_suffix(ext) {
            let p = PathBuf::from(stem);
            if idx_path(&p).is_file() && !idx_path(prefix).is_file() {
                return p;
            }
        }
    }
    prefix.to_path_buf()
}

/// Whether `PREFIX.idx` and `PREFIX.bin` both exist.
pub fn dataset_exists(prefix: impl AsRef<Path>) -> bool {
    idx_path(&prefix).is_file() && bin_path(&prefix).is_file()
}

/// A borrowed run of elements of a dataset, in its own dtype (no copy).
#[derive(Clone, Copy, Debug)]
pub enum Tokens<'a> {
    U8(&'a [u8]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F64(&'a [f64]),
    F32(&'a [f32]),
    U16(&'a [u16]),
}

macro_rules! each_tokens {
    ($t:expr, $s:ident => $body:expr) => {
        match $t {
            Tokens::U8($s) => $body,
            Tokens::I8($s) => $body,
            Tokens::I16($s) => $body,
            Tokens::I32($s) => $body,
            Tokens::I64($s) => $body,
            Tokens::F64($s) => $body,
            Tokens::F32($s) => $body,
            Tokens::U16($s) => $body,
        }
    };
}

impl<'a> Tokens<'a> {
    fn from_bytes(dtype: DType, bytes: &'a [u8]) -> Option<Tokens<'a>> {
        Some(match dtype {
            DType::U8 => Tokens::U8(bytes),
            DType::I8 => Tokens::I8(bytemuck::try_cast_slice(bytes).ok()?),
            DType::I16 => Tokens::I16(bytemuck::try_cast_slice(bytes).ok()?),
            DType::I32 => Tokens::I32(bytemuck::try_cast_slice(bytes).ok()?),
            DType::I64 => Tokens::I64(bytemuck::try_cast_slice(bytes).ok()?),
            DType::F64 => Tokens::F64(bytemuck::try_cast_slice(bytes).ok()?),
            DType::F32 => Tokens::F32(bytemuck::try_cast_slice(bytes).ok()?),
            DType::U16 => Tokens::U16(bytemuck::try_cast_slice(bytes).ok()?),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Tokens::U8(_) => DType::U8,
            Tokens::I8(_) => DType::I8,
            Tokens::I16(_) => DType::I16,
            Tokens::I32(_) => DType::I32,
            Tokens::I64(_) => DType::I64,
            Tokens::F64(_) => DType::F64,
            Tokens::F32(_) => DType::F32,
            Tokens::U16(_) => DType::U16,
        }
    }

    pub fn len(&self) -> usize {
        each_tokens!(self, s => s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A sub-range (panics when out of bounds, like slice indexing).
    pub fn slice(&self, range: Range<usize>) -> Tokens<'a> {
        match *self {
            Tokens::U8(s) => Tokens::U8(&s[range]),
            Tokens::I8(s) => Tokens::I8(&s[range]),
            Tokens::I16(s) => Tokens::I16(&s[range]),
            Tokens::I32(s) => Tokens::I32(&s[range]),
            Tokens::I64(s) => Tokens::I64(&s[range]),
            Tokens::F64(s) => Tokens::F64(&s[range]),
            Tokens::F32(s) => Tokens::F32(&s[range]),
            Tokens::U16(s) => Tokens::U16(&s[range]),
        }
    }

    /// Writes the elements, converted with `as u32`, into `out` (`out.len()` must equal `self.len()`).
    /// A straight widening loop: the compiler vectorises it.
    pub fn copy_to_u32(&self, out: &mut [u32]) {
        assert_eq!(out.len(), self.len(), "Tokens::copy_to_u32: length mismatch");
        each_tokens!(self, s => {
            for (o, &v) in out.iter_mut().zip(s.iter()) {
                *o = v as u32;
            }
        })
    }

    /// Appends the elements, converted with `as u32`, to `out`.
    pub fn extend_u32(&self, out: &mut Vec<u32>) {
        let start = out.len();
        out.resize(start + self.len(), 0);
        self.copy_to_u32(&mut out[start..]);
    }

    pub fn to_u32_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len());
        self.extend_u32(&mut v);
        v
    }
}

/// A memory-mapped Megatron indexed dataset, validated on open.
pub struct IndexedDataset {
    prefix: PathBuf,
    idx_path: PathBuf,
    bin_path: PathBuf,
    dtype: DType,
    idx: Mmap,
    /// `None` when the `.bin` is empty (a zero-length file cannot be mapped).
    bin: Option<Mmap>,
    sequence_count: usize,
    document_count: usize,
    num_tokens: u64,
    contiguous: bool,
}

impl fmt::Debug for IndexedDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedDataset")
            .field("prefix", &self.prefix)
            .field("dtype", &self.dtype)
            .field("sequences", &self.sequence_count)
            .field("documents", &self.num_documents())
            .field("tokens", &self.num_tokens)
            .finish()
    }
}

#[inline]
fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
#[inline]
fn read_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
#[inline]
fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl IndexedDataset {
    /// Opens `PREFIX.idx` + `PREFIX.bin` (a prefix ending in `.idx`/`.bin` is accepted too) and
    /// validates the index: magic, version, dtype code, array sizes, document indices, and that every
    /// sequence lies inside the `.bin`. Errors name the file at fault.
    pub fn open(prefix: impl AsRef<Path>) -> Result<IndexedDataset> {
        let prefix = normalize_prefix(prefix.as_ref());
        let idx_path = idx_path(&prefix);
        let bin_path = bin_path(&prefix);
        let idx_file = File::open(&idx_path).map_err(|e| DataError::io(&idx_path, e))?;
        let idx_len = idx_file.metadata().map_err(|e| DataError::io(&idx_path, e))?.len() as usize;
        if idx_len < INDEX_HEADER_LEN {
            return Err(DataError::bad_index(
                &idx_path,
                format!("file is {idx_len} bytes, shorter than the {INDEX_HEADER_LEN}-byte header"),
            ));
        }
        // SAFETY: read-only map; escale never writes a published dataset in place.
        let idx = unsafe { Mmap::map(&idx_file) }.map_err(|e| DataError::io(&idx_path, e))?;
        let b = &idx[..];
        if &b[0..9] != INDEX_MAGIC {
            return Err(DataError::bad_index(
                &idx_path,
                format!("bad magic {}, expected b\"MMIDIDX\\x00\\x00\"", escape_bytes(&b[0..9])),
            ));
        }
        let version = read_u64(b, 9);
        if version != INDEX_VERSION {
            return Err(DataError::bad_index(&idx_path, format!("unsupported version {version} (expected {INDEX_VERSION})")));
        }
        let code = b[17];
        let dtype = DType::from_code(code)
            .ok_or_else(|| DataError::bad_index(&idx_path, format!("unknown dtype code {code} (expected 1..=8)")))?;
        let sequence_count = read_u64(b, 18);
        let document_count = read_u64(b, 26);
        let needed = (sequence_count as u128) * 12 + (document_count as u128) * 8 + INDEX_HEADER_LEN as u128;
        if needed > idx_len as u128 {
            return Err(DataError::bad_index(
                &idx_path,
                format!(
                    "truncated: {sequence_count} sequences and {document_count} document indices need {needed} bytes, \
                     the file has {idx_len}"
                ),
            ));
        }
        let sequence_count = sequence_count as usize;
        let document_count = document_count as usize;

        let bin_file = File::open(&bin_path).map_err(|e| DataError::io(&bin_path, e))?;
        let bin_len = bin_file.metadata().map_err(|e| DataError::io(&bin_path, e))?.len();
        let bin = if bin_len == 0 {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { Mmap::map(&bin_file) }.map_err(|e| DataError::io(&bin_path, e))?)
        };

        let mut ds = IndexedDataset {
            prefix,
            idx_path,
            bin_path,
            dtype,
            idx,
            bin,
            sequence_count,
            document_count,
            num_tokens: 0,
            contiguous: true,
        };
        ds.validate(bin_len)?;
        Ok(ds)
    }

    fn validate(&mut self, bin_len: u64) -> Result<()> {
        let size = self.dtype.size() as u64;
        let mut expect_ptr = 0u64;
        let mut total = 0u64;
        for i in 0..self.sequence_count {
            let len = read_i32(&self.idx, self.lengths_at() + 4 * i);
            let ptr = read_i64(&self.idx, self.pointers_at() + 8 * i);
            if len < 0 || ptr < 0 {
                return Err(DataError::bad_index(&self.idx_path, format!("sequence {i} has length {len} and pointer {ptr}")));
            }
            let (len, ptr) = (len as u64, ptr as u64);
            if ptr % size != 0 {
                return Err(DataError::bad_index(
                    &self.idx_path,
                    format!("sequence {i} starts at byte {ptr}, not a multiple of the {}-byte {}", size, self.dtype),
                ));
            }
            let end = ptr + len * size;
            if end > bin_len {
                return Err(DataError::TruncatedData {
                    path: self.bin_path.clone(),
                    message: format!(
                        "sequence {i} of {} ends at byte {end} but the file has {bin_len} bytes (index {})",
                        self.sequence_count,
                        self.idx_path.display()
                    ),
                });
            }
            if ptr != expect_ptr {
                self.contiguous = false;
            }
            expect_ptr = end;
            total += len;
        }
        self.num_tokens = total;
        if self.document_count == 0 {
            return Err(DataError::bad_index(&self.idx_path, "document index is empty (it must start with 0)"));
        }
        let mut prev = 0i64;
        for d in 0..self.document_count {
            let v = read_i64(&self.idx, self.documents_at() + 8 * d);
            let ok = if d == 0 { v == 0 } else { v >= prev && v as u64 <= self.sequence_count as u64 };
            if !ok {
                return Err(DataError::bad_index(
                    &self.idx_path,
                    format!("document index {d} is {v} (must start at 0 and not decrease, up to {})", self.sequence_count),
                ));
            }
            prev = v;
        }
        if prev as u64 != self.sequence_count as u64 {
            return Err(DataError::bad_index(
                &self.idx_path,
                format!("the last document index is {prev}, expected the sequence count {}", self.sequence_count),
            ));
        }
        Ok(())
    }

    fn lengths_at(&self) -> usize {
        INDEX_HEADER_LEN
    }
    fn pointers_at(&self) -> usize {
        INDEX_HEADER_LEN + 4 * self.sequence_count
    }
    fn documents_at(&self) -> usize {
        INDEX_HEADER_LEN + 12 * self.sequence_count
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }
    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }
    pub fn bin_path(&self) -> &Path {
        &self.bin_path
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of sequences (Megatron's `len(dataset)`).
    pub fn len(&self) -> usize {
        self.sequence_count
    }
    pub fn is_empty(&self) -> bool {
        self.sequence_count == 0
    }
    /// Number of documents (document indices minus one).
    pub fn num_documents(&self) -> usize {
        self.document_count - 1
    }
    /// Total elements over all sequences.
    pub fn num_tokens(&self) -> u64 {
        self.num_tokens
    }
    /// Whether sequences lie back to back from byte 0 of the `.bin` in index order (true for
    /// everything escale and Megatron's builder write). The packed sampler needs it.
    pub fn is_contiguous(&self) -> bool {
        self.contiguous
    }

    /// Length in elements of sequence `i`.
    pub fn sequence_length(&self, i: usize) -> usize {
        assert!(i < self.sequence_count, "sequence {i} out of range ({} sequences)", self.sequence_count);
        read_i32(&self.idx, self.lengths_at() + 4 * i) as usize
    }

    /// Byte offset of sequence `i` in the `.bin`.
    pub fn sequence_pointer(&self, i: usize) -> u64 {
        assert!(i < self.sequence_count, "sequence {i} out of range ({} sequences)", self.sequence_count);
        read_i64(&self.idx, self.pointers_at() + 8 * i) as u64
    }

    /// The `m` document indices (`0`, then one past the last sequence of each document).
    pub fn document_indices(&self) -> Vec<u64> {
        (0..self.document_count).map(|d| read_i64(&self.idx, self.documents_at() + 8 * d) as u64).collect()
    }

    /// The sequences of document `d`.
    pub fn document_sequences(&self, d: usize) -> Range<usize> {
        assert!(d + 1 < self.document_count, "document {d} out of range ({} documents)", self.num_documents());
        let a = read_i64(&self.idx, self.documents_at() + 8 * d) as usize;
        let b = read_i64(&self.idx, self.documents_at() + 8 * (d + 1)) as usize;
        a..b
    }

    fn bin_bytes(&self) -> &[u8] {
        self.bin.as_deref().unwrap_or(&[])
    }

    /// Sequence `i`, borrowed from the map in the dataset's dtype.
    pub fn sequence(&self, i: usize) -> Tokens<'_> {
        let start = self.sequence_pointer(i) as usize;
        let end = start + self.sequence_length(i) * self.dtype.size();
        // Validated on open: inside the file and aligned to the element size.
        Tokens::from_bytes(self.dtype, &self.bin_bytes()[start..end]).expect("validated alignment")
    }

    fn require_tokens(&self) -> Result<()> {
        if self.dtype.max_token().is_none() {
            return Err(DataError::NotTokenDtype { path: self.idx_path.clone(), dtype: self.dtype });
        }
        Ok(())
    }

    /// Sequence `i` as token ids.
    pub fn sequence_u32(&self, i: usize) -> Result<Vec<u32>> {
        self.require_tokens()?;
        Ok(self.sequence(i).to_u32_vec())
    }

    /// Document `d` (all its sequences, concatenated) as token ids.
    pub fn document_u32(&self, d: usize) -> Result<Vec<u32>> {
        self.require_tokens()?;
        let mut out = Vec::new();
        for s in self.document_sequences(d) {
            self.sequence(s).extend_u32(&mut out);
        }
        Ok(out)
    }

    /// Every token of the dataset in file order (documents concatenated, each ending with the EOS
    /// the writer appended), borrowed from the map. Needs an integer dtype and a contiguous layout.
    pub fn token_stream(&self) -> Result<Tokens<'_>> {
        self.require_tokens()?;
        if !self.contiguous {
            return Err(DataError::bad_index(
                &self.idx_path,
                "sequences are not stored back to back in the .bin; cannot read them as one token stream",
            ));
        }
        let bytes = &self.bin_bytes()[..self.num_tokens as usize * self.dtype.size()];
        Ok(Tokens::from_bytes(self.dtype, bytes).expect("mmap is page aligned"))
    }
}

fn escape_bytes(b: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &c in b {
        s.extend(std::ascii::escape_default(c).map(char::from));
    }
    s.push('"');
    s
}

/// What [`IndexedDatasetWriter::finish`] wrote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrittenDataset {
    pub prefix: PathBuf,
    pub dtype: DType,
    pub documents: u64,
    pub tokens: u64,
}

/// Streaming writer of a Megatron indexed dataset (one sequence per document).
///
/// Memory stays constant whatever the size: tokens go straight to `PREFIX.bin`, sequence lengths
/// straight into the `.idx` after a placeholder header, sequence pointers to a side file that is
/// appended at the end. Everything is written under temporary names in the `.escale-tmp` folder
/// beside the targets (cleaned by the next writer there if this one is killed); `finish`
/// syncs, removes an existing `.idx` of the same prefix, then renames the `.bin` and finally the
/// `.idx` into place: a reader that finds the `.idx` finds the `.bin` that goes with it. Dropping
/// an unfinished writer deletes its temporary files.
pub struct IndexedDatasetWriter {
    prefix: PathBuf,
    dtype: DType,
    bin_tmp: PathBuf,
    idx_tmp: PathBuf,
    ptr_tmp: PathBuf,
    bin: Option<BufWriter<File>>,
    idx: Option<BufWriter<File>>,
    ptr: Option<BufWriter<File>>,
    max_token: u64,
    sequences: u64,
    tokens: u64,
    bin_bytes: u64,
    current_len: u64,
    scratch: Vec<u8>,
    done: bool,
}

impl fmt::Debug for IndexedDatasetWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedDatasetWriter")
            .field("prefix", &self.prefix)
            .field("dtype", &self.dtype)
            .field("documents", &self.sequences)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// A temporary file for `target` in the `.escale-tmp` area beside it, which the next writer there
/// cleans if this process is killed before `finish`.
fn staging_file(target: &Path) -> Result<(PathBuf, BufWriter<File>)> {
    let (path, f) = escale_util::publish::create_staging_file(target).map_err(|e| DataError::io(target, e))?;
    Ok((path, BufWriter::with_capacity(1 << 20, f)))
}

impl IndexedDatasetWriter {
    /// Starts writing `PREFIX.bin`/`PREFIX.idx` (the parent folder is created if missing). Existing
    /// files are replaced only by `finish`.
    pub fn create(prefix: impl AsRef<Path>, dtype: DType) -> Result<IndexedDatasetWriter> {
        let prefix = prefix.as_ref().to_path_buf();
        let max_token = dtype
            .max_token()
            .ok_or_else(|| DataError::Invalid(format!("cannot write token ids as {dtype}: choose an integer dtype")))?;
        if prefix.as_os_str().is_empty() || prefix.file_name().is_none() {
            return Err(DataError::Invalid(format!("invalid output prefix `{}`", prefix.display())));
        }
        if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        // Each file joins the writer as soon as it exists, so that an error drops (removes) it.
        let (bin_tmp, bin) = staging_file(&bin_path(&prefix))?;
        let mut w = IndexedDatasetWriter {
            prefix,
            dtype,
            bin: Some(bin),
            idx: None,
            ptr: None,
            bin_tmp,
            idx_tmp: PathBuf::new(),
            ptr_tmp: PathBuf::new(),
            max_token,
            sequences: 0,
            tokens: 0,
            bin_bytes: 0,
            current_len: 0,
            scratch: Vec::new(),
            done: false,
        };
        let (idx_tmp, idx) = staging_file(&idx_path(&w.prefix))?;
        (w.idx_tmp, w.idx) = (idx_tmp, Some(idx));
        let (ptr_tmp, ptr) = staging_file(&with_suffix(&w.prefix, ".ptr"))?;
        (w.ptr_tmp, w.ptr) = (ptr_tmp, Some(ptr));
        let header = [0u8; INDEX_HEADER_LEN];
        w.idx.as_mut().expect("just opened").write_all(&header).map_err(|e| DataError::io(&w.idx_tmp, e))?;
        Ok(w)
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Documents ended so far.
    pub fn num_documents(&self) -> u64 {
        self.sequences
    }
    /// Tokens written so far (including those of an unfinished document).
    pub fn num_tokens(&self) -> u64 {
        self.tokens
    }

    /// Appends tokens to the current document.
    pub fn append(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        if self.current_len + tokens.len() as u64 > i32::MAX as u64 {
            return Err(DataError::Invalid(format!(
                "{}: a document longer than {} tokens cannot be indexed (Megatron stores lengths as int32)",
                self.prefix.display(),
                i32::MAX
            )));
        }
        self.scratch.clear();
        self.scratch.reserve(tokens.len() * self.dtype.size());
        let max = self.max_token;
        let bad = match self.dtype {
            DType::U8 => push_le(&mut self.scratch, tokens, max, |t| (t as u8).to_le_bytes()),
            DType::I8 => push_le(&mut self.scratch, tokens, max, |t| (t as i8).to_le_bytes()),
            DType::I16 => push_le(&mut self.scratch, tokens, max, |t| (t as i16).to_le_bytes()),
            DType::U16 => push_le(&mut self.scratch, tokens, max, |t| (t as u16).to_le_bytes()),
            DType::I32 => push_le(&mut self.scratch, tokens, max, |t| (t as i32).to_le_bytes()),
            DType::I64 => push_le(&mut self.scratch, tokens, max, |t| (t as i64).to_le_bytes()),
            DType::F32 | DType::F64 => unreachable!("rejected by create"),
        };
        if let Some(token) = bad {
            return Err(DataError::TokenOutOfRange { path: self.prefix.clone(), token: token as u64, dtype: self.dtype });
        }
        let bin = self.bin.as_mut().expect("writer is open");
        bin.write_all(&self.scratch).map_err(|e| DataError::io(&self.bin_tmp, e))?;
        self.current_len += tokens.len() as u64;
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    /// Ends the current document (it may be empty).
    pub fn end_document(&mut self) -> Result<()> {
        let idx = self.idx.as_mut().expect("writer is open");
        idx.write_all(&(self.current_len as i32).to_le_bytes()).map_err(|e| DataError::io(&self.idx_tmp, e))?;
        let ptr = self.ptr.as_mut().expect("writer is open");
        ptr.write_all(&(self.bin_bytes as i64).to_le_bytes()).map_err(|e| DataError::io(&self.ptr_tmp, e))?;
        self.bin_bytes += self.current_len * self.dtype.size() as u64;
        self.current_len = 0;
        self.sequences += 1;
        Ok(())
    }

    /// Appends a whole document.
    pub fn add_document(&mut self, tokens: &[u32]) -> Result<()> {
        self.append(tokens)?;
        self.end_document()
    }

    /// Completes the index and publishes both files. A document still open is ended first.
    pub fn finish(mut self) -> Result<WrittenDataset> {
        if self.current_len > 0 {
            self.end_document()?;
        }
        let mut bin = self.bin.take().expect("writer is open");
        bin.flush().map_err(|e| DataError::io(&self.bin_tmp, e))?;
        let bin = bin.into_inner().map_err(|e| DataError::io(&self.bin_tmp, e.into_error()))?;
        bin.sync_all().map_err(|e| DataError::io(&self.bin_tmp, e))?;
        drop(bin);

        let mut ptr = self.ptr.take().expect("writer is open");
        ptr.flush().map_err(|e| DataError::io(&self.ptr_tmp, e))?;
        drop(ptr);

        let mut idx = self.idx.take().expect("writer is open");
        let mut ptr_file = File::open(&self.ptr_tmp).map_err(|e| DataError::io(&self.ptr_tmp, e))?;
        std::io::copy(&mut ptr_file, &mut idx).map_err(|e| DataError::io(&self.idx_tmp, e))?;
        drop(ptr_file);
        for d in 0..=self.sequences {
            idx.write_all(&(d as i64).to_le_bytes()).map_err(|e| DataError::io(&self.idx_tmp, e))?;
        }
        let mut idx = idx.into_inner().map_err(|e| DataError::io(&self.idx_tmp, e.into_error()))?;
        let mut header = Vec::with_capacity(INDEX_HEADER_LEN);
        header.extend_from_slice(INDEX_MAGIC);
        header.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        header.push(self.dtype.code());
        header.extend_from_slice(&self.sequences.to_le_bytes());
        header.extend_from_slice(&(self.sequences + 1).to_le_bytes());
        idx.seek(SeekFrom::Start(0)).map_err(|e| DataError::io(&self.idx_tmp, e))?;
        idx.write_all(&header).map_err(|e| DataError::io(&self.idx_tmp, e))?;
        idx.sync_all().map_err(|e| DataError::io(&self.idx_tmp, e))?;
        drop(idx);

        let bin_final = bin_path(&self.prefix);
        let idx_final = idx_path(&self.prefix);
        // An old index goes first, so that no reader pairs it with the new data.
        match std::fs::remove_file(&idx_final) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io(&idx_final, e)),
        }
        std::fs::rename(&self.bin_tmp, &bin_final).map_err(|e| DataError::io(&bin_final, e))?;
        std::fs::rename(&self.idx_tmp, &idx_final).map_err(|e| DataError::io(&idx_final, e))?;
        escale_util::publish::sync_dir(escale_util::publish::parent_dir(&idx_final));
        let _ = std::fs::remove_file(&self.ptr_tmp);
        escale_util::publish::remove_area_if_empty(&escale_util::publish::tmp_area(&idx_final));
        self.done = true;
        Ok(WrittenDataset { prefix: self.prefix.clone(), dtype: self.dtype, documents: self.sequences, tokens: self.tokens })
    }
}

/// Pushes each token's little-endian bytes; returns the first token above `max`, if any.
#[inline]
fn push_le<const N: usize>(out: &mut Vec<u8>, tokens: &[u32], max: u64, f: impl Fn(u32) -> [u8; N]) -> Option<u32> {
    let mut bad = None;
    for &t in tokens {
        if t as u64 > max {
            bad = Some(t);
            break;
        }
        out.extend_from_slice(&f(t));
    }
    bad
}

impl Drop for IndexedDatasetWriter {
    fn drop(&mut self) {
        if !self.done {
            self.bin.take();
            self.idx.take();
            self.ptr.take();
            for tmp in [&self.bin_tmp, &self.idx_tmp, &self.ptr_tmp] {
                if !tmp.as_os_str().is_empty() {
                    let _ = std::fs::remove_file(tmp);
                }
            }
            escale_util::publish::remove_area_if_empty(&escale_util::publish::tmp_area(&bin_path(&self.prefix)));
        }
    }
}

/// Writes a whole dataset from in-memory documents (convenience for tests and small data).
pub fn write_dataset(prefix: impl AsRef<Path>, dtype: DType, documents: &[Vec<u32>]) -> Result<WrittenDataset> {
    let mut w = IndexedDatasetWriter::create(prefix, dtype)?;
    for d in documents {
        w.add_document(d)?;
    }
    w.finish()
}
