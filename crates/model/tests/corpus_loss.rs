//! stories260K's mean next-token loss on two corpus files equals transformers' reference value
//! (reference.json `corpus_loss`: four windows of BOS + 511 text tokens).

mod common;

use candle_core::{DType, Device, Tensor};
use escale_data::TextTokenizer;
use escale_model::{next_token_loss, Model};

#[test]
fn corpus_loss_matches_reference() {
    let shared = require_shared!();
    let dir = shared.join("testdata/models/stories260K");
    let model = Model::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let tok = TextTokenizer::from_file(&dir).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/reference.json")).unwrap()).unwrap();
    let mut checked = 0;
    for (file, want) in r["corpus_loss"].as_object().unwrap() {
        let path = shared.join("testdata").join(file);
        let Ok(body) = std::fs::read_to_string(&path) else {
            eprintln!("SKIPPED {file}: not in ../shared/testdata");
            continue;
        };
        checked += 1;
        let ids = tok.encode(&body).unwrap();
        let mut losses = Vec::new();
        for w in 0..4 {
            let mut row = vec![1u32];
            row.extend_from_slice(&ids[w * 511..(w + 1) * 511]);
            let t = Tensor::new(row.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = model.forward(&t).unwrap().logits;
            losses.push(next_token_loss(&logits, &t).unwrap().to_scalar::<f32>().unwrap() as f64);
        }
        eprintln!("{file}: {losses:?} vs {}", want["per_window"]);
        for (got, want) in losses.iter().zip(want["per_window"].as_array().unwrap()) {
            assert!((got - want.as_f64().unwrap()).abs() < 2e-5, "{file}: {got} vs {want}");
        }
        let n = ids.len() as u64;
        assert_eq!(n, want["n_text_tokens_total"].as_u64().unwrap(), "{file}: tokenizer token count");
    }
    assert!(checked > 0, "no reference corpus file found under ../shared/testdata");
}
