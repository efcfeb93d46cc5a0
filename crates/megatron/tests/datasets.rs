//! megatron-core's own `IndexedDataset` and `GPTDataset` read escale's `.bin/.idx` (written by
//! escale-data's writer, the one `escale prepare-data` uses): the same documents with the same
//! tokens, and GPTDataset's training samples are windows over those documents.

mod common;

use std::ffi::OsString;
use std::path::Path;

use escale_data::indexed::write_dataset;
use escale_data::{DType, IndexedDataset};

const EOD: u32 = 2;

/// Deterministic documents of varied lengths (1 to 40 tokens plus an end-of-document token).
fn documents(count: usize, vocab: u32) -> Vec<Vec<u32>> {
    let mut state = 0x9e37_79b9_u64;
    (0..count)
        .map(|_| {
            state = escale_util::rng::splitmix64(state);
            let len = 1 + (state % 40) as usize;
            let mut doc: Vec<u32> = (0..len)
                .map(|_| {
                    state = escale_util::rng::splitmix64(state);
                    3 + (state % u64::from(vocab - 3)) as u32
                })
                .collect();
            doc.push(EOD);
            doc
        })
        .collect()
}

/// Whether `sample` is a window over the documents: a tail of one document, then whole documents,
/// then a head of one (pieces end at the end-of-document token).
fn is_window_over(sample: &[u32], docs: &[Vec<u32>]) -> bool {
    let mut pieces: Vec<&[u32]> = sample.split_inclusive(|&t| t == EOD).collect();
    let last = pieces.pop().unwrap_or(&[]);
    let ends_inside = last.last() != Some(&EOD);
    let first_is_tail = |p: &[u32]| docs.iter().any(|d| d.ends_with(p));
    let whole = |p: &[u32]| docs.iter().any(|d| d.as_slice() == p);
    if pieces.is_empty() {
        // One piece: a slice strictly inside a document (or a tail ending with EOD).
        return docs.iter().any(|d| d.windows(last.len()).any(|w| w == last));
    }
    let head_ok = if ends_inside { docs.iter().any(|d| d.starts_with(last)) } else { whole(last) || first_is_tail(last) };
    first_is_tail(pieces[0]) && pieces[1..].iter().all(|p| whole(p)) && head_ok
}

fn check(bridge: &escale_megatron::Bridge, dir: &Path, dtype: DType, vocab: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let prefix = dir.join(format!("data_{}", dtype.name()));
    let docs = documents(60, vocab);
    write_dataset(&prefix, dtype, &docs).unwrap();
    let ours = IndexedDataset::open(&prefix).unwrap();
    let out = dir.join("mcore.json");
    let (seq_len, samples) = (16usize, 40usize);
    let args: Vec<OsString> = vec![
        "--prefix".into(),
        prefix.clone().into(),
        "--seq-len".into(),
        seq_len.to_string().into(),
        "--samples".into(),
        samples.to_string().into(),
        "--vocab-size".into(),
        vocab.to_string().into(),
        "--eod".into(),
        EOD.to_string().into(),
        "--cache".into(),
        dir.join("cache").into(),
        "--out".into(),
        out.clone().into(),
    ];
    bridge.run("dataset", &args).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(theirs["dtype"].as_str().unwrap(), dtype.name(), "token dtype");
    let mcore_docs: Vec<Vec<u32>> = serde_json::from_value(theirs["documents"].clone()).unwrap();
    assert_eq!(mcore_docs.len(), ours.num_documents());
    for (d, doc) in mcore_docs.iter().enumerate() {
        assert_eq!(doc, &ours.document_u32(d).unwrap(), "document {d}");
        assert_eq!(doc, &docs[d], "document {d} as written");
    }
    let items = theirs["samples"].as_array().unwrap();
    assert_eq!(items.len(), samples);
    for (i, item) in items.iter().enumerate() {
        let tokens: Vec<u32> = serde_json::from_value(item["tokens"].clone()).unwrap();
        let labels: Vec<u32> = serde_json::from_value(item["labels"].clone()).unwrap();
        assert_eq!((tokens.len(), labels.len()), (seq_len, seq_len), "sample {i}");
        assert_eq!(&tokens[1..], &labels[..seq_len - 1], "sample {i}: labels are the next tokens");
        let mut window = tokens.clone();
        window.push(labels[seq_len - 1]);
        assert!(is_window_over(&window, &docs), "sample {i} {window:?} is not a window over escale's documents");
        // The check can fail: a token no document holds (ids 0 and 1 are never drawn) breaks it.
        window[seq_len / 2] = 1;
        assert!(!is_window_over(&window, &docs), "sample {i}: the window check accepts anything");
    }
}

#[test]
fn megatron_core_reads_escale_indexed_datasets() {
    let bridge = require_megatron!();
    let tmp = tempfile::tempdir().unwrap();
    // uint16 is Megatron's choice below 65500 tokens, int32 above it.
    check(&bridge, tmp.path(), DType::U16, 500);
    check(&bridge, &tmp.path().join("i32"), DType::I32, 100_000);
}
