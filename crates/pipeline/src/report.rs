//! The run's report: `summary.json` (for machines), `report.md` (for people) and the
//! loss-vs-FLOPs figure ([`crate::plot`]), all derived from the stage records alone so that a
//! report can be rebuilt, and tested, without running anything.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use escale_formats::summary::human_count;
use serde::Serialize;

use crate::manifest::{write_atomic, StageKind, StageRecord};
use crate::runs::{exceeds_spread, lr_text, RunGroup, Stats, SweepEdge};

/// A transition: the source's final validation loss against the grown model's initial one.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Transition {
    pub from: String,
    pub to: String,
    pub kind: StageKind,
    pub method: String,
    pub exact: Option<bool>,
    pub source_val_loss: f64,
    pub grown_val_loss: f64,
    /// `(grown - source) / source`: 0 when the growth preserved the function.
    pub relative_gap: f64,
}

/// A grown stage against the from-scratch training of its architecture.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BaselineComparison {
    pub stage: String,
    pub baseline: String,
    /// Cumulative FLOPs at the end of the grown stage / total FLOPs of the baseline.
    pub stage_flops: f64,
    pub baseline_flops: f64,
    /// Final validation loss: the mean over the seeds of the chosen learning rate.
    pub stage_val_loss: f64,
    pub baseline_val_loss: f64,
    /// The same over the seeds, with their spread.
    pub stage_seeds: Stats,
    pub baseline_seeds: Stats,
    /// Learning rate of the baseline (the chosen point of its sweep).
    pub baseline_lr: Option<f64>,
    /// `baseline_val_loss - stage_val_loss`: positive when the grown model is better.
    pub difference: f64,
    /// Whether the difference exceeds the spread of the seeds (the two standard deviations
    /// added); `None` when each side ran one seed only.
    pub exceeds_spread: Option<bool>,
    /// True when the grown model reached the lower validation loss.
    pub grown_better: bool,
}

/// Side-by-side sweep variants (same source, same budget).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SweepEntry {
    pub sweep: String,
    pub stage: String,
    pub method: String,
    pub exact: Option<bool>,
    pub val_loss_start: Option<f64>,
    pub val_loss_end: Option<f64>,
    /// Learning rate it trained at (the chosen point of its learning-rate sweep).
    pub lr: Option<f64>,
    /// Final validation loss over the seeds of that learning rate.
    pub seeds: Option<Stats>,
}

/// One row of the stage table in summary.json (the record without its curve).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageRow {
    pub name: String,
    pub kind: StageKind,
    pub source: Option<String>,
    pub method: String,
    pub exact: Option<bool>,
    pub arch: String,
    pub params_total: u64,
    pub params_active: u64,
    pub tokens: u64,
    pub flops: f64,
    pub flops_start: f64,
    pub flops_end: f64,
    pub val_loss_start: Option<f64>,
    pub val_loss_end: Option<f64>,
    pub lr: Option<f64>,
    /// Wall time of the stage, every run of its sweep and seeds included.
    pub wall_s: f64,
    pub model_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub name: String,
    /// One row per stage of the file (a stage trained several times: the run that stands for it).
    pub stages: Vec<StageRow>,
    pub transitions: Vec<Transition>,
    pub baselines: Vec<BaselineComparison>,
    pub sweeps: Vec<SweepEntry>,
    /// Every run of the stages trained more than once (learning-rate sweeps, seeds).
    pub runs: Vec<RunGroup>,
    /// Multiple-choice accuracy per stage and task (`eval.tasks`; see [`crate::accuracy`]).
    pub accuracy: Vec<crate::accuracy::AccuracyRow>,
    pub total_wall_s: f64,
}

/// Whether a record stands for a stage of the file, rather than being one more run of one.
pub fn stands_for_stage(r: &StageRecord) -> bool {
    r.run_of.as_ref().is_none_or(|o| o.stage == r.name)
}

/// Final validation loss of stage `r` over the seeds of its chosen learning rate.
fn final_stats(r: &StageRecord, groups: &[RunGroup]) -> Option<Stats> {
    match groups.iter().find(|g| g.stage == r.name).and_then(|g| g.chosen()) {
        Some(point) => point.stats,
        None => Stats::of(&r.val_loss_end.into_iter().collect::<Vec<_>>()),
    }
}

impl Summary {
    pub fn from_records(name: &str, all: &[StageRecord]) -> Summary {
        let records: Vec<&StageRecord> = all.iter().filter(|r| stands_for_stage(r)).collect();
        let runs: Vec<RunGroup> = records.iter().filter_map(|r| RunGroup::of(&r.name, all)).collect();
        let find = |n: &str| records.iter().copied().find(|r| r.name == n);
        let group_wall = |r: &StageRecord| match runs.iter().find(|g| g.stage == r.name) {
            Some(g) => g.points.iter().flat_map(|p| &p.runs).map(|x| x.wall_s).sum(),
            None => r.wall_s,
        };
        let stages = records
            .iter()
            .map(|r| StageRow {
                name: r.name.clone(),
                kind: r.kind,
                source: r.source.clone(),
                method: r.method.clone(),
                exact: r.exact,
                arch: r.arch.clone(),
                params_total: r.params_total,
                params_active: r.params_active,
                tokens: r.tokens,
                flops: r.flops,
                flops_start: r.flops_start,
                flops_end: r.flops_end(),
                val_loss_start: r.val_loss_start,
                val_loss_end: r.val_loss_end,
                lr: r.lr,
                wall_s: group_wall(r),
                model_dir: r.model_dir.clone(),
            })
            .collect();
        let transitions = records
            .iter()
            .filter(|r| matches!(r.kind, StageKind::ScaleUp | StageKind::ScaleOut))
            .filter_map(|r| {
                let (src, grown) = (r.source_val_loss?, r.val_loss_start?);
                Some(Transition {
                    from: r.source.clone().unwrap_or_default(),
                    to: r.name.clone(),
                    kind: r.kind,
                    method: r.method.clone(),
                    exact: r.exact,
                    source_val_loss: src,
                    grown_val_loss: grown,
                    relative_gap: (grown - src) / src,
                })
            })
            .collect();
        let baselines = records
            .iter()
            .filter(|b| b.kind == StageKind::Baseline)
            .filter_map(|b| {
                let s = find(b.source.as_deref()?)?;
                let (ss, bs) = (final_stats(s, &runs)?, final_stats(b, &runs)?);
                Some(BaselineComparison {
                    stage: s.name.clone(),
                    baseline: b.name.clone(),
                    stage_flops: s.flops_end(),
                    baseline_flops: b.flops_end(),
                    stage_val_loss: ss.mean,
                    baseline_val_loss: bs.mean,
                    stage_seeds: ss,
                    baseline_seeds: bs,
                    baseline_lr: b.lr,
                    difference: bs.mean - ss.mean,
                    exceeds_spread: exceeds_spread(&ss, &bs),
                    grown_better: ss.mean < bs.mean,
                })
            })
            .collect();
        let sweeps = records
            .iter()
            .filter_map(|r| {
                Some(SweepEntry {
                    sweep: r.sweep.clone()?,
                    stage: r.name.clone(),
                    method: r.method.clone(),
                    exact: r.exact,
                    val_loss_start: r.val_loss_start,
                    val_loss_end: r.val_loss_end,
                    lr: r.lr,
                    seeds: final_stats(r, &runs),
                })
            })
            .collect();
        Summary {
            name: name.to_string(),
            stages,
            transitions,
            baselines,
            sweeps,
            runs,
            accuracy: crate::accuracy::rows(records.iter().copied()),
            total_wall_s: all.iter().map(|r| r.wall_s).sum(),
        }
    }

    /// The report in Markdown.
    pub fn to_markdown(&self, figure: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# escale run: {}\n", self.name);
        if let Some(fig) = figure {
            let _ = writeln!(s, "![training and validation loss against cumulative training FLOPs]({fig})\n");
        }
        let _ = writeln!(s, "## Stages\n");
        let _ = writeln!(
            s,
            "| stage | kind | from | method | architecture | params total | params active | tokens | FLOPs (stage) | FLOPs (cumulative) | val loss start | val loss end | wall time |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.stages {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                r.kind.as_str(),
                r.source.as_deref().unwrap_or("-"),
                r.method,
                r.arch,
                human_count(r.params_total),
                human_count(r.params_active),
                human_count(r.tokens),
                sci(r.flops),
                sci(r.flops_end),
                loss(r.val_loss_start),
                loss(r.val_loss_end),
                duration(r.wall_s)
            );
        }
        if !self.transitions.is_empty() {
            let _ = writeln!(s, "\n## Transitions (maintain, then reduce, the loss)\n");
            let _ = writeln!(
                s,
                "Validation loss of the source at the end of its stage and of the grown model before any training, on the same held-out tokens.\n"
            );
            let _ = writeln!(s, "| from | to | method | function preserving | source val loss | grown val loss | gap |");
            let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|");
            for t in &self.transitions {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.4} | {:.4} | {:+.2}% |",
                    t.from,
                    t.to,
                    t.method,
                    exact(t.exact),
                    t.source_val_loss,
                    t.grown_val_loss,
                    100.0 * t.relative_gap
                );
            }
        }
        if !self.sweeps.is_empty() {
            let _ = writeln!(s, "\n## Scale-up initialisations side by side\n");
            let _ = writeln!(s, "Each at its best learning rate when the sweep trained several; final validation loss as mean ± standard deviation over seeds when there were several.\n");
            let _ = writeln!(s, "| sweep | stage | method | function preserving | lr | val loss start | val loss end |");
            let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|");
            for e in &self.sweeps {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    e.sweep,
                    e.stage,
                    e.method,
                    exact(e.exact),
                    e.lr.map(lr_text).unwrap_or_else(|| "-".into()),
                    loss(e.val_loss_start),
                    e.seeds.map(|x| x.describe()).unwrap_or_else(|| loss(e.val_loss_end))
                );
            }
            let mean = |e: &SweepEntry| e.seeds.map(|x| x.mean);
            if let Some(best) = self.sweeps.iter().filter(|e| mean(e).is_some()).min_by(|a, b| mean(a).unwrap().total_cmp(&mean(b).unwrap())) {
                let _ = writeln!(s, "\nLowest final validation loss: **{}** ({}).", best.stage, best.method);
            }
        }
        if !self.runs.is_empty() {
            self.write_runs(&mut s);
        }
        if !self.baselines.is_empty() {
            let _ = writeln!(s, "\n## Grown models against from-scratch training at equal FLOPs\n");
            let _ = writeln!(
                s,
                "Final validation loss as mean ± standard deviation over seeds when there were several; the difference exceeds the spread when it is larger than the two standard deviations added.\n"
            );
            let _ = writeln!(s, "| grown stage | baseline | baseline lr | FLOPs grown (cumulative) | FLOPs baseline | val loss grown | val loss baseline | difference | beyond the spread | lower |");
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|---|");
            for b in &self.baselines {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {:+.4} | {} | {} |",
                    b.stage,
                    b.baseline,
                    b.baseline_lr.map(lr_text).unwrap_or_else(|| "-".into()),
                    sci(b.stage_flops),
                    sci(b.baseline_flops),
                    b.stage_seeds.describe(),
                    b.baseline_seeds.describe(),
                    b.difference,
                    spread_verdict(b.exceeds_spread),
                    if b.grown_better { "grown" } else { "baseline" }
                );
            }
        }
        s.push_str(&crate::accuracy::markdown(&self.accuracy, figure.map(|_| crate::accuracy::FIGURE_PNG)));
        let _ = writeln!(s, "\nTotal wall time: {}.", duration(self.total_wall_s));
        s
    }

    /// The learning-rate sweeps and seeds: every run, the chosen point, and a warning when the
    /// choice is an end of its sweep.
    fn write_runs(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Learning-rate sweeps and seeds\n");
        let _ = writeln!(
            s,
            "Every run of a stage trains for the same budget; the learning rate with the lowest final validation loss (mean over its seeds) is chosen and stands for the stage.\n"
        );
        for g in &self.runs {
            let budget = g.points.first().and_then(|p| p.runs.first()).map(|r| format!(", {} FLOPs per run", sci(r.flops))).unwrap_or_default();
            let _ = writeln!(s, "**{}** ({}{budget}):\n", g.stage, g.kind.as_str());
            let _ = writeln!(s, "| lr | final val loss per seed | mean | sd | |");
            let _ = writeln!(s, "|---:|---|---:|---:|---|");
            for p in &g.points {
                let per_seed: Vec<String> = p.runs.iter().map(|r| loss(r.val_loss_end)).collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    lr_text(p.lr),
                    per_seed.join(", "),
                    loss(p.stats.map(|x| x.mean)),
                    p.stats.and_then(|x| x.sd).map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
                    if p.chosen { "**chosen**" } else { "" }
                );
            }
            if let Some(warning) = edge_warning(g) {
                let _ = writeln!(s, "\n> **{warning}**");
            }
            let _ = writeln!(s);
        }
    }

    /// The short table printed at the end of a run.
    pub fn to_terminal(&self) -> String {
        let mut s = String::new();
        let w = self.stages.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(s, "{:w$}  {:9}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>8}", "stage", "kind", "params", "active", "FLOPs", "val start", "val end", "time");
        for r in &self.stages {
            let _ = writeln!(
                s,
                "{:w$}  {:9}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>8}",
                r.name,
                r.kind.as_str(),
                human_count(r.params_total),
                human_count(r.params_active),
                sci(r.flops_end),
                loss(r.val_loss_start),
                loss(r.val_loss_end),
                duration(r.wall_s)
            );
        }
        for t in &self.transitions {
            let _ = writeln!(
                s,
                "transition {} -> {}: {:.4} -> {:.4} ({:+.2}%, {})",
                t.from,
                t.to,
                t.source_val_loss,
                t.grown_val_loss,
                100.0 * t.relative_gap,
                if t.exact == Some(true) { "function preserving" } else { "not function preserving" }
            );
        }
        if !self.runs.is_empty() {
            let _ = writeln!(s, "learning-rate sweeps and seeds (final val loss, mean ± sd over seeds; * chosen):");
            for g in &self.runs {
                let points: Vec<String> = g
                    .points
                    .iter()
                    .map(|p| {
                        let sd = p.stats.and_then(|x| x.sd).map(|v| format!(" ± {v:.4}")).unwrap_or_default();
                        let mark = if p.chosen { "*" } else { "" };
                        format!("lr {} {}{sd}{mark}", lr_text(p.lr), loss(p.stats.map(|x| x.mean)))
                    })
                    .collect();
                let _ = writeln!(s, "  {:w$}  {}", g.stage, points.join("   "));
                if let Some(warning) = edge_warning(g) {
                    let _ = writeln!(s, "  warning: {warning}");
                }
            }
        }
        for b in &self.baselines {
            let spread = match b.exceeds_spread {
                Some(true) => "beyond the spread of the seeds",
                Some(false) => "within the spread of the seeds",
                None => "one seed each: spread unknown",
            };
            let _ = writeln!(
                s,
                "{} {} vs from-scratch {} {} at {} / {} FLOPs: {} lower by {:.4} ({spread})",
                b.stage,
                b.stage_seeds.describe(),
                b.baseline,
                b.baseline_seeds.describe(),
                sci(b.stage_flops),
                sci(b.baseline_flops),
                if b.grown_better { "grown" } else { "baseline" },
                b.difference.abs()
            );
        }
        s
    }
}

/// The sentence saying that a sweep's best learning rate is one of its ends.
pub fn edge_warning(g: &RunGroup) -> Option<String> {
    let (lr, side, way) = match (g.edge?, g.chosen_lr?) {
        (SweepEdge::Lowest, lr) => (lr, "lowest", "below"),
        (SweepEdge::Highest, lr) => (lr, "highest", "above"),
    };
    Some(format!(
        "{}: the best learning rate ({}) is the {side} of the sweep; the optimum may lie {way} it: widen `lr_sweep`.",
        g.stage,
        lr_text(lr)
    ))
}

fn spread_verdict(x: Option<bool>) -> &'static str {
    match x {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown (one seed)",
    }
}

fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.2e}")
    }
}

fn loss(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

fn exact(x: Option<bool>) -> &'static str {
    match x {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// Paths of the report files in a run directory.
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub summary: PathBuf,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes summary.json, report.md and both figures into `run_dir`.
pub fn write_report(run_dir: &Path, name: &str, records: &[StageRecord]) -> Result<(Summary, ReportFiles)> {
    let summary = Summary::from_records(name, records);
    let files = ReportFiles {
        markdown: run_dir.join("report.md"),
        summary: run_dir.join("summary.json"),
        png: run_dir.join("loss_vs_flops.png"),
        svg: run_dir.join("loss_vs_flops.svg"),
    };
    crate::plot::write_figures(records, name, &files.png, &files.svg)?;
    crate::accuracy::write_figures(records, name, &run_dir.join(crate::accuracy::FIGURE_PNG), &run_dir.join(crate::accuracy::FIGURE_SVG))?;
    write_atomic(&files.summary, &serde_json::to_vec_pretty(&summary)?)?;
    write_atomic(&files.markdown, summary.to_markdown(Some("loss_vs_flops.png")).as_bytes())?;
    Ok((summary, files))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::{Curve, Point};
    use crate::runs::Stats;

    /// A synthetic three-stage run plus a baseline, with curves that fall with FLOPs.
    pub(crate) fn synthetic_run() -> Vec<StageRecord> {
        let curve = |f0: f64, f1: f64, l0: f64, l1: f64| {
            let pts = |n: usize| -> Vec<Point> {
                (0..=n)
                    .map(|i| {
                        let t = i as f64 / n as f64;
                        Point { flops: f0 + t * (f1 - f0), tokens: (i * 100) as u64, loss: l0 + t * (l1 - l0) }
                    })
                    .collect()
            };
            Curve { train: pts(40)[1..].to_vec(), valid: pts(4) }
        };
        let rec = |name: &str, kind, source: Option<&str>, f0: f64, f1: f64, l0: f64, l1: f64| StageRecord {
            name: name.into(),
            kind,
            source: source.map(Into::into),
            sweep: None,
            method: "m".into(),
            exact: None,
            arch: "llama d=8".into(),
            params_total: 1000,
            params_active: 1000,
            tokens: 4000,
            flops: f1 - f0,
            flops_start: f0,
            source_val_loss: None,
            val_loss_start: Some(l0),
            val_loss_end: Some(l1),
            wall_s: 2.0,
            model_dir: format!("{name}/model").into(),
            curve: curve(f0, f1, l0, l1),
            key: String::new(),
            model_fingerprint: String::new(),
            data: None,
            lr: None,
            run_of: None,
            accuracy: Vec::new(),
        };
        let base = rec("base", StageKind::Prepare, None, 0.0, 1e12, 7.0, 4.0);
        let mut up = rec("up", StageKind::ScaleUp, Some("base"), 1e12, 3e12, 4.01, 3.0);
        up.source_val_loss = Some(4.0);
        up.exact = Some(true);
        up.sweep = Some("grow".into());
        let mut aki = rec("up-aki", StageKind::ScaleUp, Some("base"), 1e12, 3e12, 4.5, 2.9);
        aki.source_val_loss = Some(4.0);
        aki.exact = Some(false);
        aki.sweep = Some("grow".into());
        let scratch = rec("up-scratch", StageKind::Baseline, Some("up"), 0.0, 3e12, 7.0, 3.4);
        vec![base, up, aki, scratch]
    }

    /// [`synthetic_run`] with its baseline swept over three learning rates, two seeds each: the
    /// runs, then the selection under the baseline's name (a copy of the chosen run).
    pub(crate) fn synthetic_sweep() -> Vec<StageRecord> {
        let mut records = synthetic_run();
        let scratch = records.pop().unwrap();
        for (lr, losses) in [(1e-3, [3.4, 3.6]), (3e-3, [3.4, 3.45]), (9e-3, [3.6, 3.7])] {
            for (k, l) in losses.into_iter().enumerate() {
                let mut r = scratch.clone();
                r.name = format!("up-scratch-lr{}-s{k}", crate::runs::lr_tag(lr));
                r.model_dir = format!("{}/train/final", r.name).into();
                r.val_loss_end = Some(l);
                r.lr = Some(lr);
                r.run_of = Some(crate::runs::RunOf { stage: "up-scratch".into(), lr, seed_index: k });
                records.push(r);
            }
        }
        let chosen = records.iter().find(|r| r.name == "up-scratch-lr3e-3-s0").unwrap().clone();
        records.push(StageRecord { name: "up-scratch".into(), run_of: None, wall_s: 0.0, ..chosen });
        records
    }

    #[test]
    fn a_swept_baseline_is_one_stage_with_every_run_listed() {
        let s = Summary::from_records("t", &synthetic_sweep());
        let names: Vec<&str> = s.stages.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["base", "up", "up-aki", "up-scratch"]);
        assert_eq!(s.stages[3].wall_s, 12.0, "the stage's wall time is its six runs'");
        let g = &s.runs[0];
        assert_eq!((g.stage.as_str(), g.points.len(), g.chosen_lr, g.edge), ("up-scratch", 3, Some(3e-3), None));
        let b = &s.baselines[0];
        assert_eq!((b.baseline_lr, b.baseline_seeds.n), (Some(3e-3), 2));
        assert!((b.baseline_val_loss - 3.425).abs() < 1e-12, "the mean of the chosen point's seeds");
        assert_eq!(b.exceeds_spread, Some(true), "0.425 > sd of (3.4, 3.45)");
        let md = s.to_markdown(None);
        assert!(md.contains("| 0.001 | 3.4000, 3.6000 | 3.5000 | 0.1414 |  |"), "{md}");
        assert!(md.contains("| 0.003 | 3.4000, 3.4500 | 3.4250 | 0.0354 | **chosen** |"), "{md}");
        assert!(md.contains("| up | up-scratch | 0.003 |"), "{md}");
        assert!(md.contains("3.4250 ± 0.0354 (2 seeds) | +0.4250 | yes | grown |"), "{md}");
    }

    #[test]
    fn summary_has_transitions_baselines_and_sweeps() {
        let s = Summary::from_records("t", &synthetic_run());
        assert_eq!(s.stages.len(), 4);
        assert_eq!(s.stages[1].flops_end, 3e12);
        assert_eq!(s.transitions.len(), 2);
        assert!((s.transitions[0].relative_gap - 0.0025).abs() < 1e-12);
        assert_eq!(s.transitions[1].from, "base");
        assert_eq!(
            s.baselines,
            vec![BaselineComparison {
                stage: "up".into(),
                baseline: "up-scratch".into(),
                stage_flops: 3e12,
                baseline_flops: 3e12,
                stage_val_loss: 3.0,
                baseline_val_loss: 3.4,
                stage_seeds: Stats::of(&[3.0]).unwrap(),
                baseline_seeds: Stats::of(&[3.4]).unwrap(),
                baseline_lr: None,
                difference: 3.4 - 3.0,
                exceeds_spread: None,
                grown_better: true
            }]
        );
        assert_eq!(s.sweeps.iter().map(|e| e.stage.as_str()).collect::<Vec<_>>(), ["up", "up-aki"]);
        assert_eq!(s.total_wall_s, 8.0);
    }

    #[test]
    fn markdown_tables_carry_the_numbers() {
        let md = Summary::from_records("t", &synthetic_run()).to_markdown(Some("loss_vs_flops.png"));
        assert!(md.contains("![training and validation loss against cumulative training FLOPs](loss_vs_flops.png)"));
        assert!(md.contains("| base | prepare | - | m | llama d=8 | 1.0K | 1.0K | 4.0K | 1.00e12 | 1.00e12 | 7.0000 | 4.0000 | 2.0 s |"), "{md}");
        assert!(md.contains("| base | up | m | yes | 4.0000 | 4.0100 | +0.25% |"), "{md}");
        assert!(md.contains("| up | up-scratch | - | 3.00e12 | 3.00e12 | 3.0000 | 3.4000 | +0.4000 | unknown (one seed) | grown |"), "{md}");
        assert!(!md.contains("## Learning-rate sweeps"), "no stage trained more than once");
        assert!(md.contains("Lowest final validation loss: **up-aki** (m)."));
        let term = Summary::from_records("t", &synthetic_run()).to_terminal();
        assert!(term.contains("transition base -> up: 4.0000 -> 4.0100 (+0.25%, function preserving)"), "{term}");
    }
}
