//! Downstream accuracy at every stage: the multiple-choice tasks of `eval: {tasks: [...]}` (the
//! file's, or a stage's own) scored in perplexity mode (`escale_model::choice`) on each stage's
//! start model (grown or freshly initialised) and end model; the report's accuracy table and the
//! accuracy-vs-FLOPs figure beside the loss figure.
//!
//! A task entry is a JSONL file (relative to the pipeline file) or `builtin`: the world questions
//! of the prepare stage's built-in corpus (`escale make-tasks` on the same world), generated once
//! into `<run_dir>/tasks/world.jsonl`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use escale_train::TrainConfig;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::manifest::{StageKind, StageRecord};
use crate::schema::{CorpusSpec, PipelineFile, StageSpec};
use crate::stages::Context;

/// The task entry that stands for the built-in world questions.
pub const BUILTIN: &str = "builtin";
/// Where the built-in tasks are written, relative to the run directory.
pub const BUILTIN_FILE: &str = "tasks/world.jsonl";
/// The accuracy figure's files in the run directory (beside `loss_vs_flops.*`).
pub const FIGURE_PNG: &str = "accuracy_vs_flops.png";
pub const FIGURE_SVG: &str = "accuracy_vs_flops.svg";

/// One task's accuracy on a stage's start and end models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageAccuracy {
    pub task: String,
    pub items: usize,
    /// Expected accuracy of guessing.
    pub chance: f64,
    /// Before the stage's training (`None` when the stage does not train: start and end coincide).
    pub start: Option<f64>,
    pub start_stderr: Option<f64>,
    pub end: f64,
    pub end_stderr: f64,
}

/// The `eval.tasks` of the entry defining stage `name` (a sweep's variants share the sweep's),
/// else the file's.
fn task_entries<'a>(file: &'a PipelineFile, name: &str) -> &'a [String] {
    let own = match file.stages.iter().find(|s| s.names().iter().any(|n| n == name)) {
        Some(StageSpec::Prepare(s)) => s.eval.as_ref(),
        Some(StageSpec::ScaleUp(s)) => s.eval.as_ref(),
        Some(StageSpec::ScaleOut(s)) => s.eval.as_ref(),
        Some(StageSpec::Baseline(s)) => s.eval.as_ref(),
        Some(StageSpec::Sweep(s)) => s.eval.as_ref(),
        None => None,
    };
    own.map(|e| e.tasks.as_slice()).unwrap_or(file.eval.tasks.as_slice())
}

/// The task files of the stage, with `builtin` generated (once) from the prepare stage's corpus.
fn task_files(ctx: &Context, name: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in task_entries(ctx.file, name) {
        if entry != BUILTIN {
            files.push(ctx.abs(Path::new(entry)));
            continue;
        }
        let builtin = ctx.file.stages.iter().find_map(|s| match s {
            StageSpec::Prepare(p) => match &p.corpus {
                CorpusSpec::Builtin(b) => Some(b),
                _ => None,
            },
            _ => None,
        });
        let Some(b) = builtin else {
            bail!("eval.tasks: `{BUILTIN}` asks for the built-in world questions, but the prepare stage does not use the built-in corpus");
        };
        let out = ctx.run_dir.join(BUILTIN_FILE);
        if !out.exists() {
            // The same size and seed the prepare stage generates its corpus with.
            let bytes = (b.size_mb * 1e6) as u64;
            ctx.engine.make_tasks(bytes, b.seed.unwrap_or(ctx.file.seed), ctx.file.eval.task_items, &out)?;
        }
        files.push(out);
    }
    Ok(files)
}

/// Scores the tasks of stage `name` on its start model and, when it trained, its end model
/// (`end`), reading at most the stage's evaluation sequence length at once.
pub fn measure(ctx: &Context, name: &str, train: Option<&TrainConfig>, start: &Path, end: Option<&Path>) -> Result<Vec<StageAccuracy>> {
    let files = task_files(ctx, name)?;
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let window = ctx.eval_seq_len(train);
    let at_start = ctx.engine.evaluate_tasks(start, &files, window)?;
    let at_end = match end {
        Some(m) => ctx.engine.evaluate_tasks(m, &files, window)?,
        None => at_start.clone(),
    };
    Ok(at_start
        .into_iter()
        .zip(at_end)
        .map(|(s, e)| StageAccuracy {
            task: e.task,
            items: e.items,
            chance: e.chance,
            start: end.map(|_| s.accuracy),
            start_stderr: end.map(|_| s.accuracy_stderr),
            end: e.accuracy,
            end_stderr: e.accuracy_stderr,
        })
        .collect())
}

/// One row of summary.json's accuracy table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccuracyRow {
    pub stage: String,
    pub kind: StageKind,
    pub flops_start: f64,
    pub flops_end: f64,
    #[serde(flatten)]
    pub accuracy: StageAccuracy,
}

/// Every stage's accuracies, in stage order.
pub fn rows<'a>(records: impl IntoIterator<Item = &'a StageRecord>) -> Vec<AccuracyRow> {
    records
        .into_iter()
        .flat_map(|r| {
            r.accuracy.iter().map(|a| AccuracyRow {
                stage: r.name.clone(),
                kind: r.kind,
                flops_start: r.flops_start,
                flops_end: r.flops_end(),
                accuracy: a.clone(),
            })
        })
        .collect()
}

fn pct(x: f64, se: f64) -> String {
    format!("{:.1}% ± {:.1}", 100.0 * x, 100.0 * se)
}

/// The report's accuracy section (empty when no stage was scored).
pub fn markdown(rows: &[AccuracyRow], figure: Option<&str>) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    let _ = writeln!(s, "\n## Downstream accuracy (multiple choice, perplexity mode)\n");
    if let Some(fig) = figure {
        let _ = writeln!(s, "![accuracy against cumulative training FLOPs]({fig})\n");
    }
    let _ = writeln!(s, "Accuracy ± standard error on each stage's model before and after its training; chance is 1/choices.\n");
    let _ = writeln!(s, "| stage | task | items | chance | start | end |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let a = &r.accuracy;
        let start = match (a.start, a.start_stderr) {
            (Some(x), Some(se)) => pct(x, se),
            _ => "-".to_string(),
        };
        let _ = writeln!(s, "| {} | {} | {} | {:.1}% | {} | {} |", r.stage, a.task, a.items, 100.0 * a.chance, start, pct(a.end, a.end_stderr));
    }
    s
}

/// Mean accuracy over a stage's tasks (weighted by items) at its start and end.
fn stage_means(r: &StageRecord) -> Option<(Option<f64>, f64, f64)> {
    let n: usize = r.accuracy.iter().map(|a| a.items).sum();
    if n == 0 {
        return None;
    }
    let mean = |f: &dyn Fn(&StageAccuracy) -> f64| r.accuracy.iter().map(|a| f(a) * a.items as f64).sum::<f64>() / n as f64;
    let start = r.accuracy.iter().all(|a| a.start.is_some()).then(|| mean(&|a| a.start.unwrap_or(0.0)));
    Some((start, mean(&|a| a.end), mean(&|a| a.chance)))
}

/// Writes the accuracy-vs-FLOPs figure (PNG and SVG) when any stage was scored; returns whether.
pub fn write_figures(records: &[StageRecord], title: &str, png: &Path, svg: &Path) -> Result<bool> {
    if records.iter().all(|r| r.accuracy.is_empty()) {
        return Ok(false);
    }
    crate::plot::write_with(png, svg, &|root: &DrawingArea<SVGBackend, Shift>| draw(root, records, title), &|root| {
        draw(root, records, title)
    })?;
    Ok(true)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, records: &[StageRecord], title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the accuracy figure: {e}");
    root.fill(&WHITE).map_err(err)?;
    let ends: Vec<f64> = records.iter().filter(|r| !r.accuracy.is_empty()).map(|r| r.flops_end()).filter(|&f| f > 0.0).collect();
    let x0 = ends.iter().cloned().fold(f64::INFINITY, f64::min);
    let x1 = ends.iter().cloned().fold(0.0, f64::max);
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0 / 3.0, x1 * 1.5) } else { (1.0, 10.0) };
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: accuracy vs training compute"), (crate::plot::FONT, 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("cumulative training FLOPs")
        .y_desc("accuracy (mean over tasks)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{:.0}%", 100.0 * y))
        .label_style((crate::plot::FONT, 15))
        .axis_desc_style((crate::plot::FONT, 18))
        .draw()
        .map_err(err)?;
    let mut chance = None;
    for (i, r) in records.iter().enumerate() {
        let Some((start, end, c)) = stage_means(r) else { continue };
        chance = Some(c);
        let colour = crate::plot::stage_colour(i);
        let clamp = |f: f64| f.max(x0);
        let mut pts = Vec::new();
        if let Some(s) = start {
            pts.push((clamp(r.flops_start), s));
        }
        pts.push((clamp(r.flops_end()), end));
        let style = colour.stroke_width(3);
        if r.kind == StageKind::Baseline {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 10, 6, style)).map_err(err)?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(err)?;
        }
        let label = if r.kind == StageKind::Baseline { format!("{} (from scratch, dashed)", r.name) } else { r.name.clone() };
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, colour.filled())))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
    }
    if let Some(c) = chance {
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, c), (x1, c)], 4, 4, BLACK.mix(0.5).stroke_width(1)))
            .map_err(err)?
            .label("chance")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.mix(0.5)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((crate::plot::FONT, 16))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::synthetic_run;

    fn scored_run() -> Vec<StageRecord> {
        let mut records = synthetic_run();
        for (i, r) in records.iter_mut().enumerate() {
            let end = 0.3 + 0.1 * i as f64;
            r.accuracy = vec![StageAccuracy {
                task: "world-knowledge-en".into(),
                items: 40,
                chance: 0.25,
                start: (i > 0).then_some(0.25),
                start_stderr: (i > 0).then_some(0.07),
                end,
                end_stderr: 0.05,
            }];
        }
        records
    }

    #[test]
    fn a_stage_eval_replaces_the_file_tasks_and_no_tasks_keeps_the_file_unchanged() {
        let yaml = |eval: &str, stage_eval: &str| {
            format!(
                "{eval}stages:\n  - prepare: {{name: base, corpus: {{builtin: {{size_mb: 0.1}}}}, tokenizer: {{train: {{vocab_size: 300}}}}, model: {{init: {{config: {{hidden_size: 16}}}}}}, train: {{total_tokens: 10}}}}\n  - sweep: {{name: up, target: {{hidden_size: 32}}, variants: [{{method: fpi}}], train: {{total_tokens: 10}}{stage_eval}}}\n"
            )
        };
        let f = PipelineFile::parse(&yaml("eval: {tasks: [builtin, mine.jsonl], task_items: 7}\n", ", eval: {tasks: [other.jsonl]}"), "t").unwrap();
        assert_eq!(task_entries(&f, "base"), ["builtin", "mine.jsonl"]);
        assert_eq!(f.eval.task_items, 7);
        // A sweep's variants take the sweep's own list.
        assert_eq!(task_entries(&f, "up-fpi"), ["other.jsonl"]);
        let plain = PipelineFile::parse(&yaml("", ""), "t").unwrap();
        assert!(task_entries(&plain, "up-fpi").is_empty());
        // Without tasks, the settings serialise as before issue 17 (so stage keys do not change).
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("tasks") && !json.contains("task_items") && !json.contains("\"eval\":null"), "{json}");
        let bad = PipelineFile::parse(&yaml("eval: {taks: [a]}\n", ""), "t").unwrap_err().to_string();
        assert!(bad.contains("taks"), "{bad}");
    }

    #[test]
    fn table_has_a_row_per_stage_and_task_with_start_and_end() {
        let records = scored_run();
        let md = markdown(&rows(&records), Some("accuracy_vs_flops.png"));
        assert!(md.contains("| stage | task | items | chance | start | end |"));
        assert!(md.contains("accuracy_vs_flops.png"));
        for (i, r) in records.iter().enumerate() {
            let start = if i > 0 { "25.0% ± 7.0" } else { "-" };
            let row = format!("| {} | world-knowledge-en | 40 | 25.0% | {start} | {:.1}% ± 5.0 |", r.name, 100.0 * (0.3 + 0.1 * i as f64));
            assert!(md.contains(&row), "missing {row:?} in\n{md}");
        }
        assert!(markdown(&rows(&synthetic_run()), None).is_empty());
    }

    #[test]
    fn figure_is_written_only_when_stages_were_scored() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("a.png"), dir.path().join("a.svg"));
        assert!(!write_figures(&synthetic_run(), "t", &png, &svg).unwrap());
        assert!(!png.exists());
        let records = scored_run();
        assert!(write_figures(&records, "t", &png, &svg).unwrap());
        assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("accuracy vs training compute") && text.contains("chance"));
        for r in &records {
            assert!(text.contains(&r.name), "legend lacks {}", r.name);
        }
    }
}
