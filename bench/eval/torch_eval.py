#!/usr/bin/env python3
"""PyTorch reference for `escale eval`: the same model, tokenizer, text and windows (windows of WINDOW tokens that
overlap by one, so every token after the first is predicted once; BATCH full windows per forward, the last partial
window alone), under torch.no_grad(), f32. Loss per window from the logits with F.cross_entropy, as a transformers
user writes it. Prints one JSON line: tokens, loss, the eval loop's seconds and tokens/s, threads.

  torch_eval.py MODEL TEXT --window 512 --batch 4 --max-tokens 4097
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("text")
ap.add_argument("--window", type=int, default=512)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--max-tokens", type=int, default=0)
a = ap.parse_args()

tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
# Special tokens as escale adds them to the first chunk of the text (BOS where the post-processor puts it).
ids = tok.encode(open(a.text, encoding="utf-8").read(), add_special_tokens=True).ids
if a.max_tokens:
    ids = ids[: a.max_tokens]
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()

step = a.window - 1
windows = [ids[s : s + a.window] for s in range(0, max(len(ids) - 1, 1), step)]
windows = [w for w in windows if len(w) >= 2]
full = [w for w in windows if len(w) == a.window]
rest = [w for w in windows if len(w) != a.window]
batches = [full[i : i + a.batch] for i in range(0, len(full), a.batch)] + [[w] for w in rest]

nll, n = 0.0, 0
t0 = time.perf_counter()
with torch.no_grad():
    for b in batches:
        x = torch.tensor(b)
        logits = model(x).logits[:, :-1]  # the whole window in, as escale eval runs it
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        n += x.shape[0] * (x.shape[1] - 1)
dt = time.perf_counter() - t0
print(json.dumps({"tokens": n, "loss": nll / n, "loop_s": dt, "tokens_per_s": n / dt, "threads": torch.get_num_threads(),
                  "batch": a.batch, "window": a.window}))
