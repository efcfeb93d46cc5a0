#!/usr/bin/env python3
"""Writes a random llama checkpoint (HF folder: config.json + one model.safetensors, bf16) for the benchmark.

Two ways to fill it:
  --backend transformers : LlamaForCausalLM(config) with transformers' own initialisation (needs torch);
  --backend plain        : standard library only. Each tensor is a pseudo-random N(0, 0.02) bf16 block tiled
                           over the tensor (norms are 1.0). Growth speed does not depend on the values, and this
                           path works on a machine without torch (smoke mode) and writes at disk speed.
"""
import argparse
import json
import os
import random
import struct
import sys


def llama_config(a):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.ffn,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden // a.heads,
        "vocab_size": a.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "attention_bias": False,
        "mlp_bias": False,
    }


def tensor_specs(a):
    hd = a.hidden // a.heads
    specs = [("model.embed_tokens.weight", [a.vocab, a.hidden])]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", [a.hidden]),
            (p + "self_attn.q_proj.weight", [a.heads * hd, a.hidden]),
            (p + "self_attn.k_proj.weight", [a.kv_heads * hd, a.hidden]),
            (p + "self_attn.v_proj.weight", [a.kv_heads * hd, a.hidden]),
            (p + "self_attn.o_proj.weight", [a.hidden, a.heads * hd]),
            (p + "post_attention_layernorm.weight", [a.hidden]),
            (p + "mlp.gate_proj.weight", [a.ffn, a.hidden]),
            (p + "mlp.up_proj.weight", [a.ffn, a.hidden]),
            (p + "mlp.down_proj.weight", [a.hidden, a.ffn]),
        ]
    specs += [("model.norm.weight", [a.hidden]), ("lm_head.weight", [a.vocab, a.hidden])]
    return specs


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def write_plain(a, out):
    specs = tensor_specs(a)
    header, off = {}, 0
    for name, shape in specs:
        nbytes = numel(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nbytes]}
        off += nbytes
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    rng = random.Random(a.seed)
    block_vals = 1 << 18  # 256 Ki values = 512 KiB of bf16
    block = b"".join(struct.pack("<f", rng.gauss(0.0, 0.02))[2:] for _ in range(block_vals))
    ones = struct.pack("<H", 0x3F80)
    path = os.path.join(out, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name, shape in specs:
            nbytes = numel(shape) * 2
            if name.endswith("norm.weight"):
                f.write(ones * numel(shape))
                continue
            start = rng.randrange(block_vals) * 2
            rot = block[start:] + block[:start]
            full, rest = divmod(nbytes, len(rot))
            for _ in range(full):
                f.write(rot)
            f.write(rot[:rest])


def write_transformers(a, out):
    import torch
    import transformers

    torch.manual_seed(a.seed)
    cfg = transformers.LlamaConfig(**{k: v for k, v in llama_config(a).items() if k not in ("architectures", "model_type", "torch_dtype")})
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="1000GB")


def expected_bytes(a):
    """Bytes of the grown model's tensors (bf16), used for the disk floor when escale did not produce an output."""
    hd = a.hidden // a.heads
    h, f, n, layers, experts = a.hidden, a.ffn, a.heads, a.layers, 1
    if a.expected_bytes == "scale_out":
        experts = 8
    elif a.expected_bytes == "scale_up":
        t = a.target.split()
        kv = dict(zip(t[0::2], t[1::2]))
        h, f, n, layers = int(kv["--hidden"]), int(kv["--intermediate"]), int(kv["--heads"]), int(kv["--layers"])
    else:
        layers = a.depth
    per_layer = 2 * h + 2 * n * hd * h + 2 * a.kv_heads * hd * h + experts * 3 * h * f
    if experts > 1:
        per_layer += experts * h  # router
    return 2 * (2 * a.vocab * h + layers * per_layer + h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["plain", "transformers"], default="plain")
    ap.add_argument("--config-only", action="store_true", help="write config.json only (for `escale init`)")
    ap.add_argument("--expected-bytes", choices=["scale_out", "scale_up", "depth_up"],
                    help="print the bf16 size of that case's output (from the source shape) and exit")
    ap.add_argument("--target", default="", help="scale-up flags (--hidden H --intermediate F --heads N --layers L)")
    ap.add_argument("--depth", type=int, default=0, help="depth-only target layers")
    a = ap.parse_args()
    if a.expected_bytes:
        print(expected_bytes(a))
        return
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(llama_config(a), f, indent=2)
    if a.config_only:
        return
    if a.backend == "transformers":
        write_transformers(a, a.out)
    else:
        write_plain(a, a.out)
    if not any(n.endswith(".safetensors") for n in os.listdir(a.out)):
        sys.exit("no safetensors written")


if __name__ == "__main__":
    main()
