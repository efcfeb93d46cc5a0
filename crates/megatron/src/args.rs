//! What Megatron-Core needs to know about a model, derived from its `config.json`: the
//! `TransformerConfig` / `GPTModel` arguments the bridge builds the model from
//! (`megatron_model.json`), and the same facts as Megatron-LM flags (`megatron_args.sh`) and a
//! FlagScale experiment fragment (`flagscale.yaml`). Configs Megatron-Core cannot express are
//! refused here, with the field and the reason.

use escale_formats::{DType, ModelConfig, ModelType};
use serde_json::{json, Map, Value};

use crate::{MegatronError, Result, PROTOCOL};

/// escale's MoE loss coefficients (spec §5), used when the config names none.
pub const AUX_LOSS_COEFF: f64 = 0.001;
pub const Z_LOSS_COEFF: f64 = 0.01;

fn refuse(cfg: &ModelConfig, field: &str, reason: impl Into<String>) -> MegatronError {
    MegatronError::Unsupported { path: cfg.source().to_path_buf(), field: field.into(), reason: reason.into() }
}

/// RoPE as GPTModel takes it: nothing, linear interpolation (`seq_len_interpolation_factor`), or
/// Llama 3.1 scaling with megatron-core's fixed constants (`rope_scaling`, `rope_scaling_factor`).
#[derive(Clone, Debug, PartialEq)]
pub enum Rope {
    Plain,
    Linear(f64),
    Llama3(f64),
}

fn rope(cfg: &ModelConfig) -> Result<Rope> {
    let Some(scaling) = &cfg.rope_scaling else { return Ok(Rope::Plain) };
    let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| scaling.get(k).and_then(Value::as_f64);
    let factor = num("factor");
    match (kind, factor) {
        ("default", _) => Ok(Rope::Plain),
        ("linear", Some(f)) => Ok(Rope::Linear(f)),
        // megatron-core 0.16/0.19 hard-code low 1, high 4, original context 8192 (Llama 3.1's).
        ("llama3", Some(f))
            if num("low_freq_factor") == Some(1.0)
                && num("high_freq_factor") == Some(4.0)
                && num("original_max_position_embeddings") == Some(8192.0) =>
        {
            Ok(Rope::Llama3(f))
        }
        ("llama3", _) => Err(refuse(
            cfg,
            "rope_scaling",
            "megatron-core's Llama 3 RoPE scaling has fixed low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192; this config differs",
        )),
        (other, _) => Err(refuse(cfg, "rope_scaling", format!("RoPE type `{other}` has no equivalent in megatron-core's GPTModel (supported: default, linear, llama3)"))),
    }
}

/// Refuses what a Megatron-Core GPTModel with the local layer spec cannot carry.
pub fn check_supported(cfg: &ModelConfig) -> Result<()> {
    if cfg.hidden_act != "silu" {
        return Err(refuse(cfg, "hidden_act", format!("`{}`: escale maps SwiGLU (silu) MLPs only", cfg.hidden_act)));
    }
    if cfg.o_bias || cfg.mlp_bias {
        return Err(refuse(
            cfg,
            if cfg.o_bias { "attention_bias" } else { "mlp_bias" },
            "megatron-core has one switch (add_bias_linear) for the o_proj, fc1 and fc2 biases together; escale does not export biases on o_proj or the MLP",
        ));
    }
    let uses_window = match cfg.model_type {
        ModelType::Qwen2 | ModelType::Qwen2Moe | ModelType::Qwen3 | ModelType::Qwen3Moe => cfg.raw().get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false),
        _ => true,
    };
    if let Some(w) = cfg.sliding_window.filter(|&w| uses_window && w > 0 && w < cfg.max_position_embeddings) {
        return Err(refuse(
            cfg,
            "sliding_window",
            format!("attention window {w} < max_position_embeddings {}: megatron-core's local attention has no sliding window", cfg.max_position_embeddings),
        ));
    }
    if let Some(m) = &cfg.moe {
        if m.expert_intermediate_size == 0 {
            return Err(refuse(cfg, "moe_intermediate_size", "experts of size 0"));
        }
    }
    rope(cfg)?;
    Ok(())
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
    }
}

/// The router convention: mcore's default (top-k of the logits, softmax over the k) equals
/// softmax -> top-k -> renormalise (Mixtral, qwen2_moe with `norm_topk_prob`); without the
/// renormalisation the weights are the softmax over all experts, i.e. `moe_router_pre_softmax`.
pub fn router_pre_softmax(cfg: &ModelConfig) -> bool {
    cfg.moe.as_ref().is_some_and(|m| !m.norm_topk_prob)
}

/// Which decoder layers are MoE (1) or dense (0), Megatron's `moe_layer_freq` as a list.
pub fn moe_layer_pattern(cfg: &ModelConfig) -> Vec<u8> {
    (0..cfg.num_hidden_layers).map(|l| u8::from(cfg.is_moe_layer(l))).collect()
}

/// `megatron_model.json`: the TransformerConfig and GPTModel keyword arguments the bridge builds
/// the model from (field names are megatron-core's own).
pub fn model_description(cfg: &ModelConfig, dtype: DType) -> Result<Value> {
    check_supported(cfg)?;
    let mut tc = Map::new();
    let mut put = |k: &str, v: Value| {
        tc.insert(k.to_string(), v);
    };
    put("num_layers", cfg.num_hidden_layers.into());
    put("hidden_size", cfg.hidden_size.into());
    put("ffn_hidden_size", cfg.intermediate_size.into());
    put("num_attention_heads", cfg.num_attention_heads.into());
    put("num_query_groups", cfg.num_key_value_heads.into());
    put("kv_channels", cfg.head_dim.into());
    put("layernorm_epsilon", cfg.rms_norm_eps.into());
    put("normalization", "RMSNorm".into());
    put("activation", "silu".into());
    put("gated_linear_unit", true.into());
    put("add_bias_linear", false.into());
    put("add_qkv_bias", cfg.qkv_bias.into());
    put("qk_layernorm", cfg.model_type.has_qk_norm().into());
    put("hidden_dropout", 0.0.into());
    put("attention_dropout", 0.0.into());
    // Fused kernels are CUDA / TransformerEngine only; the unfused paths are the same maths.
    for off in ["bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion", "apply_rope_fusion", "persist_layer_norm", "gradient_accumulation_fusion"] {
        put(off, false.into());
    }
    if let Some(m) = &cfg.moe {
        put("num_moe_experts", m.num_experts.into());
        put("moe_router_topk", m.num_experts_per_tok.into());
        put("moe_ffn_hidden_size", m.expert_intermediate_size.into());
        put("moe_layer_freq", json!(moe_layer_pattern(cfg)));
        put("moe_router_pre_softmax", router_pre_softmax(cfg).into());
        put("moe_router_load_balancing_type", "aux_loss".into());
        put("moe_aux_loss_coeff", if m.router_aux_loss_coef > 0.0 { m.router_aux_loss_coef } else { AUX_LOSS_COEFF }.into());
        put("moe_z_loss_coeff", Z_LOSS_COEFF.into());
        // The alltoall dispatcher creates CUDA streams; allgather is the same routing on CPU.
        put("moe_token_dispatcher_type", "allgather".into());
        put("moe_grouped_gemm", false.into());
        if m.shared_expert_intermediate_size > 0 {
            put("moe_shared_expert_intermediate_size", m.shared_expert_intermediate_size.into());
            put("moe_shared_expert_gate", true.into());
        }
    }
    let mut gpt = json!({
        "vocab_size": cfg.vocab_size,
        "max_sequence_length": cfg.max_position_embeddings,
        "share_embeddings_and_output_weights": cfg.tie_word_embeddings,
        "position_embedding_type": "rope",
        "rotary_base": cfg.rope_theta,
    });
    match rope(cfg)? {
        Rope::Plain => {}
        Rope::Linear(f) => gpt["seq_len_interpolation_factor"] = f.into(),
        Rope::Llama3(f) => {
            gpt["rope_scaling"] = true.into();
            gpt["rope_scaling_factor"] = f.into();
        }
    }
    Ok(json!({
        "escale_megatron_protocol": PROTOCOL,
        "model_type": cfg.model_type.as_str(),
        "params_dtype": dtype_name(dtype),
        "transformer_config": tc,
        "gpt_model": gpt,
    }))
}

/// One Megatron-LM argument: `--name value` or a bare `--name`, grouped as FlagScale groups them.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// FlagScale section: `model`, `system.checkpoint`, `data.tokenizer`.
    pub section: &'static str,
    /// With underscores (FlagScale's spelling); Megatron-LM's flag has dashes.
    pub key: &'static str,
    /// `None` for a bare flag (`true` in YAML).
    pub value: Option<String>,
}

fn arg(section: &'static str, key: &'static str, value: impl ToString) -> Arg {
    Arg { section, key, value: Some(value.to_string()) }
}

fn flag(section: &'static str, key: &'static str) -> Arg {
    Arg { section, key, value: None }
}

/// Every Megatron-LM model, MoE, tokenizer and checkpoint argument this config needs to load the
/// exported checkpoint at `ckpt_dir` (tokenizer from `tokenizer_dir`).
pub fn megatron_args(cfg: &ModelConfig, ckpt_dir: &str, tokenizer_dir: &str) -> Result<Vec<Arg>> {
    check_supported(cfg)?;
    let m = "model";
    let mut a = vec![
        arg(m, "num_layers", cfg.num_hidden_layers),
        arg(m, "hidden_size", cfg.hidden_size),
        arg(m, "ffn_hidden_size", cfg.intermediate_size),
        arg(m, "num_attention_heads", cfg.num_attention_heads),
        arg(m, "kv_channels", cfg.head_dim),
    ];
    if cfg.num_key_value_heads != cfg.num_attention_heads {
        a.push(flag(m, "group_query_attention"));
        a.push(arg(m, "num_query_groups", cfg.num_key_value_heads));
    }
    a.extend([
        arg(m, "max_position_embeddings", cfg.max_position_embeddings),
        arg(m, "position_embedding_type", "rope"),
        arg(m, "rotary_base", cfg.rope_theta),
        arg(m, "normalization", "RMSNorm"),
        arg(m, "norm_epsilon", cfg.rms_norm_eps),
        flag(m, "swiglu"),
        flag(m, "disable_bias_linear"),
        // The embedding has exactly vocab_size rows: Megatron-LM must not pad it further.
        arg(m, "make_vocab_size_divisible_by", 1),
        arg(m, "attention_dropout", 0.0),
        arg(m, "hidden_dropout", 0.0),
    ]);
    if cfg.qkv_bias {
        a.push(flag(m, "add_qkv_bias"));
    }
    if cfg.model_type.has_qk_norm() {
        a.push(flag(m, "qk_layernorm"));
    }
    if !cfg.tie_word_embeddings {
        a.push(flag(m, "untie_embeddings_and_output_weights"));
    }
    match rope(cfg)? {
        Rope::Plain => {}
        Rope::Linear(f) => a.push(arg(m, "rotary_seq_len_interpolation_factor", f)),
        Rope::Llama3(f) => {
            a.push(flag(m, "use_rope_scaling"));
            a.push(arg(m, "rope_scaling_factor", f));
        }
    }
    if let Some(moe) = &cfg.moe {
        let pattern: Vec<String> = moe_layer_pattern(cfg).iter().map(u8::to_string).collect();
        a.extend([
            arg(m, "num_experts", moe.num_experts),
            arg(m, "moe_router_topk", moe.num_experts_per_tok),
            arg(m, "moe_ffn_hidden_size", moe.expert_intermediate_size),
            arg(m, "moe_layer_freq", format!("[{}]", pattern.join(","))),
            arg(m, "moe_router_load_balancing_type", "aux_loss"),
            arg(m, "moe_aux_loss_coeff", if moe.router_aux_loss_coef > 0.0 { moe.router_aux_loss_coef } else { AUX_LOSS_COEFF }),
            arg(m, "moe_z_loss_coeff", Z_LOSS_COEFF),
            arg(m, "moe_token_dispatcher_type", "alltoall"),
            flag(m, "moe_grouped_gemm"),
        ]);
        if router_pre_softmax(cfg) {
            a.push(flag(m, "moe_router_pre_softmax"));
        }
        if moe.shared_expert_intermediate_size > 0 {
            a.push(arg(m, "moe_shared_expert_intermediate_size", moe.shared_expert_intermediate_size));
            a.push(flag(m, "moe_shared_expert_gate"));
        }
    }
    let c = "system.checkpoint";
    a.extend([
        arg(c, "load", ckpt_dir),
        arg(c, "ckpt_format", "torch_dist"),
        // A converted model starts a new run: iteration 0, no optimizer or RNG state to load.
        flag(c, "finetune"),
        flag(c, "no_load_optim"),
        flag(c, "no_load_rng"),
        arg("data.tokenizer", "tokenizer_type", "HuggingFaceTokenizer"),
        arg("data.tokenizer", "tokenizer_model", tokenizer_dir),
    ]);
    Ok(a)
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `megatron_args.sh`: a bash array `ESCALE_MEGATRON_ARGS` to splice into a Megatron-LM command.
pub fn render_shell(args: &[Arg], header: &str) -> String {
    let mut s = format!("# {header}\n# Use: source megatron_args.sh; torchrun ... pretrain_gpt.py \"${{ESCALE_MEGATRON_ARGS[@]}}\" <training and data arguments>\nESCALE_MEGATRON_ARGS=(\n");
    for a in args {
        let flag = format!("--{}", a.key.replace('_', "-"));
        match &a.value {
            Some(v) => s.push_str(&format!("  {flag} {}\n", shell_quote(v))),
            None => s.push_str(&format!("  {flag}\n")),
        }
    }
    s.push_str(")\n");
    s
}

fn yaml_scalar(v: &str) -> String {
    let plain = v.parse::<f64>().is_ok() || v.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if plain {
        v.to_string()
    } else {
        serde_json::to_string(v).expect("strings serialise")
    }
}

/// `flagscale.yaml`: the same arguments as a FlagScale experiment fragment (keys are Megatron-LM's
/// flags with underscores, `true` for a bare flag), grouped into `system:`, `model:`, `data:`.
pub fn render_flagscale(args: &[Arg], header: &str) -> String {
    let mut s = format!("# {header}\n");
    let mut sections: Vec<&str> = Vec::new();
    for a in args {
        if !sections.contains(&a.section) {
            sections.push(a.section);
        }
    }
    sections.sort_by_key(|sec| match sec.split('.').next() {
        Some("system") => 0,
        Some("model") => 1,
        _ => 2,
    });
    let mut open: Vec<&str> = Vec::new();
    for sec in sections {
        let parts: Vec<&str> = sec.split('.').collect();
        let common = open.iter().zip(&parts).take_while(|(a, b)| a == b).count();
        for (depth, part) in parts.iter().enumerate().skip(common) {
            s.push_str(&format!("{}{part}:\n", "  ".repeat(depth)));
        }
        open = parts.clone();
        let indent = "  ".repeat(parts.len());
        for a in args.iter().filter(|a| a.section == sec) {
            let value = a.value.as_deref().map(yaml_scalar).unwrap_or_else(|| "true".into());
            s.push_str(&format!("{indent}{}: {value}\n", a.key));
        }
    }
    s
}
