//! `escale eval MODEL --tasks FILE.jsonl ...`: multiple-choice accuracy in perplexity mode (the
//! scoring lives in `escale_model::choice`; this file reads the files, shows progress and prints).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use escale_data::{read_choice_items, ChoiceItem, TextTokenizer};
use escale_model::choice::{evaluate_choices, ChoiceReport};
use escale_model::Model;
use indicatif::{ProgressBar, ProgressStyle};

/// Reads every task file, in order (items without a `task` take their file's name).
pub fn read_task_files(files: &[PathBuf]) -> anyhow::Result<Vec<ChoiceItem>> {
    let mut items = Vec::new();
    for f in files {
        items.extend(read_choice_items(f)?);
    }
    Ok(items)
}

fn choices_bar(total: usize, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template("{spinner} scoring [{bar:40}] {pos}/{len} choices {per_sec} eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Scores the task files on a loaded model and prints the table (or JSON).
pub fn run(model: &Model, tok: &TextTokenizer, files: &[PathBuf], window: usize, batch: usize, json: bool) -> anyhow::Result<()> {
    let items = read_task_files(files)?;
    let total: usize = items.iter().map(|i| i.choices.len()).sum();
    let bar = choices_bar(total, json);
    let report = evaluate_choices(model, tok, &items, window, batch, &mut |done| bar.set_position(done as u64))
        .with_context(|| format!("scoring {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")))?;
    bar.finish_and_clear();
    if json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &ChoiceReport) {
    let width = r.tasks.iter().map(|t| t.task.chars().count()).max().unwrap_or(4).max(4);
    out!("{:<width$}  {:>6}  {:>15}  {:>15}  {:>6}  {:>9}", "task", "items", "accuracy", "acc (per byte)", "chance", "truncated");
    for t in &r.tasks {
        out!(
            "{:<width$}  {:>6}  {:>7.4} ± {:.4}  {:>7.4} ± {:.4}  {:>6.3}  {:>9}",
            t.task,
            t.items,
            t.accuracy,
            t.accuracy_stderr,
            t.accuracy_norm,
            t.accuracy_norm_stderr,
            t.chance,
            t.truncated
        );
    }
    out!("{} item(s), {} choice(s); window {} token(s)", r.items, r.choices, r.window);
    if r.truncated > 0 {
        out!("{} item(s) had their context cut from the left to fit the window", r.truncated);
    }
}
