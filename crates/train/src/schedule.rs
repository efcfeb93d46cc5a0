//! Learning-rate schedules: linear warmup, then cosine / linear / constant / WSD decay to a floor.
//!
//! Steps are counted from 1: `lr(s)` is the rate used by the `s`-th optimizer update, so the first
//! update of a run with warmup uses `peak / warmup` (never 0, which would waste a step) and update
//! `total` lands exactly on `min_lr` for the decaying schedules.

use serde::{Deserialize, Serialize};

/// Shape of the learning rate after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ScheduleKind {
    /// Half a cosine from `peak` to `min_lr` over the post-warmup steps (the common pretraining default).
    #[default]
    Cosine,
    /// Straight line from `peak` to `min_lr`.
    Linear,
    /// `peak` forever after warmup (`min_lr` unused).
    Constant,
    /// Warmup-stable-decay: `peak` until the last `decay_fraction` of the run, then a straight line
    /// to `min_lr`. Lets a run be extended or branched from any stable-phase checkpoint.
    Wsd,
}

/// A complete schedule; `lr(step)` is a pure function of it, so resuming needs only the step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// WSD only: share of `total_steps` spent decaying (e.g. 0.1 = the last 10%).
    pub decay_fraction: f64,
}

impl LrSchedule {
    /// Learning rate of update number `step` (1-based). Steps past `total_steps` stay at the end value.
    pub fn lr(&self, step: u64) -> f64 {
        let s = step.max(1);
        if s <= self.warmup_steps {
            return self.peak * s as f64 / self.warmup_steps as f64;
        }
        let s = s.min(self.total_steps.max(1));
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Cosine => {
                let p = self.progress(s, self.warmup_steps);
                self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
            }
            ScheduleKind::Linear => {
                let p = self.progress(s, self.warmup_steps);
                self.peak - (self.peak - self.min_lr) * p
            }
            ScheduleKind::Wsd => {
                let decay_steps = (self.decay_fraction * self.total_steps as f64).round() as u64;
                let decay_start = self.total_steps.saturating_sub(decay_steps).max(self.warmup_steps);
                if s <= decay_start {
                    self.peak
                } else {
                    let p = self.progress(s, decay_start);
                    self.peak - (self.peak - self.min_lr) * p
                }
            }
        }
    }

    /// Fraction of the way from `start` to `total_steps` (0 just after `start`, 1 at the end).
    fn progress(&self, s: u64, start: u64) -> f64 {
        let span = self.total_steps.saturating_sub(start);
        if span == 0 {
            return 1.0;
        }
        (s - start) as f64 / span as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> LrSchedule {
        LrSchedule { kind, peak: 1.0, min_lr: 0.1, warmup_steps: 2, total_steps: 12, decay_fraction: 0.2 }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn warmup_is_linear_from_peak_over_warmup() {
        for kind in [ScheduleKind::Cosine, ScheduleKind::Linear, ScheduleKind::Constant, ScheduleKind::Wsd] {
            let s = sched(kind);
            close(s.lr(1), 0.5);
            close(s.lr(2), 1.0);
        }
    }

    #[test]
    fn cosine_hand_values() {
        // Post-warmup span is 10 steps: step 7 is halfway -> min + (peak-min)/2 = 0.55.
        let s = sched(ScheduleKind::Cosine);
        close(s.lr(7), 0.55);
        // step 3: p = 0.1 -> 0.1 + 0.45 * (1 + cos(0.1 pi)) = 0.1 + 0.45 * 1.9510565162951536
        close(s.lr(3), 0.1 + 0.45 * 1.951_056_516_295_153_6);
        close(s.lr(12), 0.1);
        close(s.lr(100), 0.1);
    }

    #[test]
    fn linear_hand_values() {
        let s = sched(ScheduleKind::Linear);
        close(s.lr(3), 1.0 - 0.9 * 0.1);
        close(s.lr(7), 0.55);
        close(s.lr(12), 0.1);
    }

    #[test]
    fn constant_stays_at_peak() {
        let s = sched(ScheduleKind::Constant);
        close(s.lr(3), 1.0);
        close(s.lr(12), 1.0);
    }

    #[test]
    fn wsd_holds_then_decays_over_last_fraction() {
        // decay_fraction 0.2 of 12 steps = 2.4 -> 2 decay steps, starting after step 10.
        let s = sched(ScheduleKind::Wsd);
        close(s.lr(3), 1.0);
        close(s.lr(10), 1.0);
        close(s.lr(11), 0.55);
        close(s.lr(12), 0.1);
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = LrSchedule { warmup_steps: 0, ..sched(ScheduleKind::Cosine) };
        // span 12 steps, step 1 -> p = 1/12
        close(s.lr(1), 0.1 + 0.45 * (1.0 + (std::f64::consts::PI / 12.0).cos()));
    }
}
