//! Weight identities of spec §2.8 on random tiny tensors, through the plan's per-tensor rules
//! (the executor's arithmetic, in memory).

use std::collections::HashMap;
use std::path::Path;

use escale_formats::naming::{expected_params, hf_name};
use escale_formats::ModelConfig;
use escale_grow::scale_up::{apply_rule, AkiConsumerSource, Fanout, Method, Preset, ScaleUpOptions, ScaleUpPlan, Target, TargetDims};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

fn source() -> ModelConfig {
    let v = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 6,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2,
        "attention_bias": true, "mlp_bias": true});
    ModelConfig::from_json(v, Path::new("config.json")).unwrap()
}

fn plan(o: ScaleUpOptions) -> ScaleUpPlan {
    let t = TargetDims { hidden_size: Some(12), intermediate_size: Some(9), num_attention_heads: Some(6), num_hidden_layers: Some(3) };
    ScaleUpPlan::new(&source(), &Target::Dims(t), &o).unwrap()
}

/// Random source tensors by name, with their column counts.
struct Store(HashMap<String, (Vec<f32>, usize)>);

impl Store {
    fn new(cfg: &ModelConfig) -> Store {
        let mut rng = StdRng::seed_from_u64(3);
        let mut m = HashMap::new();
        for (p, shape) in expected_params(cfg) {
            let n: usize = shape.iter().product();
            let v = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
            m.insert(hf_name(cfg.model_type, p), (v, *shape.last().unwrap()));
        }
        Store(m)
    }

    fn src(&self, name: &str) -> &Vec<f32> {
        &self.0[name].0
    }

    /// Output tensor `name` of the plan, computed from these sources.
    fn out(&self, plan: &ScaleUpPlan, name: &str) -> Vec<f32> {
        let t = plan.tensors.iter().find(|t| t.name == name).unwrap();
        let rule = plan.rule_for(t);
        let srcs: Vec<&[f32]> = rule.sources.iter().map(|s| self.0[s].0.as_slice()).collect();
        let cols: Vec<usize> = rule.sources.iter().map(|s| self.0[s].1).collect();
        apply_rule(&rule, &srcs, &cols)
    }
}

fn fpi(preset: Preset) -> ScaleUpOptions {
    ScaleUpOptions { method: Method::Fpi, preset, ..Default::default() }
}

fn close(a: f32, b: f32, what: &str) {
    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

const K: &str = "model.layers.1.self_attn.k_proj.weight";
const DOWN: &str = "model.layers.1.mlp.down_proj.weight";
const GATE: &str = "model.layers.1.mlp.gate_proj.weight";
const Q: &str = "model.layers.1.self_attn.q_proj.weight";

/// Σ_{j∈g⁻¹(i)} R'[:,j]·(γ'_j/γ_i)·a_j = κ·R[:,i] for a reader R (k_proj, 4 rows x 8 columns).
fn check_reader_readback(p: &ScaleUpPlan, s: &Store) {
    let kp = s.out(p, K);
    let k = s.src(K);
    let (d, dd, rows) = (8, 12, 4);
    let kappa = p.scales.eps_scale.sqrt() as f32;
    for r in 0..rows {
        for i in 0..d {
            let sum: f32 = (0..dd).filter(|&j| p.hidden.map[j] == i).map(|j| kp[r * dd + j] * p.scales.norm_scale[j] * p.scales.a[j]).sum();
            close(sum, kappa * k[r * d + i], &format!("{:?} row {r} channel {i}", p.options.preset));
        }
    }
}

#[test]
fn reader_readback_condition_holds_for_every_preset() {
    for preset in [Preset::Fpi, Preset::FpiScaled, Preset::ZeroPad] {
        let p = plan(fpi(preset));
        check_reader_readback(&p, &Store::new(&p.source));
    }
}

#[test]
fn down_columns_of_copies_sum_to_the_scaled_original() {
    let p = plan(fpi(Preset::FpiScaled));
    let s = Store::new(&p.source);
    let (dn, dnp) = (s.src(DOWN), s.out(&p, DOWN));
    let (i_src, i_dst) = (6, 9);
    for j in 0..12 {
        for q in 0..i_src {
            let sum: f32 = (0..i_dst).filter(|&m| p.ffn.map[m] == q).map(|m| dnp[j * i_dst + m]).sum();
            close(sum, p.scales.a[j] * dn[p.hidden.map[j] * i_src + q], &format!("row {j} neuron {q}"));
        }
    }
}

#[test]
fn copied_rows_are_bit_equal_under_fpi() {
    let p = plan(fpi(Preset::Fpi));
    let s = Store::new(&p.source);
    let (g, gp) = (s.src(GATE), s.out(&p, GATE));
    for m in 0..9 {
        let src_row = p.ffn.map[m];
        for j in 0..12 {
            // FPI reader columns are divided by powers of two: still bit-exact copies times b_j.
            assert_eq!(gp[m * 12 + j], g[src_row * 8 + p.hidden.map[j]] * p.scales.b[j], "gate row {m} col {j}");
        }
    }
    let (q, qp) = (s.src(Q), s.out(&p, Q));
    let h = 2;
    for (t, &src) in p.heads.map.iter().enumerate() {
        assert_eq!(t / 3, src / 2, "head {t} must stay in its KV group");
        for i in 0..h {
            for j in 0..12 {
                assert_eq!(qp[(t * h + i) * 12 + j], q[(src * h + i) * 8 + p.hidden.map[j]] * p.scales.b[j]);
            }
        }
    }
}

#[test]
fn lemon_breaks_symmetry_but_keeps_the_sums() {
    let p = plan(ScaleUpOptions { fanout: Fanout::Lemon { scale: 0.1 }, ..fpi(Preset::Fpi) });
    let s = Store::new(&p.source);
    check_reader_readback(&p, &s);
    let dnp = s.out(&p, DOWN);
    let equal = Store::out(&s, &plan(fpi(Preset::Fpi)), DOWN);
    assert_ne!(dnp, equal, "LEMON must change the copies");
    // Column 0 and its copy 6 differ, but they add up to the equal split's sum.
    for j in 0..12 {
        assert_ne!(dnp[j * 9], dnp[j * 9 + 6]);
        close(dnp[j * 9] + dnp[j * 9 + 6], equal[j * 9] + equal[j * 9 + 6], "lemon down sum");
    }
    // Deterministic for a given seed.
    assert_eq!(dnp, s.out(&p, DOWN));
}

#[test]
fn aki_fills_new_units_from_the_layer_above_and_falls_back_to_fpi_on_top() {
    let aki = plan(ScaleUpOptions { method: Method::Aki, ..fpi(Preset::Fpi) });
    let fp = plan(fpi(Preset::Fpi));
    let s = Store::new(&aki.source);
    // Layer 1: old rows are FPI, new rows (m >= 6) are layer 2's expanded rows.
    let (ga, gf) = (s.out(&aki, GATE), s.out(&fp, GATE));
    assert_eq!(&ga[..6 * 12], &gf[..6 * 12], "old neurons are the FPI result");
    let upper = s.src("model.layers.2.mlp.gate_proj.weight");
    for m in 6..9 {
        for j in 0..12 {
            assert_eq!(ga[m * 12 + j], upper[aki.ffn.map[m] * 8 + aki.hidden.map[j]] * aki.scales.b[j]);
        }
    }
    // Down: the new column comes from layer 2 (consumer source `upper`), both divided by cI.
    let (da, up_dn) = (s.out(&aki, DOWN), s.src("model.layers.2.mlp.down_proj.weight"));
    let own = s.src(DOWN);
    for j in 0..12 {
        let gj = aki.hidden.map[j];
        assert_eq!(da[j * 9 + 6], up_dn[gj * 6] / 2.0);
        assert_eq!(da[j * 9], own[gj * 6] / 2.0);
    }
    // Consumer source `self`: the new column is this layer's own.
    let selfc = plan(ScaleUpOptions { method: Method::Aki, aki_consumer_source: AkiConsumerSource::SelfLayer, ..fpi(Preset::Fpi) });
    assert_eq!(s.out(&selfc, DOWN), s.out(&fp, DOWN));
    // New q heads (slot 2 of each group) come from layer 2.
    let (qa, qf) = (s.out(&aki, Q), s.out(&fp, Q));
    let row = |t: usize| (t * 2) * 12..(t * 2 + 2) * 12;
    assert_eq!(&qa[row(0)], &qf[row(0)]);
    assert_ne!(&qa[row(2)], &qf[row(2)], "new head 2 reads layer 2");
    // The top layer has no layer above: plain FPI.
    let top = "model.layers.2.mlp.gate_proj.weight";
    assert_eq!(s.out(&aki, top), s.out(&fp, top));
}
