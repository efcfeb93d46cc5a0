"""PyTorch eager reference for escale's training-throughput benchmark.

The model is the LLaMA-style decoder escale trains (RMSNorm, RoPE rotate-half, GQA attention,
SwiGLU MLP, LM head untied or tied to the embedding), written out by hand in plain PyTorch so the
comparison is against ordinary eager PyTorch, not a fused kernel library. With `--experts E`
every MLP is a Mixtral-style sparse MoE block routed as escale routes it: softmax over the
router logits, top-k, renormalised top-k weights, each expert run on its tokens (index_select,
weighted, index_add), plus the two auxiliary terms escale's trainer adds by default: Megatron
load balancing (`E * sum_e n_e/(kT) * mean_t p_te` per layer, coefficient 0.001) and the router
z-loss (`mean_t logsumexp(z_t)^2` per layer, coefficient 0.01).

One training step = forward, next-token cross-entropy (+ MoE terms), backward, gradient clipping
to 1.0, AdamW (PyTorch's default implementation for CPU), the same as escale's `train` step.
Prints one JSON object with the median step time and tokens/s.

Usage: python torch_reference.py [--attn manual|sdpa] [--steps N] [--warmup N] [--threads N]
         [--experts E --top-k K] [--tied 1] [shape options, see --help]
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Peak RSS (KiB) of this process after `import torch` alone, before any model exists: the runtime's own share
# of the process's peak RSS, reported next to it.
RSS_AFTER_IMPORT_KIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
        self.experts = a.experts
        self.top_k = a.top_k
        self.tied = bool(a.tied)


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


class Mlp(nn.Module):
    def __init__(self, d, ffn):
        super().__init__()
        self.gate = nn.Linear(d, ffn, bias=False)
        self.up = nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, h):
        return self.down(F.silu(self.gate(h)) * self.up(h))


class MoeMlp(nn.Module):
    """Sparse MoE MLP on [tokens, d]: returns the output and the router logits / per-expert counts
    the auxiliary losses need."""

    def __init__(self, c):
        super().__init__()
        self.top_k = c.top_k
        self.router = nn.Linear(c.d, c.experts, bias=False)
        self.experts = nn.ModuleList([Mlp(c.d, c.ffn) for _ in range(c.experts)])

    def forward(self, h):
        logits = self.router(h)
        probs = torch.softmax(logits, dim=-1)
        top_w, top_idx = torch.topk(probs, self.top_k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(top_idx == e)
            if tok.numel() == 0:
                continue
            y = expert(h.index_select(0, tok)) * top_w[tok, slot].unsqueeze(1)
            out.index_add_(0, tok, y)
        counts = torch.bincount(top_idx.flatten(), minlength=len(self.experts))
        return out, logits, probs, counts


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
        self.mlp = MoeMlp(c) if c.experts > 0 else Mlp(c.d, c.ffn)

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

    def forward(self, x, cos, sin, mask, moe_terms):
        x = x + self.attention(self.input_norm(x), cos, sin, mask)
        h = self.post_norm(x)
        if self.c.experts == 0:
            return x + self.mlp(h)
        b, t, d = h.shape
        y, logits, probs, counts = self.mlp(h.reshape(b * t, d))
        moe_terms.append(moe_layer_losses(logits, probs, counts, self.c.top_k))
        return x + y.view(b, t, d)


def moe_layer_losses(logits, probs, counts, top_k):
    """Megatron load balancing `E * sum_e n_e/(kT) * P_e` and router z-loss `mean_t logsumexp^2`."""
    t, e = logits.shape
    aux = e * (counts.to(probs.dtype) / (top_k * t) * probs.mean(0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return aux, z


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c.vocab, c.d)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.layers)])
        self.norm = RMSNorm(c.d)
        self.lm_head = nn.Linear(c.d, c.vocab, bias=False)
        if c.tied:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(c.seq, c.head_dim)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        self.register_buffer("mask", torch.full((c.seq, c.seq), float("-inf")).triu(1))
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, moe_terms):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask, moe_terms)
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
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (0 = PyTorch's default)")
    p.add_argument("--experts", type=int, default=0, help="routed experts per MoE MLP (0 = dense)")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tied", type=int, default=0, help="1 = LM head tied to the embedding")
    p.add_argument("--aux-loss-coef", type=float, default=0.001)
    p.add_argument("--z-loss-coef", type=float, default=0.01)
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
        moe_terms = []
        logits = model(ids[:, :-1], moe_terms)
        loss = F.cross_entropy(logits.reshape(-1, c.vocab), ids[:, 1:].reshape(-1))
        objective = loss
        for aux, z in moe_terms:
            objective = objective + a.aux_loss_coef * aux + a.z_loss_coef * z
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    tokens = a.batch * c.seq
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} eager ({a.attn} attention)",
        "steps": len(times),
        "threads": torch.get_num_threads(),
        "median_step_s": med,
        "tokens_per_s": tokens / med,
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": loss.item(),
        "rss_after_import_kib": RSS_AFTER_IMPORT_KIB,
    }))


if __name__ == "__main__":
    main()
