//! Typed Rust front end of `tests/oracle/oracle.py`.
//!
//! Each call spawns one Python process (about 5 s of torch/transformers import on this machine),
//! passes options as flags and token ids / tensors through files, and reads the one JSON line the
//! script prints plus the safetensors files it writes. Failures panic with the script's stderr:
//! these are test helpers, and a panic with the Python traceback is the most useful report.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tensors::{read_safetensors_f32, write_safetensors_f32, Tensor};
use crate::{shared_dir, target_dir, workspace_root};

/// Version of this wrapper's cache layout; bump to invalidate cached checkpoints.
const CACHE_VERSION: u32 = 1;
/// The stamp `tests/oracle/setup.sh` writes once the virtualenv imports cleanly.
const STAMP: &str = ".escale-oracle-ok-v1";

/// Model families the oracle can create (the ones escale supports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Mixtral,
    Qwen2Moe,
    Qwen3,
    Qwen3Moe,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Mixtral,
        Family::Qwen2Moe,
        Family::Qwen3,
        Family::Qwen3Moe,
    ];

    /// The HF `model_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Moe => "qwen3_moe",
        }
    }

    pub fn is_moe(self) -> bool {
        matches!(self, Family::Mixtral | Family::Qwen2Moe | Family::Qwen3Moe)
    }
}

/// Storage dtype of a created checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    fn flag(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}

/// Options of `oracle.py make-tiny`. `Default` is a small GQA llama (hidden 32, 2 layers,
/// 4 heads / 2 KV heads, vocab 128, untied, f32). Start from a family constructor and override
/// fields: `TinySpec { tied: true, ..TinySpec::new(Family::Qwen2) }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TinySpec {
    pub family: Family,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// `None`: hidden / heads.
    pub head_dim: Option<usize>,
    /// `None`: 128, or 512 with `with_tokenizer`.
    pub vocab: Option<usize>,
    pub max_position: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// e.g. `{"rope_type": "linear", "factor": 2.0}`; merged into `rope_parameters`.
    pub rope_scaling: Option<serde_json::Value>,
    /// MoE: number of experts (required for mixtral, qwen2_moe and qwen3_moe, `None` otherwise).
    pub experts: Option<usize>,
    pub top_k: usize,
    /// qwen2_moe, qwen3_moe: expert FFN size (`None`: `intermediate`).
    pub moe_intermediate: Option<usize>,
    /// qwen2_moe: shared expert FFN size (`None`: `intermediate`).
    pub shared_expert_intermediate: Option<usize>,
    /// qwen2_moe, qwen3_moe: renormalise the top-k routing weights.
    pub norm_topk_prob: bool,
    pub tied: bool,
    /// llama, qwen3, qwen3_moe: bias on q, k, v and o; qwen2_moe: `qkv_bias` (`None` = its default, on). qwen2 always
    /// has q/k/v biases; mistral and mixtral have none (asking for one is an error).
    pub attention_bias: Option<bool>,
    /// llama only.
    pub mlp_bias: bool,
    pub dtype: Dtype,
    /// e.g. "20KB" to force several shards; `None`: one file.
    pub max_shard_size: Option<String>,
    pub seed: u64,
    /// Std of the random matrices and biases (norm weights are 1 + U(-0.5, 0.5)).
    pub std: f64,
    /// Extra config.json fields (JSON object) merged into the config.
    pub extra_config: Option<serde_json::Value>,
    /// Copy stories260K's tokenizer.json and tokenizer_config.json (needs `../shared`; vocab 512).
    pub with_tokenizer: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            family: Family::Llama,
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: None,
            vocab: None,
            max_position: 256,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            experts: None,
            top_k: 2,
            moe_intermediate: None,
            shared_expert_intermediate: None,
            norm_topk_prob: true,
            tied: false,
            attention_bias: None,
            mlp_bias: false,
            dtype: Dtype::F32,
            max_shard_size: None,
            seed: 0,
            std: 0.1,
            extra_config: None,
            with_tokenizer: false,
        }
    }
}

impl TinySpec {
    /// The default shape for `family`; MoE families get 4 experts, top-2 (qwen2_moe: expert FFN 32,
    /// shared expert FFN 48, so the three FFN sizes differ and a mix-up changes shapes; qwen3_moe:
    /// expert FFN 32, no shared expert).
    pub fn new(family: Family) -> TinySpec {
        let mut s = TinySpec { family, ..TinySpec::default() };
        if family.is_moe() {
            s.experts = Some(4);
        }
        if family == Family::Qwen2Moe {
            s.moe_intermediate = Some(32);
            s.shared_expert_intermediate = Some(48);
        }
        if family == Family::Qwen3Moe {
            s.moe_intermediate = Some(32);
        }
        s
    }

    /// The `make-tiny` flags (without `--out`).
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--family".into(),
            self.family.as_str().into(),
            format!("--hidden={}", self.hidden),
            format!("--intermediate={}", self.intermediate),
            format!("--layers={}", self.layers),
            format!("--heads={}", self.heads),
            format!("--kv-heads={}", self.kv_heads),
            format!("--max-position={}", self.max_position),
            format!("--rms-norm-eps={:e}", self.rms_norm_eps),
            format!("--rope-theta={:?}", self.rope_theta),
            format!("--top-k={}", self.top_k),
            format!("--dtype={}", self.dtype.flag()),
            format!("--seed={}", self.seed),
            format!("--std={:?}", self.std),
            if self.tied { "--tied" } else { "--no-tied" }.into(),
            if self.norm_topk_prob { "--norm-topk-prob" } else { "--no-norm-topk-prob" }.into(),
        ];
        let opt = |a: &mut Vec<String>, flag: &str, v: Option<usize>| {
            if let Some(v) = v {
                a.push(format!("{flag}={v}"));
            }
        };
        opt(&mut a, "--head-dim", self.head_dim);
        opt(&mut a, "--vocab", self.vocab);
        opt(&mut a, "--experts", self.experts);
        opt(&mut a, "--moe-intermediate", self.moe_intermediate);
        opt(&mut a, "--shared-expert-intermediate", self.shared_expert_intermediate);
        match self.attention_bias {
            Some(true) => a.push("--attention-bias".into()),
            Some(false) => a.push("--no-attention-bias".into()),
            None => {}
        }
        if self.mlp_bias {
            a.push("--mlp-bias".into());
        }
        if let Some(s) = &self.max_shard_size {
            a.push(format!("--max-shard-size={s}"));
        }
        if let Some(r) = &self.rope_scaling {
            a.push(format!("--rope-scaling={r}"));
        }
        if let Some(e) = &self.extra_config {
            a.push(format!("--extra-config={e}"));
        }
        if self.with_tokenizer {
            a.push("--with-tokenizer".into());
        }
        a
    }
}

/// What `make-tiny` reports about the folder it wrote.
#[derive(Clone, Debug, Deserialize)]
pub struct TinyInfo {
    pub path: PathBuf,
    pub model_type: String,
    pub num_parameters: u64,
    pub sharded: bool,
    pub files: Vec<String>,
}

/// Logits of one sequence.
#[derive(Clone, Debug)]
pub struct SeqLogits {
    /// Row-major `[len, vocab]`.
    pub logits: Vec<f32>,
    pub len: usize,
    pub vocab: usize,
    /// Mean next-token cross-entropy (HF's causal LM loss); `None` for a one-token sequence.
    pub loss: Option<f64>,
    /// MoE with router logits requested: one `[len, experts]` tensor per layer.
    pub router_logits: Vec<Tensor>,
}

/// Result of [`Oracle::logits`]: one entry per input sequence, in order.
#[derive(Clone, Debug)]
pub struct OracleLogits {
    pub seqs: Vec<SeqLogits>,
}

impl OracleLogits {
    /// All sequences as one `[batch, len, vocab]` array. Panics when the lengths differ.
    pub fn flat(&self) -> (Vec<f32>, Vec<usize>) {
        let first = self.seqs.first().expect("no sequences");
        assert!(
            self.seqs.iter().all(|s| s.len == first.len),
            "OracleLogits::flat needs equal sequence lengths, got {:?}",
            self.seqs.iter().map(|s| s.len).collect::<Vec<_>>()
        );
        let data = self.seqs.iter().flat_map(|s| s.logits.iter().copied()).collect();
        (data, vec![self.seqs.len(), first.len, first.vocab])
    }

    /// Per-sequence losses (`None` for one-token sequences).
    pub fn losses(&self) -> Vec<Option<f64>> {
        self.seqs.iter().map(|s| s.loss).collect()
    }
}

/// AdamW hyper-parameters and loss options of `oracle.py adamw-step`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWSpec {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Applied to >= 2-D parameters only (norm weights and biases are not decayed).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this before each step.
    pub max_grad_norm: Option<f64>,
    /// Steps on the same batch (the gradients returned are the first step's).
    pub steps: usize,
    /// MoE: coefficient of the HF load-balancing loss added to the LM loss.
    pub aux_coef: f64,
    /// MoE: coefficient of the router z-loss (mean over layers) added to the LM loss.
    pub z_coef: f64,
}

impl Default for AdamWSpec {
    fn default() -> Self {
        AdamWSpec {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: None,
            steps: 1,
            aux_coef: 0.0,
            z_coef: 0.0,
        }
    }
}

/// Loss terms of one optimizer step, before the update.
#[derive(Clone, Debug, Deserialize)]
pub struct AdamWStepRecord {
    pub step: usize,
    /// Total loss that was differentiated.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lm_loss: f64,
    pub aux_loss: Option<f64>,
    pub z_loss: Option<f64>,
}

/// Result of [`Oracle::adamw_step`]. Tensor names are the checkpoint's (HF hub layout).
#[derive(Clone, Debug)]
pub struct AdamWResult {
    pub steps: Vec<AdamWStepRecord>,
    /// Loss on the same batch after the last step.
    pub loss_after: f64,
    /// Gradients of the first step.
    pub grads: BTreeMap<String, Tensor>,
    /// Parameters after the last step (f32).
    pub params: BTreeMap<String, Tensor>,
}

/// One layer's routing statistics and losses from [`Oracle::moe_losses`].
#[derive(Clone, Debug, Deserialize)]
pub struct MoeLayerLosses {
    pub tokens_per_expert: Vec<f64>,
    pub mean_prob: Vec<f64>,
    /// `E * sum_e n_e / (k T) * P_e`: 1 when balanced.
    pub megatron_aux: f64,
    /// `mean_t logsumexp(z_t)^2`.
    pub z_loss: f64,
}

/// Result of [`Oracle::moe_losses`].
#[derive(Clone, Debug, Deserialize)]
pub struct MoeLosses {
    pub num_experts: usize,
    pub k: usize,
    /// transformers' `load_balancing_loss_func` over all layers at once: k when balanced.
    pub hf_aux: f64,
    pub megatron_aux_mean: f64,
    pub z_loss_mean: f64,
    pub layers: Vec<MoeLayerLosses>,
}

/// Handle on the installed oracle (a Python interpreter with torch + transformers, and the script).
#[derive(Clone, Debug)]
pub struct Oracle {
    python: PathBuf,
    script: PathBuf,
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

impl Oracle {
    /// Finds the oracle: `$ESCALE_ORACLE_PYTHON`, else the virtualenv of `tests/oracle/setup.sh`
    /// (`$ESCALE_ORACLE_VENV` or `~/.cache/escale/oracle-venv`) once its stamp file exists.
    ///
    /// Missing: panics under `CI=true` (CI must not pass by skipping the comparisons), else prints
    /// why the test is skipped and returns `None`.
    pub fn get() -> Option<Oracle> {
        let script = workspace_root().join("tests/oracle/oracle.py");
        match Self::locate_python() {
            Ok(python) => Some(Oracle { python, script }),
            Err(why) => {
                if ci() {
                    panic!(
                        "the transformers oracle is required in CI (CI=true) but {why}; \
                         run `bash tests/oracle/setup.sh` first (.ci/run does)"
                    );
                }
                println!("skipping: transformers oracle not installed; run tests/oracle/setup.sh ({why})");
                None
            }
        }
    }

    fn locate_python() -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os("ESCALE_ORACLE_PYTHON").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("ESCALE_ORACLE_PYTHON={} is not a file", p.display()))
            };
        }
        let venv = match std::env::var_os("ESCALE_ORACLE_VENV").filter(|p| !p.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => {
                let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
                PathBuf::from(home).join(".cache/escale/oracle-venv")
            }
        };
        let python = venv.join("bin/python");
        if !venv.join(STAMP).is_file() || !python.is_file() {
            return Err(format!("no complete virtualenv at {} (stamp {STAMP} missing)", venv.display()));
        }
        Ok(python)
    }

    /// The Python interpreter in use.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Runs `oracle.py <subcommand> <args>` and returns its JSON result. Panics with the command
    /// line and the script's stderr on failure.
    pub fn run(&self, subcommand: &str, args: &[OsString]) -> serde_json::Value {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg(subcommand)
            .args(args)
            // Keep the source tree free of __pycache__ and the script deterministic.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONHASHSEED", "0")
            .output()
            .unwrap_or_else(|e| panic!("cannot start the oracle {}: {e}", self.python.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let cmdline = format!("{} {} {subcommand} {:?}", self.python.display(), self.script.display(), args);
        if !out.status.success() {
            panic!("oracle failed ({}): {cmdline}\n--- stderr ---\n{stderr}", out.status);
        }
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_else(|| {
            panic!("oracle printed no result: {cmdline}\n--- stderr ---\n{stderr}")
        });
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("oracle result is not JSON ({e}): {line}\n{cmdline}\n--- stderr ---\n{stderr}")
        })
    }

    /// A scratch folder for one call's input and output files (removed when dropped).
    fn scratch(&self) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("escale-oracle-{}-{}-", std::process::id(), SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed)))
            .tempdir()
            .expect("creating a temporary folder")
    }

    /// Creates the checkpoint described by `spec`, or reuses the one an earlier call (in this or
    /// another test process) made: cached under `target/escale-oracle-cache/<family>-<hash>`,
    /// where the hash covers the spec, the oracle script and the interpreter. Treat the folder as
    /// read-only; copy it to modify it.
    pub fn make_tiny(&self, spec: &TinySpec) -> PathBuf {
        let args = self.tiny_args(spec);
        let script = std::fs::read(&self.script)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.script.display()));
        let mut h = Sha256::new();
        h.update(format!("escale-testkit cache v{CACHE_VERSION}\0").as_bytes());
        h.update(self.python.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        h.update(&script);
        for a in &args {
            h.update(b"\0");
            h.update(a.as_encoded_bytes());
        }
        let hash: String = h.finalize().iter().take(10).map(|b| format!("{b:02x}")).collect();
        let cache = target_dir().join("escale-oracle-cache");
        let final_dir = cache.join(format!("{}-{hash}", spec.family.as_str()));
        if final_dir.join("config.json").is_file() {
            return final_dir;
        }
        std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
        // Build beside the final folder, then rename: a concurrent test process either sees no
        // folder or a complete one. When two processes race, the loser's rename fails because the
        // folder exists; it discards its own copy and uses the winner's (identical: same seed).
        let scratch = tempfile::Builder::new()
            .prefix(&format!(".building-{hash}-"))
            .tempdir_in(&cache)
            .expect("creating a temporary folder in the oracle cache");
        let built = scratch.path().join("model");
        self.make_tiny_at_with(&args, &built);
        match std::fs::rename(&built, &final_dir) {
            Ok(()) => {}
            Err(_) if final_dir.join("config.json").is_file() => {}
            Err(e) => panic!("moving {} to {}: {e}", built.display(), final_dir.display()),
        }
        final_dir
    }

    /// Creates the checkpoint described by `spec` at `out` (which must not exist), without caching.
    pub fn make_tiny_at(&self, spec: &TinySpec, out: &Path) -> TinyInfo {
        self.make_tiny_at_with(&self.tiny_args(spec), out)
    }

    fn tiny_args(&self, spec: &TinySpec) -> Vec<OsString> {
        let mut args: Vec<OsString> = spec.to_args().into_iter().map(OsString::from).collect();
        if spec.with_tokenizer {
            let shared = shared_dir().unwrap_or_else(|| {
                panic!("TinySpec::with_tokenizer needs ../shared (call require_shared!() first)")
            });
            args.push("--tokenizer-from".into());
            args.push(shared.join("testdata/models/stories260K").into_os_string());
        }
        args
    }

    fn make_tiny_at_with(&self, args: &[OsString], out: &Path) -> TinyInfo {
        let mut all = args.to_vec();
        all.push("--out".into());
        all.push(out.as_os_str().to_owned());
        let v = self.run("make-tiny", &all);
        serde_json::from_value(v).expect("make-tiny result fields")
    }

    fn write_ids(dir: &Path, ids: &[Vec<u32>]) -> PathBuf {
        let p = dir.join("ids.json");
        std::fs::write(&p, serde_json::to_vec(ids).expect("ids to JSON")).expect("writing ids.json");
        p
    }

    /// Logits (f32 compute, eager attention, one forward per sequence) and the mean next-token
    /// loss of each sequence, from transformers' `AutoModelForCausalLM`.
    pub fn logits(&self, model_dir: &Path, ids: &[Vec<u32>]) -> OracleLogits {
        self.logits_impl(model_dir, ids, false)
    }

    /// As [`Oracle::logits`], plus each MoE layer's router logits (`[len, experts]`).
    pub fn logits_with_router(&self, model_dir: &Path, ids: &[Vec<u32>]) -> OracleLogits {
        self.logits_impl(model_dir, ids, true)
    }

    fn logits_impl(&self, model_dir: &Path, ids: &[Vec<u32>], router: bool) -> OracleLogits {
        let dir = self.scratch();
        let ids_path = Self::write_ids(dir.path(), ids);
        let out = dir.path().join("logits.safetensors");
        let mut args: Vec<OsString> = vec![
            "--model".into(),
            model_dir.as_os_str().to_owned(),
            "--ids".into(),
            ids_path.into_os_string(),
            "--out".into(),
            out.as_os_str().to_owned(),
        ];
        if router {
            args.push("--router-logits".into());
        }
        #[derive(Deserialize)]
        struct R {
            lengths: Vec<usize>,
            vocab_size: usize,
            losses: Vec<Option<f64>>,
        }
        let r: R = serde_json::from_value(self.run("logits", &args)).expect("logits result fields");
        let mut t = read_safetensors_f32(&out);
        let seqs = r
            .lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let lg = t.remove(&format!("logits.{i}")).unwrap_or_else(|| panic!("logits.{i} missing"));
                assert_eq!(lg.shape, vec![len, r.vocab_size], "logits.{i} shape");
                let mut router_logits = Vec::new();
                while let Some(x) = t.remove(&format!("router_logits.{i}.{}", router_logits.len())) {
                    router_logits.push(x);
                }
                SeqLogits { logits: lg.data, len, vocab: r.vocab_size, loss: r.losses[i], router_logits }
            })
            .collect();
        OracleLogits { seqs }
    }

    /// Loss, gradients and parameters after `spec.steps` torch.optim.AdamW steps on one batch
    /// (`ids`: sequences of equal length), weight decay on >= 2-D parameters only.
    pub fn adamw_step(&self, model_dir: &Path, ids: &[Vec<u32>], spec: &AdamWSpec) -> AdamWResult {
        let dir = self.scratch();
        let ids_path = Self::write_ids(dir.path(), ids);
        let grads = dir.path().join("grads.safetensors");
        let params = dir.path().join("params.safetensors");
        let mut args: Vec<OsString> = vec![
            "--model".into(),
            model_dir.as_os_str().to_owned(),
            "--ids".into(),
            ids_path.into_os_string(),
            "--grads-out".into(),
            grads.as_os_str().to_owned(),
            "--params-out".into(),
            params.as_os_str().to_owned(),
        ];
        for s in [
            format!("--lr={:?}", spec.lr),
            format!("--beta1={:?}", spec.beta1),
            format!("--beta2={:?}", spec.beta2),
            format!("--eps={:?}", spec.eps),
            format!("--weight-decay={:?}", spec.weight_decay),
            format!("--steps={}", spec.steps),
            format!("--aux-coef={:?}", spec.aux_coef),
            format!("--z-coef={:?}", spec.z_coef),
        ] {
            args.push(s.into());
        }
        if let Some(c) = spec.max_grad_norm {
            args.push(format!("--max-grad-norm={c:?}").into());
        }
        #[derive(Deserialize)]
        struct R {
            steps: Vec<AdamWStepRecord>,
            loss_after: f64,
        }
        let r: R = serde_json::from_value(self.run("adamw-step", &args)).expect("adamw-step result fields");
        AdamWResult {
            steps: r.steps,
            loss_after: r.loss_after,
            grads: read_safetensors_f32(&grads),
            params: read_safetensors_f32(&params),
        }
    }

    /// HF load-balancing loss (transformers' own `load_balancing_loss_func`), Megatron per-layer aux
    /// loss and router z-loss of the given router logits (one `[tokens, experts]` tensor per layer).
    pub fn moe_losses(&self, router_logits: &[Tensor], k: usize) -> MoeLosses {
        assert!(!router_logits.is_empty(), "moe_losses: no layers");
        let dir = self.scratch();
        let path = dir.path().join("router_logits.safetensors");
        let map: BTreeMap<String, Tensor> =
            router_logits.iter().enumerate().map(|(l, t)| (format!("layer.{l}"), t.clone())).collect();
        write_safetensors_f32(&path, &map);
        let args: Vec<OsString> = vec!["--router-logits".into(), path.into_os_string(), format!("--k={k}").into()];
        serde_json::from_value(self.run("moe-losses", &args)).expect("moe-losses result fields")
    }
}
