//! Per-tensor rules (spec §2.2, §2.5, §2.6): every output tensor is a *scaled gather* of one or
//! two source tensors, described row by row and column by column.
//!
//! Output element `(r, c)` = `rows[r].scale · cols[c].scale · S[r, c]`, where `S` is source tensor
//! `cols[c].tensor` (if set) or `rows[r].tensor`, at row `rows[r].src_row` and column
//! `cols[c].src_col`. Tensor 0 is the widened layer itself, tensor 1 the layer above (AKI).
//! Vectors (norms, biases) are one-row matrices. This single shape covers FPI, every preset,
//! AKI's upper-layer rows and columns, and is what lets the executor stream row by row.

use escale_formats::naming::{hf_name, LayerParam, MlpPart, Param};
use escale_util::hash::fnv1a;

use super::options::{sub_seed, AkiConsumerSource, AkiScope, Fanout};
use super::plan::{OutputSource, OutputTensor, ScaleUpPlan};

/// Where an output row comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowSel {
    pub src_row: usize,
    /// Index into [`TensorRule::sources`].
    pub tensor: u8,
    pub scale: f32,
}

/// Where an output column comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColSel {
    pub src_col: usize,
    /// Overrides the row's source tensor (AKI: new heads / neurons read the layer above).
    pub tensor: Option<u8>,
    pub scale: f32,
    /// LEMON: columns with the same group get zero-mean noise across the group (per row).
    pub noise_group: Option<u32>,
}

/// LEMON noise of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Noise {
    pub std: f32,
    pub seed: u64,
}

/// How to compute one output tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRule {
    /// Source tensor names: `[this layer]` or `[this layer, layer above]`.
    pub sources: Vec<String>,
    pub rows: Vec<RowSel>,
    pub cols: Vec<ColSel>,
    pub noise: Option<Noise>,
    /// The whole tensor is zero (o/down of a zero-initialised depth copy).
    pub zero: bool,
}

impl TensorRule {
    /// Distinct column-override tensors (the rows' own tensors are read anyway).
    pub fn override_tensors(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self.cols.iter().filter_map(|c| c.tensor).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Context shared by the rule builders of one source layer.
struct Ctx<'a> {
    plan: &'a ScaleUpPlan,
    /// AKI applies here: the method is AKI and the layer has one above it in the source stack.
    upper: bool,
    lemon: bool,
}

impl ScaleUpPlan {
    /// The rule for one output tensor of this plan.
    pub fn rule_for(&self, t: &OutputTensor) -> TensorRule {
        let ty = self.source.model_type;
        let lemon = matches!(self.options.fanout, Fanout::Lemon { .. });
        let noise_for = |src_name: &str| match self.options.fanout {
            Fanout::Lemon { scale } => Some(Noise { std: scale, seed: sub_seed(sub_seed(self.options.seed, 4), fnv1a(src_name.as_bytes())) }),
            Fanout::Equal => None,
        };
        match &t.source {
            OutputSource::Embed => {
                let name = hf_name(ty, Param::Embed);
                let rows = identity_rows(self.source.vocab_size);
                let cols = self.hidden_cols(&self.scales.a, false);
                TensorRule { sources: vec![name], rows, cols, noise: None, zero: false }
            }
            OutputSource::FinalNorm => self.vector_rule(hf_name(ty, Param::FinalNorm), &self.scales.final_norm_scale),
            OutputSource::LmHead => {
                let name = hf_name(ty, Param::LmHead);
                let rows = identity_rows(self.source.vocab_size);
                let cols = self.hidden_cols(&self.scales.b, lemon);
                let noise = noise_for(&name);
                TensorRule { sources: vec![name], rows, cols, noise, zero: false }
            }
            OutputSource::Layer { src_layer, param, zeroed, .. } => {
                let l = *src_layer;
                let upper = self.options.method.is_aki() && l + 1 < self.source.num_hidden_layers;
                let mut sources = vec![hf_name(ty, Param::Layer(l, *param))];
                if upper {
                    sources.push(hf_name(ty, Param::Layer(l + 1, *param)));
                }
                let ctx = Ctx { plan: self, upper, lemon };
                let mut rule = ctx.layer_rule(*param, sources);
                if rule.cols.iter().any(|c| c.noise_group.is_some()) {
                    rule.noise = noise_for(&rule.sources[0]);
                }
                rule.zero = *zeroed;
                rule
            }
        }
    }

    /// Columns over the hidden dimension: `g(j)` with a per-column scale.
    fn hidden_cols(&self, scale: &[f32], lemon: bool) -> Vec<ColSel> {
        let g = &self.hidden.map;
        (0..g.len())
            .map(|j| ColSel {
                src_col: g[j],
                tensor: None,
                scale: scale[j],
                noise_group: (lemon && self.scales.live[j]).then_some(g[j] as u32),
            })
            .collect()
    }

    /// Factor on the rows of q_proj and k_proj (and their biases): `κ = sqrt(eps_scale)` for a
    /// family with per-head q/k norms, whose `ε` is the residual norms' `rms_norm_eps` and so
    /// becomes `κ²ε` under zero-pad; scaling the head by `κ` makes the head norm see exactly its
    /// source value again (spec §2.4). 1 otherwise.
    pub fn qk_row_scale(&self) -> f32 {
        if self.source.model_type.has_qk_norm() {
            self.scales.eps_scale.sqrt() as f32
        } else {
            1.0
        }
    }

    fn vector_rule(&self, name: String, scale: &[f32]) -> TensorRule {
        TensorRule { sources: vec![name], rows: identity_rows(1), cols: self.hidden_cols(scale, false), noise: None, zero: false }
    }
}

fn identity_rows(n: usize) -> Vec<RowSel> {
    (0..n).map(|r| RowSel { src_row: r, tensor: 0, scale: 1.0 }).collect()
}

fn one_row() -> Vec<RowSel> {
    identity_rows(1)
}

impl Ctx<'_> {
    fn layer_rule(&self, p: LayerParam, sources: Vec<String>) -> TensorRule {
        let plan = self.plan;
        let (rows, cols) = match p {
            LayerParam::InputNorm | LayerParam::PostAttnNorm => (one_row(), plan.hidden_cols(&plan.scales.norm_scale, false)),
            LayerParam::Q => (self.head_rows(), self.reader_cols()),
            LayerParam::QBias => (one_row(), self.head_rows().into_iter().map(row_as_col).collect()),
            LayerParam::K => (self.key_rows(), self.reader_cols()),
            LayerParam::V => (identity_rows(self.kv_width()), self.reader_cols()),
            LayerParam::KBias => (one_row(), self.key_rows().into_iter().map(row_as_col).collect()),
            LayerParam::VBias => (one_row(), identity_cols(self.kv_width())),
            LayerParam::O => (self.writer_rows(), self.head_consumer_cols()),
            LayerParam::OBias | LayerParam::Mlp(_, MlpPart::DownBias) => {
                (one_row(), self.writer_rows().into_iter().map(row_as_col).collect())
            }
            LayerParam::Mlp(_, MlpPart::Gate | MlpPart::Up) => (self.ffn_rows(), self.reader_cols()),
            LayerParam::Mlp(_, MlpPart::GateBias | MlpPart::UpBias) => {
                (one_row(), self.ffn_rows().into_iter().map(row_as_col).collect())
            }
            LayerParam::Mlp(_, MlpPart::Down) => (self.writer_rows(), self.ffn_consumer_cols()),
            // qwen3: one `[head_dim]` weight shared by every query (key) head of the layer. Growth moves
            // heads whole and keeps head_dim, so every output head, copy or original, is normalised
            // over the same head_dim vector as its source head: the weight is copied as is (spec §2.4).
            LayerParam::QNorm | LayerParam::KNorm => (one_row(), identity_cols(plan.source.head_dim)),
            LayerParam::Router | LayerParam::SharedExpertGate => {
                unreachable!("MoE sources are rejected when the plan is made")
            }
        };
        TensorRule { sources, rows, cols, noise: None, zero: false }
    }

    fn kv_width(&self) -> usize {
        self.plan.source.num_key_value_heads * self.plan.source.head_dim
    }

    fn upper_if(&self, new_unit: bool) -> u8 {
        u8::from(self.upper && new_unit)
    }

    /// Readers of the residual stream: column `j` is `b_j·R[:, g(j)]`.
    fn reader_cols(&self) -> Vec<ColSel> {
        self.plan.hidden_cols(&self.plan.scales.b, self.lemon)
    }

    /// Writers of the residual stream: row `j` is `a_j·W[g(j), :]`; with AKI scope `all` the new
    /// rows come from the layer above.
    fn writer_rows(&self) -> Vec<RowSel> {
        let (g, a) = (&self.plan.hidden.map, &self.plan.scales.a);
        let all = self.plan.options.aki_scope == AkiScope::All;
        let d = self.plan.source.hidden_size;
        (0..g.len()).map(|j| RowSel { src_row: g[j], tensor: self.upper_if(all && j >= d), scale: a[j] }).collect()
    }

    /// q_proj rows: dimension `i` of target head `t` is dimension `i` of source head `σ(t)`,
    /// times the q/k-norm factor.
    fn head_rows(&self) -> Vec<RowSel> {
        let (h, sigma) = (self.plan.source.head_dim, &self.plan.heads.map);
        let (rep, rep_new) = self.reps();
        let scale = self.plan.qk_row_scale();
        let mut rows = Vec::with_capacity(sigma.len() * h);
        for (t, &s) in sigma.iter().enumerate() {
            let tensor = self.upper_if(t % rep_new >= rep);
            rows.extend((0..h).map(|i| RowSel { src_row: s * h + i, tensor, scale }));
        }
        rows
    }

    /// k_proj rows: unchanged, times the q/k-norm factor.
    fn key_rows(&self) -> Vec<RowSel> {
        let scale = self.plan.qk_row_scale();
        (0..self.kv_width()).map(|r| RowSel { src_row: r, tensor: 0, scale }).collect()
    }

    fn reps(&self) -> (usize, usize) {
        let kv = self.plan.source.num_key_value_heads;
        (self.plan.source.num_attention_heads / kv, self.plan.heads.dst_len() / kv)
    }

    fn consumer_upper(&self) -> bool {
        self.plan.options.aki_consumer_source == AkiConsumerSource::Upper
    }

    /// o_proj columns: head `t`'s block is source head `σ(t)`'s block divided by its copy count.
    fn head_consumer_cols(&self) -> Vec<ColSel> {
        let (h, heads) = (self.plan.source.head_dim, &self.plan.heads);
        let (rep, rep_new) = self.reps();
        let mut cols = Vec::with_capacity(heads.dst_len() * h);
        for (t, &s) in heads.map.iter().enumerate() {
            let upper = self.upper && self.consumer_upper() && t % rep_new >= rep;
            for i in 0..h {
                let src_col = s * h + i;
                cols.push(ColSel {
                    src_col,
                    tensor: upper.then_some(1),
                    scale: 1.0 / heads.counts[s] as f32,
                    noise_group: self.lemon.then_some(src_col as u32),
                });
            }
        }
        cols
    }

    /// gate/up rows: neuron `m` is neuron `π(m)` (the same `π` for both, so SwiGLU copies agree).
    fn ffn_rows(&self) -> Vec<RowSel> {
        let (pi, i_src) = (&self.plan.ffn.map, self.plan.source.intermediate_size);
        (0..pi.len()).map(|m| RowSel { src_row: pi[m], tensor: self.upper_if(m >= i_src), scale: 1.0 }).collect()
    }

    /// down_proj columns: neuron `m`'s column is `π(m)`'s divided by its copy count.
    fn ffn_consumer_cols(&self) -> Vec<ColSel> {
        let (ffn, i_src) = (&self.plan.ffn, self.plan.source.intermediate_size);
        let upper = self.upper && self.consumer_upper();
        (0..ffn.dst_len())
            .map(|m| {
                let p = ffn.map[m];
                ColSel {
                    src_col: p,
                    tensor: (upper && m >= i_src).then_some(1),
                    scale: 1.0 / ffn.counts[p] as f32,
                    noise_group: self.lemon.then_some(p as u32),
                }
            })
            .collect()
    }
}

fn identity_cols(n: usize) -> Vec<ColSel> {
    (0..n).map(|c| ColSel { src_col: c, tensor: None, scale: 1.0, noise_group: None }).collect()
}

/// A vector's entries follow the rows of its matrix (bias of q follows q's rows, and so on).
fn row_as_col(r: RowSel) -> ColSel {
    ColSel { src_col: r.src_row, tensor: (r.tensor != 0).then_some(r.tensor), scale: r.scale, noise_group: None }
}
