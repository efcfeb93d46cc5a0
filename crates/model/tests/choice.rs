//! Multiple-choice scoring (`escale_model::choice`): per-choice log-likelihoods equal transformers'
//! (tokenized by transformers' own tokenizer, same context/continuation split, same left cut), a
//! random model scores at chance and a perfect scorer scores 1.

mod common;

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device};
use escale_data::corpus::tasks::{world_questions, TaskLang, TaskOptions};
use escale_data::corpus::CorpusOptions;
use escale_data::{ChoiceItem, TextTokenizer};
use escale_model::choice::{score_items, summarize, tokenize_item, ItemScore};
use escale_model::Model;
use escale_testkit::{require_oracle, Family, TinySpec};

/// World questions from a small corpus: `per_lang` items per language, knowledge and
/// generalisation mixed.
fn world_items(per_task: usize) -> Vec<(ChoiceItem, TaskLang)> {
    let options = TaskOptions {
        corpus: CorpusOptions { size_bytes: 400_000, seed: 7, people: Some(60), zh_fraction: 0.5 },
        per_task,
        seed: 3,
    };
    world_questions(&options).unwrap().into_iter().map(|q| (q.item, q.lang)).collect()
}

fn write_jsonl(path: &Path, items: &[ChoiceItem]) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in items {
        writeln!(f, "{}", serde_json::to_string(i).unwrap()).unwrap();
    }
}

#[test]
fn choice_logliks_match_transformers_in_english_and_chinese() {
    let oracle = require_oracle!();
    let spec = TinySpec { with_tokenizer: true, max_position: 64, ..TinySpec::new(Family::Llama) };
    let dir = oracle.make_tiny(&spec);
    let all = world_items(12);
    let en: Vec<ChoiceItem> = all.iter().filter(|(_, l)| *l == TaskLang::En).map(|(i, _)| i.clone()).take(20).collect();
    let zh: Vec<ChoiceItem> = all.iter().filter(|(_, l)| *l == TaskLang::Zh).map(|(i, _)| i.clone()).take(20).collect();
    assert_eq!((en.len(), zh.len()), (20, 20), "the world should give 20 questions per language");
    let mut items = en;
    items.extend(zh);
    // One item with an empty context: the continuation is predicted from BOS.
    items.push(ChoiceItem { task: Some("empty".into()), context: String::new(), choices: vec!["Kotoport.".into(), "罗扎。".into()], answer: 0 });
    // A window short enough that the long (byte-fallback) Chinese contexts are cut, English ones not.
    let window = 40;
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("items.jsonl");
    write_jsonl(&jsonl, &items);
    let want = oracle.run(
        "choice-loglik",
        &["--model".into(), dir.clone().into(), "--items".into(), jsonl.into(), "--window".into(), window.to_string().into()],
    );

    let model = Model::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let tok = TextTokenizer::from_file(&dir).unwrap();
    let got = score_items(&model, &tok, &items, window, 7, &mut |_| {}).unwrap();
    let (mut worst, mut cut) = (0.0f64, 0);
    for (i, (item, score)) in items.iter().zip(&got).enumerate() {
        // Same token ids on both sides of the split (before any cut).
        let ours = tokenize_item(&tok, item, usize::MAX).unwrap();
        for (k, c) in ours.choices.iter().enumerate() {
            let theirs = &want["ids"][i][k];
            let ctx: Vec<u32> = serde_json::from_value(theirs["context"].clone()).unwrap();
            let cont: Vec<u32> = serde_json::from_value(theirs["continuation"].clone()).unwrap();
            assert_eq!(c.continuation, cont, "item {i} choice {k}: continuation ids");
            assert_eq!(&c.input[..ctx.len()], ctx.as_slice(), "item {i} choice {k}: context ids");
        }
        assert_eq!(score.truncated, want["truncated"][i].as_bool().unwrap(), "item {i}: truncated");
        cut += score.truncated as usize;
        for (k, &ll) in score.loglik.iter().enumerate() {
            let w = want["loglik"][i][k].as_f64().unwrap();
            assert!(ll < 0.0 && ll.is_finite(), "item {i} choice {k}: log-likelihood {ll}");
            let d = (ll - w).abs();
            worst = worst.max(d);
            assert!(d <= 1e-4, "item {i} ({:?} -> {:?}): escale {ll}, transformers {w}", item.context, item.choices[k]);
        }
    }
    eprintln!("{} items, {cut} cut to the window of {window}: max |delta log-likelihood| {worst:.2e}", items.len());
    assert!(cut > 0 && cut < items.len(), "the test should cover both cut and whole contexts ({cut} cut)");
}

#[test]
fn random_model_scores_at_chance_and_a_perfect_scorer_scores_one() {
    let Some(shared) = common::shared_dir() else {
        eprintln!("SKIPPED: ../shared (stories260K tokenizer) not found next to the workspace root");
        return;
    };
    let tok_dir = shared.join("testdata/models/stories260K");
    let tok = TextTokenizer::from_file(&tok_dir).unwrap();
    // stories260K's architecture with fresh random weights (std 0.3, so the model has opinions,
    // just no knowledge).
    let cfg_path = tok_dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["initializer_range"] = serde_json::json!(0.3);
    let config = escale_formats::ModelConfig::from_json(cfg, &cfg_path).unwrap();
    let model = Model::init_random(&config, 11, &Device::Cpu, DType::F32).unwrap();
    let items: Vec<ChoiceItem> = world_items(150).into_iter().map(|(i, _)| i).collect();
    let scores = score_items(&model, &tok, &items, 512, 32, &mut |_| {}).unwrap();
    // Pool all tasks: one accuracy over every item, its chance level and standard error.
    let pooled: Vec<ChoiceItem> = items.iter().map(|i| ChoiceItem { task: Some("all".into()), ..i.clone() }).collect();
    let s = &summarize(&pooled, &scores)[0];
    eprintln!(
        "random model: {} items, accuracy {:.4} ± {:.4} (per byte {:.4} ± {:.4}), chance {:.4}",
        s.items, s.accuracy, s.accuracy_stderr, s.accuracy_norm, s.accuracy_norm_stderr, s.chance
    );
    assert!(s.items >= 400, "{} items", s.items);
    // Three standard errors: a fair guesser lands inside 99.7% of the time.
    assert!((s.accuracy - s.chance).abs() <= 3.0 * s.accuracy_stderr, "accuracy {} vs chance {}", s.accuracy, s.chance);
    assert!((s.accuracy_norm - s.chance).abs() <= 3.0 * s.accuracy_norm_stderr, "per byte {} vs chance {}", s.accuracy_norm, s.chance);

    // A scripted oracle that knows the answers: log-likelihood 0 for the right choice, below for
    // the others (and for the per-byte score: the right one is 0 whatever its length).
    let perfect: Vec<ItemScore> = items
        .iter()
        .map(|i| ItemScore {
            loglik: (0..i.choices.len()).map(|k| if k == i.answer { 0.0 } else { -1.0 - k as f64 }).collect(),
            bytes: i.choices.iter().map(|c| c.len()).collect(),
            truncated: false,
        })
        .collect();
    for t in summarize(&items, &perfect) {
        assert_eq!((t.accuracy, t.accuracy_norm, t.accuracy_stderr), (1.0, 1.0, 0.0), "{}", t.task);
    }
}
