"""PyTorch eager reference for escale's training-throughput benchmark.

The model is the LLaMA-style decoder escale trains (RMSNorm, RoPE rotate-half, GQA attention,
SwiGLU MLP, untied LM head), written out by hand in plain PyTorch so the comparison is against
ordinary eager PyTorch, not a fused kernel library. One training step = forward, next-token
cross-entropy, backward, gradient clipping to 1.0, AdamW (PyTorch's default implementation for
CPU). Prints one JSON object with the median step time and tokens/s.

Usage: python torch_reference.py [--attn manual|sdpa] [--steps N] [--warmup N] [--threads N]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cfg:
    def __init__(self, a):
        self.vocab = a.vocab
        self.d = a.hidden
        self.layers = a.layers
        self.heads = a.heads
        self.kv_heads = a.kv_heads
        self.ffn = a.ffn
        self.seq = a.seq_len
        self.head_dim = a.hidden // a.heads
        self.attn = a.attn


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope_tables(seq, head_dim, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.input_norm = RMSNorm(c.d)
        self.q = nn.Linear(c.d, c.heads * hd, bias=False)
        self.k = nn.Linear(c.d, c.kv_heads * hd, bias=False)
        self.v = nn.Linear(c.d, c.kv_heads * hd, bias=False)
        self.o = nn.Linear(c.heads * hd, c.d, bias=False)
        self.post_norm = RMSNorm(c.d)
        self.gate = nn.Linear(c.d, c.ffn, bias=False)
        self.up = nn.Linear(c.d, c.ffn, bias=False)
        self.down = nn.Linear(c.ffn, c.d, bias=False)

    def attention(self, x, cos, sin, mask):
        c = self.c
        b, t, _ = x.shape
        q = self.q(x).view(b, t, c.heads, c.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = c.heads // c.kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        if c.attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / (c.head_dim ** 0.5) + mask
            y = torch.softmax(att, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, c.heads * c.head_dim))

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.input_norm(x), cos, sin, mask)
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c.vocab, c.d)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.layers)])
        self.norm = RMSNorm(c.d)
        self.lm_head = nn.Linear(c.d, c.vocab, bias=False)
        cos, sin = rope_tables(c.seq, c.head_dim)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        self.register_buffer("mask", torch.full((c.seq, c.seq), float("-inf")).triu(1))
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask)
        return self.lm_head(self.norm(x))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=704)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--attn", choices=["manual", "sdpa"], default="manual")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = Cfg(a)
    model = Model(c)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, c.vocab, (a.batch, c.seq + 1), generator=g)
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, c.vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    tokens = a.batch * c.seq
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} eager ({a.attn} attention)",
        "threads": torch.get_num_threads(),
        "median_step_s": med,
        "tokens_per_s": tokens / med,
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
