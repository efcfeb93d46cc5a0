//! Fuzzes the two parsers that see untrusted bytes first: the safetensors header path
//! (length prefix, JSON header, offsets, dtypes) and config.json parsing. Neither may panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = escale_formats::reader::read_safetensors_header(Path::new("fuzz.safetensors"), data, 0);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(cfg) = escale_formats::ModelConfig::from_json(value, Path::new("config.json")) {
            let _ = escale_formats::expected_params(&cfg);
            let _ = cfg.to_json();
        }
    }
});
