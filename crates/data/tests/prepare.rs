//! prepare_data: round trips, real tokenizers, splits, determinism and bad input.

mod common;

use std::path::{Path, PathBuf};

use escale_data::corpus::{corpus_text, CorpusOptions};
use escale_data::prepare::{extract_json_string, split_prefixes, TextDocs};
use escale_data::{
    prepare_data, prepare_data_with, train_bpe_from_texts, BpeOptions, DType, DataError, IndexedDataset, InputFormat, OnError,
    PrepareOptions, TextTokenizer,
};

/// A small BPE trained on a small synthetic corpus (fast), and the corpus's documents.
fn small_tokenizer(vocab: usize) -> (TextTokenizer, Vec<String>) {
    let (text, _) = corpus_text(&CorpusOptions { size_bytes: 60_000, seed: 3, ..Default::default() }).unwrap();
    let docs: Vec<String> = text.trim_end().split("\n\n").map(str::to_string).collect();
    let options = BpeOptions { vocab_size: vocab, ..Default::default() };
    let tok = train_bpe_from_texts(docs.iter(), &options).unwrap();
    (TextTokenizer::from_tokenizer(tok), docs)
}

fn options(inputs: &[&Path], output: &Path) -> PrepareOptions {
    PrepareOptions {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        output: output.to_path_buf(),
        ..PrepareOptions::default()
    }
}

fn read_all(prefix: &Path) -> Vec<Vec<u32>> {
    let ds = IndexedDataset::open(prefix).unwrap();
    (0..ds.num_documents()).map(|d| ds.document_u32(d).unwrap()).collect()
}

fn expected(tok: &TextTokenizer, docs: &[String]) -> Vec<Vec<u32>> {
    let eos = tok.eos_id().unwrap();
    docs.iter()
        .map(|d| {
            let mut ids = tok.encode(d).unwrap();
            ids.push(eos);
            ids
        })
        .collect()
}

fn jsonl(docs: &[String]) -> String {
    docs.iter().map(|d| serde_json::json!({ "id": 1, "text": d, "meta": {"x": [1, 2]} }).to_string() + "\n").collect()
}

#[test]
fn round_trip_paragraph_line_file_and_jsonl() {
    let (tok, docs) = small_tokenizer(600);
    assert_eq!(tok.eos().unwrap().token, "</s>");
    let dir = tempfile::tempdir().unwrap();

    // Paragraph mode (default) on the corpus layout, plus CRLF and extra blank lines.
    let para = dir.path().join("para.txt");
    std::fs::write(&para, docs.join("\n\n") + "\n").unwrap();
    let s = prepare_data_with(&tok, &options(&[&para], &dir.path().join("p"))).unwrap();
    assert_eq!(s.documents, docs.len() as u64);
    assert_eq!(s.dtype, DType::U16);
    let want = expected(&tok, &docs);
    assert_eq!(read_all(&dir.path().join("p")), want);
    assert_eq!(s.tokens, want.iter().map(|d| d.len() as u64).sum::<u64>());
    assert_eq!(s.text_bytes, docs.iter().map(|d| d.len() as u64).sum::<u64>());

    let messy = dir.path().join("messy.txt");
    std::fs::write(&messy, "\n\n  \nfirst doc\nline two\n\n\n\t\nsecond\r\n\r\nthird").unwrap();
    prepare_data_with(&tok, &options(&[&messy], &dir.path().join("m"))).unwrap();
    let want: Vec<String> = vec!["first doc\nline two".into(), "second".into(), "third".into()];
    assert_eq!(read_all(&dir.path().join("m")), expected(&tok, &want));

    // Line mode.
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "a b c\r\n\nsecond line\nthird").unwrap();
    let o = PrepareOptions { text_docs: TextDocs::Line, ..options(&[&lines], &dir.path().join("l")) };
    prepare_data_with(&tok, &o).unwrap();
    let want: Vec<String> = vec!["a b c".into(), "second line".into(), "third".into()];
    assert_eq!(read_all(&dir.path().join("l")), expected(&tok, &want));

    // File mode: the whole file, byte for byte, is one document.
    let o = PrepareOptions { text_docs: TextDocs::File, ..options(&[&messy, &para], &dir.path().join("f")) };
    prepare_data_with(&tok, &o).unwrap();
    let want = vec![std::fs::read_to_string(&messy).unwrap(), std::fs::read_to_string(&para).unwrap()];
    assert_eq!(read_all(&dir.path().join("f")), expected(&tok, &want));

    // JSONL (other fields ignored, blank lines skipped), with a custom key too.
    let j = dir.path().join("docs.jsonl");
    std::fs::write(&j, jsonl(&docs[..50]) + "\n   \n").unwrap();
    prepare_data_with(&tok, &options(&[&j], &dir.path().join("j"))).unwrap();
    assert_eq!(read_all(&dir.path().join("j")), expected(&tok, &docs[..50]));
    let k = dir.path().join("k.json");
    std::fs::write(&k, "{\"content\": \"hello\\nworld\"}\n{\"content\": \"again\", \"text\": 5}\n").unwrap();
    let o = PrepareOptions { json_key: "content".into(), ..options(&[&k], &dir.path().join("k")) };
    prepare_data_with(&tok, &o).unwrap();
    assert_eq!(read_all(&dir.path().join("k")), expected(&tok, &["hello\nworld".into(), "again".into()]));

    // Python's independent reader sees the same documents.
    if let Some(v) = common::python_read(&dir.path().join("j")) {
        let v = v.unwrap();
        let got: Vec<Vec<u32>> = serde_json::from_value(v["documents"].clone()).unwrap();
        assert_eq!(got, expected(&tok, &docs[..50]));
        assert_eq!(v["dtype"], "uint16");
    }
}

#[test]
fn no_eos_and_special_tokens_options() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.txt");
    std::fs::write(&f, "one\n\ntwo").unwrap();
    let o = PrepareOptions { append_eos: false, ..options(&[&f], &dir.path().join("n")) };
    let s = prepare_data_with(&tok, &o).unwrap();
    assert!(s.eos.is_none());
    assert_eq!(read_all(&dir.path().join("n")), vec![tok.encode("one").unwrap(), tok.encode("two").unwrap()]);
    // A tokenizer with no EOS at all: clear error naming the flag.
    let bare = train_bpe_from_texts(["abc abd"].iter(), &BpeOptions { vocab_size: 300, bos_token: None, eos_token: "<eot>".into(), pad_token: None, ..Default::default() }).unwrap();
    let bare = TextTokenizer::from_tokenizer(bare);
    assert!(bare.eos().is_none());
    let e = prepare_data_with(&bare, &options(&[&f], &dir.path().join("x"))).unwrap_err().to_string();
    assert!(e.contains("--eos-token"), "{e}");
    let bare = bare.with_eos_token("<eot>").unwrap();
    prepare_data_with(&bare, &options(&[&f], &dir.path().join("x"))).unwrap();
    assert!(TextTokenizer::from_tokenizer(train_bpe_from_texts(["a"].iter(), &BpeOptions { vocab_size: 300, ..Default::default() }).unwrap())
        .with_eos_token("<nope>")
        .is_err());
}

#[test]
fn output_does_not_depend_on_threads_or_batch_size() {
    let (tok, docs) = small_tokenizer(500);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.txt");
    std::fs::write(&f, docs.join("\n\n")).unwrap();
    let a = PrepareOptions { threads: Some(1), ..options(&[&f], &dir.path().join("a")) };
    let b = PrepareOptions { threads: Some(3), batch_bytes: 700, ..options(&[&f], &dir.path().join("b")) };
    prepare_data_with(&tok, &a).unwrap();
    prepare_data_with(&tok, &b).unwrap();
    for ext in ["bin", "idx"] {
        assert_eq!(
            std::fs::read(dir.path().join(format!("a.{ext}"))).unwrap(),
            std::fs::read(dir.path().join(format!("b.{ext}"))).unwrap()
        );
    }
}

#[test]
fn document_level_split_is_deterministic_and_complete() {
    let (tok, docs) = small_tokenizer(500);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.txt");
    std::fs::write(&f, docs.join("\n\n")).unwrap();
    let prefix = dir.path().join("out/data");
    let o = PrepareOptions { split: Some(0.8), split_seed: 7, ..options(&[&f], &prefix) };
    let s = prepare_data_with(&tok, &o).unwrap();
    let (train, valid) = split_prefixes(&prefix);
    assert_eq!(train, dir.path().join("out/data_train"));
    assert_eq!(valid, dir.path().join("out/data_valid"));
    assert_eq!(s.outputs.len(), 2);
    assert!(!prefix.with_extension("bin").exists());
    let (t, v) = (read_all(&train), read_all(&valid));
    assert_eq!(t.len() + v.len(), docs.len());
    let frac = v.len() as f64 / docs.len() as f64;
    assert!((0.12..0.28).contains(&frac), "validation fraction {frac}");
    // Each set keeps input order, and together they are exactly the documents.
    let all = expected(&tok, &docs);
    let (mut ti, mut vi) = (0, 0);
    for (d, want) in all.iter().enumerate() {
        if escale_data::prepare::is_validation_document(d as u64, 0.8, 7) {
            assert_eq!(&v[vi], want);
            vi += 1;
        } else {
            assert_eq!(&t[ti], want);
            ti += 1;
        }
    }
    // Same seed, same split; another seed, another split.
    prepare_data_with(&tok, &PrepareOptions { output: dir.path().join("again/data"), ..o.clone() }).unwrap();
    assert_eq!(read_all(&dir.path().join("again/data_valid")), v);
    prepare_data_with(&tok, &PrepareOptions { output: dir.path().join("other/data"), split_seed: 8, ..o.clone() }).unwrap();
    assert_ne!(read_all(&dir.path().join("other/data_valid")), v);
    for bad in [0.0, 1.0, 1.5] {
        let e = prepare_data_with(&tok, &PrepareOptions { split: Some(bad), ..o.clone() }).unwrap_err();
        assert!(e.to_string().contains("--split"), "{e}");
    }
}

#[test]
fn folders_and_globs_are_expanded_in_sorted_order() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("b.txt"), "bee").unwrap();
    std::fs::write(root.join("a.txt"), "ay").unwrap();
    std::fs::write(root.join("sub/c.jsonl"), "{\"text\": \"sea\"}\n").unwrap();
    std::fs::write(root.join(".hidden.txt"), "hidden").unwrap();
    std::fs::write(root.join("tokenizer.json"), "{\n \"not\": \"jsonl\"\n}").unwrap();
    std::fs::write(root.join("model.bin"), [0xff, 0xfe]).unwrap();
    let s = prepare_data_with(&tok, &options(&[&root], &dir.path().join("d"))).unwrap();
    assert_eq!(s.files, 3);
    assert_eq!(read_all(&dir.path().join("d")), expected(&tok, &["ay".into(), "bee".into(), "sea".into()]));
    let pattern = root.join("*.txt");
    let s = prepare_data_with(&tok, &options(&[&pattern], &dir.path().join("g"))).unwrap();
    assert_eq!(s.files, 2);
    assert_eq!(read_all(&dir.path().join("g")), expected(&tok, &["ay".into(), "bee".into()]));
}

fn no_outputs(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().all(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        !(n.ends_with(".bin") || n.ends_with(".idx") || n.contains("tmp"))
    })
}

#[test]
fn invalid_utf8_is_reported_with_file_and_line() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "fine\n\nalso fine").unwrap();
    let bad = dir.path().join("bad.txt");
    let mut bytes = b"para one\n\npara two\nbroken \xff\xfe here\nstill two\n\npara three\n".to_vec();
    std::fs::write(&bad, &bytes).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    for mode in [TextDocs::Paragraph, TextDocs::Line, TextDocs::File] {
        let o = PrepareOptions { text_docs: mode, ..options(&[&good, &bad], &out.join("x")) };
        let e = prepare_data_with(&tok, &o).unwrap_err();
        assert!(matches!(&e, DataError::InvalidUtf8 { line: 4, .. }), "{mode:?}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("bad.txt:4") && msg.contains("UTF-8"), "{msg}");
        assert!(no_outputs(&out), "nothing published after an abort");
    }

    // Skip: the bad document goes, everything else stays.
    let skip = |mode| PrepareOptions { text_docs: mode, on_error: OnError::Skip, ..options(&[&good, &bad], &out.join("s")) };
    let s = prepare_data_with(&tok, &skip(TextDocs::Paragraph)).unwrap();
    assert_eq!(s.skipped, 1);
    assert!(s.errors[0].contains("bad.txt:4"), "{:?}", s.errors);
    let want: Vec<String> = ["fine", "also fine", "para one", "para three"].map(String::from).to_vec();
    assert_eq!(read_all(&out.join("s")), expected(&tok, &want));

    let s = prepare_data_with(&tok, &skip(TextDocs::Line)).unwrap();
    assert_eq!(s.skipped, 1);
    let want: Vec<String> = ["fine", "also fine", "para one", "para two", "still two", "para three"].map(String::from).to_vec();
    assert_eq!(read_all(&out.join("s")), expected(&tok, &want));

    let s = prepare_data_with(&tok, &skip(TextDocs::File)).unwrap();
    assert_eq!(s.skipped, 1);
    assert_eq!(read_all(&out.join("s")), expected(&tok, &["fine\n\nalso fine".to_string()]));

    // JSONL: invalid UTF-8, bad JSON, missing key, wrong type, each with its line.
    bytes = b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n{\"text\": \nnot json\n{\"body\": \"x\"}\n{\"text\": 3}\n{\"text\": \"last\"}\n".to_vec();
    let j = dir.path().join("bad.jsonl");
    std::fs::write(&j, &bytes).unwrap();
    let e = prepare_data_with(&tok, &options(&[&j], &out.join("j"))).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("UTF-8"), "{e}");
    let o = PrepareOptions { on_error: OnError::Skip, ..options(&[&j], &out.join("j")) };
    let s = prepare_data_with(&tok, &o).unwrap();
    assert_eq!(s.skipped, 5, "{:?}", s.errors);
    for (i, needle) in [(0, "bad.jsonl:2"), (1, "bad.jsonl:3: invalid JSON"), (2, "bad.jsonl:4: invalid JSON"), (3, "bad.jsonl:5: no field `text`"), (4, "bad.jsonl:6: field `text` is not a string but a number")] {
        assert!(s.errors[i].contains(needle), "{i}: {:?}", s.errors);
    }
    assert_eq!(read_all(&out.join("j")), expected(&tok, &["ok".to_string(), "last".to_string()]));
}

#[test]
fn empty_and_missing_inputs_are_clear_errors() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, "\n \n\n").unwrap();

    let e = prepare_data_with(&tok, &options(&[&empty, &blank], &out.join("e"))).unwrap_err();
    assert!(matches!(e, DataError::EmptyInput(_)), "{e}");
    assert!(e.to_string().contains("no document"), "{e}");
    assert!(no_outputs(&out));

    let e = prepare_data_with(&tok, &options(&[], &out.join("e"))).unwrap_err();
    assert!(matches!(e, DataError::EmptyInput(_)), "{e}");

    let missing = dir.path().join("nope.txt");
    let e = prepare_data_with(&tok, &options(&[&missing], &out.join("e"))).unwrap_err().to_string();
    assert!(e.contains("nope.txt"), "{e}");

    let pattern = dir.path().join("*.jsonl");
    let e = prepare_data_with(&tok, &options(&[&pattern], &out.join("e"))).unwrap_err().to_string();
    assert!(e.contains("matches no file"), "{e}");

    let emptydir = dir.path().join("emptydir");
    std::fs::create_dir(&emptydir).unwrap();
    let e = prepare_data_with(&tok, &options(&[&emptydir], &out.join("e"))).unwrap_err().to_string();
    assert!(e.contains("emptydir"), "{e}");
    assert!(no_outputs(&out));
}

#[test]
fn vocab_that_does_not_fit_the_dtype_is_rejected() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.txt");
    std::fs::write(&f, "hello").unwrap();
    let o = PrepareOptions { dtype: Some(DType::U8), ..options(&[&f], &dir.path().join("x")) };
    let e = prepare_data_with(&tok, &o).unwrap_err();
    assert!(matches!(e, DataError::VocabTooLarge { dtype: DType::U8, vocab_size: 400, .. }), "{e}");
    assert!(e.to_string().contains("uint8"), "{e}");
    let o = PrepareOptions { dtype: Some(DType::F32), ..options(&[&f], &dir.path().join("x")) };
    assert!(prepare_data_with(&tok, &o).is_err());
    let o = PrepareOptions { dtype: Some(DType::I32), ..options(&[&f], &dir.path().join("x")) };
    assert_eq!(prepare_data_with(&tok, &o).unwrap().dtype, DType::I32);

    // The real Aquila tokenizer (100,008 ids) cannot be stored as uint16.
    if let Some(aquila) = common::tokenizer_dir("aquila") {
        let o = PrepareOptions { dtype: Some(DType::U16), ..options(&[&f], &dir.path().join("a")) };
        let e = prepare_data(&aquila, None, &o).unwrap_err();
        assert!(matches!(e, DataError::VocabTooLarge { vocab_size: 100_008, max_id: 100_007, .. }), "{e}");
    }
}

#[test]
fn json_field_extraction() {
    assert_eq!(extract_json_string(r#"{"a": [1, {"text": "no"}], "text": "yes\u00e9"}"#, "text").unwrap(), "yesé");
    assert!(extract_json_string(r#"["text"]"#, "text").unwrap_err().contains("invalid JSON"));
    assert!(extract_json_string(r#"{"text": "a"} x"#, "text").unwrap_err().contains("invalid JSON"));
    assert!(extract_json_string(r#"{"text": null}"#, "text").unwrap_err().contains("null"));
}

/// (text, ids) cases of the real tokenizers' expected-id files.
fn aquila_cases(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected_ids.json")).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_string(), serde_json::from_value(c["ids"].clone()).unwrap()))
        .collect()
}

fn qwen_cases(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join("llamacpp-qwen2-vectors.inp")).unwrap();
    let out = std::fs::read_to_string(dir.join("llamacpp-qwen2-vectors.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<&str> = out.split('\n').collect();
    assert_eq!(texts.len(), 47, "46 vectors and a trailing separator");
    assert_eq!(texts[46], "");
    (0..46)
        .map(|i| (texts[i].to_string(), ids[i].split_whitespace().map(|t| t.parse().unwrap()).collect()))
        .collect()
}

/// Every case through the whole prepare path (JSONL in, .bin/.idx out) and back.
fn check_real_tokenizer(dir: &Path, cases: &[(String, Vec<u32>)], eos: (&str, u32), dtype: DType) {
    let tok = TextTokenizer::from_file(dir).unwrap();
    assert_eq!(tok.eos().map(|e| (e.token.as_str(), e.id)), Some(eos));
    assert!(tok.piecewise_exact(), "byte-level BPE tokenizers can be encoded in pieces");
    for (text, ids) in cases {
        assert_eq!(&tok.encode(text).unwrap(), ids, "{text:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("cases.jsonl");
    let docs: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    std::fs::write(&input, jsonl(&docs)).unwrap();
    let s = prepare_data_with(&tok, &options(&[&input], &tmp.path().join("t"))).unwrap();
    assert_eq!(s.dtype, dtype);
    let want: Vec<Vec<u32>> = cases
        .iter()
        .filter(|c| !c.0.is_empty()) // empty documents are skipped
        .map(|c| c.1.iter().copied().chain([eos.1]).collect())
        .collect();
    assert_eq!(read_all(&tmp.path().join("t")), want);
}

#[test]
fn aquila_expected_ids_pass_through_unchanged() {
    let Some(dir) = common::tokenizer_dir("aquila") else { return };
    let cases = aquila_cases(&dir);
    assert_eq!(cases.len(), 12);
    check_real_tokenizer(&dir, &cases, ("</s>", 100_007), DType::I32);
}

#[test]
fn qwen3_llamacpp_vectors_pass_through_unchanged() {
    let Some(dir) = common::tokenizer_dir("qwen3") else { return };
    let cases = qwen_cases(&dir);
    check_real_tokenizer(&dir, &cases, ("<|im_end|>", 151_645), DType::I32);
}

/// The first `n` bytes of a file, cut at a line end.
fn head(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap();
    let cut = s.as_bytes()[..n.min(s.len())].iter().rposition(|&b| b == b'\n').map_or(s.len(), |i| i + 1);
    s[..cut].to_string()
}

#[test]
fn long_documents_encoded_in_pieces_match_whole_encoding() {
    let Some(shared) = common::shared_dir() else { return };
    let corpus = shared.join("testdata/corpus");
    let en = head(&corpus.join("en/tinyshakespeare.txt"), 150_000);
    let zh = head(&corpus.join("zh/hongloumeng-ch01-40.txt"), 150_000);
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = [("en.txt", &en), ("zh.txt", &zh)]
        .iter()
        .map(|(n, t)| {
            let p = tmp.path().join(n);
            std::fs::write(&p, t).unwrap();
            p
        })
        .collect();
    for name in ["qwen3", "aquila"] {
        let Some(dir) = common::tokenizer_dir(name) else { return };
        let tok = TextTokenizer::from_file(&dir).unwrap();
        let o = PrepareOptions {
            text_docs: TextDocs::File,
            format: InputFormat::Text,
            ..options(&[&files[0], &files[1]], &tmp.path().join(name))
        };
        prepare_data_with(&tok, &o).unwrap();
        let got = read_all(&tmp.path().join(name));
        let eos = tok.eos_id().unwrap();
        for (i, text) in [&en, &zh].iter().enumerate() {
            let mut want = tok.encode(text).unwrap();
            want.push(eos);
            assert_eq!(got[i].len(), want.len(), "{name} doc {i}");
            assert!(got[i] == want, "{name} doc {i}: piecewise encoding differs");
        }
    }
}

#[test]
fn sentencepiece_style_tokenizer_is_encoded_whole() {
    let Some(shared) = common::shared_dir() else { return };
    let path = shared.join("testdata/models/stories260K");
    if !path.join("tokenizer.json").is_file() {
        eprintln!("SKIP: stories260K tokenizer missing");
        return;
    }
    let tok = TextTokenizer::from_file(&path).unwrap();
    assert!(!tok.piecewise_exact(), "Prepend/Metaspace normalizers must not be cut into pieces");
    let tmp = tempfile::tempdir().unwrap();
    let text: String = (0..5000).map(|i| format!("Line {i} of a long story.\nThe cat sat.\n")).collect();
    assert!(text.len() > 2 * escale_data::prepare::PIECE_BYTES);
    let f = tmp.path().join("long.txt");
    std::fs::write(&f, &text).unwrap();
    let o = PrepareOptions { text_docs: TextDocs::File, ..options(&[&f], &tmp.path().join("s")) };
    prepare_data_with(&tok, &o).unwrap();
    let mut want = tok.encode(&text).unwrap();
    want.push(tok.eos_id().unwrap());
    assert_eq!(read_all(&tmp.path().join("s")), vec![want]);
}

#[test]
fn byte_order_mark_is_not_text() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("bom.txt");
    std::fs::write(&t, "\u{FEFF}first\n\nsecond").unwrap();
    let j = dir.path().join("bom.jsonl");
    std::fs::write(&j, "\u{FEFF}{\"text\": \"third\"}\n").unwrap();
    prepare_data_with(&tok, &options(&[&t, &j], &dir.path().join("b"))).unwrap();
    let want: Vec<String> = ["first", "second", "third"].map(String::from).to_vec();
    assert_eq!(read_all(&dir.path().join("b")), expected(&tok, &want));
    // A BOM alone on the first line is a blank line: paragraph numbering stays aligned when a
    // later paragraph is skipped.
    let t2 = dir.path().join("bom2.txt");
    std::fs::write(&t2, b"\xEF\xBB\xBF\nfirst\n\nbad \xff\n\nlast\n").unwrap();
    let o = PrepareOptions { on_error: OnError::Skip, ..options(&[&t2], &dir.path().join("c")) };
    let s = prepare_data_with(&tok, &o).unwrap();
    assert_eq!(s.skipped, 1);
    let want: Vec<String> = ["first", "last"].map(String::from).to_vec();
    assert_eq!(read_all(&dir.path().join("c")), expected(&tok, &want));
}

#[test]
fn tiny_input_with_split_warns_about_an_empty_validation_set() {
    let (tok, _) = small_tokenizer(400);
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("one.txt");
    std::fs::write(&t, "only one document").unwrap();
    let o = PrepareOptions { split: Some(0.99), ..options(&[&t], &dir.path().join("s")) };
    let s = prepare_data_with(&tok, &o).unwrap();
    assert_eq!(s.outputs[1].documents, 0);
    assert!(s.to_text().contains("validation set") && s.to_text().contains("is empty"), "{}", s.to_text());
    // An empty dataset is still a valid one.
    assert_eq!(IndexedDataset::open(dir.path().join("s_valid")).unwrap().num_documents(), 0);
}
