//! Acceptance on real data: continued pretraining of the real pretrained stories260K (TinyStories)
//! on Shakespeare lowers held-out Shakespeare loss. transformers took this model from about 4.1
//! to under 2 in 200 steps of 16 x 256 tokens; this test runs a short version (30 steps of 4 x 128)
//! to stay fast, and asserts a clear drop.

use escale_data::{prepare_data, PrepareOptions, TextDocs};
use escale_testkit::require_shared;
use escale_train::{train, TrainConfig, TrainEvent};

#[test]
fn continued_pretraining_on_shakespeare_lowers_held_out_loss() {
    let shared = require_shared!();
    let model = shared.join("testdata/models/stories260K");
    let corpus = shared.join("testdata/corpus/en/tinyshakespeare.txt");
    let dir = tempfile::tempdir().unwrap();
    // Continuous text like the transformers reference: the first 95% of the lines to train on,
    // the rest held out, each tokenized as one document.
    let text = std::fs::read_to_string(&corpus).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 95 / 100;
    for (name, part) in [("train", &lines[..cut]), ("valid", &lines[cut..])] {
        let txt = dir.path().join(format!("{name}.txt"));
        std::fs::write(&txt, part.join("\n")).unwrap();
        let options = PrepareOptions {
            inputs: vec![txt.display().to_string()],
            output: dir.path().join(format!("shakespeare_{name}")),
            text_docs: TextDocs::File,
            ..PrepareOptions::default()
        };
        prepare_data(model.join("tokenizer.json"), Some("</s>"), &options).unwrap();
    }
    let cfg = TrainConfig {
        model: model.clone(),
        data: dir.path().join("shakespeare_train"),
        valid: Some(dir.path().join("shakespeare_valid")),
        output: dir.path().join("run"),
        seq_len: 128,
        micro_batch: 4,
        steps: Some(30),
        lr: 4e-3,
        min_lr: 4e-4,
        warmup_steps: 4,
        eval_tokens: 8 * 128,
        ..TrainConfig::default()
    };
    let mut evals = Vec::new();
    let summary = train(&cfg, &mut |e| {
        if let TrainEvent::Eval(r) = e {
            evals.push(r.val_loss)
        }
    })
    .unwrap();
    println!("held-out loss: {evals:?}, {:.1} s", summary.wall_s);
    assert_eq!(evals.len(), 2);
    // TinyStories model on Shakespeare: transformers measured 4.10 on BOS + 511-token windows of
    // its own tokenization. (escale-data's tokenization currently differs from HF tokenizers on
    // this text, which raises the baseline to ~5.3; the model itself matches transformers on the
    // same ids.) Hence a broad range for the starting point and a firm required drop.
    assert!((3.5..5.6).contains(&evals[0]), "baseline {evals:?}");
    assert!(evals[1] < evals[0] - 0.6, "held-out loss did not fall enough: {evals:?}");
}
