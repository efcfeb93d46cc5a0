//! `escale make-tasks` and `escale eval --tasks` end to end: the world tasks from a corpus folder,
//! scored on the real stories260K model with JSON output, the left cut counted, bad files named.

mod common;

use std::path::Path;

use serde_json::Value;

/// stdout alone (the JSON) of a run that must succeed.
fn ok(args: &[&str]) -> String {
    let out = common::run_escale(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn make_tasks_from_a_corpus_folder_then_eval_them() {
    let Some(model) = common::stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    ok(&["make-corpus", "--size", "200KB", "--seed", "9", "--people", "40", "--output", s(&corpus)]);
    let tasks = dir.path().join("world.jsonl");
    let summary: Value = serde_json::from_str(&ok(&["make-tasks", s(&tasks), "--corpus", s(&corpus), "--per-task", "12", "--json"])).unwrap();
    assert_eq!(summary["options"]["corpus"]["seed"], 9);
    // The same options spelled out give the same file.
    let again = dir.path().join("again.jsonl");
    ok(&["make-tasks", s(&again), "--size", "200KB", "--seed", "9", "--people", "40", "--per-task", "12"]);
    assert_eq!(std::fs::read(&tasks).unwrap(), std::fs::read(&again).unwrap());

    // A second file of the user's: no task names (the file's name is used), one context longer
    // than the window.
    let mine = dir.path().join("mine.jsonl");
    let long = "Once upon a time there was a little girl. ".repeat(20);
    std::fs::write(
        &mine,
        format!(
            "{}\n{}\n",
            serde_json::json!({"context": "Once upon a time, there was a", "choices": [" little girl.", " zebra crossing."], "answer": 0}),
            serde_json::json!({"context": long, "choices": [" She was happy.", " Xq."], "answer": 0})
        ),
    )
    .unwrap();
    let report: Value =
        serde_json::from_str(&ok(&["eval", s(&model), "--tasks", s(&tasks), s(&mine), "--window", "64", "--batch", "5", "--json"])).unwrap();
    let names: Vec<&str> = report["tasks"].as_array().unwrap().iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(names, ["world-knowledge-en", "world-knowledge-zh", "world-generalisation-en", "world-generalisation-zh", "mine"]);
    assert_eq!(report["window"], 64);
    assert_eq!(report["truncated"], 1, "{report}");
    let mine_row = &report["tasks"][4];
    assert_eq!((mine_row["items"].as_u64(), mine_row["truncated"].as_u64()), (Some(2), Some(1)));
    for t in report["tasks"].as_array().unwrap() {
        let (acc, se, chance) = (t["accuracy"].as_f64().unwrap(), t["accuracy_stderr"].as_f64().unwrap(), t["chance"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&acc) && se >= 0.0 && (0.25..=0.5).contains(&chance), "{t}");
    }
    // The table names every task and says how many items were cut.
    let table = ok(&["eval", s(&model), "--tasks", s(&mine), "--window", "64"]);
    assert!(table.contains("mine") && table.contains("1 item(s) had their context cut from the left"), "{table}");
}

#[test]
fn bad_task_files_are_named_with_their_line() {
    let Some(model) = common::stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"answer\": 0}\n{\"context\": \"a\", \"choices\": [\" b\"], \"answer\": 0}\n").unwrap();
    let out = common::run_escale(&["eval", s(&model), "--tasks", s(&bad)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.jsonl:2") && err.contains("at least 2"), "{err}");
    let out = common::run_escale(&["eval", s(&model)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--tasks"), "either --text or --tasks is required");
}
