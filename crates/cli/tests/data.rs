//! `escale make-corpus`, `train-tokenizer` and `prepare-data` end to end.

use std::path::Path;
use std::process::Output;

use escale_data::{DType, IndexedDataset, TextTokenizer};

mod common;
use common::run_escale as escale;

fn ok(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&o.stderr));
    stdout
}

fn fail(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure; stdout: {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(o.status.code(), Some(1));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn corpus_tokenizer_and_dataset_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    let out = ok(&escale(&["make-corpus", "--size", "2MB", "--seed", "1", "--output", s(&corpus)]));
    assert!(out.contains("documents") && out.contains("people"), "{out}");
    let text = std::fs::read(corpus.join("corpus.txt")).unwrap();
    assert!(text.len() >= 2_000_000 && text.len() < 2_002_000, "{}", text.len());
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(corpus.join("corpus.info")).unwrap()).unwrap();

    // Same seed: byte-identical; another seed: different.
    let again = tmp.path().join("again");
    ok(&escale(&["make-corpus", "--size", "2MB", "--seed", "1", "--output", s(&again)]));
    assert!(std::fs::read(again.join("corpus.txt")).unwrap() == text);
    let other = tmp.path().join("other");
    let j = ok(&escale(&["make-corpus", "--size", "2MB", "--seed", "2", "--output", s(&other), "--json"]));
    let j: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(j["options"]["seed"], 2);
    assert!(std::fs::read(other.join("corpus.txt")).unwrap() != text);

    let tok = tmp.path().join("tok");
    let out = ok(&escale(&["train-tokenizer", s(&corpus.join("corpus.txt")), "--vocab-size", "1200", "--output", s(&tok)]));
    assert!(out.contains("</s> = 1"), "{out}");
    let t = TextTokenizer::from_file(&tok).unwrap();
    assert_eq!(t.vocab_size(), 1200);

    // A folder input, a split, a JSON summary.
    let prefix = tmp.path().join("data/tokens");
    let out = ok(&escale(&["prepare-data", s(&corpus), "--tokenizer", s(&tok), "--output", s(&prefix), "--split", "0.95", "--json"]));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["documents"], info["documents"]);
    assert_eq!(summary["dtype"], "uint16");
    assert_eq!(summary["eos"]["token"], "</s>");
    let train = IndexedDataset::open(tmp.path().join("data/tokens_train")).unwrap();
    let valid = IndexedDataset::open(tmp.path().join("data/tokens_valid")).unwrap();
    assert_eq!((train.num_documents() + valid.num_documents()) as u64, info["documents"].as_u64().unwrap());
    assert!(valid.num_documents() > 100);
    assert_eq!(train.dtype(), DType::U16);
    assert_eq!(train.num_tokens() + valid.num_tokens(), summary["tokens"].as_u64().unwrap());
    // First document of the corpus, exactly.
    let text = String::from_utf8(text).unwrap();
    let doc0 = text.split("\n\n").next().unwrap();
    let mut want = t.encode(doc0).unwrap();
    want.push(1);
    let first = if train.document_u32(0).unwrap() == want { true } else { valid.document_u32(0).unwrap() == want };
    assert!(first, "first document round-trips");

    // Text report.
    let out = ok(&escale(&["prepare-data", s(&corpus.join("corpus.txt")), "--tokenizer", s(&tok.join("tokenizer.json")), "--output", s(&tmp.path().join("all")), "--quiet"]));
    assert!(out.contains("tokens/byte") && out.contains("wrote") && out.contains("EOS </s> = 1"), "{out}");
}

#[test]
fn prepare_data_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("c");
    ok(&escale(&["make-corpus", "--size", "100KB", "--output", s(&corpus)]));
    let tok = tmp.path().join("tok");
    ok(&escale(&["train-tokenizer", s(&corpus.join("corpus.txt")), "--vocab-size", "300", "--output", s(&tok)]));

    let good = tmp.path().join("good.txt");
    std::fs::write(&good, "hello\n\nworld\n").unwrap();
    let bad = tmp.path().join("bad.txt");
    std::fs::write(&bad, b"fine\n\nnot \xc3\x28 fine\n").unwrap();
    let out = tmp.path().join("out/x");

    let e = fail(&escale(&["prepare-data", s(&good), s(&bad), "--tokenizer", s(&tok), "--output", s(&out)]));
    assert!(e.contains("bad.txt:3") && e.contains("invalid UTF-8"), "{e}");
    assert!(!tmp.path().join("out/x.idx").exists());

    let o = ok(&escale(&["prepare-data", s(&good), s(&bad), "--tokenizer", s(&tok), "--output", s(&out), "--on-error", "skip"]));
    assert!(o.contains("skipped 1") && o.contains("bad.txt:3"), "{o}");
    assert_eq!(IndexedDataset::open(&out).unwrap().num_documents(), 3);

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let e = fail(&escale(&["prepare-data", s(&empty), "--tokenizer", s(&tok), "--output", s(&out)]));
    assert!(e.contains("empty input") && e.contains("no document"), "{e}");

    let e = fail(&escale(&["prepare-data", s(&good), "--tokenizer", s(&tok), "--output", s(&out), "--dtype", "uint8"]));
    assert!(e.contains("300 ids") && e.contains("uint8"), "{e}");
    let e = fail(&escale(&["prepare-data", s(&good), "--tokenizer", s(&tok), "--output", s(&out), "--dtype", "int7"]));
    assert!(e.contains("int7"), "{e}");
    let e = fail(&escale(&["prepare-data", s(&good), "--tokenizer", s(&tmp.path().join("none")), "--output", s(&out)]));
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = fail(&escale(&["prepare-data", s(&good), "--tokenizer", s(&tok), "--output", s(&out), "--eos-token", "<eos>"]));
    assert!(e.contains("<eos>") && e.contains("not in the vocabulary"), "{e}");
    let e = fail(&escale(&["make-corpus", "--size", "lots", "--output", s(&out)]));
    assert!(e.contains("--size lots"), "{e}");
    let e = fail(&escale(&["train-tokenizer", s(&good), "--vocab-size", "100", "--output", s(&out)]));
    assert!(e.contains("at least 256"), "{e}");
}

/// `--batch-mb`'s default in the help is the library's default batch size, in its unit (MB).
#[test]
fn batch_size_help_shows_the_library_default() {
    let help = ok(&escale(&["prepare-data", "--help"]));
    let line = help.lines().skip_while(|l| !l.contains("--batch-mb")).take(4).collect::<Vec<_>>().join(" ");
    let shown: f64 = line.split("[default: ").nth(1).and_then(|r| r.split(']').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(line.contains("10^6 bytes"), "{line}");
    assert_eq!(shown * 1e6, escale_data::PrepareOptions::default().batch_bytes as f64, "{line}");
}
