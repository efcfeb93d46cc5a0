//! Compute-budget arithmetic: what a from-scratch baseline may spend, in FLOPs and in tokens.

use crate::manifest::StageRecord;
use crate::schema::BaselineBudget;

/// FLOPs a baseline compared with stage `of` may spend.
pub fn baseline_flops(budget: BaselineBudget, of: &StageRecord) -> f64 {
    match budget {
        // The fair comparison: the grown model is charged for its ancestors' training too.
        BaselineBudget::Cumulative => of.flops_end(),
        BaselineBudget::Stage => of.flops,
    }
}

/// Tokens that spend `flops` at `flops_per_token`, in whole optimizer steps of `tokens_per_step`
/// rounded to the nearest (not up): the budget is met within half a step. At least one step.
pub fn tokens_for_flops(flops: f64, flops_per_token: f64, tokens_per_step: u64) -> u64 {
    let steps = (flops / flops_per_token / tokens_per_step as f64).round().max(1.0);
    steps as u64 * tokens_per_step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_to_the_nearest_whole_step() {
        assert_eq!(tokens_for_flops(1000.0 * 6.0 * 128.0, 6.0, 128), 1000 * 128);
        assert_eq!(tokens_for_flops(10.4 * 128.0, 1.0, 128), 10 * 128);
        assert_eq!(tokens_for_flops(10.6 * 128.0, 1.0, 128), 11 * 128);
        assert_eq!(tokens_for_flops(0.0, 1.0, 128), 128, "at least one step");
    }

    #[test]
    fn cumulative_budgets_include_the_ancestors() {
        let mut r = crate::manifest::tests::record("moe", "moe/train/final");
        r.flops = 2.0;
        r.flops_start = 3.0;
        assert_eq!(baseline_flops(BaselineBudget::Stage, &r), 2.0);
        assert_eq!(baseline_flops(BaselineBudget::Cumulative, &r), r.flops_end());
    }
}
