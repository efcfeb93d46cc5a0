//! Loss curves read from the trainer's JSONL logs and placed on the pipeline's compute axis.
//!
//! The trainer counts FLOPs from zero in every run; the pipeline shifts each stage's curve by the
//! cumulative FLOPs of the chain it grew from, so all stages share one loss-vs-FLOPs axis (the
//! paper's figure). The logs are read through the trainer's own record types
//! ([`StepRecord`], [`EvalRecord`]), so the two crates cannot disagree on a key name.

use std::io::BufRead;
use std::path::Path;

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use escale_train::{EvalRecord, StepRecord};
use serde::{Deserialize, Serialize};

/// One measured loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Cumulative training FLOPs at this point (including ancestors' training once offset).
    pub flops: f64,
    /// Tokens trained in this stage so far.
    pub tokens: u64,
    pub loss: f64,
}

/// Training and validation loss of one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub train: Vec<Point>,
    pub valid: Vec<Point>,
}

impl Curve {
    /// The same curve with every FLOPs value increased by `offset`.
    pub fn shifted(&self, offset: f64) -> Curve {
        let shift = |v: &[Point]| v.iter().map(|p| Point { flops: p.flops + offset, ..*p }).collect();
        Curve { train: shift(&self.train), valid: shift(&self.valid) }
    }

    /// Prepends a validation point (the grown model before training) at `flops`.
    pub fn with_start(mut self, flops: f64, loss: Option<f64>) -> Curve {
        if let Some(loss) = loss {
            if self.valid.first().is_none_or(|p| p.tokens > 0) {
                self.valid.insert(0, Point { flops, tokens: 0, loss });
            }
        }
        self
    }

    /// Training loss averaged into at most `max_points` buckets of consecutive steps, so a
    /// 10,000-step run plots as a readable line and small files.
    pub fn smoothed_train(&self, max_points: usize) -> Vec<Point> {
        let n = self.train.len();
        if n <= max_points || max_points == 0 {
            return self.train.clone();
        }
        let per = n.div_ceil(max_points);
        self.train
            .chunks(per)
            .map(|c| {
                let last = c[c.len() - 1];
                let mean = c.iter().map(|p| p.loss).sum::<f64>() / c.len() as f64;
                Point { loss: mean, ..last }
            })
            .collect()
    }
}

/// A line of one of the trainer's logs, reduced to a point of the curve.
pub trait LogRecord: serde::de::DeserializeOwned {
    /// What the line is, for error messages.
    const WHAT: &'static str;
    fn step(&self) -> u64;
    fn point(&self) -> Point;
}

impl LogRecord for StepRecord {
    const WHAT: &'static str = "training step";
    fn step(&self) -> u64 {
        self.step
    }
    fn point(&self) -> Point {
        Point { flops: self.flops, tokens: self.tokens, loss: self.loss }
    }
}

impl LogRecord for EvalRecord {
    const WHAT: &'static str = "evaluation";
    fn step(&self) -> u64 {
        self.step
    }
    fn point(&self) -> Point {
        Point { flops: self.flops, tokens: self.tokens, loss: self.val_loss }
    }
}

/// Reads one of the trainer's JSONL logs into points, ordered by FLOPs. A line that is not a
/// record is an error naming the line, except a truncated last line, which a killed run can leave
/// and which is ignored.
pub fn read_log<R: LogRecord>(path: &Path) -> Result<Vec<Point>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", path.display()))?;
    // A resumed run logs the steps after its checkpoint again: the later line wins.
    let mut by_step: BTreeMap<u64, Point> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => bail!("{}:{}: not a JSON object: {e}", path.display(), i + 1),
        };
        let record: R = serde_json::from_value(value)
            .map_err(|e| anyhow!("{}:{}: not a {} record: {}", path.display(), i + 1, R::WHAT, describe(&e)))?;
        by_step.insert(record.step(), record.point());
    }
    let mut out: Vec<Point> = by_step.into_values().collect();
    out.sort_by(|a, b| a.flops.total_cmp(&b.flops));
    Ok(out)
}

/// serde's message, with the one field the curve cannot do without named for what it is.
fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("missing field `flops`") {
        format!("no cumulative FLOPs field ({msg})")
    } else {
        msg
    }
}

/// Reads the training log and, when present, the evaluation log of one training run.
pub fn read_curve(train_log: &Path, eval_log: Option<&Path>) -> Result<Curve> {
    let train = read_log::<StepRecord>(train_log)?;
    let valid = match eval_log {
        Some(p) if p.exists() => read_log::<EvalRecord>(p)?,
        _ => Vec::new(),
    };
    Ok(Curve { train, valid })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A training-log line as the trainer writes it.
    fn step_line(step: u64, tokens: u64, loss: f64, flops: f64) -> String {
        let r = StepRecord {
            step,
            tokens,
            loss,
            lr: 0.001,
            grad_norm: 1.0,
            tokens_per_s: 1.0,
            flops,
            aux_loss: None,
            z_loss: None,
            expert_load: None,
            skipped: false,
        };
        serde_json::to_string(&r).unwrap() + "\n"
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_train_and_eval_logs_and_dedups_resumed_steps() {
        let dir = tempfile::tempdir().unwrap();
        let train = write(
            dir.path(),
            "train.jsonl",
            &[
                step_line(1, 100, 5.0, 1e9),
                step_line(2, 200, 4.0, 2e9),
                step_line(2, 200, 4.5, 2e9),
                "{\"step\":3,\"tokens\":300,\"loss\":3.0,\"flo".to_string(),
            ]
            .concat(),
        );
        let eval = write(dir.path(), "eval.jsonl", "{\"step\":2,\"tokens\":200,\"val_loss\":4.2,\"flops\":2e9}\n");
        let c = read_curve(&train, Some(&eval)).unwrap();
        assert_eq!(c.train.len(), 2, "the truncated last line is ignored");
        assert_eq!(c.train[1], Point { flops: 2e9, tokens: 200, loss: 4.5 }, "the resumed run's line wins");
        assert_eq!(c.valid, vec![Point { flops: 2e9, tokens: 200, loss: 4.2 }]);
        let s = c.shifted(1e9).with_start(1e9, Some(6.0));
        assert_eq!(s.valid[0], Point { flops: 1e9, tokens: 0, loss: 6.0 });
        assert_eq!(s.train[0].flops, 2e9);
    }

    #[test]
    fn bad_lines_are_errors_with_the_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.jsonl", &(step_line(1, 0, 1.0, 1.0) + "not json\n{\"step\":2}\n"));
        let e = read_log::<StepRecord>(&p).unwrap_err().to_string();
        assert!(e.ends_with(":2: not a JSON object: expected ident at line 1 column 2"), "{e}");
        let p = write(dir.path(), "u.jsonl", "{\"step\":1,\"tokens\":0,\"val_loss\":1.0}\n");
        assert!(read_log::<EvalRecord>(&p).unwrap_err().to_string().contains("no cumulative FLOPs field"));
    }

    #[test]
    fn smoothing_averages_buckets_and_keeps_the_last_position() {
        let train: Vec<Point> = (1..=10).map(|i| Point { flops: i as f64, tokens: i, loss: i as f64 }).collect();
        let c = Curve { train, valid: vec![] };
        let s = c.smoothed_train(5);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], Point { flops: 2.0, tokens: 2, loss: 1.5 });
        assert_eq!(s[4], Point { flops: 10.0, tokens: 10, loss: 9.5 });
        assert_eq!(c.smoothed_train(20).len(), 10);
    }
}
