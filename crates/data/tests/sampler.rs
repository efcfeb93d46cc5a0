//! Packed-sequence sampler: windows, shuffling, epochs and exact resume.

use std::collections::BTreeSet;
use std::sync::Arc;

use escale_data::indexed::write_dataset;
use escale_data::sampler::windows_in;
use escale_data::{DType, IndexedDataset, PackedSampler, SamplerConfig, SamplerState};

/// Documents whose tokens are 1, 2, 3, ... in stream order (each ends with EOS = 0).
fn dataset(dir: &std::path::Path, dtype: DType, sizes: &[usize]) -> (Arc<IndexedDataset>, Vec<u32>) {
    let mut next = 1u32;
    let mut docs = Vec::new();
    for &n in sizes {
        let mut d: Vec<u32> = (0..n).map(|_| {
            next += 1;
            next % 60_000
        }).collect();
        d.push(0);
        docs.push(d);
    }
    let prefix = dir.join(format!("ds_{dtype}"));
    write_dataset(&prefix, dtype, &docs).unwrap();
    (Arc::new(IndexedDataset::open(&prefix).unwrap()), docs.concat())
}

fn cfg(seq_len: usize, batch_size: usize, seed: u64, shuffle: bool) -> SamplerConfig {
    SamplerConfig { seq_len, batch_size, seed, shuffle }
}

#[test]
fn windows_concatenate_documents_and_overlap_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, stream) = dataset(dir.path(), DType::U16, &[5, 1, 17, 3, 40]);
    let seq = 8;
    let mut s = PackedSampler::new(ds.clone(), cfg(seq, 1, 0, false)).unwrap();
    let n = windows_in(stream.len() as u64, seq);
    assert_eq!(s.samples_per_epoch(), n);
    assert_eq!(n, (stream.len() as u64 - 1) / seq as u64);
    assert_eq!(s.tokens_per_epoch(), n * seq as u64);
    for i in 0..n as usize {
        let b = s.next_batch();
        assert_eq!(b, stream[i * seq..i * seq + seq + 1].to_vec(), "window {i}");
    }
    assert_eq!(s.state(), SamplerState { epoch: 1, index: 0 });
}

#[test]
fn each_epoch_is_a_permutation_and_epochs_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, stream) = dataset(dir.path(), DType::I32, &[100, 250, 33, 1000, 7]);
    let seq = 16;
    let mut s = PackedSampler::new(ds, cfg(seq, 1, 42, true)).unwrap();
    let n = s.samples_per_epoch() as usize;
    let mut orders = Vec::new();
    for epoch in 0..3 {
        let mut order = Vec::new();
        for _ in 0..n {
            assert_eq!(s.state().epoch, epoch);
            let b = s.next_batch();
            let start = stream.windows(seq + 1).position(|w| w == &b[..]).expect("a window of the stream");
            assert_eq!(start % seq, 0);
            order.push(start / seq);
        }
        let set: BTreeSet<usize> = order.iter().copied().collect();
        assert_eq!(set, (0..n).collect(), "epoch {epoch} serves every window once");
        assert_ne!(order, (0..n).collect::<Vec<_>>(), "shuffled");
        orders.push(order);
    }
    assert_ne!(orders[0], orders[1]);
    assert_ne!(orders[1], orders[2]);
    assert!((s.epoch_progress() - 3.0).abs() < 1e-12);
    assert_eq!(s.samples_seen(), 3 * n as u64);
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, _) = dataset(dir.path(), DType::U16, &[500, 300, 800]);
    let run = |seed| {
        let mut s = PackedSampler::new(ds.clone(), cfg(32, 4, seed, true)).unwrap();
        (0..20).map(|_| s.next_batch()).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn resume_at_any_state_continues_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, _) = dataset(dir.path(), DType::U16, &[300, 20, 900, 45]);
    let c = cfg(24, 5, 7, true);
    let mut reference = PackedSampler::new(ds.clone(), c.clone()).unwrap();
    let per_epoch = reference.samples_per_epoch();
    let mut states = Vec::new();
    let mut batches = Vec::new();
    for _ in 0..40 {
        states.push(reference.state());
        batches.push(reference.next_batch());
    }
    // Batches straddle epochs: batch 40 * 5 windows > 2 epochs of ~52.
    assert!(reference.state().epoch >= 2, "{per_epoch} windows per epoch");
    for k in [0usize, 1, 9, 10, 11, 23, 39] {
        // The state goes through JSON, as in a checkpoint.
        let json = serde_json::to_string(&states[k]).unwrap();
        let state: SamplerState = serde_json::from_str(&json).unwrap();
        let mut resumed = PackedSampler::new(ds.clone(), c.clone()).unwrap();
        resumed.set_state(state).unwrap();
        for (j, want) in batches.iter().enumerate().skip(k) {
            assert_eq!(&resumed.next_batch(), want, "resumed at {k}, batch {j}");
        }
        assert_eq!(resumed.state(), reference.state());
    }
    // End of an epoch reads as the start of the next one; beyond is an error.
    let mut s = PackedSampler::new(ds.clone(), c.clone()).unwrap();
    s.set_state(SamplerState { epoch: 3, index: per_epoch }).unwrap();
    assert_eq!(s.state(), SamplerState { epoch: 4, index: 0 });
    assert!(s.set_state(SamplerState { epoch: 0, index: per_epoch + 1 }).is_err());
}

#[test]
fn batch_layout_and_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, stream) = dataset(dir.path(), DType::U8, &[200]);
    let mut s = PackedSampler::new(ds, cfg(10, 3, 0, false)).unwrap();
    assert_eq!(s.window_len(), 11);
    let mut buf = Vec::with_capacity(1);
    s.next_batch_into(&mut buf);
    assert_eq!(buf.len(), 3 * 11);
    // uint8 dataset: tokens are the stream values modulo 256.
    let expect: Vec<u32> = (0..3).flat_map(|r| stream[r * 10..r * 10 + 11].iter().map(|&t| t % 256)).collect();
    assert_eq!(buf, expect);
}

#[test]
fn too_small_or_bad_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, _) = dataset(dir.path(), DType::U16, &[5]);
    let e = PackedSampler::new(ds.clone(), cfg(6, 1, 0, true)).unwrap_err().to_string();
    assert!(e.contains("too few"), "{e}");
    assert!(PackedSampler::new(ds.clone(), cfg(5, 1, 0, true)).is_ok());
    assert!(PackedSampler::new(ds.clone(), cfg(0, 1, 0, true)).is_err());
    assert!(PackedSampler::new(ds, cfg(2, 0, 0, true)).is_err());
}

#[test]
fn sampling_is_fast() {
    // 4M tokens, 2048-token windows: a pure copy per window, no per-token work beyond widening.
    let dir = tempfile::tempdir().unwrap();
    let (ds, _) = dataset(dir.path(), DType::U16, &[4_000_000]);
    let mut s = PackedSampler::new(ds, cfg(2048, 8, 1, true)).unwrap();
    let mut buf = Vec::new();
    let t = std::time::Instant::now();
    let batches = s.batches_per_epoch();
    for _ in 0..batches {
        s.next_batch_into(&mut buf);
    }
    let secs = t.elapsed().as_secs_f64();
    let tokens = batches as f64 * 8.0 * 2049.0;
    eprintln!("{:.0} M tokens/s", tokens / secs / 1e6);
    assert!(secs < 2.0, "one epoch of 4M tokens took {secs:.2}s");
}
