#!/usr/bin/env python3
"""The transformers oracle: Python `transformers` as the reference escale is checked against.

Every Hugging Face user trusts `transformers`, so escale's Rust code is tested by asking it, not
by comparing escale with itself. Subcommands (JSON results on stdout, tensors in safetensors files):

  make-tiny   random tiny HF checkpoint of a supported family (llama, mistral, qwen2, qwen3, mixtral,
              qwen2_moe, qwen3_moe)
  logits      load a folder with AutoModelForCausalLM (f32, eager attention), logits + next-token loss
  adamw-step  loss, gradients and parameters after torch.optim.AdamW step(s), HF checkpoint names
  moe-losses  HF load-balancing loss (transformers' own function), Megatron per-layer aux loss, router z-loss
  choice-loglik  multiple-choice continuation log-likelihoods (perplexity mode) with transformers' tokenizer

Run `oracle.py SUBCOMMAND --help` for the flags. Errors go to stderr with exit code 2 (bad input) or 1.

The only line written to stdout is the final JSON result: library chatter (progress bars, warnings)
is sent to stderr so that callers can parse stdout without guessing.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

# Quiet, offline and reproducible before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")
ORACLE_VERSION = 1  # bump when the meaning of an option or an output changes


class OracleError(Exception):
    """Bad input: reported as one clear line on stderr, exit code 2."""


def _torch():
    import torch

    # One thread: results must not depend on the machine's core count or on how many test
    # processes run at once, and the models are far too small to profit from threads.
    torch.set_num_threads(int(os.environ.get("ESCALE_ORACLE_THREADS", "1")))
    return torch


def _json_arg(text, what):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise OracleError(f"{what}: invalid JSON ({e}): {text!r}")


def _atomic_dir(out):
    """Temp folder beside `out`, so the final rename is on one file system and atomic."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise OracleError(f"output {out} already exists; refusing to overwrite it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    return out, tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)


def _save_file_atomic(tensors, path, metadata=None):
    from safetensors.torch import save_file

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp-{os.getpid()}"
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# make-tiny
# ----------------------------------------------------------------------------------------------

def build_config(a):
    """A transformers config object for the requested family; rejects options the family cannot carry."""
    import transformers

    fam = a.family
    if fam not in FAMILIES:
        raise OracleError(f"unsupported family {fam!r}; supported: {', '.join(FAMILIES)}")
    heads = a.heads
    kv = a.kv_heads if a.kv_heads is not None else heads
    if heads <= 0 or kv <= 0 or heads % kv != 0:
        raise OracleError(f"--heads {heads} must be a positive multiple of --kv-heads {kv}")
    head_dim = a.head_dim if a.head_dim is not None else a.hidden // heads
    if head_dim <= 0 or head_dim % 2 != 0:
        raise OracleError(f"head_dim {head_dim} must be positive and even (RoPE rotates pairs)")
    vocab = a.vocab
    if a.with_tokenizer:
        if vocab is None:
            vocab = 512
        elif vocab < 512:
            raise OracleError(f"--with-tokenizer needs --vocab >= 512 (stories260K's tokenizer), got {vocab}")
    if vocab is None:
        vocab = 128
    if a.attention_bias and fam in ("mistral", "mixtral"):
        raise OracleError(f"{fam} has no attention bias in transformers; use llama, qwen2, qwen3, qwen2_moe or qwen3_moe")
    if a.mlp_bias and fam != "llama":
        raise OracleError("--mlp-bias exists only for llama")
    if a.shared_expert_intermediate is not None and fam != "qwen2_moe":
        raise OracleError(f"--shared-expert-intermediate exists only for qwen2_moe ({fam} has no shared expert)")
    if fam in MOE_FAMILIES:
        if a.experts is None or a.experts < 1:
            raise OracleError(f"{fam} needs --experts >= 1")
        if not (1 <= a.top_k <= a.experts):
            raise OracleError(f"--top-k {a.top_k} must be in 1..=--experts {a.experts}")
    elif a.experts is not None:
        raise OracleError(f"--experts given for dense family {fam}; use mixtral, qwen2_moe or qwen3_moe")

    common = dict(
        vocab_size=vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=a.max_position,
        rms_norm_eps=a.rms_norm_eps,
        tie_word_embeddings=a.tied,
        initializer_range=a.init_std,
        bos_token_id=1,
        eos_token_id=2,
    )
    rope = {"rope_type": "default", "rope_theta": a.rope_theta}
    scaling = _json_arg(a.rope_scaling, "--rope-scaling")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise OracleError("--rope-scaling must be a JSON object, e.g. {\"rope_type\":\"linear\",\"factor\":2.0}")
        scaling = dict(scaling)
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        rope.update(scaling)
    common["rope_parameters"] = rope

    if fam == "llama":
        cfg = transformers.LlamaConfig(**common, attention_bias=bool(a.attention_bias), mlp_bias=a.mlp_bias)
    elif fam == "mistral":
        cfg = transformers.MistralConfig(**common)
    elif fam == "qwen2":
        # qwen2 always has q/k/v biases in transformers; no flag turns them off.
        cfg = transformers.Qwen2Config(**common)
    elif fam == "qwen3":
        # attention_bias puts a bias on q, k, v and o alike (off by default, as on the hub).
        cfg = transformers.Qwen3Config(**common, attention_bias=bool(a.attention_bias))
    elif fam == "qwen3_moe":
        # No shared expert; head_dim is passed explicitly (Qwen3MoeConfig has no default of its own).
        cfg = transformers.Qwen3MoeConfig(
            **common,
            num_experts=a.experts,
            num_experts_per_tok=a.top_k,
            moe_intermediate_size=a.moe_intermediate if a.moe_intermediate is not None else a.intermediate,
            norm_topk_prob=a.norm_topk_prob,
            attention_bias=bool(a.attention_bias),
            decoder_sparse_step=1,
        )
    elif fam == "mixtral":
        cfg = transformers.MixtralConfig(**common, num_local_experts=a.experts, num_experts_per_tok=a.top_k)
    else:
        moe_i = a.moe_intermediate if a.moe_intermediate is not None else a.intermediate
        shared_i = a.shared_expert_intermediate if a.shared_expert_intermediate is not None else a.intermediate
        cfg = transformers.Qwen2MoeConfig(
            **common,
            num_experts=a.experts,
            num_experts_per_tok=a.top_k,
            moe_intermediate_size=moe_i,
            shared_expert_intermediate_size=shared_i,
            norm_topk_prob=a.norm_topk_prob,
            qkv_bias=a.attention_bias if a.attention_bias is not None else True,
            decoder_sparse_step=1,
        )
    extra = _json_arg(a.extra_config, "--extra-config")
    if extra is not None:
        if not isinstance(extra, dict):
            raise OracleError("--extra-config must be a JSON object")
        d = cfg.to_dict()
        d.update(extra)
        d.pop("model_type", None)
        d.pop("transformers_version", None)
        cfg = type(cfg)(**d)
    return cfg


def randomise(model, seed, std):
    """Overwrite every parameter with seeded random values.

    transformers' own init (ones for norms, zeros for biases, N(0, 0.02) for matrices) hides bugs: a
    norm weight applied twice, or a bias added to the wrong rows, is invisible when norms are 1 and
    biases 0. Here matrices are N(0, std^2), norm weights are 1 + U(-0.5, 0.5) and biases N(0, std^2),
    so every tensor moves the logits measurably.
    """
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + (torch.rand(p.shape, generator=g) - 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def cmd_make_tiny(a):
    torch = _torch()
    import transformers

    cfg = build_config(a)
    out, tmp = _atomic_dir(a.out)
    try:
        torch.manual_seed(a.seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        randomise(model, a.seed, a.std)
        if a.tied:
            model.tie_weights()
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
        model = model.to(dtype)
        model.config.dtype = dtype
        model.save_pretrained(tmp, max_shard_size=a.max_shard_size)
        if a.with_tokenizer:
            src = a.tokenizer_from
            for f in ("tokenizer.json", "tokenizer_config.json"):
                p = os.path.join(src, f)
                if not os.path.isfile(p):
                    raise OracleError(f"--with-tokenizer: {p} not found (set --tokenizer-from)")
                shutil.copyfile(p, os.path.join(tmp, f))
        n_params = sum(p.numel() for p in model.parameters())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is ordinary data
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(os.listdir(out))
    return {
        "path": out,
        "model_type": cfg.model_type,
        "num_parameters": n_params,
        "sharded": "model.safetensors.index.json" in files,
        "files": files,
    }


# ----------------------------------------------------------------------------------------------
# logits
# ----------------------------------------------------------------------------------------------

def load_model(path):
    torch = _torch()
    import transformers

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise OracleError(f"{path}: no config.json (not a Hugging Face model folder)")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    model.eval()
    return model


def read_ids(path):
    """Token ids: a JSON list of lists of ints, or a safetensors file with `input_ids.{i}` (or one 2-D `input_ids`)."""
    if not os.path.isfile(path):
        raise OracleError(f"--ids {path}: file not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        t = load_file(path)
        if "input_ids" in t:
            x = t["input_ids"]
            return [row.tolist() for row in (x if x.dim() == 2 else x.unsqueeze(0))]
        keys = sorted((k for k in t if k.startswith("input_ids.")), key=lambda k: int(k.split(".")[1]))
        if not keys:
            raise OracleError(f"{path}: expected tensor `input_ids` or `input_ids.0`, `input_ids.1`, ...")
        return [t[k].reshape(-1).tolist() for k in keys]
    with open(path) as f:
        try:
            ids = json.load(f)
        except json.JSONDecodeError as e:
            raise OracleError(f"{path}: invalid JSON: {e}")
    if not isinstance(ids, list) or not all(isinstance(s, list) for s in ids):
        raise OracleError(f"{path}: expected a JSON list of token id lists, e.g. [[1, 5, 7], [1, 9]]")
    return ids


def check_ids(ids, vocab, max_pos):
    if not ids:
        raise OracleError("no sequences given")
    for i, s in enumerate(ids):
        if not s:
            raise OracleError(f"sequence {i} is empty")
        for t in s:
            if not isinstance(t, int) or t < 0 or t >= vocab:
                raise OracleError(f"sequence {i}: token id {t!r} outside 0..{vocab}")
        if max_pos is not None and len(s) > max_pos:
            raise OracleError(f"sequence {i}: length {len(s)} > max_position_embeddings {max_pos}")


def next_token_loss(logits, ids):
    """Mean cross-entropy of predicting ids[1:] from logits[:-1] (HF's causal LM loss)."""
    torch = _torch()
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="mean")


def _router_logits(out):
    rl = getattr(out, "router_logits", None)
    return tuple(rl) if rl is not None else ()


def cmd_logits(a):
    torch = _torch()
    model = load_model(a.model)
    ids = read_ids(a.ids)
    check_ids(ids, model.config.vocab_size, getattr(model.config, "max_position_embeddings", None))
    is_moe = model.config.model_type in MOE_FAMILIES
    tensors, losses = {}, []
    with torch.no_grad():
        # One sequence per forward: the result of a sequence must not depend on what it is batched with.
        for i, s in enumerate(ids):
            x = torch.tensor([s], dtype=torch.long)
            kw = {"output_router_logits": True} if (is_moe and a.router_logits) else {}
            out = model(input_ids=x, use_cache=False, **kw)
            lg = out.logits[0].float()
            tensors[f"logits.{i}"] = lg
            losses.append(next_token_loss(lg, x[0]).item() if len(s) > 1 else None)
            for l, r in enumerate(_router_logits(out)):
                tensors[f"router_logits.{i}.{l}"] = r.float().reshape(len(s), -1)
    _save_file_atomic(tensors, a.out)
    return {
        "out": os.path.abspath(a.out),
        "num_sequences": len(ids),
        "lengths": [len(s) for s in ids],
        "vocab_size": model.config.vocab_size,
        "losses": losses,
    }


# ----------------------------------------------------------------------------------------------
# adamw-step
# ----------------------------------------------------------------------------------------------

def checkpoint_named(model, tensors_by_param):
    """Map in-memory parameter tensors to the names a saved checkpoint uses.

    transformers 5 keeps MoE experts fused in memory (`mlp.experts.gate_up_proj [E,2I,H]`) but saves the
    per-expert hub layout. Rather than re-deriving that mapping here (and risking a second bug that
    hides the first), the tensors are loaded into the model and written with transformers' own
    `save_pretrained`, then read back.
    """
    torch = _torch()
    from safetensors.torch import load_file

    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors_by_param[n])
    d = tempfile.mkdtemp(prefix="escale-oracle-save-")
    try:
        model.save_pretrained(d, max_shard_size="100GB")
        out = {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                out.update(load_file(os.path.join(d, f)))
    finally:
        shutil.rmtree(d, ignore_errors=True)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
    return out


def moe_aux_terms(router_logits, num_experts, top_k):
    """(HF load-balancing loss over all layers, mean router z-loss over layers)."""
    torch = _torch()
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    lb = load_balancing_loss_func(tuple(router_logits), num_experts, top_k)
    z = torch.stack([torch.logsumexp(r.float(), dim=-1).pow(2).mean() for r in router_logits]).mean()
    return lb, z


def cmd_adamw_step(a):
    torch = _torch()
    model = load_model(a.model)
    model.train()  # no dropout in these families; train() only matters for MoE jitter (0 here)
    ids = read_ids(a.ids)
    check_ids(ids, model.config.vocab_size, getattr(model.config, "max_position_embeddings", None))
    lens = {len(s) for s in ids}
    if len(lens) != 1 or lens.pop() < 2:
        raise OracleError("adamw-step needs sequences of one common length >= 2 (one batch)")
    x = torch.tensor(ids, dtype=torch.long)
    is_moe = model.config.model_type in MOE_FAMILIES
    if (a.aux_coef or a.z_coef) and not is_moe:
        raise OracleError("--aux-coef/--z-coef need an MoE model (mixtral or qwen2_moe)")

    # Weight decay only on matrices (>= 2-D): norms and biases are excluded, the usual LLM recipe.
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps, foreach=False,
    )

    def loss_fn():
        kw = {"output_router_logits": True} if is_moe else {}
        out = model(input_ids=x, use_cache=False, **kw)
        logits = out.logits.float()
        lm = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="mean"
        )
        parts = {"lm_loss": lm}
        total = lm
        if is_moe and (a.aux_coef or a.z_coef):
            cfg = model.config
            e = cfg.num_local_experts if cfg.model_type == "mixtral" else cfg.num_experts
            lb, z = moe_aux_terms(_router_logits(out), e, cfg.num_experts_per_tok)
            parts["aux_loss"], parts["z_loss"] = lb, z
            total = total + a.aux_coef * lb + a.z_coef * z
        return total, parts

    steps, first_grads = [], None
    for step in range(a.steps):
        opt.zero_grad(set_to_none=False)
        total, parts = loss_fn()
        total.backward()
        grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in model.named_parameters()}
        gnorm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
        if a.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_grad_norm)
        if first_grads is None:
            first_grads = grads
        rec = {"step": step + 1, "loss": total.item(), "grad_norm": gnorm}
        rec.update({k: v.item() for k, v in parts.items()})
        steps.append(rec)
        opt.step()

    with torch.no_grad():
        final_loss = loss_fn()[0].item()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    _save_file_atomic(checkpoint_named(model, first_grads), a.grads_out)
    _save_file_atomic(checkpoint_named(model, params), a.params_out)
    return {
        "steps": steps,
        "loss_after": final_loss,
        "grads_out": os.path.abspath(a.grads_out),
        "params_out": os.path.abspath(a.params_out),
    }


# ----------------------------------------------------------------------------------------------
# moe-losses
# ----------------------------------------------------------------------------------------------

def cmd_moe_losses(a):
    torch = _torch()
    from safetensors.torch import load_file
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    if not os.path.isfile(a.router_logits):
        raise OracleError(f"--router-logits {a.router_logits}: file not found")
    t = load_file(a.router_logits)
    keys = [k for k in t if k.startswith("layer.")]
    try:
        keys.sort(key=lambda k: int(k.split(".", 1)[1]))
    except ValueError:
        raise OracleError(f"{a.router_logits}: tensor names must be layer.0, layer.1, ...; got {sorted(t)}")
    if not keys:
        raise OracleError(f"{a.router_logits}: expected tensors layer.0, layer.1, ... of shape [tokens, experts]")
    layers = [t[k].float() for k in keys]
    e = layers[0].shape[-1]
    for k, r in zip(keys, layers):
        if r.dim() != 2 or r.shape[-1] != e:
            raise OracleError(f"{k}: shape {list(r.shape)}, expected [tokens, {e}] like layer.0")
    if not (1 <= a.k <= e):
        raise OracleError(f"--k {a.k} must be in 1..={e}")

    hf = load_balancing_loss_func(tuple(layers), e, a.k).item()
    per_layer = []
    for r in layers:
        tokens = r.shape[0]
        p = torch.softmax(r, dim=-1)
        sel = torch.topk(p, a.k, dim=-1).indices
        n = torch.zeros(e).scatter_add_(0, sel.reshape(-1), torch.ones(sel.numel()))
        pm = p.mean(dim=0)
        per_layer.append({
            "tokens_per_expert": n.tolist(),
            "mean_prob": pm.tolist(),
            # Megatron/Switch top-k form: E * sum_e (n_e / (k T)) * P_e, 1 when balanced.
            "megatron_aux": (e * (n / (a.k * tokens)) * pm).sum().item(),
            "z_loss": torch.logsumexp(r, dim=-1).pow(2).mean().item(),
        })
    return {
        "num_experts": e,
        "k": a.k,
        "hf_aux": hf,
        "megatron_aux_mean": sum(l["megatron_aux"] for l in per_layer) / len(per_layer),
        "z_loss_mean": sum(l["z_loss"] for l in per_layer) / len(per_layer),
        "layers": per_layer,
    }


# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# choice-loglik
# ----------------------------------------------------------------------------------------------

def cmd_choice_loglik(a):
    """Perplexity-mode multiple choice: per choice, the summed log-probability of the continuation
    tokens after the context, with transformers' own tokenizer: context with special tokens,
    continuation without, concatenated; cut from the left to the last window+1 tokens."""
    torch = _torch()
    import transformers

    model = load_model(a.model)
    tok = transformers.AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    items = []
    with open(a.items, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise OracleError(f"{a.items}:{n}: {e}")
    window = a.window if a.window is not None else model.config.max_position_embeddings
    loglik, ids_out, truncated = [], [], []
    with torch.no_grad():
        for item in items:
            ctx = tok(item["context"])["input_ids"]
            if not ctx:
                start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                ctx = [start]
            row, row_ids, cut = [], [], False
            for text in item["choices"]:
                cont = tok(text, add_special_tokens=False)["input_ids"]
                if not cont or len(cont) > window:
                    raise OracleError(f"continuation {text!r}: {len(cont)} tokens, window {window}")
                full = ctx + cont
                if len(full) > window + 1:
                    full, cut = full[-(window + 1):], True
                x = torch.tensor([full[:-1]], dtype=torch.long)
                logp = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0].double(), dim=-1)
                n = len(cont)
                pos = torch.arange(len(full) - 1 - n, len(full) - 1)
                row.append(logp[pos, torch.tensor(full[-n:])].sum().item())
                row_ids.append({"context": ctx, "continuation": cont})
            loglik.append(row)
            ids_out.append(row_ids)
            truncated.append(cut)
    return {"loglik": loglik, "ids": ids_out, "truncated": truncated, "window": window}


def parser():
    p = argparse.ArgumentParser(prog="oracle.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("make-tiny", help="random tiny HF checkpoint")
    m.add_argument("--family", required=True, help="|".join(FAMILIES))
    m.add_argument("--out", required=True, help="output folder (must not exist)")
    m.add_argument("--hidden", type=int, default=64)
    m.add_argument("--intermediate", type=int, default=96)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    m.add_argument("--head-dim", type=int, default=None, help="default: hidden / heads")
    m.add_argument("--vocab", type=int, default=None, help="default 128 (512 with --with-tokenizer)")
    m.add_argument("--max-position", type=int, default=256)
    m.add_argument("--rms-norm-eps", type=float, default=1e-5)
    m.add_argument("--rope-theta", type=float, default=10000.0)
    m.add_argument("--rope-scaling", default=None, help='JSON, e.g. {"rope_type":"linear","factor":2.0}')
    m.add_argument("--experts", type=int, default=None)
    m.add_argument("--top-k", type=int, default=2)
    m.add_argument("--moe-intermediate", type=int, default=None, help="qwen2_moe, qwen3_moe; default --intermediate")
    m.add_argument("--shared-expert-intermediate", type=int, default=None, help="qwen2_moe; default --intermediate")
    m.add_argument("--norm-topk-prob", action=argparse.BooleanOptionalAction, default=True, help="qwen2_moe, qwen3_moe")
    m.add_argument("--tied", action=argparse.BooleanOptionalAction, default=False, help="--tied / --no-tied")
    m.add_argument("--untied", dest="tied", action="store_false")
    m.add_argument("--attention-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="llama, qwen3, qwen3_moe: q,k,v,o bias; qwen2_moe: qkv_bias (default on); qwen2 always has q,k,v bias")
    m.add_argument("--mlp-bias", action="store_true", help="llama only")
    m.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    m.add_argument("--max-shard-size", default="50GB", help='e.g. "20KB" to force several shards')
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--std", type=float, default=0.1, help="std of random matrices and biases")
    m.add_argument("--init-std", type=float, default=0.02, help="initializer_range written to config.json")
    m.add_argument("--extra-config", default=None, help="JSON object merged into the config")
    m.add_argument("--with-tokenizer", action="store_true", help="copy stories260K's tokenizer (vocab 512)")
    m.add_argument("--tokenizer-from", default=None, help="folder with tokenizer.json + tokenizer_config.json")
    m.set_defaults(fn=cmd_make_tiny)

    g = sub.add_parser("logits", help="logits and next-token loss of token id sequences")
    g.add_argument("--model", required=True)
    g.add_argument("--ids", required=True, help="JSON list of lists, or safetensors with input_ids.{i}")
    g.add_argument("--out", required=True, help="safetensors: logits.{i} [T_i, V], router_logits.{i}.{layer}")
    g.add_argument("--router-logits", action="store_true", help="MoE: also write router logits per layer")
    g.set_defaults(fn=cmd_logits)

    s = sub.add_parser("adamw-step", help="loss, gradients and parameters after torch AdamW step(s)")
    s.add_argument("--model", required=True)
    s.add_argument("--ids", required=True, help="one batch: sequences of equal length")
    s.add_argument("--grads-out", required=True, help="safetensors: gradients of step 1, checkpoint names")
    s.add_argument("--params-out", required=True, help="safetensors: parameters after the last step")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--beta1", type=float, default=0.9)
    s.add_argument("--beta2", type=float, default=0.95)
    s.add_argument("--eps", type=float, default=1e-8)
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--max-grad-norm", type=float, default=None, help="clip the global grad norm before the step")
    s.add_argument("--steps", type=int, default=1, help="steps on the same batch (grads written are step 1's)")
    s.add_argument("--aux-coef", type=float, default=0.0, help="MoE: coefficient of HF load-balancing loss")
    s.add_argument("--z-coef", type=float, default=0.0, help="MoE: coefficient of router z-loss (mean over layers)")
    s.set_defaults(fn=cmd_adamw_step)

    z = sub.add_parser("moe-losses", help="load-balancing and z losses of given router logits")
    z.add_argument("--router-logits", required=True, help="safetensors: layer.{l} [tokens, experts]")
    z.add_argument("--k", type=int, required=True, help="experts per token")
    z.set_defaults(fn=cmd_moe_losses)

    c = sub.add_parser("choice-loglik", help="multiple-choice continuation log-likelihoods (perplexity mode)")
    c.add_argument("--model", required=True, help="model folder with tokenizer.json")
    c.add_argument("--items", required=True, help="JSONL: context, choices, answer")
    c.add_argument("--window", type=int, default=None, help="tokens the model reads (default max_position_embeddings)")
    c.set_defaults(fn=cmd_choice_loglik)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    if getattr(a, "tokenizer_from", "unset") is None:
        here = os.path.dirname(os.path.abspath(__file__))
        a.tokenizer_from = os.path.join(here, "..", "..", "..", "shared", "testdata", "models", "stories260K")
    # Keep stdout for the one JSON result; everything else (warnings, progress bars) goes to stderr.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    t0 = time.time()
    try:
        result = a.fn(a)
    except OracleError as e:
        print(f"oracle error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = real_stdout
    result["oracle_version"] = ORACLE_VERSION
    result["seconds"] = round(time.time() - t0, 3)
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
