//! The built-in demo: the whole EfficientScale method on the built-in bilingual corpus, sized for
//! a laptop CPU (full: about 10 minutes on 2 cores; quick: a few minutes, what the tests run).
//! Both train the sweep variants and the baselines at three learning rates each (issue 18): the
//! full demo's post-growth budgets were cut to keep its training FLOPs near the earlier demo's.
//!
//! It is an ordinary pipeline file, parsed through the same schema as a user's, and written into
//! the run directory so that `escale run <dir>/pipeline.yaml` repeats (or resumes) it.

use crate::schema::{PipelineFile, SchemaError};

/// Sizes that differ between the full and the quick demo.
struct Sizes {
    corpus_mb: f64,
    vocab: usize,
    base_tokens: u64,
    up_tokens: u64,
    moe_tokens: u64,
    eval_tokens: u64,
    /// Seeds of each learning rate of the dense baseline (the MoE baseline, the dearest stage,
    /// trains one seed).
    baseline_seeds: usize,
    /// Sweep the learning rate of every compared stage; the quick demo, which must stay a
    /// test-suite-sized run, sweeps only the dense baseline (the comparison the sweep matters most to).
    sweep_all: bool,
    /// Items per built-in multiple-choice task.
    task_items: usize,
}

const FULL: Sizes = Sizes {
    corpus_mb: 1.0,
    vocab: 512,
    base_tokens: 163_840,
    up_tokens: 24_576,
    moe_tokens: 24_576,
    eval_tokens: 8_192,
    baseline_seeds: 2,
    sweep_all: true,
    task_items: 100,
};
const QUICK: Sizes = Sizes {
    corpus_mb: 0.3,
    vocab: 384,
    base_tokens: 24_576,
    up_tokens: 6_144,
    moe_tokens: 6_144,
    eval_tokens: 2_048,
    baseline_seeds: 1,
    sweep_all: false,
    task_items: 40,
};

/// The demo pipeline as YAML text.
pub fn demo_yaml(quick: bool) -> String {
    let s = if quick { &QUICK } else { &FULL };
    format!(
        r#"# escale demo{quick}: EfficientScale end to end on the built-in bilingual corpus.
# Preparation: a small dense llama trained from scratch.
# Scale-Up: width x2 (64 -> 128), depth x2 (2 -> 4 layers), two initialisations side by side:
#   aki-pro (the paper's choice, not function preserving) and an exact preset (fpi copies at an
#   integer width ratio + interpolation with zero-initialised copies), then continued pretraining.
# Scale-Out: the exact branch upcycled into 8 experts, top-2, router N(0, 0.02), then trained.
# Baselines: the same architectures trained from scratch for the same cumulative FLOPs.
# Fairness: {fairness_note}; {seeds_note}
# Every stage's start and end models also answer multiple-choice questions about the corpus's
# world (`tasks: [builtin]`, as `escale make-tasks` writes them): known facts and held-out ones.
name: escale demo{quick}
seed: 1
eval: {{tokens: {eval_tokens}, seq_len: 128, tasks: [builtin], task_items: {task_items}}}
train: {{seq_len: 128, micro_batch: 8, lr: 0.002, min_lr: 0.0002, warmup_steps: 10, weight_decay: 0.01}}
stages:
  - prepare:
      name: base
      corpus: {{builtin: {{size_mb: {corpus_mb}}}}}
      tokenizer: {{train: {{vocab_size: {vocab}}}}}
      model:
        init:
          config: {{hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4,
                   num_key_value_heads: 2, max_position_embeddings: 512}}
      train: {{total_tokens: {base_tokens}, lr: 0.003}}
  - sweep:
      name: up
      target: {{hidden_size: 128, intermediate_size: 352, num_attention_heads: 8, num_hidden_layers: 4}}
      variants:
        - {{name: up-aki-pro, method: aki-pro, preset: fpi}}
        - {{name: up-exact, method: fpi, preset: fpi, depth: interpolate-identity}}
      train: {{total_tokens: {up_tokens}, lr: {grown_lr}, warmup_steps: 5}}
      lr_sweep: {grown_sweep}
  - scale_out:
      name: moe
      from: up-exact
      experts: 8
      top_k: 2
      router_init: normal
      router_std: 0.02
      train: {{total_tokens: {moe_tokens}, lr: {grown_lr}, warmup_steps: 5}}
  - baseline:
      name: up-scratch
      of: up-exact
      train: {{lr: 0.003, warmup_steps: 10}}
      lr_sweep: [0.001, 0.003, 0.01]{baseline_seeds}
  - baseline:
      name: moe-scratch
      of: moe
      train: {{lr: 0.003, warmup_steps: 10}}
      lr_sweep: {other_sweep}
"#,
        quick = if quick { " (quick)" } else { "" },
        eval_tokens = s.eval_tokens,
        corpus_mb = s.corpus_mb,
        vocab = s.vocab,
        base_tokens = s.base_tokens,
        up_tokens = s.up_tokens,
        moe_tokens = s.moe_tokens,
        seeds_note = if s.baseline_seeds > 1 {
            format!("the dense baseline with {} seeds, so the report\n#   shows the spread of its final loss.", s.baseline_seeds)
        } else {
            "one seed each (the report says\n#   the spread is unknown; `seeds: N` measures it, at N times the cost).".to_string()
        },
        baseline_seeds = if s.baseline_seeds > 1 { format!("\n      seeds: {}", s.baseline_seeds) } else { String::new() },
        fairness_note = if s.sweep_all {
            "the sweep variants and the baselines are each trained at three learning rates for the\n#   same budget and compared at their best (lr_sweep)"
        } else {
            "the dense baseline is trained at three learning rates for the same budget and\n#   compared at its best (lr_sweep; the full demo sweeps every compared stage)"
        },
        // The full demo's sweeps are centred on 3e-3: a run of the previous demo, swept over
        // [3e-4, 1e-3, 3e-3], chose the top point for every stage, grown and from scratch alike. The
        // quick demo's grown stages train only a few steps, too few to take 3e-3 after warm-up.
        grown_lr = if s.sweep_all { "0.003" } else { "0.001" },
        grown_sweep = if s.sweep_all { "[0.001, 0.003, 0.01]" } else { "[0.001]" },
        other_sweep = if s.sweep_all { "[0.001, 0.003, 0.01]" } else { "[0.003]" },
        task_items = s.task_items,
    )
}

/// The demo pipeline, parsed.
pub fn demo_file(quick: bool) -> Result<PipelineFile, SchemaError> {
    PipelineFile::parse(&demo_yaml(quick), "<built-in demo>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::StageSpec;

    #[test]
    fn both_demos_are_valid_pipelines_with_the_papers_stages() {
        for quick in [false, true] {
            let f = demo_file(quick).unwrap();
            let kinds: Vec<&str> = f.stages.iter().map(|s| s.kind()).collect();
            assert_eq!(kinds, ["prepare", "sweep", "scale_out", "baseline", "baseline"]);
            let names: Vec<String> = f.stages.iter().flat_map(|s| s.names()).collect();
            assert!(names.contains(&"up-exact".to_string()) && names.contains(&"up-aki-pro".to_string()));
            // The comparisons are fair: initialisations and baselines each at their best rate.
            // (The quick demo sweeps only the dense baseline, to stay a test-sized run.)
            for stage in &f.stages[1..] {
                let swept = matches!(stage, StageSpec::Sweep(_) | StageSpec::Baseline(_));
                let points = if !quick || stage.names().contains(&"up-scratch".to_string()) { 3 } else { 1 };
                assert_eq!(stage.lr_sweep().map(|v| v.len()), swept.then_some(points), "{}", stage.kind());
            }
            let plan = crate::plan::plan(&f).unwrap();
            assert!(plan.iter().any(|s| s.name == "up-scratch-lr1e-3"  || s.name == "up-scratch-lr1e-3-s0"));
        }
    }
}
