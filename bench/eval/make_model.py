#!/usr/bin/env python3
"""Writes the eval benchmark's model: a random 135M-class llama (d=576, 30 layers, 9/3 heads, FFN 1536, vocab 49152,
tied embeddings; the SmolLM-135M shapes) with transformers' own initialisation, stored in bf16, plus a tokenizer.json
(any tokenizer whose ids fit the vocab: speed does not depend on which ids are read).

  make_model.py --out DIR --tokenizer TOKENIZER.json [--layers 30 --hidden 576 ...]
"""
import argparse
import os
import shutil

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--tokenizer", required=True)
ap.add_argument("--layers", type=int, default=30)
ap.add_argument("--hidden", type=int, default=576)
ap.add_argument("--ffn", type=int, default=1536)
ap.add_argument("--heads", type=int, default=9)
ap.add_argument("--kv-heads", type=int, default=3)
ap.add_argument("--vocab", type=int, default=49152)
a = ap.parse_args()

torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                  num_key_value_heads=a.kv_heads, vocab_size=a.vocab, max_position_embeddings=2048, rms_norm_eps=1e-5,
                  rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
os.makedirs(a.out, exist_ok=True)
model.save_pretrained(a.out, safe_serialization=True)
shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
print(a.out)
