//! Byte-level BPE training: vocabulary, special tokens, determinism, saving, use by prepare_data.

use escale_data::corpus::{make_corpus, CorpusOptions};
use escale_data::{prepare_data, save_tokenizer, train_bpe, BpeOptions, DataError, IndexedDataset, PrepareOptions, TextTokenizer};

fn corpus(dir: &std::path::Path, size: u64) -> std::path::PathBuf {
    make_corpus(dir, &CorpusOptions { size_bytes: size, seed: 1, ..Default::default() }).unwrap().files[0].clone()
}

#[test]
fn trains_saves_and_feeds_prepare_data() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(&dir.path().join("corpus"), 300_000);
    let options = BpeOptions { vocab_size: 1000, ..Default::default() };
    let tok = train_bpe(std::slice::from_ref(&text), &options).unwrap();
    assert_eq!(tok.get_vocab_size(true), 1000);
    assert_eq!(tok.token_to_id("<s>"), Some(0));
    assert_eq!(tok.token_to_id("</s>"), Some(1));
    assert_eq!(tok.token_to_id("<pad>"), Some(2));

    // Deterministic: the same corpus gives the same tokenizer.
    let again = train_bpe(std::slice::from_ref(&text), &options).unwrap();
    assert_eq!(tok.to_string(false).unwrap(), again.to_string(false).unwrap());

    let path = save_tokenizer(&tok, &options, dir.path().join("tok")).unwrap();
    assert_eq!(path, dir.path().join("tok/tokenizer.json"));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("tok/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token"], "</s>");
    assert_eq!(config["bos_token"], "<s>");

    let t = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(t.eos().unwrap().id, 1);
    assert_eq!(t.bos().unwrap().id, 0);
    assert!(t.piecewise_exact());
    // Any text encodes (byte fallback through the 256 byte tokens) and decodes back.
    for s in ["Belan lives in Belaport.", "贝兰住在贝拉港。", "emoji 🦙, Ελληνικά, עברית\n\ttabs  ", "1234567 + 89 = ?"] {
        let ids = t.encode(s).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s);
    }
    // Digits are single tokens, so arithmetic is learnable.
    let ids = t.encode("178").unwrap();
    assert_eq!(ids.len(), 3);
    // Special tokens in text are recognised.
    assert_eq!(t.encode("a</s>").unwrap().last(), Some(&1));

    let prefix = dir.path().join("data/tokens");
    let o = PrepareOptions { inputs: vec![text.display().to_string()], output: prefix.clone(), ..Default::default() };
    let s = prepare_data(&path, None, &o).unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.num_documents() as u64, s.documents);
    assert_eq!(ds.dtype(), escale_data::DType::U16);
    let doc0 = std::fs::read_to_string(&text).unwrap().split("\n\n").next().unwrap().to_string();
    let mut want = t.encode(&doc0).unwrap();
    want.push(1);
    assert_eq!(ds.document_u32(0).unwrap(), want);
    // Compresses the synthetic corpus well.
    assert!(s.tokens_per_byte() < 0.45, "{}", s.tokens_per_byte());
}

#[test]
fn bad_options_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(dir.path(), 10_000);
    let e = train_bpe(std::slice::from_ref(&text), &BpeOptions { vocab_size: 200, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("at least 256"), "{e}");
    let e = train_bpe(&[], &BpeOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::EmptyInput(_)), "{e}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(train_bpe(&[empty], &BpeOptions::default()).unwrap_err(), DataError::EmptyInput(_)));
    let e = train_bpe(&[dir.path().join("missing.txt")], &BpeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("missing.txt"), "{e}");
    // No BOS/PAD, extra specials, EOS name of one's choice.
    let o = BpeOptions {
        vocab_size: 300,
        bos_token: None,
        pad_token: None,
        eos_token: "<|endoftext|>".into(),
        extra_special_tokens: vec!["<|user|>".into(), "<|endoftext|>".into()],
        ..Default::default()
    };
    assert_eq!(o.special_tokens(), vec!["<|endoftext|>".to_string(), "<|user|>".to_string()]);
    let tok = train_bpe(&[text], &o).unwrap();
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_to_id("<|user|>"), Some(1));
    let t = TextTokenizer::from_tokenizer(tok);
    assert_eq!(t.eos().unwrap().token, "<|endoftext|>");
}
