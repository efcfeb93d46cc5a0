//! Text -> token windows for `eval` and `verify`: text streamed in chunks through the model
//! folder's tokenizer, so arbitrarily long files use bounded memory. Tokenizers are loaded by
//! [`escale_data::TextTokenizer`], the one loading path (it also knows EOS and BOS).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use escale_data::TextTokenizer;

use crate::error::{ModelError, Result};

/// Splits a long token sequence into windows of at most `window` tokens that overlap by one token,
/// so every token after the first is predicted exactly once (window `k` starts at `k*(window-1)`).
/// Trailing single tokens (nothing to predict) are dropped.
pub fn windows(ids: &[u32], window: usize) -> Vec<&[u32]> {
    assert!(window >= 2, "a window needs at least 2 tokens");
    let mut out = Vec::new();
    let mut start = 0;
    while ids.len() - start >= 2 {
        let end = (start + window).min(ids.len());
        out.push(&ids[start..end]);
        if end == ids.len() {
            break;
        }
        start = end - 1;
    }
    out
}

/// Token stream over a text file, read in chunks of about `chunk_bytes` cut at line ends. The
/// first chunk is encoded with the tokenizer's post-processor special tokens (e.g. BOS, exactly
/// where transformers' `tokenizer(text)` puts them), later ones without.
/// Chunk boundaries may tokenize slightly differently from encoding the whole file at once (a
/// SentencePiece-style tokenizer re-adds its word-start marker per chunk); with 64 KiB chunks that
/// touches about one token per chunk.
pub struct TokenStream<'a> {
    tok: &'a TextTokenizer,
    reader: BufReader<Box<dyn Read + 'a>>,
    path: PathBuf,
    first: bool,
    chunk_bytes: usize,
    done: bool,
}

impl<'a> TokenStream<'a> {
    pub fn open(tok: &'a TextTokenizer, path: &Path) -> Result<TokenStream<'a>> {
        let f = std::fs::File::open(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), cause: e })?;
        Ok(TokenStream::from_reader(tok, Box::new(f), path))
    }

    pub fn from_reader(tok: &'a TextTokenizer, reader: Box<dyn Read + 'a>, path: &Path) -> TokenStream<'a> {
        TokenStream {
            tok,
            reader: BufReader::new(reader),
            path: path.to_path_buf(),
            first: true,
            chunk_bytes: 64 << 10,
            done: false,
        }
    }

    /// Next chunk's token ids, `None` at end of input.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u32>>> {
        if self.done {
            return Ok(None);
        }
        let mut text = String::new();
        while text.len() < self.chunk_bytes {
            let n = self
                .reader
                .read_line(&mut text)
                .map_err(|e| ModelError::Io { path: self.path.clone(), cause: e })?;
            if n == 0 {
                self.done = true;
                break;
            }
        }
        if text.is_empty() && !self.first {
            return Ok(None);
        }
        let ids = self.tok.encode_with(&text, self.first)?;
        self.first = false;
        Ok(Some(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_one_and_cover_every_prediction() {
        let ids: Vec<u32> = (0..10).collect();
        let w = windows(&ids, 4);
        assert_eq!(w, vec![&ids[0..4], &ids[3..7], &ids[6..10]]);
        let predicted: usize = w.iter().map(|x| x.len() - 1).sum();
        assert_eq!(predicted, 9);
        assert_eq!(windows(&ids[..8], 4), vec![&ids[0..4], &ids[3..7], &ids[6..8]]);
        assert_eq!(windows(&ids[..7], 4), vec![&ids[0..4], &ids[3..7]]);
        assert!(windows(&ids[..1], 4).is_empty());
    }

    #[test]
    fn missing_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = TextTokenizer::from_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("not found"), "{e}");
    }
}
