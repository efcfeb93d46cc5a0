//! A stop requested through `escale_util::stop` (SIGINT/SIGTERM in `escale run`) ends tokenizing
//! between two batches: an error saying so, and neither data nor temporary files left. Its own
//! test binary, because the flag is process-wide.

use escale_data::{prepare_data_with, train_bpe_from_texts, BpeOptions, PrepareOptions, TextTokenizer};

#[test]
fn a_requested_stop_ends_tokenizing_with_nothing_published() {
    let docs: Vec<String> = (0..2000).map(|i| format!("document {i} says hello to the world and counts {}", i * 7)).collect();
    let tok = train_bpe_from_texts(docs.iter(), &BpeOptions { vocab_size: 300, ..Default::default() }).unwrap();
    let tok = TextTokenizer::from_tokenizer(tok);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, docs.join("\n\n")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let options = PrepareOptions {
        inputs: vec![input.display().to_string()],
        output: out.join("tokens"),
        split: Some(0.9),
        ..PrepareOptions::default()
    };
    // Without a stop the same call succeeds (checked first, in a scratch folder).
    let scratch = PrepareOptions { output: dir.path().join("scratch/tokens"), ..options.clone() };
    prepare_data_with(&tok, &scratch).unwrap();

    escale_util::stop::flag().store(true, std::sync::atomic::Ordering::SeqCst);
    let err = prepare_data_with(&tok, &options).unwrap_err().to_string();
    assert!(err.contains("interrupted while tokenizing") && err.contains("nothing was published"), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "no data and no staging area left");
}
