//! `escale inspect` end to end: counts on the real stories260K model, and clean failures.

mod common;
use common::run_escale as escale;

use escale_testkit::shared_dir as shared;

#[test]
fn inspect_reports_stories260k() {
    let Some(shared) = shared() else { return };
    let model = shared.join("testdata/models/stories260K");
    let out = escale(&["inspect", model.to_str().unwrap(), "--json", "--tensors"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"]["total"], 260_032);
    assert_eq!(v["params"]["active"], 260_032);
    assert_eq!(v["attention_heads"], 8);
    assert_eq!(v["kv_heads"], 4);
    assert_eq!(v["head_dim"], 8);
    assert_eq!(v["tied_embeddings"], true);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 47);
    assert_eq!(v["shards"][0]["file"], "model.safetensors");

    let text = escale(&["inspect", model.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("260032 total") && text.contains("KV 4") && text.contains("tied"), "{text}");
}

#[test]
fn inspect_fails_cleanly_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    let out = escale(&["inspect", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken/config.json") && err.contains("invalid JSON"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    let out = escale(&["inspect", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("gpt_neox") && err.contains("mixtral"), "{err}");
}
