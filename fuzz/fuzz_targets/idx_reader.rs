//! Fuzzes the Megatron `.idx` reader (with its `.bin`): magic, version, dtype code, counts that
//! may overflow, pointers and lengths outside the data. Opening and reading back every document
//! may fail with an error, never panic or read out of bounds.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One scratch folder per fuzzing process (the reader maps real files).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("escale-fuzz-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes say how many of the rest form the .bin; the remainder is the .idx.
    let Some((head, rest)) = data.split_first_chunk::<2>() else { return };
    let bin_len = (u16::from_le_bytes(*head) as usize).min(rest.len());
    let (bin, idx) = rest.split_at(bin_len);
    let prefix = scratch().join("data");
    std::fs::write(prefix.with_extension("bin"), bin).expect("write .bin");
    std::fs::write(prefix.with_extension("idx"), idx).expect("write .idx");
    if let Ok(ds) = escale_data::indexed::IndexedDataset::open(&prefix) {
        for d in 0..ds.num_documents() {
            for s in ds.document_sequences(d) {
                let _ = ds.sequence_length(s);
            }
        }
        if let Ok(stream) = ds.token_stream() {
            let _ = stream.to_u32_vec();
        }
    }
});
