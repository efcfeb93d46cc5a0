//! Fuzzes the pipeline YAML: parsing, the typed schema and its validation (stage names, sources,
//! train blocks). Any text gets a `SchemaError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = escale_pipeline::schema::PipelineFile::parse(text, "fuzz.yaml");
    }
});
