//! Scratch check: corpus -> BPE -> prepare-data -> sampler (not a test).
fn main() {
    let size: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let s = escale_data::make_corpus(dir.path(), &escale_data::CorpusOptions { size_bytes: size, ..Default::default() }).unwrap();
    eprintln!("corpus {} bytes {} docs in {:?}", s.bytes, s.documents, t.elapsed());
    let t = std::time::Instant::now();
    let opts = escale_data::BpeOptions::default();
    let tok = escale_data::train_bpe(&s.files, &opts).unwrap();
    let path = escale_data::save_tokenizer(&tok, &opts, dir.path().join("tok")).unwrap();
    eprintln!("bpe vocab {} in {:?}", tok.get_vocab_size(true), t.elapsed());
    let tt = escale_data::TextTokenizer::from_file(&path).unwrap();
    eprintln!("eos {:?} piecewise {}", tt.eos(), tt.piecewise_exact());
    for w in ["Belan Kotor lives in Belaport.", "贝兰·科陶住在贝拉港。", "82 + 96 = 178"] {
        let ids = tt.encode(w).unwrap();
        let toks: Vec<String> = ids.iter().map(|&i| tt.tokenizer().id_to_token(i).unwrap()).collect();
        eprintln!("{w} -> {toks:?}");
    }
    let t = std::time::Instant::now();
    let o = escale_data::PrepareOptions { inputs: vec![dir.path().display().to_string()], output: dir.path().join("data/tokens"), split: Some(0.99), progress: true, ..Default::default() };
    let sum = escale_data::prepare_data(&path, None, &o).unwrap();
    eprintln!("{}in {:?}", sum.to_text(), t.elapsed());
}
