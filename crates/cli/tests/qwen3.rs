//! The real Qwen3 tokenizer of the shared test data drives `escale prepare-data` and `escale eval`
//! on a qwen3 model made by `escale init` (vocabulary padded to 151,936 like the hub's configs);
//! `scale-out`, `verify` and `generate` run on it, and the eval loss is checked against
//! transformers when the oracle is installed.

use std::path::Path;
use std::process::{Command, Output};

use escale_data::{IndexedDataset, TextTokenizer};

fn escale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_escale")).args(args).output().expect("run escale")
}

fn ok(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&o.stderr));
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first `bytes` of a corpus file, cut at a paragraph boundary.
fn excerpt(src: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(src).unwrap();
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text[..end].rfind("\n\n").unwrap_or(end);
    text[..cut].to_string()
}

#[test]
fn qwen3_tokenizer_drives_prepare_data_and_eval() {
    let shared = escale_testkit::require_shared!();
    let tok_dir = shared.join("testdata/tokenizers/qwen3");
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n\n{}",
        excerpt(&shared.join("testdata/corpus/en/tinyshakespeare.txt"), 6000),
        excerpt(&shared.join("testdata/corpus/zh/hongloumeng-ch01-40.txt"), 3000)
    );
    let text_path = tmp.path().join("mixed.txt");
    std::fs::write(&text_path, &text).unwrap();

    // prepare-data: 151,669 ids need int32; every document ends with the eos_token of tokenizer_config.json,
    // <|im_end|> (151645).
    let prefix = tmp.path().join("data/tokens");
    let out = ok(&escale(&["prepare-data", s(&text_path), "--tokenizer", s(&tok_dir), "--output", s(&prefix), "--json"]));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["dtype"], "int32", "{summary}");
    assert_eq!((summary["eos"]["token"].as_str(), summary["eos"]["id"].as_u64()), (Some("<|im_end|>"), Some(151645)), "eos_token of tokenizer_config.json");
    let data = IndexedDataset::open(&prefix).unwrap();
    let tok = TextTokenizer::from_file(&tok_dir).unwrap();
    let first_doc = text.split("\n\n").next().unwrap();
    let mut want = tok.encode(first_doc).unwrap();
    want.push(151645);
    assert_eq!(data.document_u32(0).unwrap(), want, "first document");
    assert_eq!(data.num_tokens(), summary["tokens"].as_u64().unwrap());
    let last = data.document_u32(data.num_documents() - 1).unwrap();
    assert!(last.iter().any(|&t| t > 100_000), "the Chinese paragraphs use ids beyond 100k: {last:?}");

    // A qwen3 model with the hub's padded vocabulary and the tokenizer beside it.
    let cfg_dir = tmp.path().join("cfg");
    std::fs::create_dir(&cfg_dir).unwrap();
    let config = serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": true, "initializer_range": 0.5,
        "bos_token_id": 151643, "eos_token_id": 151645});
    std::fs::write(cfg_dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok_dir.join(f), cfg_dir.join(f)).unwrap();
    }
    let model = tmp.path().join("model");
    ok(&escale(&["init", "--config", s(&cfg_dir.join("config.json")), "--output", s(&model), "--seed", "3"]));
    assert!(model.join("tokenizer.json").is_file());
    let inspect = ok(&escale(&["inspect", s(&model)]));
    assert!(inspect.contains("qwen3") && inspect.contains("q/k norm"), "{inspect}");

    // eval over one window of 64 tokens: 63 predictions.
    let out = ok(&escale(&["eval", s(&model), "--text", s(&text_path), "--window", "64", "--max-tokens", "64", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["tokens"], 63, "{report}");
    let loss = report["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 1.0, "{report}");
    // Upcycled to qwen3_moe (the default format for qwen3) and checked by `escale verify`.
    let moe = tmp.path().join("moe");
    let out = ok(&escale(&["scale-out", s(&model), s(&moe), "--experts", "4", "--top-k", "2", "--sparse-step", "2", "--quiet"]));
    assert!(out.contains("qwen3 -> qwen3_moe") && out.contains("sparse layers: 1 of 2"), "{out}");
    let out = ok(&escale(&["verify", s(&model), s(&moe), "--text", s(&text_path), "--max-tokens", "96", "--expect", "exact", "--tol", "1e-4"]));
    assert!(!out.is_empty());
    let gen = ok(&escale(&["generate", s(&moe), "--prompt", "To be, or not", "--max-new-tokens", "4", "--json"]));
    assert!(gen.contains("To be, or not"), "{gen}");

    // transformers on the same 64 ids (the tokenizer's, as eval reads them).
    let Some(oracle) = escale_testkit::Oracle::get() else { return };
    let mut ids = tok.encode(&text).unwrap();
    ids.truncate(64);
    let theirs = oracle.logits(&model, &[ids]).seqs[0].loss.unwrap();
    assert!((loss - theirs).abs() < 1e-4 * theirs, "escale eval loss {loss} vs transformers {theirs}");
}
