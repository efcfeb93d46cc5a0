//! Stages trained more than once: a learning-rate sweep (`lr_sweep`) and seeds (`seeds`).
//!
//! Every run is a stage of its own in the plan (its own folder, key and `stage.json`, so a re-run
//! skips the finished ones and widening a sweep only runs the new points) and is tagged with
//! [`RunOf`]. What belongs together is found by that tag alone: the runs of stage `L` are the
//! records whose `run_of.stage` is `L`. With a sweep, a selection stage named `L` follows the
//! points and holds the chosen run; with seeds alone, `L` is the first seed itself.
//!
//! The choice, the statistics and the edge-of-sweep verdict are computed here, from records, so
//! the selection stage and the report cannot disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::{StageKind, StageRecord};

/// Where a training run sits among the runs of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOf {
    /// The stage it is a run of.
    pub stage: String,
    /// Its peak learning rate (the sweep point).
    pub lr: f64,
    /// Which seed: 0 is the stage's own seed, the others are derived from it.
    pub seed_index: usize,
}

/// Mean and spread of the final validation losses of several seeds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator); `None` with a single seed.
    pub sd: Option<f64>,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `values` (`None` when there are none).
    pub fn of(values: &[f64]) -> Option<Stats> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stats { n, mean, sd, min, max })
    }

    /// The spread used in comparisons: the standard deviation, 0 with one seed.
    pub fn spread(&self) -> f64 {
        self.sd.unwrap_or(0.0)
    }

    /// "2.5128 ± 0.0123 (3 seeds)", or "2.5128" for a single seed.
    pub fn describe(&self) -> String {
        match self.sd {
            Some(sd) => format!("{:.4} ± {:.4} ({} seeds)", self.mean, sd, self.n),
            None => format!("{:.4}", self.mean),
        }
    }
}

/// Whether the difference of two means is larger than the spread of the seeds: `|a - b|` above
/// the sum of the two standard deviations (their one-sigma intervals do not overlap). `None`
/// when neither side has more than one seed, so no spread was measured.
pub fn exceeds_spread(a: &Stats, b: &Stats) -> Option<bool> {
    if a.n < 2 && b.n < 2 {
        return None;
    }
    Some((a.mean - b.mean).abs() > a.spread() + b.spread())
}

/// One run, as listed in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Its stage (and folder) name.
    pub name: String,
    pub seed_index: usize,
    pub val_loss_end: Option<f64>,
    pub tokens: u64,
    pub flops: f64,
    pub wall_s: f64,
}

/// The runs of one stage at one learning rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrPoint {
    pub lr: f64,
    pub runs: Vec<RunResult>,
    /// Over the runs' final validation losses (`None` if none was measured).
    pub stats: Option<Stats>,
    pub chosen: bool,
}

/// The best learning rate is at an end of the sweep: the optimum may lie beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepEdge {
    Lowest,
    Highest,
}

/// Every run of one stage, by learning rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunGroup {
    pub stage: String,
    pub kind: StageKind,
    /// Points in increasing learning rate.
    pub points: Vec<LrPoint>,
    /// Learning rate of the chosen point (lowest mean final validation loss over its seeds).
    pub chosen_lr: Option<f64>,
    /// Set when the chosen point is the lowest or highest of a sweep of more than one point.
    pub edge: Option<SweepEdge>,
}

impl RunGroup {
    /// The runs of stage `stage` among `records` (those tagged `run_of.stage == stage`), grouped
    /// by learning rate, with the choice made. `None` when the stage ran once.
    pub fn of(stage: &str, records: &[StageRecord]) -> Option<RunGroup> {
        let runs: Vec<(&RunOf, &StageRecord)> =
            records.iter().filter_map(|r| r.run_of.as_ref().filter(|o| o.stage == stage).map(|o| (o, r))).collect();
        if runs.len() < 2 {
            return None;
        }
        let mut by_lr: BTreeMap<LrKey, Vec<(&RunOf, &StageRecord)>> = BTreeMap::new();
        for (o, r) in runs {
            by_lr.entry(LrKey(o.lr)).or_default().push((o, r));
        }
        let mut points: Vec<LrPoint> = by_lr
            .into_iter()
            .map(|(lr, mut runs)| {
                runs.sort_by_key(|(o, _)| o.seed_index);
                let losses: Vec<f64> = runs.iter().filter_map(|(_, r)| r.val_loss_end).collect();
                let runs = runs
                    .iter()
                    .map(|(o, r)| RunResult {
                        name: r.name.clone(),
                        seed_index: o.seed_index,
                        val_loss_end: r.val_loss_end,
                        tokens: r.tokens,
                        flops: r.flops,
                        wall_s: r.wall_s,
                    })
                    .collect();
                LrPoint { lr: lr.0, runs, stats: Stats::of(&losses), chosen: false }
            })
            .collect();
        let best = best_point(&points);
        if let Some(i) = best {
            points[i].chosen = true;
        }
        let edge = best.filter(|_| points.len() > 1).and_then(|i| match i {
            0 => Some(SweepEdge::Lowest),
            i if i + 1 == points.len() => Some(SweepEdge::Highest),
            _ => None,
        });
        let kind = records.iter().find(|r| r.name == stage).map(|r| r.kind).unwrap_or(StageKind::Baseline);
        Some(RunGroup { stage: stage.to_string(), kind, chosen_lr: best.map(|i| points[i].lr), points, edge })
    }

    /// The chosen point.
    pub fn chosen(&self) -> Option<&LrPoint> {
        self.points.iter().find(|p| p.chosen)
    }

    /// Name of the run that stands for the stage: the first seed of the chosen point.
    pub fn chosen_run(&self) -> Option<&str> {
        self.chosen().and_then(|p| p.runs.first()).map(|r| r.name.as_str())
    }
}

/// Index of the point with the lowest mean final validation loss (ties: the lower learning rate).
fn best_point(points: &[LrPoint]) -> Option<usize> {
    points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.stats.map(|s| (i, s.mean)))
        .filter(|(_, m)| m.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        .map(|(i, _)| i)
}

/// A learning rate as a map key, ordered numerically.
#[derive(Clone, Copy, PartialEq)]
struct LrKey(f64);

impl Eq for LrKey {}

impl PartialOrd for LrKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LrKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub use crate::schema::round_lr;

/// A learning rate as it appears in run names: `1e-3`, `6p667e-4` (no '.', which folder names and
/// shell globs handle badly).
pub fn lr_tag(lr: f64) -> String {
    let s = format!("{:.3e}", round_lr(lr));
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let mantissa = if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
    format!("{}e{exp}", mantissa.replace('.', "p"))
}

/// A learning rate for people: `0.001`, `6.667e-4`.
pub fn lr_text(lr: f64) -> String {
    let lr = round_lr(lr);
    if (1e-3..1.0).contains(&lr) {
        format!("{lr}")
    } else {
        lr_tag(lr).replace('p', ".")
    }
}

/// The default sweep around a stage's learning rate: a third, itself, three times.
pub fn default_sweep(lr: f64) -> Vec<f64> {
    vec![round_lr(lr / 3.0), round_lr(lr), round_lr(lr * 3.0)]
}

/// Seed of the `index`-th seed of a stage whose own seed is `seed` (index 0 keeps it, so a stage
/// that gains seeds keeps its first run).
pub fn replica_seed(seed: u64, index: usize) -> u64 {
    /// Stream tag of replica seeds in [`escale_util::rng::derive_seed`] ("seed" in hex-speak).
    const REPLICA_STREAM: u64 = 0x5eed;
    if index == 0 {
        seed
    } else {
        escale_util::rng::derive_seed(seed, &[REPLICA_STREAM, index as u64])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::record;

    fn run(stage: &str, name: &str, lr: f64, seed_index: usize, loss: f64) -> StageRecord {
        let mut r = record(name, &format!("{name}/model"));
        r.kind = StageKind::Baseline;
        r.run_of = Some(RunOf { stage: stage.into(), lr, seed_index });
        r.val_loss_end = Some(loss);
        r
    }

    #[test]
    fn stats_use_the_sample_standard_deviation() {
        let s = Stats::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.mean, s.sd, s.min, s.max), (3, 2.0, Some(1.0), 1.0, 3.0));
        let one = Stats::of(&[4.0]).unwrap();
        assert_eq!((one.sd, one.describe()), (None, "4.0000".to_string()));
        assert_eq!(s.describe(), "2.0000 ± 1.0000 (3 seeds)");
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn the_spread_verdict_needs_a_measured_spread() {
        let a = Stats::of(&[2.0, 2.2]).unwrap();
        let b = Stats::of(&[3.0, 3.2]).unwrap();
        assert_eq!(exceeds_spread(&a, &b), Some(true));
        let c = Stats::of(&[2.0, 2.9]).unwrap();
        assert_eq!(exceeds_spread(&c, &b), Some(false), "|2.45 - 3.1| < 0.64 + 0.14");
        let single = Stats::of(&[2.5]).unwrap();
        assert_eq!(exceeds_spread(&single, &Stats::of(&[3.0]).unwrap()), None);
        assert_eq!(exceeds_spread(&single, &b), Some(true));
    }

    #[test]
    fn a_group_picks_the_lowest_mean_and_flags_the_edge() {
        let records = vec![
            run("b", "b-lr3e-3", 3e-3, 0, 4.4),
            run("b", "b-lr1e-3", 1e-3, 0, 4.1),
            run("b", "b-lr1e-3-s1", 1e-3, 1, 4.3),
            run("b", "b-lr1e-2", 1e-2, 0, 5.0),
            run("other", "o-lr1e-3", 1e-3, 0, 1.0),
        ];
        let g = RunGroup::of("b", &records).unwrap();
        let lrs: Vec<f64> = g.points.iter().map(|p| p.lr).collect();
        assert_eq!(lrs, [1e-3, 3e-3, 1e-2], "points in increasing learning rate");
        assert_eq!(g.points[0].runs.iter().map(|r| r.seed_index).collect::<Vec<_>>(), [0, 1]);
        assert!((g.points[0].stats.unwrap().mean - 4.2).abs() < 1e-12);
        assert_eq!(g.chosen_lr, Some(1e-3));
        assert_eq!(g.edge, Some(SweepEdge::Lowest));
        assert_eq!(g.chosen_run(), Some("b-lr1e-3"));

        // Once the sweep is widened below, the optimum is inside it.
        let mut wider = records.clone();
        wider.push(run("b", "b-lr3e-4", 3e-4, 0, 4.5));
        let g = RunGroup::of("b", &wider).unwrap();
        assert_eq!((g.chosen_lr, g.edge), (Some(1e-3), None));
        assert!(RunGroup::of("other", &records).is_none(), "a stage that ran once is no group");
    }

    #[test]
    fn learning_rates_are_named_and_rounded_for_people() {
        assert_eq!(default_sweep(0.003), [0.001, 0.003, 0.009]);
        assert_eq!(lr_tag(0.001), "1e-3");
        assert_eq!(lr_tag(0.002 / 3.0), "6p667e-4");
        assert_eq!(lr_tag(0.0125), "1p25e-2");
        assert_eq!(lr_text(0.001), "0.001");
        assert_eq!(lr_text(0.002 / 3.0), "6.667e-4");
        assert_eq!(replica_seed(7, 0), 7);
        assert_ne!(replica_seed(7, 1), replica_seed(7, 2));
    }
}
